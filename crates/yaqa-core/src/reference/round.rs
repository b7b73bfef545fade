//! Reference two-sided adaptive rounding (DESIGN.md §4) in f64, in either tile order.
//!
//! Feedback is accumulated incrementally and in a canonical order: when tile `(i, j)` is finished its error
//! is pushed to the row accumulator `U` of every tile above it (bottom-to-top) and its propagated error
//! `P = E + U` to the column accumulator `V` of every tile to its left (right-to-left). Every order in which a
//! tile's below-right region is finished first therefore performs the same floating-point operations on
//! the same values, and gives bit-identical codes.

use crate::backend::{RoundOrder, RoundParams, Rounded, check_round_inputs};
use crate::error::Result;
use crate::mat::Mat;
use crate::quant::TileQuantizer;

/// Rounds `W` against `a_in` and `a_out` (or `I` when `None`) tile by tile in `params.order`.
///
/// **Shapes**: `w` is `m × n`, `a_in` `n × n`, `a_out` `m × m`. **Errors**: see
/// [`check_round_inputs`].
pub fn round_adaptive_order(
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: Option<&Mat<f32>>,
    quantizer: &dyn TileQuantizer,
    params: &RoundParams,
) -> Result<Rounded> {
    check_round_inputs(w, a_in, a_out, quantizer, params)?;
    let (m, n) = w.shape();
    let (tr, tc) = (params.tile_rows, params.tile_cols);
    let (mt, nt) = (m / tr, n / tc);
    let order: Vec<(usize, usize)> = match params.order {
        RoundOrder::Strips => (0..mt)
            .rev()
            .flat_map(|i| (0..nt).rev().map(move |j| (i, j)))
            .collect(),
        RoundOrder::Wavefront => (0..mt + nt - 1)
            .flat_map(|step| {
                (0..mt).rev().filter_map(move |i| {
                    let from_bottom = mt - 1 - i;
                    (step >= from_bottom && step - from_bottom < nt)
                        .then(|| (i, nt - 1 - (step - from_bottom)))
                })
            })
            .collect(),
    };
    let mut u = Mat::<f64>::zeros(m, n);
    let mut v = Mat::<f64>::zeros(m, n);
    let mut w_hat = Mat::<f32>::zeros(m, n);
    let code_dim = quantizer.code_dim();
    let mut codes = vec![0u16; m * n / code_dim];
    let mut tile = vec![0f32; tr * tc];
    let mut tile_codes = vec![0u16; tr * tc / code_dim];
    let mut e = vec![0f64; tr * tc];
    let mut eps = Mat::<f32>::zeros(m, n);
    for (i, j) in order {
        let (r0, c0) = (i * tr, j * tc);
        for r in 0..tr {
            for c in 0..tc {
                let (row, col) = (r0 + r, c0 + c);
                tile[r * tc + c] = (w.at(row, col) as f64 + u.at(row, col) + v.at(row, col)) as f32;
            }
        }
        let given = tile.clone();
        quantizer.quantize_tile(r0, c0, tr, tc, &mut tile, &mut tile_codes, None);
        let per_row = tc / code_dim;
        for r in 0..tr {
            let dst = (r0 + r) * (n / code_dim) + c0 / code_dim;
            codes[dst..dst + per_row].copy_from_slice(&tile_codes[r * per_row..(r + 1) * per_row]);
            for c in 0..tc {
                let (row, col) = (r0 + r, c0 + c);
                *w_hat.at_mut(row, col) = tile[r * tc + c];
                *eps.at_mut(row, col) = given[r * tc + c] - tile[r * tc + c];
                e[r * tc + c] = w.at(row, col) as f64 - tile[r * tc + c] as f64;
            }
        }
        // Push E_ij up the column: U_{i''j} += a_out[i, i'']ᵀ E_ij for i'' < i (bottom-to-top order).
        if let Some(a_out) = a_out {
            for ib in (0..i).rev() {
                for r in 0..tr {
                    let row = ib * tr + r;
                    for c in 0..tc {
                        let mut s = 0.0;
                        for k in 0..tr {
                            s += a_out.at(r0 + k, row) as f64 * e[k * tc + c];
                        }
                        *u.at_mut(row, c0 + c) += s;
                    }
                }
            }
        }
        // Push P_ij = E_ij + U_ij left along the row: V_{ij''} += P_ij a_in[j, j''] for j'' < j.
        for jb in (0..j).rev() {
            for r in 0..tr {
                let row = r0 + r;
                for c in 0..tc {
                    let col = jb * tc + c;
                    let mut s = 0.0;
                    for k in 0..tc {
                        let p = e[r * tc + k] + u.at(row, c0 + k);
                        s += p * a_in.at(c0 + k, col) as f64;
                    }
                    *v.at_mut(row, col) += s;
                }
            }
        }
    }
    Ok(Rounded {
        w_hat,
        codes,
        pivots: Vec::new(),
        order: Vec::new(),
        eps: Some(eps),
        drift_gains: Vec::new(),
    })
}
