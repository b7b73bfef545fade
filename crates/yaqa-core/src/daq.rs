//! Delta-aware quantization (DAQ, arXiv 2603.22324; DESIGN.md §9): data-free FP8 quantization of a
//! fine-tuned weight `W_post` that keeps its delta `ΔW = W_post − W_base` from the base.
//!
//! Each scale block starts at its AbsMax scale `s₀ = max|W_post| / 448` and tries `s₀ · r`: first
//! `r ∈ {0.8, 0.9, …, 1.5}`, then steps of 0.01 within ±0.05 of the best (inside [0.8, 1.5]). A
//! candidate is judged on the block's delta after rounding to nearest, `ΔŴ = Ŵ − W_base`
//! ([`crate::delta`]): first its sign-preservation count, then its cosine with `ΔW`, then closeness to
//! `r = 1`. `r = 1` (AbsMax) is always a candidate, so no block ends worse than AbsMax by this order.
//! The paper names the two metrics and the search range; how they are combined into one order is
//! this module's choice, recorded here.

use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::quant::fp8::{E4M3_MAX, Fp8, Fp8Scaling, e4m3_decode, e4m3_encode};

/// The coarse multipliers, in hundredths.
pub const COARSE: [u32; 8] = [80, 90, 100, 110, 120, 130, 140, 150];

/// The fine search: this many hundredths either side of the best coarse multiplier, in steps of one.
pub const FINE_SPAN: u32 = 5;

/// How one block scored at one multiplier.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Score {
    kept: u64,
    cos: f64,
    /// `|r − 1|` in hundredths: smaller wins ties.
    off: u32,
}

impl Score {
    fn better_than(&self, other: &Score) -> bool {
        (self.kept, self.cos, std::cmp::Reverse(self.off))
            .partial_cmp(&(other.kept, other.cos, std::cmp::Reverse(other.off)))
            .is_some_and(|o| o == std::cmp::Ordering::Greater)
    }
}

/// What the search chose, over all blocks of one matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct DaqSearch {
    /// The chosen multiplier of each scale block, in hundredths, in the scale grid's row-major order.
    pub multipliers: Vec<u32>,
    /// Blocks where a multiplier other than 1 won.
    pub moved: usize,
}

