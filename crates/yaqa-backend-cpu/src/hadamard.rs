//! CPU incoherence rotations (hadamard helper).
#![allow(unused_variables)]
use yaqa_core::backend::Side;
use yaqa_core::{Mat, Result, SymMat};
pub(crate) fn rotate(simd: bool, w: &mut Mat<f32>, side: Side, signs: &[f32], inverse: bool) -> Result<()> { todo!() }
pub(crate) fn rotate_factor(simd: bool, h: &SymMat, signs: &[f32]) -> Result<SymMat> { todo!() }
