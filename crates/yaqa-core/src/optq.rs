//! The OPTQ error identity and bounds (Zhang, Zhang, Colbert, Saab, arXiv 2508.04853; DESIGN.md §9),
//! evaluated on a finished rounding run from what the run kept: the LDL pivots `d_t` and the rounding
//! errors `ε_t`.
//!
//! **Which quantity is which.** Everything is in the coordinates the rounding ran in: the layer's `h_in`
//! normalised by its mean diagonal, rotated when incoherence is on (DESIGN.md §3), and damped, `H = h_in +
//! λI`; `W` rotated likewise. For one row `w` rounded to `q` (`Δ = w − q`):
//!
//! - *GPTQ*, columns in processing order `t` (act-order or natural): with `H⁻¹ = UᵀU` (`U` upper), the
//!   weight rounded at step `t` is the feedback-corrected `w⁽ᵗ⁾_t = w_t − Σ_{s<t} (U_st/U_ss) ε_s`, its
//!   rounding error `ε_t = w⁽ᵗ⁾_t − q_t`, and `Δ = Uᵀ diag(1/U_tt) ε`. Since `U H Uᵀ = I`,
//!   `Δᵀ H Δ = Σ_t d_t ε_t²` with `d_t = 1/U_tt²`, the pivots of `H = U⁻¹ U⁻ᵀ` (an "upper-lower" LDL:
//!   `d_{n−1} = H_{n−1,n−1}`, `d_0 = 1/(H⁻¹)_00`).
//! - *LDLQ* (1 × 1 tiles, columns right to left): `H = L D Lᵀ`, `ε = Lᵀ Δ` (the value given to the
//!   quantizer, `w_j + Σ_{j'>j} Δ_j' L_j'j`, minus `q_j`), so `Δᵀ H Δ = Σ_j d_j ε_j²` with `d_j = D_jj`.
//! - *YAQA* (1 × 1 tiles): `ε = L_outᵀ Δ L_in` entrywise and `tr(Δ H_in Δᵀ H_out) = Σ_ij d_out,i d_in,j ε_ij²`.
//!
//! With `H = XᵀX + λI` the left side is the paper's `‖X(w − q)‖² + λ‖w − q‖²`. The report sums it over
//! the rows (`measured`, from `Δ` and `H` directly) and checks it against `Σ d ε²` (`identity`): the two
//! agree to round-off (f32 rounding, f64 sums).
//!
//! **Deterministic bound.** Rounding to nearest inside the grid gives `|ε_t| ≤ δ/2`, so per row
//! `Δᵀ H Δ ≤ (δ²/4) Σ_t d_t`, with the step `δ` of the row's (or group's) grid at each weight. It assumes
//! no clipping: a value beyond the grid's ends by more than `δ/2` has a larger error, and the report
//! counts those weights (`clipped`). For stochastic rounding it holds in expectation
//! (`E[ε_t² | past] ≤ δ²/4`).
//!
//! **Stochastic bounds** (derived here from the error-feedback recursion; the paper's text was not
//! available, only its abstract, which states ℓ∞ bounds that control the alphabet). Unbiased stochastic
//! rounding to the two neighbouring levels makes `ε_t` a martingale difference lying, given the past, in
//! an interval of length `δ`. The drift of column `t`, `w⁽ᵗ⁾_t − w_t = −Σ_{s<t} (U_st/U_ss) ε_s`, is then a
//! martingale with gain `ρ_t = ‖(U_st/U_ss)_{s<t}‖₂`, and Azuma–Hoeffding gives
//! `P(|drift| ≥ τ) ≤ 2 exp(−2τ²/(δ² ρ_t²))`. A union bound over all `m·n` weights: with probability at
//! least `1 − p` every drift is below `κ δ ρ_t`, `κ = √(½ ln(2mn/p))` (the argument runs on the process
//! stopped at the first clipped value, so it needs no assumption that nothing clips). Hence
//! - *drift bound*: `max |w⁽ᵗ⁾_t − w_t| ≤ κ · max_t ρ_t` grid steps;
//! - *ℓ∞ bound*: `max |w_t − q_t| ≤ κ · max_t ρ_t + 1` grid steps (the last rounding moves less than `δ`);
//! - no weight clips if every weight has at least the drift bound of grid steps of headroom to the
//!   grid's ends (`headroom_steps ≥ drift_bound_steps`). With per-group steps, steps are counted in the
//!   row's largest `δ` (conservative for the bound, which scales with it).

use crate::mat::Mat;
use crate::quant::TileQuantizer;

/// The failure probability `p` of the stochastic bounds.
pub const STOCHASTIC_FAILURE_PROBABILITY: f64 = 0.01;

/// The OPTQ quantities of one rounded matrix, summed over its rows (module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptqReport {
    /// `tr(Δ H Δᵀ)` (`tr(Δ H_in Δᵀ H_out)` for YAQA) on the damped factors the rounding used: the paper's
    /// `‖X(w−q)‖² + λ‖w−q‖²` summed over rows.
    pub measured: f64,
    /// `Σ_rows Σ_t d_t ε_t²`, from the run's pivots and rounding errors.
    pub identity: f64,
    /// `Σ_rows (δ²/4) Σ_t d_t` with each weight's own `δ`.
    pub bound: f64,
    /// Weights whose rounding error exceeded `δ/2` (nearest) or whose value lay beyond the grid
    /// (stochastic): clipped at the grid's ends, where the deterministic bound does not apply.
    pub clipped: usize,
    /// The stochastic bounds, for stochastic GPTQ.
    pub stochastic: Option<StochasticBounds>,
}

