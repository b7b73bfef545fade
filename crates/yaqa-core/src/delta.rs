//! Delta metrics (DESIGN.md §9, DAQ): how much of a fine-tune's weight delta `ΔW = W_post − W_base`
//! survives quantization, measured on `ΔŴ = Ŵ − W_base`.
//!
//! - Sign preservation: over the entries with `|ΔW| > 1e-5`, the fraction whose `ΔŴ` has the same sign;
//!   a `ΔŴ` of exactly zero counts as lost.
//! - Cosine similarity of `ΔW` and `ΔŴ` per 128 × 128 block (edge blocks smaller) and per row, averaged
//!   over the blocks and rows where `ΔW ≠ 0`; where `ΔŴ = 0` the cosine is 0.
//!
//! Sums in f64. A layer's [`DeltaStats`] are sums, so layers pool into the model's figures by adding.

use crate::mat::Mat;

/// Entries with `|ΔW|` at or below this are not counted by sign preservation (DAQ's threshold).
pub const SIGN_THRESHOLD: f64 = 1e-5;

/// The side of the square blocks the block cosine is taken over.
pub const BLOCK: usize = 128;

/// Delta metrics of one layer, or of several pooled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeltaStats {
    /// Entries with `|ΔW| > SIGN_THRESHOLD`, and those of them whose sign survived.
    pub counted: u64,
    pub kept: u64,
    /// Sum of the block cosines and how many blocks had `ΔW ≠ 0`.
    pub block_cos_sum: f64,
    pub blocks: u64,
    /// Sum of the row cosines and how many rows had `ΔW ≠ 0`.
    pub row_cos_sum: f64,
    pub rows: u64,
}

impl DeltaStats {
    /// The metrics of one layer: `post` the fine-tuned weight, `base` the base's, `quant` the
    /// dequantized `Ŵ`, all of one shape (the caller checks).
    pub fn of_layer(post: &Mat<f32>, base: &Mat<f32>, quant: &Mat<f32>) -> Self {
        let (rows, cols) = (post.rows, post.cols);
        let mut s = DeltaStats::default();
        let delta = |m: &Mat<f32>, r: usize, c: usize| m.at(r, c) as f64 - base.at(r, c) as f64;
        for r in 0..rows {
            let (mut dot, mut nd, mut nq) = (0.0, 0.0, 0.0);
            for c in 0..cols {
                let (d, q) = (delta(post, r, c), delta(quant, r, c));
                if d.abs() > SIGN_THRESHOLD {
                    s.counted += 1;
                    if q != 0.0 && (q > 0.0) == (d > 0.0) {
                        s.kept += 1;
                    }
                }
                dot += d * q;
                nd += d * d;
                nq += q * q;
            }
            if let Some(c) = cosine(dot, nd, nq) {
                s.row_cos_sum += c;
                s.rows += 1;
            }
        }
        for r0 in (0..rows).step_by(BLOCK) {
            for c0 in (0..cols).step_by(BLOCK) {
                let (mut dot, mut nd, mut nq) = (0.0, 0.0, 0.0);
                for r in r0..(r0 + BLOCK).min(rows) {
                    for c in c0..(c0 + BLOCK).min(cols) {
                        let (d, q) = (delta(post, r, c), delta(quant, r, c));
                        dot += d * q;
                        nd += d * d;
                        nq += q * q;
                    }
                }
                if let Some(c) = cosine(dot, nd, nq) {
                    s.block_cos_sum += c;
                    s.blocks += 1;
                }
            }
        }
        s
    }

    /// Pools `other` into `self`.
    pub fn add(&mut self, other: &DeltaStats) {
        self.counted += other.counted;
        self.kept += other.kept;
        self.block_cos_sum += other.block_cos_sum;
        self.blocks += other.blocks;
        self.row_cos_sum += other.row_cos_sum;
        self.rows += other.rows;
    }

    /// Sign-preservation rate; `None` when no entry passed the threshold.
    pub fn sign_rate(&self) -> Option<f64> {
        (self.counted > 0).then(|| self.kept as f64 / self.counted as f64)
    }

    /// Mean block cosine; `None` when every block's delta is zero.
    pub fn block_cos(&self) -> Option<f64> {
        (self.blocks > 0).then(|| self.block_cos_sum / self.blocks as f64)
    }

    /// Mean row cosine; `None` when every row's delta is zero.
    pub fn row_cos(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.row_cos_sum / self.rows as f64)
    }
}

/// `dot / (‖d‖ ‖q‖)`, 0 when `q = 0`, `None` when `d = 0` (nothing to preserve).
fn cosine(dot: f64, nd: f64, nq: f64) -> Option<f64> {
    if nd == 0.0 {
        None
    } else if nq == 0.0 {
        Some(0.0)
    } else {
        Some(dot / (nd.sqrt() * nq.sqrt()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> Mat<f32> {
        let mut m = Mat::zeros(rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                *m.at_mut(r, c) = f(r, c);
            }
        }
        m
    }

    #[test]
    fn a_delta_kept_exactly_scores_one_and_a_lost_one_zero() {
        let base = mat(3, 200, |r, c| (r as f32 - c as f32) * 0.01);
        let post = mat(3, 200, |r, c| {
            base.at(r, c) + if (r + c) % 3 == 0 { 0.02 } else { -0.01 }
        });
        let same = DeltaStats::of_layer(&post, &base, &post);
        assert_eq!(same.sign_rate(), Some(1.0));
        assert!((same.block_cos().unwrap() - 1.0).abs() < 1e-12);
        assert!((same.row_cos().unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(
            same.blocks, 2,
            "200 columns: one full block of 128 and one of 72"
        );
        assert_eq!(same.rows, 3);
        // Quantizing back to the base loses every sign (zero deltas count as lost) and every cosine.
        let lost = DeltaStats::of_layer(&post, &base, &base);
        assert_eq!(lost.sign_rate(), Some(0.0));
        assert_eq!(lost.block_cos(), Some(0.0));
        // A flipped delta: signs all lost, cosine −1.
        let flipped = mat(3, 200, |r, c| 2.0 * base.at(r, c) - post.at(r, c));
        let f = DeltaStats::of_layer(&post, &base, &flipped);
        assert_eq!(f.sign_rate(), Some(0.0));
        assert!((f.row_cos().unwrap() + 1.0).abs() < 1e-6);
    }

    #[test]
    fn sign_preservation_counts_only_deltas_above_the_threshold_and_pools_by_adding() {
        let base = mat(1, 4, |_, _| 1.0);
        // Entries: a real positive delta, a sub-threshold one, a real negative one, none.
        let post = mat(1, 4, |_, c| 1.0 + [1e-3, 1e-6, -1e-3, 0.0][c]);
        // Ŵ keeps the first sign, flips the third.
        let quant = mat(1, 4, |_, c| 1.0 + [5e-4, -1e-3, 2e-3, 0.0][c]);
        let s = DeltaStats::of_layer(&post, &base, &quant);
        assert_eq!((s.counted, s.kept), (2, 1));
        let mut pooled = s;
        pooled.add(&DeltaStats::of_layer(&post, &base, &post));
        assert_eq!((pooled.counted, pooled.kept), (4, 3));
        assert_eq!(pooled.sign_rate(), Some(0.75));
        // No delta at all: nothing to measure.
        let none = DeltaStats::of_layer(&base, &base, &quant);
        assert_eq!(
            (none.sign_rate(), none.block_cos(), none.row_cos()),
            (None, None, None)
        );
    }
}
