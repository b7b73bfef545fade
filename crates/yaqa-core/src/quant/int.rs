//! INT-k scalar quantizers (DESIGN.md §5) and the per-matrix scale search that goes with them.
//!
//! Two grids live here. [`IntSym`] is the symmetric half-integer grid `{−2^(k−1)+½, …, 2^(k−1)−½}·s` with one
//! scale per matrix, meant for incoherence-processed (rotated) weights whose entries look Gaussian; it has
//! no zero level, so every level is used. [`IntAsymGroup`] is the asymmetric grid of GPTQ checkpoints:
//! `q = clamp(round(x/s) + z, 0, 2^k−1)`, `x̂ = s·(q − z)` with an integer zero-point `z` and one `(s, z)`
//! pair per row and group of columns. Both implement [`TileQuantizer`], so every rounding algorithm
//! (RTN, GPTQ, LDLQ, YAQA) can use either.
//!
//! DESIGN.md §5 insists that the scale matters as much as the rounding: [`search_sym_scale`] picks the
//! symmetric scale per matrix by minimising round-to-nearest's proxy error over `c ∈ {0.7, 0.8, …, 2.0}`.
//!
//! Rounding to nearest uses ties-to-even, the rule of `torch.round`, so asymmetric codes agree with
//! PyTorch GPTQ checkpoints even on exact ties. Values are handled in f32, as the checkpoints are.

use std::fmt::Write as _;

use crate::backend::Backend;
use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::scale::{rms, search_scale};
use crate::quant::{GridCell, TileQuantizer};
use crate::rng::Rng;
use crate::sym::SymMat;

/// The bit widths the INT grids support (DESIGN.md §5: k = 2, 3, 4, 8).
pub const SUPPORTED_BITS: [u32; 4] = [2, 3, 4, 8];

pub use crate::quant::scale::SCALE_SEARCH_TENTHS;

/// Errors unless `bits` is one of [`SUPPORTED_BITS`].
pub fn validate_bits(bits: u32) -> Result<()> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(CoreError::InvalidParameter {
            name: "bits",
            value: bits.to_string(),
            why: format!("INT grids support {SUPPORTED_BITS:?} bits"),
        })
    }
}

/// Number of levels `2^k`.
fn level_count(bits: u32) -> u32 {
    1 << bits
}

/// The value of symmetric level `code` in units of the scale: `code − (2^k − 1)/2`.
///
/// With `2^k` levels this is the half-integer grid `{−2^(k−1)+½, …, 2^(k−1)−½}` (DESIGN.md §5).
pub fn sym_level_units(bits: u32, code: u16) -> f64 {
    code as f64 - (level_count(bits) as f64 - 1.0) / 2.0
}

/// RMS of the symmetric grid in units of the scale, `sqrt((L² − 1)/12)` for `L = 2^k` levels: the mean
/// of `(i − (L−1)/2)²` over `i = 0..L`, the variance of a discrete uniform distribution.
pub fn sym_grid_rms(bits: u32) -> f64 {
    let l = level_count(bits) as f64;
    ((l * l - 1.0) / 12.0).sqrt()
}

/// Errors unless `scale` is finite and positive.
fn validate_scale(what: &'static str, scale: f32) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(CoreError::InvalidParameter {
            name: what,
            value: scale.to_string(),
            why: "a grid scale must be finite and positive".into(),
        })
    }
}

/// Picks the level of a value already expressed in level-index units (`t`), either to nearest
/// (ties to even) or stochastically between the two neighbouring levels, then clamps to `0..=max_level`.
///
/// Stochastic rounding draws exactly one number per value, clamped or not, so that the random stream
/// stays aligned across implementations that quantize the same values in the same order.
#[inline]
fn pick_level(t: f32, max_level: f32, dither: &mut Option<&mut Rng>) -> f32 {
    let level = match dither {
        None => t.round_ties_even(),
        Some(rng) => {
            let u = rng.next_f64();
            let lo = t.floor();
            // Up with probability equal to the fractional position, so E[level] = t inside the grid.
            let frac = t as f64 - lo as f64;
            if u < frac { lo + 1.0 } else { lo }
        }
    };
    level.clamp(0.0, max_level)
}

/// Symmetric half-integer INT-k grid with one scale per matrix (DESIGN.md §5), for rotated weights.
///
/// Level `i ∈ 0..2^k` (the code) reconstructs to `(i − (2^k−1)/2)·scale`. Nearest rounding clamps to the
/// grid's ends; stochastic rounding picks one of the two neighbouring levels, unbiased inside the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntSym {
    bits: u32,
    scale: f32,
}

impl IntSym {
    /// A grid with `bits` bits and step `scale`.
    ///
    /// **Errors**: `bits` not in [`SUPPORTED_BITS`]; `scale` not finite and positive.
    pub fn new(bits: u32, scale: f32) -> Result<Self> {
        validate_bits(bits)?;
        validate_scale("scale", scale)?;
        Ok(Self { bits, scale })
    }

