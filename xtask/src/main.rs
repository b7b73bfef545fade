//! `cargo xtask`: project automation that shells out to cargo and depends on none of the workspace's
//! crates.
//!
//! - `cargo xtask parity [--allow-no-gpu]`: runs the parity program (`yaqa-backend-cuda`'s `parity`
//!   example), which evaluates every backend operation on identical inputs on the CPU, on CUDA and with
//!   the f64 reference and prints a table sorted by worst error against its budget. Fails on any case
//!   over budget; on a machine without a CUDA device it says so and fails unless `--allow-no-gpu`.
//! - `cargo xtask nvrtc-check`: installs NVRTC from PyPI (`scripts/nvrtc.sh`) and runs the
//!   `kernels_compile` test with `YAQA_REQUIRE_NVRTC=1`, so that every kernel in `cuda/` must compile
//!   for compute_80 and compute_90. No GPU needed; this is what CI runs.
//! - `cargo xtask tidy`: no import cycles between the modules of any crate, and command-line files
//!   under 400 lines ([`tidy`]).

mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// The parity program's exit status when everything passed but no CUDA device was available.
const PARITY_NO_GPU: i32 = 3;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  parity [--allow-no-gpu]   CPU vs CUDA vs f64 reference on every backend operation
  nvrtc-check               install NVRTC from PyPI and compile every kernel in cuda/ with it
  tidy                      no import cycles between modules; command-line files under 400 lines";

fn workspace_root() -> Result<PathBuf> {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .context("CARGO_MANIFEST_DIR is not set: run this through `cargo xtask`")?;
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("the xtask folder has no parent")
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn parity(root: &Path, allow_no_gpu: bool) -> Result<()> {
    let status = cargo()
        .current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            "yaqa-backend-cuda",
            "--example",
            "parity",
        ])
        .status()
        .context("running cargo for the parity example")?;
    match status.code() {
        Some(0) => {
            println!("parity: every case within budget on CPU and CUDA");
            Ok(())
        }
        Some(PARITY_NO_GPU) if allow_no_gpu => {
            println!(
                "parity: CPU cases within budget; no CUDA device, so CUDA parity was NOT RUN \
                 (accepted because of --allow-no-gpu)"
            );
            Ok(())
        }
        Some(PARITY_NO_GPU) => bail!(
            "parity: no CUDA device on this machine, so CUDA parity was NOT RUN; \
             pass --allow-no-gpu to accept a CPU-only run"
        ),
        Some(code) => bail!("parity: failed (exit status {code}); see the table above"),
        None => bail!("parity: the parity program was killed by a signal"),
    }
}

fn nvrtc_check(root: &Path) -> Result<()> {
    let script = root.join("scripts/nvrtc.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let lib = String::from_utf8(output.stdout)
        .context("nvrtc.sh printed a path that is not UTF-8")?
        .trim()
        .to_string();
    if lib.is_empty() {
        bail!("{} printed no library folder", script.display());
    }
    let library_path = match env::var_os("LD_LIBRARY_PATH") {
        Some(old) if !old.is_empty() => {
            let mut paths = vec![PathBuf::from(&lib)];
            paths.extend(env::split_paths(&old));
            env::join_paths(paths).context("joining LD_LIBRARY_PATH")?
        }
        _ => lib.clone().into(),
    };
    println!("nvrtc-check: NVRTC from {lib}");
    let status = cargo()
        .current_dir(root)
        .env("LD_LIBRARY_PATH", library_path)
        .env("YAQA_REQUIRE_NVRTC", "1")
        // `--workspace`, not `-p yaqa-backend-cuda`: the same feature resolution as `cargo test
        // --workspace`, so the test suite's build is reused instead of rebuilding faer and gemm.
        .args([
            "test",
            "--workspace",
            "--locked",
            "--test",
            "kernels_compile",
            "--",
            "--nocapture",
        ])
        .status()
        .context("running cargo test for kernels_compile")?;
    if !status.success() {
        bail!("nvrtc-check: a kernel failed to compile with NVRTC (see above)");
    }
    println!(
        "nvrtc-check: every kernel in cuda/ compiles with NVRTC for compute_80 and compute_90"
    );
    Ok(())
}

fn run() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root()?;
    match args.first().map(String::as_str) {
        Some("parity") => {
            let mut allow_no_gpu = false;
            for arg in &args[1..] {
                match arg.as_str() {
                    "--allow-no-gpu" => allow_no_gpu = true,
                    other => bail!("parity: unknown argument {other:?}\n\n{USAGE}"),
                }
            }
            parity(&root, allow_no_gpu)
        }
        Some("nvrtc-check") => {
            if args.len() > 1 {
                bail!("nvrtc-check takes no arguments\n\n{USAGE}");
            }
            nvrtc_check(&root)
        }
        Some("tidy") => tidy::run(&root),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
