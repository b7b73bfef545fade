//! CPU incoherence rotations (DESIGN.md §3.2): the fast `R_n = (H_k ⊗ H_{2^p}) / √n` transform.
//!
//! A vector of length `n = k·2^p` is viewed as `k` contiguous segments of `2^p` entries. `R_n` is then
//! unnormalised Walsh–Hadamard butterflies inside every segment (`O(n log n)`) followed by a dense `k × k`
//! ±1 mix of whole segments (`O(n·k)`), with the `1/√n` folded into the sign vector. Both steps work on
//! *units* of `width` contiguous lanes, so one kernel serves both sides of `W`:
//! - `Side::Cols` (rows of `W` are the vectors): each row is one vector with `width = 1`, rayon over rows;
//! - `Side::Rows` (columns are the vectors): a strip of `width` adjacent columns is copied into a
//!   contiguous buffer of `m` units, where every butterfly and every mix term is a contiguous,
//!   SIMD-friendly run of `width`-lane rows; rayon over strips.
//!
//! When `k > 1` the butterflies run on a copy whose segments are padded apart by a cache line (see
//! [`Transform`]), and the mix writes the result back in place.
//!
//! `rotate_factor` runs the same kernel in f64 on the dense factor, along rows and then along columns.
//! The SIMD path uses pulp with run-time dispatch; `simd == false` selects plain loops, kept so the
//! conformance tests check the SIMD kernels against an independent scalar path.

use std::mem::size_of;
use std::ops::{Add, Mul, Sub};

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use yaqa_core::backend::Side;
use yaqa_core::hadamard::HadamardPlan;
use yaqa_core::sym::packed_len;
use yaqa_core::{CoreError, Mat, Result, SymMat};

/// Bytes of one strip buffer for `Side::Rows`. The strip and its mix scratch should stay in a core's L2
/// (1 MiB per core on the development machine, an AMD EPYC) while the `log2(2^p)` butterfly passes run.
const STRIP_BYTES: usize = 256 * 1024;
/// Bytes of one batch of columns for `Side::Rows` (two buffers of this size are live): small enough to
/// stay in the shared L3 (32 MiB on the development machine) between phases, large enough that every core
/// gets several strips per phase.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of one cache line: the narrowest strip worth copying (a narrower one would split lines between
/// strips, and so between threads).
const LINE_BYTES: usize = 64;
/// Widest strip, in lanes: wider strips no longer shorten the per-unit loop overhead noticeably.
const MAX_STRIP_LANES: usize = 64;

/// The element types the transform runs in (f32 for weights, f64 for factors), with their pulp vectors.
trait Real:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    type V<S: Simd>: Copy;
    fn from_f64(x: f64) -> Self;
    fn splat<S: Simd>(simd: S, x: Self) -> Self::V<S>;
    fn vadd<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    fn vsub<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    /// `a·b + c`, fused or not: the mix multiplies by ±1 only, which is exact either way.
    fn vmul_add<S: Simd>(simd: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S>;
    fn split<S: Simd>(x: &[Self]) -> (&[Self::V<S>], &[Self]);
    fn split_mut<S: Simd>(x: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]);
}

impl Real for f32 {
    type V<S: Simd> = S::f32s;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn splat<S: Simd>(simd: S, x: Self) -> S::f32s {
        simd.splat_f32s(x)
    }
    #[inline(always)]
    fn vadd<S: Simd>(simd: S, a: S::f32s, b: S::f32s) -> S::f32s {
        simd.add_f32s(a, b)
    }
    #[inline(always)]
    fn vsub<S: Simd>(simd: S, a: S::f32s, b: S::f32s) -> S::f32s {
        simd.sub_f32s(a, b)
    }
    #[inline(always)]
    fn vmul_add<S: Simd>(simd: S, a: S::f32s, b: S::f32s, c: S::f32s) -> S::f32s {
        simd.mul_add_f32s(a, b, c)
    }
    #[inline(always)]
    fn split<S: Simd>(x: &[Self]) -> (&[S::f32s], &[Self]) {
        S::as_simd_f32s(x)
    }
    #[inline(always)]
    fn split_mut<S: Simd>(x: &mut [Self]) -> (&mut [S::f32s], &mut [Self]) {
        S::as_mut_simd_f32s(x)
    }
}

