//! The CPU implementation of the layer-level model operations ([`yaqa_core::model_ops::ModelOps`]).
//!
//! Linear layers and the per-head attention products are faer f32 GEMMs; row-wise operations
//! (RMSNorm, RoPE, SwiGLU, softmax) are spread over rows with rayon. Reductions that meet the
//! residual stream's massive activations (RMSNorm's mean square) accumulate in f64; softmax row sums
//! accumulate in f64 too, which costs nothing next to the GEMMs.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use yaqa_core::Mat;
use yaqa_core::Result;
use yaqa_core::model_ops::{
    AttentionGrads, AttentionShape, ModelOps, RopeParams, check_len, check_same_shape,
};

use crate::Cpu;
use crate::gemm::matmul;

/// Rows per rayon task for the cheap row-wise operations.
const ROWS_PER_TASK: usize = 16;

/// `dst = lhs · rhs` (or `dst += ...`) on row-major views, with faer's rayon parallelism.
fn gemm(dst: MatMut<'_, f32>, accum: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, par: Par) {
    matmul(dst, accum, lhs, rhs, 1.0f32, par);
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, rows, cols)
}

fn row_major_mut(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(data, rows, cols)
}

/// A view of head `h`'s `seq × head_dim` block of sequence `b` inside a `(batch·seq) × (heads·head_dim)`
/// buffer.
fn head_view<'a>(
    data: &'a [f32],
    cols: usize,
    seq: usize,
    head_dim: usize,
    b: usize,
    h: usize,
) -> MatRef<'a, f32> {
    let start = b * seq * cols + h * head_dim;
    MatRef::from_row_major_slice_with_stride(&data[start..], seq, head_dim, cols)
}

/// Query rows per block of the causal attention. Block `r0..r1` is scored against keys `0..r1` only, so
/// the products skip the masked upper triangle: about half of the `4·T²·d` flops per head once a sequence
/// is several blocks long (at 2048 tokens attention is about 40% of SmolLM2's forward flops, and the
/// `T × T` score buffer of the whole head is never formed).
const QUERY_BLOCK: usize = 128;

/// The query blocks `(r0, r1)` of a sequence.
fn query_blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..seq)
        .step_by(QUERY_BLOCK)
        .map(move |r0| (r0, (r0 + QUERY_BLOCK).min(seq)))
}

/// Softmax of the first `live` scaled scores of `row` in place; the rest (keys after the query) are set
/// to zero.
fn softmax_prefix(row: &mut [f32], live: usize, scale: f32) {
    let (live, dead) = row.split_at_mut(live);
    let mut max = f32::NEG_INFINITY;
    for v in live.iter_mut() {
        *v *= scale;
        max = max.max(*v);
    }
    let mut total = 0.0f64;
    for v in live.iter_mut() {
        *v = (*v - max).exp();
        total += *v as f64;
    }
    let inv = (1.0 / total) as f32;
    for v in live.iter_mut() {
        *v *= inv;
    }
    dead.fill(0.0);
}

/// The probabilities of query rows `r0..r1` of one (sequence, query head) against keys `0..r1`,
/// transposed: column `i` (contiguous) is row `r0 + i` of `P`, zero past the query's own position.
fn block_probs_t(
    q: &Mat<f32>,
    k: &Mat<f32>,
    s: &AttentionShape,
    (b, h): (usize, usize),
    (r0, r1): (usize, usize),
) -> faer::Mat<f32> {
    let d = s.head_dim;
    let rows = r1 - r0;
    let qh = head_view(&q.data, q.cols, s.seq, d, b, h).subrows(r0, rows);
    let kh = head_view(&k.data, k.cols, s.seq, d, b, h / s.group()).subrows(0, r1);
    let mut pt = faer::Mat::<f32>::zeros(r1, rows);
    gemm(pt.as_mut(), Accum::Replace, kh, qh.transpose(), Par::Seq);
    let scale = 1.0 / (d as f32).sqrt();
    for i in 0..rows {
        softmax_prefix(pt.col_as_slice_mut(i), r0 + i + 1, scale);
    }
    pt
}

