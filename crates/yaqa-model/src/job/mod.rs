//! The quantization job as a library: calibration sets, factor collection, the per-layer pipeline and
//! evaluation.

pub mod calib;
pub mod collect;
pub mod eval;
pub mod pipeline;
