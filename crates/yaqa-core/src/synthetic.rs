//! Structured synthetic data for tests and benches: correlated features with decaying spectra and weights
//! with uneven row scales (STYLE.md: synthetic data must be structured, never all zeros).

use crate::mat::Mat;
use crate::rng::Rng;
use crate::sym::SymMat;

/// `t × n` activations `x = z B diag(decay) + noise`: a rank-`n/4` correlated part whose `k`-th latent
/// direction has scale `(k+1)^(-decay)`, plus 5% isotropic noise and a few outlier channels (×8), as real
/// LLM activations have.
pub fn activations(t: usize, n: usize, decay: f64, seed: u64) -> Mat<f32> {
    activations_rank(t, n, (n / 4).max(2), decay, seed)
}

/// [`activations`] with an explicit latent rank (benches use a small rank to build large shapes quickly).
pub fn activations_rank(t: usize, n: usize, rank: usize, decay: f64, seed: u64) -> Mat<f32> {
    let mut rng = Rng::derive(seed, "synthetic-activations");
    let mix = Mat::from_fn(rank, n, |_, _| rng.normal());
    let outliers: Vec<usize> = (0..(n / 64).max(1))
        .map(|_| rng.below(n as u64) as usize)
        .collect();
    let mut x = Mat::<f32>::zeros(t, n);
    let mut z = vec![0.0; rank];
    for row in 0..t {
        for (k, zk) in z.iter_mut().enumerate() {
            *zk = rng.normal() * ((k + 1) as f64).powf(-decay);
        }
        for col in 0..n {
            let mut s = 0.0;
            for k in 0..rank {
                s += z[k] * mix.at(k, col);
            }
            s += 0.05 * rng.normal();
            if outliers.contains(&col) {
                s *= 8.0;
            }
            *x.at_mut(row, col) = s as f32;
        }
    }
    x
}

/// A symmetric positive definite factor `XᵀX / t` of structured activations (`t = 2n`).
pub fn factor(n: usize, decay: f64, seed: u64) -> SymMat {
    let t = 2 * n;
    let x = activations(t, n, decay, seed);
    let mut h = SymMat::zeros(n);
    for row in 0..t {
        let xr = x.row(row);
        for i in 0..n {
            let xi = xr[i] as f64;
            let dst = h.lower_row_mut(i);
            for j in 0..=i {
                dst[j] += xi * xr[j] as f64;
            }
        }
    }
    h.scale(1.0 / t as f64);
    h
}

/// `m × n` weights: Gaussian entries with row scales spread over a factor of ~4 and a few large columns.
pub fn weights(m: usize, n: usize, seed: u64) -> Mat<f32> {
    let mut rng = Rng::derive(seed, "synthetic-weights");
    let row_scale: Vec<f64> = (0..m).map(|_| 0.5 + 1.5 * rng.next_f64()).collect();
    let col_scale: Vec<f64> = (0..n)
        .map(|_| if rng.next_f64() < 0.02 { 3.0 } else { 1.0 })
        .collect();
    Mat::from_fn(m, n, |i, j| {
        (0.02 * row_scale[i] * col_scale[j] * rng.normal()) as f32
    })
}
