//! Inputs that are valid files but wrong for the job, refused before any long work with one error
//! that names the file, tensor or flag to change (issue #28): non-finite weights, more blocks than
//! the configuration declares, a tokenizer larger than the model's vocabulary, sequences and
//! windows longer than the model's context, negative flag values, folders where files belong, and
//! outputs that cannot be written.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, ok_stderr, s, scratch, word_tokenizer, words};
use serde_json::{Value, json};
use yaqa_model::formats::hf::{RawTensor, write_hf, write_safetensors};
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

/// The tiny Llama of `common::tiny_model` (vocab 37, 2 blocks) with a context of 64 tokens, after
/// `edit`, written as a Hugging Face folder `dir/<name>`.
fn model_with(dir: &Path, name: &str, edit: impl FnOnce(&mut Model)) -> PathBuf {
    let mut model = Model::synthetic(tiny_config(Family::Llama, true), 7);
    model.config.max_position_embeddings = Some(64);
    edit(&mut model);
    let out = dir.join(name);
    write_hf(&model, &out).unwrap();
    out
}

/// Edits `config.json` of the model folder `model`.
fn edit_config(model: &Path, edit: impl FnOnce(&mut Value)) {
    let path = model.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

/// Asserts that `err` holds every one of `parts`.
fn says(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "expected {part:?} in:\n{err}");
    }
}

/// A quick `hessian` run on `model` into `out` with `extra` flags (one sequence of 8 tokens unless
/// `extra` says otherwise).
fn hessian(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "hessian",
        "--model",
        s(model),
        "--out",
        s(out),
        "--sketch",
        "xtx",
    ]
    .map(String::from)
    .to_vec();
    for (flag, value) in [("--n-seqs", "1"), ("--seq-len", "8")] {
        if !extra.contains(&flag) {
            args.extend([flag.into(), value.into()]);
        }
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn run_fails(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args)
}

/// +Inf in the tied embedding used to quantize and evaluate to perplexity NaN with KL 0; a NaN in a norm
/// went as far. Both are refused when the model is loaded, naming the tensor and the count.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let dir = scratch("bad-nonfinite");
    let inf = model_with(&dir, "inf", |m| m.embed.data[5] = f32::INFINITY);
    let out = dir.join("out-inf");
    let err = run_fails(&hessian(&inf, &out, &[]));
    says(
        &err,
        &[
            "model.safetensors",
            "tensor model.embed_tokens.weight: 1 of 592 values are not finite",
            "the first, inf, at index 5",
        ],
    );
    assert!(!out.exists(), "nothing may be written:\n{err}");

    let nan = model_with(&dir, "nan", |m| {
        m.layers[1].post_norm[2] = f32::NAN;
        m.layers[1].post_norm[9] = f32::NEG_INFINITY;
    });
    let err = run_fails(&hessian(&nan, &dir.join("out-nan"), &[]));
    says(
        &err,
        &[
            "tensor model.layers.1.post_attention_layernorm.weight: 2 of 16 values are not finite",
            "the first, NaN, at index 2",
        ],
    );
}

/// A checkpoint with a third block under `num_hidden_layers: 2` used to run as a 2-block model.
#[test]
fn blocks_beyond_the_declared_count_are_refused() {
    let dir = scratch("bad-blocks");
    let model = model_with(&dir, "three", |m| {
        let extra = m.layers[1].clone();
        m.layers.as_resident_mut().unwrap().push(extra);
        m.config.n_layers = 3;
    });
    edit_config(&model, |c| c["num_hidden_layers"] = json!(2));
    let err = run_fails(&hessian(&model, &dir.join("out"), &[]));
    let config = model.join("config.json");
    says(
        &err,
        &[
            "holds 3 decoder blocks",
            "model.layers.2.",
            &format!("num_hidden_layers in {} declares 2", config.display()),
        ],
    );
}

