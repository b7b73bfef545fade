//! Reference Qronos (Zhang, Zhang, Colbert, Saab, arXiv 2505.11695; DESIGN.md §9), written from the
//! paper's two update rules with nothing of GPTQ in it: every step solves its least-squares problems from
//! scratch, in f64.
//!
//! Qronos rounds `W` (`m × n`, rows independent) so that the quantized layer fed the inputs `X̃` of the
//! partially quantized model matches the original layer fed its original inputs `X`: per row `w`, it
//! minimises `‖X w − X̃ q‖² + λ‖w − q‖²`. With `H = X̃ᵀX̃ + λI` and `G = X̃ᵀX + λI` (the damping `λ`
//! enters both, since it is the regulariser `λ‖w − q‖²` of that objective; `λ = damp · mean diag(X̃ᵀX̃)`),
//! the gradient in `q` is `2(H q − G w)`. Column `t = 0, 1, …` (with `w⁽⁻¹⁾ = w`):
//!
//! 1. *Correct the past*: `q_t = Q(p_t)`, `p_t = argmin_p ‖Xw − Σ_{j<t} X̃_j q_j − X̃_t p − Σ_{j>t} X̃_j
//!    w⁽ᵗ⁻¹⁾_j‖²`, i.e. `p_t = (G_{t,:} w − Σ_{j<t} H_tj q_j − Σ_{j>t} H_tj w⁽ᵗ⁻¹⁾_j) / H_tt`.
//! 2. *Shape the future*: `w⁽ᵗ⁾_{>t} = argmin_v ‖Xw − Σ_{j≤t} X̃_j q_j − X̃_{>t} v‖²`, i.e.
//!    `H_{>t,>t} w⁽ᵗ⁾_{>t} = G_{>t,:} w − H_{>t,≤t} q_{≤t}`.
//!
//! For `t ≥ 1` the normal equations of step 2 at `t − 1` make step 1 return `p_t = w⁽ᵗ⁻¹⁾_t`, and step 2
//! becomes GPTQ's update; only the first step differs from GPTQ, and with `X̃ = X` (`G = H`) it returns
//! `p_0 = w_0`, so Qronos is GPTQ. The fast backends use exactly that; this file does not.

use crate::backend::{GptqParams, Rounded, check_qronos_inputs};
use crate::error::Result;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::rng::Rng;
use crate::sym::SymMat;

use super::gptq::cholesky_lower;

/// Solves `A X = B` for symmetric positive definite `A` (`k × k`) and `B` (`k × r`) by Cholesky and two
/// triangular substitutions.
fn solve_spd(a: &Mat<f64>, b: &Mat<f64>, damp_added: f64) -> Result<Mat<f64>> {
    let k = a.rows;
    let l = cholesky_lower(a, "Qronos H = X̃ᵀX̃ + λI (a trailing block)", damp_added)?;
    let mut x = b.clone();
    for c in 0..b.cols {
        for i in 0..k {
            let s = x.at(i, c) - (0..i).map(|j| l.at(i, j) * x.at(j, c)).sum::<f64>();
            *x.at_mut(i, c) = s / l.at(i, i);
        }
        for i in (0..k).rev() {
            let s = x.at(i, c) - (i + 1..k).map(|j| l.at(j, i) * x.at(j, c)).sum::<f64>();
            *x.at_mut(i, c) = s / l.at(i, i);
        }
    }
    Ok(x)
}

/// Qronos by the module's two rules. `h` is `X̃ᵀX̃` and `g` is `X̃ᵀX`, both undamped; `λ` is added to the
/// diagonal of both.
///
/// **Shapes**: `w` is `m × n`, `h` and `g` `n × n`. **Errors**: see [`check_qronos_inputs`]; a trailing
/// block of `H + λI` that is not positive definite.
pub(super) fn qronos(
    w: &Mat<f32>,
    h: &SymMat,
    g: &Mat<f64>,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<Rounded> {
    check_qronos_inputs(w, h, g, quantizer, params)?;
    let (m, n) = w.shape();
    let wd = w.to_f64();
    let damp_added = params.damp * h.mean_diag();
    let hd = Mat::from_fn(n, n, |i, j| {
        h.at(i, j) + if i == j { damp_added } else { 0.0 }
    });
    let gd = Mat::from_fn(n, n, |i, j| {
        g.at(i, j) + if i == j { damp_added } else { 0.0 }
    });
    // gw[r][i] = (G w_r)_i: the target X̃ᵀX w + λw of every row.
    let gw = Mat::<f64>::from_fn(m, n, |r, i| (0..n).map(|j| gd.at(i, j) * wd.at(r, j)).sum());

    let mut rng = params.stochastic_seed.map(Rng::new);
    let mut current = wd.clone(); // w⁽ᵗ⁻¹⁾ for the columns not rounded yet
    let mut q = Mat::<f64>::zeros(m, n);
    let mut w_hat = Mat::<f32>::zeros(m, n);
    let mut eps = Mat::<f32>::zeros(m, n);
    let mut codes = vec![0u16; m * n];
    let mut column = vec![0f32; m];
    let mut column_codes = vec![0u16; m];
    for t in 0..n {
        // 1. Correct the past.
        for r in 0..m {
            let past: f64 = (0..t).map(|j| hd.at(t, j) * q.at(r, j)).sum();
            let future: f64 = (t + 1..n).map(|j| hd.at(t, j) * current.at(r, j)).sum();
            column[r] = ((gw.at(r, t) - past - future) / hd.at(t, t)) as f32;
        }
        let given = column.clone();
        quantizer.quantize_tile(0, t, m, 1, &mut column, &mut column_codes, rng.as_mut());
        for r in 0..m {
            *q.at_mut(r, t) = column[r] as f64;
            *w_hat.at_mut(r, t) = column[r];
            *eps.at_mut(r, t) = given[r] - column[r];
            codes[r * n + t] = column_codes[r];
        }
        // 2. Shape the future: H_{>t,>t} v = G_{>t,:} w − H_{>t,≤t} q_{≤t}, all rows at once.
        if t + 1 < n {
            let k = n - t - 1;
            let a = Mat::from_fn(k, k, |i, j| hd.at(t + 1 + i, t + 1 + j));
            let b = Mat::from_fn(k, m, |i, r| {
                gw.at(r, t + 1 + i)
                    - (0..=t)
                        .map(|j| hd.at(t + 1 + i, j) * q.at(r, j))
                        .sum::<f64>()
            });
            let v = solve_spd(&a, &b, damp_added)?;
            for r in 0..m {
                for i in 0..k {
                    *current.at_mut(r, t + 1 + i) = v.at(i, r);
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
