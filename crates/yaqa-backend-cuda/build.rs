//! Build script of `yaqa-backend-cuda`: compiles the kernels in `cuda/` to PTX with nvcc when nvcc is
//! available, so that a machine with the CUDA toolkit gets ahead-of-time PTX (sm_90a for Hopper,
//! compute_80 for everything from Ampere on), and records that nvcc was absent otherwise.
//!
//! The generated `$OUT_DIR/ptx.rs` defines `PTX_SM90A` and `PTX_SM80`: one `Option<&str>` per kernel file,
//! in the order of `KERNEL_FILES`. Without nvcc (this workplace and CI) every entry is `None` and the
//! crate compiles the embedded sources with NVRTC at run time instead (see `src/kernels.rs`). A failing
//! nvcc is a build error with nvcc's own message, never a silent fallback, because it means a kernel
//! does not compile.
//!
//! nvcc is looked up as `$YAQA_NVCC` or `nvcc` on `PATH`; `YAQA_NO_NVCC=1` skips it.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel files, relative to the workspace's `cuda/` folder. Keep in step with `src/kernels.rs`.
const KERNEL_FILES: [&str; 5] = ["sketch", "round", "hadamard", "layout", "proxy"];

/// The two PTX targets: (constant name, nvcc architecture flag).
const TARGETS: [(&str, &str); 2] = [("PTX_SM90A", "sm_90a"), ("PTX_SM80", "compute_80")];

fn nvcc() -> Option<PathBuf> {
    if env::var_os("YAQA_NO_NVCC").is_some_and(|v| v == "1") {
        return None;
    }
    if let Some(path) = env::var_os("YAQA_NVCC") {
        return Some(PathBuf::from(path));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("nvcc"))
        .find(|candidate| candidate.is_file())
}

fn main() {
    println!("cargo:rerun-if-env-changed=YAQA_NVCC");
    println!("cargo:rerun-if-env-changed=YAQA_NO_NVCC");
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let cuda_dir = manifest.join("../../cuda");
    for file in KERNEL_FILES {
        println!(
            "cargo:rerun-if-changed={}",
            cuda_dir.join(format!("{file}.cu")).display()
        );
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let mut code = String::new();
    let _ = writeln!(
        code,
        "/// Whether nvcc compiled the kernels at build time.\npub const NVCC_USED: bool = {};",
        nvcc.is_some()
    );
    for (constant, arch) in TARGETS {
        let _ = writeln!(
            code,
            "/// nvcc PTX for `{arch}`, per kernel file (None without nvcc)."
        );
        let _ = writeln!(
            code,
            "pub const {constant}: [Option<&str>; {}] = [",
            KERNEL_FILES.len()
        );
        for file in KERNEL_FILES {
            match &nvcc {
                Some(nvcc) => {
                    let ptx = compile(nvcc, &cuda_dir.join(format!("{file}.cu")), arch, &out_dir);
                    let _ = writeln!(
                        code,
                        "    Some(include_str!({:?})),",
                        ptx.display().to_string()
                    );
                }
                None => {
                    let _ = writeln!(code, "    None,");
                }
            }
        }
        let _ = writeln!(code, "];");
    }
    fs::write(out_dir.join("ptx.rs"), code).expect("write $OUT_DIR/ptx.rs");
}

fn compile(nvcc: &Path, source: &Path, arch: &str, out_dir: &Path) -> PathBuf {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("kernel");
    let out = out_dir.join(format!("{stem}.{arch}.ptx"));
    let status = Command::new(nvcc)
        .args(["-ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "nvcc failed on {} for {arch}",
        source.display()
    );
    out
}
