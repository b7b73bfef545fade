//! Inputs that are valid files but wrong for the job, refused before any long work with one error
//! that names the file, tensor or flag to change (issue #28): non-finite weights, more blocks than
//! the configuration declares, a tokenizer larger than the model's vocabulary, sequences and
//! windows longer than the model's context, negative flag values, folders where files belong, and
//! outputs that cannot be written; and (session 17) calibration and evaluation texts that cannot give
//! what is asked, repeated `compare` flags, factors of another layer, shards of another calibration,
//! files of another model, malformed shards and `finetune`'s own flags.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, ok_stderr, s, word_tokenizer, words};
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

/// A scratch folder (`common::scratch`) removed when the test ends, and kept for a look when it fails.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(tag: &str) -> Scratch {
    Scratch(common::scratch(tag))
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

/// Runs [`hessian`]'s command, which must succeed.
fn collect(model: &Path, out: &Path, extra: &[&str]) {
    let args = hessian(model, out, extra);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
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
    collect(&model, &factors, &[]);
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

/// A report or work folder under an existing file (`--json notes.txt/r.json`) is refused before the
/// evaluation or the factors are done, naming the flag and the file in the way (session 18; `eval --json`
/// used to find out when it wrote the report, after the evaluation).
#[test]
fn an_output_under_a_file_is_refused_before_work() {
    let dir = scratch("bad-output-under-file");
    let model = model_with(&dir, "model", |_| {});
    let file = dir.join("notes.txt");
    std::fs::write(&file, "not a folder").unwrap();
    let json = file.join("r.json");
    let work = file.join("work");
    let sizes = ["--window", "8", "--n-windows", "2"];
    for (flag, args) in [
        (
            "--json",
            [
                &["eval", "--model", s(&model), "--json", s(&json)][..],
                &["--quantized", s(&dir.join("q.safetensors"))],
                &sizes,
            ]
            .concat(),
        ),
        (
            "--work",
            [
                &["compare", "--model", s(&model), "--work", s(&work)][..],
                &["--n-seqs", "2", "--seq-len", "8", "--bits", "3"],
                &sizes,
            ]
            .concat(),
        ),
    ] {
        let err = refused(
            &args,
            &[flag, &format!("{} is a file, not a folder", file.display())],
        );
        // Refused at once: no progress of an evaluation or a calibration before it.
        assert!(
            !err.contains("window") && !err.contains("sampling"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs the `yaqa` binary as a user who may not write `dir` nor read `secret`: as `nobody` through
/// `setpriv` when the tests run as root (which may write anywhere), else as the caller with `dir`
/// made read-only and `secret` unreadable. `None` (with the reason printed) where neither is possible.
fn yaqa_unprivileged(dir: &Path, secret: &Path, args: &[String]) -> Option<std::process::Output> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(env!("CARGO_BIN_EXE_yaqa"));
        c
    } else {
        chmod(dir, 0o555);
        std::process::Command::new(env!("CARGO_BIN_EXE_yaqa"))
    };
    chmod(secret, 0o600);
    let out = cmd.args(args).env("NO_COLOR", "1").output();
    chmod(dir, 0o755);
    match out {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("skipped: running as root without setpriv to drop privileges ({e})");
            None
        }
    }
}

/// A folder the user may not write and a model file the user may not read are named with the system's
/// reason, before any work, and nothing is left behind (session 18; untested before, as the sandbox
/// runs as root).
#[test]
fn permission_errors_name_the_path() {
    let dir = scratch("bad-permissions");
    let model = model_with(&dir, "model", |_| {});
    // The model readable by all but its weights; the scratch folder writable by its owner only.
    chmod(&model, 0o755);
    chmod(&model.join("config.json"), 0o644);
    let weights = model.join("model.safetensors");
    let locked = dir.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    let out = locked.join("factors");
    let args = hessian(&model, &out, &[]);
    let Some(o) = yaqa_unprivileged(&locked, &weights, &args) else {
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    // Whichever comes first, the output's folder or the model's weights, is named with the reason.
    let named_out = err.contains(&locked.display().to_string());
    let named_weights = err.contains(&weights.display().to_string());
    assert!(
        (named_out || named_weights) && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!out.exists(), "{err}");

    // The weights readable again: the unwritable output is what is refused, before the collection.
    chmod(&weights, 0o644);
    let readable = dir.join("readable.txt");
    std::fs::write(&readable, "x").unwrap();
    let o = yaqa_unprivileged(&locked, &readable, &args).unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    says(&err, &[&locked.display().to_string(), "Permission denied"]);
    assert!(!err.contains("sampling") && !out.exists(), "{err}");

    // A model file that cannot be read, with the output writable by anyone.
    let open = dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    chmod(&open, 0o777);
    let o = yaqa_unprivileged(&locked, &weights, &hessian(&model, &open.join("f"), &[])).unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    says(&err, &[&weights.display().to_string(), "Permission denied"]);
    assert!(!open.join("f").exists(), "{err}");
}

// Flags, texts and files given by hand (session 17).

/// Runs `args` (strings), expects failure, and checks that the error holds every one of `parts`.
fn refused(args: &[&str], parts: &[&str]) -> String {
    let err = fails(args);
    says(&err, parts);
    err
}

/// A calibration text that is empty, not UTF-8, missing, or too short for the sequences asked for is
/// refused naming the file and what it lacks (the shortness used to be reported without the file), and
/// nothing is written.
#[test]
fn calibration_texts_that_cannot_give_the_sequences_are_named() {
    let dir = scratch("bad-calib-text");
    let model = model_with(&dir, "model", |_| {});
    let tok = dir.join("tok.json");
    word_tokenizer(&tok, &words(37), false);
    let text = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let empty = text("empty.txt", b"");
    let blank = text("blank.txt", b"  \n\t \n");
    let latin1 = text("latin1.txt", b"w1 w2 caf\xe9 w3");
    let short = text("short.txt", b"w1 w2 w3");
    let forty = text("forty.txt", "w1 w2 w3 w4 ".repeat(10).as_bytes());
    let missing = dir.join("missing.txt");
    let out = dir.join("h");
    let run = |file: &Path, extra: &[&str]| {
        let mut a = vec!["--calib", s(file), "--tokenizer", s(&tok)];
        a.extend(extra);
        let err = run_fails(&hessian(&model, &out, &a));
        assert!(
            !out.exists(),
            "{} wrote {}:\n{err}",
            file.display(),
            out.display()
        );
        err
    };
    for file in [&empty, &blank] {
        says(
            &run(file, &[]),
            &[
                &format!("cutting calibration windows from {}", file.display()),
                "the text holds no tokens (an empty file, or only whitespace)",
            ],
        );
    }
    says(
        &run(&latin1, &[]),
        &[
            &latin1.display().to_string(),
            "not UTF-8 text (the first byte that is not UTF-8 is at offset 9)",
        ],
    );
    says(
        &run(&missing, &[]),
        &[&missing.display().to_string(), "No such file or directory"],
    );
    says(
        &run(&short, &[]),
        &[
            &short.display().to_string(),
            "the text has 3 tokens, fewer than one sequence of 8",
        ],
    );
    says(
        &run(&forty, &["--n-seqs", "6"]),
        &[
            &forty.display().to_string(),
            "the text has 40 tokens: 5 sequences of 8, fewer than the 6 asked for",
        ],
    );
    // Five sequences of that text run.
    let fits = hessian(
        &model,
        &out,
        &[
            "--calib",
            s(&forty),
            "--tokenizer",
            s(&tok),
            "--n-seqs",
            "5",
        ],
    );
    ok_stderr(&fits.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
}

/// An evaluation text too short for the windows is refused naming the file and the tokens needed, and
/// before the work: `quantize --eval-text` used to find it after rounding every layer, `compare --text`
/// after collecting every factor.
#[test]
fn an_evaluation_text_too_short_for_the_windows_is_refused_before_work() {
    let dir = scratch("bad-eval-text");
    let model = model_with(&dir, "model", |_| {});
    word_tokenizer(&model.join("tokenizer.json"), &words(37), false);
    let m = s(&model);
    let short = dir.join("short.txt");
    std::fs::write(&short, "w1 w2 w3 w4 ".repeat(5)).unwrap();
    let too_short = format!(
        "the evaluation text {} has 20 tokens, but 3 windows of 8 need 24",
        short.display()
    );

    let q = dir.join("q.safetensors");
    let err = refused(
        &[
            "quantize",
            "--model",
            m,
            "--out",
            s(&q),
            "--method",
            "ldlq",
            "--n-seqs",
            "1",
            "--seq-len",
            "8",
            "--eval-text",
            s(&short),
            "--eval-window",
            "8",
            "--eval-windows",
            "3",
        ],
        &[&too_short],
    );
    assert!(!err.contains("proxy"), "a layer was rounded first:\n{err}");
    for left in [
        "q.safetensors",
        "q.safetensors.parts",
        "q.safetensors.factors.partial",
    ] {
        assert!(!dir.join(left).exists(), "{left} was left:\n{err}");
    }

    let work = dir.join("work");
    let err = refused(
        &[
            "compare",
            "--model",
            m,
            "--work",
            s(&work),
            "--n-seqs",
            "1",
            "--seq-len",
            "8",
            "--bits",
            "3",
            "--methods",
            "rtn,ldlq",
            "--text",
            s(&short),
            "--window",
            "8",
            "--n-windows",
            "3",
        ],
        &[&too_short],
    );
    assert!(
        !err.contains("factors:"),
        "factors were collected first:\n{err}"
    );
    assert!(!work.exists(), "{err}");

    // `eval` of a real quantized file: refused the same way; two windows fit and run.
    ok(&[
        "quantize",
        "--model",
        m,
        "--out",
        s(&q),
        "--method",
        "rtn",
        "--n-seqs",
        "1",
        "--seq-len",
        "8",
        "--no-eval",
    ]);
    let json = dir.join("eval.json");
    let eval = |n_windows: &'static str| {
        vec![
            "eval",
            "--model",
            m,
            "--quantized",
            s(&q),
            "--text",
            s(&short),
            "--window",
            "8",
            "--n-windows",
            n_windows,
            "--json",
            s(&json),
        ]
    };
    refused(
        &eval("3"),
        &[&too_short, "give more text, or fewer or shorter windows"],
    );
    assert!(!json.exists());
    ok(&eval("2"));
    assert!(json.exists());
}

/// `compare` refuses a method or a grid given twice (it used to quantize and print a duplicate row or
/// table), a bit width no grid has, an empty bit width and an unknown method, before any work.
#[test]
fn compare_refuses_repeated_and_unknown_methods_and_widths() {
    let dir = scratch("bad-compare-flags");
    let model = model_with(&dir, "model", |_| {});
    let work = dir.join("work");
    let compare = |extra: &[&str]| {
        let mut a = vec![
            "compare",
            "--model",
            s(&model),
            "--work",
            s(&work),
            "--n-seqs",
            "1",
            "--seq-len",
            "8",
            "--window",
            "8",
            "--n-windows",
            "1",
        ];
        a.extend(extra);
        let err = fails(&a);
        assert!(!work.exists(), "{extra:?}:\n{err}");
        err
    };
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--methods", "rtn,ldlq,ldlq", "--bits", "3"],
            &["--methods: ldlq is given twice"],
        ),
        (
            &["--methods", "rtn,ldlq", "--bits", "3,4,3"],
            &["--bits/--quantizers: int3 is given twice"],
        ),
        (
            &["--methods", "rtn,ldlq", "--quantizers", "int4,fp8,int4"],
            &["--bits/--quantizers: int4 is given twice"],
        ),
        (
            &["--methods", "rtn", "--bits", "9"],
            &["--bits: 9 is not one of 2, 3, 4, 8"],
        ),
        (
            &["--methods", "rtn", "--bits="],
            &["invalid value '' for '--bits <BITS>'", "empty string"],
        ),
        (
            &["--methods", "rtn,ldlq-b", "--bits", "3"],
            &[
                "invalid value 'ldlq-b' for '--methods <METHODS>'",
                "possible values: rtn, gptq, ldlq, yaqa-a, yaqa-b, yaqa-ab",
            ],
        ),
    ];
    for (extra, needles) in cases {
        says(&compare(extra), needles);
    }
}

/// `round` with the factor file of another layer is refused naming both files and both shapes (it used
/// to fail inside the rounding with `shape mismatch in w: h_in vs W columns: expected 16, got 24`).
#[test]
fn round_refuses_the_factors_of_another_layer() {
    let dir = scratch("bad-round-factors");
    let model = model_with(&dir, "model", |_| {});
    let xtx = dir.join("xtx");
    collect(&model, &xtx, &[]);
    let b = dir.join("b");
    ok(&[
        "hessian",
        "--model",
        s(&model),
        "--out",
        s(&b),
        "--sketch",
        "b",
        "--n-seqs",
        "1",
        "--seq-len",
        "8",
    ]);
    let m = Model::synthetic(tiny_config(Family::Llama, true), 7);
    let weights = dir.join("w.safetensors");
    let (q, gate) = (&m.layers[0].q_proj, &m.layers[0].gate_proj);
    let tensors = [
        (
            "q".to_string(),
            RawTensor::f32s(vec![q.rows, q.cols], &q.data),
        ),
        (
            "gate".to_string(),
            RawTensor::f32s(vec![gate.rows, gate.cols], &gate.data),
        ),
    ];
    write_safetensors(&weights, &tensors, "format", "pt").unwrap();
    let out = dir.join("r.safetensors");
    let round = |tensor: &str, factors: &Path, method: &str| {
        let err = fails(&[
            "round",
            "--weights",
            s(&weights),
            "--tensor",
            tensor,
            "--factors",
            s(factors),
            "--method",
            method,
            "--out",
            s(&out),
        ]);
        assert!(!out.exists(), "{err}");
        err
    };
    // q (16 × 16) against down_proj's Σ x xᵀ (24 × 24).
    let down = xtx.join("model.layers.0.mlp.down_proj.xtx.safetensors");
    let err = round("q", &down, "ldlq");
    says(
        &err,
        &[
            &format!("--factors {}", down.display()),
            "h_in of model.layers.0.mlp.down_proj is 24 × 24",
            &format!(
                "q in --weights {} is 16 × 16 (16 columns)",
                weights.display()
            ),
            "pass the factor file of the layer this matrix belongs to",
        ],
    );
    assert!(!err.contains("shape mismatch"), "{err}");
    // gate (24 × 16) against q_proj's Sketch B factors: h_in fits, h_out (16 × 16) does not.
    let q_b = b.join("model.layers.0.self_attn.q_proj.b.safetensors");
    says(
        &round("gate", &q_b, "yaqa"),
        &[
            "h_out of model.layers.0.self_attn.q_proj is 16 × 16",
            "gate in --weights",
            "is 24 × 16 (24 rows)",
        ],
    );
    // LDLQ uses no h_out: the same pair rounds.
    ok(&[
        "round",
        "--weights",
        s(&weights),
        "--tensor",
        "gate",
        "--factors",
        s(&q_b),
        "--method",
        "ldlq",
        "--out",
        s(&out),
    ]);
}

/// `hessian merge` of shards collected with another `--seq-len` or `--seed` is refused naming the shard
/// and the differing values, with or without calibration records, and leaves no output folder.
#[test]
fn hessian_merge_refuses_shards_of_another_calibration() {
    let dir = scratch("bad-merge-calib");
    let model = model_with(&dir, "model", |_| {});
    let shard = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut a = vec!["--n-seqs", "2", "--shard"];
        a.extend(extra);
        collect(&model, &out, &a);
        out
    };
    let s0 = shard("s0", &["0/2"]);
    let s1_long = shard("s1-long", &["1/2", "--seq-len", "16"]);
    let s1_seed = shard("s1-seed", &["1/2", "--seed", "3"]);
    let merged = dir.join("merged");
    let merge = |other: &Path| {
        let err = fails(&["hessian", "merge", "--out", s(&merged), s(&s0), s(other)]);
        assert!(!merged.exists(), "{err}");
        err
    };
    says(
        &merge(&s1_long),
        &[
            &s1_long
                .join("calibration.safetensors")
                .display()
                .to_string(),
            "recorded by a different run than the first shard (seed 0 / seq_len 16",
        ],
    );
    // Without the records, the factor files' own headers tell.
    for folder in [&s0, &s1_seed] {
        std::fs::remove_file(folder.join("calibration.safetensors")).unwrap();
    }
    says(
        &merge(&s1_seed),
        &[
            &s1_seed.display().to_string(),
            "seed 3, but the first shard used 8 / data-free / 0",
        ],
    );
}

