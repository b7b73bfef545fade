//! Quantizing every linear layer of a model, resumably: each finished layer is written as a part file at
//! once, a restarted run with the same arguments skips the layers whose parts are there, and the final
//! file is assembled from the parts only, so it is byte-identical whether or not the run was interrupted.
//!
//! The per-layer work is [`yaqa_core::layer::quantize_layer`] (DESIGN.md §3–4); factors are loaded one
//! layer at a time through a callback, so a model's factors never have to fit in memory together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::layer::{LayerParams, LayerReport, QuantizedLayer, QuantizerSpec, quantize_layer};
use yaqa_core::sketch::Factors;

use crate::error::{ModelError, Result};
use crate::formats::quant_file::{assemble, part_run, write_part};
use crate::transformer::weights::LayerId;
use crate::transformer::weights::Model;

/// The JSON form of a quantizer spec.
pub fn quantizer_json(q: &QuantizerSpec) -> Value {
    match *q {
        QuantizerSpec::IntSym { bits } => json!({"kind": "int-sym", "bits": bits}),
        QuantizerSpec::IntAsym { bits, group_size } => {
            json!({"kind": "int-asym", "bits": bits, "group_size": group_size})
        }
        QuantizerSpec::E8p => json!({"kind": "e8p"}),
        QuantizerSpec::Fp8 { scaling } => json!({"kind": "fp8-e4m3", "scaling": scaling.name()}),
        QuantizerSpec::Trellis { bits } => json!({"kind": "trellis", "bits": bits}),
        QuantizerSpec::Ggml { format } => json!({"kind": "ggml", "format": format.name()}),
    }
}

/// The run header: everything that decides the output, so a resumed run can check its parts.
/// `factors` describes where the factors came from (written as given).
pub fn run_header(params: &LayerParams, model_fingerprint: &str, factors: Value) -> Value {
    let mut header = json!({
        "method": params.method.name(),
        "quantizer": quantizer_json(&params.quantizer),
        "incoherence": params.incoherence,
        "rotation": if params.incoherence {
            "randomized Hadamard on both sides: W_r = R_m diag(s_out) W diag(s_in) R_n^T, R = H_k (x) H_2^p / sqrt(n); signs stored"
        } else {
            "none"
        },
        "sign_seed": params.seed,
        "tile": [params.round.tile_rows, params.round.tile_cols],
        "damp": params.ldl.damp,
        "damp_out": params.damp_out,
        // null: searched per matrix on round-to-nearest's tr(Δ Σxxᵀ Δᵀ) (DESIGN.md §5).
        "scale_c": params.scale_c,
        "gptq": {
            "block_size": params.gptq.block_size,
            "damp": params.gptq.damp,
            "act_order": params.gptq.act_order,
        },
        "model_fingerprint": model_fingerprint,
        "factors": factors,
    });
    // Written only when sweeps ran, so files made before the refinement existed still resume and reuse.
    if params.refine_sweeps > 0 {
        header["refine_sweeps"] = json!(params.refine_sweeps);
    }
    // Likewise only for stochastic GPTQ: the seed every layer's stream is derived from.
    if let Some(seed) = params.gptq.stochastic_seed {
        header["gptq"]["stochastic_seed"] = json!(seed);
    }
    header
}

/// The folder of part files that goes with the output file `out`.
pub fn parts_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.parts"))
}

/// One layer finished (or found finished), as [`quantize_model`] reports it.
#[derive(Debug)]
pub struct LayerDone<'a> {
    pub id: LayerId,
    /// The layer's result; `None` when a previous run had finished it.
    pub result: Option<&'a QuantizedLayer>,
    /// Wall time of this layer: loading its factors, quantizing, writing its part. Not stored in any
    /// file, so an interrupted and resumed run still writes the same bytes.
    pub seconds: f64,
    /// Layers finished so far, this one included, and in all.
    pub done: usize,
    pub total: usize,
}

/// What a call of [`quantize_model`] did.
#[derive(Debug)]
pub struct Outcome {
    /// Layers quantized in this call, in order, with their reports. The weights and codes are not
    /// kept: they are in the part files, and holding every layer's `Ŵ` until the end would grow the
    /// run's memory by the whole model's f32 weights (the 8B-shaped run of docs/BENCHMARKS.md went
    /// over its `--max-memory` by that); [`LayerDone::result`] shows each one as it is finished.
    pub done: Vec<(LayerId, LayerReport)>,
    /// Layers skipped because a previous run had finished them.
    pub resumed: Vec<LayerId>,
    /// Whether every layer has its part (false when stopped by `stop_after`).
    pub finished: bool,
    /// Every layer's part file, in order, once `finished`.
    pub parts: Vec<(LayerId, PathBuf)>,
}

