//! Delta-aware quantization (DAQ, arXiv 2603.22324; DESIGN.md §9): data-free FP8 quantization of a
//! fine-tuned weight `W_post` that keeps its delta `ΔW = W_post − W_base` from the base.
//!
//! Each scale block starts at its AbsMax scale `s₀ = max|W_post| / 448` and tries `s₀ · r`: first
//! `r ∈ {0.8, 0.9, …, 1.5}`, then steps of 0.01 within ±0.05 of the best (inside [0.8, 1.5]). A
//! candidate is judged on the block's delta after rounding to nearest, `ΔŴ = Ŵ − W_base`
//! ([`crate::delta`]): first its cosine with `ΔW`, then its sign-preservation count, then closeness to
//! `r = 1`. `r = 1` (AbsMax) is always a candidate, so no block ends worse than AbsMax by this order.
//! The paper names the two metrics and the search range; how they are combined into one order is
//! this module's choice. On the SmolLM2 fine-tune pair (docs/BENCHMARKS.md, 2026-12-07) sign first
//! kept 60.46% of signs at delta cosine 0.1378 and KL 0.0266 to the fine-tune; cosine first 60.21%,
//! 0.1445 and KL 0.0222 (AbsMax: 59.91%, 0.1342, KL 0.0114): the cosine, which weighs a delta by its
//! size, also costs the output less.
//!
//! [`DaqParams::no_clip`] searches `r ∈ [1, 1.5]` only. A multiplier below 1 clips the block's
//! largest weights, and on that pair the clipped blocks cost KL without keeping more of the delta:
//! 60.21% of signs, cosine 0.1449, KL 0.0130.

use crate::backend::round_to_nearest;
use crate::error::{CoreError, Result, check_finite};
use crate::layer::{FittedQuantizer, LayerReport, Method, QuantizedLayer};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::quant::fp8::{E4M3_MAX, Fp8, Fp8Scaling, e4m3_decode, e4m3_encode};

/// The coarse multipliers, in hundredths.
pub const COARSE: [u32; 8] = [80, 90, 100, 110, 120, 130, 140, 150];

/// The fine search: this many hundredths either side of the best coarse multiplier, in steps of one.
pub const FINE_SPAN: u32 = 5;

/// How DAQ searches (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaqParams {
    /// Multipliers of at least 1 only: no block's largest weight is clipped.
    pub no_clip: bool,
}

impl DaqParams {
    /// The smallest multiplier tried, in hundredths.
    pub fn lowest(&self) -> u32 {
        if self.no_clip { 100 } else { COARSE[0] }
    }
}

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
        (self.cos, self.kept, std::cmp::Reverse(self.off))
            .partial_cmp(&(other.cos, other.kept, std::cmp::Reverse(other.off)))
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

/// Runs a function over the indices `0..n` and returns its values in order: [`serial`] here, a
/// caller with threads passes a parallel one (the blocks of a search are independent).
pub type MapBlocks<'a> = &'a (dyn Fn(usize, &(dyn Fn(usize) -> u32 + Sync)) -> Vec<u32> + Sync);

/// [`MapBlocks`] on the calling thread.
pub fn serial(n: usize, f: &(dyn Fn(usize) -> u32 + Sync)) -> Vec<u32> {
    (0..n).map(f).collect()
}

