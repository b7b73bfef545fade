//! Fast CPU GPTQ/OPTQ (Frantar et al., arXiv 2210.17323) with lazy block updates, act-order, stochastic
//! rounding and the LDL pivots of DESIGN.md §9.
//!
//! The math is that of `yaqa_core`'s reference (`H⁻¹ = UᵀU`, `e_t = (w_t − q_t)/U_tt`, `w_k −= e_t·U_tk`,
//! pivots `d_t = 1/U_tt²`); what differs is how the work is arranged:
//!
//! - **Factor without forming `H⁻¹`.** With `P` the order-reversing permutation, the lower Cholesky factor
//!   `L'` of `P H P` gives `H⁻¹ = (P L'⁻ᵀ P)(P L'⁻¹ P)`, so `U = P L'⁻¹ P` is upper triangular with
//!   `UᵀU = H⁻¹`: one Cholesky and one triangular inverse (`2n³/3` flops) instead of the four `n³/3` steps
//!   of "Cholesky, inverse, product, Cholesky again". The pivots come straight from the factor:
//!   `d_t = 1/U_tt² = L'_{n−1−t, n−1−t}²`. Both run in f64 with faer; `U` is then rounded to f32, the
//!   precision PyTorch GPTQ uses for the whole run (its rounding error in the updates is far below the
//!   rounding error being propagated).
//! - **Transposed weights.** `W` is copied, in processing order, into `Wᵀ` (`n × m`, f32) so that a column
//!   of `W` is a contiguous run: the quantizer sees an `m × 1` tile directly and the rank-1 updates are
//!   long axpys.
//! - **Lazy blocks.** Inside a block of `block_size` columns, column by column with rank-1 updates of the
//!   block's later columns only; then one GEMM `W[:, rest] −= E · U[block, rest]` (faer, rayon) for all
//!   columns right of the block.
//! - **Row chunks in parallel.** Rows never interact inside a block, so the block phase runs on row chunks
//!   in parallel. Stochastic rounding uses one chunk so the random stream is consumed in the same order
//!   as in the reference (column by column, rows in order), which keeps seeded runs reproducible.
//! - **SIMD.** With `simd`, the error scaling and the rank-1 updates use pulp kernels (runtime dispatch,
//!   fused multiply-add); the scalar path uses plain loops. The quantizer itself is called through
//!   [`TileQuantizer`] and is the same in both.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use yaqa_core::backend::{GptqParams, Rounded};
use yaqa_core::error::check_finite;
use yaqa_core::{CoreError, Mat, Result, Rng, SymMat, TileQuantizer};

/// Fewest rows worth a separate parallel chunk in the block phase (below that, rayon's overhead per block
/// is comparable to the work).
const MIN_CHUNK_ROWS: usize = 256;

/// Checks the inputs of a GPTQ run (the same contract as the reference, checked independently).
fn check_inputs(
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<()> {
    let (m, n) = w.shape();
    if m == 0 || n == 0 {
        return Err(CoreError::shape(
            "gptq W",
            "a non-empty matrix",
            format!("{m}×{n}"),
        ));
    }
    if h.n != n {
        return Err(CoreError::shape(
            "gptq H",
            format!("{n}×{n} (W is {m}×{n})"),
            format!("{0}×{0}", h.n),
        ));
    }
    if quantizer.code_dim() != 1 {
        return Err(CoreError::InvalidParameter {
            name: "quantizer",
            value: quantizer.name(),
            why: "GPTQ rounds one column at a time and needs a scalar quantizer (code_dim 1)"
                .into(),
        });
    }
    if !(params.damp >= 0.0 && params.damp.is_finite()) {
        return Err(CoreError::InvalidParameter {
            name: "damp",
            value: params.damp.to_string(),
            why: "damping must be a finite number ≥ 0".into(),
        });
    }
    if params.block_size == 0 {
        return Err(CoreError::InvalidParameter {
            name: "block_size",
            value: "0".into(),
            why: "the lazy-update block holds at least one column".into(),
        });
    }
    check_finite("gptq W", &w.data)?;
    check_finite("gptq H", &h.data)?;
    Ok(())
}

/// `U` (upper, `UᵀU = H_p⁻¹` for the permuted, damped `H_p`) as row-major f32, and the pivots `d_t` in
/// processing order, by the reversed-Cholesky route of the module documentation.
fn inverse_factor(
    h: &SymMat,
    dead: &[bool],
    damp_added: f64,
    perm: &[usize],
) -> Result<(Vec<f32>, Vec<f64>)> {
    let n = h.n;
    let par = Par::rayon(0);
    // Lower triangle of P H_p P: entry (i, j) is H at the original columns of steps n−1−i and n−1−j.
    let mut a = faer::Mat::<f64>::zeros(n, n);
    for i in 0..n {
        let pi = perm[n - 1 - i];
        for j in 0..i {
            a[(i, j)] = h.at(pi, perm[n - 1 - j]);
        }
        let diag = if dead[pi] { 1.0 } else { h.at(pi, pi) };
        a[(i, i)] = diag + damp_added;
    }
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    if let Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) =
        cholesky_in_place(
            a.as_mut(),
            Default::default(),
            par,
            stack,
            Default::default(),
        )
    {
        return Err(CoreError::NotPositiveDefinite {
            what: format!(
                "GPTQ Hessian + {damp_added:e}·I (pivot in processing order; the trailing block from it on is indefinite)"
            ),
            pivot: n - 1 - index,
            damp_added,
            tries: 1,
        });
    }
    let pivots: Vec<f64> = (0..n).map(|t| a[(n - 1 - t, n - 1 - t)].powi(2)).collect();
    let mut l_inv = faer::Mat::<f64>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), a.as_ref(), par);
    drop(a);
    let mut u = vec![0f32; n * n];
    for t in 0..n {
        let row = &mut u[t * n..(t + 1) * n];
        for k in t..n {
            row[k] = l_inv[(n - 1 - t, n - 1 - k)] as f32;
        }
    }
    if let Some(bad) = (0..n).find(|&t| !(u[t * n + t].is_finite() && u[t * n + t] > 0.0)) {
        return Err(CoreError::NotPositiveDefinite {
            what: format!("GPTQ Hessian + {damp_added:e}·I (inverse factor not finite in f32)"),
            pivot: bad,
            damp_added,
            tries: 1,
        });
    }
    Ok((u, pivots))
}

