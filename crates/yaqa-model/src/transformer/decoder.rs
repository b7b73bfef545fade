//! The Llama-family decoder forward and backward over [`ModelOps`], with the Fisher loss of DESIGN.md §1.
//!
//! A batch is `batch` independent sequences of `seq` tokens (positions `0..seq` each), stored as
//! `batch · seq` rows. The forward keeps nothing but what the caller asks to observe; the backward
//! stores each block's residual input and recomputes the block on the way back (activation
//! checkpointing), so memory stays at one block's activations whatever the depth.
//!
//! The backward hands every linear layer's `(x, g)` pair to a visitor: `x` is the layer input (`t × n`),
//! `g = ∂ℓ/∂y` (`t × m`), so the weight gradient is `gᵀ x` and sketches can be accumulated on the fly
//! (DESIGN.md §2). The loss is the mean cross-entropy over all positions against labels sampled from the
//! model's own softmax with a recorded seed ([`Transformer::sample_labels`]).

use yaqa_core::Mat;
use yaqa_core::Rng;
use yaqa_core::model_ops::{AttentionShape, ModelOps, Real, RopeParams};

use crate::error::{ModelError, Result};
use crate::transformer::weights::{LayerWeights, LinearKind, Model};

/// Receives `(layer, kind, x, g)` for every linear layer during a backward pass.
pub type PairVisitor<'v, T> = dyn FnMut(usize, LinearKind, &Mat<T>, &Mat<T>) -> Result<()> + 'v;

/// Receives `(layer, kind, x)` for every linear layer during a forward pass.
pub type InputVisitor<'v, T> = dyn FnMut(usize, LinearKind, &Mat<T>) -> Result<()> + 'v;

/// What [`Transformer::fisher_backward`] returns: the mean cross-entropy and the sampled labels.
#[derive(Clone, Debug, PartialEq)]
pub struct FisherBackward {
    pub loss: f64,
    /// One label per position (`batch · seq`, row order).
    pub labels: Vec<u32>,
}

/// Rows of logits materialised at a time (bounds memory at `HEAD_CHUNK × vocab` values).
pub const HEAD_CHUNK: usize = 128;

/// A model bound to the operations that run it.
#[derive(Debug)]
pub struct Transformer<'a, T: Real, B: ModelOps<T>> {
    pub model: &'a Model<T>,
    pub ops: &'a B,
    inv_freq: Vec<f32>,
}

/// Everything one block computes, kept for its backward.
struct LayerTrace<T> {
    xn1: Mat<T>,
    q_lin: Mat<T>,
    k_lin: Mat<T>,
    q: Mat<T>,
    k: Mat<T>,
    v: Mat<T>,
    attn: Mat<T>,
    h_mid: Mat<T>,
    xn2: Mat<T>,
    gate: Mat<T>,
    up: Mat<T>,
    act: Mat<T>,
    out: Mat<T>,
}

fn add<T: Real>(a: &Mat<T>, b: &Mat<T>) -> Mat<T> {
    Mat {
        rows: a.rows,
        cols: a.cols,
        data: a.data.iter().zip(&b.data).map(|(&x, &y)| x + y).collect(),
    }
}

fn add_into<T: Real>(a: &mut Mat<T>, b: &Mat<T>) {
    for (x, &y) in a.data.iter_mut().zip(&b.data) {
        *x += y;
    }
}

/// The same buffer seen with another row length (`rows · cols` must not change).
fn reshape<T>(m: Mat<T>, rows: usize, cols: usize) -> Mat<T> {
    debug_assert_eq!(m.data.len(), rows * cols);
    Mat {
        rows,
        cols,
        data: m.data,
    }
}

/// Rows `start..end` of `m` as a new matrix.
pub fn rows_of<T: Copy>(m: &Mat<T>, start: usize, end: usize) -> Mat<T> {
    Mat {
        rows: end - start,
        cols: m.cols,
        data: m.data[start * m.cols..end * m.cols].to_vec(),
    }
}

