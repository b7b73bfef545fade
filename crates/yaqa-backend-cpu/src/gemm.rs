//! Thin adapters from yaqa's row-major buffers to faer, and the few GEMM shapes the backend uses.
//!
//! Everything here is f32 with faer's rayon parallelism; callers decide precision elsewhere.
//!
//! Destinations are always owned `faer::Mat`s: in our probes (valgrind, 2026-11-23, x86-64 AVX2, faer
//! 0.24.4) `matmul` into a view of an exactly sized row-major slice wrote 8 bytes past its end (for example
//! a 40 × 56 result), while faer's own `Mat` pads its columns. So products land in a `faer::Mat` and are
//! copied or added into place; the copy is `O(rows·cols)` against the product's `O(rows·cols·k)`.
//!
//! Every faer call of the backend is followed by [`after_faer`]: faer's x86 kernels (private-gemm-x86)
//! return with the upper halves of the vector registers dirty, and on Intel cores every switch between
//! that state and SSE-encoded code (ours, built for baseline x86-64) then stalls. Measured on a 2-core
//! AVX-512 Xeon (2026-12-04): a causal softmax over 512 positions took 125 ns per entry after one dirtying
//! 512-bit instruction against 5 ns clean (each libm `expf` call is an SSE → VEX → SSE round trip), and
//! in the SmolLM2 forward pass at 512 tokens `expf` was 37% of the time.

use std::cell::RefCell;

use faer::traits::{ComplexField, Conjugate};
use faer::{Accum, MatMut, MatRef, Par};
use yaqa_core::{Mat, SymMat};

/// `dst = alpha·lhs·rhs` (`Accum::Replace`) or `dst += alpha·lhs·rhs` (`Accum::Add`): faer's matmul, then
/// [`after_faer`]. Every product of the backend goes through here.
pub(crate) fn matmul<T: ComplexField + Conjugate<Canonical = T>>(
    dst: MatMut<'_, T>,
    accum: Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    par: Par,
) {
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, alpha, par);
    after_faer(par);
}

/// Clears the upper halves of the vector registers (`vzeroupper`) on every thread a faer call with `par`
/// may have run its kernels on: this one, and with rayon parallelism every thread of the pool.
pub(crate) fn after_faer(par: Par) {
    zero_upper();
    if !matches!(par, Par::Seq) {
        rayon::broadcast(|_| zero_upper());
    }
}

#[cfg(target_arch = "x86_64")]
fn zero_upper() {
    #[target_feature(enable = "avx")]
    fn vzeroupper() {
        std::arch::x86_64::_mm256_zeroupper();
    }
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above), the only requirement of `vzeroupper`; the
        // instruction clears bits 128 and up of the vector registers, which the compiler treats as
        // clobbered by the intrinsic, so no live value is lost.
        unsafe { vzeroupper() }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn zero_upper() {}

/// The parallelism used for large products.
pub(crate) fn par() -> Par {
    Par::rayon(0)
}

/// A row-major `rows × cols` view of a slice with row stride `stride`.
pub(crate) fn view(data: &[f32], rows: usize, cols: usize, stride: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice_with_stride(data, rows, cols, stride)
}

/// A whole matrix as a faer view.
pub(crate) fn mat(m: &Mat<f32>) -> MatRef<'_, f32> {
    view(&m.data, m.rows, m.cols, m.cols)
}

/// A row-major destination block: `rows × cols` starting at `data[0]` with row stride `stride`.
#[derive(Debug)]
pub(crate) struct RowMajorMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// The row-major destination `rows × cols` with row stride `stride`.
pub(crate) fn view_mut(
    data: &mut [f32],
    rows: usize,
    cols: usize,
    stride: usize,
) -> RowMajorMut<'_> {
    RowMajorMut {
        data,
        rows,
        cols,
        stride,
    }
}