/// `err = (w − q)·inv`, then `w = q` (pulp SIMD).
struct ScaleError<'a> {
    w: &'a mut [f32],
    q: &'a [f32],
    inv: f32,
    err: &'a mut [f32],
}

impl WithSimd for ScaleError<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (wh, wt) = S::as_mut_simd_f32s(self.w);
        let (qh, qt) = S::as_simd_f32s(self.q);
        let (eh, et) = S::as_mut_simd_f32s(self.err);
        let inv = simd.splat_f32s(self.inv);
        for ((w, q), e) in wh.iter_mut().zip(qh).zip(eh) {
            *e = simd.mul_f32s(simd.sub_f32s(*w, *q), inv);
            *w = *q;
        }
        for ((w, q), e) in wt.iter_mut().zip(qt).zip(et) {
            *e = (*w - q) * self.inv;
            *w = *q;
        }
    }
}

/// `y −= alpha·x` (pulp SIMD, fused multiply-add).
struct SubScaled<'a> {
    y: &'a mut [f32],
    alpha: f32,
    x: &'a [f32],
}

impl WithSimd for SubScaled<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (yh, yt) = S::as_mut_simd_f32s(self.y);
        let (xh, xt) = S::as_simd_f32s(self.x);
        let neg_alpha = simd.splat_f32s(-self.alpha);
        for (y, x) in yh.iter_mut().zip(xh) {
            *y = simd.mul_add_e_f32s(neg_alpha, *x, *y);
        }
        for (y, x) in yt.iter_mut().zip(xt) {
            *y -= self.alpha * x;
        }
    }
}

/// One block of columns restricted to rows `row0..row0 + len`: the block's rows of `Wᵀ`, of the scaled
/// errors `E` and of the codes, one slice per block column.
struct BlockChunk<'a> {
    row0: usize,
    w: Vec<&'a mut [f32]>,
    err: Vec<&'a mut [f32]>,
    codes: Vec<&'a mut [u16]>,
}

/// Rounds the block's columns for one chunk of rows: quantize column `t`, scale its error by `1/U_tt`,
/// and apply the rank-1 update to the block's later columns.
fn round_block_chunk(
    arch: Option<Arch>,
    chunk: BlockChunk<'_>,
    u: &[f32],
    n: usize,
    b0: usize,
    perm: &[usize],
    quantizer: &dyn TileQuantizer,
    mut dither: Option<&mut Rng>,
) {
    let BlockChunk {
        row0,
        mut w,
        mut err,
        mut codes,
    } = chunk;
    let len = w.first().map_or(0, |row| row.len());
    let mut q = vec![0f32; len];
    for t in 0..w.len() {
        let col = b0 + t;
        q.copy_from_slice(w[t]);
        quantizer.quantize_tile(
            row0,
            perm[col],
            len,
            1,
            &mut q,
            codes[t],
            dither.as_deref_mut(),
        );
        let inv = 1.0 / u[col * n + col];
        let (done, rest) = w.split_at_mut(t + 1);
        let e = &mut *err[t];
        match arch {
            Some(arch) => arch.dispatch(ScaleError {
                w: done[t],
                q: &q,
                inv,
                err: e,
            }),
            None => {
                for ((wv, qv), ev) in done[t].iter_mut().zip(&q).zip(e.iter_mut()) {
                    *ev = (*wv - qv) * inv;
                    *wv = *qv;
                }
            }
        }
        let e = &*err[t];
        let coefs = &u[col * n + col + 1..col * n + col + 1 + rest.len()];
        for (row, &alpha) in rest.iter_mut().zip(coefs) {
            match arch {
                Some(arch) => arch.dispatch(SubScaled {
                    y: row,
                    alpha,
                    x: e,
                }),
                None => {
                    for (y, x) in row.iter_mut().zip(e) {
                        *y -= alpha * x;
                    }
                }
            }
        }
    }
}

