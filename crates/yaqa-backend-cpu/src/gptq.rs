//! Fast CPU GPTQ/OPTQ (Frantar et al., arXiv 2210.17323) with lazy block updates, act-order, stochastic
//! rounding and the LDL pivots of DESIGN.md §9.
//!
//! The reference (`yaqa_core::reference`) follows the paper literally: `H⁻¹ = UᵀU` with `U` upper,
//! `e_t = (w_t − q_t)/U_tt` and `w_k −= e_t·U_tk`. This file computes the same rounding with less work:
//!
//! - **No inverse.** Write `V = U⁻¹` (upper, `H = V Vᵀ`). From `w − q = Uᵀe` we get `e = Vᵀ(w − q)`, and
//!   with `e_t = (w⁽ᵗ⁾_t − q_t)·V_tt` the weight GPTQ rounds at step `t` is
//!   `w⁽ᵗ⁾_t = w_t + Σ_{k<t} C_kt (w_k − q_k)` with `C_kt = V_kt / V_tt`: the LDLQ form of GPTQ (QuIP,
//!   arXiv 2307.13304), fed by the total errors `Δ_k = w_k − q_k` of the columns already rounded. `V` is
//!   an "upper-lower" Cholesky factor: with `P` the order-reversing permutation and `L'` the lower
//!   Cholesky factor of `P H P`, `V = P L' P`. So one f64 Cholesky (`n³/3` flops, faer) replaces the
//!   Cholesky, inverse, product and second Cholesky (`4n³/3`), and the pivots come for free:
//!   `d_t = 1/U_tt² = V_tt² = L'_{n−1−t, n−1−t}²`. `C` is then rounded to f32, the precision PyTorch GPTQ
//!   uses for the whole run (its error is far below the rounding error being propagated).
//! - **Transposed weights.** `W` is copied, in processing order, into `Wᵀ` (`n × m`, f32) so that a column
//!   of `W` is a contiguous run: the quantizer sees an `m × 1` tile directly and the updates are long
//!   axpys. A second `n × m` buffer `F` accumulates each column's feedback `Σ_k C_kt Δ_k`.
//! - **Lazy blocks.** Inside a block of `block_size` columns, column by column with rank-1 updates of the
//!   block's later columns only; then one GEMM `F[:, right] += Δ_block · C[block, right]` (faer, rayon)
//!   for all columns right of the block.
//! - **Row chunks in parallel.** Rows never interact inside a block, so the block phase runs on row chunks
//!   in parallel. Stochastic rounding uses one chunk so the random stream is consumed in the same order
//!   as in the reference (column by column, rows in order), which keeps seeded runs reproducible.
//! - **SIMD.** With `simd`, the feedback add, the error and the rank-1 updates use pulp kernels (runtime
//!   dispatch, fused multiply-add); the scalar path uses plain loops. The quantizer itself is called
//!   through [`TileQuantizer`] and is the same in both.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::{Accum, MatMut, MatRef, Par};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use yaqa_core::backend::{GptqParams, Rounded};
use yaqa_core::{CoreError, Mat, Result, Rng, SymMat, TileQuantizer};

use crate::gemm::{after_faer, matmul};

/// Fewest rows worth a separate parallel chunk in the block phase (below that, rayon's overhead per block
/// is comparable to the work).
const MIN_CHUNK_ROWS: usize = 256;

