//! Compiles every kernel file in `cuda/` with NVRTC for compute_80 and compute_90 and fails on any
//! compile error or missing entry point. NVRTC needs no GPU, so this runs in CI (`cargo xtask
//! nvrtc-check` installs NVRTC from PyPI and sets `YAQA_REQUIRE_NVRTC=1`).
//!
//! Without NVRTC the test prints that it did NOT run and why, and passes only when `YAQA_REQUIRE_NVRTC`
//! is not `1`: there is nothing to compile with, and pretending otherwise would be worse.

use yaqa_backend_cuda::CudaError;
use yaqa_backend_cuda::kernels::{
    KERNEL_FILES, KernelFile, compile_all, compile_file, nvrtc_available,
};

#[test]
fn kernels_compile() {
    let required = std::env::var("YAQA_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc_available() {
        let msg = "libnvrtc could not be loaded (searched by name on LD_LIBRARY_PATH and the system \
                   paths): NVRTC kernel compile check NOT RUN. Run `cargo xtask nvrtc-check` to install \
                   NVRTC and run it.";
        assert!(!required, "YAQA_REQUIRE_NVRTC=1 but {msg}");
        eprintln!("{msg}");
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let compiled = compile_all(arch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.len(), KERNEL_FILES.len());
        for (stem, bytes) in compiled {
            eprintln!("NVRTC {arch}: cuda/{stem}.cu compiled, {bytes} bytes of PTX");
        }
    }
    // The sketches must really use the tensor cores with the TF32 split, not a silent fallback.
    let sketch = KERNEL_FILES
        .iter()
        .find(|f| f.stem == "sketch")
        .unwrap_or_else(|| panic!("no sketch.cu in the kernel table"));
    let ptx = compile_file(sketch, "compute_80")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_src();
    for needle in [
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
        "cvt.rna.tf32.f32",
    ] {
        assert!(ptx.contains(needle), "sketch.cu PTX lacks `{needle}`");
    }
    // And the check itself must be able to fail: a broken source and a missing entry point.
    let broken = KernelFile {
        stem: "broken",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undeclared; }",
        entries: &["k"],
    };
    assert!(matches!(
        compile_file(&broken, "compute_80"),
        Err(CudaError::Compile { .. })
    ));
    let missing = KernelFile {
        stem: "missing",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = 1.0f; }",
        entries: &["not_there"],
    };
    assert!(matches!(
        compile_file(&missing, "compute_80"),
        Err(CudaError::Compile { .. })
    ));
}
