//! `quantize --sequential` and `--method qronos` from the command line on a tiny synthetic model: the
//! file records the sequential source and the report its memory, a run stopped twice and rerun ends
//! byte-identical to an uninterrupted one, and what the pipeline cannot take (YAQA, `--factors`, E8P
//! with Qronos) is refused before any work, naming why.

mod common;

use common::{fails, ok, s, scratch, tiny_model};
use yaqa_model::formats::quant_file::QuantFile;

#[test]
fn qronos_and_sequential_gptq_resume_byte_identical() {
    let dir = scratch("cli-sequential");
    let model_dir = tiny_model(&dir, 8);
    let m = s(&model_dir);
    let base = [
        "quantize",
        "--model",
        m,
        "--n-seqs",
        "3",
        "--seq-len",
        "10",
        "--seed",
        "2",
        "--quantizer",
        "int3",
        "--no-eval",
    ];
    for method in [
        &["--method", "qronos"][..],
        &["--method", "gptq", "--sequential"],
    ] {
        let tag = method[1];
        let whole = dir.join(format!("{tag}-whole.safetensors"));
        let json = dir.join(format!("{tag}.json"));
        let mut a: Vec<&str> = base.to_vec();
        a.extend(method);
        a.extend(["--out", s(&whole), "--json", s(&json)]);
        ok(&a);
        let q = QuantFile::open(&whole).unwrap();
        assert_eq!(q.run()["method"], tag);
        assert_eq!(q.run()["factors"]["source"], "sequential");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert!(report["sequential"]["stream_bytes"].as_u64().unwrap() > 0);

        let cut = dir.join(format!("{tag}-cut.safetensors"));
        let mut a: Vec<&str> = base.to_vec();
        a.extend(method);
        a.extend(["--out", s(&cut)]);
        for stop in ["5", "4"] {
            let mut b = a.clone();
            b.extend(["--stop-after-layers", stop]);
            ok(&b);
            assert!(!cut.exists());
        }
        ok(&a);
        assert_eq!(
            std::fs::read(&whole).unwrap(),
            std::fs::read(&cut).unwrap(),
            "{tag}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_the_sequential_pipeline_cannot_take_is_refused() {
    let dir = scratch("cli-sequential-refused");
    let model_dir = tiny_model(&dir, 9);
    let m = s(&model_dir);
    let out = dir.join("q.safetensors");
    let base = ["quantize", "--model", m, "--no-eval", "--out", s(&out)];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra);
        fails(&a)
    };
    let err = run(&["--method", "yaqa", "--sequential"]);
    assert!(
        err.contains("YAQA's factors come from the whole model's backward"),
        "{err}"
    );
    let err = run(&["--method", "rtn", "--sequential"]);
    assert!(err.contains("round-to-nearest uses no statistics"), "{err}");
    let err = run(&["--method", "qronos", "--quantizer", "e8p"]);
    assert!(err.contains("needs a scalar grid"), "{err}");
    let factors = dir.join("factors");
    std::fs::create_dir_all(&factors).unwrap();
    let err = run(&["--method", "qronos", "--factors", s(&factors)]);
    assert!(err.contains("always sequential"), "{err}");
    let err = run(&["--method", "qronos", "--refine", "1"]);
    assert!(err.contains("Qronos's objective"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A layer whose statistics on the quantized model's inputs are singular (all-zero inputs: block 1's
/// post-attention norm is zero, so `gate_proj` and `up_proj` see `X̃ = 0`) or not finite (block 1's
/// input norm overflows `X̃ᵀX̃` in f32) fails with one error naming that layer, after the earlier
/// groups were quantized, and leaves no output file.
#[test]
fn singular_or_non_finite_sequential_statistics_name_the_layer() {
    let dir = scratch("cli-sequential-bad-stats");
    type Spoil = fn(&mut yaqa_model::LayerWeights<f32>);
    let cases: [(&str, Spoil, &str, &str); 2] = [
        (
            "singular",
            |b| b.post_norm.iter_mut().for_each(|v| *v = 0.0),
            "layers.1.mlp.gate_proj: h_in has mean diagonal 0: the layer saw only zero inputs",
            "layers.1.mlp.gate_proj",
        ),
        (
            "nan",
            |b| b.input_norm.iter_mut().for_each(|v| *v = 1e30),
            "non-finite values in model.layers.1.self_attn.q_proj: h_in",
            "layers.1.self_attn.q_proj",
        ),
    ];
    for (tag, spoil, words, layer) in cases {
        let mut model = yaqa_model::Model::synthetic(
            yaqa_model::transformer::weights::tiny_config(yaqa_model::Family::Llama, true),
            8,
        );
        spoil(&mut model.layers[1]);
        let model_dir = dir.join(tag);
        yaqa_model::formats::hf::write_hf(&model, &model_dir).unwrap();
        for method in ["qronos", "gptq"] {
            let out = dir.join(format!("{tag}-{method}.safetensors"));
            let err = fails(&[
                "quantize",
                "--model",
                s(&model_dir),
                "--n-seqs",
                "3",
                "--seq-len",
                "10",
                "--quantizer",
                "int3",
                "--method",
                method,
                "--sequential",
                "--no-eval",
                "--out",
                s(&out),
            ]);
            assert!(err.contains(words), "{tag} {method}: {err}");
            assert_eq!(err.matches(layer).count(), 1, "{tag} {method}: {err}");
            assert!(!out.exists(), "{tag} {method}: partial output");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