    /// The grid of DESIGN.md §5's scale rule for `w`: `s = c·RMS(W)/RMS(grid)`.
    ///
    /// **Errors**: unsupported `bits`; non-finite or all-zero `w`; a `c` that gives no positive finite step.
    pub fn for_multiplier(bits: u32, w: &Mat<f32>, c: f64) -> Result<Self> {
        validate_bits(bits)?;
        let rms = rms("IntSym::for_multiplier W", w)?;
        Self::new(bits, (c * rms / sym_grid_rms(bits)) as f32)
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The grid step `s`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The reconstruction of `code`, `(code − (2^k−1)/2)·s`.
    pub fn level(&self, code: u16) -> f32 {
        // `2·code − (L−1)` is an exact small integer and halving it is exact, so the only rounding is the
        // final product, as in `quantize_tile`.
        let twice = 2.0 * code as f32 - (level_count(self.bits) - 1) as f32;
        0.5 * twice * self.scale
    }
}

impl TileQuantizer for IntSym {
    fn name(&self) -> String {
        format!("int{}", self.bits)
    }

    /// Exactly `k`: the single per-matrix scale costs `16/(m·n)` bits per weight (below 1e-5 for any real
    /// layer) and is not counted, since the quantizer does not know the matrix size.
    fn bits_per_weight(&self) -> f64 {
        self.bits as f64
    }

    /// Step `s`; levels from `−(2^k−1)/2·s` to `(2^k−1)/2·s`.
    fn grid(&self, _row: usize, _col: usize) -> Option<GridCell> {
        let half = (level_count(self.bits) as f64 - 1.0) / 2.0 * self.scale as f64;
        Some(GridCell {
            step: self.scale as f64,
            lo: -half,
            hi: half,
        })
    }

    fn quantize_tile(
        &self,
        _row0: usize,
        _col0: usize,
        rows: usize,
        cols: usize,
        values: &mut [f32],
        codes: &mut [u16],
        mut dither: Option<&mut Rng>,
    ) {
        let count = rows * cols;
        let max_level = (level_count(self.bits) - 1) as f32;
        let offset = 0.5 * max_level;
        for (x, code) in values[..count].iter_mut().zip(&mut codes[..count]) {
            let level = pick_level(*x / self.scale + offset, max_level, &mut dither);
            // `level` is an integer in 0..=max_level ≤ 255, so the cast is exact.
            *code = level as u16;
            *x = 0.5 * (2.0 * level - max_level) * self.scale;
        }
    }
}

/// How [`IntAsymGroup::fit`] chooses each group's range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AsymFitParams {
    /// Columns per group (32, 64, 128, ...); `None` means one group per whole row.
    pub group_size: Option<usize>,
    /// Grid-search a shrink of the min/max range, as GPTQ's `find_params` with `mse=True`.
    pub mse: bool,
    /// Exponent of the search's error `Σ|x̂ − x|^p` (GPTQ: 2.4).
    pub mse_norm: f64,
    /// The shrink factors tried are `1 − i/mse_grid` (GPTQ: 100).
    pub mse_grid: usize,
    /// Largest shrink tried, as a fraction of `mse_grid` (GPTQ: 0.8, so factors 1.0 down to 0.21).
    pub mse_max_shrink: f64,
}

impl Default for AsymFitParams {
    fn default() -> Self {
        Self {
            group_size: Some(128),
            mse: false,
            mse_norm: 2.4,
            mse_grid: 100,
            mse_max_shrink: 0.8,
        }
    }
}

/// Asymmetric INT-k grid with per-row, per-group scales and integer zero-points, in the semantics of GPTQ
/// checkpoints: `q = clamp(round(x/s) + z, 0, 2^k−1)`, `x̂ = s·(q − z)` (DESIGN.md §5).
///
/// Groups follow the original column index (`col / group_size`), so act-order runs keep static groups.
#[derive(Clone, Debug, PartialEq)]
pub struct IntAsymGroup {
    bits: u32,
    group_size: usize,
    /// `m × n/group_size`.
    scales: Mat<f32>,
    /// `m × n/group_size`, each in `0..2^k`.
    zeros: Mat<u16>,
}

/// GPTQ's `quantize`: `s·(clamp(round(x/s) + z, 0, maxq) − z)`, or the stochastic variant.
#[inline]
fn asym_quantize(x: f32, scale: f32, zero: f32, max_q: f32, dither: &mut Option<&mut Rng>) -> f32 {
    match dither {
        None => ((x / scale).round_ties_even() + zero).clamp(0.0, max_q),
        Some(_) => pick_level(x / scale + zero, max_q, dither),
    }
}

