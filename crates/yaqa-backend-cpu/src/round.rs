//! CPU two-sided adaptive rounding (DESIGN.md §4) in `O(mn(m+n))` flops, as row strips with lazy blocks.
//!
//! Rows are processed in strips of `strip` rows from the bottom. For a strip:
//! 1. the row feedback from every finished strip below is one GEMM, `U = a_out[below, strip]ᵀ E[below, :]`;
//! 2. the strip is swept from the right in column tiles; within a column tile, its row tiles go bottom to
//!    top, each adding the feedback of the strip's own tiles below it (`a_out` inside the strip), so every
//!    tile sees exactly the below-and-right region the formula asks for;
//! 3. the column feedback `V += P a_in` (with `P = E + U`, the propagated error) is applied lazily: inside a
//!    block of columns after every column tile, and to everything left of the block by one GEMM per block.
//!
//! With `a_out = None` (LDLQ) there is no row coupling, so the whole matrix is one strip and its row tiles
//! are rounded in parallel. All arithmetic is f32; summation order differs from the reference, so codes are
//! compared with it by agreement rate and proxy error.

use crate::gemm::{gemm, view, view_mut};
use rayon::prelude::*;
use yaqa_core::backend::{RoundParams, Rounded, check_round_inputs};
use yaqa_core::{Mat, Result, TileQuantizer};

/// Rows per strip when `a_out` couples the rows (a multiple of the tile height).
const STRIP_ROWS: usize = 64;
/// Columns per lazy block.
const BLOCK_COLS: usize = 128;

/// Strip-local buffers, `h × n` each (`codes` is `h × n / code_dim`).
struct Strip {
    /// `W + U` (row feedback from strips below).
    base: Vec<f32>,
    /// `U` from strips below.
    u: Vec<f32>,
    /// Column feedback `Σ P a_in` applied so far.
    v: Vec<f32>,
    /// Propagated error `P = E + U_full`.
    p: Vec<f32>,
    /// Error `E = W − Ŵ`.
    e: Vec<f32>,
    w_hat: Vec<f32>,
    codes: Vec<u16>,
    /// `a_out` restricted to the strip and transposed (`h × h`, entry `[r][k] = a_out[lo+k, lo+r]`), so the
    /// feedback of the strip's own rows reads contiguous rows (empty for LDLQ).
    a_t: Vec<f32>,
}

/// Inputs of one band of `tr` strip rows (row-major, `n` columns each).
struct RowsIn<'a> {
    base: &'a [f32],
    u: &'a [f32],
    v: &'a [f32],
    w: &'a [f32],
}

/// Outputs of one band of `tr` strip rows.
struct RowsOut<'a> {
    p: &'a mut [f32],
    e: &'a mut [f32],
    w_hat: &'a mut [f32],
    codes: &'a mut [u16],
}

/// Reused buffers of one tile, so the 1 × 1-tile path does not allocate per weight.
struct Scratch {
    tile: Vec<f32>,
    codes: Vec<u16>,
}

impl Scratch {
    fn new(tr: usize, tc: usize, code_dim: usize) -> Self {
        Self {
            tile: vec![0f32; tr * tc],
            codes: vec![0u16; tr * tc / code_dim],
        }
    }
}

/// Rounds the tile at column `c0` of a band whose feedback from inside the strip is `intra` (`tr × tc`).
/// `row0` is the band's first row in the matrix.
#[allow(clippy::too_many_arguments)]
fn round_tile(
    quantizer: &dyn TileQuantizer,
    n: usize,
    row0: usize,
    c0: usize,
    tr: usize,
    tc: usize,
    intra: &[f32],
    input: RowsIn<'_>,
    out: RowsOut<'_>,
    scratch: &mut Scratch,
) {
    let code_dim = quantizer.code_dim();
    for r in 0..tr {
        for c in 0..tc {
            let at = r * n + c0 + c;
            scratch.tile[r * tc + c] = input.base[at] + intra[r * tc + c] + input.v[at];
        }
    }
    quantizer.quantize_tile(
        row0,
        c0,
        tr,
        tc,
        &mut scratch.tile,
        &mut scratch.codes,
        None,
    );
    let per_row = tc / code_dim;
    for r in 0..tr {
        let dst = r * (n / code_dim) + c0 / code_dim;
        out.codes[dst..dst + per_row]
            .copy_from_slice(&scratch.codes[r * per_row..(r + 1) * per_row]);
        for c in 0..tc {
            let at = r * n + c0 + c;
            let q = scratch.tile[r * tc + c];
            out.w_hat[at] = q;
            out.e[at] = input.w[at] - q;
            out.p[at] = out.e[at] + input.u[at] + intra[r * tc + c];
        }
    }
}

