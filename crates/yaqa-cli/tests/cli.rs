//! The `yaqa` binary end to end: help texts as insta snapshots (created once with
//! `INSTA_UPDATE=always`, reviewed, committed; CI=true never writes them), and the hessian → quantize →
//! eval → export path on a tiny synthetic model in a Hugging Face folder, including an interrupted and
//! resumed `quantize` whose output must equal an uninterrupted run's byte for byte.

mod common;
use common::{fails, ok, ok_stderr, s, scratch, tiny_model, yaqa};
use std::path::Path;

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", ok(&["--help"]));
    for sub in [
        "hessian", "quantize", "eval", "round", "convert", "export", "compare", "demo", "finetune",
    ] {
        insta::assert_snapshot!(format!("help_{sub}"), ok(&[sub, "--help"]));
    }
    insta::assert_snapshot!("help_hessian_merge", ok(&["hessian", "merge", "--help"]));
}

#[test]
fn end_to_end_on_a_tiny_model() {
    let dir = scratch("cli-e2e");
    let model_dir = tiny_model(&dir, 5);
    let m = s(&model_dir);
    let calib = ["--n-seqs", "4", "--seq-len", "12", "--seed", "3"];

    // Sharded Sketch B collection, merged, equals the unsharded one in sequence count.
    for shard in ["0/2", "1/2"] {
        let out = dir.join(format!("f{}", &shard[..1]));
        let mut a = vec![
            "hessian", "--model", m, "--sketch", "b", "--shard", shard, "--out",
        ];
        a.push(s(&out));
        a.extend(calib);
        ok(&a);
    }
    let merged = dir.join("merged");
    ok(&[
        "hessian",
        "merge",
        "--out",
        s(&merged),
        s(&dir.join("f0")),
        s(&dir.join("f1")),
    ]);
    let f = yaqa_model::formats::factor_file::read_factors(
        &merged.join("model.layers.1.mlp.down_proj.b.safetensors"),
    )
    .unwrap();
    assert_eq!(f.factors.n_seqs, 4);
    assert_eq!(f.provenance.shards, vec!["0/2", "1/2"]);
    // Merging a shard with itself is refused.
    let twice = yaqa(&[
        "hessian",
        "merge",
        "--out",
        s(&dir.join("bad")),
        s(&dir.join("f0")),
        s(&dir.join("f0")),
    ]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already"));

    // Quantize from the merged factors; interrupted + resumed equals uninterrupted.
    let whole = dir.join("whole.safetensors");
    let base = [
        "quantize",
        "--model",
        m,
        "--method",
        "yaqa",
        "--quantizer",
        "int3",
        "--factors",
        s(&merged),
    ];
    let mut a = base.to_vec();
    a.extend(["--out", s(&whole)]);
    ok(&a);
    let resumed = dir.join("resumed.safetensors");
    let mut a = base.to_vec();
    a.extend(["--out", s(&resumed), "--stop-after-layers", "6"]);
    ok(&a);
    assert!(!resumed.exists());
    let mut a = base.to_vec();
    a.extend(["--out", s(&resumed)]);
    ok(&a);
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap()
    );

    // --damp-out reaches h_out's LDL and is recorded; the default is DEFAULT_DAMP_OUT.
    let light = dir.join("light.safetensors");
    let mut a = base.to_vec();
    a.extend(["--damp-out", "0.01", "--out", s(&light)]);
    ok(&a);
    let open = |p: &std::path::Path| yaqa_model::formats::quant_file::QuantFile::open(p).unwrap();
    let (whole_q, light_q) = (open(&whole), open(&light));
    assert_eq!(
        whole_q.run()["damp_out"].as_f64(),
        Some(yaqa_core::layer::DEFAULT_DAMP_OUT)
    );
    assert_eq!(light_q.run()["damp_out"].as_f64(), Some(0.01));
    let q_proj = |q: &yaqa_model::formats::quant_file::QuantFile| {
        q.header["layers"]["model.layers.0.self_attn.q_proj"]["report"]["damp_out"].as_f64()
    };
    assert_eq!(q_proj(&light_q), Some(0.01));
    assert_eq!(q_proj(&whole_q), Some(yaqa_core::layer::DEFAULT_DAMP_OUT));
    assert_ne!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&light).unwrap()
    );
    let mut a = base.to_vec();
    a.extend(["--damp-out=-1", "--out", s(&light)]);
    let refused = yaqa(&a);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--damp-out"),
        "{err}"
    );

    // --refine runs coordinate descent after the rounding: recorded in the run header and per layer, and
    // it lowers the two-sided proxy summed over the layers.
    let refined = dir.join("refined.safetensors");
    let mut a = base.to_vec();
    a.extend(["--refine", "2", "--out", s(&refined)]);
    ok(&a);
    let refined_q = open(&refined);
    assert_eq!(refined_q.run()["refine_sweeps"].as_u64(), Some(2));
    assert!(whole_q.run().get("refine_sweeps").is_none());
    let layers = |q: &yaqa_model::formats::quant_file::QuantFile| {
        q.header["layers"].as_object().unwrap().clone()
    };
    let total_two_sided = |q: &yaqa_model::formats::quant_file::QuantFile| -> f64 {
        layers(q)
            .values()
            .map(|l| l["report"]["proxy_two_sided"].as_f64().unwrap())
            .sum()
    };
    for (name, l) in layers(&refined_q) {
        let sweeps = l["report"]["refine"]["sweeps"].as_u64();
        assert!(matches!(sweeps, Some(1..=2)), "{name}: {sweeps:?}");
    }
    let (plain, cd) = (total_two_sided(&whole_q), total_two_sided(&refined_q));
    assert!(
        cd < plain,
        "two-sided proxy summed over layers: {plain} → {cd}"
    );

    // RTN collecting its own Σ x xᵀ factors from text.
    let text = dir.join("calib.txt");
    std::fs::write(&text, "abc ".repeat(10)).unwrap();
    let rtn = dir.join("rtn.safetensors");
    let no_tok = yaqa(&[
        "quantize",
        "--model",
        m,
        "--method",
        "rtn",
        "--calib",
        s(&text),
        "--out",
        s(&rtn),
    ]);
    assert!(
        !no_tok.status.success(),
        "a folder without tokenizer.json must fail clearly"
    );
    assert!(String::from_utf8_lossy(&no_tok.stderr).contains("tokenizer"));
    let mut a = vec![
        "quantize",
        "--model",
        m,
        "--method",
        "rtn",
        "--quantizer",
        "int3",
        "--out",
        s(&rtn),
    ];
    a.extend(calib);
    ok(&a);

    // Eval prints a table and writes JSON.
    let json = dir.join("kl.json");
    let table = ok(&[
        "eval",
        "--model",
        m,
        "--quantized",
        s(&whole),
        s(&rtn),
        "--window",
        "8",
        "--n-windows",
        "2",
        "--json",
        s(&json),
    ]);
    assert!(
        table.contains("whole") && table.contains("rtn") && table.contains("KL"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["kl"].as_f64().unwrap() > 0.0));

    // Export as a bf16 HF folder that loads back.
    let exported = dir.join("exported");
    ok(&[
        "export",
        "--model",
        m,
        "--quantized",
        s(&whole),
        "--out",
        s(&exported),
    ]);
    let back = yaqa_model::formats::hf::HfCheckpoint::open(&exported)
        .unwrap()
        .load_model()
        .unwrap();
    assert_eq!(back.layers.len(), 2);
    // Older and newer transformers read the weights' type from different keys: they agree.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["dtype"], "bfloat16");

    // A GPTQ export of a rotated (incoherence) file is refused, naming file and layer, writing nothing.
    let gptq = dir.join("gptq");
    let refused = yaqa(&[
        "export",
        "--format",
        "gptq",
        "--model",
        m,
        "--quantized",
        s(&whole),
        "--out",
        s(&gptq),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("whole.safetensors")
            && err.contains("model.layers.0.self_attn.q_proj")
            && err.contains("incoherence"),
        "{err}"
    );
    assert!(!gptq.join("model.safetensors").exists());
    // So is a compressed-tensors export: the format has no place for the rotation.
    let ct = dir.join("ct");
    let refused = yaqa(&[
        "export",
        "--format",
        "compressed-tensors",
        "--model",
        m,
        "--quantized",
        s(&whole),
        "--out",
        s(&ct),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("whole.safetensors")
            && err.contains("model.layers.0.self_attn.q_proj")
            && err.contains("rotation"),
        "{err}"
    );
    assert!(!ct.join("model.safetensors").exists());

    // Errors name the file and the problem.
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let bad = yaqa(&[
        "eval",
        "--model",
        m,
        "--quantized",
        s(&cut),
        "--window",
        "8",
        "--n-windows",
        "1",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("cut.safetensors") && err.contains("truncated"),
        "{err}"
    );
    let cuda = yaqa(&[
        "quantize",
        "--model",
        m,
        "--out",
        s(&rtn),
        "--device",
        "cuda",
    ]);
    assert!(String::from_utf8_lossy(&cuda.stderr).contains("--device cpu"));
    let shard = yaqa(&[
        "hessian",
        "--model",
        m,
        "--out",
        s(&merged),
        "--shard",
        "2/2",
    ]);
    assert!(String::from_utf8_lossy(&shard.stderr).contains("0 ≤ I < N"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compare_shares_scales_and_resumes() {
    let dir = scratch("cli-compare");
    let model_dir = tiny_model(&dir, 8);
    let work = dir.join("work");
    let json = dir.join("table.json");
    let args = [
        "compare",
        "--model",
        s(&model_dir),
        "--n-seqs",
        "3",
        "--seq-len",
        "10",
        "--passes",
        "3",
        "--bits",
        "3",
        "--methods",
        "rtn,gptq,ldlq,yaqa-a,yaqa-b",
        "--window",
        "8",
        "--n-windows",
        "2",
        "--work",
        s(&work),
        "--json",
        s(&json),
    ];
    let table = ok(&args);
    assert!(
        table.contains("yaqa-b-int3") && table.contains("ldlq-int3"),
        "{table}"
    );
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = first["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        let kl = r["kl"].as_f64().unwrap();
        assert!(kl > 0.0 && kl.is_finite(), "{r}");
    }
    assert_eq!(first["setup"]["damp"].as_f64(), Some(0.01));
    assert_eq!(
        first["setup"]["damp_out"].as_f64(),
        Some(yaqa_core::layer::DEFAULT_DAMP_OUT)
    );

    // Every method got RTN's scale for every layer.
    let scales = |label: &str| {
        yaqa_model::formats::quant_file::QuantFile::open(&work.join(format!("{label}.safetensors")))
            .unwrap()
            .scale_multipliers()
            .unwrap()
    };
    let rtn = scales("rtn-int3");
    assert_eq!(rtn.len(), 14);
    for label in ["gptq-int3", "ldlq-int3", "yaqa-a-int3", "yaqa-b-int3"] {
        assert_eq!(scales(label), rtn, "{label}");
    }

    // Sketch B carries Σ x xᵀ over the same tokens as Sketch A's pass 0.
    let layer = "model.layers.1.mlp.down_proj";
    let read = |tag: &str| {
        yaqa_model::formats::factor_file::read_factors(
            &work.join(format!("factors/{layer}.{tag}.safetensors")),
        )
        .unwrap()
        .factors
    };
    let (b, a0, a2) = (read("b"), read("a-p0"), read("a-p2"));
    let d = yaqa_core::mat::rel_diff_fro(&b.xtx.as_ref().unwrap().data, &a0.h_in.data);
    assert!(d < 1e-10, "Sketch B's Σ x xᵀ vs pass 0: {d:e}");
    assert_eq!(a2.xtx.as_ref(), Some(&a0.h_in));

    // A rerun reuses every factor set and model and reproduces the table.
    let out = yaqa(&args);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("reusing").count(), 3, "{log}");
    assert_eq!(log.matches(": reused").count(), 5, "{log}");
    assert!(log.contains("int3: evaluation reused from"), "{log}");
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(first["rows"], second["rows"]);
    assert_eq!(first["setup"]["refine_sweeps"].as_u64(), Some(0));

    // --refine in the same folder adds `-cd2` rows beside the plain ones: the factors and RTN's scales are
    // reused, the refined models have the same scales and their own files.
    let refined_json = dir.join("refined.json");
    let mut refined = args.to_vec();
    let j = refined.iter().position(|a| *a == "--json").unwrap();
    refined[j + 1] = s(&refined_json);
    let methods = refined.iter().position(|a| *a == "--methods").unwrap();
    refined[methods + 1] = "ldlq,yaqa-b";
    refined.extend(["--refine", "2"]);
    let out = yaqa(&refined);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("rtn-int3: reused"), "{log}");
    let cd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refined_json).unwrap()).unwrap();
    let names: Vec<&str> = cd["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ldlq-cd2-int3", "yaqa-b-cd2-int3"]);
    assert_eq!(cd["setup"]["refine_sweeps"].as_u64(), Some(2));
    for label in ["ldlq-cd2-int3", "yaqa-b-cd2-int3"] {
        assert_eq!(scales(label), rtn, "{label}");
    }
    assert_ne!(
        std::fs::read(work.join("ldlq-int3.safetensors")).unwrap(),
        std::fs::read(work.join("ldlq-cd2-int3.safetensors")).unwrap()
    );

    // The blended row reuses both sketches' factors and RTN's scales, and is neither of them.
    let mut blended = args.to_vec();
    let methods = blended.iter().position(|a| *a == "--methods").unwrap();
    blended[methods + 1] = "ldlq,yaqa-ab";
    let j = blended.iter().position(|a| *a == "--json").unwrap();
    let blended_json = dir.join("blended.json");
    blended[j + 1] = s(&blended_json);
    let out = yaqa(&blended);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("reusing").count(), 3, "{log}");
    assert!(log.contains("yaqa-ab-int3: quantized"), "{log}");
    assert_eq!(scales("yaqa-ab-int3"), rtn);
    let q = |label: &str| {
        yaqa_model::formats::quant_file::QuantFile::open(&work.join(format!("{label}.safetensors")))
            .unwrap()
    };
    let id = yaqa_model::LayerId::parse(layer).unwrap();
    let ab = q("yaqa-ab-int3");
    assert_ne!(ab.codes(id).unwrap(), q("yaqa-a-int3").codes(id).unwrap());
    assert_ne!(ab.codes(id).unwrap(), q("yaqa-b-int3").codes(id).unwrap());
    assert!(
        ab.run()["factors"]["sketch"]
            .as_str()
            .unwrap()
            .starts_with("mean of normalised a-p2"),
        "{}",
        ab.run()["factors"]
    );

    // The calibration record holds the sequences and the labels every backward used; replaying it in a
    // fresh folder reproduces the table.
    let record = work.join("factors/calibration.safetensors");
    let rec = yaqa_model::formats::calib_file::read_calib_file(&record, None).unwrap();
    assert_eq!(rec.seqs.len(), 3);
    assert!(
        rec.seqs
            .iter()
            .all(|q| q.labels.as_ref().is_some_and(|l| l.len() == 10))
    );
    let replay_work = dir.join("replay");
    // The same arguments without the sequence count and length, which the record fixes.
    let mut replay: Vec<&str> = Vec::new();
    let mut it = args.iter().copied();
    while let Some(a) = it.next() {
        if a == "--n-seqs" || a == "--seq-len" {
            it.next();
        } else {
            replay.push(a);
        }
    }
    let w = replay.iter().position(|a| *a == "--work").unwrap();
    replay[w + 1] = s(&replay_work);
    let replay_json = dir.join("replay.json");
    let j = replay.iter().position(|a| *a == "--json").unwrap();
    replay[j + 1] = s(&replay_json);
    replay.extend(["--calib-ids", s(&record)]);
    ok(&replay);
    let third: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&replay_json).unwrap()).unwrap();
    assert_eq!(first["rows"], third["rows"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_b_seqs_extends_sketch_b() {
    let dir = scratch("cli-compare-b-seqs");
    let model_dir = tiny_model(&dir, 9);
    let work = dir.join("work");
    let run = |b_seqs: &str| {
        let out = yaqa(&[
            "compare",
            "--model",
            s(&model_dir),
            "--n-seqs",
            "2",
            "--b-seqs",
            b_seqs,
            "--seq-len",
            "10",
            "--bits",
            "3",
            "--methods",
            "rtn,ldlq,yaqa-b",
            "--window",
            "8",
            "--n-windows",
            "2",
            "--work",
            s(&work),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run("2");
    assert!(!first.contains("B, more sequences"), "{first}");
    // Raising --b-seqs collects only the new sequences, for Sketch B alone. Without the record of the
    // first run, the labels of its sequences are drawn again from their seeds.
    std::fs::remove_file(work.join("factors/calibration.safetensors")).unwrap();
    let second = run("4");
    assert!(
        second.contains("B, more sequences: collecting sequences 2..4"),
        "{second}"
    );
    assert!(!second.contains("yaqa-b-int3: reused"), "{second}");

    // The one-sided methods take Σ x xᵀ from Sketch B, now over four sequences.
    assert!(second.contains("ldlq-int3: quantized"), "{second}");
    // The extended Sketch B equals one collection over all four sequences, bit for bit.
    let single = dir.join("single");
    ok(&[
        "hessian",
        "--model",
        s(&model_dir),
        "--sketch",
        "b",
        "--n-seqs",
        "4",
        "--seq-len",
        "10",
        "--out",
        s(&single),
    ]);
    let read = |d: &Path, tag: &str| {
        yaqa_model::formats::factor_file::read_factors(
            &d.join(format!("model.layers.1.self_attn.v_proj.{tag}.safetensors")),
        )
        .unwrap()
        .factors
    };
    let (extended, once) = (read(&work.join("factors"), "b"), read(&single, "b"));
    assert_eq!(extended.n_seqs, 4);
    assert_eq!(extended, once);

    // The record holds all four sequences with the labels their backward used.
    let rec = yaqa_model::formats::calib_file::read_calib_file(
        &work.join("factors/calibration.safetensors"),
        None,
    )
    .unwrap();
    let single_rec = yaqa_model::formats::calib_file::read_calib_file(
        &single.join("calibration.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!(rec.seqs.len(), 4);
    assert_eq!(rec.seqs, single_rec.seqs);
    // Once more, now reading the earlier labels from the record: its first four sequences stay, and only
    // the fifth is collected.
    let third = run("5");
    assert!(
        third.contains("B, more sequences: collecting sequences 4..5") && !third.contains("0..2"),
        "{third}"
    );
    let rec = yaqa_model::formats::calib_file::read_calib_file(
        &work.join("factors/calibration.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!(rec.seqs.len(), 5);
    assert_eq!(rec.seqs[..4], single_rec.seqs[..]);
    assert_eq!(read(&work.join("factors"), "b").n_seqs, 5);

    // Fewer Sketch B sequences than --n-seqs is refused.
    assert!(
        fails(&[
            "compare",
            "--model",
            s(&model_dir),
            "--n-seqs",
            "3",
            "--b-seqs",
            "2",
            "--work",
            s(&work)
        ])
        .contains("--b-seqs 2 is below --n-seqs 3")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hessian_resumes_from_its_checkpoint() {
    let dir = scratch("cli-hessian-resume");
    let model_dir = tiny_model(&dir, 6);
    let m = s(&model_dir);
    let run = |out: &Path, seed: &str, extra: &[&str]| {
        ok_stderr(
            &[
                "hessian",
                "--model",
                m,
                "--sketch",
                "b",
                "--n-seqs",
                "5",
                "--seq-len",
                "12",
                "--seed",
                seed,
                "--checkpoint-every",
                "2",
                "--out",
                s(out),
            ],
            extra,
        )
    };
    let whole = dir.join("whole");
    run(&whole, "4", &[]);
    assert!(!dir.join("whole.partial").exists());

    // Killed after 3 of 5 sequences (checkpoints at 2 and 3), then rerun: byte-identical files, and the
    // checkpoint is gone.
    let resumed = dir.join("resumed");
    let partial = dir.join("resumed.partial");
    let err = run(&resumed, "4", &["--stop-after-seqs", "3"]);
    assert!(err.contains("stopped after 3 sequences"), "{err}");
    assert!(!resumed.exists() && partial.join("calibration.safetensors").is_file());
    let err = run(&resumed, "4", &[]);
    assert!(err.contains("resuming after 3 of 5 sequences"), "{err}");
    assert!(!partial.exists());
    same_files(&whole, &resumed);

    // A checkpoint of another run (another seed) is set aside, not mixed in.
    let other = dir.join("other");
    run(&other, "9", &["--stop-after-seqs", "2"]);
    let err = run(&other, "4", &[]);
    assert!(err.contains("not a checkpoint of this collection"), "{err}");
    assert!(dir.join("other.partial.stale").is_dir());
    assert_eq!(
        std::fs::read(whole.join("calibration.safetensors")).unwrap(),
        std::fs::read(other.join("calibration.safetensors")).unwrap()
    );

    // Checkpoints by time (here due after every sequence) resume the same way.
    let timed = dir.join("timed");
    let by_time = |extra: &[&str]| {
        ok_stderr(
            &[
                "hessian",
                "--model",
                m,
                "--sketch",
                "b",
                "--n-seqs",
                "5",
                "--seq-len",
                "12",
                "--seed",
                "4",
                "--checkpoint-minutes",
                "1e-9",
                "--out",
                s(&timed),
            ],
            extra,
        )
    };
    let err = by_time(&["--stop-after-seqs", "2"]);
    assert!(err.contains("stopped after 2 sequences"), "{err}");
    let err = by_time(&[]);
    assert!(err.contains("resuming after 2 of 5 sequences"), "{err}");
    same_files(&whole, &timed);
    assert!(
        fails(&[
            "hessian",
            "--model",
            m,
            "--checkpoint-minutes",
            "0",
            "--out",
            s(&timed)
        ])
        .contains("not a finite number of minutes > 0")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file of `a` is in `b` with the same bytes, and `b` has no others.
fn same_files(a: &Path, b: &Path) {
    let mut files = 0;
    for entry in std::fs::read_dir(a).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap(),
            "{name:?}"
        );
        files += 1;
    }
    assert_eq!(files, std::fs::read_dir(b).unwrap().count());
}

#[test]
fn hessian_sketch_a_resumes_inside_and_between_passes() {
    let dir = scratch("cli-hessian-a-resume");
    let model_dir = tiny_model(&dir, 7);
    let m = s(&model_dir);
    let run = |out: &Path, extra: &[&str]| {
        ok_stderr(
            &[
                "hessian",
                "--model",
                m,
                "--sketch",
                "a",
                "--passes",
                "3",
                "--n-seqs",
                "4",
                "--seq-len",
                "10",
                "--checkpoint-every",
                "1",
                "--out",
                s(out),
            ],
            extra,
        )
    };
    let whole = dir.join("whole");
    run(&whole, &[]);
    let resumed = dir.join("resumed");
    // Pass 0 (4 sequences) and 2 of pass 1, then the rest of pass 1, then all of pass 2.
    let err = run(&resumed, &["--stop-after-seqs", "6"]);
    assert!(
        err.contains("stopped in Sketch A pass 1 after 2 sequences"),
        "{err}"
    );
    let err = run(&resumed, &["--stop-after-seqs", "2"]);
    assert!(err.contains("A pass 1: resuming after 2 of 4"), "{err}");
    assert!(
        err.contains("stopped in Sketch A pass 2 after 0 sequences"),
        "{err}"
    );
    assert!(!resumed.exists());
    let err = run(&resumed, &[]);
    assert!(err.contains("A pass 1: resuming after 4 of 4"), "{err}");
    assert!(!err.contains("A pass 0"), "{err}");
    assert!(!dir.join("resumed.partial").exists());
    same_files(&whole, &resumed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_factor_stages_resume_from_checkpoints() {
    let dir = scratch("cli-compare-stage-resume");
    let model_dir = tiny_model(&dir, 5);
    let run = |work: &Path, extra: &[&str]| {
        let json = work.with_extension("json");
        ok_stderr(
            &[
                "compare",
                "--model",
                s(&model_dir),
                "--n-seqs",
                "3",
                "--b-seqs",
                "5",
                "--passes",
                "3",
                "--seq-len",
                "10",
                "--bits",
                "3",
                "--methods",
                "ldlq,yaqa-a,yaqa-b",
                "--window",
                "8",
                "--n-windows",
                "2",
                "--checkpoint-every",
                "1",
                "--work",
                s(work),
                "--json",
                s(&json),
            ],
            extra,
        )
    };
    let whole = dir.join("whole");
    run(&whole, &[]);
    // The stages: A pass 0 over 3 sequences, A pass 1 + B over 3, B over 2 more, A pass 2 over 3.
    let work = dir.join("resumed");
    let partial = dir.join("resumed/factors.partial");
    let err = run(&work, &["--stop-after-seqs", "4"]);
    assert!(
        err.contains("stopped in stage \"A pass 1 + B\" after 1 sequences"),
        "{err}"
    );
    assert!(partial.join("calibration.safetensors").is_file());
    let err = run(&work, &["--stop-after-seqs", "3"]);
    assert!(err.contains("A pass 0: reusing"), "{err}");
    assert!(err.contains("A pass 1 + B: resuming after 1 of 3"), "{err}");
    assert!(
        err.contains("stopped in stage \"B, more sequences\" after 4 sequences"),
        "{err}"
    );
    let err = run(&work, &["--stop-after-seqs", "2"]);
    assert!(
        err.contains("B, more sequences: resuming after 4 of 5"),
        "{err}"
    );
    assert!(
        err.contains("stopped in stage \"A pass 2\" after 1 sequences"),
        "{err}"
    );
    assert!(!work.with_extension("json").exists());
    let err = run(&work, &[]);
    assert!(err.contains("A pass 2: resuming after 1 of 3"), "{err}");
    assert!(!partial.exists());
    same_files(&whole.join("factors"), &work.join("factors"));
    let rows = |w: &Path| {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.with_extension("json")).unwrap()).unwrap();
        v["rows"].clone()
    };
    assert_eq!(rows(&whole), rows(&work));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantize_resumes_its_own_collection() {
    let dir = scratch("cli-quantize-collect-resume");
    let model_dir = tiny_model(&dir, 8);
    let run = |out: &Path, extra: &[&str]| {
        ok_stderr(
            &[
                "quantize",
                "--model",
                s(&model_dir),
                "--method",
                "yaqa",
                "--quantizer",
                "int3",
                "--n-seqs",
                "4",
                "--seq-len",
                "10",
                "--checkpoint-every",
                "1",
                "--out",
                s(out),
            ],
            extra,
        )
    };
    let whole = dir.join("whole.safetensors");
    run(&whole, &[]);
    assert!(!dir.join("whole.safetensors.factors.partial").exists());
    // Killed while collecting, then while quantizing: the finished collection is not run again.
    let resumed = dir.join("resumed.safetensors");
    let partial = dir.join("resumed.safetensors.factors.partial");
    let err = run(&resumed, &["--stop-after-seqs", "2"]);
    assert!(err.contains("stopped after 2 sequences"), "{err}");
    assert!(partial.is_dir() && !resumed.exists());
    let err = run(&resumed, &["--stop-after-layers", "3"]);
    assert!(err.contains("factors: resuming after 2 of 4"), "{err}");
    assert!(err.contains("stopped after 3 layers"), "{err}");
    assert!(partial.is_dir() && !resumed.exists());
    let err = run(&resumed, &[]);
    assert!(err.contains("factors: resuming after 4 of 4"), "{err}");
    assert!(!partial.exists());
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
