//! llama.cpp's own block grids (ggml's `Q8_0`, `Q4_0`, `Q4_1`, `Q5_0` and `Q4_K`), so that any rounding
//! method can choose the codes of a GGUF file that llama.cpp loads as it is.
//!
//! Each row of `W` splits into blocks of [`BLOCK`] = 32 consecutive weights (`Q4_K`: super-blocks of
//! [`kquant::SUPER`] = 256, eight sub-blocks of 32), and each block has its own grid, fixed from the
//! original weights *before* any rounding, exactly as llama.cpp's reference quantizers
//! (`quantize_row_*_ref` in `ggml-quants.c`) compute it, in f32:
//!
//! - `Q8_0`: `d = amax / 127` (`amax` the largest `|w|` of the block); level of code `q ∈ −127..=127` is
//!   `d·q`.
//! - `Q4_0`: `d = max / −8`, where `max` is the block's value of largest magnitude *with its sign* (the
//!   first one on a tie); level of code `c ∈ 0..=15` is `d·(c − 8)`, so `max` itself is code 0.
//! - `Q5_0`: the same with `d = max / −16` and `c ∈ 0..=31`, level `d·(c − 16)`.
//! - `Q4_1`: `d = (max − min) / 15`, `m = min`; level of code `c ∈ 0..=15` is `d·c + m`.
//! - `Q4_K`: per super-block a float16 `d` and `dmin` and per sub-block `j` the 6-bit `sc_j`, `m_j` of
//!   [`kquant`] (a weighted least-squares search); level of code `c ∈ 0..=15` is `(d·sc_j)·c − dmin·m_j`.
//!
//! The file stores `d` (and `m`) as float16, and the levels are those of the stored values: every
//! reconstruction (the value a rounding method feeds its error back from) uses `d16 = f16(d)` and
//! `m16 = f16(m)`, as llama.cpp's dequantization does. Which code a value gets is decided with
//! llama.cpp's own arithmetic, `id = 1/d` in f32 from the unrounded `d` (and the unrounded `min`):
//! `Q8_0` `round(x·id)` (half away from zero), `Q4_0` `⌊x·id + 8.5⌋`, `Q5_0` `⌊x·id + 16.5⌋`, `Q4_1`
//! `⌊(x − min)·id + 0.5⌋`, and `Q4_K` (whose search already used the stored values)
//! `nearest_int((x + dmin·m_j) / (d·sc_j))`, clamped to the code range. On the original weights that is
//! llama.cpp's round-to-nearest byte for byte, so `--method rtn` writes what `llama-quantize` writes
//! (but for a `Q4_K` sub-block whose 6-bit scale is 0, where every code decodes to the same value: we
//! write 0, llama.cpp its search's codes); the decision grid and the stored grid of the 32-weight formats
//! differ by float16's rounding of `d` (at most 2⁻¹¹ of it), so near a midpoint the chosen level can be
//! the farther one by at most 2⁻¹⁰ of a step. GPTQ, LDLQ and YAQA round the feedback-corrected values
//! with the same rule, one weight at a time (1 × 1 tiles, like the INT grids).
//!
//! Codes as [`TileQuantizer`] writes them: the 4- or 5-bit `c`, and for `Q8_0` the signed `q` as its
//! two's-complement byte (`0x80`, −128, is never written: llama.cpp's reference stays in −127..=127).

pub mod kquant;

use half::f16;

use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::{GridCell, TileQuantizer};
use crate::rng::Rng;

/// Weights per block (ggml's `QK8_0`, `QK4_0`, `QK4_1`, `QK5_0`), and per `Q4_K` sub-block.
pub const BLOCK: usize = 32;

/// One of llama.cpp's block formats, spelled as ggml spells them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GgmlFormat {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q4_K,
}

impl GgmlFormat {
    /// Every format, in the order the command line lists them.
    pub const ALL: [GgmlFormat; 5] = [
        GgmlFormat::Q8_0,
        GgmlFormat::Q4_0,
        GgmlFormat::Q4_1,
        GgmlFormat::Q5_0,
        GgmlFormat::Q4_K,
    ];

