//! Reference proxy error `tr(Δ h_in Δᵀ h_out)` by explicit f64 sums (DESIGN.md §4).

use crate::error::Result;
use crate::mat::Mat;
use crate::sym::SymMat;

fn weighted(d: &Mat<f64>, h_in: &SymMat, h_out: Option<&SymMat>) -> f64 {
    let (m, n) = d.shape();
    // T = Δ h_in (m × n).
    let t = Mat::from_fn(m, n, |i, j| {
        (0..n).map(|k| d.at(i, k) * h_in.at(k, j)).sum::<f64>()
    });
    // tr(T Δᵀ h_out) = Σ_{a,c} (T Δᵀ)[a][c] · h_out[c][a].
    let mut total = 0.0;
    for a in 0..m {
        for c in 0..m {
            let hoc = match h_out {
                Some(h) => h.at(c, a),
                None => {
                    if a == c {
                        1.0
                    } else {
                        continue;
                    }
                }
            };
            let tdt: f64 = (0..n).map(|k| t.at(a, k) * d.at(c, k)).sum();
            total += tdt * hoc;
        }
    }
    total
}

pub(super) fn weighted_error(d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64> {
    crate::backend::check_weighted_inputs(d, h_in, h_out)?;
    Ok(weighted(&d.to_f64(), h_in, h_out))
}
