//! CPU round (in progress).
#![allow(unused_variables, unused_imports)]
use yaqa_core::backend::*;
use yaqa_core::*;
pub(crate) fn round_adaptive(w: &Mat<f32>, a_in: &Mat<f32>, a_out: Option<&Mat<f32>>, quantizer: &dyn TileQuantizer, params: &RoundParams) -> Result<Rounded> { todo!() }
