//! Reference damping loop and block LDL (DESIGN.md §3.3–3.4): an unblocked f64 Cholesky, then
//! `D_k = C_kk C_kkᵀ` and `L = C · blockdiag(C_kk⁻¹)`.

use crate::error::{CoreError, Result};
use crate::ldl::{BlockLdl, LdlParams};
use crate::mat::Mat;
use crate::sym::SymMat;

/// Plain Cholesky `h = C Cᵀ` (lower). Returns the failing pivot index on a non-positive pivot.
fn cholesky(h: &Mat<f64>) -> std::result::Result<Mat<f64>, usize> {
    let n = h.rows;
    let mut c = Mat::<f64>::zeros(n, n);
    for j in 0..n {
        let mut d = h.at(j, j);
        for k in 0..j {
            d -= c.at(j, k) * c.at(j, k);
        }
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let d = d.sqrt();
        *c.at_mut(j, j) = d;
        for i in j + 1..n {
            let mut s = h.at(i, j);
            for k in 0..j {
                s -= c.at(i, k) * c.at(j, k);
            }
            *c.at_mut(i, j) = s / d;
        }
    }
    Ok(c)
}

/// Inverse of a lower-triangular matrix by forward substitution.
fn lower_inverse(c: &Mat<f64>) -> Mat<f64> {
    let n = c.rows;
    let mut inv = Mat::<f64>::zeros(n, n);
    for col in 0..n {
        for i in col..n {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for k in col..i {
                s -= c.at(i, k) * inv.at(k, col);
            }
            *inv.at_mut(i, col) = s / c.at(i, i);
        }
    }
    inv
}

pub(super) fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
    params.validate(h.n)?;
    crate::error::check_finite("factor passed to block_ldl", &h.data)?;
    let n = h.n;
    let b = params.block;
    let mut damp = params.damp;
    let mut last_pivot = 0;
    for tries in 1..=params.max_tries {
        let mut dense = h.to_dense();
        for i in 0..n {
            *dense.at_mut(i, i) += damp;
        }
        match cholesky(&dense) {
            Ok(c) => {
                let mut l = Mat::<f64>::zeros(n, n);
                let mut d = vec![0.0; n * b];
                for kb in 0..n / b {
                    let o = kb * b;
                    let ckk = Mat::from_fn(b, b, |i, j| c.at(o + i, o + j));
                    for i in 0..b {
                        for j in 0..b {
                            d[kb * b * b + i * b + j] =
                                (0..b).map(|k| ckk.at(i, k) * ckk.at(j, k)).sum::<f64>();
                        }
                    }
                    let inv = lower_inverse(&ckk);
                    // The diagonal block is the identity by definition; set it exactly.
                    for i in 0..b {
                        *l.at_mut(o + i, o + i) = 1.0;
                    }
                    for i in o + b..n {
                        for j in 0..b {
                            *l.at_mut(i, o + j) =
                                (0..b).map(|k| c.at(i, o + k) * inv.at(k, j)).sum::<f64>();
                        }
                    }
                }
                return Ok(BlockLdl {
                    n,
                    block: b,
                    l,
                    d,
                    damp_added: damp,
                    tries,
                });
            }
            Err(pivot) => {
                last_pivot = pivot;
                damp = if damp > 0.0 { 2.0 * damp } else { 1e-6 };
            }
        }
    }
    Err(CoreError::NotPositiveDefinite {
        what: "factor".into(),
        pivot: last_pivot,
        damp_added: damp,
        tries: params.max_tries,
    })
}