/// GPTQ's `find_params` for one group (asymmetric): the range `[min(x, 0), max(x, 0)]`, `[−1, 1]` when that
/// is empty (an all-zero group), `s = (xmax − xmin)/maxq`, `z = round(−xmin/s)`; with `mse`, the shrink
/// `p` of the range minimising `Σ|x̂ − x|^norm` over `p = 1, 1 − 1/grid, …`.
fn fit_group(values: &[f32], max_q: f32, params: &AsymFitParams) -> (f32, u16) {
    let mut xmin = values.iter().fold(0.0f32, |a, &b| a.min(b));
    let mut xmax = values.iter().fold(0.0f32, |a, &b| a.max(b));
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let params_for = |shrink: f32| {
        let (lo, hi) = (shrink * xmin, shrink * xmax);
        let scale = (hi - lo) / max_q;
        let zero = (-lo / scale).round_ties_even().clamp(0.0, max_q);
        (scale, zero)
    };
    let mut best = params_for(1.0);
    if params.mse {
        let mut best_err = f64::INFINITY;
        let steps = (params.mse_max_shrink * params.mse_grid as f64) as usize;
        for i in 0..steps {
            let shrink = (1.0 - i as f64 / params.mse_grid as f64) as f32;
            let (scale, zero) = params_for(shrink);
            let err: f64 = values
                .iter()
                .map(|&x| {
                    let q = asym_quantize(x, scale, zero, max_q, &mut None);
                    ((scale * (q - zero) - x).abs() as f64).powf(params.mse_norm)
                })
                .sum();
            if err < best_err {
                best_err = err;
                best = (scale, zero);
            }
        }
    }
    // `zero` is an integer in 0..=max_q ≤ 255.
    (best.0, best.1 as u16)
}

impl IntAsymGroup {
    /// Wraps fitted parameters, for example read from a GPTQ checkpoint.
    ///
    /// **Shapes**: `scales` and `zeros` are `m × n/group_size`. **Errors**: unsupported `bits`, a zero
    /// `group_size`, shapes that disagree, a scale that is not finite and positive, or a zero-point above
    /// `2^k − 1`.
    pub fn from_parts(
        bits: u32,
        group_size: usize,
        scales: Mat<f32>,
        zeros: Mat<u16>,
    ) -> Result<Self> {
        validate_bits(bits)?;
        if group_size == 0 {
            return Err(CoreError::InvalidParameter {
                name: "group_size",
                value: "0".into(),
                why: "a group holds at least one column".into(),
            });
        }
        zeros.expect_shape("IntAsymGroup zeros", scales.rows, scales.cols)?;
        check_finite("IntAsymGroup scales", &scales.data)?;
        if let Some(&bad) = scales.data.iter().find(|&&s| s <= 0.0) {
            validate_scale("scales", bad)?;
        }
        let max_q = level_count(bits) - 1;
        if let Some(&bad) = zeros.data.iter().find(|&&z| z as u32 > max_q) {
            return Err(CoreError::InvalidParameter {
                name: "zeros",
                value: bad.to_string(),
                why: format!("zero-points of a {bits}-bit grid lie in 0..={max_q}"),
            });
        }
        Ok(Self {
            bits,
            group_size,
            scales,
            zeros,
        })
    }

    /// Fits one `(s, z)` per row and group of `w` like GPTQ's `find_params` (asymmetric, optionally with
    /// its MSE range search; see [`AsymFitParams`]).
    ///
    /// **Shapes**: `w` is `m × n`; the result covers exactly that matrix. **Errors**: unsupported `bits`,
    /// a group size that does not divide `n`, an empty `w`, or non-finite weights.
    pub fn fit(w: &Mat<f32>, bits: u32, params: &AsymFitParams) -> Result<Self> {
        validate_bits(bits)?;
        let (m, n) = w.shape();
        if m == 0 || n == 0 {
            return Err(CoreError::shape(
                "IntAsymGroup::fit W",
                "a non-empty matrix",
                "0 entries",
            ));
        }
        check_finite("IntAsymGroup::fit W", &w.data)?;
        let group_size = params.group_size.unwrap_or(n);
        if group_size == 0 || n % group_size != 0 {
            return Err(CoreError::InvalidParameter {
                name: "group_size",
                value: group_size.to_string(),
                why: format!("the group size must divide the number of columns {n}"),
            });
        }
        if params.mse
            && !(params.mse_grid > 0 && params.mse_norm > 0.0 && params.mse_max_shrink > 0.0)
        {
            return Err(CoreError::InvalidParameter {
                name: "mse_grid",
                value: format!(
                    "{} (norm {}, max shrink {})",
                    params.mse_grid, params.mse_norm, params.mse_max_shrink
                ),
                why: "the MSE range search needs a positive grid, norm and maximum shrink".into(),
            });
        }
        let groups = n / group_size;
        let max_q = (level_count(bits) - 1) as f32;
        let mut scales = Mat::<f32>::zeros(m, groups);
        let mut zeros = Mat::<u16>::zeros(m, groups);
        for i in 0..m {
            for (g, chunk) in w.row(i).chunks(group_size).enumerate() {
                let (s, z) = fit_group(chunk, max_q, params);
                *scales.at_mut(i, g) = s;
                *zeros.at_mut(i, g) = z;
            }
        }
        Self::from_parts(bits, group_size, scales, zeros)
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Columns per group (`n` for one group per row).
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Per-row, per-group scales, `m × n/group_size`.
    pub fn scales(&self) -> &Mat<f32> {
        &self.scales
    }

    /// Per-row, per-group zero-points, `m × n/group_size`.
    pub fn zeros(&self) -> &Mat<u16> {
        &self.zeros
    }

    /// The `(m, n)` of the matrix the parameters cover.
    pub fn shape(&self) -> (usize, usize) {
        (self.scales.rows, self.scales.cols * self.group_size)
    }
}

impl TileQuantizer for IntAsymGroup {
    fn name(&self) -> String {
        let (_, n) = self.shape();
        if self.group_size == n {
            format!("int{}-asym-row", self.bits)
        } else {
            format!("int{}-asym-g{}", self.bits, self.group_size)
        }
    }