/// Fits FP8 scales to `post` by DAQ's search against `base` (module docs).
///
/// **Errors**: shapes that differ, empty or non-finite matrices.
pub fn daq_fp8(post: &Mat<f32>, base: &Mat<f32>, scaling: Fp8Scaling) -> Result<(Fp8, DaqSearch)> {
    base.expect_shape("DAQ base weight", post.rows, post.cols)?;
    check_finite("DAQ base weight", &base.data)?;
    let mut fp8 = Fp8::fit(post, scaling)?;
    let (m, n) = post.shape();
    let (sr, sc) = fp8.scales().shape();
    let (bh, bw) = (m.div_ceil(sr), n.div_ceil(sc));
    let mut multipliers = Vec::with_capacity(sr * sc);
    let mut moved = 0;
    for i in 0..sr {
        for j in 0..sc {
            let rows = i * bh..((i + 1) * bh).min(m);
            let cols = j * bw..((j + 1) * bw).min(n);
            let s0 = fp8.scales().at(i, j);
            let score = |r: u32| -> Score {
                let s = s0 * r as f32 / 100.0;
                let (mut kept, mut dot, mut nd, mut nq) = (0u64, 0.0f64, 0.0f64, 0.0f64);
                for row in rows.clone() {
                    let (p, b) = (post.row(row), base.row(row));
                    for c in cols.clone() {
                        let q = s * e4m3_decode(e4m3_encode(p[c] / s));
                        let d = p[c] as f64 - b[c] as f64;
                        let dq = q as f64 - b[c] as f64;
                        if d.abs() > crate::delta::SIGN_THRESHOLD
                            && dq != 0.0
                            && (dq > 0.0) == (d > 0.0)
                        {
                            kept += 1;
                        }
                        dot += d * dq;
                        nd += d * d;
                        nq += dq * dq;
                    }
                }
                let cos = if nd == 0.0 || nq == 0.0 {
                    0.0
                } else {
                    dot / (nd.sqrt() * nq.sqrt())
                };
                Score {
                    kept,
                    cos,
                    off: r.abs_diff(100),
                }
            };
            let pick = |candidates: &mut dyn Iterator<Item = u32>, best: (u32, Score)| {
                candidates.fold(best, |best, r| {
                    let s = score(r);
                    if s.better_than(&best.1) { (r, s) } else { best }
                })
            };
            let start = (100, score(100));
            let coarse = pick(&mut COARSE.iter().copied().filter(|&r| r != 100), start);
            let (lo, hi) = (
                coarse.0.saturating_sub(FINE_SPAN).max(COARSE[0]),
                (coarse.0 + FINE_SPAN).min(COARSE[COARSE.len() - 1]),
            );
            let (r, _) = pick(&mut (lo..=hi).filter(|&r| r % 10 != 0), coarse);
            if r != 100 {
                fp8.scale_by(i, j, r as f32 / 100.0);
                moved += 1;
            }
            multipliers.push(r);
        }
    }
    if fp8
        .scales()
        .data
        .iter()
        .any(|&s| !(s.is_finite() && s > 0.0))
    {
        return Err(CoreError::InvalidParameter {
            name: "DAQ scale",
            value: "non-positive".into(),
            why: format!("a scale left the range of f32 (weights up to {E4M3_MAX} × scale)"),
        });
    }
    Ok((fp8, DaqSearch { multipliers, moved }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaStats;
    use crate::quant::TileQuantizer;
    use crate::rng::Rng;

    fn quantized(q: &Fp8, w: &Mat<f32>) -> Mat<f32> {
        let mut values = w.data.clone();
        let mut codes = vec![0u16; values.len()];
        q.quantize_tile(0, 0, w.rows, w.cols, &mut values, &mut codes, None);
        Mat {
            rows: w.rows,
            cols: w.cols,
            data: values,
        }
    }

    /// A base with Gaussian weights and a fine-tune that moves every weight by a small delta, small
    /// against FP8's step at the block's largest weights: the regime where AbsMax loses deltas.
    fn pair(m: usize, n: usize, seed: u64) -> (Mat<f32>, Mat<f32>) {
        let mut rng = Rng::new(seed);
        let base: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32 * 0.02).collect();
        let post: Vec<f32> = base
            .iter()
            .map(|&b| b + rng.normal() as f32 * 0.0005)
            .collect();
        let mat = |data| Mat {
            rows: m,
            cols: n,
            data,
        };
        (mat(post), mat(base))
    }

    #[test]
    fn daq_keeps_at_least_as_many_delta_signs_as_absmax_in_every_block() {
        let (post, base) = pair(256, 384, 7);
        let absmax = Fp8::fit(&post, Fp8Scaling::Block).unwrap();
        let (daq, search) = daq_fp8(&post, &base, Fp8Scaling::Block).unwrap();
        assert_eq!(search.multipliers.len(), 2 * 3);
        assert!(search.multipliers.iter().all(|r| (80..=150).contains(r)));
        let (qa, qd) = (quantized(&absmax, &post), quantized(&daq, &post));
        let block = |q: &Mat<f32>, i: usize, j: usize| {
            let sub = |m: &Mat<f32>| Mat {
                rows: 128,
                cols: 128,
                data: (0..128)
                    .flat_map(|r| m.row(i * 128 + r)[j * 128..(j + 1) * 128].to_vec())
                    .collect(),
            };
            DeltaStats::of_layer(&sub(&post), &sub(&base), &sub(q))
        };
        for i in 0..2 {
            for j in 0..3 {
                let (a, d) = (block(&qa, i, j), block(&qd, i, j));
                assert!(
                    d.kept >= a.kept,
                    "block ({i}, {j}): {} < {}",
                    d.kept,
                    a.kept
                );
            }
        }
        let (a, d) = (
            DeltaStats::of_layer(&post, &base, &qa),
            DeltaStats::of_layer(&post, &base, &qd),
        );
        assert!(
            d.sign_rate().unwrap() > a.sign_rate().unwrap(),
            "DAQ {:?} vs AbsMax {:?}",
            d.sign_rate(),
            a.sign_rate()
        );
        // Deterministic.
        assert_eq!(daq_fp8(&post, &base, Fp8Scaling::Block).unwrap().0, daq);
    }

    #[test]
    fn without_a_delta_absmax_stays() {
        let (post, _) = pair(64, 64, 1);
        let (daq, search) = daq_fp8(&post, &post, Fp8Scaling::Tensor).unwrap();
        assert_eq!(search.multipliers, vec![100]);
        assert_eq!(search.moved, 0);
        assert_eq!(daq, Fp8::fit(&post, Fp8Scaling::Tensor).unwrap());
        let wrong = Mat::zeros(64, 63);
        assert!(daq_fp8(&post, &wrong, Fp8Scaling::Tensor).is_err());
    }
}
