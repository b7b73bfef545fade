//! CPU damping loop and block LDL in f64 (DESIGN.md §3.3–3.4): faer's blocked Cholesky, then per block
//! column `D_k = C_kk C_kkᵀ` and `L_{:,k} = C_{:,k} C_kk⁻¹`, rows spread over rayon.

use rayon::prelude::*;
use yaqa_core::{BlockLdl, CoreError, LdlParams, Mat, Result, SymMat};

pub(crate) fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
    params.validate(h.n)?;
    yaqa_core::error::check_finite("factor passed to block_ldl", &h.data)?;
    let n = h.n;
    let b = params.block;
    let mut damp = params.damp;
    let mut last_pivot = 0;
    for tries in 1..=params.max_tries {
        let dense =
            faer::Mat::<f64>::from_fn(n, n, |i, j| h.at(i, j) + if i == j { damp } else { 0.0 });
        let llt = dense.as_ref().llt(faer::Side::Lower);
        crate::gemm::after_faer(faer::get_global_parallelism());
        match llt {
            Ok(llt) => {
                let c = llt.L();
                let nb = n / b;
                let mut d = vec![0.0; n * b];
                let mut inverses = Vec::with_capacity(nb);
                for kb in 0..nb {
                    let o = kb * b;
                    let ckk: Vec<f64> = (0..b * b).map(|x| c[(o + x / b, o + x % b)]).collect();
                    for i in 0..b {
                        for j in 0..b {
                            d[kb * b * b + i * b + j] =
                                (0..b).map(|k| ckk[i * b + k] * ckk[j * b + k]).sum::<f64>();
                        }
                    }
                    inverses.push(yaqa_core::ldl::lower_block_inverse(&ckk, b));
                }
                let mut l = Mat::<f64>::zeros(n, n);
                l.data.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
                    // The diagonal block is the identity by definition; set it exactly.
                    row[i] = 1.0;
                    for kb in 0..i / b {
                        let o = kb * b;
                        let inv = &inverses[kb];
                        for j in 0..b {
                            let mut s = 0.0;
                            for k in 0..b {
                                s += c[(i, o + k)] * inv[k * b + j];
                            }
                            row[o + j] = s;
                        }
                    }
                });
                return Ok(BlockLdl {
                    n,
                    block: b,
                    l,
                    d,
                    damp_added: damp,
                    tries,
                });
            }
            Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) => {
                last_pivot = index;
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
