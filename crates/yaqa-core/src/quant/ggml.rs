//! llama.cpp's own block grids (ggml's `Q8_0`, `Q4_0` and `Q4_1`), so that any rounding method can choose
//! the codes of a GGUF file that llama.cpp loads as it is.
//!
//! Each row of `W` splits into blocks of [`BLOCK`] = 32 consecutive weights, and each block has its own
//! grid, fixed from the original weights *before* any rounding, exactly as llama.cpp's reference
//! quantizers (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref` in
//! `ggml-quants.c`) compute it, in f32:
//!
//! - `Q8_0`: `d = amax / 127` (`amax` the largest `|w|` of the block); level of code `q ∈ −127..=127` is
//!   `d·q`.
//! - `Q4_0`: `d = max / −8`, where `max` is the block's value of largest magnitude *with its sign* (the
//!   first one on a tie); level of code `c ∈ 0..=15` is `d·(c − 8)`, so `max` itself is code 0.
//! - `Q4_1`: `d = (max − min) / 15`, `m = min`; level of code `c ∈ 0..=15` is `d·c + m`.
//!
//! The file stores `d` (and `m`) as float16, and the levels are those of the stored values: every
//! reconstruction (the value a rounding method feeds its error back from) uses `d16 = f16(d)` and
//! `m16 = f16(m)`, as llama.cpp's dequantization does. Which code a value gets is decided with
//! llama.cpp's own arithmetic, `id = 1/d` in f32 from the unrounded `d` (and the unrounded `min`):
//! `Q8_0` `round(x·id)` (half away from zero), `Q4_0` `⌊x·id + 8.5⌋`, `Q4_1` `⌊(x − min)·id + 0.5⌋`,
//! clamped to the code range. On the original weights that is llama.cpp's round-to-nearest byte for
//! byte, so `--method rtn` writes what `llama-quantize` writes; the decision grid and the stored grid
//! differ by float16's rounding of `d` (at most 2⁻¹¹ of it), so near a midpoint the chosen level can be
//! the farther one by at most 2⁻¹⁰ of a step. GPTQ, LDLQ and YAQA round the feedback-corrected values
//! with the same rule, one weight at a time (1 × 1 tiles, like the INT grids).
//!
//! Codes as [`TileQuantizer`] writes them: the 4-bit `c` of `Q4_0`/`Q4_1`, and for `Q8_0` the signed `q`
//! as its two's-complement byte (`0x80`, −128, is never written: llama.cpp's reference stays in
//! −127..=127).

use half::f16;

use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::{GridCell, TileQuantizer};
use crate::rng::Rng;

/// Weights per block (ggml's `QK8_0`, `QK4_0`, `QK4_1`).
pub const BLOCK: usize = 32;

/// One of llama.cpp's block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GgmlFormat {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl GgmlFormat {
    /// Every format, in the order the command line lists them.
    pub const ALL: [GgmlFormat; 3] = [GgmlFormat::Q8_0, GgmlFormat::Q4_0, GgmlFormat::Q4_1];

    /// The name llama.cpp's tools use, lower case: `q8_0`, `q4_0`, `q4_1`.
    pub fn name(self) -> &'static str {
        match self {
            GgmlFormat::Q8_0 => "q8_0",
            GgmlFormat::Q4_0 => "q4_0",
            GgmlFormat::Q4_1 => "q4_1",
        }
    }

    /// The format named `name` ([`GgmlFormat::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Bits per code: 8 or 4.
    pub fn bits(self) -> u32 {
        match self {
            GgmlFormat::Q8_0 => 8,
            GgmlFormat::Q4_0 | GgmlFormat::Q4_1 => 4,
        }
    }

    /// Whether the block stores a minimum `m` beside its scale `d` (`Q4_1`).
    pub fn has_min(self) -> bool {
        self == GgmlFormat::Q4_1
    }

    /// ggml's type id (`ggml_type` in ggml.h).
    pub fn type_id(self) -> u32 {
        match self {
            GgmlFormat::Q8_0 => 8,
            GgmlFormat::Q4_0 => 2,
            GgmlFormat::Q4_1 => 3,
        }
    }

    /// Bytes per block in a GGUF file: float16 `d`, float16 `m` for `Q4_1`, then the codes.
    pub fn block_bytes(self) -> usize {
        let header = if self.has_min() { 4 } else { 2 };
        header + BLOCK * self.bits() as usize / 8
    }

    /// Bits per weight, the block's float16 scale (and minimum) included: 8.5, 4.5 and 5.
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / BLOCK as f64
    }

    /// The largest code (`Q8_0`: the largest `|q|`).
    fn max_code(self) -> f32 {
        match self {
            GgmlFormat::Q8_0 => 127.0,
            GgmlFormat::Q4_0 | GgmlFormat::Q4_1 => 15.0,
        }
    }
}