/// Quantizes `layers` of `model` into `out`. `factors(id)` loads one layer's factors; the method takes
/// what it needs from them ([`Factors::for_method`]).
/// `scales` gives layers a scale multiplier chosen elsewhere (overriding `params.scale_c`; the caller
/// records where it came from in `run`). `stop_after = Some(k)` returns after quantizing `k` layers in
/// this call without assembling (used to test resumption). `progress` is called after each layer with [`LayerDone`].
///
/// **Errors**: parts left by a run with different arguments (naming the folder), factor loading,
/// [`quantize_layer`] errors (naming the layer), I/O.
pub fn quantize_model(
    backend: &dyn Backend,
    model: &Model<f32>,
    layers: &[LayerId],
    factors: &mut dyn FnMut(LayerId) -> Result<Factors>,
    params: &LayerParams,
    scales: Option<&BTreeMap<LayerId, f64>>,
    run: &Value,
    out: &Path,
    stop_after: Option<usize>,
    progress: &mut dyn FnMut(&LayerDone<'_>),
) -> Result<Outcome> {
    let outcome = quantize_layers(
        backend, model, layers, factors, params, scales, run, out, stop_after, progress,
    )?;
    if outcome.finished {
        assemble_parts(&outcome.parts, run, None, out)?;
    }
    Ok(outcome)
}

/// The layer loop of [`quantize_model`] without the assembly: every layer's part is written (or found
/// written by an earlier run with the same `run` header), and [`Outcome::parts`] lists them for
/// [`assemble_parts`].
///
/// **Errors**: as [`quantize_model`].
#[allow(clippy::too_many_arguments)]
pub fn quantize_layers(
    backend: &dyn Backend,
    model: &Model<f32>,
    layers: &[LayerId],
    factors: &mut dyn FnMut(LayerId) -> Result<Factors>,
    params: &LayerParams,
    scales: Option<&BTreeMap<LayerId, f64>>,
    run: &Value,
    out: &Path,
    stop_after: Option<usize>,
    progress: &mut dyn FnMut(&LayerDone<'_>),
) -> Result<Outcome> {
    let same = |_: LayerId| *params;
    let mut round = from_factors(backend, &same, scales, factors);
    round_layers(model, layers, &mut round, run, out, stop_after, progress)
}

/// The rounding of every method that works from factors: `params(id)` gives layer `id`'s parameters
/// (the run's, or its `--override`'s), `factors(id)` loads its factors, the layer's method takes what it
/// needs ([`Factors::for_method`]), `scales` overrides the parameters' `scale_c` per layer.
pub fn from_factors<'a>(
    backend: &'a dyn Backend,
    params: &'a dyn Fn(LayerId) -> LayerParams,
    scales: Option<&'a BTreeMap<LayerId, f64>>,
    factors: &'a mut dyn FnMut(LayerId) -> Result<Factors>,
) -> impl FnMut(LayerId, &Mat<f32>) -> Result<QuantizedLayer> + 'a {
    move |id, w| {
        let f = factors(id)?;
        let p = params(id);
        let layer_params = LayerParams {
            scale_c: scales.and_then(|s| s.get(&id).copied()).or(p.scale_c),
            ..p
        };
        Ok(quantize_layer(
            backend,
            &id.name(),
            w,
            &f.for_method(p.method),
            &layer_params,
        )?)
    }
}

/// The resumable layer loop with any rounding: `round(id, W)` rounds layer `id` of `model`, whose
/// weight is `W` (from its factors in [`quantize_layers`]; against a base checkpoint's weight for DAQ).
/// Parts are written and resumed as [`quantize_layers`] says.
///
/// **Errors**: parts left by a run with different arguments (naming the folder), the errors of `round`,
/// I/O.
pub fn round_layers(
    model: &Model<f32>,
    layers: &[LayerId],
    round: &mut dyn FnMut(LayerId, &Mat<f32>) -> Result<QuantizedLayer>,
    run: &Value,
    out: &Path,
    stop_after: Option<usize>,
    progress: &mut dyn FnMut(&LayerDone<'_>),
) -> Result<Outcome> {
    let dir = parts_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    let mut outcome = Outcome {
        done: Vec::new(),
        resumed: Vec::new(),
        finished: false,
        parts: Vec::new(),
    };
    let mut parts = Vec::with_capacity(layers.len());
    for (i, &id) in layers.iter().enumerate() {
        let part = dir.join(format!("{}.safetensors", id.name()));
        parts.push((id, part.clone()));
        if part_done(&part, run, &dir)? {
            outcome.resumed.push(id);
            progress(&LayerDone {
                id,
                result: None,
                seconds: 0.0,
                done: i + 1,
                total: layers.len(),
            });
            continue;
        }
        if stop_after.is_some_and(|k| outcome.done.len() >= k) {
            return Ok(outcome);
        }
        let started = std::time::Instant::now();
        let block = model.layers.get(id.block)?;
        let q = round(id, block.linear(id.kind))?;
        write_part(&part, id, &q, run)?;
        progress(&LayerDone {
            id,
            result: Some(&q),
            seconds: started.elapsed().as_secs_f64(),
            done: i + 1,
            total: layers.len(),
        });
        outcome.done.push((id, q.report));
    }
    outcome.finished = true;
    outcome.parts = parts;
    Ok(outcome)
}

/// Whether an earlier run with the same `run` header finished the part `part` (in the parts' folder
/// `dir`): `false` when it is missing or unreadable (for example cut short by a crash outside the atomic
/// rename), so the layer is redone.
///
/// **Errors**: a part made with different arguments, naming the folder to delete.
pub fn part_done(part: &Path, run: &Value, dir: &Path) -> Result<bool> {
    if !part.exists() {
        return Ok(false);
    }
    match part_run(part) {
        Some(r) if &r == run => Ok(true),
        Some(_) => Err(ModelError::format(
            part,
            format!(
                "this part was made with different arguments; delete {} or rerun with the same arguments",
                dir.display()
            ),
        )),
        None => Ok(false),
    }
}

/// Joins the parts of a finished [`quantize_layers`] into the final file `out`, with `run` and, when
/// given, the evaluation of the result under `"eval"` in its header, then removes the parts' folder.
///
/// **Errors**: unreadable parts or parts of another run (named), I/O on `out`.
pub fn assemble_parts(
    parts: &[(LayerId, PathBuf)],
    run: &Value,
    eval: Option<&Value>,
    out: &Path,
) -> Result<()> {
    assemble(parts, run, eval, out)?;
    let dir = parts_dir(out);
    std::fs::remove_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))
}