/// Writes (`add = false`) or adds the rows of `block` (`rows × head_dim`) into rows `r0..` of a row-major
/// `seq × head_dim` buffer.
fn put_rows(dst: &mut [f32], block: &faer::Mat<f32>, r0: usize, add: bool) {
    let d = block.ncols();
    for i in 0..block.nrows() {
        let row = &mut dst[(r0 + i) * d..(r0 + i + 1) * d];
        for (j, o) in row.iter_mut().enumerate() {
            *o = if add {
                *o + block[(i, j)]
            } else {
                block[(i, j)]
            };
        }
    }
}

/// Adds (or writes) a `seq × head_dim` block into head `h` of sequence `b` of a row-major buffer.
fn scatter_head(dst: &mut Mat<f32>, block: &[f32], seq: usize, d: usize, b: usize, h: usize) {
    for t in 0..seq {
        let row = dst.row_mut(b * seq + t);
        for (o, v) in row[h * d..(h + 1) * d]
            .iter_mut()
            .zip(&block[t * d..(t + 1) * d])
        {
            *o += *v;
        }
    }
}

impl ModelOps<f32> for Cpu {
    fn model_ops_name(&self) -> String {
        "cpu".into()
    }

    fn linear(&self, x: &Mat<f32>, w: &Mat<f32>, bias: Option<&[f32]>) -> Result<Mat<f32>> {
        x.expect_shape("linear x", x.rows, w.cols)?;
        let (t, n, m) = (x.rows, w.cols, w.rows);
        let mut y = Mat::zeros(t, m);
        gemm(
            row_major_mut(&mut y.data, t, m),
            Accum::Replace,
            row_major(&x.data, t, n),
            row_major(&w.data, m, n).transpose(),
            Par::rayon(0),
        );
        if let Some(b) = bias {
            check_len("linear bias", b.len(), m)?;
            y.data.par_chunks_mut(m).for_each(|row| {
                for (v, bv) in row.iter_mut().zip(b) {
                    *v += *bv;
                }
            });
        }
        Ok(y)
    }

    fn linear_backward(&self, w: &Mat<f32>, d_y: &Mat<f32>) -> Result<Mat<f32>> {
        d_y.expect_shape("linear_backward d_y", d_y.rows, w.rows)?;
        let (t, n, m) = (d_y.rows, w.cols, w.rows);
        let mut dx = Mat::zeros(t, n);
        gemm(
            row_major_mut(&mut dx.data, t, n),
            Accum::Replace,
            row_major(&d_y.data, t, m),
            row_major(&w.data, m, n),
            Par::rayon(0),
        );
        Ok(dx)
    }

