//! Fast CPU Qronos (arXiv 2505.11695, DESIGN.md §9): the corrective first step as one least-squares
//! correction of the weights, then this backend's GPTQ ([`crate::gptq`]) on the corrected weights.
//!
//! The reference (`yaqa_core::reference`) runs the paper's two rules literally. With `H = X̃ᵀX̃ + λI`,
//! `G = X̃ᵀX + λI` and, per row, `z = (G − H) w = X̃ᵀ(X − X̃) w` (λ cancels), its first step gives
//! `p_0 = w_0 + z_0/H_00`, and every later step is GPTQ's update (see the reference's module docs). GPTQ
//! started from the corrected weights `w̃` below makes exactly the same choices:
//!
//! - `w̃_0 = p_0 = w_0 + c_0` with `c_0 = z_0/H_00`, the column rounded first;
//! - `w̃_{>0} = w_{>0} + s`, `H_{>0,>0} s = z_{>0} − H_{>0,0} c_0`, so that GPTQ's first update
//!   `H_{>0,>0}⁻¹ H_{>0,0} (p_0 − q_0)` lands on Qronos's re-solved future weights
//!   `H_{>0,>0}⁻¹ (G_{>0,:} w − H_{>0,0} q_0)`.
//!
//! So the cost over GPTQ is one GEMM (`z`, `m n²`) and one Cholesky solve with `m` right-hand sides
//! (`n³/3 + m n²`), in f64 with faer. With `X̃ = X` the correction is exactly zero and the result is this
//! backend's GPTQ bit for bit.

use faer::linalg::solvers::Solve;
use faer::{Accum, Par};
use yaqa_core::backend::{GptqParams, Rounded, check_qronos_inputs};
use yaqa_core::{CoreError, Mat, Result, SymMat, TileQuantizer};

use crate::gemm::{after_faer, matmul};

/// Qronos; see the module documentation.
///
/// **Shapes**: `w` is `m × n`, `h` and `g` `n × n`. **Errors**: those of [`check_qronos_inputs`],
/// [`CoreError::NotPositiveDefinite`] when `H + λI` (or its trailing block) has no Cholesky factor.
pub(crate) fn qronos(
    simd: bool,
    w: &Mat<f32>,
    h: &SymMat,
    g: &Mat<f64>,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<Rounded> {
    check_qronos_inputs(w, h, g, quantizer, params)?;
    let (m, n) = w.shape();
    // The damping of the GPTQ pass below (dead columns count as 1, as there).
    let diag: Vec<f64> = (0..n)
        .map(|i| if h.at(i, i) == 0.0 { 1.0 } else { h.at(i, i) })
        .collect();
    let damp_added = params.damp * diag.iter().sum::<f64>() / n as f64;
    let par = Par::rayon(0);

    // z = (G − H) w for every row: Z = W (G − H)ᵀ, m × n.
    let w64 = faer::Mat::<f64>::from_fn(m, n, |r, j| w.at(r, j) as f64);
    let diff = faer::Mat::<f64>::from_fn(n, n, |i, j| g.at(i, j) - h.at(i, j));
    let mut z = faer::Mat::<f64>::zeros(m, n);
    matmul(
        z.as_mut(),
        Accum::Replace,
        w64.as_ref(),
        diff.transpose(),
        1.0,
        par,
    );

    let h00 = diag[0] + damp_added;
    let mut corrected = w.clone();
    let c0: Vec<f64> = (0..m).map(|r| z[(r, 0)] / h00).collect();
    for (r, c) in c0.iter().enumerate() {
        *corrected.at_mut(r, 0) = (w.at(r, 0) as f64 + c) as f32;
    }
    if n > 1 {
        let k = n - 1;
        let tail = faer::Mat::<f64>::from_fn(k, k, |i, j| {
            h.at(1 + i, 1 + j) + if i == j { damp_added } else { 0.0 }
        });
        let llt = tail.llt(faer::Side::Lower).map_err(|_| {
            after_faer(par);
            CoreError::NotPositiveDefinite {
                what: format!("Qronos H = X̃ᵀX̃ + {damp_added:e}·I without its first column"),
                pivot: 0,
                damp_added,
                tries: 1,
            }
        })?;
        // Right-hand sides z_{>0} − H_{>0,0} c_0, one column per row of W.
        let mut rhs =
            faer::Mat::<f64>::from_fn(k, m, |i, r| z[(r, 1 + i)] - h.at(1 + i, 0) * c0[r]);
        llt.solve_in_place(rhs.as_mut());
        after_faer(par);
        for r in 0..m {
            for i in 0..k {
                let at = corrected.at_mut(r, 1 + i);
                *at = (*at as f64 + rhs[(i, r)]) as f32;
            }
        }
    }
    crate::gptq::gptq(simd, &corrected, h, quantizer, params)
}