impl OptqReport {
    /// `|measured − identity| / measured` (0 when both are 0).
    pub fn discrepancy(&self) -> f64 {
        let d = (self.measured - self.identity).abs();
        if d == 0.0 {
            0.0
        } else {
            d / self.measured.abs()
        }
    }

    /// `measured / bound` (∞ for a zero bound with a nonzero error).
    pub fn ratio(&self) -> f64 {
        if self.measured == 0.0 {
            0.0
        } else {
            self.measured / self.bound
        }
    }
}

/// The stochastic GPTQ bounds of one matrix, in grid steps (module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StochasticBounds {
    /// `κ · max_t ρ_t`: with probability ≥ `1 − p`, no feedback-corrected weight drifts further from its
    /// original value.
    pub drift_bound_steps: f64,
    /// The largest drift `|w⁽ᵗ⁾_t − w_t|` the run made.
    pub drift_measured_steps: f64,
    /// `drift_bound_steps + 1`, the bound on `max |w − q|`.
    pub linf_bound_steps: f64,
    /// The run's `max |w − q|`.
    pub linf_measured_steps: f64,
    /// The fewest grid steps between an original weight and its grid's nearer end; no weight clips with
    /// probability ≥ `1 − p` when this is at least `drift_bound_steps`.
    pub headroom_steps: f64,
}

/// What [`report`] needs besides the weights and the run.
#[derive(Clone, Copy, Debug)]
pub struct RunFacts<'a> {
    /// The measured `tr(Δ H Δᵀ [H_out])`, computed by the caller from `Δ` and the damped factors.
    pub measured: f64,
    /// The input-side pivot of each column, at the column's own position (`n`).
    pub pivots_in: &'a [f64],
    /// The output-side pivot of each row (`m`); `None` means 1 (every method but YAQA).
    pub pivots_out: Option<&'a [f64]>,
    /// The drift gain `ρ` of each column at its own position (stochastic GPTQ), else `None`.
    pub drift_gains: Option<&'a [f64]>,
}

/// The OPTQ report of a run that rounded `w` (`m × n`, the coordinates it rounded in) to `w_hat` with
/// rounding errors `eps`, or `None` when the quantizer is not a uniform scalar grid or the sizes do not
/// match (a backend that keeps no pivots).
pub fn report(
    w: &Mat<f32>,
    w_hat: &Mat<f32>,
    eps: &Mat<f32>,
    quantizer: &dyn TileQuantizer,
    facts: &RunFacts<'_>,
) -> Option<OptqReport> {
    let (m, n) = w.shape();
    if eps.shape() != (m, n)
        || w_hat.shape() != (m, n)
        || facts.pivots_in.len() != n
        || facts.pivots_out.is_some_and(|p| p.len() != m)
        || facts.drift_gains.is_some_and(|g| g.len() != n)
    {
        return None;
    }
    let stochastic = facts.drift_gains.is_some();
    let mut identity = 0.0;
    let mut bound = 0.0;
    let mut clipped = 0;
    let (mut drift, mut linf, mut headroom) = (0.0f64, 0.0f64, f64::INFINITY);
    for r in 0..m {
        let d_out = facts.pivots_out.map_or(1.0, |p| p[r]);
        let (mut row_identity, mut row_bound) = (0.0, 0.0);
        let mut step_max = 0.0f64;
        let (mut row_drift, mut row_linf, mut row_headroom) = (0.0f64, 0.0f64, f64::INFINITY);
        for j in 0..n {
            let cell = quantizer.grid(r, j)?;
            let e = eps.at(r, j) as f64;
            let d = facts.pivots_in[j];
            row_identity += d * e * e;
            row_bound += d * cell.step * cell.step / 4.0;
            let q = w_hat.at(r, j) as f64;
            let given = q + e;
            // f32 values: allow a few ulps of the grid's scale before calling a value clipped.
            let slack = 1e-5 * cell.step;
            let outside = if stochastic {
                given < cell.lo - slack || given > cell.hi + slack
            } else {
                e.abs() > cell.step / 2.0 + slack
            };
            clipped += usize::from(outside);
            step_max = step_max.max(cell.step);
            if stochastic {
                let wv = w.at(r, j) as f64;
                let delta = wv - q;
                row_drift = row_drift.max((e - delta).abs());
                row_linf = row_linf.max(delta.abs());
                row_headroom = row_headroom.min((cell.hi - wv).min(wv - cell.lo));
            }
        }
        identity += d_out * row_identity;
        bound += d_out * row_bound;
        if stochastic && step_max > 0.0 {
            drift = drift.max(row_drift / step_max);
            linf = linf.max(row_linf / step_max);
            headroom = headroom.min(row_headroom / step_max);
        }
    }
    let stochastic = facts.drift_gains.map(|gains| {
        let kappa = (0.5 * (2.0 * (m * n) as f64 / STOCHASTIC_FAILURE_PROBABILITY).ln()).sqrt();
        let gain = gains.iter().copied().fold(0.0, f64::max);
        StochasticBounds {
            drift_bound_steps: kappa * gain,
            drift_measured_steps: drift,
            linf_bound_steps: kappa * gain + 1.0,
            linf_measured_steps: linf,
            headroom_steps: headroom,
        }
    });
    Some(OptqReport {
        measured: facts.measured,
        identity,
        bound,
        clipped,
        stochastic,
    })
}