impl Real for f64 {
    type V<S: Simd> = S::f64s;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn splat<S: Simd>(simd: S, x: Self) -> S::f64s {
        simd.splat_f64s(x)
    }
    #[inline(always)]
    fn vadd<S: Simd>(simd: S, a: S::f64s, b: S::f64s) -> S::f64s {
        simd.add_f64s(a, b)
    }
    #[inline(always)]
    fn vsub<S: Simd>(simd: S, a: S::f64s, b: S::f64s) -> S::f64s {
        simd.sub_f64s(a, b)
    }
    #[inline(always)]
    fn vmul_add<S: Simd>(simd: S, a: S::f64s, b: S::f64s, c: S::f64s) -> S::f64s {
        simd.mul_add_f64s(a, b, c)
    }
    #[inline(always)]
    fn split<S: Simd>(x: &[Self]) -> (&[S::f64s], &[Self]) {
        S::as_simd_f64s(x)
    }
    #[inline(always)]
    fn split_mut<S: Simd>(x: &mut [Self]) -> (&mut [S::f64s], &mut [Self]) {
        S::as_mut_simd_f64s(x)
    }
}

/// Everything one rotation needs, prepared once per call.
///
/// The transform runs in two steps on a *work* buffer whose `k` segments (`2^p` units of `width` lanes
/// each) start every `stride ≥ 2^p·width` values: [`Transform::fwht`] in place, then [`Transform::mix`]
/// into a contiguous output. The gap between segments is one cache line of padding: without it, the
/// segments of 14336 (2 KiB apart) or of a 16-lane strip of 14336 rows (32 KiB apart) fall into the same
/// few L1 sets, and the `k` loads of every mix term evict each other.
struct Transform<T> {
    /// Segments (`k`) and units per segment (`2^p`).
    k: usize,
    q: usize,
    /// The `k × k` mix as ±1 values in `T`, row-major: `H_k` forward, `H_kᵀ` for the inverse.
    mix: Vec<T>,
    /// `s_i / √n`: applied before the transform (forward) or after it (inverse).
    scaled_signs: Vec<T>,
    inverse: bool,
    /// The instruction set for the SIMD path (detected once per call), or `None` for the scalar path.
    arch: Option<Arch>,
}

impl<T: Real> Transform<T> {
    fn new(plan: &HadamardPlan, signs: &[f32], inverse: bool, simd: bool) -> Self {
        let k = plan.k();
        let base = plan.base();
        let mix = (0..k * k)
            .map(|idx| {
                let (a, c) = (idx / k, idx % k);
                let h = if inverse {
                    base.at(c, a)
                } else {
                    base.at(a, c)
                };
                T::from_f64(h as f64)
            })
            .collect();
        let scale = plan.scale();
        let scaled_signs = signs
            .iter()
            .map(|&s| T::from_f64(s as f64 * scale))
            .collect();
        Self {
            k,
            q: plan.pow2(),
            mix,
            scaled_signs,
            inverse,
            arch: simd.then(Arch::new),
        }
    }

    /// Distance between segment starts in a work buffer for `width`-lane units: one segment plus one
    /// cache line of padding when there is more than one segment.
    fn stride(&self, width: usize) -> usize {
        let seg = self.q * width;
        if self.k > 1 {
            seg + (LINE_BYTES / size_of::<T>()).max(1)
        } else {
            seg
        }
    }

    /// Unnormalised Walsh–Hadamard butterflies on each of the `work.len().div_ceil(stride)` segments.
    fn fwht(&self, work: &mut [T], stride: usize, width: usize) {
        let seg = self.q * width;
        match self.arch {
            Some(arch) => arch.dispatch(FwhtKernel {
                work,
                stride,
                seg,
                width,
            }),
            None => {
                for start in (0..work.len()).step_by(stride) {
                    fwht_scalar(&mut work[start..start + seg], width);
                }
            }
        }
    }