/// The feedback coefficients `C` (`C_kt = V_kt/V_tt` for `k < t`, zero elsewhere; column-major `n × n`
/// f32, so column `t` holds the coefficients feeding column `t`) and the pivots `d_t = V_tt²` in processing
/// order, from one Cholesky of the reversed, permuted, damped Hessian (see the module documentation).
/// With `drift`, also the drift gains `ρ_t` of stochastic GPTQ ([`yaqa_core::optq`]), from `U = V⁻¹`.
fn feedback_factor(
    h: &SymMat,
    dead: &[bool],
    damp_added: f64,
    perm: &[usize],
    drift: bool,
) -> Result<(Vec<f32>, Vec<f64>, Vec<f64>)> {
    let n = h.n;
    let par = Par::rayon(0);
    // Lower triangle of P H_p P: entry (i, j) is H at the original columns of steps n−1−i and n−1−j.
    // faer matrices are column-major, so fill column by column for contiguous writes.
    let mut a = faer::Mat::<f64>::zeros(n, n);
    for j in 0..n {
        let pj = perm[n - 1 - j];
        let col = a.col_as_slice_mut(j);
        col[j] = if dead[pj] { 1.0 } else { h.at(pj, pj) } + damp_added;
        for i in j + 1..n {
            col[i] = h.at(perm[n - 1 - i], pj);
        }
    }
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    let factored = cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    );
    after_faer(par);
    if let Err(faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index }) = factored
    {
        return Err(CoreError::NotPositiveDefinite {
            what: format!(
                "GPTQ Hessian + {damp_added:e}·I (pivot in processing order; the block of later columns from it on is indefinite)"
            ),
            pivot: n - 1 - index,
            damp_added,
            tries: 1,
        });
    }
    // V_kt = L'[n−1−k, n−1−t]: column t of V (rows k ≤ t) is column n−1−t of L' (rows ≥ n−1−t), reversed.
    let mut c = vec![0f32; n * n];
    let mut pivots = vec![0f64; n];
    for t in 0..n {
        let j = n - 1 - t;
        let col = a.col_as_slice(j);
        let v_tt = col[j];
        pivots[t] = v_tt * v_tt;
        let dst = &mut c[t * n..t * n + t];
        for (k, out) in dst.iter_mut().enumerate() {
            *out = (col[n - 1 - k] / v_tt) as f32;
        }
    }
    // ρ_t² = Σ_{s<t} (U_st/U_ss)² with U = V⁻¹ = P L'⁻¹ P: for j = n−1−t it is the part of column j of
    // L'⁻¹ below the diagonal, each entry (row i) scaled by 1/(L'⁻¹)_ii = L'_ii.
    let drift_gains = if drift {
        let mut inv = faer::Mat::<f64>::zeros(n, n);
        faer::linalg::triangular_inverse::invert_lower_triangular(inv.as_mut(), a.as_ref(), par);
        after_faer(par);
        (0..n)
            .map(|t| {
                let j = n - 1 - t;
                let col = inv.col_as_slice(j);
                (j + 1..n)
                    .map(|i| (col[i] * a.col_as_slice(i)[i]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((c, pivots, drift_gains))
}

/// `x = w + f` (pulp SIMD): the weights GPTQ rounds, with their feedback.
struct AddFeedback<'a> {
    x: &'a mut [f32],
    w: &'a [f32],
    f: &'a [f32],
}

impl WithSimd for AddFeedback<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (xh, xt) = S::as_mut_simd_f32s(self.x);
        let (wh, wt) = S::as_simd_f32s(self.w);
        let (fh, ft) = S::as_simd_f32s(self.f);
        for ((x, w), f) in xh.iter_mut().zip(wh).zip(fh) {
            *x = simd.add_f32s(*w, *f);
        }
        for ((x, w), f) in xt.iter_mut().zip(wt).zip(ft) {
            *x = w + f;
        }
    }
}

/// `Δ = w − q`, then `w = q` (pulp SIMD).
struct TakeError<'a> {
    w: &'a mut [f32],
    q: &'a [f32],
    delta: &'a mut [f32],
}

impl WithSimd for TakeError<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (wh, wt) = S::as_mut_simd_f32s(self.w);
        let (qh, qt) = S::as_simd_f32s(self.q);
        let (dh, dt) = S::as_mut_simd_f32s(self.delta);
        for ((w, q), d) in wh.iter_mut().zip(qh).zip(dh) {
            *d = simd.sub_f32s(*w, *q);
            *w = *q;
        }
        for ((w, q), d) in wt.iter_mut().zip(qt).zip(dt) {
            *d = *w - q;
            *w = *q;
        }
    }
}

/// `y += alpha·x` (pulp SIMD, fused multiply-add).
struct AddScaled<'a> {
    y: &'a mut [f32],
    alpha: f32,
    x: &'a [f32],
}