    fn rms_norm(&self, x: &Mat<f32>, weight: &[f32], eps: f64) -> Result<Mat<f32>> {
        check_len("rms_norm weight", weight.len(), x.cols)?;
        let d = x.cols;
        let mut y = Mat::zeros(x.rows, d);
        if d == 0 {
            return Ok(y);
        }
        y.data
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.data.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
                    let inv = (1.0 / (ms + eps).sqrt()) as f32;
                    for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
                        *o = w * (v * inv);
                    }
                }
            });
        Ok(y)
    }

    fn rms_norm_backward(
        &self,
        x: &Mat<f32>,
        weight: &[f32],
        eps: f64,
        d_y: &Mat<f32>,
    ) -> Result<Mat<f32>> {
        check_len("rms_norm_backward weight", weight.len(), x.cols)?;
        check_same_shape("rms_norm_backward d_y", x, d_y)?;
        let d = x.cols;
        let mut dx = Mat::zeros(x.rows, d);
        if d == 0 {
            return Ok(dx);
        }
        dx.data
            .par_chunks_mut(d)
            .zip(x.data.par_chunks(d))
            .zip(d_y.data.par_chunks(d))
            .for_each(|((o, xr), gr)| {
                let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps).sqrt();
                let dot: f64 = (0..d)
                    .map(|i| gr[i] as f64 * weight[i] as f64 * xr[i] as f64)
                    .sum();
                let coef = (inv * inv * inv * dot / d as f64) as f32;
                let inv = inv as f32;
                for j in 0..d {
                    o[j] = gr[j] * weight[j] * inv - coef * xr[j];
                }
            });
        Ok(dx)
    }

    fn rope(&self, x: &mut Mat<f32>, params: &RopeParams<'_>, inverse: bool) -> Result<()> {
        params.check(x)?;
        let hd = params.head_dim;
        let half = hd / 2;
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut cos = vec![0.0f32; params.seq * half];
        let mut sin = vec![0.0f32; params.seq * half];
        for t in 0..params.seq {
            for i in 0..half {
                let angle = params.angle(t, i);
                cos[t * half + i] = angle.cos() as f32;
                sin[t * half + i] = (sign * angle.sin()) as f32;
            }
        }
        let cols = x.cols;
        if cols == 0 {
            return Ok(());
        }
        x.data
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| {
                let t = r % params.seq;
                let (c, s) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                for head in row.chunks_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * c[i] - b * s[i];
                        hi[i] = b * c[i] + a * s[i];
                    }
                }
            });
        Ok(())
    }

    fn attention(
        &self,
        q: &Mat<f32>,
        k: &Mat<f32>,
        v: &Mat<f32>,
        s: &AttentionShape,
    ) -> Result<Mat<f32>> {
        s.check(q, k, v)?;
        let d = s.head_dim;
        let pairs: Vec<(usize, usize)> = (0..s.batch)
            .flat_map(|b| (0..s.n_heads).map(move |h| (b, h)))
            .collect();
        let blocks: Vec<Vec<f32>> = pairs
            .par_iter()
            .map(|&(b, h)| {
                let vh = head_view(&v.data, v.cols, s.seq, d, b, h / s.group());
                let mut o = vec![0.0f32; s.seq * d];
                for (r0, r1) in query_blocks(s.seq) {
                    let pt = block_probs_t(q, k, s, (b, h), (r0, r1));
                    let mut ob = faer::Mat::<f32>::zeros(r1 - r0, d);
                    gemm(
                        ob.as_mut(),
                        Accum::Replace,
                        pt.as_ref().transpose(),
                        vh.subrows(0, r1),
                        Par::Seq,
                    );
                    put_rows(&mut o, &ob, r0, false);
                }
                o
            })
            .collect();
        let mut out = Mat::zeros(q.rows, q.cols);
        for (&(b, h), block) in pairs.iter().zip(&blocks) {
            scatter_head(&mut out, block, s.seq, d, b, h);
        }
        Ok(out)
    }

    fn attention_backward(
        &self,
        q: &Mat<f32>,
        k: &Mat<f32>,
        v: &Mat<f32>,
        d_out: &Mat<f32>,
        s: &AttentionShape,
    ) -> Result<AttentionGrads<f32>> {
        s.check(q, k, v)?;
        check_same_shape("attention_backward d_out", q, d_out)?;
        let d = s.head_dim;
        let n = s.seq;
        let scale = 1.0 / (d as f32).sqrt();
        let pairs: Vec<(usize, usize)> = (0..s.batch)
            .flat_map(|b| (0..s.n_heads).map(move |h| (b, h)))
            .collect();
        let blocks: Vec<[Vec<f32>; 3]> = pairs
            .par_iter()
            .map(|&(b, h)| {
                let kh = h / s.group();
                let g = head_view(&d_out.data, d_out.cols, n, d, b, h);
                let qh = head_view(&q.data, q.cols, n, d, b, h);
                let kv = head_view(&k.data, k.cols, n, d, b, kh);
                let vh = head_view(&v.data, v.cols, n, d, b, kh);
                let mut dq = vec![0.0f32; n * d];
                let mut dk = faer::Mat::<f32>::zeros(n, d);
                let mut dv = faer::Mat::<f32>::zeros(n, d);
                for (r0, r1) in query_blocks(n) {
                    let rows = r1 - r0;
                    let pt = block_probs_t(q, k, s, (b, h), (r0, r1));
                    let gb = g.subrows(r0, rows);
                    // dPᵀ = V gᵀ (column i is row r0 + i of dP), then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale.
                    let mut dst = faer::Mat::<f32>::zeros(r1, rows);
                    gemm(
                        dst.as_mut(),
                        Accum::Replace,
                        vh.subrows(0, r1),
                        gb.transpose(),
                        Par::Seq,
                    );
                    for i in 0..rows {
                        let live = r0 + i + 1;
                        let pc = &pt.col_as_slice(i)[..live];
                        let dc = dst.col_as_slice_mut(i);
                        let mean: f64 = pc
                            .iter()
                            .zip(&dc[..live])
                            .map(|(&p, &x)| p as f64 * x as f64)
                            .sum();
                        let mean = mean as f32;
                        for (x, &p) in dc[..live].iter_mut().zip(pc) {
                            *x = p * (*x - mean) * scale;
                        }
                        dc[live..].fill(0.0);
                    }
                    // dQ rows r0..r1 = dS K; dK rows 0..r1 += dSᵀ Q_block; dV rows 0..r1 += Pᵀ dO_block.
                    let mut dqb = faer::Mat::<f32>::zeros(rows, d);
                    gemm(
                        dqb.as_mut(),
                        Accum::Replace,
                        dst.as_ref().transpose(),
                        kv.subrows(0, r1),
                        Par::Seq,
                    );
                    put_rows(&mut dq, &dqb, r0, false);
                    gemm(
                        dk.as_mut().subrows_mut(0, r1),
                        Accum::Add,
                        dst.as_ref(),
                        qh.subrows(r0, rows),
                        Par::Seq,
                    );
                    gemm(
                        dv.as_mut().subrows_mut(0, r1),
                        Accum::Add,
                        pt.as_ref(),
                        gb,
                        Par::Seq,
                    );
                }
                let mut dk_rows = vec![0.0f32; n * d];
                let mut dv_rows = vec![0.0f32; n * d];
                put_rows(&mut dk_rows, &dk, 0, false);
                put_rows(&mut dv_rows, &dv, 0, false);
                [dq, dk_rows, dv_rows]
            })
            .collect();
        let mut d_q = Mat::zeros(q.rows, q.cols);
        let mut d_k = Mat::zeros(k.rows, k.cols);
        let mut d_v = Mat::zeros(v.rows, v.cols);
        for (&(b, h), [dq, dk, dv]) in pairs.iter().zip(&blocks) {
            let kh = h / s.group();
            scatter_head(&mut d_q, dq, n, d, b, h);
            scatter_head(&mut d_k, dk, n, d, b, kh);
            scatter_head(&mut d_v, dv, n, d, b, kh);
        }
        Ok(AttentionGrads { d_q, d_k, d_v })
    }

    fn swiglu(&self, gate: &Mat<f32>, up: &Mat<f32>) -> Result<Mat<f32>> {
        check_same_shape("swiglu up", gate, up)?;
        let mut y = Mat::zeros(gate.rows, gate.cols);
        y.data
            .par_iter_mut()
            .zip(gate.data.par_iter().zip(&up.data))
            .for_each(|(o, (&g, &u))| {
                *o = g / (1.0 + (-g).exp()) * u;
            });
        Ok(y)
    }

    fn swiglu_backward(
        &self,
        gate: &Mat<f32>,
        up: &Mat<f32>,
        d_y: &Mat<f32>,
    ) -> Result<(Mat<f32>, Mat<f32>)> {
        check_same_shape("swiglu_backward up", gate, up)?;
        check_same_shape("swiglu_backward d_y", gate, d_y)?;
        let mut dg = Mat::zeros(gate.rows, gate.cols);
        let mut du = Mat::zeros(gate.rows, gate.cols);
        dg.data
            .par_iter_mut()
            .zip(du.data.par_iter_mut())
            .zip(gate.data.par_iter().zip(&up.data).zip(&d_y.data))
            .for_each(|((a, c), ((&g, &u), &dy))| {
                let sig = 1.0 / (1.0 + (-g).exp());
                *a = dy * u * sig * (1.0 + g * (1.0 - sig));
                *c = dy * g * sig;
            });
        Ok((dg, du))
    }
}

