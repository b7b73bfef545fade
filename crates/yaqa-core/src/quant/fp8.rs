//! FP8 E4M3 (the OCP 8-bit floating point format, "E4M3FN": 1 sign, 4 exponent bits with bias 7, 3
//! mantissa bits, subnormals, no infinities, only `S.1111.111` is NaN, largest finite value 448) and
//! the block-scaled quantizer DeepSeek-style checkpoints use (DESIGN.md §9): one f32 scale per 128 × 128
//! block of the weight (or per row, or per tensor), `Ŵ = s · e4m3(W / s)`.
//!
//! Encoding rounds to nearest with ties to even and saturates finite values beyond ±448 to ±448 (the
//! convention of PyTorch's `to(torch.float8_e4m3fn)` after clamping, which is what quantizers do). The
//! scale of a block is its absolute maximum / 448 (AbsMax) times a multiplier `r` a search may choose
//! (DAQ searches `r ∈ [0.8, 1.5]`), so with `r = 1` the block's largest entry lands exactly on 448.

use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::rng::Rng;

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The side of DeepSeek's square scale blocks.
pub const FP8_BLOCK: usize = 128;

/// The value of E4M3 byte `b` (`NaN` for `0x7F` and `0xFF`).
pub fn e4m3_decode(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let mant = (b & 0x07) as f32;
    if exp == 0x0F && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        // Subnormal: 0.mmm × 2^(1 − 7).
        mant / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mant / 8.0) * 2f32.powi(exp - 7)
    };
    sign * mag
}

/// The E4M3 byte nearest to `x` (ties to even), saturating beyond ±448; `NaN` encodes as `0x7F`.
///
/// Normal results come from `x`'s f32 bits: rounding away the low 20 of the 23 mantissa bits (ties to
/// even) leaves the f32 exponent and 3 mantissa bits, and rebiasing the exponent from 127 to 7 is a
/// subtraction; a carry out of the mantissa moves to the next binade by itself. Below 2⁻⁶ the values
/// are the multiples of 2⁻⁹.
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    let mag = if a < 2f32.powi(-6) {
        // Subnormal (or zero, or the smallest normal 2⁻⁶ = 8 · 2⁻⁹ when it rounds up).
        (a * 512.0).round_ties_even() as u8
    } else {
        let bits = a.to_bits();
        let rounded = (bits + 0x7_FFFF + ((bits >> 20) & 1)) >> 20;
        // f32 exponent bias 127, E4M3's 7: 120 binades apart, 3 mantissa bits each.
        (rounded - (120 << 3)) as u8
    };
    sign | mag
}

/// How many weights share one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fp8Scaling {
    /// One scale per 128 × 128 block (edge blocks smaller).
    Block,
    /// One scale per row.
    Row,
    /// One scale for the whole matrix.
    Tensor,
}

impl Fp8Scaling {
    pub fn name(self) -> &'static str {
        match self {
            Fp8Scaling::Block => "b128",
            Fp8Scaling::Row => "row",
            Fp8Scaling::Tensor => "tensor",
        }
    }

    /// The scaling named `name` ([`Fp8Scaling::name`]); `None` for any other.
    pub fn parse(name: &str) -> Option<Self> {
        [Fp8Scaling::Block, Fp8Scaling::Row, Fp8Scaling::Tensor]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// The shape of the scale grid of an `m × n` matrix: `(rows, cols)` of scales.
    pub fn scale_shape(self, m: usize, n: usize) -> (usize, usize) {
        self.grid(m, n).0
    }

    /// The scale grid of an `m × n` matrix: `(rows, cols)` of scales and the `(rows, cols)` of weights
    /// each covers.
    fn grid(self, m: usize, n: usize) -> ((usize, usize), (usize, usize)) {
        match self {
            Fp8Scaling::Block => (
                (m.div_ceil(FP8_BLOCK), n.div_ceil(FP8_BLOCK)),
                (FP8_BLOCK, FP8_BLOCK),
            ),
            Fp8Scaling::Row => ((m, 1), (1, n.max(1))),
            Fp8Scaling::Tensor => ((1, 1), (m.max(1), n.max(1))),
        }
    }
}

/// FP8 E4M3 with f32 scales per block, row or tensor, fitted to one matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8 {
    scaling: Fp8Scaling,
    /// Weights covered by one scale: `(rows, cols)`.
    cover: (usize, usize),
    scales: Mat<f32>,
}