    /// `k + (16 + k)/group_size`: a 16-bit scale and a `k`-bit zero-point per group.
    fn bits_per_weight(&self) -> f64 {
        let k = self.bits as f64;
        k + (16.0 + k) / self.group_size as f64
    }

    /// The group's step `s`; levels from `s·(0 − z)` to `s·(2^k − 1 − z)`.
    fn grid(&self, row: usize, col: usize) -> Option<GridCell> {
        let g = col / self.group_size;
        let step = self.scales.at(row, g) as f64;
        let zero = self.zeros.at(row, g) as f64;
        let max_q = (level_count(self.bits) - 1) as f64;
        Some(GridCell {
            step,
            lo: -zero * step,
            hi: (max_q - zero) * step,
        })
    }

    /// Quantizes with the parameters of the groups the tile covers; groups follow the original column
    /// index `col0 + j`.
    ///
    /// Panics if the tile reaches outside the fitted `m × n` matrix (a caller bug, not bad data).
    fn quantize_tile(
        &self,
        row0: usize,
        col0: usize,
        rows: usize,
        cols: usize,
        values: &mut [f32],
        codes: &mut [u16],
        mut dither: Option<&mut Rng>,
    ) {
        let (m, n) = self.shape();
        assert!(
            row0 + rows <= m && col0 + cols <= n,
            "IntAsymGroup: tile {rows}×{cols} at ({row0}, {col0}) outside the fitted {m}×{n} matrix"
        );
        let max_q = (level_count(self.bits) - 1) as f32;
        for r in 0..rows {
            let i = row0 + r;
            for c in 0..cols {
                let g = (col0 + c) / self.group_size;
                let scale = self.scales.at(i, g);
                let zero = self.zeros.at(i, g) as f32;
                let idx = r * cols + c;
                let q = asym_quantize(values[idx], scale, zero, max_q, &mut dither);
                // `q` is an integer in 0..=max_q ≤ 255.
                codes[idx] = q as u16;
                values[idx] = scale * (q - zero);
            }
        }
    }
}

/// Chooses the scale of a symmetric INT-k grid for one matrix (DESIGN.md §5, "The scale matters as much
/// as the rounding"): `s = c·RMS(W)/RMS(grid)` for `c = 0.7, 0.8, …, 2.0`, keeping the `c` whose
/// round-to-nearest result has the smallest two-sided proxy error `tr(Δ h_in Δᵀ h_out)` (`h_out = None`
/// means `I`). Ties keep the smaller `c`. Returns the grid and the chosen `c`.
///
/// **Shapes**: `w` is `m × n`, `h_in` `n × n`, `h_out` `m × m`. **Errors**: unsupported `bits`; a shape
/// mismatch; non-finite `W` ([`CoreError::NonFinite`] naming it); an all-zero `W` (no RMS to scale to);
/// whatever `backend.weighted_error` reports, or a non-finite proxy error.
pub fn search_sym_scale(
    backend: &dyn Backend,
    w: &Mat<f32>,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
    bits: u32,
) -> Result<(IntSym, f64)> {
    validate_bits(bits)?;
    search_scale(backend, w, h_in, h_out, "search_sym_scale", |c| {
        IntSym::for_multiplier(bits, w, c)
    })
}

/// The symmetric grid as a table, one line per code: `code  value` with the value in units of the scale.
///
/// **Errors**: unsupported `bits`.
pub fn render_sym_grid(bits: u32) -> Result<String> {
    validate_bits(bits)?;
    let mut out = format!(
        "int{bits} symmetric: {} levels, RMS {:.6} (units of the scale)\n",
        level_count(bits),
        sym_grid_rms(bits)
    );
    for code in 0..level_count(bits) {
        // Half-integers below 2^7 print exactly with one decimal.
        let _ = writeln!(out, "{code:>3}  {:+.1}", sym_level_units(bits, code as u16));
    }
    Ok(out)
}

/// The asymmetric level sets `q − z` (units of the scale) for each zero-point in `zeros`, one block per
/// zero-point with 16 levels per line, codes `q = 0..2^k` in order.
///
/// **Errors**: unsupported `bits`, or a zero-point above `2^k − 1`.
pub fn render_asym_levels(bits: u32, zeros: &[u16]) -> Result<String> {
    validate_bits(bits)?;
    let max_q = level_count(bits) - 1;
    let mut out = format!("int{bits} asymmetric: codes 0..={max_q}, value = q − z\n");
    for &z in zeros {
        if z as u32 > max_q {
            return Err(CoreError::InvalidParameter {
                name: "zeros",
                value: z.to_string(),
                why: format!("zero-points of a {bits}-bit grid lie in 0..={max_q}"),
            });
        }
        let _ = writeln!(out, "z = {z}:");
        let levels: Vec<String> = (0..=max_q)
            .map(|q| format!("{:>5}", q as i64 - z as i64))
            .collect();
        for line in levels.chunks(16) {
            let _ = writeln!(out, " {}", line.join(""));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::round_to_nearest;

    /// A structured test matrix: rows with different scales (heavy-ish rows), a smooth trend along the
    /// columns and Gaussian noise, never all zeros.
    fn test_matrix(m: usize, n: usize, seed: u64) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        let row_scale: Vec<f64> = (0..m)
            .map(|i| 0.2 + 2.0 * ((i * 7) % 11) as f64 / 11.0)
            .collect();
        Mat::from_fn(m, n, |i, j| {
            let trend = (j as f64 * 0.05 + i as f64).sin() * 0.3;
            (row_scale[i] * (rng.normal() + trend)) as f32
        })
    }

    #[test]
    fn sym_grid_tables() {
        for bits in SUPPORTED_BITS {
            let table = render_sym_grid(bits).expect("supported bits");
            insta::assert_snapshot!(format!("int{bits}_sym_grid"), table);
        }
    }

    #[test]
    fn asym_level_tables() {
        let small = |bits: u32| -> Vec<u16> { (0..(1u16 << bits)).collect() };
        insta::assert_snapshot!(
            "int2_asym_levels",
            render_asym_levels(2, &small(2)).expect("ok")
        );
        insta::assert_snapshot!(
            "int3_asym_levels",
            render_asym_levels(3, &small(3)).expect("ok")
        );
        insta::assert_snapshot!(
            "int4_asym_levels",
            render_asym_levels(4, &[0, 7, 8, 15]).expect("ok")
        );
        insta::assert_snapshot!(
            "int8_asym_levels",
            render_asym_levels(8, &[0, 128, 255]).expect("ok")
        );
    }

    #[test]
    fn unsupported_bits_and_scales_are_rejected() {
        for bits in [0, 1, 5, 16, 32] {
            assert!(matches!(
                IntSym::new(bits, 1.0),
                Err(CoreError::InvalidParameter { name: "bits", .. })
            ));
        }
        for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(IntSym::new(4, scale).is_err(), "scale {scale}");
        }
        assert!(render_asym_levels(2, &[4]).is_err());
    }

    /// Nearest rounding on the symmetric grid equals a brute-force search over all levels (ties aside),
    /// clamps to the grid ends, and the codes reconstruct the values.
    #[test]
    fn sym_nearest_is_the_closest_level() {
        for bits in SUPPORTED_BITS {
            let grid = IntSym::new(bits, 0.37).expect("valid");
            let levels: Vec<f32> = (0..level_count(bits))
                .map(|c| grid.level(c as u16))
                .collect();
            let mut rng = Rng::new(bits as u64);
            let span = levels[levels.len() - 1] * 1.5;
            let mut values: Vec<f32> = (0..4000)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * span)
                .collect();
            let original = values.clone();
            let mut codes = vec![0u16; values.len()];
            grid.quantize_tile(0, 0, 40, 100, &mut values, &mut codes, None);
            for ((&x, &q), &code) in original.iter().zip(&values).zip(&codes) {
                assert_eq!(q, levels[code as usize], "value and code disagree");
                let best = levels
                    .iter()
                    .map(|&l| (l - x).abs())
                    .fold(f32::INFINITY, f32::min);
                assert!(
                    (q - x).abs() <= best + 1e-5 * span,
                    "x {x}: got {q}, nearest is {best} away"
                );
            }
            // Far outside the grid: clamped to the end levels.
            let mut ends = [-1e6f32, 1e6];
            let mut end_codes = [0u16; 2];
            grid.quantize_tile(0, 0, 1, 2, &mut ends, &mut end_codes, None);
            assert_eq!(end_codes, [0, (level_count(bits) - 1) as u16]);
            assert_eq!(ends, [levels[0], levels[levels.len() - 1]]);
        }
    }