    /// The name llama.cpp's tools use, lower case: `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q4_k`.
    pub fn name(self) -> &'static str {
        match self {
            GgmlFormat::Q8_0 => "q8_0",
            GgmlFormat::Q4_0 => "q4_0",
            GgmlFormat::Q4_1 => "q4_1",
            GgmlFormat::Q5_0 => "q5_0",
            GgmlFormat::Q4_K => "q4_k",
        }
    }

    /// The format named `name` ([`GgmlFormat::name`]).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Bits per code: 8, 5 or 4.
    pub fn bits(self) -> u32 {
        match self {
            GgmlFormat::Q8_0 => 8,
            GgmlFormat::Q5_0 => 5,
            GgmlFormat::Q4_0 | GgmlFormat::Q4_1 | GgmlFormat::Q4_K => 4,
        }
    }

    /// Whether each 32-weight (sub-)block has an offset beside its step (`Q4_1`'s `m`, `Q4_K`'s
    /// `−dmin·m_j`).
    pub fn has_min(self) -> bool {
        matches!(self, GgmlFormat::Q4_1 | GgmlFormat::Q4_K)
    }

    /// Weights per block as the file stores it: 32, or 256 for `Q4_K`'s super-blocks. Rows must split
    /// into whole blocks.
    pub fn block(self) -> usize {
        match self {
            GgmlFormat::Q4_K => kquant::SUPER,
            _ => BLOCK,
        }
    }

    /// ggml's type id (`ggml_type` in ggml.h).
    pub fn type_id(self) -> u32 {
        match self {
            GgmlFormat::Q8_0 => 8,
            GgmlFormat::Q4_0 => 2,
            GgmlFormat::Q4_1 => 3,
            GgmlFormat::Q5_0 => 6,
            GgmlFormat::Q4_K => 12,
        }
    }

    /// Bytes per block ([`GgmlFormat::block`] weights) in a GGUF file: the float16 `d` (and `m`), `Q5_0`'s
    /// 32 high bits, `Q4_K`'s `d`, `dmin` and 12 bytes of 6-bit scales, then the codes.
    pub fn block_bytes(self) -> usize {
        let header = match self {
            GgmlFormat::Q8_0 | GgmlFormat::Q4_0 => 2,
            GgmlFormat::Q4_1 => 4,
            GgmlFormat::Q5_0 => 2 + 4,
            GgmlFormat::Q4_K => 2 + 2 + 12,
        };
        let code_bits = if self == GgmlFormat::Q5_0 {
            4
        } else {
            self.bits() as usize
        };
        header + self.block() * code_bits / 8
    }

    /// Bits per weight, the block's scales included: 8.5, 4.5, 5, 5.5 and 4.5.
    pub fn bits_per_weight(self) -> f64 {
        (self.block_bytes() * 8) as f64 / self.block() as f64
    }

    /// The largest code (`Q8_0`: the largest `|q|`).
    fn max_code(self) -> f32 {
        match self {
            GgmlFormat::Q8_0 => 127.0,
            GgmlFormat::Q5_0 => 31.0,
            GgmlFormat::Q4_0 | GgmlFormat::Q4_1 | GgmlFormat::Q4_K => 15.0,
        }
    }
}

