//! The per-matrix scale search every quantizer with one scale per matrix shares (DESIGN.md §5, "The
//! scale matters as much as the rounding"): try `c ∈ {0.7, 0.8, …, 2.0}` in `s = c·RMS(W)/RMS(grid)`
//! and keep the `c` whose round-to-nearest result has the smallest proxy error.
//!
//! The INT grids ([`crate::quant::int::search_sym_scale`]) and the E8P codebook
//! ([`crate::quant::e8p::search_e8p_scale`]) differ only in how a multiplier becomes a quantizer, which
//! is the closure this search takes.

use crate::backend::{Backend, round_to_nearest};
use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;

/// The factors `c` tried by [`search_scale`]: 0.7 to 2.0 in steps of 0.1 (DESIGN.md §5), written as
/// tenths so that no floating-point accumulation creeps into the grid.
pub const SCALE_SEARCH_TENTHS: std::ops::RangeInclusive<u32> = 7..=20;

/// Returns `(quantizer, c)` for the `c` of [`SCALE_SEARCH_TENTHS`] whose round-to-nearest result on `w`
/// has the smallest two-sided proxy error `tr(Δ h_in Δᵀ h_out)` (`h_out = None` means `I`); ties keep the
/// smaller `c`. `make(c)` builds the quantizer of multiplier `c`; `what` names the caller in errors.
///
/// **Shapes**: `w` is `m × n`, `h_in` `n × n`, `h_out` `m × m`. **Errors**: an empty `w`; a shape
/// mismatch; non-finite `W` ([`CoreError::NonFinite`] naming it); whatever `make` reports (an all-zero
/// `W` has no RMS to scale to); whatever `backend.weighted_error` reports, or a non-finite proxy error.
pub fn search_scale<Q: TileQuantizer>(
    backend: &dyn Backend,
    w: &Mat<f32>,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
    what: &str,
    make: impl Fn(f64) -> Result<Q>,
) -> Result<(Q, f64)> {
    let (m, n) = w.shape();
    if m == 0 || n == 0 {
        return Err(CoreError::shape(
            format!("{what} W"),
            "a non-empty matrix",
            "0 entries",
        ));
    }
    if h_in.n != n {
        return Err(CoreError::shape(
            format!("{what} h_in"),
            format!("{n}×{n}"),
            h_in.n,
        ));
    }
    if let Some(h) = h_out
        && h.n != m
    {
        return Err(CoreError::shape(
            format!("{what} h_out"),
            format!("{m}×{m}"),
            h.n,
        ));
    }
    check_finite(&format!("{what} W"), &w.data)?;
    let mut best: Option<(Q, f64, f64)> = None;
    for tenths in SCALE_SEARCH_TENTHS {
        let c = tenths as f64 / 10.0;
        let quantizer = make(c)?;
        let mut delta = round_to_nearest(w, &quantizer).w_hat;
        for (d, &x) in delta.data.iter_mut().zip(&w.data) {
            *d = x - *d;
        }
        let err = backend.weighted_error(&delta, h_in, h_out)?;
        if !err.is_finite() {
            return Err(CoreError::NonFinite {
                what: format!("{what} proxy error at c = {c}"),
                count: 1,
                first: 0,
            });
        }
        if best.as_ref().is_none_or(|&(_, _, e)| err < e) {
            best = Some((quantizer, c, err));
        }
    }
    // The factor range is non-empty, so `best` is set; map the impossible case to an error anyway.
    best.map(|(q, c, _)| (q, c))
        .ok_or_else(|| CoreError::InvalidParameter {
            name: "SCALE_SEARCH_TENTHS",
            value: format!("{SCALE_SEARCH_TENTHS:?}"),
            why: "no scale factor to try".into(),
        })
}

/// `RMS(W) = sqrt(Σ w² / (m·n))` in f64, the quantity every per-matrix scale rule starts from.
///
/// **Errors**: non-finite `w` (named `what`), or an all-zero (or empty) `w`, which has no RMS to scale a
/// grid to.
pub fn rms(what: &str, w: &Mat<f32>) -> Result<f64> {
    check_finite(what, &w.data)?;
    let rms = (w.data.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
        / w.data.len().max(1) as f64)
        .sqrt();
    if rms == 0.0 {
        return Err(CoreError::InvalidParameter {
            name: "w",
            value: "all zeros".into(),
            why: "an all-zero matrix has no RMS to scale the grid to".into(),
        });
    }
    Ok(rms)
}
