//! No output ever overwrites an input (issue #28): every command refuses, before any work, an output
//! path that is one of its inputs or lies inside an input folder, and leaves the input untouched.

mod common;

use common::{fails, ok, s, scratch, tiny_model};

/// The SHA-256 of every file under `dir`, by relative path.
fn digest(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let sum = yaqa_model::formats::checkpoint::sha256_file(&p).unwrap();
                v.push((p.strip_prefix(dir).unwrap().display().to_string(), sum));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn outputs_that_are_inputs_are_refused_before_work() {
    let dir = scratch("overwrite");
    let model_dir = tiny_model(&dir, 3);
    let m = s(&model_dir);
    let weights = model_dir.join("model.safetensors");
    let calib = ["--n-seqs", "2", "--seq-len", "8"];
    let factors = dir.join("factors");
    let mut a = vec!["hessian", "--model", m, "--out", s(&factors)];
    a.extend(calib);
    ok(&a);
    let q = dir.join("q.safetensors");
    ok(&[
        "quantize",
        "--model",
        m,
        "--factors",
        s(&factors),
        "--out",
        s(&q),
        "--no-eval",
    ]);
    let before = digest(&dir);

    let factor_file = factors.join("model.layers.0.mlp.up_proj.b.safetensors");
    let sub = dir.join("model/sub");
    let cases: Vec<Vec<&str>> = vec![
        // The model's own weights, and a new file inside the model folder.
        vec![
            "quantize",
            "--model",
            m,
            "--factors",
            s(&factors),
            "--out",
            s(&weights),
        ],
        vec!["quantize", "--model", m, "--method", "rtn", "--out", m],
        vec![
            "hessian",
            "--model",
            m,
            "--out",
            m,
            "--n-seqs",
            "2",
            "--seq-len",
            "8",
        ],
        vec![
            "hessian",
            "--model",
            m,
            "--out",
            s(&factors),
            "--n-seqs",
            "2",
            "--seq-len",
            "8",
            "--calib",
            s(&factor_file),
        ],
        vec!["hessian", "merge", "--out", s(&factors), s(&factors)],
        vec!["export", "--model", m, "--quantized", s(&q), "--out", m],
        vec![
            "export",
            "--model",
            m,
            "--quantized",
            s(&q),
            "--out",
            s(&sub),
        ],
        vec!["convert", "--model", s(&weights), "--out", m],
        vec![
            "round",
            "--weights",
            s(&weights),
            "--factors",
            s(&factor_file),
            "--out",
            s(&weights),
        ],
        vec![
            "round",
            "--weights",
            s(&weights),
            "--factors",
            s(&factor_file),
            "--out",
            s(&factor_file),
        ],
        vec!["eval", "--model", m, "--quantized", s(&q), "--json", s(&q)],
        vec![
            "compare",
            "--model",
            m,
            "--work",
            m,
            "--n-seqs",
            "2",
            "--seq-len",
            "8",
        ],
    ];
    for args in &cases {
        let err = fails(args);
        assert!(
            err.contains("would destroy an input"),
            "yaqa {args:?} did not refuse its output:\n{err}"
        );
    }
    assert_eq!(digest(&dir), before, "an input changed");
    std::fs::remove_dir_all(&dir).unwrap();
}
