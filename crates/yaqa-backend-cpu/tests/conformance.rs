//! The core conformance suite instantiated for the CPU backend, SIMD and scalar paths.

use yaqa_backend_cpu::Cpu;
use yaqa_core::conformance;

#[test]
fn simd_path_conforms() {
    conformance::check_all(&Cpu::default());
}

#[test]
fn scalar_path_conforms() {
    conformance::check_all(&Cpu::scalar());
}
