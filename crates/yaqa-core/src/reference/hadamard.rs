//! Reference incoherence rotations: the dense `R = (H_k ⊗ H_{2^p}) / √n` built entry by entry and
//! applied by plain matrix products.

use crate::backend::Side;
use crate::error::Result;
use crate::mat::Mat;
use crate::sym::SymMat;

/// The dense orthogonal `R_n` (f64), built from [`crate::hadamard`]'s plan for `n`.
pub fn dense_rotation(n: usize) -> Result<Mat<f64>> {
    todo!("hadamard helper: dense R for {n}")
}

pub(super) fn rotate(w: &mut Mat<f32>, side: Side, signs: &[f32], inverse: bool) -> Result<()> {
    let _ = (w, side, signs, inverse);
    todo!("hadamard helper")
}

pub(super) fn rotate_factor(h: &SymMat, signs: &[f32]) -> Result<SymMat> {
    let _ = (h, signs);
    todo!("hadamard helper")
}