    /// `out[a] = Σ_c mix[a, c] · work[c]` with segments `stride` apart in `work` and contiguous in `out`.
    fn mix(&self, work: &[T], stride: usize, out: &mut [T]) {
        match self.arch {
            Some(arch) => arch.dispatch(MixKernel {
                mix: &self.mix,
                k: self.k,
                src: work,
                stride,
                dst: out,
            }),
            None => mix_scalar(&self.mix, self.k, work, stride, out),
        }
    }
}

/// One butterfly stage `(x, y) ← (x + y, x − y)` over every pair of blocks `span` apart, in plain loops.
#[inline(always)]
fn stage_scalar<T: Real>(segment: &mut [T], span: usize) {
    for block in segment.chunks_exact_mut(2 * span) {
        let (x, y) = block.split_at_mut(span);
        for (a, b) in x.iter_mut().zip(y.iter_mut()) {
            let (u, v) = (*a, *b);
            *a = u + v;
            *b = u - v;
        }
    }
}

/// The first three butterfly stages (spans 1, 2, 4) of a `width = 1` segment, fused into one pass of
/// 8-point transforms on registers. Done stage by stage, these short spans cost more than all the
/// remaining stages together (each pair of 1-, 2- or 4-element runs is its own tiny loop).
#[inline(always)]
fn wht8<T: Real>(segment: &mut [T]) {
    for chunk in segment.chunks_exact_mut(8) {
        // Named temporaries rather than a local array: the compiler then keeps all eight values in
        // registers and stores each result once (an array round trip through the stack stalled store
        // forwarding and cost a fifth of the whole transform).
        let [x0, x1, x2, x3, x4, x5, x6, x7] = [
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ];
        let (a0, a1, a2, a3) = (x0 + x1, x0 - x1, x2 + x3, x2 - x3);
        let (a4, a5, a6, a7) = (x4 + x5, x4 - x5, x6 + x7, x6 - x7);
        let (b0, b1, b2, b3) = (a0 + a2, a1 + a3, a0 - a2, a1 - a3);
        let (b4, b5, b6, b7) = (a4 + a6, a5 + a7, a4 - a6, a5 - a7);
        chunk[0] = b0 + b4;
        chunk[1] = b1 + b5;
        chunk[2] = b2 + b6;
        chunk[3] = b3 + b7;
        chunk[4] = b0 - b4;
        chunk[5] = b1 - b5;
        chunk[6] = b2 - b6;
        chunk[7] = b3 - b7;
    }
}

/// Unnormalised Walsh–Hadamard transform of one segment of `len / width` units, in natural (Sylvester)
/// order: stage `h` pairs units `i` and `i + h`.
fn fwht_scalar<T: Real>(segment: &mut [T], width: usize) {
    let mut span = width;
    if width == 1 && segment.len() >= 8 {
        wht8(segment);
        span = 8;
    }
    while span < segment.len() {
        stage_scalar(segment, span);
        span *= 2;
    }
}

/// `dst[a] = Σ_c mix[a, c] · src[c]`, segments `stride` apart in `src` and contiguous in `dst`, in plain
/// loops.
fn mix_scalar<T: Real>(mix: &[T], k: usize, src: &[T], stride: usize, dst: &mut [T]) {
    let seg = dst.len() / k;
    let zero = T::default();
    for (a, out) in dst.chunks_exact_mut(seg).enumerate() {
        out.fill(zero);
        for c in 0..k {
            let input = &src[c * stride..c * stride + seg];
            if mix[a * k + c] > zero {
                for (o, &x) in out.iter_mut().zip(input) {
                    *o = *o + x;
                }
            } else {
                for (o, &x) in out.iter_mut().zip(input) {
                    *o = *o - x;
                }
            }
        }
    }
}

/// The SIMD butterflies, dispatched by pulp to the best instruction set at run time.
struct FwhtKernel<'a, T> {
    work: &'a mut [T],
    stride: usize,
    seg: usize,
    width: usize,
}

impl<T: Real> WithSimd for FwhtKernel<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let Self {
            work,
            stride,
            seg,
            width,
        } = self;
        let lanes = size_of::<T::V<S>>() / size_of::<T>();
        for start in (0..work.len()).step_by(stride) {
            let segment = &mut work[start..start + seg];
            let mut span = width;
            if width == 1 && segment.len() >= 8 {
                wht8(segment);
                span = 8;
            }
            while span < segment.len() {
                if span < lanes {
                    // Blocks narrower than one vector: the first stages of a `width = 1` transform
                    // with wide vectors.
                    stage_scalar(segment, span);
                } else {
                    for block in segment.chunks_exact_mut(2 * span) {
                        let (x, y) = block.split_at_mut(span);
                        butterfly_simd(simd, x, y);
                    }
                }
                span *= 2;
            }
        }
    }
}