impl WithSimd for AddScaled<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (yh, yt) = S::as_mut_simd_f32s(self.y);
        let (xh, xt) = S::as_simd_f32s(self.x);
        let alpha = simd.splat_f32s(self.alpha);
        for (y, x) in yh.iter_mut().zip(xh) {
            *y = simd.mul_add_e_f32s(alpha, *x, *y);
        }
        for (y, x) in yt.iter_mut().zip(xt) {
            *y += self.alpha * x;
        }
    }
}

/// One block of columns restricted to rows `row0..row0 + len`, one slice per block column: the block's
/// rows of `Wᵀ` (original weights in, rounded weights out), of the feedback `F`, of the errors `Δ` and of
/// the codes, and the rounding errors `ε` (value given to the quantizer minus its reconstruction).
struct BlockChunk<'a> {
    row0: usize,
    w: Vec<&'a mut [f32]>,
    eps: Vec<&'a mut [f32]>,
    feedback: Vec<&'a mut [f32]>,
    delta: Vec<&'a mut [f32]>,
    codes: Vec<&'a mut [u16]>,
}

/// Rounds the block's columns for one chunk of rows: add the feedback to column `t`, quantize it, keep its
/// error `Δ_t = w_t − q_t`, and push `C_tk·Δ_t` to the feedback of the block's later columns `k`.
fn round_block_chunk(
    arch: Option<Arch>,
    chunk: BlockChunk<'_>,
    c: &[f32],
    n: usize,
    b0: usize,
    perm: &[usize],
    quantizer: &dyn TileQuantizer,
    mut dither: Option<&mut Rng>,
) {
    let BlockChunk {
        row0,
        mut w,
        mut eps,
        mut feedback,
        mut delta,
        mut codes,
    } = chunk;
    let len = w.first().map_or(0, |row| row.len());
    let mut q = vec![0f32; len];
    for t in 0..w.len() {
        let col = b0 + t;
        match arch {
            Some(arch) => arch.dispatch(AddFeedback {
                x: &mut q,
                w: w[t],
                f: feedback[t],
            }),
            None => {
                for ((x, wv), fv) in q.iter_mut().zip(w[t].iter()).zip(feedback[t].iter()) {
                    *x = wv + fv;
                }
            }
        }
        eps[t].copy_from_slice(&q);
        quantizer.quantize_tile(
            row0,
            perm[col],
            len,
            1,
            &mut q,
            codes[t],
            dither.as_deref_mut(),
        );
        for (e, qv) in eps[t].iter_mut().zip(&q) {
            *e -= qv;
        }
        match arch {
            Some(arch) => arch.dispatch(TakeError {
                w: w[t],
                q: &q,
                delta: delta[t],
            }),
            None => {
                for ((wv, qv), dv) in w[t].iter_mut().zip(&q).zip(delta[t].iter_mut()) {
                    *dv = *wv - qv;
                    *wv = *qv;
                }
            }
        }
        let d = &*delta[t];
        for (k, f) in feedback.iter_mut().enumerate().skip(t + 1) {
            // Column-major C: entry (col, b0 + k) lives in column b0 + k.
            let alpha = c[(b0 + k) * n + col];
            match arch {
                Some(arch) => arch.dispatch(AddScaled { y: f, alpha, x: d }),
                None => {
                    for (y, x) in f.iter_mut().zip(d) {
                        *y += alpha * x;
                    }
                }
            }
        }
    }
}