    #[test]
    fn sym_grid_rms_matches_its_levels() {
        for bits in SUPPORTED_BITS {
            let l = level_count(bits);
            let ms = (0..l)
                .map(|c| sym_level_units(bits, c as u16).powi(2))
                .sum::<f64>()
                / l as f64;
            assert!((ms.sqrt() - sym_grid_rms(bits)).abs() < 1e-12);
        }
    }

    /// Stochastic rounding lands on a neighbouring level, is unbiased inside the grid, and replays with
    /// the same seed.
    #[test]
    fn stochastic_rounding_is_unbiased_and_reproducible() {
        let grid = IntSym::new(3, 0.5).expect("valid");
        let asym = IntAsymGroup::from_parts(
            3,
            4,
            Mat::from_fn(4, 1, |_, _| 0.25),
            Mat::from_fn(4, 1, |_, _| 3),
        )
        .expect("valid");
        let quantizers: [&dyn TileQuantizer; 2] = [&grid, &asym];
        for q in quantizers {
            for x in [0.13f32, -0.61, 0.377, 0.9] {
                let trials = 20_000;
                let mut rng = Rng::new(11);
                let mut sum = 0.0f64;
                let mut seen = Vec::new();
                for _ in 0..trials {
                    let mut v = [x; 4];
                    let mut c = [0u16; 4];
                    q.quantize_tile(0, 0, 1, 4, &mut v, &mut c, Some(&mut rng));
                    for &y in &v {
                        sum += y as f64;
                        if !seen.contains(&y) {
                            seen.push(y);
                        }
                    }
                }
                let mean = sum / (4 * trials) as f64;
                // Level spacing ≤ 0.5, so the standard error of the mean is below 0.25/sqrt(80000) ≈ 1e-3.
                assert!(
                    (mean - x as f64).abs() < 5e-3,
                    "{}: x {x}, mean {mean}",
                    q.name()
                );
                assert_eq!(seen.len(), 2, "{}: x {x} rounded to {seen:?}", q.name());
                let mut nearest = [x; 4];
                q.quantize_tile(0, 0, 1, 4, &mut nearest, &mut [0u16; 4], None);
                assert!(seen.contains(&nearest[0]));
            }
            let run = |seed: u64| {
                let mut rng = Rng::new(seed);
                let mut v: Vec<f32> = (0..16).map(|i| i as f32 * 0.11 - 0.8).collect();
                let mut c = vec![0u16; 16];
                q.quantize_tile(0, 0, 4, 4, &mut v, &mut c, Some(&mut rng));
                (v, c)
            };
            assert_eq!(run(5), run(5));
            assert_ne!(run(5), run(6));
        }
    }