/// The SIMD mix, dispatched by pulp to the best instruction set at run time.
struct MixKernel<'a, T> {
    mix: &'a [T],
    k: usize,
    src: &'a [T],
    stride: usize,
    dst: &'a mut [T],
}

impl<T: Real> WithSimd for MixKernel<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        mix_simd(simd, self.mix, self.k, self.src, self.stride, self.dst);
    }
}

#[inline(always)]
fn butterfly_simd<T: Real, S: Simd>(simd: S, x: &mut [T], y: &mut [T]) {
    let (xv, xt) = T::split_mut::<S>(x);
    let (yv, yt) = T::split_mut::<S>(y);
    for (a, b) in xv.iter_mut().zip(yv.iter_mut()) {
        let (u, v) = (*a, *b);
        *a = T::vadd(simd, u, v);
        *b = T::vsub(simd, u, v);
    }
    for (a, b) in xt.iter_mut().zip(yt.iter_mut()) {
        let (u, v) = (*a, *b);
        *a = u + v;
        *b = u - v;
    }
}

/// `dst[a] = Σ_c mix[a, c] · src[c]`, segments `stride` apart in `src` and contiguous in `dst`, by register
/// tiles of
/// `RA` outputs × `RV` vectors (eight accumulators each): every term costs one multiply-add with no load or
/// store of an accumulator, the eight independent chains hide the multiply-add latency, and long segments
/// use wide tiles (`1 × 8`) while short ones (11008's 32-entry segments, 576's 16) share each loaded
/// vector between several outputs (`2 × 4`, `4 × 2`). Less than one vector at the end: plain loops.
#[inline(always)]
fn mix_simd<T: Real, S: Simd>(
    simd: S,
    mix: &[T],
    k: usize,
    src: &[T],
    stride: usize,
    dst: &mut [T],
) {
    let seg = dst.len() / k;
    let lanes = size_of::<T::V<S>>() / size_of::<T>();
    let mut start = 0;
    while start + 2 * lanes <= seg {
        mix_columns::<T, S, 4, 2>(simd, mix, k, src, stride, dst, start);
        start += 2 * lanes;
    }
    if start + lanes <= seg {
        mix_columns::<T, S, 8, 1>(simd, mix, k, src, stride, dst, start);
        start += lanes;
    }
    for a in 0..k {
        for t in start..seg {
            let mut sum = T::default();
            for c in 0..k {
                sum = sum + mix[a * k + c] * src[c * stride + t];
            }
            dst[a * seg + t] = sum;
        }
    }
}

/// All `k` outputs of the mix over the `RV` vectors starting at `start` in every segment: tiles of `RA`
/// outputs, then single outputs for the `k mod RA` left over.
#[inline(always)]
fn mix_columns<T: Real, S: Simd, const RA: usize, const RV: usize>(
    simd: S,
    mix: &[T],
    k: usize,
    src: &[T],
    stride: usize,
    dst: &mut [T],
    start: usize,
) {
    let full = k / RA * RA;
    for a0 in (0..full).step_by(RA) {
        mix_tile::<T, S, RA, RV>(simd, mix, k, src, stride, dst, a0, start);
    }
    for a0 in full..k {
        mix_tile::<T, S, 1, RV>(simd, mix, k, src, stride, dst, a0, start);
    }
}

