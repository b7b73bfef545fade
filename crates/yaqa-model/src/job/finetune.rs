//! `finetune`: a short, deterministic fine-tune of a model's linear layers on a text, with the project's
//! own forward and backward, written as a Hugging Face folder. It makes the base/fine-tuned pair that
//! delta-aware quantization (DAQ, issue #19) and the delta metrics of `eval --base` are measured on:
//! no second checkpoint of the fixture model ships.
//!
//! Training: next-token cross-entropy on seeded windows of the text (the calibration windows of
//! [`CalibConfig`], one token longer than `seq_len` so every position has its target), `batch` windows
//! per step, Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, no weight decay, constant learning rate) on the seven
//! linear layers of every block; embeddings, norms and head stay the base's, so every difference between
//! the two checkpoints is a linear layer's delta. The weight gradient of a layer `y = x Wᵀ` is `gᵀ x`
//! from the backward's `(x, g)` pairs. The report carries the perplexity of the first windows of the text
//! before and after, which must fall for the fine-tune to be real.

use std::path::PathBuf;
use std::time::Instant;

use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;

use crate::error::{Context, ModelError, Result};
use crate::formats::checkpoint::tokenizer_for;
use crate::formats::hf::write_hf;
use crate::job::calib::Shard;
use crate::job::calib_set::calibration_set_unchecked;
use crate::job::eval::perplexity;
use crate::job::evaluate::{EvalText, eval_tokens};
use crate::job::guard::{named, refuse_overwrite};
use crate::job::progress::{Progress, ProgressExt};
use crate::job::{CalibConfig, check_context, open_model, resume};
use crate::job::{memory, preflight};
use crate::transformer::decoder::Transformer;
use crate::transformer::weights::LayerId;

/// What `finetune` trains.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneConfig {
    /// The base model (GGUF file or Hugging Face folder).
    pub model: PathBuf,
    /// The training text (one or more files) and its tokenizer; `calib.n_seqs` is ignored (`steps ×
    /// batch` windows are drawn), `calib.seq_len` is the tokens each window predicts.
    pub calib: CalibConfig,
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    pub lr: f64,
    /// The output folder: config.json, model.safetensors (f32), tokenizer.json.
    pub out: PathBuf,
    /// Windows of [`EVAL_WINDOW`] tokens (or of the model's context, when shorter) from the start of the
    /// first text on which perplexity is reported.
    pub eval_windows: usize,
}

/// Tokens per perplexity window of [`FinetuneConfig::eval_windows`], unless the model's context is
/// shorter.
pub const EVAL_WINDOW: usize = 256;

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            calib: CalibConfig {
                seq_len: 256,
                ..CalibConfig::default()
            },
            steps: 32,
            batch: 4,
            lr: 1e-4,
            out: PathBuf::new(),
            eval_windows: 8,
        }
    }
}

/// What `finetune` did.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneReport {
    pub out: PathBuf,
    /// Training loss (mean next-token cross-entropy, nats) of each step's batch, before its update.
    pub losses: Vec<f64>,
    /// Perplexity on the first `eval_windows` windows of the text: the base's and the fine-tune's.
    pub ppl_before: f64,
    pub ppl_after: f64,
    /// Relative size of the delta, `‖W_post − W_base‖ / ‖W_base‖` over every linear layer.
    pub relative_delta: f64,
    pub seconds: f64,
}