    /// The asymmetric fit covers each group's range with 0 inside it, reconstructs the group's min and max
    /// to within half a step, and puts an all-zero group on the `[−1, 1]` range of GPTQ.
    #[test]
    fn asym_fit_follows_gptq_find_params() {
        let mut w = test_matrix(6, 256, 3);
        for v in &mut w.row_mut(2)[..32] {
            *v = 0.0;
        }
        for v in &mut w.row_mut(3)[32..64] {
            *v = 1.5;
        }
        for bits in SUPPORTED_BITS {
            let max_q = (level_count(bits) - 1) as f32;
            let q = IntAsymGroup::fit(
                &w,
                bits,
                &AsymFitParams {
                    group_size: Some(32),
                    ..Default::default()
                },
            )
            .expect("fit");
            assert_eq!(q.shape(), (6, 256));
            assert_eq!(q.scales().shape(), (6, 8));
            // All-zero group: the range [−1, 1].
            assert!((q.scales().at(2, 0) - 2.0 / max_q).abs() < 1e-6);
            // Constant positive group: the range [0, 1.5], zero-point 0, and 1.5 is exact.
            assert_eq!(q.zeros().at(3, 1), 0);
            let mut row = w.row(3)[32..64].to_vec();
            q.quantize_tile(3, 32, 1, 32, &mut row, &mut [0u16; 32], None);
            assert!(row.iter().all(|&v| (v - 1.5).abs() < 1e-6), "{row:?}");
            for i in 0..6 {
                for (g, chunk) in w.row(i).chunks(32).enumerate() {
                    let s = q.scales().at(i, g);
                    let mut vals = chunk.to_vec();
                    let mut codes = vec![0u16; 32];
                    q.quantize_tile(i, g * 32, 1, 32, &mut vals, &mut codes, None);
                    for (&x, &y) in chunk.iter().zip(&vals) {
                        assert!(
                            (x - y).abs() <= 0.5 * s * (1.0 + 1e-4),
                            "no clipping with min/max ranges"
                        );
                    }
                    assert!(codes.iter().all(|&c| c as f32 <= max_q));
                }
            }
        }
    }