impl std::fmt::Display for GgmlFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors unless `n` splits into whole blocks.
pub fn check_width(n: usize) -> Result<()> {
    if n > 0 && n.is_multiple_of(BLOCK) {
        Ok(())
    } else {
        Err(CoreError::UnsupportedDimension {
            what: "llama.cpp block grid (input width)".into(),
            dim: n,
            why: format!("rows split into blocks of {BLOCK} weights"),
        })
    }
}

/// The float16 value nearest to `x` (ties to even, as ggml's `GGML_FP32_TO_FP16`), as an f32.
pub fn to_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Whether `x` is a finite float16 value (so storing it as float16 loses nothing).
pub fn is_f16(x: f32) -> bool {
    x.is_finite() && to_f16(x).to_bits() == x.to_bits()
}

/// One block's grid as llama.cpp's reference quantizer fixes it: `(d, min)` in f32 before the float16
/// rounding (`min` is 0 but for `Q4_1`).
pub fn reference_scale(format: GgmlFormat, block: &[f32]) -> (f32, f32) {
    match format {
        GgmlFormat::Q8_0 => {
            let amax = block.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            (amax / 127.0, 0.0)
        }
        GgmlFormat::Q4_0 => {
            // The signed value of the largest magnitude, the first one on a tie (a strict `<`).
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in block {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            (max / -8.0, 0.0)
        }
        GgmlFormat::Q4_1 => {
            // C's comparisons, so that the sign of a zero minimum is llama.cpp's too.
            let (mut min, mut max) = (f32::MAX, -f32::MAX);
            for &v in block {
                if v < min {
                    min = v;
                }
                if v > max {
                    max = v;
                }
            }
            ((max - min) / 15.0, min)
        }
    }
}

/// The block grids of one `m × n` matrix: per row and block of 32 columns, the stored (float16) `d` and
/// `m` that the levels use, and the f32 `id = 1/d` and `min` that llama.cpp's rule decides codes with.
#[derive(Clone, Debug, PartialEq)]
pub struct GgmlBlocks {
    format: GgmlFormat,
    /// `m × n/32`: the stored scales `d16` (float16 values held as f32).
    scales: Mat<f32>,
    /// `m × n/32`: the stored minimums `m16` (`Q4_1`; zeros otherwise).
    mins: Mat<f32>,
    /// `m × n/32`: `1/d` from the unrounded `d` (0 where `d` is 0).
    inv: Mat<f32>,
    /// `m × n/32`: the unrounded `min` (`Q4_1`; zeros otherwise).
    lo: Mat<f32>,
}

impl GgmlBlocks {
    /// The grids of `w`, every block's fixed as [`reference_scale`] does and stored as float16.
    ///
    /// **Errors**: a width that is not a multiple of 32, an empty or non-finite `w`, a scale or minimum
    /// beyond float16's range (|x| > 65504; named with its row and block).
    pub fn fit(w: &Mat<f32>, format: GgmlFormat) -> Result<Self> {
        let (m, n) = w.shape();
        check_width(n)?;
        if m == 0 {
            return Err(CoreError::shape(
                "GgmlBlocks::fit W",
                "a non-empty matrix",
                "0 rows",
            ));
        }
        check_finite("GgmlBlocks::fit W", &w.data)?;
        let nb = n / BLOCK;
        let mut out = Self {
            format,
            scales: Mat::zeros(m, nb),
            mins: Mat::zeros(m, nb),
            inv: Mat::zeros(m, nb),
            lo: Mat::zeros(m, nb),
        };
        for r in 0..m {
            for (b, block) in w.row(r).chunks_exact(BLOCK).enumerate() {
                let (d, min) = reference_scale(format, block);
                let (d16, m16) = (to_f16(d), to_f16(min));
                if !d16.is_finite() || !m16.is_finite() {
                    return Err(CoreError::InvalidParameter {
                        name: "block scale",
                        value: format!("d = {d:e}, min = {min:e}"),
                        why: format!(
                            "row {r}, block {b} (columns {}..{}): beyond float16's range, which {} \
                             stores its scales in",
                            b * BLOCK,
                            (b + 1) * BLOCK,
                            format.name()
                        ),
                    });
                }
                *out.scales.at_mut(r, b) = d16;
                *out.mins.at_mut(r, b) = m16;
                *out.inv.at_mut(r, b) = if d != 0.0 { 1.0 / d } else { 0.0 };
                *out.lo.at_mut(r, b) = min;
            }
        }
        Ok(out)
    }

    /// Wraps stored grids read from a file: `scales` (and `mins` for `Q4_1`) of an `m × n` matrix, `m ×
    /// n/32` each. Codes are then decided against the stored values themselves.
    ///
    /// **Errors** (naming the row and block): a shape that does not match, a value that is not a finite
    /// float16, a negative scale of `Q8_0` or `Q4_1` (their reference quantizers make `d ≥ 0`), `mins`
    /// given for a format without them or missing for `Q4_1`.
    pub fn from_parts(
        format: GgmlFormat,
        m: usize,
        n: usize,
        scales: Mat<f32>,
        mins: Option<Mat<f32>>,
    ) -> Result<Self> {
        check_width(n)?;
        let nb = n / BLOCK;
        scales.expect_shape("block scales", m, nb)?;
        let bad = |name: &'static str, i: usize, v: f32, why: &str| CoreError::InvalidParameter {
            name,
            value: v.to_string(),
            why: format!("row {}, block {}: {why}", i / nb, i % nb),
        };
        for (i, &d) in scales.data.iter().enumerate() {
            if !is_f16(d) {
                return Err(bad("scales", i, d, "not a finite float16 value"));
            }
            if d < 0.0 && format != GgmlFormat::Q4_0 {
                return Err(bad(
                    "scales",
                    i,
                    d,
                    &format!("negative, which no {} block has", format.name()),
                ));
            }
        }
        let mins = match (format.has_min(), mins) {
            (true, Some(mins)) => {
                mins.expect_shape("block minimums", m, nb)?;
                if let Some((i, &v)) = mins.data.iter().enumerate().find(|(_, v)| !is_f16(**v)) {
                    return Err(bad("mins", i, v, "not a finite float16 value"));
                }
                mins
            }
            (false, None) => Mat::zeros(m, nb),
            (true, None) | (false, Some(_)) => {
                return Err(CoreError::InvalidParameter {
                    name: "mins",
                    value: "given or missing".into(),
                    why: format!(
                        "{} {} block minimums",
                        format.name(),
                        if format.has_min() { "needs" } else { "has no" }
                    ),
                });
            }
        };
        let inv = Mat {
            rows: m,
            cols: nb,
            data: scales
                .data
                .iter()
                .map(|&d| if d != 0.0 { 1.0 / d } else { 0.0 })
                .collect(),
        };
        Ok(Self {
            format,
            lo: mins.clone(),
            scales,
            mins,
            inv,
        })
    }

    pub fn format(&self) -> GgmlFormat {
        self.format
    }

    /// The stored scales `d16`, `m × n/32`.
    pub fn scales(&self) -> &Mat<f32> {
        &self.scales
    }

    /// The stored minimums `m16`, `m × n/32` (`Q4_1`; `None` otherwise).
    pub fn mins(&self) -> Option<&Mat<f32>> {
        self.format.has_min().then_some(&self.mins)
    }

    /// The code llama.cpp's rule gives `x` at row `r`, block `b`.
    fn code(&self, r: usize, b: usize, x: f32) -> u16 {
        let id = self.inv.at(r, b);
        let max = self.format.max_code();
        match self.format {
            GgmlFormat::Q8_0 => {
                let q = (x * id).round().clamp(-max, max);
                // −127..=127: the two's-complement byte.
                (q as i8 as u8) as u16
            }
            GgmlFormat::Q4_0 => (x * id + 8.5).floor().clamp(0.0, max) as u16,
            GgmlFormat::Q4_1 => ((x - self.lo.at(r, b)) * id + 0.5).floor().clamp(0.0, max) as u16,
        }
    }

    /// The level of `code` at weight `(r, c)`, computed as llama.cpp's `dequantize_row_*` does.
    pub fn level(&self, r: usize, c: usize, code: u16) -> f32 {
        let b = c / BLOCK;
        let d = self.scales.at(r, b);
        match self.format {
            GgmlFormat::Q8_0 => d * (code as u8 as i8) as f32,
            GgmlFormat::Q4_0 => (code as i32 - 8) as f32 * d,
            GgmlFormat::Q4_1 => code as f32 * d + self.mins.at(r, b),
        }
    }
}