pub(crate) fn round_adaptive(
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: Option<&Mat<f32>>,
    quantizer: &dyn TileQuantizer,
    params: &RoundParams,
) -> Result<Rounded> {
    check_round_inputs(w, a_in, a_out, quantizer, params)?;
    let (m, n) = w.shape();
    let (tr, tc) = (params.tile_rows, params.tile_cols);
    let code_dim = quantizer.code_dim();
    let strip_rows = match a_out {
        None => m,
        Some(_) => tr * (STRIP_ROWS / tr).max(1),
    };
    let block_cols = tc * (BLOCK_COLS / tc).max(1);
    let mut e_all = vec![0f32; m * n];
    let mut eps_all = vec![0f32; m * n];
    let mut w_hat_all = vec![0f32; m * n];
    let mut codes_all = vec![0u16; m * n / code_dim];

    let mut hi = m;
    while hi > 0 {
        let lo = hi.saturating_sub(strip_rows);
        let h = hi - lo;
        let w_strip = &w.data[lo * n..hi * n];
        let mut s = Strip {
            base: w_strip.to_vec(),
            u: vec![0f32; h * n],
            v: vec![0f32; h * n],
            p: vec![0f32; h * n],
            e: vec![0f32; h * n],
            w_hat: vec![0f32; h * n],
            codes: vec![0u16; h * n / code_dim],
            a_t: match a_out {
                Some(a) => (0..h * h).map(|x| a.at(lo + x % h, lo + x / h)).collect(),
                None => Vec::new(),
            },
        };
        if let Some(a_out) = a_out
            && hi < m
        {
            let a_sub = view(&a_out.data[hi * m + lo..], m - hi, h, m);
            gemm(
                view_mut(&mut s.u, h, n, n),
                false,
                a_sub.transpose(),
                view(&e_all[hi * n..], m - hi, n, n),
                1.0,
            );
            for (b, u) in s.base.iter_mut().zip(&s.u) {
                *b += u;
            }
        }
        let mut c_hi = n;
        while c_hi > 0 {
            let c_lo = c_hi.saturating_sub(block_cols);
            for jt in (c_lo / tc..c_hi / tc).rev() {
                let c0 = jt * tc;
                match a_out {
                    None => {
                        round_column_tile_parallel(quantizer, &mut s, w_strip, lo, n, c0, tr, tc)
                    }
                    Some(_) => {
                        round_column_tile_coupled(quantizer, &mut s, w_strip, lo, n, c0, tr, tc)
                    }
                }
                if c0 > c_lo {
                    feed_block_left(&mut s.v, &s.p, a_in, n, c_lo, c0, tc);
                }
            }
            if c_lo > 0 {
                gemm(
                    view_mut(&mut s.v, h, c_lo, n),
                    true,
                    view(&s.p[c_lo..], h, c_hi - c_lo, n),
                    view(&a_in.data[c_lo * n..], c_hi - c_lo, c_lo, n),
                    1.0,
                );
            }
            c_hi = c_lo;
        }
        e_all[lo * n..hi * n].copy_from_slice(&s.e);
        // The rounding error of a weight is the value the quantizer was given minus its reconstruction:
        // `W + U + intra + V − Ŵ = P + V`, and a column's `V` is final once the column is rounded.
        for ((eps, p), v) in eps_all[lo * n..hi * n].iter_mut().zip(&s.p).zip(&s.v) {
            *eps = p + v;
        }
        w_hat_all[lo * n..hi * n].copy_from_slice(&s.w_hat);
        codes_all[lo * n / code_dim..hi * n / code_dim].copy_from_slice(&s.codes);
        hi = lo;
    }
    Ok(Rounded {
        w_hat: Mat::from_vec(m, n, w_hat_all)?,
        codes: codes_all,
        pivots: Vec::new(),
        order: Vec::new(),
        eps: Some(Mat::from_vec(m, n, eps_all)?),
        drift_gains: Vec::new(),
    })
}

/// LDLQ: the row tiles of a column tile are independent; round them in parallel.
#[allow(clippy::too_many_arguments)]
fn round_column_tile_parallel(
    quantizer: &dyn TileQuantizer,
    s: &mut Strip,
    w_strip: &[f32],
    lo: usize,
    n: usize,
    c0: usize,
    tr: usize,
    tc: usize,
) {
    let rows = tr * n;
    let code_rows = tr * n / quantizer.code_dim();
    let zero = vec![0f32; tr * tc];
    let code_dim = quantizer.code_dim();
    s.p.par_chunks_mut(rows)
        .zip(s.e.par_chunks_mut(rows))
        .zip(s.w_hat.par_chunks_mut(rows))
        .zip(s.codes.par_chunks_mut(code_rows))
        .enumerate()
        .for_each_init(
            || Scratch::new(tr, tc, code_dim),
            |scratch, (rt, (((p, e), w_hat), codes))| {
                let at = rt * rows;
                let input = RowsIn {
                    base: &s.base[at..at + rows],
                    u: &s.u[at..at + rows],
                    v: &s.v[at..at + rows],
                    w: &w_strip[at..at + rows],
                };
                let out = RowsOut { p, e, w_hat, codes };
                round_tile(
                    quantizer,
                    n,
                    lo + rt * tr,
                    c0,
                    tr,
                    tc,
                    &zero,
                    input,
                    out,
                    scratch,
                );
            },
        );
}

