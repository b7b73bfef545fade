//! Helpers the `yaqa` binary's integration tests share: running the binary, scratch folders.

// Each test file compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `yaqa` binary built for this test run.
pub fn yaqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yaqa"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run the yaqa binary")
}

/// Runs `args`, expects success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = yaqa(args);
    assert!(
        out.status.success(),
        "yaqa {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `base` followed by `extra`, expects success, returns stderr (where progress and resumption are
/// reported).
pub fn ok_stderr(base: &[&str], extra: &[&str]) -> String {
    let args: Vec<&str> = base.iter().chain(extra).copied().collect();
    let out = yaqa(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "yaqa {args:?} failed:\n{err}");
    err
}

/// Runs `args`, expects failure, returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = yaqa(args);
    assert!(!out.status.success(), "yaqa {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An empty folder of its own for one test: `yaqa-<tag>-<pid>` in the temporary folder.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A path as `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny synthetic Llama (weights from `seed`) written as a Hugging Face folder `dir/model`, which is
/// returned.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let model_dir = dir.join("model");
    let model = yaqa_model::Model::synthetic(
        yaqa_model::transformer::weights::tiny_config(yaqa_model::Family::Llama, true),
        seed,
    );
    yaqa_model::formats::hf::write_hf(&model, &model_dir).unwrap();
    model_dir
}
