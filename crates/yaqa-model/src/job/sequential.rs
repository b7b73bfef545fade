//! The true-sequential pipeline (`quantize --sequential`, implied by `--method qronos`; DESIGN.md §9):
//! blocks in order and, inside a block, the groups `[q,k,v] → [o] → [gate,up] → [down]`, each group's
//! statistics collected on the inputs `X̃` that the *already quantized* model produces: every earlier
//! block and every earlier group of the same block replaced by its quantized weights. GPTQ and LDLQ
//! round against `h_in = X̃ᵀX̃`; Qronos also takes `X̃ᵀ(X − X̃)`, with `X` the original model's inputs on
//! the same tokens ([`yaqa_core::layer::LayerFactors::cross`]).
//!
//! Memory: nothing of the whole model's activations is held. Per calibration sequence the pipeline keeps
//! the residual stream entering the current block, for the quantized model and (Qronos only) for the
//! original, `n_streams × n_seqs × seq_len × hidden` f32 in all ([`stream_bytes`]); a group's inputs are
//! recomputed from that stream by running the block up to the group ([`Transformer::linear_input`]),
//! one sequence at a time, and folded into the group's statistics at once. The cost is extra forward
//! work (the block's first stages run again for every later group), which is cheap next to the rounding
//! on the models a CPU quantizes.
//!
//! Resumable like the parallel pipeline ([`crate::job::pipeline`]): every finished layer is a part file
//! in `OUT.parts/` at once. The quantized prefix is always rebuilt from the part files, in an
//! uninterrupted run too (each layer's `Ŵ` is read back from the part just written), so a run killed and
//! restarted feeds every later group exactly the same inputs and ends byte-identical.

use std::path::{Path, PathBuf};

use serde_json::Value;
use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::layer::{LayerFactors, LayerParams, Method, quantize_layer};
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sym::SymMat;

use crate::error::{Context, ModelError, Result};
use crate::formats::quant_file::{QuantFile, write_part};
use crate::job::calib::CalibSeq;
use crate::job::pipeline::{LayerDone, Outcome, part_done, parts_dir};
use crate::transformer::decoder::Transformer;
use crate::transformer::weights::{LayerId, LinearKind, Model};

/// The true-sequential groups of a block, in order (DESIGN.md §9): the layers of a group share one input
/// and are quantized on the same statistics.
pub const GROUPS: [&[LinearKind]; 4] = [
    &[LinearKind::Q, LinearKind::K, LinearKind::V],
    &[LinearKind::O],
    &[LinearKind::Gate, LinearKind::Up],
    &[LinearKind::Down],
];

/// Whether `method` needs the original model's inputs beside the quantized model's (Qronos's `G`).
pub fn needs_original(method: Method) -> bool {
    method == Method::Qronos
}

/// The methods the sequential pipeline runs: those that round against `Σ x xᵀ` alone. YAQA's factors
/// come from the full model's backward and RTN uses no statistics.
pub fn takes(method: Method) -> bool {
    matches!(method, Method::Gptq | Method::Ldlq | Method::Qronos)
}

/// The residual streams the pipeline holds: one per calibration sequence for the quantized model, and as
/// many again for the original when `method` needs it ([`needs_original`]), f32.
pub fn stream_bytes(method: Method, n_tokens: usize, hidden: usize) -> u64 {
    let streams = if needs_original(method) { 2 } else { 1 };
    (streams * n_tokens * hidden * 4) as u64
}

/// One group's statistics as the pipeline used them, handed to [`SequentialJob::run`]'s observer (tests
/// compare them with a brute-force forward of the partially quantized model).
#[derive(Debug)]
pub struct GroupStats<'a> {
    pub block: usize,
    pub kinds: &'a [LinearKind],
    /// `X̃ᵀX̃` over every calibration token.
    pub h: &'a SymMat,
    /// Qronos: `X̃ᵀ(X − X̃)` (`n × n`, row index on `X̃`).
    pub cross: Option<&'a Mat<f64>>,
    pub n_tokens: usize,
}

/// One sequential quantization: what it quantizes, with what, and where the parts go.
#[derive(Clone, Copy, Debug)]
pub struct SequentialJob<'a> {
    /// The original model, every block selected.
    pub model: &'a Model<f32>,
    /// The calibration sequences (their ids; labels are not used).
    pub seqs: &'a [CalibSeq],
    pub params: &'a LayerParams,
    /// The run header every part carries ([`crate::job::pipeline::run_header`]).
    pub run: &'a Value,
    /// The quantized file; parts go to `OUT.parts/`.
    pub out: &'a Path,
    /// Stop after quantizing this many layers in this call, as if interrupted.
    pub stop_after: Option<usize>,
}

