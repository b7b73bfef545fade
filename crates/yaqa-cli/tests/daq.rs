//! `yaqa quantize --method daq --base` (issue #19): on a real fine-tune of a tiny model, DAQ's FP8
//! keeps the delta at least as well as FP8 with AbsMax scales (the search's first criterion is the
//! delta's cosine per scale block, and `r = 1` is always a candidate), writes a file `eval` reads, resumes
//! to the same bytes, and refuses what it cannot take before any work.

mod common;
use common::{fails, ok, s, scratch, tiny_model, word_tokenizer, words};

#[test]
fn daq_keeps_the_delta_and_refuses_what_it_cannot_take() {
    let dir = scratch("daq");
    let base = tiny_model(&dir, 5);
    word_tokenizer(&base.join("tokenizer.json"), &words(37), false);
    let text = dir.join("text.txt");
    let line: String = (0..37).map(|i| format!("w{} ", (i * 3) % 37)).collect();
    std::fs::write(&text, line.repeat(40)).unwrap();
    let tuned = dir.join("tuned");
    ok(&[
        "finetune",
        "--model",
        s(&base),
        "--text",
        s(&text),
        "--steps",
        "4",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--lr",
        "0.003",
        "--eval-windows",
        "1",
        "--out",
        s(&tuned),
    ]);
    let fp8 = |method: &str, out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            s(&tuned),
            "--method",
            method,
            "--quantizer",
            "fp8",
            "--no-incoherence",
            "--no-eval",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[String]| ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let absmax = dir.join("absmax.safetensors");
    run(&fp8(
        "rtn",
        &absmax,
        &["--calib", s(&text), "--n-seqs", "2", "--seq-len", "16"],
    ));
    let daq = dir.join("daq.safetensors");
    run(&fp8("daq", &daq, &["--base", s(&base)]));
    let clip = dir.join("noclip.safetensors");
    run(&fp8("daq", &clip, &["--base", s(&base), "--daq-no-clip"]));

    // Resumable like every quantize: stopped after 5 layers, then finished, the same bytes.
    let resumed = dir.join("resumed.safetensors");
    let mut stop = fp8(
        "daq",
        &resumed,
        &["--base", s(&base), "--stop-after-layers", "5"],
    );
    run(&stop);
    assert!(!resumed.exists(), "a stopped run writes no output");
    stop.truncate(stop.len() - 2);
    run(&stop);
    assert_eq!(
        std::fs::read(&daq).unwrap(),
        std::fs::read(&resumed).unwrap()
    );

    let json = dir.join("eval.json");
    ok(&[
        "eval",
        "--model",
        s(&tuned),
        "--quantized",
        s(&absmax),
        s(&daq),
        s(&clip),
        "--base",
        s(&base),
        "--text",
        s(&text),
        "--window",
        "16",
        "--n-windows",
        "2",
        "--json",
        s(&json),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cos = |row: usize| v["rows"][row]["delta"]["block_cosine"].as_f64().unwrap();
    let header = |p: &std::path::Path| {
        yaqa_model::formats::quant_file::QuantFile::open(p)
            .unwrap()
            .header
    };
    let h = header(&daq);
    assert_eq!(h["method"], "daq", "{h}");
    assert_eq!(h["quantizer"]["kind"], "fp8-e4m3");
    // Per block never below AbsMax, so the mean over blocks is not either.
    assert!(
        cos(1) >= cos(0) && cos(2) >= cos(0),
        "DAQ {} / {} vs AbsMax {}",
        cos(1),
        cos(2),
        cos(0)
    );

    // Refused before any work, naming the flag.
    let refused = |args: Vec<String>, want: &str| {
        let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains(want), "{want}: {err}");
    };
    let x = dir.join("x.safetensors");
    refused(fp8("daq", &x, &[]), "pass it as --base");
    refused(
        fp8("rtn", &x, &["--base", s(&base)]),
        "--base is the reference of --method daq",
    );
    refused(fp8("rtn", &x, &["--daq-no-clip"]), "--daq-no-clip");
    let mut int4 = fp8("daq", &x, &["--base", s(&base)]);
    int4[6] = "int4".into();
    refused(int4, "--quantizer fp8");
    let mut rotated = fp8("daq", &x, &["--base", s(&base)]);
    rotated.retain(|a| a != "--no-incoherence");
    refused(rotated, "--no-incoherence");
    refused(
        fp8("daq", &x, &["--base", s(&tuned)]),
        "is the model itself",
    );
    assert!(!x.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