/// Outputs `a0..a0 + RA` of the mix over the `RV` vectors starting at `start` in every segment.
#[inline(always)]
fn mix_tile<T: Real, S: Simd, const RA: usize, const RV: usize>(
    simd: S,
    mix: &[T],
    k: usize,
    src: &[T],
    stride: usize,
    dst: &mut [T],
    a0: usize,
    start: usize,
) {
    let seg = dst.len() / k;
    let width = RV * (size_of::<T::V<S>>() / size_of::<T>());
    let zero = T::splat(simd, T::default());
    let mut acc = [[zero; RV]; RA];
    for c in 0..k {
        let (v, _) = T::split::<S>(&src[c * stride + start..c * stride + start + width]);
        let Ok(v) = <&[T::V<S>; RV]>::try_from(v) else {
            unreachable!("a tile of {RV} vectors spans exactly {width} values")
        };
        for (ra, acc_a) in acc.iter_mut().enumerate() {
            let h = T::splat(simd, mix[(a0 + ra) * k + c]);
            for (acc_u, &v_u) in acc_a.iter_mut().zip(v) {
                *acc_u = T::vmul_add(simd, h, v_u, *acc_u);
            }
        }
    }
    for (ra, acc_a) in acc.iter().enumerate() {
        let out_start = (a0 + ra) * seg + start;
        let (out, _) = T::split_mut::<S>(&mut dst[out_start..out_start + width]);
        out.copy_from_slice(acc_a);
    }
}

/// Rotates every row (length `cols`) of the row-major `rows × cols` matrix `data`: `v ← R (s ⊙ v)`, or
/// `v ← s ⊙ (Rᵀ v)` for the inverse.
fn rotate_rows<T: Real>(t: &Transform<T>, data: &mut [T], cols: usize) {
    if cols == 0 {
        return;
    }
    let (k, q) = (t.k, t.q);
    let stride = t.stride(1);
    data.par_chunks_mut(cols).for_each_init(
        || vec![T::default(); if k > 1 { k * stride } else { 0 }],
        |work, row| {
            if k == 1 {
                if !t.inverse {
                    scale_by(row, &t.scaled_signs);
                }
                t.fwht(row, q, 1);
            } else {
                // Copy into the padded work layout (signed on the way for the forward rotation), then
                // mix straight back into the row.
                for (c, seg) in row.chunks_exact(q).enumerate() {
                    let dst = &mut work[c * stride..c * stride + q];
                    if t.inverse {
                        dst.copy_from_slice(seg);
                    } else {
                        for ((o, &x), &d) in dst.iter_mut().zip(seg).zip(&t.scaled_signs[c * q..]) {
                            *o = x * d;
                        }
                    }
                }
                t.fwht(work, stride, 1);
                t.mix(work, stride, row);
            }
            if t.inverse {
                scale_by(row, &t.scaled_signs);
            }
        },
    );
}

/// `dst ← src` for the short runs (one strip row, a few dozen values) the strip path moves: in blocks of
/// eight with a length known at compile time, so the copy is a few vector moves rather than a call to
/// `memmove` per run (measured at a fifth of the 14336-row strip path).
#[inline(always)]
fn copy_run<T: Real>(dst: &mut [T], src: &[T]) {
    let mut dst_blocks = dst.chunks_exact_mut(8);
    let mut src_blocks = src.chunks_exact(8);
    for (d, s) in (&mut dst_blocks).zip(&mut src_blocks) {
        if let (Ok(d), Ok(s)) = (<&mut [T; 8]>::try_from(d), <&[T; 8]>::try_from(s)) {
            *d = *s;
        }
    }
    for (d, &s) in dst_blocks
        .into_remainder()
        .iter_mut()
        .zip(src_blocks.remainder())
    {
        *d = s;
    }
}

/// `v ← v ⊙ d`.
fn scale_by<T: Real>(v: &mut [T], d: &[T]) {
    for (x, &s) in v.iter_mut().zip(d) {
        *x = *x * s;
    }
}

