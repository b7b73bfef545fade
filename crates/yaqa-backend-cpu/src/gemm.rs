//! Thin adapters from yaqa's row-major buffers to faer, and the few GEMM shapes the backend uses.
//!
//! Everything here is f32 with faer's rayon parallelism; callers decide precision elsewhere.
//!
//! Destinations are always owned `faer::Mat`s: in our probes (valgrind, 2026-11-23, x86-64 AVX2, faer
//! 0.24.4) `matmul` into a view of an exactly sized row-major slice wrote 8 bytes past its end (for example
//! a 40 × 56 result), while faer's own `Mat` pads its columns. So products land in a `faer::Mat` and are
//! copied or added into place; the copy is `O(rows·cols)` against the product's `O(rows·cols·k)`.

use faer::{Accum, MatRef, Par};
use yaqa_core::{Mat, SymMat};

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

/// Column bands of [`gram_upper`]: the triangle is computed as this many rectangular GEMMs of growing
/// height, wasting about `1/(2·GRAM_BANDS)` extra flops but running at faer's rectangular-GEMM speed
/// (faer's triangular-destination matmul ran at about half of it here, 2026-11-23).
const GRAM_BANDS: usize = 8;

/// The upper triangle (rows `0..=j` of every column `j`) of a symmetric product `lhs · rhs` (`k × k`), in
/// a column-major faer matrix, band of columns by band of columns. Column `j` of the upper triangle is row
/// `j` of the lower one, so [`add_lower`] reads each packed row as one contiguous column slice.
pub(crate) fn gram_upper(k: usize, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) -> faer::Mat<f32> {
    let mut dst = faer::Mat::<f32>::zeros(k, k);
    let band = k.div_ceil(GRAM_BANDS).max(1);
    let mut c0 = 0;
    while c0 < k {
        let c1 = (c0 + band).min(k);
        faer::linalg::matmul::matmul(
            dst.as_mut().submatrix_mut(0, c0, c1, c1 - c0),
            Accum::Replace,
            lhs.subrows(0, c1),
            rhs.subcols(c0, c1 - c0),
            1.0,
            par(),
        );
        c0 = c1;
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
    faer::linalg::matmul::matmul(out.as_mut(), Accum::Replace, lhs, rhs, alpha, par);
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
