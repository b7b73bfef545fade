//! Reference round (in progress).
#![allow(unused_variables)]
use crate::backend::*;
use crate::error::Result;
use crate::ldl::*;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;
pub fn round_adaptive_order(w: &Mat<f32>, a_in: &Mat<f32>, a_out: Option<&Mat<f32>>, quantizer: &dyn TileQuantizer, params: &RoundParams) -> Result<Rounded> { todo!() }