/// A tokenizer that can produce ids the model has no embedding for is refused when it is loaded, for
/// calibration and evaluation text alike, counting its largest id (not its number of entries) and its
/// added tokens; one that fits runs.
#[test]
fn a_tokenizer_beyond_the_vocabulary_is_refused() {
    let dir = scratch("bad-tokenizer");
    let model = model_with(&dir, "model", |_| {});
    let text = dir.join("text.txt");
    std::fs::write(&text, "w0 w1 w2 w3 w4 w5 ".repeat(40)).unwrap();
    let config = model.join("config.json");
    let vocab_37 = format!("the model {} has vocab_size 37", config.display());

    // Six words, the last with id 40.
    let sparse = dir.join("sparse.json");
    let mut six = words(5);
    six.push(("w5".into(), 40));
    word_tokenizer(&sparse, &six, false);
    let calib = ["--calib", s(&text), "--tokenizer", s(&sparse)];
    let err = run_fails(&hessian(&model, &dir.join("out-sparse"), &calib));
    says(
        &err,
        &[
            &format!("the tokenizer {} has token ids up to 40", sparse.display()),
            "a vocabulary of 41, added tokens included",
            &vocab_37,
            "--tokenizer",
        ],
    );

    // 37 words fit; an added token on top (id 37) does not. As the model folder's own tokenizer.json,
    // for evaluation text: refused before any quantized file is read (this one does not exist).
    word_tokenizer(&model.join("tokenizer.json"), &words(37), true);
    let err = fails(&[
        "eval",
        "--model",
        s(&model),
        "--quantized",
        s(&dir.join("absent.safetensors")),
        "--text",
        s(&text),
        "--window",
        "8",
        "--n-windows",
        "1",
    ]);
    says(
        &err,
        &[
            &format!(
                "{} has token ids up to 37",
                model.join("tokenizer.json").display()
            ),
            &vocab_37,
        ],
    );

    let fits = dir.join("fits.json");
    word_tokenizer(&fits, &words(37), false);
    let calib = ["--calib", s(&text), "--tokenizer", s(&fits)];
    let args = hessian(&model, &dir.join("out-fits"), &calib);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok_stderr(&args, &[]);
}

/// Sequences and windows longer than `max_position_embeddings` (64 here) are refused, naming the flag
/// and the limit, unless `--allow-long-context`; sizes that leave nothing to predict are refused too.
#[test]
fn lengths_the_model_cannot_use_are_refused_before_work() {
    let dir = scratch("bad-context");
    let model = model_with(&dir, "model", |_| {});
    let m = s(&model);
    let config = model.join("config.json");
    let limit = format!(
        "exceeds the model's context of 64 tokens (max_position_embeddings in {})",
        config.display()
    );

    let err = run_fails(&hessian(&model, &dir.join("h"), &["--seq-len", "65"]));
    says(
        &err,
        &[
            "--seq-len 65 ",
            &limit,
            "lower --seq-len to at most 64",
            "--allow-long-context",
        ],
    );
    // The override runs it.
    let long = hessian(
        &model,
        &dir.join("h-long"),
        &["--seq-len", "65", "--allow-long-context"],
    );
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    ok_stderr(&long, &[]);

    let q = dir.join("q.safetensors");
    let quantize = |extra: &[&str]| {
        let mut a = vec![
            "quantize",
            "--model",
            m,
            "--out",
            s(&q),
            "--n-seqs",
            "1",
            "--seq-len",
            "8",
        ];
        a.extend(extra);
        fails(&a)
    };
    says(
        &quantize(&["--eval-window", "100"]),
        &[
            "--eval-window 100 ",
            &limit,
            "lower --eval-window to at most 64",
        ],
    );
    says(
        &quantize(&["--eval-window", "0"]),
        &["--eval-window 0: an evaluation window needs at least 2 tokens"],
    );
    says(
        &quantize(&["--eval-windows", "0"]),
        &["--eval-windows 0: evaluation needs at least one window"],
    );
    assert!(!q.exists());

    let absent = dir.join("absent.safetensors");
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "--model", m, "--quantized", s(&absent)];
        a.extend(extra);
        fails(&a)
    };
    says(
        &eval(&["--window", "65", "--n-windows", "1"]),
        &["--window 65 ", &limit, "lower --window to at most 64"],
    );
    says(
        &eval(&["--window", "0"]),
        &["--window 0: an evaluation window needs at least 2 tokens"],
    );
    says(
        &eval(&["--n-windows", "0", "--window", "8"]),
        &["--n-windows 0: evaluation needs at least one window"],
    );

    let work = dir.join("work");
    let compare = |extra: &[&str]| {
        let mut a = vec!["compare", "--model", m, "--work", s(&work), "--n-seqs", "1"];
        a.extend(extra);
        fails(&a)
    };
    says(
        &compare(&["--seq-len", "8", "--window", "65"]),
        &["--window 65 ", &limit],
    );
    says(
        &compare(&["--seq-len", "80", "--window", "8"]),
        &["--seq-len 80 ", &limit],
    );
    assert!(!work.exists());

    says(
        &run_fails(&hessian(&model, &dir.join("h1"), &["--seq-len", "1"])),
        &["--seq-len 1: a calibration sequence needs at least 2 tokens"],
    );
    says(
        &run_fails(&hessian(&model, &dir.join("h0"), &["--n-seqs", "0"])),
        &["--n-seqs 0: calibration needs at least one sequence"],
    );
}

