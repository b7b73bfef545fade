//! Factor collection in layer groups (issue #24): `--layers A..B` runs joined by `hessian merge`, and
//! `--max-memory` runs that stream the blocks and collect the groups one after another, write exactly
//! the files of one all-layer run; a budget below one block is refused with the minimum it needs.

mod common;
use common::{fails, ok, ok_stderr, s, scratch, word_tokenizer, words};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaqa_core::sketch::SketchKind;
use yaqa_model::job::memory::minimum_budget;
use yaqa_model::transformer::config::ModelConfig;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

/// A tiny Llama with `blocks` blocks as a Hugging Face folder.
fn model(dir: &Path, blocks: usize) -> (PathBuf, ModelConfig) {
    let mut config = tiny_config(Family::Llama, false);
    config.n_layers = blocks;
    let path = dir.join("model");
    yaqa_model::formats::hf::write_hf(&Model::synthetic(config.clone(), 5), &path).unwrap();
    (path, config)
}

/// Every file of `dir` by name with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn hessian(model: &Path, out: &Path, sketch: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "hessian",
        "--model",
        s(model),
        "--sketch",
        sketch,
        "--n-seqs",
        "3",
        "--seq-len",
        "8",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn layer_groups_joined_equal_one_all_layer_run() {
    let dir = scratch("layer-groups");
    let (m, _) = model(&dir, 3);
    for sketch in ["b", "xtx", "a"] {
        let all = dir.join(format!("all-{sketch}"));
        ok(&strs(&hessian(&m, &all, sketch, &[])));
        let g0 = dir.join(format!("g0-{sketch}"));
        let g1 = dir.join(format!("g1-{sketch}"));
        ok(&strs(&hessian(&m, &g0, sketch, &["--layers", "0..1"])));
        ok(&strs(&hessian(&m, &g1, sketch, &["--layers", "1..3"])));
        assert_eq!(files(&g0).len(), 7 + 1, "{sketch}: 7 layers and the record");
        let joined = dir.join(format!("joined-{sketch}"));
        ok(&["hessian", "merge", "--out", s(&joined), s(&g1), s(&g0)]);
        assert_eq!(files(&joined), files(&all), "{sketch}");
    }
    // Overlapping groups and groups of other calibrations are refused, naming both folders.
    let g01 = dir.join("g01");
    ok(&strs(&hessian(&m, &g01, "b", &["--layers", "0..2"])));
    let g1 = dir.join("g1-b");
    let err = fails(&[
        "hessian",
        "merge",
        "--out",
        s(&dir.join("bad")),
        s(&g01),
        s(&g1),
    ]);
    assert!(err.contains("both hold model.layers.1."), "{err}");
    let other = dir.join("other");
    ok(&strs(&hessian(
        &m,
        &other,
        "b",
        &["--layers", "2..3", "--seed", "9"],
    )));
    let err = fails(&[
        "hessian",
        "merge",
        "--out",
        s(&dir.join("bad2")),
        s(&g01),
        s(&other),
    ]);
    assert!(err.contains("same calibration"), "{err}");
    // A group whose factor file is cut short fails the join naming the file, and leaves no half-joined
    // folder behind (the first group's files were already copied when the second one's failed).
    let cut = dir.join("g1-cut");
    std::fs::create_dir_all(&cut).unwrap();
    let group = files(&g1);
    for (name, bytes) in &group {
        std::fs::write(cut.join(name), bytes).unwrap();
    }
    let victim = group
        .into_keys()
        .find(|n| n.ends_with(".safetensors") && n.contains("layers.2."))
        .unwrap();
    let len = std::fs::metadata(cut.join(&victim)).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.join(&victim))
        .unwrap();
    file.set_len(len / 2).unwrap();
    let half = dir.join("half");
    let g0 = dir.join("g0-b");
    let err = fails(&["hessian", "merge", "--out", s(&half), s(&g0), s(&cut)]);
    assert!(err.contains(&victim), "{err}");
    assert!(!half.exists(), "a failed join left {}", half.display());
    // A range beyond the model is refused before any work.
    let err = fails(&strs(&hessian(
        &m,
        &dir.join("x"),
        "b",
        &["--layers", "2..4"],
    )));
    assert!(
        err.contains("--layers 2..4: the model has 3 blocks"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn max_memory_streams_blocks_and_collects_groups_that_fit() {
    let dir = scratch("max-memory");
    let (m, c) = model(&dir, 3);
    for (sketch, kinds) in [
        ("b", vec![SketchKind::B]),
        ("a", vec![SketchKind::A { pass: 1 }; 2]),
    ] {
        let all = dir.join(format!("all-{sketch}"));
        ok(&strs(&hessian(&m, &all, sketch, &[])));
        // Room for one block, its factors and one sequence: three groups of one block, streamed.
        let one = minimum_budget(&c, &kinds, 8);
        let grouped = dir.join(format!("grouped-{sketch}"));
        let err = ok_stderr(
            &strs(&hessian(&m, &grouped, sketch, &[])),
            &["--max-memory", &one.to_string()],
        );
        assert!(
            err.contains("blocks streamed from the checkpoint, 1 kept"),
            "{err}"
        );
        assert!(err.contains("3 groups of blocks"), "{err}");
        assert_eq!(files(&grouped), files(&all), "{sketch}");
        assert!(!dir.join(format!("grouped-{sketch}.groups")).exists());
        let err = fails(&strs(&hessian(
            &m,
            &dir.join(format!("small-{sketch}")),
            sketch,
            &["--max-memory", &(one - 1).to_string()],
        )));
        assert!(err.contains("too small for one block"), "{err}");
        assert!(!dir.join(format!("small-{sketch}")).exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantize_under_max_memory_streams_blocks_and_writes_the_same_file() {
    use yaqa_model::job::memory::{
        PROCESS_BYTES, block_bytes, edge_bytes, eval_bytes, rounding_bytes, usable,
    };
    use yaqa_model::transformer::weights::LinearKind;
    let dir = scratch("quantize-memory");
    let (m, c) = model(&dir, 3);
    // Evaluation text for the streamed evaluation: words the model's own tokenizer knows.
    word_tokenizer(&m.join("tokenizer.json"), &words(37), false);
    let text = dir.join("text.txt");
    let line: String = (0..37).map(|i| format!("w{} ", (i * 11) % 37)).collect();
    std::fs::write(&text, line.repeat(4)).unwrap();
    let eval = [
        "--eval-text",
        s(&text),
        "--eval-window",
        "8",
        "--eval-windows",
        "6",
    ];
    let factors = dir.join("factors");
    ok(&strs(&hessian(&m, &factors, "b", &[])));
    let round = LinearKind::ALL
        .iter()
        .map(|k| {
            let (r, n) = k.shape(&c);
            rounding_bytes(r, n)
        })
        .max()
        .unwrap()
        .max(eval_bytes(&c, 8, 6, 1));
    let need = edge_bytes(&c) + block_bytes(&c) + round + PROCESS_BYTES;
    let budget = need + need / 7 + 1;
    assert!(usable(budget) >= need && usable(budget) < need + block_bytes(&c));
    let quantize = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "quantize",
            "--model",
            s(&m),
            "--method",
            "yaqa",
            "--quantizer",
            "int4",
            "--factors",
            s(&factors),
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let resident = dir.join("resident.safetensors");
    ok(&strs(&quantize(&resident, &eval)));
    let streamed = dir.join("streamed.safetensors");
    let err = ok_stderr(
        &strs(&quantize(&streamed, &eval)),
        &["--max-memory", &budget.to_string()],
    );
    assert!(
        err.contains("blocks streamed from the checkpoint, one at a time"),
        "{err}"
    );
    assert!(err.contains("evaluation "), "the plan counts it: {err}");
    assert!(err.contains("layers left about"), "a time estimate: {err}");
    // The evaluation, recorded in the header, is the resident one's too: the same file byte for byte.
    assert_eq!(
        std::fs::read(&streamed).unwrap(),
        std::fs::read(&resident).unwrap()
    );
    let kl = |p: &Path| {
        let q = yaqa_model::formats::quant_file::QuantFile::open(p).unwrap();
        q.header["eval"]["kl"].as_f64().unwrap()
    };
    assert!(kl(&streamed) > 0.0);
    // `eval` streams too: the same table as with every block resident.
    let eval_need = edge_bytes(&c) + block_bytes(&c) + eval_bytes(&c, 8, 6, 1) + PROCESS_BYTES;
    let table = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--model",
            s(&m),
            "--quantized",
            s(&resident),
            "--text",
            s(&text),
            "--window",
            "8",
            "--n-windows",
            "6",
        ];
        a.extend_from_slice(extra);
        let out = common::yaqa(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), text(&out.stderr))
    };
    let (want, _) = table(&[]);
    let (got, err) = table(&["--max-memory", &(eval_need + eval_need / 7 + 1).to_string()]);
    assert!(err.contains("blocks streamed from the checkpoint"), "{err}");
    assert_eq!(got, want);
    // Streaming needs factors from `hessian` and evaluation text (or none); too little memory is
    // refused.
    let b = budget.to_string();
    let x = dir.join("x.safetensors");
    let refused = |extra: &[&str]| {
        let mut a = vec!["quantize", "--model", s(&m), "--quantizer", "int4"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--out", s(&x), "--max-memory", &b]);
        fails(&a)
    };
    let err = refused(&eval);
    assert!(err.contains("pass --factors"), "{err}");
    let err = refused(&[&["--method", "gptq", "--sequential"][..], &eval].concat());
    assert!(err.contains("holds the whole model"), "{err}");
    let err = refused(&["--factors", s(&factors), eval[2], eval[3], eval[4], eval[5]]);
    assert!(err.contains("pass --eval-text FILE or --no-eval"), "{err}");
    let err = fails(&strs(&quantize(
        &dir.join("x.safetensors"),
        &["--no-eval", "--max-memory", &(need / 2).to_string()],
    )));
    assert!(err.contains("too small to quantize one layer"), "{err}");
    assert!(!dir.join("x.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
