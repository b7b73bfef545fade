//! The core conformance suite on the CUDA backend, when a device exists.
//!
//! Without a device (this workplace and CI), each test prints "no CUDA device: GPU conformance NOT RUN"
//! with the reason and returns: there is nothing to run, and the message says so rather than passing
//! silently. `YAQA_REQUIRE_GPU=1` turns the absence into a failure, for GPU runners.

use yaqa_backend_cuda::{Cuda, CudaError, SketchPrecision};
use yaqa_core::conformance;

fn device() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(cuda) => Some(cuda),
        Err(e @ (CudaError::LibraryMissing { .. } | CudaError::NoDevice { .. })) => {
            let required = std::env::var("YAQA_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "YAQA_REQUIRE_GPU=1 but there is no usable device: {e}"
            );
            eprintln!("no CUDA device: GPU conformance NOT RUN ({e})");
            None
        }
        // A device that exists but cannot run the kernels is a failure, not a skip.
        Err(e) => panic!("CUDA device 0 is present but unusable: {e}"),
    }
}

#[test]
fn tf32x3_sketches_conform() {
    if let Some(cuda) = device() {
        conformance::check_sketch(&cuda);
    }
}

#[test]
fn f32_sketches_conform() {
    if let Some(mut cuda) = device() {
        cuda.sketch_precision = SketchPrecision::F32;
        conformance::check_sketch(&cuda);
    }
}

#[test]
fn ldl_conforms() {
    if let Some(cuda) = device() {
        conformance::check_ldl(&cuda);
    }
}

#[test]
fn proxy_conforms() {
    if let Some(cuda) = device() {
        conformance::check_proxy(&cuda);
    }
}

#[test]
fn rounding_conforms() {
    if let Some(cuda) = device() {
        conformance::check_round(&cuda);
    }
}

/// The block LDL runs on the host, so its conformance does not need a device: check it here always.
#[test]
fn host_ldl_matches_reference() {
    use yaqa_core::{Backend, LdlParams, reference::Reference};
    for (n, block) in [(64, 1), (64, 16), (200, 8)] {
        let h = yaqa_core::synthetic::factor(n, 1.2, 21);
        let params = LdlParams {
            block,
            ..LdlParams::default()
        };
        let got = yaqa_backend_cuda::ldl::block_ldl(&h, &params).unwrap_or_else(|e| panic!("{e}"));
        let want = Reference
            .block_ldl(&h, &params)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.damp_added, want.damp_added);
        assert_eq!(got.tries, want.tries);
        let l_err = yaqa_core::mat::rel_diff_fro(&got.l.data, &want.l.data);
        let d_err = yaqa_core::mat::rel_diff_fro(&got.d, &want.d);
        assert!(
            l_err <= conformance::LDL_REL,
            "n {n} block {block}: L differs by {l_err:e}"
        );
        assert!(
            d_err <= conformance::LDL_REL,
            "n {n} block {block}: D differs by {d_err:e}"
        );
    }
    let mut indefinite = yaqa_core::SymMat::identity(32);
    *indefinite.at_mut(5, 5) = -0.5;
    let got = yaqa_backend_cuda::ldl::block_ldl(&indefinite, &LdlParams::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let want = Reference
        .block_ldl(&indefinite, &LdlParams::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((got.damp_added, got.tries), (want.damp_added, want.tries));
}

/// Without a driver, `Cuda::new` must return an error that names what is missing, never panic.
#[test]
fn missing_device_is_an_error_not_a_panic() {
    let result = std::panic::catch_unwind(|| Cuda::new(0).map(|c| c.device_name().to_string()));
    let Ok(result) = result else {
        panic!("Cuda::new panicked");
    };
    if let Err(e) = result {
        let text = e.to_string();
        assert!(!text.is_empty());
        eprintln!("Cuda::new(0) on this machine: {text}");
    }
    // An ordinal far beyond any machine is always an error.
    assert!(Cuda::new(1 << 20).is_err());
}