/// `log Σ exp(row)` in f64.
pub fn logsumexp<T: Real>(row: &[T]) -> f64 {
    let max = row
        .iter()
        .map(|v| v.to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    max + row
        .iter()
        .map(|v| (v.to_f64() - max).exp())
        .sum::<f64>()
        .ln()
}

impl<'a, T: Real, B: ModelOps<T>> Transformer<'a, T, B> {
    /// Binds `model` to `ops`.
    pub fn new(model: &'a Model<T>, ops: &'a B) -> Self {
        Self {
            model,
            ops,
            inv_freq: model.config.inv_freq(),
        }
    }

    /// Checks that `ids` split into `batch` sequences the model can take; returns their length.
    pub(crate) fn check_batch(&self, ids: &[u32], batch: usize) -> Result<usize> {
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} token ids do not split into {batch} equal sequences",
                ids.len()
            )));
        }
        let seq = ids.len() / batch;
        let c = &self.model.config;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} ≥ vocab size {}",
                c.vocab_size
            )));
        }
        if let Some(w) = c.sliding_window
            && seq > w
        {
            return Err(ModelError::Input(format!(
                "sequence length {seq} exceeds the sliding window {w}, which is not implemented"
            )));
        }
        Ok(seq)
    }

    fn attention_shape(&self, batch: usize, seq: usize) -> AttentionShape {
        let c = &self.model.config;
        AttentionShape {
            batch,
            seq,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        }
    }

    fn rope(&self, seq: usize) -> RopeParams<'_> {
        RopeParams {
            seq,
            head_dim: self.model.config.head_dim,
            inv_freq: &self.inv_freq,
        }
    }

    /// The token embeddings of `ids` (`ids.len() × hidden`).
    pub fn embed(&self, ids: &[u32]) -> Mat<T> {
        let e = &self.model.embed;
        let mut x = Mat::zeros(ids.len(), e.cols);
        for (r, &id) in ids.iter().enumerate() {
            x.row_mut(r).copy_from_slice(e.row(id as usize));
        }
        x
    }

    /// Per-head RMSNorm (Qwen3's q/k norm) on a `rows × (heads · head_dim)` matrix.
    fn head_norm(&self, m: Mat<T>, weight: &[T]) -> Result<Mat<T>> {
        let (rows, cols) = (m.rows, m.cols);
        let hd = self.model.config.head_dim;
        let flat = reshape(m, rows * cols / hd, hd);
        let y = self
            .ops
            .rms_norm(&flat, weight, self.model.config.rms_norm_eps)?;
        Ok(reshape(y, rows, cols))
    }

    /// The attention half of a block up to the attention output (before `o_proj`), from the normed
    /// input `xn1`: `(q_lin, k_lin, q, k, v, attn)`.
    #[allow(clippy::type_complexity)]
    fn attention_part(
        &self,
        l: &LayerWeights<T>,
        xn1: &Mat<T>,
        batch: usize,
        seq: usize,
    ) -> Result<(Mat<T>, Mat<T>, Mat<T>, Mat<T>, Mat<T>, Mat<T>)> {
        let ops = self.ops;
        let q_lin = ops.linear(xn1, &l.q_proj, l.q_bias.as_deref())?;
        let k_lin = ops.linear(xn1, &l.k_proj, l.k_bias.as_deref())?;
        let v = ops.linear(xn1, &l.v_proj, l.v_bias.as_deref())?;
        let (mut q, mut k) = match (&l.q_norm, &l.k_norm) {
            (Some(qn), Some(kn)) => (
                self.head_norm(q_lin.clone(), qn)?,
                self.head_norm(k_lin.clone(), kn)?,
            ),
            _ => (q_lin.clone(), k_lin.clone()),
        };
        let rope = self.rope(seq);
        ops.rope(&mut q, &rope, false)?;
        ops.rope(&mut k, &rope, false)?;
        let attn = ops.attention(&q, &k, &v, &self.attention_shape(batch, seq))?;
        Ok((q_lin, k_lin, q, k, v, attn))
    }

    /// The residual after attention, `h_mid = x + attn o_projᵀ`, and its norm `xn2`.
    fn mid_part(&self, l: &LayerWeights<T>, x: &Mat<T>, attn: &Mat<T>) -> Result<(Mat<T>, Mat<T>)> {
        let h_mid = add(x, &self.ops.linear(attn, &l.o_proj, None)?);
        let xn2 = self
            .ops
            .rms_norm(&h_mid, &l.post_norm, self.model.config.rms_norm_eps)?;
        Ok((h_mid, xn2))
    }

    /// The MLP's gate, up and SwiGLU activation from `xn2`.
    fn mlp_part(&self, l: &LayerWeights<T>, xn2: &Mat<T>) -> Result<(Mat<T>, Mat<T>, Mat<T>)> {
        let gate = self.ops.linear(xn2, &l.gate_proj, None)?;
        let up = self.ops.linear(xn2, &l.up_proj, None)?;
        let act = self.ops.swiglu(&gate, &up)?;
        Ok((gate, up, act))
    }

    fn layer_trace(
        &self,
        l: &LayerWeights<T>,
        x: &Mat<T>,
        batch: usize,
        seq: usize,
    ) -> Result<LayerTrace<T>> {
        let ops = self.ops;
        let eps = self.model.config.rms_norm_eps;
        let xn1 = ops.rms_norm(x, &l.input_norm, eps)?;
        let (q_lin, k_lin, q, k, v, attn) = self.attention_part(l, &xn1, batch, seq)?;
        let (h_mid, xn2) = self.mid_part(l, x, &attn)?;
        let (gate, up, act) = self.mlp_part(l, &xn2)?;
        let out = add(&h_mid, &ops.linear(&act, &l.down_proj, None)?);
        Ok(LayerTrace {
            xn1,
            q_lin,
            k_lin,
            q,
            k,
            v,
            attn,
            h_mid,
            xn2,
            gate,
            up,
            act,
            out,
        })
    }

    /// The input of linear layer `kind` of block `l` when the block is fed the residual stream `x` of
    /// `batch` sequences: only the part of the block before that layer runs (the true-sequential
    /// pipeline feeds each group of layers the inputs of a block whose earlier groups are already
    /// quantized). q, k and v share one input, as do gate and up.
    ///
    /// **Shapes**: `x` is `(batch · seq) × hidden`; the result `(batch · seq) × n` of `kind`.
    /// **Errors**: a ragged batch, operation shape errors.
    pub fn linear_input(
        &self,
        l: &LayerWeights<T>,
        x: &Mat<T>,
        batch: usize,
        kind: LinearKind,
    ) -> Result<Mat<T>> {
        if batch == 0 || !x.rows.is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} rows do not split into {batch} equal sequences",
                x.rows
            )));
        }
        let seq = x.rows / batch;
        let xn1 = self
            .ops
            .rms_norm(x, &l.input_norm, self.model.config.rms_norm_eps)?;
        if matches!(kind, LinearKind::Q | LinearKind::K | LinearKind::V) {
            return Ok(xn1);
        }
        let attn = self.attention_part(l, &xn1, batch, seq)?.5;
        if kind == LinearKind::O {
            return Ok(attn);
        }
        let xn2 = self.mid_part(l, x, &attn)?.1;
        if matches!(kind, LinearKind::Gate | LinearKind::Up) {
            return Ok(xn2);
        }
        Ok(self.mlp_part(l, &xn2)?.2)
    }

    /// Runs the decoder over `batch` sequences of equal length and returns the final hidden states after
    /// the last RMSNorm (`(batch · seq) × hidden`).
    ///
    /// `observe(s, h)` sees the residual stream: `s = 0` the embeddings, `s = i + 1` the output of block `i`
    /// (before the final norm).
    ///
    /// **Errors**: ids out of range, a ragged batch, operation shape errors.
    pub fn forward(
        &self,
        ids: &[u32],
        batch: usize,
        observe: &mut dyn FnMut(usize, &Mat<T>),
    ) -> Result<Mat<T>> {
        let seq = self.check_batch(ids, batch)?;
        let mut h = self.embed(ids);
        observe(0, &h);
        for i in 0..self.model.layers.len() {
            h = self
                .layer_trace(&*self.model.layers.get(i)?, &h, batch, seq)?
                .out;
            observe(i + 1, &h);
        }
        Ok(self
            .ops
            .rms_norm(&h, &self.model.norm, self.model.config.rms_norm_eps)?)
    }

    /// Runs one block `l` on the residual stream `x` of `batch` sequences (`(batch · seq) × hidden`) and
    /// returns the block's output: one step of [`Transformer::forward`], for callers that run many
    /// batches through one block before the next (evaluation of streamed models).
    ///
    /// **Errors**: a ragged batch, operation shape errors.
    pub fn block_forward(&self, l: &LayerWeights<T>, x: &Mat<T>, batch: usize) -> Result<Mat<T>> {
        if batch == 0 || !x.rows.is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} rows do not split into {batch} equal sequences",
                x.rows
            )));
        }
        Ok(self.layer_trace(l, x, batch, x.rows / batch)?.out)
    }

    /// The final RMSNorm of the residual stream after the last block.
    pub fn final_norm(&self, h: &Mat<T>) -> Result<Mat<T>> {
        Ok(self
            .ops
            .rms_norm(h, &self.model.norm, self.model.config.rms_norm_eps)?)
    }

    /// Runs the decoder like [`Transformer::forward`] and hands every linear layer's input of the
    /// model's selected blocks ([`Model::selected`]) to `visit(layer, kind, x)` as soon as its block has
    /// run, stopping after the last selected block (`x` is `(batch · seq) × n`; q, k and v share
    /// one input, as do gate and up, and each is visited once per kind). Only one block's activations are
    /// alive at a time, so `Σ x xᵀ` factors (DESIGN.md §2) can be accumulated without a backward pass.
    ///
    /// **Errors**: as [`Transformer::forward`], plus whatever `visit` returns.
    pub fn forward_linear_inputs(
        &self,
        ids: &[u32],
        batch: usize,
        visit: &mut InputVisitor<'_, T>,
    ) -> Result<()> {
        let seq = self.check_batch(ids, batch)?;
        let mut h = self.embed(ids);
        for i in 0..self.model.selected.end.min(self.model.layers.len()) {
            let tr = self.layer_trace(&*self.model.layers.get(i)?, &h, batch, seq)?;
            if i < self.model.selected.start {
                h = tr.out;
                continue;
            }
            for kind in LinearKind::ALL {
                let x = match kind {
                    LinearKind::Q | LinearKind::K | LinearKind::V => &tr.xn1,
                    LinearKind::O => &tr.attn,
                    LinearKind::Gate | LinearKind::Up => &tr.xn2,
                    LinearKind::Down => &tr.act,
                };
                visit(i, kind, x)?;
            }
            h = tr.out;
        }
        Ok(())
    }

    /// Computes logits `HEAD_CHUNK` rows at a time from final hidden states and hands each block to
    /// `visit(first_row, logits)`.
    pub fn logits_chunks(
        &self,
        hidden: &Mat<T>,
        visit: &mut dyn FnMut(usize, &Mat<T>) -> Result<()>,
    ) -> Result<()> {
        let head = self.model.head();
        let mut start = 0;
        while start < hidden.rows {
            let end = (start + HEAD_CHUNK).min(hidden.rows);
            let logits = self.ops.linear(&rows_of(hidden, start, end), head, None)?;
            visit(start, &logits)?;
            start = end;
        }
        Ok(())
    }

    /// Labels `y_t ~ softmax(logits_t)` for every row of `hidden`, from the stream `Rng::derive(seed,
    /// "fisher-labels")`, one uniform draw per position in row order (reproducible from the seed).
    pub fn sample_labels(&self, hidden: &Mat<T>, seed: u64) -> Result<Vec<u32>> {
        let mut rng = Rng::derive(seed, "fisher-labels");
        let mut labels = Vec::with_capacity(hidden.rows);
        self.logits_chunks(hidden, &mut |_, logits| {
            for r in 0..logits.rows {
                let row = logits.row(r);
                let max = row
                    .iter()
                    .map(|v| v.to_f64())
                    .fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = row
                    .iter()
                    .map(|v| ((v.to_f64() - max) as f32).exp() as f64)
                    .collect();
                let total: f64 = weights.iter().sum();
                let target = rng.next_f64() * total;
                let mut acc = 0.0;
                let mut pick = weights.len() - 1;
                for (j, w) in weights.iter().enumerate() {
                    acc += w;
                    if acc > target {
                        pick = j;
                        break;
                    }
                }
                labels.push(pick as u32);
            }
            Ok(())
        })?;
        Ok(labels)
    }

    /// Mean cross-entropy of `labels` (one per position) over all positions.
    pub fn cross_entropy(&self, ids: &[u32], batch: usize, labels: &[u32]) -> Result<f64> {
        let hidden = self.forward(ids, batch, &mut |_, _| {})?;
        self.check_labels(labels, hidden.rows)?;
        let mut total = 0.0;
        self.logits_chunks(&hidden, &mut |start, logits| {
            for r in 0..logits.rows {
                let row = logits.row(r);
                total += logsumexp(row) - row[labels[start + r] as usize].to_f64();
            }
            Ok(())
        })?;
        Ok(total / hidden.rows as f64)
    }

    fn check_labels(&self, labels: &[u32], rows: usize) -> Result<()> {
        if labels.len() != rows {
            return Err(ModelError::Input(format!(
                "{} labels for {rows} positions",
                labels.len()
            )));
        }
        if let Some(&bad) = labels
            .iter()
            .find(|&&l| l as usize >= self.model.config.vocab_size)
        {
            return Err(ModelError::Input(format!("label {bad} out of range")));
        }
        Ok(())
    }

    /// Forward and backward of the mean cross-entropy against `labels`; calls
    /// `visit(layer, kind, x, g)` for every linear layer of the model's selected blocks
    /// ([`Model::selected`]), last block first, and stops below the first of them. Returns the loss.
    pub fn backward(
        &self,
        ids: &[u32],
        batch: usize,
        labels: &[u32],
        visit: &mut PairVisitor<'_, T>,
    ) -> Result<f64> {
        let seq = self.check_batch(ids, batch)?;
        let c = &self.model.config;
        let ops = self.ops;
        let eps = c.rms_norm_eps;
        // Forward, keeping each block's residual input.
        let mut inputs = Vec::with_capacity(self.model.layers.len());
        let mut h = self.embed(ids);
        for i in 0..self.model.layers.len() {
            let out = self
                .layer_trace(&*self.model.layers.get(i)?, &h, batch, seq)?
                .out;
            inputs.push(std::mem::replace(&mut h, out));
        }
        let hidden = ops.rms_norm(&h, &self.model.norm, eps)?;
        self.check_labels(labels, hidden.rows)?;
        // Loss and ∂ℓ/∂hidden, one chunk of logits at a time: d_logits = (softmax − onehot) / N.
        let n = hidden.rows as f64;
        let head = self.model.head();
        let mut d_hidden = Mat::zeros(hidden.rows, hidden.cols);
        let mut loss = 0.0;
        self.logits_chunks(&hidden, &mut |start, logits| {
            let mut d_logits = Mat::zeros(logits.rows, logits.cols);
            for r in 0..logits.rows {
                let row = logits.row(r);
                let lse = logsumexp(row);
                let label = labels[start + r] as usize;
                loss += lse - row[label].to_f64();
                for (d, v) in d_logits.row_mut(r).iter_mut().zip(row) {
                    *d = T::from_f64((v.to_f64() - lse).exp() / n);
                }
                *d_logits.at_mut(r, label) = T::from_f64(d_logits.at(r, label).to_f64() - 1.0 / n);
            }
            let d_h = ops.linear_backward(head, &d_logits)?;
            d_hidden.data[start * hidden.cols..start * hidden.cols + d_h.data.len()]
                .copy_from_slice(&d_h.data);
            Ok(())
        })?;
        let mut d = ops.rms_norm_backward(&h, &self.model.norm, eps, &d_hidden)?;
        // Blocks, last first.
        let shape = self.attention_shape(batch, seq);
        let rope = self.rope(seq);
        let lowest = self.model.selected.start;
        for i in (lowest..self.model.layers.len()).rev() {
            let l = &*self.model.layers.get(i)?;
            let selected = self.model.selected.contains(&i);
            let mut visit = |i, kind, x: &Mat<T>, g: &Mat<T>| {
                if selected {
                    visit(i, kind, x, g)
                } else {
                    Ok(())
                }
            };
            let x = &inputs[i];
            let tr = self.layer_trace(l, x, batch, seq)?;
            // MLP.
            visit(i, LinearKind::Down, &tr.act, &d)?;
            let d_act = ops.linear_backward(&l.down_proj, &d)?;
            let (d_gate, d_up) = ops.swiglu_backward(&tr.gate, &tr.up, &d_act)?;
            visit(i, LinearKind::Gate, &tr.xn2, &d_gate)?;
            visit(i, LinearKind::Up, &tr.xn2, &d_up)?;
            let mut d_xn2 = ops.linear_backward(&l.gate_proj, &d_gate)?;
            add_into(&mut d_xn2, &ops.linear_backward(&l.up_proj, &d_up)?);
            let mut d_mid = ops.rms_norm_backward(&tr.h_mid, &l.post_norm, eps, &d_xn2)?;
            add_into(&mut d_mid, &d);
            // Attention.
            visit(i, LinearKind::O, &tr.attn, &d_mid)?;
            let d_attn = ops.linear_backward(&l.o_proj, &d_mid)?;
            let grads = ops.attention_backward(&tr.q, &tr.k, &tr.v, &d_attn, &shape)?;
            let (mut d_q, mut d_k) = (grads.d_q, grads.d_k);
            ops.rope_backward(&mut d_q, &rope)?;
            ops.rope_backward(&mut d_k, &rope)?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                d_q = self.head_norm_backward(&tr.q_lin, qn, d_q)?;
                d_k = self.head_norm_backward(&tr.k_lin, kn, d_k)?;
            }
            visit(i, LinearKind::Q, &tr.xn1, &d_q)?;
            visit(i, LinearKind::K, &tr.xn1, &d_k)?;
            visit(i, LinearKind::V, &tr.xn1, &grads.d_v)?;
            let mut d_xn1 = ops.linear_backward(&l.q_proj, &d_q)?;
            add_into(&mut d_xn1, &ops.linear_backward(&l.k_proj, &d_k)?);
            add_into(&mut d_xn1, &ops.linear_backward(&l.v_proj, &grads.d_v)?);
            let mut d_in = ops.rms_norm_backward(x, &l.input_norm, eps, &d_xn1)?;
            add_into(&mut d_in, &d_mid);
            d = d_in;
        }
        Ok(loss / n)
    }

    fn head_norm_backward(&self, x: &Mat<T>, weight: &[T], d_y: Mat<T>) -> Result<Mat<T>> {
        let (rows, cols) = (x.rows, x.cols);
        let hd = self.model.config.head_dim;
        let xs = Mat {
            rows: rows * cols / hd,
            cols: hd,
            data: x.data.clone(),
        };
        let dy = reshape(d_y, rows * cols / hd, hd);
        let dx = self
            .ops
            .rms_norm_backward(&xs, weight, self.model.config.rms_norm_eps, &dy)?;
        Ok(reshape(dx, rows, cols))
    }

    /// The Fisher backward of DESIGN.md §1: forward, sample labels from the model's own softmax with
    /// `seed`, then [`Transformer::backward`]. Returns the loss and the labels it sampled (one per
    /// position, in row order), so a run can record exactly what its gradients were taken against; the
    /// labels exist anyway, so handing them back costs nothing.
    pub fn fisher_backward(
        &self,
        ids: &[u32],
        batch: usize,
        seed: u64,
        visit: &mut PairVisitor<'_, T>,
    ) -> Result<FisherBackward> {
        let hidden = self.forward(ids, batch, &mut |_, _| {})?;
        let labels = self.sample_labels(&hidden, seed)?;
        let loss = self.backward(ids, batch, &labels, visit)?;
        Ok(FisherBackward { loss, labels })
    }
}
