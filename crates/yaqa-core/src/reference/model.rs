//! Naive f64 reference of the layer-level model operations ([`crate::model_ops::ModelOps`]).
//!
//! Every operation widens its inputs to f64, follows the textbook definition with plain loops, and rounds
//! the result back to the element type once. With `T = f64` it is an exact-f64 model, which is what the
//! finite-difference gradient checks of `yaqa-model` run on. It shares no code with the CPU backend.

use crate::error::Result;
use crate::mat::Mat;
use crate::model_ops::{
    AttentionGrads, AttentionShape, ModelOps, Real, RopeParams, check_len, check_same_shape,
};

use super::Reference;

fn wide<T: Real>(m: &Mat<T>) -> Vec<f64> {
    m.data.iter().map(|v| v.to_f64()).collect()
}

fn narrow<T: Real>(rows: usize, cols: usize, v: Vec<f64>) -> Mat<T> {
    Mat {
        rows,
        cols,
        data: v.into_iter().map(T::from_f64).collect(),
    }
}

fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

/// The causal softmax probabilities of query row `(b, t)` and head `h` over keys `0..=t`.
fn probs(q: &[f64], k: &[f64], s: &AttentionShape, b: usize, t: usize, h: usize) -> Vec<f64> {
    let d = s.head_dim;
    let qc = s.n_heads * d;
    let kc = s.n_kv_heads * d;
    let kh = h / s.group();
    let scale = 1.0 / (d as f64).sqrt();
    let qrow = &q[(b * s.seq + t) * qc + h * d..][..d];
    let mut scores: Vec<f64> = (0..=t)
        .map(|u| {
            let krow = &k[(b * s.seq + u) * kc + kh * d..][..d];
            qrow.iter().zip(krow).map(|(a, c)| a * c).sum::<f64>() * scale
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    for v in scores.iter_mut() {
        *v /= total;
    }
    scores
}

impl<T: Real> ModelOps<T> for Reference {
    fn model_ops_name(&self) -> String {
        "reference-f64".into()
    }

    fn linear(&self, x: &Mat<T>, w: &Mat<T>, bias: Option<&[T]>) -> Result<Mat<T>> {
        x.expect_shape("linear x", x.rows, w.cols)?;
        if let Some(b) = bias {
            check_len("linear bias", b.len(), w.rows)?;
        }
        let (xs, ws) = (wide(x), wide(w));
        let (t, n, m) = (x.rows, w.cols, w.rows);
        let mut y = vec![0.0; t * m];
        for r in 0..t {
            for o in 0..m {
                let mut acc = bias.map_or(0.0, |b| b[o].to_f64());
                for i in 0..n {
                    acc += xs[r * n + i] * ws[o * n + i];
                }
                y[r * m + o] = acc;
            }
        }
        Ok(narrow(t, m, y))
    }

    fn linear_backward(&self, w: &Mat<T>, d_y: &Mat<T>) -> Result<Mat<T>> {
        d_y.expect_shape("linear_backward d_y", d_y.rows, w.rows)?;
        let (gs, ws) = (wide(d_y), wide(w));
        let (t, n, m) = (d_y.rows, w.cols, w.rows);
        let mut dx = vec![0.0; t * n];
        for r in 0..t {
            for o in 0..m {
                let g = gs[r * m + o];
                for i in 0..n {
                    dx[r * n + i] += g * ws[o * n + i];
                }
            }
        }
        Ok(narrow(t, n, dx))
    }

    fn rms_norm(&self, x: &Mat<T>, weight: &[T], eps: f64) -> Result<Mat<T>> {
        check_len("rms_norm weight", weight.len(), x.cols)?;
        let d = x.cols;
        let xs = wide(x);
        let mut y = vec![0.0; xs.len()];
        for r in 0..x.rows {
            let row = &xs[r * d..(r + 1) * d];
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                y[r * d + i] = weight[i].to_f64() * row[i] * inv;
            }
        }
        Ok(narrow(x.rows, d, y))
    }

    fn rms_norm_backward(
        &self,
        x: &Mat<T>,
        weight: &[T],
        eps: f64,
        d_y: &Mat<T>,
    ) -> Result<Mat<T>> {
        check_len("rms_norm_backward weight", weight.len(), x.cols)?;
        check_same_shape("rms_norm_backward d_y", x, d_y)?;
        let d = x.cols;
        let (xs, gs) = (wide(x), wide(d_y));
        let mut dx = vec![0.0; xs.len()];
        for r in 0..x.rows {
            let row = &xs[r * d..(r + 1) * d];
            let g = &gs[r * d..(r + 1) * d];
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            // y_i = w_i x_i inv; dy/dx_j = w_j inv δ_ij − w_i x_i inv³ x_j / d.
            let dot: f64 = (0..d).map(|i| g[i] * weight[i].to_f64() * row[i]).sum();
            for j in 0..d {
                dx[r * d + j] =
                    g[j] * weight[j].to_f64() * inv - inv * inv * inv * row[j] * dot / d as f64;
            }
        }
        Ok(narrow(x.rows, d, dx))
    }

    fn rope(&self, x: &mut Mat<T>, params: &RopeParams<'_>, inverse: bool) -> Result<()> {
        params.check(x)?;
        let hd = params.head_dim;
        let half = hd / 2;
        let sign = if inverse { -1.0 } else { 1.0 };
        for r in 0..x.rows {
            let t = r % params.seq;
            for h in 0..x.cols / hd {
                for i in 0..half {
                    let angle = params.angle(t, i);
                    let (sin, cos) = (sign * angle.sin(), angle.cos());
                    let a = x.at(r, h * hd + i).to_f64();
                    let b = x.at(r, h * hd + i + half).to_f64();
                    *x.at_mut(r, h * hd + i) = T::from_f64(a * cos - b * sin);
                    *x.at_mut(r, h * hd + i + half) = T::from_f64(b * cos + a * sin);
                }
            }
        }
        Ok(())
    }

    fn attention(&self, q: &Mat<T>, k: &Mat<T>, v: &Mat<T>, s: &AttentionShape) -> Result<Mat<T>> {
        s.check(q, k, v)?;
        let (qs, ks, vs) = (wide(q), wide(k), wide(v));
        let d = s.head_dim;
        let (qc, kc) = (s.n_heads * d, s.n_kv_heads * d);
        let mut out = vec![0.0; qs.len()];
        for b in 0..s.batch {
            for t in 0..s.seq {
                for h in 0..s.n_heads {
                    let p = probs(&qs, &ks, s, b, t, h);
                    let kh = h / s.group();
                    for (u, pu) in p.iter().enumerate() {
                        for c in 0..d {
                            out[(b * s.seq + t) * qc + h * d + c] +=
                                pu * vs[(b * s.seq + u) * kc + kh * d + c];
                        }
                    }
                }
            }
        }
        Ok(narrow(q.rows, q.cols, out))
    }

    fn attention_backward(
        &self,
        q: &Mat<T>,
        k: &Mat<T>,
        v: &Mat<T>,
        d_out: &Mat<T>,
        s: &AttentionShape,
    ) -> Result<AttentionGrads<T>> {
        s.check(q, k, v)?;
        check_same_shape("attention_backward d_out", q, d_out)?;
        let (qs, ks, vs, gs) = (wide(q), wide(k), wide(v), wide(d_out));
        let d = s.head_dim;
        let (qc, kc) = (s.n_heads * d, s.n_kv_heads * d);
        let scale = 1.0 / (d as f64).sqrt();
        let mut dq = vec![0.0; qs.len()];
        let mut dk = vec![0.0; ks.len()];
        let mut dv = vec![0.0; vs.len()];
        for b in 0..s.batch {
            for t in 0..s.seq {
                for h in 0..s.n_heads {
                    let p = probs(&qs, &ks, s, b, t, h);
                    let kh = h / s.group();
                    let qo = (b * s.seq + t) * qc + h * d;
                    // dP_u = g · v_u ; dS_u = P_u (dP_u − Σ_w P_w dP_w).
                    let dp: Vec<f64> = (0..=t)
                        .map(|u| {
                            let vo = (b * s.seq + u) * kc + kh * d;
                            (0..d).map(|c| gs[qo + c] * vs[vo + c]).sum()
                        })
                        .collect();
                    let mean: f64 = p.iter().zip(&dp).map(|(a, c)| a * c).sum();
                    for u in 0..=t {
                        let ko = (b * s.seq + u) * kc + kh * d;
                        let ds = p[u] * (dp[u] - mean) * scale;
                        for c in 0..d {
                            dv[ko + c] += p[u] * gs[qo + c];
                            dq[qo + c] += ds * ks[ko + c];
                            dk[ko + c] += ds * qs[qo + c];
                        }
                    }
                }
            }
        }
        Ok(AttentionGrads {
            d_q: narrow(q.rows, q.cols, dq),
            d_k: narrow(k.rows, k.cols, dk),
            d_v: narrow(v.rows, v.cols, dv),
        })
    }

    fn swiglu(&self, gate: &Mat<T>, up: &Mat<T>) -> Result<Mat<T>> {
        check_same_shape("swiglu up", gate, up)?;
        let y = gate
            .data
            .iter()
            .zip(&up.data)
            .map(|(g, u)| silu(g.to_f64()) * u.to_f64())
            .collect();
        Ok(narrow(gate.rows, gate.cols, y))
    }

    fn swiglu_backward(
        &self,
        gate: &Mat<T>,
        up: &Mat<T>,
        d_y: &Mat<T>,
    ) -> Result<(Mat<T>, Mat<T>)> {
        check_same_shape("swiglu_backward up", gate, up)?;
        check_same_shape("swiglu_backward d_y", gate, d_y)?;
        let mut dg = Vec::with_capacity(gate.data.len());
        let mut du = Vec::with_capacity(gate.data.len());
        for ((g, u), dy) in gate.data.iter().zip(&up.data).zip(&d_y.data) {
            let (g, u, dy) = (g.to_f64(), u.to_f64(), dy.to_f64());
            let sig = 1.0 / (1.0 + (-g).exp());
            // d silu / dz = σ(z) (1 + z (1 − σ(z))).
            dg.push(dy * u * sig * (1.0 + g * (1.0 - sig)));
            du.push(dy * g * sig);
        }
        Ok((
            narrow(gate.rows, gate.cols, dg),
            narrow(gate.rows, gate.cols, du),
        ))
    }
}
