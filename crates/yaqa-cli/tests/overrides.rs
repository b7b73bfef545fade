//! `quantize --override`: the layers a rule matches take its quantizer and method, bit for bit as a whole
//! run with that spec would round them, the others exactly as without the rule, kept layers stay out of
//! the file (recorded) and are read from the original by `eval` and the bf16 export; rules that cannot
//! apply are refused before any work, naming the rule or the layer. Also `--scales-from`, the other way
//! a run takes a layer's setting from elsewhere: every layer gets the given file's searched scale.

mod common;

use common::{fails, ok, s, scratch, tiny_model};
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::transformer::weights::{LayerId, LinearKind};

#[test]
fn overridden_layers_round_as_their_own_spec_and_kept_layers_stay_out() {
    let dir = scratch("cli-overrides");
    let model_dir = tiny_model(&dir, 11);
    let m = s(&model_dir);
    let factors = dir.join("factors");
    ok(&[
        "hessian",
        "--model",
        m,
        "--sketch",
        "xtx",
        "--n-seqs",
        "3",
        "--seq-len",
        "10",
        "--out",
        s(&factors),
    ]);
    let quantize = |name: &str, spec: [&str; 2], extra: &[&str]| {
        let out = dir.join(format!("{name}.safetensors"));
        let mut a = vec![
            "quantize",
            "--model",
            m,
            "--factors",
            s(&factors),
            "--method",
            spec[0],
            "--quantizer",
            spec[1],
            "--no-eval",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        QuantFile::open(&out).unwrap()
    };
    let plain = quantize("plain", ["gptq", "int4"], &[]);
    let ldlq8 = quantize("ldlq8", ["ldlq", "int8"], &[]);
    let mixed = quantize(
        "mixed",
        ["gptq", "int4"],
        &[
            "--override",
            r"^model\.layers\.1\.mlp\.=keep",
            "--override",
            "down_proj=bits:8,method:ldlq",
        ],
    );
    let kept: Vec<String> = ["gate_proj", "up_proj", "down_proj"]
        .map(|l| format!("model.layers.1.mlp.{l}"))
        .into();
    assert_eq!(mixed.run()["kept"], serde_json::json!(kept));
    assert_eq!(mixed.run()["overrides"][1], "down_proj=bits:8,method:ldlq");
    let layers = mixed.layers().unwrap();
    let all = plain.layers().unwrap();
    assert_eq!(layers.len(), all.len() - 3);
    for id in all {
        let name = id.name();
        if kept.contains(&name) {
            assert!(!layers.contains(&id), "{name} kept");
            continue;
        }
        let want = if id.kind == LinearKind::Down {
            &ldlq8
        } else {
            &plain
        };
        assert_eq!(mixed.codes(id).unwrap(), want.codes(id).unwrap(), "{name}");
        assert_eq!(
            mixed.header["layers"][&name]["quantizer"], want.header["layers"][&name]["quantizer"],
            "{name}"
        );
    }
    // The evaluation and the bf16 export take the kept layers from the original.
    let table = ok(&[
        "eval",
        "--model",
        m,
        "--quantized",
        s(&dir.join("mixed.safetensors")),
        "--n-windows",
        "2",
        "--window",
        "8",
    ]);
    assert!(table.contains("mixed"), "{table}");
    let export = dir.join("export");
    ok(&[
        "export",
        "--model",
        m,
        "--quantized",
        s(&dir.join("mixed.safetensors")),
        "--out",
        s(&export),
    ]);
    let exported = yaqa_model::formats::checkpoint::load(&export).unwrap();
    let original = yaqa_model::formats::checkpoint::load(&model_dir).unwrap();
    let gate = LayerId {
        block: 1,
        kind: LinearKind::Gate,
    };
    let bf16 = |w: &yaqa_core::Mat<f32>| {
        w.data
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect::<Vec<_>>()
    };
    let linear = |l: &yaqa_model::formats::checkpoint::Loaded| {
        l.model.layers.get(1).unwrap().linear(gate.kind).clone()
    };
    assert_eq!(linear(&exported).data, bf16(&linear(&original)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn overrides_that_cannot_apply_are_refused_before_work() {
    let dir = scratch("cli-overrides-refused");
    let model_dir = tiny_model(&dir, 12);
    let m = s(&model_dir);
    let out = dir.join("q.safetensors");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "quantize",
            "--model",
            m,
            "--n-seqs",
            "2",
            "--seq-len",
            "8",
            "--no-eval",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let err = run(&["--override", "lm_hed=keep"]);
    assert!(err.contains("'lm_hed=keep' matches no layer"), "{err}");
    let err = run(&["--override", "down_proj=bits:5"]);
    assert!(err.contains("2, 3, 4 or 8 bits"), "{err}");
    let err = run(&["--override", "down_proj=group:7"]);
    assert!(
        err.contains("model.layers.0.mlp.down_proj (as --override sets it)")
            && err.contains("--group 7"),
        "{err}"
    );
    let err = run(&["--method", "qronos", "--override", "down_proj=keep"]);
    assert!(err.contains("not with the sequential pipeline"), "{err}");
    assert!(!out.exists());
    assert!(!dir.join("q.safetensors.factors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quantize --scales-from FILE` (session 19): every layer takes the scale multiplier FILE's search
/// chose, where its own search (on other calibration statistics) would choose otherwise; a file of
/// another quantizer or model, or one given with `--override`, is refused before any work.
#[test]
fn scales_from_gives_every_layer_the_files_scale() {
    let dir = scratch("cli-scales-from");
    let model_dir = tiny_model(&dir, 11);
    let m = s(&model_dir);
    let factors = |name: &str, seed: &str| {
        let out = dir.join(name);
        ok(&[
            "hessian",
            "--model",
            m,
            "--sketch",
            "b",
            "--n-seqs",
            "3",
            "--seq-len",
            "10",
            "--seed",
            seed,
            "--out",
            s(&out),
        ]);
        out
    };
    let (f0, f1) = (factors("f0", "0"), factors("f1", "5"));
    let quantize = |name: &str, f: &std::path::Path, method: &str, extra: &[&str]| {
        let out = dir.join(format!("{name}.safetensors"));
        let mut a = vec![
            "quantize",
            "--model",
            m,
            "--factors",
            s(f),
            "--method",
            method,
            "--quantizer",
            "int3",
            "--no-eval",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        (a.iter().map(|x| x.to_string()).collect::<Vec<_>>(), out)
    };
    let run_ok = |(a, out): (Vec<String>, std::path::PathBuf)| {
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        QuantFile::open(&out).unwrap()
    };
    let source = run_ok(quantize("ldlq-f1", &f1, "ldlq", &[]));
    let own = run_ok(quantize("yaqa-own", &f0, "yaqa", &[]));
    let path = dir.join("ldlq-f1.safetensors");
    let shared = run_ok(quantize(
        "yaqa-shared",
        &f0,
        "yaqa",
        &["--scales-from", s(&path)],
    ));
    let want = source.scale_multipliers().unwrap();
    assert_eq!(want.len(), 14);
    assert_ne!(
        own.scale_multipliers().unwrap(),
        want,
        "the premise: the other calibration's search chooses other scales somewhere"
    );
    assert_eq!(shared.scale_multipliers().unwrap(), want);
    assert_eq!(
        shared.run()["factors"]["scale_c_from"],
        serde_json::json!(path.display().to_string())
    );

    let refused = |(a, out): (Vec<String>, std::path::PathBuf)| {
        let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.exists(), "{err}");
        err
    };
    let mut int4 = quantize("int4", &f0, "yaqa", &["--scales-from", s(&path)]);
    let q = int4.0.iter().position(|a| a == "int3").unwrap();
    int4.0[q] = "int4".into();
    let err = refused(int4);
    assert!(
        err.contains(&format!("--scales-from {}", path.display()))
            && err.contains("quantized with quantizer"),
        "{err}"
    );
    let err = refused(quantize(
        "over",
        &f0,
        "yaqa",
        &["--scales-from", s(&path), "--override", "down_proj=keep"],
    ));
    assert!(err.contains("with --override 'down_proj=keep'"), "{err}");
    let other_model = tiny_model(&dir.join("other"), 12);
    let (mut a, out) = quantize("other", &f0, "rtn", &["--scales-from", s(&path)]);
    a[2] = s(&other_model).to_string();
    a.drain(3..5);
    let err = refused((a, out));
    assert!(err.contains("quantized from a different model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