/// Diagonal blocks of [`gram_upper`] at or below this order are computed whole (half of each is wasted);
/// larger ones are split in two around a full off-diagonal GEMM. At 4096 that wastes `1/32` of the
/// triangle's flops, and every other flop runs in a GEMM of at least 128 × 128 × `inner` (measured at 4096
/// with inner 2048, 2026-11-23: leaves of 128 / 256 / 512 / 1024 ran at 122 / 120 / 95 / 95 GFLOP/s of
/// useful flops against 145 for the full square GEMM).
const GRAM_LEAF: usize = 128;

/// The upper triangle (rows `0..=j` of every column `j`) of a symmetric product `lhs · rhs` (`k × k`), in
/// a column-major faer matrix; entries below the diagonal are unspecified. Column `j` of the upper
/// triangle is row `j` of the lower one, so [`add_lower`] reads each packed row as one contiguous column
/// slice. The triangle is split recursively: `[T₁ R; · T₂]` with `R` one rectangular GEMM, so most flops
/// run at faer's GEMM speed (faer's triangular-destination matmul ran at about half of it here,
/// 2026-11-23). The result comes from [`scratch`]: hand it back with [`recycle`].
pub(crate) fn gram_upper(k: usize, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) -> faer::Mat<f32> {
    let mut dst = scratch(k, k);
    upper_into(dst.as_mut(), lhs, rhs);
    dst
}

fn upper_into(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    let k = dst.nrows();
    if k <= GRAM_LEAF {
        matmul(dst, Accum::Replace, lhs, rhs, 1.0, par());
        return;
    }
    // Split on a multiple of 64 so the GEMM blocks stay aligned with faer's micro-kernel tiles.
    let h = (k / 2).next_multiple_of(64).min(k - 1);
    let (top_left, top_right, _, bottom_right) = dst.split_at_mut(h, h);
    matmul(
        top_right,
        Accum::Replace,
        lhs.subrows(0, h),
        rhs.subcols(h, k - h),
        1.0,
        par(),
    );
    upper_into(top_left, lhs.subrows(0, h), rhs.subcols(0, h));
    upper_into(bottom_right, lhs.subrows(h, k - h), rhs.subcols(h, k - h));
}

/// Copies the upper triangle of a square matrix onto its lower one, making it fully symmetric.
pub(crate) fn mirror_upper(a: &mut faer::Mat<f32>) {
    let k = a.nrows();
    for j in 0..k {
        for i in 0..j {
            a[(j, i)] = a[(i, j)];
        }
    }
}

/// Bytes of spare buffers one thread keeps for [`scratch`]: enough for the products of one 4096 × 4096
/// Sketch B step, small next to the factors being accumulated.
const SPARE_BYTES: usize = 256 << 20;

thread_local! {
    /// Buffers handed back by [`recycle`], most recent last.
    static SPARE: RefCell<Vec<faer::Mat<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A `rows × cols` matrix with unspecified contents: a spare of that shape from this thread when there is
/// one, otherwise a fresh one. Fresh 64 MB buffers cost 45–60 ms of page faults and zeroing here
/// (2026-11-23), a tenth of a 4096 × 4096 Sketch B step, so the per-sequence products reuse theirs.
pub(crate) fn scratch(rows: usize, cols: usize) -> faer::Mat<f32> {
    SPARE
        .with_borrow_mut(|spare| {
            let i = spare
                .iter()
                .rposition(|m| m.nrows() == rows && m.ncols() == cols)?;
            Some(spare.remove(i))
        })
        .unwrap_or_else(|| faer::Mat::zeros(rows, cols))
}

/// Hands a buffer back for [`scratch`]; the oldest spares are dropped beyond [`SPARE_BYTES`].
pub(crate) fn recycle(m: faer::Mat<f32>) {
    let bytes = |m: &faer::Mat<f32>| m.col_stride().unsigned_abs() * m.ncols() * 4;
    if bytes(&m) > SPARE_BYTES {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        spare.push(m);
        while spare.iter().map(bytes).sum::<usize>() > SPARE_BYTES {
            spare.remove(0);
        }
    });
}

