//! The E8P codebook from the command line on a tiny synthetic model: `quantize --quantizer e8p` writes a
//! file whose codes and dequantization `eval` reads, `compare --quantizers int2,e8p` runs one table per
//! quantizer with RTN's scales shared, and what cannot take a vector codebook (GPTQ, `--refine`,
//! `--group`) is refused before any work, naming the flag.

mod common;

use common::{fails, ok, s, scratch, tiny_model};
use yaqa_model::formats::quant_file::QuantFile;

#[test]
fn quantize_eval_and_compare_with_e8p() {
    let dir = scratch("cli-e8p");
    let model_dir = tiny_model(&dir, 6);
    let m = s(&model_dir);
    let calib = ["--n-seqs", "3", "--seq-len", "10", "--seed", "2"];

    let out = dir.join("e8p.safetensors");
    let mut a = vec![
        "quantize",
        "--model",
        m,
        "--method",
        "ldlq",
        "--quantizer",
        "e8p",
        "--eval-windows",
        "2",
        "--eval-window",
        "8",
        "--out",
        s(&out),
    ];
    a.extend(calib);
    ok(&a);
    let q = QuantFile::open(&out).unwrap();
    assert_eq!(q.run()["quantizer"]["kind"], "e8p");
    assert_eq!(q.run()["tile"], serde_json::json!([1, 8]));
    let kl = q.header["eval"]["kl"].as_f64().unwrap();
    assert!(kl > 0.0 && kl.is_finite(), "{kl}");
    for id in q.layers().unwrap() {
        let entry = &q.header["layers"][id.name()];
        assert_eq!(entry["code_bits"], 16);
        let n = entry["n"].as_u64().unwrap() as usize;
        let m_rows = entry["m"].as_u64().unwrap() as usize;
        assert_eq!(q.codes(id).unwrap().len(), m_rows * n / 8, "{}", id.name());
    }
    let table = ok(&[
        "eval",
        "--model",
        m,
        "--quantized",
        s(&out),
        "--window",
        "8",
        "--n-windows",
        "2",
    ]);
    assert!(table.contains("e8p"), "{table}");

    let work = dir.join("work");
    let json = dir.join("table.json");
    let mut a = vec![
        "compare",
        "--model",
        m,
        "--quantizers",
        "int2,e8p",
        "--methods",
        "rtn,ldlq,yaqa-b",
        "--window",
        "8",
        "--n-windows",
        "2",
        "--work",
        s(&work),
        "--json",
        s(&json),
    ];
    a.extend(calib);
    let table = ok(&a);
    assert!(
        table.contains("INT2, KL vs ldlq-int2") && table.contains("E8P, KL vs ldlq-e8p"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for r in rows {
        let kl = r["kl"].as_f64().unwrap();
        assert!(kl > 0.0 && kl.is_finite(), "{r}");
        assert_eq!(r["bits"], 2, "{r}");
    }
    let scales = |label: &str| {
        QuantFile::open(&work.join(format!("{label}.safetensors")))
            .unwrap()
            .scale_multipliers()
            .unwrap()
    };
    let rtn = scales("rtn-e8p");
    assert_eq!(rtn.len(), 14);
    for label in ["ldlq-e8p", "yaqa-b-e8p"] {
        assert_eq!(scales(label), rtn, "{label}");
    }
    // Rerunning reuses every file: the same tables (the wall time aside).
    let tables = |t: &str| {
        t.split("total wall time")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(tables(&ok(&a)), tables(&table));

    // Refused before any work, naming what to change.
    let base = [
        "quantize",
        "--model",
        m,
        "--quantizer",
        "e8p",
        "--no-eval",
        "--out",
    ];
    let refused = dir.join("refused.safetensors");
    for (extra, says) in [
        (&["--method", "gptq"][..], "--method gptq"),
        (&["--method", "ldlq", "--refine", "2"][..], "--refine"),
        (&["--method", "rtn", "--group", "8"][..], "--group"),
    ] {
        let mut a = base.to_vec();
        a.push(s(&refused));
        a.extend(extra);
        let err = fails(&a);
        assert!(
            err.contains(says) && err.contains("E8P"),
            "{extra:?}: {err}"
        );
        assert!(!refused.exists());
    }
    let refused_work = dir.join("refused-work");
    let mut a = vec![
        "compare",
        "--model",
        m,
        "--quantizers",
        "e8p",
        "--work",
        s(&refused_work),
    ];
    a.extend(calib);
    let err = fails(&a);
    assert!(err.contains("--methods gptq"), "{err}");
    let err = fails(&[
        "compare",
        "--model",
        m,
        "--quantizers",
        "e9p",
        "--work",
        "x",
    ]);
    assert!(err.contains("e9p") && err.contains("e8p"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