/// Fits FP8 scales to `post` by DAQ's search against `base` (module docs), the scale blocks searched
/// through `map`.
///
/// **Errors**: shapes that differ, empty or non-finite matrices.
pub fn daq_fp8(
    post: &Mat<f32>,
    base: &Mat<f32>,
    scaling: Fp8Scaling,
    params: DaqParams,
    map: MapBlocks<'_>,
) -> Result<(Fp8, DaqSearch)> {
    let lowest = params.lowest();
    base.expect_shape("DAQ base weight", post.rows, post.cols)?;
    check_finite("DAQ base weight", &base.data)?;
    let mut fp8 = Fp8::fit(post, scaling)?;
    let (m, n) = post.shape();
    let (sr, sc) = fp8.scales().shape();
    let (bh, bw) = (m.div_ceil(sr), n.div_ceil(sc));
    let absmax = &fp8;
    let search = |k: usize| -> u32 {
        let (i, j) = (k / sc, k % sc);
        let rows = i * bh..((i + 1) * bh).min(m);
        let cols = j * bw..((j + 1) * bw).min(n);
        let s0 = absmax.scales().at(i, j);
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
        let coarse = pick(
            &mut COARSE.iter().copied().filter(|&r| r != 100 && r >= lowest),
            start,
        );
        let (lo, hi) = (
            coarse.0.saturating_sub(FINE_SPAN).max(lowest),
            (coarse.0 + FINE_SPAN).min(COARSE[COARSE.len() - 1]),
        );
        let (r, _) = pick(&mut (lo..=hi).filter(|&r| r % 10 != 0), coarse);
        r
    };
    let multipliers = map(sr * sc, &search);
    if multipliers.len() != sr * sc {
        return Err(CoreError::shape(
            "DAQ multipliers (one per scale block)",
            sr * sc,
            multipliers.len(),
        ));
    }
    let mut moved = 0;
    for (k, &r) in multipliers.iter().enumerate() {
        if r != 100 {
            fp8.scale_by(k / sc, k % sc, r as f32 / 100.0);
            moved += 1;
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

/// One layer by DAQ: FP8 scales searched against `base` ([`daq_fp8`]), then `post` rounded to nearest
/// with them, in the original basis (no rotation: the delta is measured weight by weight). The report's
/// one-sided proxy is the relative weight error `‖W − Ŵ‖²_F / ‖W‖²_F` (`h_in = I`: DAQ uses no
/// calibration data); there is no two-sided proxy, damping or OPTQ bound. Also returns the search.
///
/// **Errors**: those of [`daq_fp8`], naming `name`.
pub fn quantize_layer(
    name: &str,
    post: &Mat<f32>,
    base: &Mat<f32>,
    scaling: Fp8Scaling,
    params: DaqParams,
    map: MapBlocks<'_>,
) -> Result<(QuantizedLayer, DaqSearch)> {
    let inner = || -> Result<(QuantizedLayer, DaqSearch)> {
        check_finite("weights W", &post.data)?;
        let (fp8, search) = daq_fp8(post, base, scaling, params, map)?;
        let rounded = round_to_nearest(post, &fp8);
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for (w, q) in post.data.iter().zip(&rounded.w_hat.data) {
            err += (*w as f64 - *q as f64).powi(2);
            norm += (*w as f64).powi(2);
        }
        let report = LayerReport {
            method: Method::Daq,
            proxy_two_sided: None,
            proxy_one_sided: if norm > 0.0 { err / norm } else { 0.0 },
            damp_in: 0.0,
            damp_out: None,
            scale_c: None,
            bits_per_weight: fp8.bits_per_weight(),
            refine: None,
            optq: None,
        };
        let layer = QuantizedLayer {
            w_hat: rounded.w_hat,
            codes: rounded.codes,
            quantizer: FittedQuantizer::Fp8(fp8),
            signs_in: None,
            signs_out: None,
            pivots: Vec::new(),
            report,
        };
        Ok((layer, search))
    };
    inner().map_err(|e| e.in_layer(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaStats;
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
    fn daq_keeps_the_delta_at_least_as_well_as_absmax_in_every_block() {
        let (post, base) = pair(256, 384, 7);
        let absmax = Fp8::fit(&post, Fp8Scaling::Block).unwrap();
        for params in [DaqParams::default(), DaqParams { no_clip: true }] {
            let (daq, search) = daq_fp8(&post, &base, Fp8Scaling::Block, params, &serial).unwrap();
            assert_eq!(search.multipliers.len(), 2 * 3);
            assert!(
                search
                    .multipliers
                    .iter()
                    .all(|r| (params.lowest()..=150).contains(r)),
                "{params:?}: {:?}",
                search.multipliers
            );
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
            // The search's first criterion, block by block: never below AbsMax.
            for i in 0..2 {
                for j in 0..3 {
                    let (a, d) = (block(&qa, i, j), block(&qd, i, j));
                    let (a, d) = (a.block_cos().unwrap(), d.block_cos().unwrap());
                    assert!(d >= a, "{params:?} block ({i}, {j}): cosine {d} < {a}");
                }
            }
            let (a, d) = (
                DeltaStats::of_layer(&post, &base, &qa),
                DeltaStats::of_layer(&post, &base, &qd),
            );
            assert!(
                d.block_cos().unwrap() > a.block_cos().unwrap(),
                "{params:?}: DAQ {:?} vs AbsMax {:?}",
                d.block_cos(),
                a.block_cos()
            );
            // Deterministic.
            assert_eq!(
                daq_fp8(&post, &base, Fp8Scaling::Block, params, &serial)
                    .unwrap()
                    .0,
                daq
            );
        }
    }

    #[test]
    fn without_a_delta_absmax_stays() {
        let (post, _) = pair(64, 64, 1);
        let (daq, search) = daq_fp8(
            &post,
            &post,
            Fp8Scaling::Tensor,
            DaqParams::default(),
            &serial,
        )
        .unwrap();
        assert_eq!(search.multipliers, vec![100]);
        assert_eq!(search.moved, 0);
        assert_eq!(daq, Fp8::fit(&post, Fp8Scaling::Tensor).unwrap());
        let wrong = Mat::zeros(64, 63);
        assert!(
            daq_fp8(
                &post,
                &wrong,
                Fp8Scaling::Tensor,
                DaqParams::default(),
                &serial
            )
            .is_err()
        );
    }
}
