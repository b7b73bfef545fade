//! Reference sketch (in progress).
#![allow(unused_variables)]
use crate::backend::*;
use crate::error::Result;
use crate::ldl::*;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;
pub(super) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> { todo!() }
pub(super) fn accumulate_sketch_b(h_in: &mut SymMat, h_out: &mut SymMat, x: &Mat<f32>, g: &Mat<f32>) -> Result<()> { todo!() }
pub(super) fn accumulate_weighted(acc: &mut SymMat, v: &Mat<f32>, u: &Mat<f32>, h: &SymMat, scale: f64) -> Result<()> { todo!() }
