//! Symmetric matrices stored as one packed lower triangle (DESIGN.md §2: "compute and store one triangle").
//!
//! Entry `(i, j)` with `j ≤ i` lives at `i·(i+1)/2 + j`. Factors are sums, so [`SymMat::add_assign`]
//! is how shards of calibration data are merged.

use crate::error::{CoreError, Result};
use crate::mat::Mat;

/// A symmetric `n × n` matrix in packed lower-triangular storage, f64.
#[derive(Clone, Debug, PartialEq)]
pub struct SymMat {
    pub n: usize,
    pub data: Vec<f64>,
}

/// Number of stored entries for order `n`.
pub const fn packed_len(n: usize) -> usize {
    n * (n + 1) / 2
}

impl SymMat {
    pub fn zeros(n: usize) -> Self {
        Self {
            n,
            data: vec![0.0; packed_len(n)],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut s = Self::zeros(n);
        for i in 0..n {
            *s.at_mut(i, i) = 1.0;
        }
        s
    }

    /// Wraps a packed triangle, checking its length.
    pub fn from_packed(n: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != packed_len(n) {
            return Err(CoreError::shape(
                "SymMat::from_packed",
                packed_len(n),
                data.len(),
            ));
        }
        Ok(Self { n, data })
    }

    /// Takes the lower triangle of a dense square matrix (the upper one is ignored).
    pub fn from_lower(dense: &Mat<f64>) -> Result<Self> {
        if dense.rows != dense.cols {
            return Err(CoreError::shape(
                "SymMat::from_lower",
                "a square matrix",
                format!("{}×{}", dense.rows, dense.cols),
            ));
        }
        let n = dense.rows;
        let mut data = Vec::with_capacity(packed_len(n));
        for i in 0..n {
            data.extend_from_slice(&dense.row(i)[..=i]);
        }
        Ok(Self { n, data })
    }

    #[inline]
    pub fn index(i: usize, j: usize) -> usize {
        let (i, j) = if j > i { (j, i) } else { (i, j) };
        i * (i + 1) / 2 + j
    }

    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[Self::index(i, j)]
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[Self::index(i, j)]
    }

    /// Row `i`'s stored part, entries `(i, 0..=i)`.
    pub fn lower_row(&self, i: usize) -> &[f64] {
        let start = i * (i + 1) / 2;
        &self.data[start..start + i + 1]
    }

    pub fn lower_row_mut(&mut self, i: usize) -> &mut [f64] {
        let start = i * (i + 1) / 2;
        &mut self.data[start..start + i + 1]
    }

    /// The full dense matrix.
    pub fn to_dense(&self) -> Mat<f64> {
        Mat::from_fn(self.n, self.n, |i, j| self.at(i, j))
    }

    /// `self += other` (shard merge).
    pub fn add_assign(&mut self, other: &SymMat) -> Result<()> {
        if self.n != other.n {
            return Err(CoreError::shape("SymMat::add_assign", self.n, other.n));
        }
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
        Ok(())
    }

    pub fn scale(&mut self, factor: f64) {
        for v in &mut self.data {
            *v *= factor;
        }
    }

    pub fn diag(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.at(i, i)).collect()
    }

    pub fn mean_diag(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        self.diag().iter().sum::<f64>() / self.n as f64
    }

    /// Frobenius norm of the full symmetric matrix (off-diagonal entries count twice).
    pub fn norm_fro(&self) -> f64 {
        let mut sum = 0.0;
        for i in 0..self.n {
            let row = self.lower_row(i);
            for (j, v) in row.iter().enumerate() {
                sum += if j == i { v * v } else { 2.0 * v * v };
            }
        }
        sum.sqrt()
    }

    /// Adds `sigma` to every diagonal entry.
    pub fn add_diag(&mut self, sigma: f64) {
        for i in 0..self.n {
            *self.at_mut(i, i) += sigma;
        }
    }
}
