//! A full disk, simulated with the file-size limit (`ulimit -f`, with SIGXFSZ ignored so the write
//! fails with EFBIG instead of killing the process): the write that crosses it fails with an error
//! naming the output, no temporary file is left, the state before the write (a finished run's part
//! files, a folder's previous contents) stays intact, and rerunning without the limit ends with the same
//! bytes as a run that never failed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ok, s, scratch, tiny_model};

/// Runs the `yaqa` binary under `ulimit -f` of `limit_bytes` (rounded down to bash's 1024-byte
/// blocks); returns (success, stderr).
fn yaqa_limited(limit_bytes: u64, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f "$1"; shift; exec "$@""#)
        .arg("yaqa-limited")
        .arg((limit_bytes / 1024).to_string())
        .arg(env!("CARGO_BIN_EXE_yaqa"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every file under `dir` whose name says it is a temporary.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            found.extend(temporaries(&e.path()));
        } else if name.contains(".tmp") {
            found.push(e.path().display().to_string());
        }
    }
    found
}

#[test]
fn a_write_that_fills_the_disk_fails_cleanly_and_the_rerun_ends_identical() {
    let dir = scratch("disk-full");
    let model_dir = tiny_model(&dir, 21);
    let m = s(&model_dir);
    let factors = dir.join("factors");
    ok(&[
        "hessian",
        "--model",
        m,
        "--sketch",
        "xtx",
        "--n-seqs",
        "3",
        "--seq-len",
        "10",
        "--out",
        s(&factors),
    ]);
    let quantize = |out: &Path| {
        vec![
            "quantize".to_string(),
            "--model".into(),
            m.into(),
            "--factors".into(),
            s(&factors).into(),
            "--method".into(),
            "ldlq".into(),
            "--quantizer".into(),
            "int8".into(),
            "--no-eval".into(),
            "--out".into(),
            s(out).into(),
        ]
    };
    let whole = dir.join("whole.safetensors");
    ok(&strs(&quantize(&whole)));
    let size = std::fs::metadata(&whole).unwrap().len();
    let parts_dir = dir.join("cut.safetensors.parts");

    // The limit lets every part through but not the assembled file: the run fails at the end.
    let cut = dir.join("cut.safetensors");
    let (good, err) = yaqa_limited(size / 2, &strs(&quantize(&cut)));
    assert!(!good, "the write past the limit must fail");
    assert!(err.contains(s(&cut)), "names the output: {err}");
    assert!(err.contains("too large"), "says why: {err}");
    assert!(
        !err.contains(".tmp"),
        "names the output, not its temporary: {err}"
    );
    assert!(!cut.exists());
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    let parts = std::fs::read_dir(&parts_dir).unwrap().count();
    assert!(parts > 0, "the finished layers' parts are kept");

    // A limit smaller than one part: the first part's write fails, nothing half-written stays.
    let early = dir.join("early.safetensors");
    let (good, err) = yaqa_limited(1024, &strs(&quantize(&early)));
    assert!(!good);
    assert!(err.contains("too large"), "{err}");
    assert_eq!(temporaries(&dir), Vec::<String>::new());

    // Without the limit the run resumes from the parts and writes what the uninterrupted run wrote.
    let rerun = ok(&strs(&quantize(&cut)));
    let _ = rerun;
    assert_eq!(std::fs::read(&cut).unwrap(), std::fs::read(&whole).unwrap());
    assert!(!parts_dir.exists());

    // A factor collection that cannot write its files: the error names the folder, and the rerun
    // writes the same factors as the first collection.
    let again = dir.join("factors-again");
    let hessian = [
        "hessian",
        "--model",
        m,
        "--sketch",
        "xtx",
        "--n-seqs",
        "3",
        "--seq-len",
        "10",
        "--out",
        s(&again),
    ];
    let (good, err) = yaqa_limited(1024, &hessian);
    assert!(!good);
    assert!(err.contains(s(&again)), "{err}");
    assert_eq!(temporaries(&dir), Vec::<String>::new());
    ok(&hessian);
    for e in std::fs::read_dir(&factors).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(again.join(e.file_name())).unwrap(),
            "{:?}",
            e.file_name()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
