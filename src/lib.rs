//! `yaqa`: model-preserving post-training quantization of large language models.
//!
//! This umbrella crate re-exports the workspace's library crates so that a user (or the
//! cross-crate tests and benches under `tests/` and `benches/`) can depend on one name.
//! The algorithms live in [`core`], the CPU implementation of the backend trait in [`cpu`].

pub use yaqa_backend_cpu as cpu;
pub use yaqa_core as core;