/// YAQA: row tiles bottom to top, each with the feedback of the strip's tiles below it in this column tile.
#[allow(clippy::too_many_arguments)]
fn round_column_tile_coupled(
    quantizer: &dyn TileQuantizer,
    s: &mut Strip,
    w_strip: &[f32],
    lo: usize,
    n: usize,
    c0: usize,
    tr: usize,
    tc: usize,
) {
    let h = s.base.len() / n;
    let row_tiles = h / tr;
    let rows = tr * n;
    let code_rows = tr * n / quantizer.code_dim();
    let mut intra = vec![0f32; tr * tc];
    let mut scratch = Scratch::new(tr, tc, quantizer.code_dim());
    let scratch = &mut scratch;
    // This column tile's errors of the strip rows already rounded, contiguous per row (`h × tc`).
    let mut e_col = vec![0f32; h * tc];
    for rt in (0..row_tiles).rev() {
        // intra[r][c] = Σ_{strip rows k below this tile} a_out[lo+k, lo+rt·tr+r] · E[k][c0+c].
        let below = (rt + 1) * tr;
        for r in 0..tr {
            let a_row = &s.a_t[(rt * tr + r) * h + below..(rt * tr + r + 1) * h];
            let dst = &mut intra[r * tc..(r + 1) * tc];
            if tc == 1 {
                dst[0] = a_row.iter().zip(&e_col[below..]).map(|(a, e)| a * e).sum();
            } else {
                dst.iter_mut().for_each(|x| *x = 0.0);
                for (k, &a) in a_row.iter().enumerate() {
                    let e_row = &e_col[(below + k) * tc..(below + k + 1) * tc];
                    for (d, &ev) in dst.iter_mut().zip(e_row) {
                        *d += a * ev;
                    }
                }
            }
        }
        let at = rt * rows;
        let cat = rt * code_rows;
        let input = RowsIn {
            base: &s.base[at..at + rows],
            u: &s.u[at..at + rows],
            v: &s.v[at..at + rows],
            w: &w_strip[at..at + rows],
        };
        let out = RowsOut {
            p: &mut s.p[at..at + rows],
            e: &mut s.e[at..at + rows],
            w_hat: &mut s.w_hat[at..at + rows],
            codes: &mut s.codes[cat..cat + code_rows],
        };
        round_tile(
            quantizer,
            n,
            lo + rt * tr,
            c0,
            tr,
            tc,
            &intra,
            input,
            out,
            scratch,
        );
        for r in rt * tr..(rt + 1) * tr {
            e_col[r * tc..(r + 1) * tc].copy_from_slice(&s.e[r * n + c0..r * n + c0 + tc]);
        }
    }
}

/// `V[:, c_lo..c0] += P[:, c0..c0+tc] · a_in[c0..c0+tc, c_lo..c0]`: the column feedback of one finished column
/// tile to the rest of its lazy block. Written as row-wise axpys (contiguous rows of `a_in`), spread over the
/// strip's rows, because the product is too thin for a GEMM call to pay off (`tc` may be 1).
fn feed_block_left(
    v: &mut [f32],
    p: &[f32],
    a_in: &Mat<f32>,
    n: usize,
    c_lo: usize,
    c0: usize,
    tc: usize,
) {
    let width = c0 - c_lo;
    let update = |(v_row, p_row): (&mut [f32], &[f32])| {
        let dst = &mut v_row[c_lo..c0];
        for k in 0..tc {
            let coeff = p_row[c0 + k];
            if coeff != 0.0 {
                let a_row = &a_in.data[(c0 + k) * n + c_lo..(c0 + k) * n + c_lo + width];
                for (d, &a) in dst.iter_mut().zip(a_row) {
                    *d += coeff * a;
                }
            }
        }
    };
    let rows = v.len() / n;
    if rows * width * tc >= 1 << 16 {
        v.par_chunks_mut(n).zip(p.par_chunks(n)).for_each(update);
    } else {
        v.chunks_mut(n).zip(p.chunks(n)).for_each(update);
    }
}