impl TileQuantizer for GgmlBlocks {
    fn name(&self) -> String {
        self.format.name().into()
    }

    fn bits_per_weight(&self) -> f64 {
        self.format.bits_per_weight()
    }

    fn grid(&self, row: usize, col: usize) -> Option<GridCell> {
        let b = col / BLOCK;
        let d = self.scales.at(row, b) as f64;
        let (a, z) = match self.format {
            GgmlFormat::Q8_0 => (-127.0 * d, 127.0 * d),
            GgmlFormat::Q4_0 => (-8.0 * d, 7.0 * d),
            GgmlFormat::Q4_1 => {
                let m = self.mins.at(row, b) as f64;
                (m, m + 15.0 * d)
            }
        };
        Some(GridCell {
            step: d.abs(),
            lo: a.min(z),
            hi: a.max(z),
        })
    }

    /// Rounds with llama.cpp's rule (no stochastic rounding: `dither` is ignored, and `QuantSpec`
    /// refuses `--stochastic` with these grids).
    fn quantize_tile(
        &self,
        row0: usize,
        col0: usize,
        rows: usize,
        cols: usize,
        values: &mut [f32],
        codes: &mut [u16],
        _dither: Option<&mut Rng>,
    ) {
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let (row, col) = (row0 + r, col0 + c);
                let code = self.code(row, col / BLOCK, values[i]);
                codes[i] = code;
                values[i] = self.level(row, col, code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::round_to_nearest;

    /// llama.cpp's `quantize_row_*_ref` for one block, written out from ggml-quants.c line by line (C's
    /// `(int8_t)` truncation, `roundf`, `MIN(15, …)`), returning the stored float16 bits and the codes as
    /// the block holds them (nibbles for Q4, signed bytes for Q8).
    fn llama_ref(format: GgmlFormat, x: &[f32]) -> (u16, u16, Vec<u8>) {
        match format {
            GgmlFormat::Q8_0 => {
                let mut amax = 0.0f32;
                for &v in x {
                    amax = amax.max(v.abs());
                }
                let d = amax / ((1 << 7) - 1) as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let qs = x.iter().map(|&v| (v * id).round() as i8 as u8).collect();
                (f16::from_f32(d).to_bits(), 0, qs)
            }
            GgmlFormat::Q4_0 => {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let qs = x
                    .iter()
                    .map(|&v| ((v * id + 8.5) as i8).min(15) as u8)
                    .collect();
                (f16::from_f32(d).to_bits(), 0, qs)
            }
            GgmlFormat::Q4_1 => {
                let (mut min, mut max) = (f32::MAX, -f32::MAX);
                for &v in x {
                    if v < min {
                        min = v;
                    }
                    if v > max {
                        max = v;
                    }
                }
                let d = (max - min) / ((1 << 4) - 1) as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let qs = x
                    .iter()
                    .map(|&v| (((v - min) * id + 0.5) as i8).min(15) as u8)
                    .collect();
                (f16::from_f32(d).to_bits(), f16::from_f32(min).to_bits(), qs)
            }
        }
    }

    /// Random rows with the features that decide llama.cpp's choices: Gaussian bulk, an outlier per few
    /// blocks, ties of magnitude between a positive and a negative value, constant and all-zero blocks.
    fn rows(m: usize, n: usize, seed: u64) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        let mut w = Mat::from_fn(m, n, |_, _| rng.normal() as f32 * 0.02);
        for r in 0..m {
            let b = r % (n / BLOCK);
            match r % 5 {
                0 => *w.at_mut(r, b * BLOCK + 3) = 0.3,
                1 => {
                    *w.at_mut(r, b * BLOCK) = -0.1;
                    *w.at_mut(r, b * BLOCK + 7) = 0.1;
                }
                2 => w.row_mut(r)[b * BLOCK..(b + 1) * BLOCK].fill(0.0),
                3 => w.row_mut(r)[b * BLOCK..(b + 1) * BLOCK].fill(-0.05),
                _ => {}
            }
        }
        w
    }

    #[test]
    fn rtn_is_llama_cpps_reference_quantizer_byte_for_byte() {
        let (m, n) = (40, 256);
        for format in GgmlFormat::ALL {
            for seed in 0..3 {
                let w = rows(m, n, seed);
                let q = GgmlBlocks::fit(&w, format).unwrap();
                let r = round_to_nearest(&w, &q);
                for i in 0..m {
                    for b in 0..n / BLOCK {
                        let cols = b * BLOCK..(b + 1) * BLOCK;
                        let (d, mn, qs) = llama_ref(format, &w.row(i)[cols.clone()]);
                        let what = format!("{format} seed {seed} row {i} block {b}");
                        assert_eq!(f16::from_f32(q.scales().at(i, b)).to_bits(), d, "{what}");
                        if let Some(mins) = q.mins() {
                            assert_eq!(f16::from_f32(mins.at(i, b)).to_bits(), mn, "{what}");
                        }
                        let ours: Vec<u8> = r.codes[i * n..(i + 1) * n][cols.clone()]
                            .iter()
                            .map(|&c| c as u8)
                            .collect();
                        assert_eq!(ours, qs, "{what}");
                        // The reconstruction is llama.cpp's dequantization of those bytes.
                        for (j, col) in cols.enumerate() {
                            let d16 = f16::from_bits(d).to_f32();
                            let want = match format {
                                GgmlFormat::Q8_0 => d16 * (qs[j] as i8) as f32,
                                GgmlFormat::Q4_0 => (qs[j] as i32 - 8) as f32 * d16,
                                GgmlFormat::Q4_1 => {
                                    qs[j] as f32 * d16 + f16::from_bits(mn).to_f32()
                                }
                            };
                            assert_eq!(r.w_hat.at(i, col).to_bits(), want.to_bits(), "{what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn feedback_values_beyond_the_block_clamp_to_its_ends() {
        let w = Mat::from_fn(1, 32, |_, j| (j as f32 - 16.0) * 0.01);
        for format in GgmlFormat::ALL {
            let q = GgmlBlocks::fit(&w, format).unwrap();
            let cell = q.grid(0, 0).unwrap();
            for x in [-10.0f32, 10.0, 1e30, -1e30] {
                let mut v = [x];
                let mut c = [0u16];
                q.quantize_tile(0, 5, 1, 1, &mut v, &mut c, None);
                // d > 0 here (the largest magnitude, −0.16, is negative), so code 0 is the low end.
                let end = if x > 0.0 { cell.hi } else { cell.lo };
                assert_eq!(v[0] as f64, end, "{format}: {x}");
                if format == GgmlFormat::Q8_0 {
                    assert_ne!(c[0], 0x80, "−128 is never written");
                }
            }
        }
    }

    #[test]
    fn stored_grids_are_checked() {
        let (m, n) = (2, 64);
        let ok = Mat::from_fn(m, 2, |i, j| 0.5 + (i + j) as f32);
        for format in GgmlFormat::ALL {
            let mins = format.has_min().then(|| ok.clone());
            let q = GgmlBlocks::from_parts(format, m, n, ok.clone(), mins.clone()).unwrap();
            assert_eq!(q.scales(), &ok);
            let mut bad = ok.clone();
            *bad.at_mut(1, 1) = 0.1; // not a float16 value
            let e = GgmlBlocks::from_parts(format, m, n, bad, mins.clone()).unwrap_err();
            assert!(e.to_string().contains("row 1, block 1"), "{e}");
            let mut inf = ok.clone();
            *inf.at_mut(0, 1) = f32::INFINITY;
            assert!(GgmlBlocks::from_parts(format, m, n, inf, mins.clone()).is_err());
            let mut neg = ok.clone();
            *neg.at_mut(0, 0) = -0.5;
            let r = GgmlBlocks::from_parts(format, m, n, neg, mins.clone());
            assert_eq!(r.is_ok(), format == GgmlFormat::Q4_0, "{format}");
            assert!(GgmlBlocks::from_parts(format, m, n + 1, ok.clone(), mins.clone()).is_err());
            let flipped = if format.has_min() {
                None
            } else {
                Some(ok.clone())
            };
            assert!(GgmlBlocks::from_parts(format, m, n, ok.clone(), flipped).is_err());
        }
        let huge = Mat::from_fn(1, 32, |_, j| if j == 0 { 1e7 } else { 0.0 });
        let e = GgmlBlocks::fit(&huge, GgmlFormat::Q8_0).unwrap_err();
        assert!(e.to_string().contains("row 0, block 0"), "{e}");
        assert!(GgmlBlocks::fit(&Mat::zeros(2, 48), GgmlFormat::Q4_0).is_err());
    }

    #[test]
    fn formats_have_ggmls_block_sizes() {
        let sizes: Vec<_> = GgmlFormat::ALL
            .iter()
            .map(|f| (f.name(), f.type_id(), f.block_bytes(), f.bits_per_weight()))
            .collect();
        assert_eq!(
            sizes,
            [
                ("q8_0", 8, 34, 8.5),
                ("q4_0", 2, 18, 4.5),
                ("q4_1", 3, 20, 5.0)
            ]
        );
        assert_eq!(GgmlFormat::parse("q4_1"), Some(GgmlFormat::Q4_1));
        assert_eq!(GgmlFormat::parse("q4_k"), None);
    }
}