/// Adam's moments of one weight matrix.
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// Fine-tunes `config.model` (module docs) and writes it to `config.out`.
///
/// **Errors**: a bad configuration (no text, zero steps, batch or learning rate), an output that is or
/// holds an input, unreadable model or text, too little text, a loss that stops being finite (naming
/// the step), I/O.
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &FinetuneConfig,
    progress: &dyn Progress,
) -> Result<FinetuneReport> {
    let t0 = Instant::now();
    if config.calib.text.is_empty() {
        crate::bail!("finetune needs training text (--text FILE)");
    }
    if config.steps == 0 || config.batch == 0 {
        crate::bail!("--steps and --batch must be at least 1");
    }
    if !(config.lr.is_finite() && config.lr > 0.0) {
        crate::bail!("--lr {}: must be a finite number > 0", config.lr);
    }
    if config.calib.seq_len == 0 {
        crate::bail!("--seq-len 0: a training window must predict at least one token");
    }
    let mut inputs = config.calib.inputs();
    inputs.push(named("--model", &config.model));
    refuse_overwrite(&[named("--out", &config.out)], &inputs)?;
    let loaded = open_model(&config.model)?;
    let mc = &loaded.model.config;
    let f32_bytes = memory::edge_bytes(mc)
        .saturating_add(memory::block_bytes(mc).saturating_mul(mc.n_layers as u64));
    preflight::check_output("--out", &config.out, f32_bytes, "the fine-tuned checkpoint")?;
    let windows = config
        .steps
        .checked_mul(config.batch)
        .context("--steps × --batch overflows")?;
    // A window of `seq_len + 1` tokens runs its first `seq_len` through the model, so `seq_len` is what
    // the model's context and sliding window limit; the calibration set's own check (of `seq_len + 1`)
    // is then skipped, as it would refuse a window that fits and name a length the user did not give.
    let seq_len = config.calib.seq_len;
    check_context(
        &format!("--seq-len {seq_len}"),
        seq_len,
        &loaded,
        config.calib.allow_long_context,
        |max| format!("lower --seq-len to at most {max}"),
    )?;
    let calib = CalibConfig {
        n_seqs: windows,
        seq_len: seq_len.checked_add(1).context("--seq-len overflows")?,
        allow_long_context: true,
        ..config.calib.clone()
    };
    let set = calibration_set_unchecked(backend, &loaded, &calib, Shard::default(), progress)
        .with_context(|| {
            format!(
                "--steps {} × --batch {} training windows of --seq-len {seq_len} tokens and the one \
                 before them",
                config.steps, config.batch
            )
        })?;
    // Perplexity windows of 256 tokens, or of the model's context when it is shorter (no flag sets
    // this length, so it must not be what refuses a model).
    let mut window = EVAL_WINDOW;
    if !config.calib.allow_long_context
        && let Some(max) = mc.max_position_embeddings
    {
        window = window.min(max);
    }
    if let Some(sliding) = mc.sliding_window {
        window = window.min(sliding);
    }
    let eval = EvalText {
        text: config.calib.text.first().cloned(),
        tokenizer: config.calib.tokenizer.clone(),
        window,
        n_windows: config.eval_windows.max(1),
        seed: 0,
        allow_long_context: config.calib.allow_long_context,
    };
    eval.check(&loaded, ["the perplexity window", "--eval-windows"])?;
    let (eval_ids, _) = eval_tokens(backend, &loaded, &eval, None, progress)?;
    let ppl = |model| -> Result<f64> {
        Ok(perplexity(&Transformer::new(model, backend), &eval_ids, eval.window, 2)?.ppl)
    };
    let ppl_before = ppl(&loaded.model)?;
    progress.note(format!(
        "fine-tuning {} linear layers on {} ({} steps × {} windows of {} tokens, Adam lr {}); \
         perplexity before {ppl_before:.3}",
        LayerId::all(&loaded.model).len(),
        set.source,
        config.steps,
        config.batch,
        config.calib.seq_len,
        config.lr
    ));
    let base = loaded.model.clone();
    let mut model = loaded.model.clone();
    let ids = LayerId::all(&model);
    let mut moments: Vec<Moments> = ids
        .iter()
        .map(|id| {
            let n = model.layers[id.block].linear(id.kind).data.len();
            Moments {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        })
        .collect();
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let mut losses = Vec::with_capacity(config.steps);
    let stage = progress.stage("fine-tune steps", config.steps);
    for (step, batch) in set.seqs.chunks(config.batch).enumerate() {
        let mut ids_in = Vec::new();
        let mut labels = Vec::new();
        for s in batch {
            ids_in.extend_from_slice(&s.ids[..s.ids.len() - 1]);
            labels.extend_from_slice(&s.ids[1..]);
        }
        let mut grads: Vec<Option<Mat<f32>>> = vec![None; ids.len()];
        let tf = Transformer::new(&model, backend);
        let loss = tf
            .backward(&ids_in, batch.len(), &labels, &mut |block, kind, x, g| {
                // dℓ/dW = gᵀ x, as linear(gᵀ, xᵀ) = gᵀ (xᵀ)ᵀ.
                let dw = backend.linear(&g.transpose(), &x.transpose(), None)?;
                let k = ids
                    .iter()
                    .position(|id| id.block == block && id.kind == kind)
                    .with_context(|| format!("a gradient for block {block} beyond the model"))?;
                grads[k] = Some(dw);
                Ok(())
            })
            .with_context(|| format!("fine-tune step {step}"))?;
        if !loss.is_finite() {
            return Err(ModelError::Input(format!(
                "fine-tune step {step}: the loss is {loss}; lower --lr"
            )));
        }
        losses.push(loss);
        let t = step as i32 + 1;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (k, id) in ids.iter().enumerate() {
            let g = grads[k]
                .take()
                .with_context(|| format!("no gradient for {}", id.name()))?;
            let w = model.layers[id.block].linear_mut(id.kind);
            let mo = &mut moments[k];
            for (((w, &g), m), v) in w.data.iter_mut().zip(&g.data).zip(&mut mo.m).zip(&mut mo.v) {
                let g = g as f64;
                let m1 = b1 * *m as f64 + (1.0 - b1) * g;
                let v1 = b2 * *v as f64 + (1.0 - b2) * g * g;
                *m = m1 as f32;
                *v = v1 as f32;
                *w -= (config.lr * (m1 / c1) / ((v1 / c2).sqrt() + eps)) as f32;
            }
        }
        stage.step(step + 1);
    }
    drop(stage);
    let ppl_after = ppl(&model)?;
    let (mut dd, mut bb) = (0.0f64, 0.0f64);
    for id in &ids {
        let (w0, w1) = (
            base.layers[id.block].linear(id.kind),
            model.layers[id.block].linear(id.kind),
        );
        for (a, b) in w0.data.iter().zip(&w1.data) {
            dd += ((b - a) as f64).powi(2);
            bb += (*a as f64).powi(2);
        }
    }
    let relative_delta = (dd / bb.max(f64::MIN_POSITIVE)).sqrt();
    // The folder appears whole or not at all.
    let tmp = resume::sibling(&config.out, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    write_hf(&model, &tmp)?;
    tokenizer_for(&loaded, config.calib.tokenizer.as_deref())
        .context("loading the tokenizer")?
        .save(&tmp.join("tokenizer.json"))?;
    std::fs::rename(&tmp, &config.out).map_err(|e| ModelError::Write {
        path: config.out.clone(),
        source: e,
    })?;
    Ok(FinetuneReport {
        out: config.out.clone(),
        losses,
        ppl_before,
        ppl_after,
        relative_delta,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
