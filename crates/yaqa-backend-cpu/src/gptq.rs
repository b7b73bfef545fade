//! CPU GPTQ (gptq helper).
#![allow(unused_variables)]
use yaqa_core::backend::{GptqParams, Rounded};
use yaqa_core::{Mat, Result, SymMat, TileQuantizer};
pub(crate) fn gptq(simd: bool, w: &Mat<f32>, h: &SymMat, quantizer: &dyn TileQuantizer, params: &GptqParams) -> Result<Rounded> { todo!() }
