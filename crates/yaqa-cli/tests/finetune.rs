//! `yaqa finetune` (issue #19): a few Adam steps on a text lower the model's perplexity on it, change
//! only the linear layers, write a folder `eval` and `quantize` can read, and refuse bad flags and an
//! output that would replace the input.

mod common;
use common::{fails, ok, s, scratch, tiny_model, word_tokenizer, words};

use std::path::Path;

use yaqa_model::formats::checkpoint;

#[test]
fn finetune_lowers_perplexity_and_changes_only_linear_layers() {
    let dir = scratch("finetune");
    let base = tiny_model(&dir, 3);
    word_tokenizer(&base.join("tokenizer.json"), &words(37), false);
    // A text with a pattern a model can pick up in a few steps.
    let text = dir.join("text.txt");
    let line: String = (0..37).map(|i| format!("w{} ", (i * 5) % 37)).collect();
    std::fs::write(&text, line.repeat(40)).unwrap();
    let out = dir.join("tuned");
    let args = [
        "finetune",
        "--model",
        s(&base),
        "--text",
        s(&text),
        "--steps",
        "6",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--lr",
        "0.01",
        "--eval-windows",
        "2",
        "--out",
        s(&out),
    ];
    let stdout = ok(&args);
    let ppl: Vec<f64> = stdout
        .split("perplexity on the first windows of the text ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .map(|r| r.split(" → ").map(|v| v.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| panic!("no perplexity in {stdout}"));
    assert!(
        ppl[1] < 0.9 * ppl[0],
        "perplexity must fall: {ppl:?} ({stdout})"
    );
    let (b, t) = (
        checkpoint::load_with(&base, None).unwrap().model,
        checkpoint::load_with(&out, None).unwrap().model,
    );
    assert_eq!(t.embed, b.embed);
    assert_eq!(t.norm, b.norm);
    for (lb, lt) in b
        .layers
        .as_resident()
        .unwrap()
        .iter()
        .zip(t.layers.as_resident().unwrap())
    {
        assert_eq!(lt.input_norm, lb.input_norm);
        assert_eq!(lt.post_norm, lb.post_norm);
        for kind in yaqa_model::transformer::weights::LinearKind::ALL {
            assert_ne!(lt.linear(kind), lb.linear(kind), "{kind:?} unchanged");
        }
    }
    assert!(out.join("tokenizer.json").is_file());
    // Deterministic: a second run writes the same weights.
    let again = dir.join("again");
    let mut args2 = args.to_vec();
    let last = args2.len() - 1;
    args2[last] = s(&again);
    ok(&args2);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );
    // The delta metrics of `eval --base`: INT8 keeps more of the fine-tune's delta than INT2, and the
    // base itself as the "fine-tune" is refused (no delta).
    let mut rows = Vec::new();
    for bits in ["int2", "int8"] {
        let q = dir.join(format!("{bits}.safetensors"));
        ok(&[
            "quantize",
            "--model",
            s(&out),
            "--method",
            "rtn",
            "--quantizer",
            bits,
            "--no-eval",
            "--calib",
            s(&text),
            "--n-seqs",
            "2",
            "--seq-len",
            "16",
            "--out",
            s(&q),
        ]);
        let json = dir.join(format!("{bits}.json"));
        let table = ok(&[
            "eval",
            "--model",
            s(&out),
            "--quantized",
            s(&q),
            "--base",
            s(&base),
            "--text",
            s(&text),
            "--window",
            "16",
            "--n-windows",
            "4",
            "--json",
            s(&json),
        ]);
        assert!(table.contains("sign kept"), "{table}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let d = v["rows"][0]["delta"].clone();
        assert_eq!(
            d["layers"].as_array().unwrap().len(),
            7 * 2,
            "every layer: {d}"
        );
        rows.push((
            d["sign_preservation"].as_f64().unwrap(),
            d["block_cosine"].as_f64().unwrap(),
        ));
    }
    let ((s2, c2), (s8, c8)) = (rows[0], rows[1]);
    assert!(s8 > s2 && c8 > c2, "INT8 {s8} {c8} vs INT2 {s2} {c2}");
    assert!((0.0..=1.0).contains(&s2) && s8 <= 1.0);
    // A "base" with the fine-tune's own weights has no delta: nothing counted, shown as "-"; the
    // model itself as its base is refused.
    let q8 = dir.join("int8.safetensors");
    let eval = |base: &Path| {
        let args = [
            "eval",
            "--model",
            s(&out),
            "--quantized",
            s(&q8),
            "--base",
            s(base),
            "--text",
            s(&text),
            "--window",
            "16",
            "--n-windows",
            "4",
        ];
        common::yaqa(&args)
    };
    let same = eval(&again);
    assert!(same.status.success());
    let table = String::from_utf8_lossy(&same.stdout);
    let row = table.lines().last().unwrap();
    assert_eq!(
        row.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["-", "-", "-"],
        "{table}"
    );
    let err = String::from_utf8_lossy(&eval(&out).stderr).into_owned();
    assert!(err.contains("is the model itself"), "{err}");

    // Bad flags and an output that is the input are refused before any work.
    let mut bad = args.to_vec();
    bad[last] = s(&base);
    assert!(fails(&bad).contains("--out"));
    let x = dir.join("x");
    let mut bad = args.to_vec();
    bad[12] = "0";
    bad[last] = s(&x);
    assert!(fails(&bad).contains("--lr 0"));
    assert!(!x.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
