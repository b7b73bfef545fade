//! Preparing a factor for rounding: mean-diagonal normalisation, the damping loop and the f64 block LDL
//! (DESIGN.md §3 steps 1, 3, 4, 5).
//!
//! `h + damp·I = L D Lᵀ` with `L` unit block-lower-triangular (identity diagonal blocks of size `block`) and
//! `D` block diagonal. From the Cholesky factor `C` of the damped matrix: `D_k = C_kk C_kkᵀ`,
//! `L = C · blockdiag(C_kk⁻¹)`. The rounding uses `A = L` with its diagonal blocks set to zero.

use crate::error::{CoreError, Result};
use crate::mat::Mat;
use crate::sym::SymMat;

/// Parameters of the damping loop and the block LDL.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LdlParams {
    /// Block size (= tile size of the rounding along this factor's dimension).
    pub block: usize,
    /// First damping `σ`, added as `σ·I` to the (normalised) factor; doubled on every failed Cholesky.
    pub damp: f64,
    /// Cholesky attempts before giving up with [`CoreError::NotPositiveDefinite`].
    pub max_tries: usize,
}

impl Default for LdlParams {
    fn default() -> Self {
        Self {
            block: 16,
            damp: 0.01,
            max_tries: 24,
        }
    }
}

impl LdlParams {
    /// Errors unless `block` divides `n` and the damping is usable.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.block == 0 || !n.is_multiple_of(self.block) {
            return Err(CoreError::InvalidParameter {
                name: "block",
                value: self.block.to_string(),
                why: format!("the block size must divide the factor's order {n}"),
            });
        }
        if !(self.damp >= 0.0 && self.damp.is_finite()) {
            return Err(CoreError::InvalidParameter {
                name: "damp",
                value: self.damp.to_string(),
                why: "damping must be a finite number ≥ 0".into(),
            });
        }
        Ok(())
    }
}

/// The block LDL of a damped factor.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockLdl {
    pub n: usize,
    pub block: usize,
    /// Unit block-lower-triangular `L`, `n × n`.
    pub l: Mat<f64>,
    /// The diagonal blocks of `D`, `n / block` blocks of `block × block`, each row-major, concatenated.
    pub d: Vec<f64>,
    /// Total `σ` added to the diagonal (0 if the first attempt needed none because `damp` was 0).
    pub damp_added: f64,
    /// Cholesky attempts made.
    pub tries: usize,
}

impl BlockLdl {
    /// `A`: `L` with its diagonal blocks set to zero, in f32 for the rounding.
    pub fn a_strict(&self) -> Mat<f32> {
        let b = self.block;
        Mat::from_fn(self.n, self.n, |i, j| {
            if i / b > j / b {
                self.l.at(i, j) as f32
            } else {
                0.0
            }
        })
    }

    /// The diagonal of `D` (the LDL pivots `d_t` when `block = 1`).
    pub fn pivots(&self) -> Vec<f64> {
        let b = self.block;
        (0..self.n)
            .map(|i| {
                let k = i / b;
                let r = i % b;
                self.d[k * b * b + r * b + r]
            })
            .collect()
    }

    /// `L D Lᵀ` as a dense matrix (for checks).
    pub fn reconstruct(&self) -> Mat<f64> {
        let n = self.n;
        let b = self.block;
        // L · D, exploiting D's block structure.
        let mut ld = Mat::<f64>::zeros(n, n);
        for i in 0..n {
            for kb in 0..n / b {
                let d = &self.d[kb * b * b..(kb + 1) * b * b];
                for c in 0..b {
                    let mut s = 0.0;
                    for r in 0..b {
                        s += self.l.at(i, kb * b + r) * d[r * b + c];
                    }
                    *ld.at_mut(i, kb * b + c) = s;
                }
            }
        }
        Mat::from_fn(n, n, |i, j| {
            (0..n).map(|k| ld.at(i, k) * self.l.at(j, k)).sum::<f64>()
        })
    }
}

/// Divides `h` by its mean diagonal (DESIGN.md §3 step 1); returns the divisor.
///
/// **Errors**: a factor whose mean diagonal is not positive and finite (an all-zero factor means the layer
/// saw no data).
pub fn normalize_mean_diag(what: &str, h: &mut SymMat) -> Result<f64> {
    let mean = h.mean_diag();
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(CoreError::DegenerateFactor {
            what: what.to_string(),
            mean,
            seen: if what == "h_out" {
                "output gradients"
            } else {
                "inputs"
            },
        });
    }
    h.scale(1.0 / mean);
    Ok(mean)
}

/// Inverse of a small lower-triangular block (row-major `b × b`) by forward substitution: the
/// `C_kk⁻¹` of the block LDL (DESIGN.md §3.4), shared by the backends.
pub fn lower_block_inverse(c: &[f64], b: usize) -> Vec<f64> {
    let mut inv = vec![0.0; b * b];
    for col in 0..b {
        for i in col..b {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for k in col..i {
                s -= c[i * b + k] * inv[k * b + col];
            }
            inv[i * b + col] = s / c[i * b + i];
        }
    }
    inv
}