impl SequentialJob<'_> {
    /// Quantizes every linear layer of the model in true-sequential order (module docs). `observe` sees
    /// each group's statistics before its layers are rounded; `progress` each finished or resumed layer.
    /// Returns the parallel pipeline's [`Outcome`], so the caller assembles the parts the same way.
    ///
    /// **Errors**: a method the pipeline does not take ([`takes`]), a model with only some blocks
    /// selected, parts of another run (named), non-finite inputs (naming the layer), forward and
    /// [`quantize_layer`] errors (naming the layer), I/O.
    pub fn run<B: Backend + ModelOps<f32>>(
        &self,
        backend: &B,
        observe: &mut dyn FnMut(&GroupStats<'_>),
        progress: &mut dyn FnMut(&LayerDone<'_>),
    ) -> Result<Outcome> {
        let model = self.model;
        let method = self.params.method;
        if !takes(method) {
            crate::bail!(
                "--sequential: {} does not round against Σ x xᵀ (the sequential pipeline takes gptq, \
                 ldlq and qronos)",
                method.name()
            );
        }
        if model.selected != (0..model.layers.len()) {
            crate::bail!("the sequential pipeline quantizes every block; select all of them");
        }
        let dir = parts_dir(self.out);
        std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let layers = LayerId::all(model);
        let parts: Vec<(LayerId, PathBuf)> = layers
            .iter()
            .map(|&id| (id, dir.join(format!("{}.safetensors", id.name()))))
            .collect();
        let mut finished = Vec::with_capacity(parts.len());
        for (_, part) in &parts {
            finished.push(part_done(part, self.run, &dir)?);
        }
        let mut outcome = Outcome {
            done: Vec::new(),
            resumed: Vec::new(),
            finished: false,
            parts: Vec::new(),
        };
        // The last block with work left; none: every part is there and no forward is needed.
        let last_todo = layers
            .iter()
            .zip(&finished)
            .filter(|(_, f)| !**f)
            .map(|(id, _)| id.block)
            .max();
        let tf = Transformer::new(model, backend);
        let dyn_backend: &dyn Backend = backend;
        let original = needs_original(method);
        let mut quantized: Vec<Mat<f32>> = Vec::new();
        let mut originals: Vec<Mat<f32>> = Vec::new();
        if last_todo.is_some() {
            for s in self.seqs {
                tf.check_batch(&s.ids, 1)
                    .with_context(|| format!("calibration sequence {}", s.index))?;
                quantized.push(tf.embed(&s.ids));
            }
            if original {
                originals = quantized.clone();
            }
        }
        let n_tokens: usize = self.seqs.iter().map(|s| s.ids.len()).sum();
        let total = layers.len();
        let mut at = 0;
        for block in 0..model.layers.len() {
            if last_todo.is_none_or(|last| block > last) {
                // Every layer from here on is finished: nothing to run.
                for (k, &kind) in LinearKind::ALL.iter().enumerate() {
                    outcome.resumed.push(LayerId { block, kind });
                    progress(&LayerDone {
                        id: LayerId { block, kind },
                        result: None,
                        seconds: 0.0,
                        done: at + k + 1,
                        total,
                    });
                }
                at += LinearKind::ALL.len();
                continue;
            }
            let orig = model.layers.get(block)?;
            // The block as quantized so far: the original with each finished group's Ŵ put in.
            let mut current = (*orig).clone();
            for kinds in GROUPS {
                let group: Vec<(usize, LayerId)> = kinds
                    .iter()
                    .map(|&kind| {
                        let id = LayerId { block, kind };
                        (
                            at + LinearKind::ALL.iter().position(|&k| k == kind).unwrap_or(0),
                            id,
                        )
                    })
                    .collect();
                let todo: Vec<(usize, LayerId)> = group
                    .iter()
                    .copied()
                    .filter(|&(i, _)| !finished[i])
                    .collect();
                if !todo.is_empty() {
                    if self.stop_after.is_some_and(|k| outcome.done.len() >= k) {
                        return Ok(outcome);
                    }
                    let (h, cross) = group_stats(
                        &tf,
                        dyn_backend,
                        &current,
                        &orig,
                        &quantized,
                        &originals,
                        kinds[0],
                    )
                    .with_context(|| format!("the inputs of {}", todo[0].1.name()))?;
                    observe(&GroupStats {
                        block,
                        kinds,
                        h: &h,
                        cross: cross.as_ref(),
                        n_tokens,
                    });
                    for &(i, id) in &todo {
                        if self.stop_after.is_some_and(|k| outcome.done.len() >= k) {
                            return Ok(outcome);
                        }
                        let started = std::time::Instant::now();
                        let factors = match &cross {
                            Some(c) => LayerFactors::qronos(&h, c),
                            None => LayerFactors::xtx(&h),
                        };
                        let q = quantize_layer(
                            dyn_backend,
                            &id.name(),
                            orig.linear(id.kind),
                            &factors,
                            self.params,
                        )?;
                        write_part(&parts[i].1, id, &q, self.run)?;
                        progress(&LayerDone {
                            id,
                            result: Some(&q),
                            seconds: started.elapsed().as_secs_f64(),
                            done: i + 1,
                            total,
                        });
                        outcome.done.push((id, q.report));
                    }
                }
                for &(i, id) in &group {
                    if finished[i] {
                        outcome.resumed.push(id);
                        progress(&LayerDone {
                            id,
                            result: None,
                            seconds: 0.0,
                            done: i + 1,
                            total,
                        });
                    }
                    // The quantized prefix, always from the parts (module docs).
                    let part = &parts[i].1;
                    let w = QuantFile::open_part(part)?
                        .dequantize(dyn_backend, id)
                        .with_context(|| format!("reading {} back", part.display()))?;
                    if w.shape() != current.linear(id.kind).shape() {
                        crate::bail!("{}: {} has the wrong shape", part.display(), id.name());
                    }
                    *current.linear_mut(id.kind) = w;
                }
            }
            at += LinearKind::ALL.len();
            if last_todo.is_some_and(|last| block < last) {
                for x in quantized.iter_mut() {
                    *x = tf.block_forward(&current, x, 1)?;
                }
                for x in originals.iter_mut() {
                    *x = tf.block_forward(&orig, x, 1)?;
                }
            }
        }
        outcome.finished = true;
        outcome.parts = parts;
        Ok(outcome)
    }
}

/// One group's statistics over every sequence: `X̃ᵀX̃` and, when the original streams are given,
/// `X̃ᵀ(X − X̃)`, both from one Gram matrix of `[X̃, X − X̃]` per sequence (so the existing
/// `accumulate_xtx` operation computes them, and the small difference keeps its precision).
fn group_stats<B: Backend + ModelOps<f32>>(
    tf: &Transformer<'_, f32, B>,
    backend: &dyn Backend,
    current: &crate::transformer::weights::LayerWeights<f32>,
    original: &crate::transformer::weights::LayerWeights<f32>,
    quantized: &[Mat<f32>],
    originals: &[Mat<f32>],
    kind: LinearKind,
) -> Result<(SymMat, Option<Mat<f64>>)> {
    let n = kind.shape(&tf.model.config).1;
    if originals.is_empty() {
        let mut h = SymMat::zeros(n);
        for x in quantized {
            let xt = tf.linear_input(current, x, 1, kind)?;
            yaqa_core::error::check_finite("layer input X̃", &xt.data)?;
            backend.accumulate_xtx(&mut h, &xt)?;
        }
        return Ok((h, None));
    }
    let mut big = SymMat::zeros(2 * n);
    for (xq, xo) in quantized.iter().zip(originals) {
        let xt = tf.linear_input(current, xq, 1, kind)?;
        let x = tf.linear_input(original, xo, 1, kind)?;
        yaqa_core::error::check_finite("layer input X̃", &xt.data)?;
        yaqa_core::error::check_finite("layer input X", &x.data)?;
        let mut cat = Mat::<f32>::zeros(xt.rows, 2 * n);
        for t in 0..xt.rows {
            let row = cat.row_mut(t);
            row[..n].copy_from_slice(xt.row(t));
            for ((d, &a), &b) in row[n..].iter_mut().zip(x.row(t)).zip(xt.row(t)) {
                *d = a - b;
            }
        }
        backend.accumulate_xtx(&mut big, &cat)?;
    }
    let h = SymMat::from_lower(&Mat::from_fn(n, n, |i, j| big.at(i, j)))?;
    // Block (n + j, i) of the Gram matrix is Σ_t (x − x̃)_tj x̃_ti.
    let cross = Mat::from_fn(n, n, |i, j| big.at(n + j, i));
    Ok((h, Some(cross)))
}

/// The process's peak resident memory (`VmHWM` of `/proc/self/status`) in bytes, where the system
/// reports it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
