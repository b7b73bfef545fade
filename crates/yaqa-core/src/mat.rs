//! Dense row-major matrices with explicit dimensions and no stride system (STYLE.md).
//!
//! `Mat<f32>` carries weights, activations and rounding buffers; `Mat<f64>` carries the
//! factorizations that DESIGN.md §3 asks to be done in f64.

use crate::error::{CoreError, Result};

/// A contiguous row-major `rows × cols` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T> Mat<T> {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

impl<T: Copy + Default> Mat<T> {
    /// A matrix of `T::default()` (zero for numbers).
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![T::default(); rows * cols],
        }
    }

    /// Wraps `data`, checking that it holds exactly `rows * cols` values.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(CoreError::shape(
                "Mat::from_vec",
                format!("{rows}×{cols} = {} values", rows * cols),
                data.len(),
            ));
        }
        Ok(Self { rows, cols, data })
    }

    /// Builds a matrix from a function of `(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.cols + j]
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut T {
        &mut self.data[i * self.cols + j]
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The transpose, as a new matrix.
    pub fn transpose(&self) -> Self {
        Self::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    /// Errors unless the shape is `(rows, cols)`.
    pub fn expect_shape(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        if self.shape() == (rows, cols) {
            Ok(())
        } else {
            Err(CoreError::shape(
                what,
                format!("{rows}×{cols}"),
                format!("{}×{}", self.rows, self.cols),
            ))
        }
    }
}

impl Mat<f64> {
    /// The `n × n` identity.
    pub fn identity(n: usize) -> Self {
        Self::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 })
    }

    /// Rounds every entry to f32.
    pub fn to_f32(&self) -> Mat<f32> {
        Mat {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&v| v as f32).collect(),
        }
    }

    /// Frobenius norm.
    pub fn norm_fro(&self) -> f64 {
        self.data.iter().map(|v| v * v).sum::<f64>().sqrt()
    }
}

impl Mat<f32> {
    /// Widens every entry to f64.
    pub fn to_f64(&self) -> Mat<f64> {
        Mat {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&v| v as f64).collect(),
        }
    }

    /// Frobenius norm, accumulated in f64.
    pub fn norm_fro(&self) -> f64 {
        self.data
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
    }
}

/// Normwise relative difference `‖a − b‖_F / ‖reference‖_F` (STYLE.md: matrices are compared normwise).
pub fn rel_diff_fro(a: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(a.len(), reference.len(), "rel_diff_fro: lengths differ");
    let num: f64 = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let den: f64 = reference.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