/// Rotates every column (length `rows`) of the row-major `rows × cols` matrix `data`, strip by strip.
///
/// Columns are processed in batches that stay in the shared cache, in three parallel phases, each with
/// disjoint writes (so no `unsafe`):
/// 1. over rows: copy the batch's columns of every row into `stage` (row-major, signed for the forward
///    rotation): contiguous reads of `W`, which the hardware prefetchers follow (gathering strips straight
///    from `W` reads one cache line per row at a stride of a whole row, and stalls on memory latency);
/// 2. over strips: gather each strip of `width` columns from `stage` into a padded work buffer (or, with
///    no mix, straight into its contiguous `rows × width` chunk of `strips`), transform it, and mix it
///    into that chunk;
/// 3. over rows: write every strip's row back into `W`.
fn rotate_cols<T: Real>(t: &Transform<T>, data: &mut [T], rows: usize, cols: usize) {
    if cols == 0 || rows == 0 {
        return;
    }
    let (k, q) = (t.k, t.q);
    let elem = size_of::<T>();
    let min_width = (LINE_BYTES / elem).max(1);
    let width = (STRIP_BYTES / (2 * rows * elem)) / min_width * min_width;
    let width = width.clamp(min_width, MAX_STRIP_LANES).min(cols);
    let strips_per_batch = (BATCH_BYTES / (rows * width * elem)).max(1);
    let batch_cols = (strips_per_batch * width).min(cols);
    let mut stage = vec![T::default(); rows * batch_cols];
    let mut strips = vec![T::default(); rows * batch_cols];

    for c0 in (0..cols).step_by(batch_cols) {
        let c1 = (c0 + batch_cols).min(cols);
        let bc = c1 - c0;
        // Strip j of this batch covers batch columns j·width .. min((j+1)·width, bc).
        let strip_width = |j: usize| (bc - j * width).min(width);
        let stage = &mut stage[..rows * bc];
        let strips = &mut strips[..rows * bc];

        stage
            .par_chunks_mut(bc)
            .zip(data.par_chunks(cols))
            .enumerate()
            .for_each(|(i, (dst, row))| {
                let src = &row[c0..c1];
                if t.inverse {
                    dst.copy_from_slice(src);
                } else {
                    let d = t.scaled_signs[i];
                    for (o, &x) in dst.iter_mut().zip(src) {
                        *o = x * d;
                    }
                }
            });

        let stage: &[T] = stage;
        strips
            .par_chunks_mut(rows * width)
            .enumerate()
            .for_each_init(
                || vec![T::default(); if k > 1 { k * t.stride(width) } else { 0 }],
                |work, (j, chunk)| {
                    let w = strip_width(j);
                    let first = j * width;
                    let staged_rows = stage.chunks_exact(bc).map(|r| &r[first..first + w]);
                    if k == 1 {
                        for (unit, staged) in chunk.chunks_exact_mut(w).zip(staged_rows) {
                            copy_run(unit, staged);
                        }
                        t.fwht(chunk, q * w, w);
                    } else {
                        // Row i = c·2^p + b of the strip goes to unit b of padded segment c.
                        let stride = t.stride(w);
                        let work = &mut work[..k * stride];
                        for (i, staged) in staged_rows.enumerate() {
                            let at = (i / q) * stride + (i % q) * w;
                            copy_run(&mut work[at..at + w], staged);
                        }
                        t.fwht(work, stride, w);
                        t.mix(work, stride, chunk);
                    }
                },
            );

        let strips: &[T] = strips;
        data.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let d = t.scaled_signs[i];
            for (j, strip) in strips.chunks(rows * width).enumerate() {
                let w = strip_width(j);
                let unit = &strip[i * w..(i + 1) * w];
                let out = &mut row[c0 + j * width..c0 + j * width + w];
                if t.inverse {
                    for (o, &u) in out.iter_mut().zip(unit) {
                        *o = u * d;
                    }
                } else {
                    copy_run(out, unit);
                }
            }
        });
    }
}

/// [`yaqa_core::Backend::hadamard_rotate`] on the CPU: `W ← W diag(s) R_nᵀ` (`Side::Cols`) or
/// `W ← R_m diag(s) W` (`Side::Rows`), or their inverses (DESIGN.md §3.2).
///
/// **Shapes**: `w` is `m × n`; `signs` has length `n` (`Cols`) or `m` (`Rows`).
/// **Errors**: shape mismatch, a sign that is not ±1, a dimension with no Hadamard plan.
pub(crate) fn rotate(
    simd: bool,
    w: &mut Mat<f32>,
    side: Side,
    signs: &[f32],
    inverse: bool,
) -> Result<()> {
    let (m, n) = w.shape();
    let dim = yaqa_core::backend::check_rotate_inputs(w, side, signs)?;
    let plan = HadamardPlan::cached(dim)?;
    let t = Transform::<f32>::new(&plan, signs, inverse, simd);
    match side {
        Side::Cols => rotate_rows(&t, &mut w.data, n),
        Side::Rows => rotate_cols(&t, &mut w.data, m, n),
    }
    Ok(())
}