    /// The MSE range search never does worse (in its own norm) than plain min/max, and does strictly
    /// better at low bits on data with outliers.
    #[test]
    fn asym_mse_search_improves_the_fit() {
        let mut w = test_matrix(8, 128, 4);
        *w.at_mut(0, 5) = 9.0;
        *w.at_mut(5, 70) = -8.0;
        let err = |q: &IntAsymGroup| -> f64 {
            let r = round_to_nearest(&w, q);
            r.w_hat
                .data
                .iter()
                .zip(&w.data)
                .map(|(a, b)| ((a - b).abs() as f64).powf(2.4))
                .sum()
        };
        for bits in [2, 3, 4] {
            let base = AsymFitParams {
                group_size: Some(64),
                ..Default::default()
            };
            let plain = IntAsymGroup::fit(&w, bits, &base).expect("fit");
            let mse =
                IntAsymGroup::fit(&w, bits, &AsymFitParams { mse: true, ..base }).expect("fit");
            assert!(
                err(&mse) < err(&plain),
                "bits {bits}: {} vs {}",
                err(&mse),
                err(&plain)
            );
        }
    }

    /// Tiles at any offset quantize exactly as the whole matrix does: groups follow `col0 + j`.
    #[test]
    fn tiles_follow_original_columns() {
        let w = test_matrix(12, 128, 5);
        let asym32 = IntAsymGroup::fit(
            &w,
            3,
            &AsymFitParams {
                group_size: Some(32),
                ..Default::default()
            },
        )
        .expect("fit");
        let row = IntAsymGroup::fit(
            &w,
            4,
            &AsymFitParams {
                group_size: None,
                mse: true,
                ..Default::default()
            },
        )
        .expect("fit");
        assert_eq!(row.group_size(), 128);
        assert_eq!(row.name(), "int4-asym-row");
        assert_eq!(asym32.name(), "int3-asym-g32");
        let sym = IntSym::new(2, 0.6).expect("valid");
        let quantizers: [&dyn TileQuantizer; 3] = [&asym32, &row, &sym];
        for q in quantizers {
            let whole = round_to_nearest(&w, q);
            for &(r0, c0, rows, cols) in &[
                (0, 0, 12, 128),
                (3, 17, 5, 40),
                (11, 100, 1, 28),
                (0, 31, 12, 2),
            ] {
                let mut tile: Vec<f32> = (0..rows)
                    .flat_map(|r| w.row(r0 + r)[c0..c0 + cols].to_vec())
                    .collect();
                let mut codes = vec![0u16; rows * cols];
                q.quantize_tile(r0, c0, rows, cols, &mut tile, &mut codes, None);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            tile[r * cols + c],
                            whole.w_hat.at(r0 + r, c0 + c),
                            "{}",
                            q.name()
                        );
                        assert_eq!(codes[r * cols + c], whole.codes[(r0 + r) * 128 + c0 + c]);
                    }
                }
            }
        }
    }

    #[test]
    fn asym_parts_are_validated() {
        let scales = Mat::from_fn(2, 2, |_, _| 0.1f32);
        let zeros = Mat::from_fn(2, 2, |_, _| 3u16);
        assert!(IntAsymGroup::from_parts(2, 16, scales.clone(), zeros.clone()).is_ok());
        assert!(IntAsymGroup::from_parts(2, 0, scales.clone(), zeros.clone()).is_err());
        assert!(
            IntAsymGroup::from_parts(2, 16, scales.clone(), Mat::from_fn(2, 2, |_, _| 4u16))
                .is_err()
        );
        assert!(IntAsymGroup::from_parts(2, 16, scales.clone(), Mat::zeros(2, 3)).is_err());
        let mut bad = scales.clone();
        bad.data[3] = f32::NAN;
        assert!(matches!(
            IntAsymGroup::from_parts(2, 16, bad, zeros.clone()),
            Err(CoreError::NonFinite { first: 3, .. })
        ));
        let w = test_matrix(4, 96, 1);
        assert!(
            IntAsymGroup::fit(
                &w,
                4,
                &AsymFitParams {
                    group_size: Some(64),
                    ..Default::default()
                }
            )
            .is_err()
        );
        let mut nan = w.clone();
        nan.data[7] = f32::NAN;
        assert!(matches!(
            IntAsymGroup::fit(&nan, 4, &AsymFitParams::default()),
            Err(CoreError::NonFinite { .. })
        ));
    }

    #[test]
    fn bits_per_weight_counts_group_overhead() {
        let w = test_matrix(4, 256, 2);
        let g128 = IntAsymGroup::fit(&w, 4, &AsymFitParams::default()).expect("fit");
        assert!((g128.bits_per_weight() - (4.0 + 20.0 / 128.0)).abs() < 1e-12);
        let g32 = IntAsymGroup::fit(
            &w,
            2,
            &AsymFitParams {
                group_size: Some(32),
                ..Default::default()
            },
        )
        .expect("fit");
        assert!((g32.bits_per_weight() - (2.0 + 18.0 / 32.0)).abs() < 1e-12);
        assert_eq!(IntSym::new(3, 1.0).expect("valid").bits_per_weight(), 3.0);
    }

    /// A proxy error computed with plain loops, `tr(Δ h_in Δᵀ h_out)`, for checking the scale search.
    fn loop_proxy(w: &Mat<f32>, w_hat: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> f64 {
        let (m, n) = w.shape();
        let d = Mat::from_fn(m, n, |i, j| w.at(i, j) as f64 - w_hat.at(i, j) as f64);
        // B = Δ h_in (m × n), then tr(B Δᵀ h_out) = Σ_{i,k} (B Δᵀ)_{ik} h_out_{ki}.
        let b = Mat::from_fn(m, n, |i, j| {
            (0..n).map(|k| d.at(i, k) * h_in.at(k, j)).sum::<f64>()
        });
        let bdt = Mat::from_fn(m, m, |i, k| {
            (0..n).map(|j| b.at(i, j) * d.at(k, j)).sum::<f64>()
        });
        (0..m)
            .map(|i| {
                (0..m)
                    .map(|k| {
                        bdt.at(i, k) * h_out.map_or(if i == k { 1.0 } else { 0.0 }, |h| h.at(k, i))
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    /// An SPD factor with correlated features and a decaying spectrum: `Σ_t x_t x_tᵀ` for tokens drawn
    /// from a few decaying latent directions plus noise.
    fn test_factor(n: usize, seed: u64) -> SymMat {
        let mut rng = Rng::new(seed);
        let latent = 6;
        let dirs: Vec<Vec<f64>> = (0..latent)
            .map(|_| (0..n).map(|_| rng.normal()).collect())
            .collect();
        let mut h = SymMat::zeros(n);
        for _ in 0..3 * n {
            let coef: Vec<f64> = (0..latent)
                .map(|k| rng.normal() / (1.0 + k as f64))
                .collect();
            let x: Vec<f64> = (0..n)
                .map(|j| {
                    (0..latent).map(|k| coef[k] * dirs[k][j]).sum::<f64>() + 0.3 * rng.normal()
                })
                .collect();
            for i in 0..n {
                for j in 0..=i {
                    *h.at_mut(i, j) += x[i] * x[j];
                }
            }
        }
        h
    }

    /// The scale search keeps the factor whose RTN proxy error is smallest among the candidates, and that
    /// error is no larger than at any other candidate (checked against a loop-computed proxy error).
    #[test]
    fn scale_search_picks_the_best_candidate() {
        let backend = crate::reference::Reference;
        let w = test_matrix(24, 32, 9);
        let h_in = test_factor(32, 1);
        let h_out = test_factor(24, 2);
        for (bits, h_out) in [(2, None), (3, Some(&h_out)), (4, Some(&h_out))] {
            let (grid, c) = search_sym_scale(&backend, &w, &h_in, h_out, bits).expect("search");
            assert!((0.7..=2.0).contains(&c));
            let rms = (w.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
                / w.data.len() as f64)
                .sqrt();
            assert!(
                ((grid.scale() as f64) - c * rms / sym_grid_rms(bits)).abs()
                    < 1e-6 * grid.scale() as f64
            );
            let chosen = loop_proxy(&w, &round_to_nearest(&w, &grid).w_hat, &h_in, h_out);
            for tenths in SCALE_SEARCH_TENTHS {
                let other = IntSym::new(
                    bits,
                    (tenths as f64 / 10.0 * rms / sym_grid_rms(bits)) as f32,
                )
                .expect("valid");
                let e = loop_proxy(&w, &round_to_nearest(&w, &other).w_hat, &h_in, h_out);
                assert!(
                    chosen <= e * (1.0 + 1e-9),
                    "bits {bits}: c {c} gives {chosen}, c {tenths}/10 gives {e}"
                );
            }
        }
    }

    #[test]
    fn scale_search_rejects_bad_input() {
        let backend = crate::reference::Reference;
        let w = test_matrix(4, 8, 1);
        let h = SymMat::identity(8);
        let mut nan = w.clone();
        nan.data[5] = f32::NAN;
        match search_sym_scale(&backend, &nan, &h, None, 4) {
            Err(CoreError::NonFinite { what, first, .. }) => {
                assert!(what.contains('W'), "{what}");
                assert_eq!(first, 5);
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(matches!(
            search_sym_scale(&backend, &w, &h, None, 5),
            Err(CoreError::InvalidParameter { .. })
        ));
        assert!(matches!(
            search_sym_scale(&backend, &w, &SymMat::identity(7), None, 4),
            Err(CoreError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            search_sym_scale(&backend, &w, &h, Some(&SymMat::identity(5)), 4),
            Err(CoreError::ShapeMismatch { .. })
        ));
        assert!(search_sym_scale(&backend, &Mat::zeros(4, 8), &h, None, 4).is_err());
    }
}
