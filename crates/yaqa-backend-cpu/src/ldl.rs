//! CPU damping loop and block LDL in f64 (DESIGN.md §3.3–3.4): faer's blocked Cholesky, then per block
//! column `D_k = C_kk C_kkᵀ` and `L_{:,k} = C_{:,k} C_kk⁻¹`, rows spread over rayon.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::cholesky_in_place;
use faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch;
use rayon::prelude::*;
use yaqa_core::{BlockLdl, CoreError, LdlParams, Mat, Result, SymMat};

pub(crate) fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
    params.validate(h.n)?;
    yaqa_core::error::check_finite("factor passed to block_ldl", &h.data)?;
    let n = h.n;
    let b = params.block;
    let mut damp = params.damp;
    let mut last_pivot = 0;
    let par = faer::get_global_parallelism();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    for tries in 1..=params.max_tries {
        // The lower triangle of H + σI, factored in place: one dense copy of the factor instead of
        // faer's `llt()`, which factors a second. faer is column-major, so fill by columns.
        let mut c = faer::Mat::<f64>::zeros(n, n);
        for j in 0..n {
            let col = c.col_as_slice_mut(j);
            col[j] = h.at(j, j) + damp;
            for (i, x) in col.iter_mut().enumerate().skip(j + 1) {
                *x = h.at(i, j);
            }
        }
        let factored = cholesky_in_place(
            c.as_mut(),
            Default::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        );
        crate::gemm::after_faer(par);
        match factored {
            Ok(_) => {
                let nb = n / b;
                let mut d = vec![0.0; n * b];
                let mut inverses = Vec::with_capacity(nb);
                for kb in 0..nb {
                    let o = kb * b;
                    // The lower triangle of the diagonal block: the in-place factorization leaves
                    // no promise about the upper one.
                    let ckk: Vec<f64> = (0..b * b)
                        .map(|x| {
                            let (i, j) = (x / b, x % b);
                            if j <= i { c[(o + i, o + j)] } else { 0.0 }
                        })
                        .collect();
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