/// GPTQ with lazy block updates; see the module documentation.
///
/// **Shapes**: `w` is `m × n`, `h` `n × n`. **Errors**: a shape mismatch, non-finite `W` or `H`, a vector
/// quantizer, `damp < 0` or `block_size = 0` (all as the reference), and
/// [`CoreError::NotPositiveDefinite`] when `H + λI` has no Cholesky factor (the pivot is in processing
/// order and may differ from the reference's, which factors in the opposite direction).
pub(crate) fn gptq(
    simd: bool,
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<Rounded> {
    check_inputs(w, h, quantizer, params)?;
    let (m, n) = w.shape();

    // Dead columns (zero diagonal): H_ii = 1 and zero weights, as GPTQ does; then λ = damp · mean diag.
    let dead: Vec<bool> = (0..n).map(|i| h.at(i, i) == 0.0).collect();
    let diag: Vec<f64> = (0..n)
        .map(|i| if dead[i] { 1.0 } else { h.at(i, i) })
        .collect();
    let damp_added = params.damp * diag.iter().sum::<f64>() / n as f64;
    let mut perm: Vec<usize> = (0..n).collect();
    if params.act_order {
        // Decreasing diag(H), ties by column index (stable sort).
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let (u, pivots) = inverse_factor(h, &dead, damp_added, &perm)?;

    // Wᵀ in processing order: row t is column perm[t] of W.
    let mut wt = vec![0f32; n * m];
    for r in 0..m {
        let src = w.row(r);
        for t in 0..n {
            let col = perm[t];
            if !dead[col] {
                wt[t * m + r] = src[col];
            }
        }
    }
    let mut codes_t = vec![0u16; n * m];
    let block = params.block_size.min(n);
    let mut err = vec![0f32; block * m];
    let arch = simd.then(Arch::new);
    let mut rng = params.stochastic_seed.map(Rng::new);
    let chunk_count = if rng.is_some() {
        1
    } else {
        rayon::current_num_threads().clamp(1, (m / MIN_CHUNK_ROWS).max(1))
    };
    // Chunk boundaries on multiples of 8 rows keep the SIMD loops free of tails.
    let chunk_len = m.div_ceil(chunk_count).next_multiple_of(8);

    for b0 in (0..n).step_by(block) {
        let b1 = (b0 + block).min(n);
        let bs = b1 - b0;
        let mut chunks: Vec<BlockChunk<'_>> = (0..m)
            .step_by(chunk_len)
            .map(|row0| BlockChunk {
                row0,
                w: Vec::with_capacity(bs),
                err: Vec::with_capacity(bs),
                codes: Vec::with_capacity(bs),
            })
            .collect();
        for ((w_row, e_row), c_row) in wt[b0 * m..b1 * m]
            .chunks_mut(m)
            .zip(err[..bs * m].chunks_mut(m))
            .zip(codes_t[b0 * m..b1 * m].chunks_mut(m))
        {
            for ((chunk, w_part), (e_part, c_part)) in chunks
                .iter_mut()
                .zip(w_row.chunks_mut(chunk_len))
                .zip(e_row.chunks_mut(chunk_len).zip(c_row.chunks_mut(chunk_len)))
            {
                chunk.w.push(w_part);
                chunk.err.push(e_part);
                chunk.codes.push(c_part);
            }
        }
        match rng.as_mut() {
            Some(rng) => {
                for chunk in chunks {
                    round_block_chunk(arch, chunk, &u, n, b0, &perm, quantizer, Some(&mut *rng));
                }
            }
            None => chunks.into_par_iter().for_each(|chunk| {
                round_block_chunk(arch, chunk, &u, n, b0, &perm, quantizer, None);
            }),
        }
        if b1 < n {
            // W[:, b1..] −= E · U[b0..b1, b1..], in the transposed layout:
            // Wᵀ[b1.., :] −= U[b0..b1, b1..]ᵀ · Eᵀ, with Eᵀ stored as the `bs × m` buffer `err`.
            let dst = MatMut::from_row_major_slice_mut(&mut wt[b1 * m..], n - b1, m);
            let u_block = MatRef::from_row_major_slice(&u[b0 * n..b1 * n], bs, n)
                .subcols(b1, n - b1)
                .transpose();
            let e = MatRef::from_row_major_slice(&err[..bs * m], bs, m);
            matmul(dst, Accum::Add, u_block, e, -1.0f32, Par::rayon(0));
        }
    }

    let mut w_hat = Mat::<f32>::zeros(m, n);
    let mut codes = vec![0u16; m * n];
    for r in 0..m {
        let dst = w_hat.row_mut(r);
        let dst_codes = &mut codes[r * n..(r + 1) * n];
        for t in 0..n {
            dst[perm[t]] = wt[t * m + r];
            dst_codes[perm[t]] = codes_t[t * m + r];
        }
    }
    Ok(Rounded {
        w_hat,
        codes,
        pivots,
    })
}