impl Fp8 {
    /// AbsMax scales for `w`: each block's largest `|w|` / 448 (1 for an all-zero block, whose codes are
    /// 0 anyway).
    ///
    /// **Errors**: an empty or non-finite `w`.
    pub fn fit(w: &Mat<f32>, scaling: Fp8Scaling) -> Result<Self> {
        let (m, n) = w.shape();
        if m == 0 || n == 0 {
            return Err(CoreError::shape(
                "Fp8::fit W",
                "a non-empty matrix",
                "0 entries",
            ));
        }
        check_finite("Fp8::fit W", &w.data)?;
        let ((sr, sc), cover) = scaling.grid(m, n);
        let mut amax: Mat<f32> = Mat::zeros(sr, sc);
        for r in 0..m {
            for (c, &v) in w.row(r).iter().enumerate() {
                let slot = amax.at_mut(r / cover.0, c / cover.1);
                *slot = slot.max(v.abs());
            }
        }
        let scales = Mat {
            rows: sr,
            cols: sc,
            data: amax
                .data
                .iter()
                .map(|&a| if a > 0.0 { a / E4M3_MAX } else { 1.0 })
                .collect(),
        };
        Ok(Self {
            scaling,
            cover,
            scales,
        })
    }

    /// Wraps scales read from a file.
    ///
    /// **Errors**: a scale grid that does not match an `m × n` matrix, or a scale that is not finite and
    /// positive.
    pub fn from_parts(scaling: Fp8Scaling, m: usize, n: usize, scales: Mat<f32>) -> Result<Self> {
        let ((sr, sc), cover) = scaling.grid(m, n);
        scales.expect_shape("Fp8 scales", sr, sc)?;
        check_finite("Fp8 scales", &scales.data)?;
        if let Some(&bad) = scales.data.iter().find(|&&s| s <= 0.0) {
            return Err(CoreError::InvalidParameter {
                name: "scales",
                value: bad.to_string(),
                why: "an FP8 scale must be finite and positive".into(),
            });
        }
        Ok(Self {
            scaling,
            cover,
            scales,
        })
    }

    /// Multiplies scale `(i, j)` by `r` (a searched multiplier).
    pub fn scale_by(&mut self, i: usize, j: usize, r: f32) {
        *self.scales.at_mut(i, j) *= r;
    }

    pub fn scaling(&self) -> Fp8Scaling {
        self.scaling
    }

    pub fn scales(&self) -> &Mat<f32> {
        &self.scales
    }

    /// The scale of weight `(r, c)`.
    pub fn scale_at(&self, r: usize, c: usize) -> f32 {
        self.scales.at(r / self.cover.0, c / self.cover.1)
    }

    /// The reconstruction of `code` at weight `(r, c)`.
    pub fn level(&self, r: usize, c: usize, code: u16) -> f32 {
        self.scale_at(r, c) * e4m3_decode(code as u8)
    }
}

impl TileQuantizer for Fp8 {
    fn name(&self) -> String {
        format!("fp8-e4m3-{}", self.scaling.name())
    }

    fn bits_per_weight(&self) -> f64 {
        let per_scale = (self.cover.0 * self.cover.1) as f64;
        8.0 + 32.0 / per_scale
    }

    /// Rounds to nearest (stochastic rounding is not offered for FP8: `dither` is ignored).
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
                let s = self.scale_at(row0 + r, col0 + c);
                let b = e4m3_encode(values[i] / s);
                codes[i] = b as u16;
                values[i] = s * e4m3_decode(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OCP FP8 specification's E4M3 value of every byte, computed independently of
    /// [`e4m3_decode`]: exponent field E, mantissa field M, bias 7; E = 0 subnormal M/8 · 2⁻⁶; E = 15
    /// with M = 7 NaN; otherwise 2^(E−7) · (1 + M/8).
    fn spec_value(b: u8) -> f64 {
        let s = if b >= 128 { -1.0 } else { 1.0 };
        let e = (b % 128) / 8;
        let m = b % 8;
        match (e, m) {
            (15, 7) => f64::NAN,
            (0, m) => s * (m as f64 / 8.0) / 64.0,
            (e, m) => s * (1.0 + m as f64 / 8.0) * 2f64.powi(e as i32 - 7),
        }
    }

    #[test]
    fn every_byte_decodes_to_the_specification_value_and_encodes_back() {
        for b in 0..=255u8 {
            let want = spec_value(b);
            let got = e4m3_decode(b);
            if want.is_nan() {
                assert!(got.is_nan(), "{b:#04x}");
                assert_eq!(e4m3_encode(got) & 0x7F, 0x7F);
                continue;
            }
            assert_eq!(got as f64, want, "{b:#04x}");
            assert_eq!(e4m3_encode(got), b, "{b:#04x} = {got}");
        }
        assert_eq!(e4m3_decode(0x7E), 448.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9), "the smallest subnormal");
        assert_eq!(e4m3_decode(0x08), 2f32.powi(-6), "the smallest normal");
    }