/// [`yaqa_core::Backend::rotate_factor`] on the CPU: `R diag(s) h diag(s) Rᵀ` (DESIGN.md §3.2) in f64, by
/// the fast transform along the rows of the dense factor and then along its columns; the lower triangle
/// of the result is kept (it is symmetric up to rounding).
///
/// **Shapes**: `h` is `n × n` (packed), `signs` has length `n`.
/// **Errors**: shape mismatch, a sign that is not ±1, a dimension with no Hadamard plan.
pub(crate) fn rotate_factor(simd: bool, h: &SymMat, signs: &[f32]) -> Result<SymMat> {
    let n = h.n;
    if h.data.len() != packed_len(n) {
        return Err(CoreError::shape(
            "rotate_factor: packed factor",
            packed_len(n),
            h.data.len(),
        ));
    }
    yaqa_core::backend::check_signs(signs, n)?;
    let plan = HadamardPlan::cached(n)?;
    let t = Transform::<f64>::new(&plan, signs, false, simd);
    let mut dense = h.to_dense();
    // Rows first: H ← H diag(s) Rᵀ; then columns: H ← R diag(s) H.
    rotate_rows(&t, &mut dense.data, n);
    rotate_cols(&t, &mut dense.data, n, n);
    SymMat::from_lower(&dense)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels against the definition on tiny cases: `R diag(s) e_j` must be `s_j` times column `j`
    /// of `R` (from the plan's entries), for every `j`, on both sides and both paths.
    #[test]
    fn unit_vectors_map_to_columns_of_r() {
        for n in [12, 24, 40, 64] {
            let plan = HadamardPlan::new(n).unwrap_or_else(|e| panic!("{e}"));
            let signs = yaqa_core::hadamard::sign_vector(3, "unit", n);
            let scale = plan.scale();
            for simd in [true, false] {
                // Row j of W is e_j, so after a Cols rotation row j is s_j·R[:, j].
                let mut w = Mat::from_fn(n, n, |i, j| if i == j { 1.0f32 } else { 0.0 });
                rotate(simd, &mut w, Side::Cols, &signs, false).unwrap_or_else(|e| panic!("{e}"));
                // Column j of W is e_j, so after a Rows rotation column j is s_j·R[:, j].
                let mut w_rows = Mat::from_fn(n, n, |i, j| if i == j { 1.0f32 } else { 0.0 });
                rotate(simd, &mut w_rows, Side::Rows, &signs, false)
                    .unwrap_or_else(|e| panic!("{e}"));
                for j in 0..n {
                    for i in 0..n {
                        let want = (plan.entry(i, j) as f64 * scale * signs[j] as f64) as f32;
                        assert!((w.at(j, i) - want).abs() < 1e-6, "n {n} simd {simd} Cols");
                        assert!(
                            (w_rows.at(i, j) - want).abs() < 1e-6,
                            "n {n} simd {simd} Rows"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strips_cover_ragged_widths() {
        // 100 columns is not a multiple of any strip width; rows 48 = 12·4 exercises the mix.
        let n_cols = 100;
        let w0 = Mat::from_fn(48, n_cols, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let signs = yaqa_core::hadamard::sign_vector(1, "r", 48);
        let mut simd = w0.clone();
        let mut scalar = w0.clone();
        rotate(true, &mut simd, Side::Rows, &signs, false).unwrap_or_else(|e| panic!("{e}"));
        rotate(false, &mut scalar, Side::Rows, &signs, false).unwrap_or_else(|e| panic!("{e}"));
        // Column by column against the Cols path on the transpose, which has no strips at all.
        let mut transposed = w0.transpose();
        rotate(false, &mut transposed, Side::Cols, &signs, false).unwrap_or_else(|e| panic!("{e}"));
        let want = transposed.transpose();
        for (got, name) in [(&simd, "simd"), (&scalar, "scalar")] {
            let err = yaqa_core::mat::rel_diff_fro(&got.to_f64().data, &want.to_f64().data);
            assert!(err < 1e-6, "{name}: {err:e}");
        }
    }
}