/// `eval` of a file quantized from a model with other shapes, and `eval --base` or `quantize --method
/// daq --base` of such a model, are refused naming both models and no output is written. (The model
/// fingerprint hashes config.json and the safetensors headers, not the weights: a file quantized from a
/// model of the same shapes and header is not recognised as another model's.)
#[test]
fn files_of_another_model_are_refused_by_eval_and_daq() {
    let dir = scratch("bad-other-model");
    let model = model_with(&dir, "model", |_| {});
    let mut wide_config = tiny_config(Family::Llama, true);
    wide_config.intermediate_size = 32;
    let wide = dir.join("wide");
    write_hf(&Model::synthetic(wide_config, 7), &wide).unwrap();
    let q_wide = dir.join("q-wide.safetensors");
    let quantize = |m: &Path, out: &Path| {
        ok(&[
            "quantize",
            "--model",
            s(m),
            "--out",
            s(out),
            "--method",
            "rtn",
            "--n-seqs",
            "1",
            "--seq-len",
            "8",
            "--no-eval",
        ]);
    };
    quantize(&wide, &q_wide);
    let json = dir.join("eval.json");
    let eval = |quantized: &Path, extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--model",
            s(&model),
            "--quantized",
            s(quantized),
            "--window",
            "8",
            "--n-windows",
            "1",
            "--json",
            s(&json),
        ];
        a.extend(extra);
        let err = fails(&a);
        assert!(!json.exists(), "{err}");
        err
    };
    says(
        &eval(&q_wide, &[]),
        &[&format!(
            "{} was quantized from a different model than {}",
            q_wide.display(),
            model.display()
        )],
    );
    let q = dir.join("q.safetensors");
    quantize(&model, &q);
    let other_shapes = format!(
        "the base model {} has other shapes than {}",
        wide.display(),
        model.display()
    );
    says(&eval(&q, &["--base", s(&wide)]), &[&other_shapes]);
    let daq = dir.join("daq.safetensors");
    refused(
        &[
            "quantize",
            "--model",
            s(&model),
            "--method",
            "daq",
            "--quantizer",
            "fp8",
            "--no-incoherence",
            "--no-eval",
            "--base",
            s(&wide),
            "--out",
            s(&daq),
        ],
        &[&other_shapes],
    );
    assert!(!daq.exists() && !dir.join("daq.safetensors.parts").exists());

    // The same layout and header, other weights (as a fine-tune and its base): the fingerprint's sample
    // of every tensor's bytes tells them apart, where the headers alone did not.
    let tuned = model_with(&dir, "tuned", |m| {
        for w in m.embed.data.iter_mut() {
            *w *= 1.01;
        }
    });
    let q_tuned = dir.join("q-tuned.safetensors");
    quantize(&tuned, &q_tuned);
    says(
        &eval(&q_tuned, &[]),
        &[&format!(
            "{} was quantized from a different model than {}",
            q_tuned.display(),
            model.display()
        )],
    );
}