#[cfg(test)]
mod tests {
    //! The CPU ops against the f64 reference on small, structured inputs (GQA, two sequences).
    use super::*;
    use yaqa_core::Rng;
    use yaqa_core::reference::Reference;

    fn structured(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
        let mut rng = Rng::new(seed);
        // Correlated columns with a decaying scale, plus a per-row offset (never all zeros).
        Mat::from_fn(rows, cols, |i, j| {
            let base = ((i * 7 + j * 3) as f32 * 0.37).sin();
            base / (1.0 + j as f32 * 0.1) + 0.5 * rng.normal() as f32
        })
    }

    fn rel(a: &Mat<f32>, b: &Mat<f32>) -> f64 {
        yaqa_core::mat::rel_diff_fro(&a.to_f64().data, &b.to_f64().data)
    }

    /// Normwise budget for f32 against f64: f32 rounding over sums of a few dozen terms (measured ≤ 3e-7).
    const TOL: f64 = 1e-5;

    /// A sequence of several query blocks (the last one partial): the blocked causal products must equal
    /// the reference's whole-sequence attention, forward and backward.
    #[test]
    fn attention_across_query_blocks() {
        let cpu = Cpu::default();
        let s = AttentionShape {
            batch: 1,
            seq: 2 * QUERY_BLOCK + 37,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
        };
        let q = structured(s.seq, 16, 11);
        let k = structured(s.seq, 8, 12);
        let v = structured(s.seq, 8, 13);
        let g = structured(s.seq, 16, 14);
        let a = ModelOps::<f32>::attention(&cpu, &q, &k, &v, &s).unwrap();
        let b = ModelOps::<f32>::attention(&Reference, &q, &k, &v, &s).unwrap();
        assert!(rel(&a, &b) < TOL, "attention {}", rel(&a, &b));
        let ga = ModelOps::<f32>::attention_backward(&cpu, &q, &k, &v, &g, &s).unwrap();
        let gb = ModelOps::<f32>::attention_backward(&Reference, &q, &k, &v, &g, &s).unwrap();
        for (x, y, name) in [
            (&ga.d_q, &gb.d_q, "dq"),
            (&ga.d_k, &gb.d_k, "dk"),
            (&ga.d_v, &gb.d_v, "dv"),
        ] {
            assert!(rel(x, y) < TOL, "{name} {}", rel(x, y));
        }
    }