impl std::fmt::Display for GgmlFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors unless rows of `n` weights split into whole blocks of `format`.
pub fn check_width(format: GgmlFormat, n: usize) -> Result<()> {
    let block = format.block();
    if n > 0 && n.is_multiple_of(block) {
        Ok(())
    } else {
        Err(CoreError::UnsupportedDimension {
            what: format!("llama.cpp {format} grid (input width)"),
            dim: n,
            why: format!("rows split into {format} blocks of {block} weights"),
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

/// One 32-weight block's grid as llama.cpp's reference quantizer fixes it: `(d, min)` in f32 before the
/// float16 rounding (`min` is 0 but for `Q4_1`). `Q4_K`'s scales come per super-block from
/// [`kquant::q4_k_scales`]; asked here it answers `Q4_1`'s.
pub fn reference_scale(format: GgmlFormat, block: &[f32]) -> (f32, f32) {
    match format {
        GgmlFormat::Q8_0 => {
            let amax = block.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            (amax / 127.0, 0.0)
        }
        GgmlFormat::Q4_0 | GgmlFormat::Q5_0 => {
            // The signed value of the largest magnitude, the first one on a tie (a strict `<`).
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in block {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let half = if format == GgmlFormat::Q4_0 {
                -8.0
            } else {
                -16.0
            };
            (max / half, 0.0)
        }
        GgmlFormat::Q4_1 | GgmlFormat::Q4_K => {
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

/// `Q4_K`'s stored scales of an `m × n` matrix, as f32 matrices: the float16 `d` and `dmin` per
/// super-block (`m × n/256`) and the 6-bit `sc_j`, `m_j` per sub-block (`m × n/32`, integers 0..=63).
#[derive(Clone, Debug, PartialEq)]
pub struct KScales {
    pub d: Mat<f32>,
    pub dmin: Mat<f32>,
    pub sc: Mat<f32>,
    pub m: Mat<f32>,
}

/// The block grids of one `m × n` matrix: per row and block of 32 columns (`Q4_K`: sub-block), the
/// stored step and offset that the levels use, and the f32 `id = 1/d` and `min` that llama.cpp's rule
/// decides codes with.
#[derive(Clone, Debug, PartialEq)]
pub struct GgmlBlocks {
    format: GgmlFormat,
    /// `m × n/32`: the step of each block, `d16` (`Q4_K`: `f16(d)·sc_j` in f32).
    scales: Mat<f32>,
    /// `m × n/32`: the offset added to `step·c`, `m16` (`Q4_1`) or `−f16(dmin)·m_j` (`Q4_K`); zeros
    /// otherwise.
    mins: Mat<f32>,
    /// `m × n/32`: `1/d` from the unrounded `d` (0 where `d` is 0; unused by `Q4_K`).
    inv: Mat<f32>,
    /// `m × n/32`: the unrounded `min` (`Q4_1`; `Q4_K`: the stored offset; zeros otherwise).
    lo: Mat<f32>,
    /// `Q4_K`'s stored scales, from which `scales` and `mins` derive.
    k: Option<Box<KScales>>,
}

/// The error of a grid value beyond float16's range.
fn beyond_f16(format: GgmlFormat, what: String, r: usize, b: usize, cols: usize) -> CoreError {
    CoreError::InvalidParameter {
        name: "block scale",
        value: what,
        why: format!(
            "row {r}, block {b} (columns {}..{}): beyond float16's range, which {format} stores its \
             scales in",
            b * cols,
            (b + 1) * cols,
        ),
    }
}

impl GgmlBlocks {
    /// The grids of `w`, every block's fixed as [`reference_scale`] (`Q4_K`: [`kquant::q4_k_scales`])
    /// does and stored as float16.
    ///
    /// **Errors**: a width that is not a multiple of the format's block, an empty or non-finite `w`, a
    /// scale or minimum beyond float16's range (|x| > 65504; named with its row and block).
    pub fn fit(w: &Mat<f32>, format: GgmlFormat) -> Result<Self> {
        let (m, n) = w.shape();
        check_width(format, n)?;
        if m == 0 {
            return Err(CoreError::shape(
                "GgmlBlocks::fit W",
                "a non-empty matrix",
                "0 rows",
            ));
        }
        check_finite("GgmlBlocks::fit W", &w.data)?;
        if format == GgmlFormat::Q4_K {
            return Self::fit_k(w);
        }
        let nb = n / BLOCK;
        let mut out = Self {
            format,
            scales: Mat::zeros(m, nb),
            mins: Mat::zeros(m, nb),
            inv: Mat::zeros(m, nb),
            lo: Mat::zeros(m, nb),
            k: None,
        };
        for r in 0..m {
            for (b, block) in w.row(r).chunks_exact(BLOCK).enumerate() {
                let (d, min) = reference_scale(format, block);
                let (d16, m16) = (to_f16(d), to_f16(min));
                if !d16.is_finite() || !m16.is_finite() {
                    return Err(beyond_f16(
                        format,
                        format!("d = {d:e}, min = {min:e}"),
                        r,
                        b,
                        BLOCK,
                    ));
                }
                *out.scales.at_mut(r, b) = d16;
                *out.mins.at_mut(r, b) = m16;
                *out.inv.at_mut(r, b) = if d != 0.0 { 1.0 / d } else { 0.0 };
                *out.lo.at_mut(r, b) = min;
            }
        }
        Ok(out)
    }

    /// [`GgmlBlocks::fit`] for `Q4_K`.
    fn fit_k(w: &Mat<f32>) -> Result<Self> {
        let (m, n) = w.shape();
        let ns = n / kquant::SUPER;
        let mut k = KScales {
            d: Mat::zeros(m, ns),
            dmin: Mat::zeros(m, ns),
            sc: Mat::zeros(m, ns * 8),
            m: Mat::zeros(m, ns * 8),
        };
        for r in 0..m {
            for (s, sup) in w.row(r).chunks_exact(kquant::SUPER).enumerate() {
                let q = kquant::q4_k_scales(sup);
                if !q.d.is_finite() || !q.dmin.is_finite() {
                    return Err(beyond_f16(
                        GgmlFormat::Q4_K,
                        format!("d = {:e}, dmin = {:e}", q.d, q.dmin),
                        r,
                        s,
                        kquant::SUPER,
                    ));
                }
                *k.d.at_mut(r, s) = q.d;
                *k.dmin.at_mut(r, s) = q.dmin;
                for j in 0..8 {
                    *k.sc.at_mut(r, 8 * s + j) = q.sc[j] as f32;
                    *k.m.at_mut(r, 8 * s + j) = q.m[j] as f32;
                }
            }
        }
        Ok(Self::from_k(k))
    }

    /// The grids of `Q4_K` scales: step `d·sc_j` and offset `−dmin·m_j` per sub-block, in f32 as
    /// llama.cpp's `dequantize_row_q4_K` computes them.
    fn from_k(k: KScales) -> Self {
        let (m, nsub) = k.sc.shape();
        let mut out = Self {
            format: GgmlFormat::Q4_K,
            scales: Mat::zeros(m, nsub),
            mins: Mat::zeros(m, nsub),
            inv: Mat::zeros(m, nsub),
            lo: Mat::zeros(m, nsub),
            k: None,
        };
        for r in 0..m {
            for b in 0..nsub {
                let s = b / 8;
                let step = k.d.at(r, s) * k.sc.at(r, b);
                let offset = -(k.dmin.at(r, s) * k.m.at(r, b));
                *out.scales.at_mut(r, b) = step;
                *out.mins.at_mut(r, b) = offset;
                *out.lo.at_mut(r, b) = offset;
            }
        }
        out.k = Some(Box::new(k));
        out
    }

    /// The names of the tensors a quantized file stores `format`'s grids in, with the number of
    /// weights per entry along a row: `scales` (and `mins`) per block of 32; for `Q4_K` `scales` (`d`) and
    /// `mins` (`dmin`) per 256 and `sub_scales`, `sub_mins` per 32.
    pub fn stored_names(format: GgmlFormat) -> &'static [(&'static str, usize)] {
        match format {
            GgmlFormat::Q8_0 | GgmlFormat::Q4_0 | GgmlFormat::Q5_0 => &[("scales", BLOCK)],
            GgmlFormat::Q4_1 => &[("scales", BLOCK), ("mins", BLOCK)],
            GgmlFormat::Q4_K => &[
                ("scales", kquant::SUPER),
                ("mins", kquant::SUPER),
                ("sub_scales", BLOCK),
                ("sub_mins", BLOCK),
            ],
        }
    }

    /// The grids as a quantized file stores them, in the order of [`GgmlBlocks::stored_names`].
    pub fn stored(&self) -> Vec<&Mat<f32>> {
        match (&self.k, self.format.has_min()) {
            (Some(k), _) => vec![&k.d, &k.dmin, &k.sc, &k.m],
            (None, true) => vec![&self.scales, &self.mins],
            (None, false) => vec![&self.scales],
        }
    }

    /// Wraps stored grids read from a file, `parts` in the order and shapes of
    /// [`GgmlBlocks::stored_names`] for an `m × n` matrix. Codes are then decided against the stored
    /// values themselves.
    ///
    /// **Errors** ([`CoreError::InvalidParameter`] whose `name` is the tensor's, with the row and block):
    /// a shape that does not match, the wrong number of parts, a value that is not a finite float16, a
    /// negative scale of `Q8_0`, `Q4_1` or `Q4_K` (their reference quantizers make `d ≥ 0`), a negative
    /// `Q4_K` `dmin`, a `Q4_K` sub-scale or sub-minimum that is not an integer in 0..=63.
    pub fn from_stored(
        format: GgmlFormat,
        m: usize,
        n: usize,
        parts: Vec<Mat<f32>>,
    ) -> Result<Self> {
        check_width(format, n)?;
        let names = Self::stored_names(format);
        if parts.len() != names.len() {
            return Err(CoreError::InvalidParameter {
                name: "parts",
                value: format!("{} tensors", parts.len()),
                why: format!("{format} stores {}", names.len()),
            });
        }
        for (&(name, per), part) in names.iter().zip(&parts) {
            let nb = n / per;
            part.expect_shape(name, m, nb)?;
            let bad = |i: usize, v: f32, why: &str| CoreError::InvalidParameter {
                name,
                value: v.to_string(),
                why: format!("row {}, block {}: {why}", i / nb, i % nb),
            };
            let sub = name.starts_with("sub_");
            // Q4_0's and Q5_0's `d` carries the sign of the block's largest value, Q4_1's `m` is its
            // minimum; every other stored scale is ≥ 0.
            let may_be_negative = (name == "scales"
                && matches!(format, GgmlFormat::Q4_0 | GgmlFormat::Q5_0))
                || (name == "mins" && format == GgmlFormat::Q4_1);
            for (i, &v) in part.data.iter().enumerate() {
                if sub {
                    if !(0.0..=63.0).contains(&v) || v.fract() != 0.0 {
                        return Err(bad(i, v, "not a 6-bit integer (0..=63)"));
                    }
                } else if !is_f16(v) {
                    return Err(bad(i, v, "not a finite float16 value"));
                } else if v < 0.0 && !may_be_negative {
                    return Err(bad(i, v, &format!("negative, which no {format} block has")));
                }
            }
        }
        let mut parts = parts.into_iter();
        let mut next = || parts.next().expect("counted above");
        if format == GgmlFormat::Q4_K {
            let k = KScales {
                d: next(),
                dmin: next(),
                sc: next(),
                m: next(),
            };
            return Ok(Self::from_k(k));
        }
        let scales = next();
        let mins = if format.has_min() {
            next()
        } else {
            Mat::zeros(m, n / BLOCK)
        };
        let inv = Mat {
            rows: m,
            cols: n / BLOCK,
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
            k: None,
        })
    }

    pub fn format(&self) -> GgmlFormat {
        self.format
    }

    /// The step of every 32-weight (sub-)block, `m × n/32`: the stored `d16` (`Q4_K`: `f16(d)·sc_j`).
    pub fn scales(&self) -> &Mat<f32> {
        &self.scales
    }

    /// The offset of every 32-weight (sub-)block, `m × n/32`: `Q4_1`'s `m16`, `Q4_K`'s `−f16(dmin)·m_j`
    /// (`None` for the formats without).
    pub fn mins(&self) -> Option<&Mat<f32>> {
        self.format.has_min().then_some(&self.mins)
    }

    /// `Q4_K`'s stored scales (`None` for the other formats).
    pub fn k_scales(&self) -> Option<&KScales> {
        self.k.as_deref()
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
            GgmlFormat::Q5_0 => (x * id + 16.5).floor().clamp(0.0, max) as u16,
            GgmlFormat::Q4_1 => ((x - self.lo.at(r, b)) * id + 0.5).floor().clamp(0.0, max) as u16,
            GgmlFormat::Q4_K => {
                let d = self.scales.at(r, b);
                if d == 0.0 {
                    // Every code decodes to the offset.
                    return 0;
                }
                kquant::nearest_int((x - self.lo.at(r, b)) / d).clamp(0, max as i32) as u16
            }
        }
    }

    /// The level of `code` at weight `(r, c)`, computed as llama.cpp's `dequantize_row_*` does.
    pub fn level(&self, r: usize, c: usize, code: u16) -> f32 {
        let b = c / BLOCK;
        let d = self.scales.at(r, b);
        match self.format {
            GgmlFormat::Q8_0 => d * (code as u8 as i8) as f32,
            GgmlFormat::Q4_0 => (code as i32 - 8) as f32 * d,
            GgmlFormat::Q5_0 => (code as i32 - 16) as f32 * d,
            // Q4_K: `d1·c − m1`, the same f32 as `d1·c + (−m1)`.
            GgmlFormat::Q4_1 | GgmlFormat::Q4_K => code as f32 * d + self.mins.at(r, b),
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
            GgmlFormat::Q5_0 => (-16.0 * d, 15.0 * d),
            GgmlFormat::Q4_1 | GgmlFormat::Q4_K => {
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
            GgmlFormat::Q5_0 => {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in x {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let qs = x
                    .iter()
                    .map(|&v| ((v * id + 16.5) as i8).min(31) as u8)
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
            GgmlFormat::Q4_K => unreachable!("per super-block: tests/ggml_reference.rs"),
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
        // Q4_K against llama.cpp's own bytes: yaqa-model's tests/ggml_reference.rs.
        for format in GgmlFormat::ALL
            .into_iter()
            .filter(|&f| f != GgmlFormat::Q4_K)
        {
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
                                GgmlFormat::Q5_0 => (qs[j] as i32 - 16) as f32 * d16,
                                GgmlFormat::Q4_1 => {
                                    qs[j] as f32 * d16 + f16::from_bits(mn).to_f32()
                                }
                                GgmlFormat::Q4_K => unreachable!(),
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
        let w = Mat::from_fn(1, 256, |_, j| ((j % 32) as f32 - 16.0) * 0.01);
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
        let (m, n) = (2, 512);
        for format in GgmlFormat::ALL {
            let names = GgmlBlocks::stored_names(format);
            let ok: Vec<Mat<f32>> = names
                .iter()
                .map(|&(_, per)| Mat::from_fn(m, n / per, |i, j| ((i + j) % 7) as f32 + 1.0))
                .collect();
            let q = GgmlBlocks::from_stored(format, m, n, ok.clone()).unwrap();
            assert_eq!(q.stored(), ok.iter().collect::<Vec<_>>(), "{format}");
            for (p, &(name, _)) in names.iter().enumerate() {
                let with = |v: f32| {
                    let mut parts = ok.clone();
                    *parts[p].at_mut(1, 1) = v;
                    GgmlBlocks::from_stored(format, m, n, parts)
                };
                // Not a float16 value, or not a 6-bit integer.
                let e = with(0.1).unwrap_err();
                assert!(
                    e.to_string().contains("row 1, block 1"),
                    "{format} {name}: {e}"
                );
                assert!(matches!(e, CoreError::InvalidParameter { name: n, .. } if n == name));
                assert!(with(f32::INFINITY).is_err(), "{format} {name}");
                let negative_ok = matches!(
                    (format, name),
                    (GgmlFormat::Q4_0 | GgmlFormat::Q5_0, "scales") | (GgmlFormat::Q4_1, "mins")
                );
                assert_eq!(with(-0.5).is_ok(), negative_ok, "{format} {name}");
                if name.starts_with("sub_") {
                    assert!(with(64.0).is_err() && with(63.0).is_ok(), "{format} {name}");
                }
            }
            assert!(GgmlBlocks::from_stored(format, m, n + 32 * 8, ok.clone()).is_err());
            let mut fewer = ok.clone();
            fewer.pop();
            let mut more = ok.clone();
            more.push(ok[0].clone());
            assert!(GgmlBlocks::from_stored(format, m, n, fewer).is_err());
            assert!(GgmlBlocks::from_stored(format, m, n, more).is_err());
        }
        let huge = Mat::from_fn(1, 256, |_, j| if j == 0 { 1e9 } else { 0.0 });
        for format in [GgmlFormat::Q8_0, GgmlFormat::Q4_K] {
            let e = GgmlBlocks::fit(&huge, format).unwrap_err();
            assert!(e.to_string().contains("row 0, block 0"), "{e}");
        }
        assert!(GgmlBlocks::fit(&Mat::zeros(2, 48), GgmlFormat::Q4_0).is_err());
        assert!(GgmlBlocks::fit(&Mat::zeros(2, 576), GgmlFormat::Q4_K).is_err());
        assert!(GgmlBlocks::fit(&Mat::zeros(2, 576), GgmlFormat::Q5_0).is_ok());
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
                ("q4_1", 3, 20, 5.0),
                ("q5_0", 6, 22, 5.5),
                ("q4_k", 12, 144, 4.5)
            ]
        );
        assert_eq!(GgmlFormat::parse("q4_1"), Some(GgmlFormat::Q4_1));
        assert_eq!(GgmlFormat::parse("q4_k"), Some(GgmlFormat::Q4_K));
        assert_eq!(GgmlFormat::parse("q4_K"), None);
    }
}