/// A Mistral's sliding attention window is not implemented, so sequences and windows longer than it are
/// refused before work, naming `sliding_window` and its file, even with `--allow-long-context`; a window
/// of `null` or one at least as long as every sequence runs.
#[test]
fn sequences_longer_than_a_sliding_window_are_refused() {
    let dir = scratch("bad-window");
    let windowed = model_with(&dir, "mistral", |m| {
        m.config.family = Family::Mistral;
        m.config.sliding_window = Some(16);
    });
    let field = format!(
        "sliding attention window of 16 tokens (sliding_window in {})",
        windowed.join("config.json").display()
    );
    for extra in [
        &["--seq-len", "17"][..],
        &["--seq-len", "17", "--allow-long-context"],
    ] {
        says(
            &run_fails(&hessian(&windowed, &dir.join("h"), extra)),
            &["--seq-len 17 ", &field, "lower --seq-len to at most 16"],
        );
    }
    let absent = dir.join("absent.safetensors");
    says(
        &fails(&[
            "eval",
            "--model",
            s(&windowed),
            "--quantized",
            s(&absent),
            "--window",
            "32",
            "--n-windows",
            "1",
        ]),
        &["--window 32 ", &field],
    );
    assert!(!dir.join("h").exists());
    // Sequences that fit the window run; so does a Mistral whose window is null.
    let fits = hessian(&windowed, &dir.join("h16"), &["--seq-len", "16"]);
    ok_stderr(&fits.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let unbounded = model_with(&dir, "mistral-null", |m| m.config.family = Family::Mistral);
    edit_config(&unbounded, |c| c["sliding_window"] = Value::Null);
    let long = hessian(&unbounded, &dir.join("h32"), &["--seq-len", "32"]);
    ok_stderr(&long.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
}

/// A model without `max_position_embeddings` has no known limit: a long sequence is not refused.
#[test]
fn an_unknown_context_limits_nothing() {
    let dir = scratch("bad-context-unknown");
    let model = model_with(&dir, "model", |_| {});
    edit_config(&model, |c| {
        c.as_object_mut().unwrap().remove("max_position_embeddings");
    });
    let args = hessian(&model, &dir.join("h"), &["--seq-len", "70"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok_stderr(&args, &[]);
}

/// A negative number after a numeric flag used to be read as an unknown flag ("unexpected argument
/// '-1'"); it now reaches the flag's own parser.
#[test]
fn negative_values_reach_the_flag_parser() {
    let dir = scratch("bad-negative");
    let model = model_with(&dir, "model", |_| {});
    let m = s(&model);
    let q = dir.join("q.safetensors");
    for (flag, value, message) in [
        ("--damp", "-1", "\"-1\" is not a finite number ≥ 0"),
        ("--damp-out", "-0.5", "\"-0.5\" is not a finite number ≥ 0"),
        (
            "--checkpoint-minutes",
            "-2",
            "\"-2\" is not a finite number of minutes > 0",
        ),
        ("--seq-len", "-5", "invalid digit found in string"),
        ("--eval-window", "-3", "invalid digit found in string"),
        ("--group", "-8", "invalid digit found in string"),
    ] {
        let err = fails(&["quantize", "--model", m, "--out", s(&q), flag, value]);
        says(
            &err,
            &[&format!("invalid value '{value}' for '{flag} "), message],
        );
        assert!(!err.contains("unexpected argument"), "{err}");
    }
    let err = fails(&["eval", "--model", m, "--quantized", s(&q), "--window", "-1"]);
    says(&err, &["invalid value '-1' for '--window "]);
}

/// A folder given where a file belongs used to fail in mmap with "No such device".
#[test]
fn a_folder_where_a_file_belongs_is_named() {
    let dir = scratch("bad-folder");
    let model = model_with(&dir, "model", |_| {});
    let folder = dir.join("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let expected = format!("{} is a folder, expected a file", folder.display());

    let err = run_fails(&[
        "hessian".into(),
        "--model".into(),
        s(&model).into(),
        "--out".into(),
        s(&dir.join("h")).into(),
        "--calib-ids".into(),
        s(&folder).into(),
    ]);
    says(&err, &[&expected]);
    assert!(!err.contains("No such device"), "{err}");

    let weights = dir.join("w.safetensors");
    let w: Vec<f32> = (0..16 * 16).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
    let tensors = [("w".to_string(), RawTensor::f32s(vec![16, 16], &w))];
    write_safetensors(&weights, &tensors, "format", "pt").unwrap();
    let out = dir.join("r.safetensors");
    let round = |weights: &Path, factors: &Path| {
        fails(&[
            "round",
            "--weights",
            s(weights),
            "--factors",
            s(factors),
            "--out",
            s(&out),
        ])
    };
    says(&round(&folder, &weights), &[&expected]);
    says(&round(&weights, &folder), &[&expected]);

    let err = fails(&[
        "eval",
        "--model",
        s(&model),
        "--quantized",
        s(&folder),
        "--window",
        "8",
        "--n-windows",
        "1",
    ]);
    says(&err, &[&expected]);

    // Text inputs: calibration text, its tokenizer, evaluation text.
    let text = dir.join("text.txt");
    std::fs::write(&text, "w0 w1 w2 w3 w4 ".repeat(10)).unwrap();
    let tok = dir.join("tok.json");
    word_tokenizer(&tok, &words(5), false);
    for calib in [
        ["--calib", s(&folder), "--tokenizer", s(&tok)],
        ["--calib", s(&text), "--tokenizer", s(&folder)],
    ] {
        says(
            &run_fails(&hessian(&model, &dir.join("h"), &calib)),
            &[&expected],
        );
    }
    let err = fails(&[
        "eval",
        "--model",
        s(&model),
        "--quantized",
        s(&dir.join("absent.safetensors")),
        "--text",
        s(&folder),
        "--tokenizer",
        s(&tok),
        "--window",
        "8",
        "--n-windows",
        "1",
    ]);
    says(&err, &[&expected]);
}

/// An output that cannot be written is reported under its own name, as an I/O error: it used to name
/// the hidden temporary file and call the failure a bad format.
#[test]
fn an_unwritable_output_is_named() {
    let dir = scratch("bad-output");
    let model = model_with(&dir, "model", |_| {});
    let factors = dir.join("factors");
    ok(&hessian(&model, &factors, &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let weights = dir.join("w.safetensors");
    let m = Model::synthetic(tiny_config(Family::Llama, true), 7);
    let q = &m.layers[0].q_proj;
    let tensors = [(
        "q".to_string(),
        RawTensor::f32s(vec![q.rows, q.cols], &q.data),
    )];
    write_safetensors(&weights, &tensors, "format", "pt").unwrap();
    let out = dir.join("missing").join("r.safetensors");
    let err = fails(&[
        "round",
        "--weights",
        s(&weights),
        "--factors",
        s(&factors.join("model.layers.0.self_attn.q_proj.xtx.safetensors")),
        "--method",
        "ldlq",
        "--out",
        s(&out),
    ]);
    says(
        &err,
        &[&format!(
            "cannot write {}: No such file or directory",
            out.display()
        )],
    );
    assert!(
        !err.contains(".tmp-") && !err.contains("bad format"),
        "{err}"
    );
}
