//! CPU sketch (in progress).
#![allow(unused_variables, unused_imports)]
use yaqa_core::backend::*;
use yaqa_core::*;
pub(crate) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> { todo!() }
pub(crate) fn accumulate_sketch_b(h_in: &mut SymMat, h_out: &mut SymMat, x: &Mat<f32>, g: &Mat<f32>) -> Result<()> { todo!() }
pub(crate) fn accumulate_weighted(acc: &mut SymMat, v: &Mat<f32>, u: &Mat<f32>, h: &SymMat, scale: f64) -> Result<()> { todo!() }
