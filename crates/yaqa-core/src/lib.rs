//! `yaqa-core`: the numerical heart of yaqa, with no I/O and no GPU code.
//!
//! It holds the algorithms of DESIGN.md (factor sketches, incoherence processing, block LDL, YAQA/LDLQ
//! adaptive rounding, GPTQ, quantizers, proxy errors), the [`backend::Backend`] trait that compute
//! backends implement, a deliberately naive f64 [`reference`] implementation of every backend operation,
//! and the [`conformance`] checks that compare a backend against that reference.

pub mod backend;
pub mod conformance;
pub mod daq;
pub mod delta;
pub mod error;
pub mod hadamard;
pub mod layer;
pub mod ldl;
pub mod mat;
pub mod model_ops;
pub mod optq;
pub mod quant;
pub mod reference;
pub mod refine;
pub mod rng;
pub mod sketch;
pub mod sym;
pub mod synthetic;

pub use backend::{Backend, GptqParams, ProxyError, RoundOrder, RoundParams, Rounded, Side};
pub use error::{CoreError, Result};
pub use ldl::{BlockLdl, LdlParams};
pub use mat::Mat;
pub use quant::TileQuantizer;
pub use rng::Rng;
pub use sym::SymMat;