/// A column-major copy of a row-major `rows × cols` matrix, in cache blocks (faer's element-wise copy
/// of a transposed layout took 106–128 ms for 2048 × 4096 here, 2026-11-23). From [`scratch`].
pub(crate) fn col_major(m: &Mat<f32>) -> faer::Mat<f32> {
    blocked_copy(m.rows, m.cols, |i, j| m.data[i * m.cols + j])
}

/// The transpose of a column-major matrix, column-major: `m` read as row-major. From [`scratch`].
pub(crate) fn transposed(m: &faer::Mat<f32>) -> faer::Mat<f32> {
    blocked_copy(m.ncols(), m.nrows(), |i, j| m.col_as_slice(i)[j])
}

fn blocked_copy(rows: usize, cols: usize, get: impl Fn(usize, usize) -> f32) -> faer::Mat<f32> {
    const B: usize = 32;
    let mut dst = scratch(rows, cols);
    for i0 in (0..rows).step_by(B) {
        for j0 in (0..cols).step_by(B) {
            for j in j0..(j0 + B).min(cols) {
                let col = dst.col_as_slice_mut(j);
                for (i, d) in col.iter_mut().enumerate().take((i0 + B).min(rows)).skip(i0) {
                    *d = get(i, j);
                }
            }
        }
    }
    dst
}

/// `acc += ` the symmetric product from [`gram_upper`], widening to f64.
pub(crate) fn add_lower(acc: &mut SymMat, upper: &faer::Mat<f32>) {
    for i in 0..acc.n {
        let src = &upper.col_as_slice(i)[..=i];
        for (d, s) in acc.lower_row_mut(i).iter_mut().zip(src) {
            *d += *s as f64;
        }
    }
}

/// `dst = alpha · lhs · rhs + (dst if accumulate)` for a row-major destination.
pub(crate) fn gemm(
    dst: RowMajorMut<'_>,
    accumulate: bool,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    alpha: f32,
) {
    assert_eq!(
        (lhs.nrows(), rhs.ncols()),
        (dst.rows, dst.cols),
        "gemm: destination shape"
    );
    assert_eq!(lhs.ncols(), rhs.nrows(), "gemm: inner dimensions");
    // Small products are cheaper on one thread than the fork-join of a parallel GEMM.
    let work = dst.rows * dst.cols * lhs.ncols();
    let par = if work < (1 << 18) { Par::Seq } else { par() };
    let mut out = faer::Mat::<f32>::zeros(dst.rows, dst.cols);
    matmul(out.as_mut(), Accum::Replace, lhs, rhs, alpha, par);
    for i in 0..dst.rows {
        let row = &mut dst.data[i * dst.stride..i * dst.stride + dst.cols];
        if accumulate {
            for (j, d) in row.iter_mut().enumerate() {
                *d += out[(i, j)];
            }
        } else {
            for (j, d) in row.iter_mut().enumerate() {
                *d = out[(i, j)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape that overflowed a slice-view destination: the result must match plain sums.
    #[test]
    fn transposed_product_into_exact_buffer() {
        let (t, m, n) = (96usize, 40usize, 56usize);
        let g: Vec<f32> = (0..t * m).map(|i| (i % 5) as f32 - 2.0).collect();
        let x: Vec<f32> = (0..t * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut grad = vec![0f32; m * n];
        gemm(
            view_mut(&mut grad, m, n, n),
            false,
            view(&g, t, m, m).transpose(),
            view(&x, t, n, n),
            1.0,
        );
        for (a, b) in [(0, 0), (3, 5), (39, 55)] {
            let want: f32 = (0..t).map(|k| g[k * m + a] * x[k * n + b]).sum();
            assert_eq!(grad[a * n + b], want);
        }
    }
}