/// A shard that is not `I/N` with `0 ≤ I < N` is refused at argument parsing, saying which part is wrong.
#[test]
fn malformed_shards_are_refused() {
    let dir = scratch("bad-shard");
    let model = model_with(&dir, "model", |_| {});
    let out = dir.join("h");
    for (shard, message) in [
        (
            "0/0",
            "shard \"0/0\": need 0 ≤ I < N (shards are numbered from 0)",
        ),
        ("1/x", "shard count \"x\" is not a number"),
        ("y/2", "shard index \"y\" is not a number"),
        ("2", "shard \"2\" is not of the form I/N (for example 0/4)"),
    ] {
        let err = run_fails(&hessian(&model, &out, &["--shard", shard]));
        says(
            &err,
            &[
                &format!("invalid value '{shard}' for '--shard <I/N>'"),
                message,
            ],
        );
        assert!(!out.exists());
    }
}

/// `finetune` names the `--seq-len` it was given (it used to name `--seq-len 1` for 0 and `--seq-len 101`
/// for 100, the window with its first token), lets a window of the model's whole context run (it
/// refused one token early), shortens its perplexity windows to a short context (it refused every model
/// under 256 tokens as `--seq-len 256 exceeds the model's context`), and names its text when that is
/// too short.
#[test]
fn finetune_names_the_flags_it_was_given() {
    let dir = scratch("bad-finetune");
    let model = model_with(&dir, "model", |_| {});
    word_tokenizer(&model.join("tokenizer.json"), &words(37), false);
    let long = dir.join("text.txt");
    std::fs::write(&long, "w1 w5 w9 w2 w7 ".repeat(30)).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "w1 w2 w3").unwrap();
    let out = dir.join("tuned");
    let finetune = |text: &'static str, seq_len: &'static str| {
        let text = if text == "short" { s(&short) } else { s(&long) };
        vec![
            "finetune",
            "--model",
            s(&model),
            "--text",
            text,
            "--steps",
            "1",
            "--batch",
            "2",
            "--eval-windows",
            "1",
            "--seq-len",
            seq_len,
            "--out",
            s(&out),
        ]
    };
    let err = refused(
        &finetune("long", "0"),
        &["--seq-len 0: a training window must predict at least one token"],
    );
    assert!(!err.contains("--seq-len 1"), "{err}");
    let err = refused(
        &finetune("long", "100"),
        &[
            "--seq-len 100 exceeds the model's context of 64 tokens",
            "lower --seq-len to at most 64",
        ],
    );
    assert!(!err.contains("101") && !err.contains("256"), "{err}");
    says(
        &refused(&finetune("short", "8"), &[&short.display().to_string()]),
        &[
            "--steps 1 × --batch 2 training windows of --seq-len 8 tokens",
            "the text has 3 tokens, fewer than one sequence of 9",
        ],
    );
    assert!(!out.exists());
    // The whole context of 64 tokens trains; perplexity is taken on windows of 64.
    ok(&finetune("long", "64"));
    assert!(out.join("model.safetensors").is_file());
    // A Mistral's sliding window of 16 limits --seq-len to 16 (windows of 17 tokens run 16 of them).
    let mistral = model_with(&dir, "mistral", |m| {
        m.config.family = Family::Mistral;
        m.config.sliding_window = Some(16);
    });
    word_tokenizer(&mistral.join("tokenizer.json"), &words(37), false);
    let tune = |seq_len: &'static str, out: &Path| -> Vec<String> {
        let mut args: Vec<String> = finetune("long", seq_len)
            .into_iter()
            .map(String::from)
            .collect();
        args[2] = s(&mistral).to_string();
        *args.last_mut().unwrap() = s(out).to_string();
        args
    };
    let tuned = dir.join("tuned-mistral");
    says(
        &run_fails(&tune("17", &tuned)),
        &[
            "--seq-len 17 ",
            "sliding attention window of 16 tokens",
            "at most 16",
        ],
    );
    assert!(!tuned.exists());
    let args = tune("16", &tuned);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(tuned.join("model.safetensors").is_file());
}