/// Rows per tile of the blocked transposes between `W` (row-major `m × n`) and `Wᵀ` (`n × m`).
const TRANSPOSE_ROWS: usize = 32;

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
    yaqa_core::backend::check_gptq_inputs(w, h, quantizer, params)?;
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
    let (c, pivots, drift_gains) = feedback_factor(
        h,
        &dead,
        damp_added,
        &perm,
        params.stochastic_seed.is_some(),
    )?;

    // Wᵀ in processing order (row t is column perm[t] of W), in row tiles so reads and writes stay cached.
    let mut wt = vec![0f32; n * m];
    for r0 in (0..m).step_by(TRANSPOSE_ROWS) {
        let r1 = (r0 + TRANSPOSE_ROWS).min(m);
        for (t, &col) in perm.iter().enumerate() {
            if !dead[col] {
                for r in r0..r1 {
                    wt[t * m + r] = w.data[r * n + col];
                }
            }
        }
    }
    let mut feedback = vec![0f32; n * m];
    let mut eps_t = vec![0f32; n * m];
    let mut codes_t = vec![0u16; n * m];
    let block = params.block_size.min(n);
    let mut delta = vec![0f32; block * m];
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
                eps: Vec::with_capacity(bs),
                feedback: Vec::with_capacity(bs),
                delta: Vec::with_capacity(bs),
                codes: Vec::with_capacity(bs),
            })
            .collect();
        let rows = wt[b0 * m..b1 * m]
            .chunks_mut(m)
            .zip(eps_t[b0 * m..b1 * m].chunks_mut(m))
            .zip(feedback[b0 * m..b1 * m].chunks_mut(m))
            .zip(delta[..bs * m].chunks_mut(m))
            .zip(codes_t[b0 * m..b1 * m].chunks_mut(m));
        for ((((w_row, e_row), f_row), d_row), c_row) in rows {
            let parts = w_row
                .chunks_mut(chunk_len)
                .zip(e_row.chunks_mut(chunk_len))
                .zip(f_row.chunks_mut(chunk_len))
                .zip(d_row.chunks_mut(chunk_len))
                .zip(c_row.chunks_mut(chunk_len));
            for (chunk, ((((w_part, e_part), f_part), d_part), c_part)) in
                chunks.iter_mut().zip(parts)
            {
                chunk.w.push(w_part);
                chunk.eps.push(e_part);
                chunk.feedback.push(f_part);
                chunk.delta.push(d_part);
                chunk.codes.push(c_part);
            }
        }
        match rng.as_mut() {
            Some(rng) => {
                for chunk in chunks {
                    round_block_chunk(arch, chunk, &c, n, b0, &perm, quantizer, Some(&mut *rng));
                }
            }
            None => chunks.into_par_iter().for_each(|chunk| {
                round_block_chunk(arch, chunk, &c, n, b0, &perm, quantizer, None);
            }),
        }
        if b1 < n {
            // F[:, b1..] += Δ_block · C[b0..b1, b1..], in the transposed layout:
            // Fᵀ[b1.., :] += C[b0..b1, b1..]ᵀ · Δᵀ, with Δᵀ stored as the `bs × m` buffer `delta`.
            let dst = MatMut::from_row_major_slice_mut(&mut feedback[b1 * m..], n - b1, m);
            let c_block = MatRef::from_column_major_slice(&c, n, n)
                .submatrix(b0, b1, bs, n - b1)
                .transpose();
            let d = MatRef::from_row_major_slice(&delta[..bs * m], bs, m);
            matmul(dst, Accum::Add, c_block, d, 1.0f32, Par::rayon(0));
        }
    }

    let mut w_hat = Mat::<f32>::zeros(m, n);
    let mut eps = Mat::<f32>::zeros(m, n);
    let mut codes = vec![0u16; m * n];
    for r0 in (0..m).step_by(TRANSPOSE_ROWS) {
        let r1 = (r0 + TRANSPOSE_ROWS).min(m);
        for (t, &col) in perm.iter().enumerate() {
            for r in r0..r1 {
                w_hat.data[r * n + col] = wt[t * m + r];
                eps.data[r * n + col] = eps_t[t * m + r];
                codes[r * n + col] = codes_t[t * m + r];
            }
        }
    }
    Ok(Rounded {
        w_hat,
        codes,
        pivots,
        order: perm,
        eps: Some(eps),
        drift_gains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaqa_core::quant::int::{IntSym, sym_grid_rms};
    use yaqa_core::synthetic;

    /// `H = XᵀX` of structured activations (correlated, decaying spectrum, outlier channels).
    fn hessian(n: usize, tokens: usize, seed: u64) -> SymMat {
        let x = synthetic::activations(tokens, n, 0.8, seed);
        let mut h = SymMat::zeros(n);
        for t in 0..tokens {
            let row = x.row(t);
            for i in 0..n {
                for j in 0..=i {
                    *h.at_mut(i, j) += row[i] as f64 * row[j] as f64;
                }
            }
        }
        h
    }

    /// `V Vᵀ = P_act (H + λI) P_actᵀ` with `V_kt = C_kt·√d_t` (`V_tt = √d_t`): the coefficients and pivots
    /// are an exact factorization of the damped, permuted Hessian (up to `C`'s rounding to f32).
    #[test]
    fn feedback_factor_reconstructs_the_hessian() {
        let n = 48;
        let mut h = hessian(n, 100, 1);
        for i in 0..n {
            *h.at_mut(i, 7) = 0.0;
        }
        let dead: Vec<bool> = (0..n).map(|i| h.at(i, i) == 0.0).collect();
        let damp = 0.05;
        let mut perm: Vec<usize> = (0..n).collect();
        perm.reverse();
        perm.swap(3, 30);
        let (c, pivots, _) = feedback_factor(&h, &dead, damp, &perm, false).expect("spd");
        let v = |k: usize, t: usize| -> f64 {
            if k == t {
                pivots[t].sqrt()
            } else if k < t {
                c[t * n + k] as f64 * pivots[t].sqrt()
            } else {
                0.0
            }
        };
        let mut worst = 0.0f64;
        let mut scale = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let (pi, pj) = (perm[i], perm[j]);
                let mut expected = if dead[pi] || dead[pj] {
                    0.0
                } else {
                    h.at(pi, pj)
                };
                if i == j {
                    expected = if dead[pi] { 1.0 } else { h.at(pi, pi) } + damp;
                }
                let got: f64 = (0..n).map(|k| v(i, k) * v(j, k)).sum();
                worst = worst.max((got - expected).abs());
                scale = scale.max(expected.abs());
            }
        }
        // C is f32: relative error of a few f32 ulps times the growth of the factor.
        assert!(
            worst <= 1e-5 * scale,
            "‖V Vᵀ − H‖_max = {worst} (scale {scale})"
        );
    }

    /// The lazy block size only changes the order of floating-point sums, so codes agree (up to rare
    /// near-ties) and the pivots, which do not depend on it, are identical.
    #[test]
    fn block_size_does_not_change_the_result() {
        let (m, n) = (64, 160);
        let h = hessian(n, 320, 2);
        let w = synthetic::weights(m, n, 3);
        let rms = (w.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (m * n) as f64).sqrt();
        let grid = IntSym::new(3, (1.3 * rms / sym_grid_rms(3)) as f32).expect("valid grid");
        for simd in [true, false] {
            let run = |block_size: usize| {
                let params = GptqParams {
                    block_size,
                    act_order: true,
                    ..Default::default()
                };
                gptq(simd, &w, &h, &grid, &params).expect("gptq")
            };
            let one = run(1);
            for block_size in [7, 64, 1000] {
                let other = run(block_size);
                assert_eq!(other.pivots, one.pivots);
                let agree = other
                    .codes
                    .iter()
                    .zip(&one.codes)
                    .filter(|(a, b)| a == b)
                    .count();
                assert!(
                    agree as f64 >= 0.999 * (m * n) as f64,
                    "simd {simd}, block {block_size}: {agree} of {} codes agree",
                    m * n
                );
            }
        }
    }

    /// The SIMD kernels equal the scalar loops, tails included (lengths not a multiple of the width).
    #[test]
    fn simd_kernels_match_scalar_loops() {
        let arch = Arch::new();
        let mut rng = Rng::new(4);
        for len in [1, 7, 8, 9, 31, 64, 67] {
            let x: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let y0: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            let mut y = y0.clone();
            arch.dispatch(AddScaled {
                y: &mut y,
                alpha: 0.37,
                x: &x,
            });
            for i in 0..len {
                assert!(
                    (y[i] - (y0[i] + 0.37 * x[i])).abs() <= 1e-6 * (1.0 + y0[i].abs() + x[i].abs())
                );
            }
            let mut sum = vec![0f32; len];
            arch.dispatch(AddFeedback {
                x: &mut sum,
                w: &x,
                f: &y0,
            });
            assert!(sum.iter().zip(&x).zip(&y0).all(|((s, a), b)| *s == a + b));
            let mut w = x.clone();
            let mut delta = vec![0f32; len];
            arch.dispatch(TakeError {
                w: &mut w,
                q: &y0,
                delta: &mut delta,
            });
            assert_eq!(w, y0);
            assert!(delta.iter().zip(&x).zip(&y0).all(|((d, a), b)| *d == a - b));
        }
    }
}
