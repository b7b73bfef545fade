//! The same command and seed give byte-identical files whatever the number of threads (issue #28): the
//! factors, the calibration record and the quantized file, with `RAYON_NUM_THREADS` 1 and 2.

mod common;

use std::path::Path;
use std::process::Command;

use common::{s, scratch, tiny_model};

fn run_with_threads(threads: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_yaqa"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .expect("run the yaqa binary");
    assert!(
        out.status.success(),
        "yaqa {args:?} with {threads} threads failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn one_and_two_threads_write_the_same_bytes() {
    let dir = scratch("threads");
    let model_dir = tiny_model(&dir, 11);
    let m = s(&model_dir);
    for threads in ["1", "2"] {
        let factors = dir.join(format!("f{threads}"));
        let q = dir.join(format!("q{threads}.safetensors"));
        run_with_threads(
            threads,
            &[
                "hessian",
                "--model",
                m,
                "--sketch",
                "b",
                "--n-seqs",
                "3",
                "--seq-len",
                "16",
                "--seed",
                "4",
                "--out",
                s(&factors),
            ],
        );
        run_with_threads(
            threads,
            &[
                // The same folder for both: the header records the factors' path.
                "quantize",
                "--model",
                m,
                "--factors",
                s(&dir.join("f1")),
                "--method",
                "yaqa",
                "--quantizer",
                "int3",
                "--eval-windows",
                "2",
                "--eval-window",
                "16",
                "--out",
                s(&q),
            ],
        );
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.join("f1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() > 2, "factor files and the record");
    for name in &names {
        assert!(
            bytes(&dir.join("f1").join(name)) == bytes(&dir.join("f2").join(name)),
            "{name:?} differs between 1 and 2 threads"
        );
    }
    assert!(
        bytes(&dir.join("q1.safetensors")) == bytes(&dir.join("q2.safetensors")),
        "the quantized file (with its evaluation) differs between 1 and 2 threads"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hessian_extends_a_finished_run_to_more_sequences() {
    let dir = scratch("extend");
    let model_dir = tiny_model(&dir, 12);
    let m = s(&model_dir);
    for sketch in ["b", "xtx"] {
        let grown = dir.join(format!("grown-{sketch}"));
        let whole = dir.join(format!("whole-{sketch}"));
        let args = |out: &Path, n: &'static str| {
            vec![
                "hessian".to_string(),
                "--model".into(),
                m.into(),
                "--sketch".into(),
                sketch.into(),
                "--n-seqs".into(),
                n.into(),
                "--seq-len".into(),
                "12".into(),
                "--out".into(),
                s(out).into(),
            ]
        };
        let run = |a: Vec<String>| {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            common::ok_stderr(&a, &[])
        };
        run(args(&grown, "3"));
        let err = run(args(&grown, "5"));
        assert!(err.contains("extending the 3 sequences"), "{err}");
        run(args(&whole, "5"));
        let mut names: Vec<_> = std::fs::read_dir(&whole)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in &names {
            assert!(
                bytes(&grown.join(name)) == bytes(&whole.join(name)),
                "{sketch}: {name:?} of the extended run differs from a run of 5 sequences"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