    /// The 128 non-negative E4M3 values, 8 per line (one exponent field per line), as a reviewed
    /// snapshot: any change to the codebook is a diff.
    #[test]
    fn e4m3_table_snapshot() {
        let mut table = String::new();
        for e in 0..16u8 {
            let line: Vec<String> = (0..8u8)
                .map(|m| format!("{:>12}", format!("{}", e4m3_decode(e << 3 | m))))
                .collect();
            table.push_str(&format!("E={e:>2}:{}\n", line.join("")));
        }
        insta::assert_snapshot!("e4m3_values", table);
    }

    #[test]
    fn encoding_rounds_to_nearest_with_ties_to_even_and_saturates() {
        // Every midpoint between neighbouring finite positive values goes to the even code.
        let finite: Vec<u8> = (0..=0x7Eu8).collect();
        for w in finite.windows(2) {
            let (a, b) = (e4m3_decode(w[0]), e4m3_decode(w[1]));
            let mid = (a + b) / 2.0;
            let even = if w[0] % 2 == 0 { w[0] } else { w[1] };
            assert_eq!(e4m3_encode(mid), even, "midpoint of {a} and {b}");
            assert_eq!(e4m3_encode(-mid), even | 0x80);
            // Just off the midpoint, the nearer one.
            assert_eq!(e4m3_encode(mid - (b - a) * 0.01), w[0]);
            assert_eq!(e4m3_encode(mid + (b - a) * 0.01), w[1]);
        }
        assert_eq!(e4m3_encode(1000.0), 0x7E);
        assert_eq!(e4m3_encode(-1e30), 0xFE);
        assert_eq!(e4m3_encode(f32::INFINITY), 0x7E);
        assert_eq!(e4m3_encode(1e-10), 0x00);
        assert_eq!(e4m3_encode(-0.0), 0x80);
    }

    #[test]
    fn block_scales_put_each_block_maximum_on_448() {
        let (m, n) = (200, 300);
        let mut rng = Rng::new(3);
        let w = Mat {
            rows: m,
            cols: n,
            data: (0..m * n).map(|_| rng.normal() as f32 * 0.02).collect(),
        };
        for scaling in [Fp8Scaling::Block, Fp8Scaling::Row, Fp8Scaling::Tensor] {
            let q = Fp8::fit(&w, scaling).unwrap();
            let mut values = w.data.clone();
            let mut codes = vec![0u16; m * n];
            q.quantize_tile(0, 0, m, n, &mut values, &mut codes, None);
            let mut worst = 0.0f64;
            for r in 0..m {
                for c in 0..n {
                    let i = r * n + c;
                    assert_eq!(values[i], q.level(r, c, codes[i]));
                    assert!(codes[i] & 0x7F != 0x7F, "no NaN codes");
                    let rel = ((values[i] - w.data[i]).abs() / q.scale_at(r, c)) as f64;
                    worst = worst.max(rel / e4m3_decode(codes[i] as u8).abs().max(1.0) as f64);
                }
            }
            // Relative error of E4M3 is at most half an ulp: 2⁻⁴ of the value (in scale units).
            assert!(worst <= 1.0 / 16.0 + 1e-6, "{scaling:?}: {worst}");
            let max_code = codes
                .iter()
                .map(|&c| e4m3_decode(c as u8).abs())
                .fold(0.0, f32::max);
            assert_eq!(max_code, 448.0, "{scaling:?}");
        }
        let b = Fp8::fit(&w, Fp8Scaling::Block).unwrap();
        assert_eq!(b.scales().shape(), (2, 3));
        assert!((b.bits_per_weight() - (8.0 + 32.0 / 16384.0)).abs() < 1e-12);
        assert_eq!(b.name(), "fp8-e4m3-b128");
        assert!(Fp8::from_parts(Fp8Scaling::Block, m, n, Mat::zeros(2, 3)).is_err());
        assert!(Fp8::from_parts(Fp8Scaling::Block, m, n, b.scales().clone()).is_ok());
    }
}