    #[test]
    fn ops_match_reference() {
        let cpu = Cpu::default();
        let r = Reference;
        let s = AttentionShape {
            batch: 2,
            seq: 7,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
        };
        let rows = s.batch * s.seq;
        let q = structured(rows, 32, 1);
        let k = structured(rows, 16, 2);
        let v = structured(rows, 16, 3);
        let g = structured(rows, 32, 4);
        let a = ModelOps::<f32>::attention(&cpu, &q, &k, &v, &s).unwrap();
        let b = ModelOps::<f32>::attention(&r, &q, &k, &v, &s).unwrap();
        assert!(rel(&a, &b) < TOL, "attention {}", rel(&a, &b));
        let ga = ModelOps::<f32>::attention_backward(&cpu, &q, &k, &v, &g, &s).unwrap();
        let gb = ModelOps::<f32>::attention_backward(&r, &q, &k, &v, &g, &s).unwrap();
        for (x, y, name) in [
            (&ga.d_q, &gb.d_q, "dq"),
            (&ga.d_k, &gb.d_k, "dk"),
            (&ga.d_v, &gb.d_v, "dv"),
        ] {
            assert!(rel(x, y) < TOL, "{name} {}", rel(x, y));
        }

        let w = structured(24, 32, 5);
        let bias: Vec<f32> = (0..24).map(|i| i as f32 * 0.1 - 1.0).collect();
        let la = ModelOps::<f32>::linear(&cpu, &q, &w, Some(&bias)).unwrap();
        let lb = ModelOps::<f32>::linear(&r, &q, &w, Some(&bias)).unwrap();
        assert!(rel(&la, &lb) < TOL);
        let dy = structured(rows, 24, 6);
        let da = ModelOps::<f32>::linear_backward(&cpu, &w, &dy).unwrap();
        let db = ModelOps::<f32>::linear_backward(&r, &w, &dy).unwrap();
        assert!(rel(&da, &db) < TOL);

        let weight: Vec<f32> = (0..32).map(|i| 0.5 + i as f32 * 0.05).collect();
        let mut big = q.clone();
        big.data[0] = 900.0; // a massive activation, as at position 0 of the real model
        let na = ModelOps::<f32>::rms_norm(&cpu, &big, &weight, 1e-5).unwrap();
        let nb = ModelOps::<f32>::rms_norm(&r, &big, &weight, 1e-5).unwrap();
        assert!(rel(&na, &nb) < TOL);
        let nga = ModelOps::<f32>::rms_norm_backward(&cpu, &big, &weight, 1e-5, &g).unwrap();
        let ngb = ModelOps::<f32>::rms_norm_backward(&r, &big, &weight, 1e-5, &g).unwrap();
        assert!(rel(&nga, &ngb) < TOL);

        let inv_freq: Vec<f32> = (0..4).map(|i| 10000f32.powf(-(i as f32) / 4.0)).collect();
        let rp = RopeParams {
            seq: s.seq,
            head_dim: 8,
            inv_freq: &inv_freq,
        };
        let (mut ra, mut rb) = (q.clone(), q.clone());
        ModelOps::<f32>::rope(&cpu, &mut ra, &rp, false).unwrap();
        ModelOps::<f32>::rope(&r, &mut rb, &rp, false).unwrap();
        assert!(rel(&ra, &rb) < TOL);
        assert!(rel(&ra, &q) > 1e-2, "rope must move something");
        ModelOps::<f32>::rope_backward(&cpu, &mut ra, &rp).unwrap();
        assert!(rel(&ra, &q) < TOL, "inverse rope must undo rope");

        let (sa, sb) = (
            ModelOps::<f32>::swiglu(&cpu, &q, &g).unwrap(),
            ModelOps::<f32>::swiglu(&r, &q, &g).unwrap(),
        );
        assert!(rel(&sa, &sb) < TOL);
        assert!(
            ModelOps::<f32>::swiglu_backward(&cpu, &q, &g, &k).is_err(),
            "a d_y of the wrong shape must be rejected"
        );
        let sga = ModelOps::<f32>::swiglu_backward(&cpu, &q, &g, &dy_like(&q)).unwrap();
        let sgb = ModelOps::<f32>::swiglu_backward(&r, &q, &g, &dy_like(&q)).unwrap();
        assert!(rel(&sga.0, &sgb.0) < TOL && rel(&sga.1, &sgb.1) < TOL);
    }

    fn dy_like(m: &Mat<f32>) -> Mat<f32> {
        structured(m.rows, m.cols, 9)
    }
}
