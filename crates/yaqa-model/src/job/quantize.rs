//! `quantize`: every linear layer of a model rounded by one method against its factors (from a folder
//! `hessian` wrote, or collected here first, checkpointed like `hessian`), resumable layer by layer
//! ([`crate::job::pipeline`]); then, unless asked not to, the KL and perplexity of the result against
//! the original on held-out text, printed by the caller and recorded under `"eval"` in the output's
//! header.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::daq::DaqParams;
use yaqa_core::layer::{LayerParams, LayerReport, Method, QuantizedLayer, QuantizerSpec};
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::{Factors, SketchKind};

use crate::error::{Context, ModelError, Result};
use crate::formats::calib_file::{LabelOrigin, RecordHeader};
use crate::formats::checkpoint::Loaded;
use crate::formats::factor_file::{Provenance, sketch_tag};
use crate::formats::quant_file::QuantFile;
use crate::job::calib::{CalibSeq, Shard};
use crate::job::calib_set::{Calibration, calibration_set};
use crate::job::collect::empty_factors;
use crate::job::estimate::LayerClock;
use crate::job::evaluate::{
    EvalTable, EvalText, QuantizedModel, eval_models, eval_tokens, open_base,
};
use crate::job::factors::{factor_index, pick_factor_file, read_factor_checked};
use crate::job::guard::{named, refuse_overwrite};
use crate::job::memory::{self, Residency};
use crate::job::overrides::Overrides;
use crate::job::pipeline::{LayerDone, assemble_parts, from_factors, round_layers, run_header};
use crate::job::preflight;
use crate::job::progress::ProgressExt;
use crate::job::progress::{Event, Progress};
use crate::job::resume::{self, Job, Outcome};
use crate::job::sequential::{self, SequentialJob};
use crate::job::{CalibConfig, CheckpointPolicy, QuantSpec, open_model};
use crate::transformer::weights::LayerId;

/// What `quantize` does.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeConfig {
    /// A GGUF file or a Hugging Face folder.
    pub model: PathBuf,
    pub spec: QuantSpec,
    /// A factor folder from `hessian`; `None`: collect them first (Sketch B for YAQA, `Σ x xᵀ`
    /// otherwise) with `calib`.
    pub factors: Option<PathBuf>,
    pub calib: CalibConfig,
    /// The quantized file (safetensors). Finished layers go to `OUT.parts/` first, factors collected
    /// here to `OUT.factors.partial/`.
    pub out: PathBuf,
    pub checkpoint: CheckpointPolicy,
    /// Stop after quantizing this many layers, as if interrupted (tests of resumption).
    pub stop_after_layers: Option<usize>,
    /// The text the result is evaluated on; `None`: no evaluation.
    pub eval: Option<EvalText>,
    /// The memory this run may use (`--max-memory`): when the model does not fit, its blocks are
    /// streamed from the checkpoint one at a time ([`memory::quantize_plan`]); that needs `factors`
    /// and no evaluation. Default: no limit, every block resident.
    pub max_memory: Option<u64>,
    /// The checkpoint `model` was fine-tuned from (`--base`): DAQ's reference, streamed one block at a
    /// time beside the model. Only with [`Method::Daq`], which needs it.
    pub base: Option<PathBuf>,
    /// How DAQ searches its scales (`--daq-no-clip`).
    pub daq: DaqParams,
    /// Quantize in true-sequential order on the inputs of the already quantized model
    /// ([`crate::job::sequential`]), collecting the statistics as it goes (no `factors`). GPTQ and
    /// LDLQ only; Qronos always runs this way, whatever this says.
    pub sequential: bool,
    /// Per-module overrides (`--override`): layers that take another quantizer or method, or stay
    /// unquantized ([`crate::job::overrides`]). Not with the sequential pipeline or DAQ.
    pub overrides: Overrides,
    /// A file quantized earlier from the same model with the same quantizer (`--scales-from`): every
    /// layer takes the scale multiplier `c` that file's search chose instead of searching again, so
    /// methods compared one `quantize` at a time share their scales as `compare`'s rows do (DESIGN.md
    /// §5), and the trellis skips its costly search. Not with the sequential pipeline or DAQ.
    pub scales_from: Option<PathBuf>,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            spec: QuantSpec::default(),
            factors: None,
            calib: CalibConfig::default(),
            out: PathBuf::new(),
            checkpoint: CheckpointPolicy::default(),
            stop_after_layers: None,
            eval: Some(default_eval()),
            max_memory: None,
            base: None,
            daq: DaqParams::default(),
            sequential: false,
            overrides: Overrides::default(),
            scales_from: None,
        }
    }
}

/// `quantize`'s evaluation by default: 8 windows of 256 tokens sampled from the original model.
pub fn default_eval() -> EvalText {
    EvalText {
        window: 256,
        n_windows: 8,
        ..EvalText::default()
    }
}

/// One quantized layer in a [`QuantizeReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerLine {
    pub name: String,
    /// `None` when an earlier run had finished the layer.
    pub report: Option<LayerReport>,
    pub seconds: f64,
}

/// What a finished `quantize` did.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeReport {
    pub out: PathBuf,
    pub layers: Vec<LayerLine>,
    /// Layers an earlier run had finished.
    pub resumed: usize,
    pub seconds: f64,
    /// KL and perplexity of the result (also in the file's header), unless evaluation was off.
    pub eval: Option<EvalTable>,
    /// The sequential pipeline's memory, when it ran.
    pub sequential: Option<SequentialMemory>,
}

/// What the sequential pipeline held ([`crate::job::sequential`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequentialMemory {
    /// The residual streams of the calibration sequences (quantized model, and the original's for
    /// Qronos).
    pub stream_bytes: u64,
    /// The process's peak resident memory at the end of the run, where the system reports it.
    pub peak_rss: Option<u64>,
}

impl QuantizeConfig {
    /// Whether this run quantizes sequentially: asked for, or implied by Qronos.
    pub fn is_sequential(&self) -> bool {
        self.sequential || self.spec.method == Method::Qronos
    }
}

/// The OPTQ figures ([`yaqa_core::optq`]) summed over the layers that report them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptqTotals {
    /// Layers that reported OPTQ figures (quantized in this call, by GPTQ, LDLQ or YAQA with 1 × 1
    /// tiles).
    pub layers: usize,
    pub measured: f64,
    pub identity: f64,
    pub bound: f64,
    pub clipped: usize,
    /// The largest relative discrepancy of the identity in any layer.
    pub worst_discrepancy: f64,
}

impl QuantizeReport {
    /// The OPTQ totals of the layers quantized in this call; `None` when none reported them.
    pub fn optq_totals(&self) -> Option<OptqTotals> {
        let mut t = OptqTotals {
            layers: 0,
            measured: 0.0,
            identity: 0.0,
            bound: 0.0,
            clipped: 0,
            worst_discrepancy: 0.0,
        };
        for o in self.layers.iter().filter_map(|l| l.report.as_ref()?.optq) {
            t.layers += 1;
            t.measured += o.measured;
            t.identity += o.identity;
            t.bound += o.bound;
            t.clipped += o.clipped;
            t.worst_discrepancy = t.worst_discrepancy.max(o.discrepancy());
        }
        (t.layers > 0).then_some(t)
    }

    /// The report as JSON (`quantize --json`): every layer's report (`null` for a layer an earlier run
    /// had finished), the OPTQ totals and the evaluation.
    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "seconds": l.seconds,
                    "report": l.report.as_ref().map(crate::formats::quant_file::report_json),
                })
            })
            .collect();
        let optq = self.optq_totals().map(|t| {
            json!({
                "layers": t.layers, "measured": t.measured, "identity": t.identity,
                "bound": t.bound, "clipped": t.clipped, "worst_discrepancy": t.worst_discrepancy,
            })
        });
        let eval = self.eval.as_ref().map(|t| {
            let row = &t.rows[0];
            json!({
                "kl": row.kl, "ppl": row.ppl, "original_ppl": t.original_ppl,
                "text": t.source, "window": t.window, "n_windows": t.n_windows,
            })
        });
        json!({
            "out": self.out.display().to_string(),
            "layers": layers,
            "resumed": self.resumed,
            "seconds": self.seconds,
            "optq_total": optq,
            "eval": eval,
            "sequential": self.sequential.map(|m| json!({
                "stream_bytes": m.stream_bytes, "peak_rss": m.peak_rss,
            })),
        })
    }
}

/// Quantizes the model `config` names (module docs).
///
/// **Errors**: a spec no quantizer takes, calibration or evaluation sizes the model cannot use
/// ([`CalibConfig::check`], [`EvalText::check`]), an evaluation text too short for its windows, or a
/// factor folder that lacks layers or belongs to another model (all before any layer is rounded), the
/// errors of collection, rounding, evaluation and writing; a run stopped by `stop_after_*` returns
/// [`ModelError::Stopped`].
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &QuantizeConfig,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    let mut inputs = config.calib.inputs();
    inputs.push(named("--model", &config.model));
    inputs.extend(config.factors.as_deref().map(|p| named("--factors", p)));
    let eval_text = config.eval.as_ref().and_then(|e| e.text.as_deref());
    inputs.extend(eval_text.map(|p| named("--eval-text", p)));
    inputs.extend(config.base.as_deref().map(|p| named("--base", p)));
    inputs.extend(
        config
            .scales_from
            .as_deref()
            .map(|p| named("--scales-from", p)),
    );
    refuse_overwrite(&[named("--out", &config.out)], &inputs)?;
    check_daq_inputs(config)?;
    if let (Some(p), Some(o)) = (&config.scales_from, config.overrides.0.first()) {
        crate::bail!(
            "--scales-from {} with --override '{}': the file's scales are for its one quantizer; \
             quantize the overridden layers in a run of their own",
            p.display(),
            o.text
        );
    }
    if let Some(p) = &config.scales_from
        && (config.spec.method == Method::Daq || config.is_sequential())
    {
        crate::bail!(
            "--scales-from {}: shared scales work with the methods that round each layer from \
             factors (rtn, gptq, ldlq, yaqa), not with --method {}{}",
            p.display(),
            config.spec.method.name(),
            if config.is_sequential() {
                " on the sequential pipeline"
            } else {
                ""
            }
        );
    }
    if let Some(o) = config.overrides.0.first()
        && (config.spec.method == Method::Daq || config.is_sequential())
    {
        crate::bail!(
            "--override '{}': per-module overrides work with the methods that round each layer from \
             factors (rtn, gptq, ldlq, yaqa), not with {}",
            o.text,
            if config.spec.method == Method::Daq {
                "--method daq".to_string()
            } else {
                format!(
                    "the sequential pipeline (--method {})",
                    config.spec.method.name()
                )
            }
        );
    }
    if config.is_sequential() {
        let m = config.spec.method;
        if !sequential::takes(m) {
            let why = match m {
                Method::Yaqa => {
                    "YAQA's factors come from the whole model's backward (Sketch B), which the \
                     sequential pipeline does not collect"
                }
                _ => "round-to-nearest uses no statistics",
            };
            crate::bail!(
                "--sequential with --method {}: {why}; the sequential pipeline takes gptq, ldlq \
                 and qronos",
                m.name()
            );
        }
        if config.factors.is_some() {
            crate::bail!(
                "--factors with {}: the sequential pipeline collects its statistics on the \
                 partially quantized model as it goes; leave --factors out",
                if config.sequential {
                    "--sequential".to_string()
                } else {
                    format!("--method {} (always sequential)", m.name())
                }
            );
        }
    }
    let loaded = match config.max_memory {
        None => open_model(&config.model)?,
        Some(budget) => {
            let model_config = crate::formats::checkpoint::config(&config.model)
                .with_context(|| format!("loading the model {}", config.model.display()))?;
            let eval = config.eval.as_ref().map(|e| (e.window, e.n_windows));
            let plan = memory::quantize_plan(&model_config, budget, eval)?;
            progress.note(plan.to_string());
            let keep = match plan.residency {
                Residency::Resident => None,
                Residency::Streamed { keep } => {
                    if config.is_sequential() {
                        crate::bail!(
                            "--max-memory {}: the model does not fit, and the sequential pipeline \
                             (--sequential, --method qronos) holds the whole model: it does not \
                             stream blocks yet. Raise --max-memory or leave it out",
                            memory::Bytes(budget)
                        );
                    }
                    if config.factors.is_none() {
                        crate::bail!(
                            "--max-memory {}: the model does not fit, and collecting factors while \
                             streaming it is `yaqa hessian --max-memory`'s work: collect them there \
                             and pass --factors",
                            memory::Bytes(budget)
                        );
                    }
                    if config.eval.as_ref().is_some_and(|e| e.text.is_none()) {
                        crate::bail!(
                            "--max-memory {}: the model does not fit, and sampling evaluation text \
                             from it decodes token by token through every block: pass --eval-text \
                             FILE or --no-eval",
                            memory::Bytes(budget)
                        );
                    }
                    Some(keep)
                }
            };
            crate::formats::checkpoint::load_with(&config.model, keep)
                .with_context(|| format!("loading the model {}", config.model.display()))?
        }
    };
    let all = LayerId::all(&loaded.model);
    let plan = config.overrides.plan(&config.spec, &all)?;
    if config.overrides.is_empty() {
        config.spec.check_shapes(
            &all.iter()
                .map(|id| id.kind.shape(&loaded.model.config))
                .collect::<Vec<_>>(),
        )?;
    } else {
        for (id, spec) in &plan {
            if let Some(spec) = spec {
                spec.check_shapes(&[id.kind.shape(&loaded.model.config)])
                    .with_context(|| format!("{} (as --override sets it)", id.name()))?;
            }
        }
    }
    // The layers this run rounds (those an override keeps are left out) with their parameters.
    let layers: Vec<LayerId> = plan
        .iter()
        .filter_map(|(id, spec)| spec.map(|_| *id))
        .collect();
    let per_layer: BTreeMap<LayerId, LayerParams> = plan
        .iter()
        .filter_map(|(id, spec)| spec.map(|s| (*id, s.layer_params())))
        .collect();
    let scales = match &config.scales_from {
        Some(path) => Some(
            shared_scales(path, &loaded, &config.spec, &layers)
                .with_context(|| format!("--scales-from {}", path.display()))?,
        ),
        None => None,
    };
    let needs_sketch_b = per_layer.values().any(|p| p.method == Method::Yaqa);
    let daq = config.spec.method == Method::Daq;
    if config.factors.is_none() && !daq {
        config.calib.check(&loaded)?;
    }
    // The parts and the file assembled from them (generously: scales and headers as half a bit per
    // weight), and the factors this run collects with their checkpoint.
    let mc = &loaded.model.config;
    // (at the widest grid any layer takes, overrides included)
    let bits = plan
        .iter()
        .filter_map(|(_, spec)| spec.map(|s| s.grid.bits()))
        .max()
        .unwrap_or(0);
    let mut need = memory::quantized_file_bytes(mc, bits as f64 + 0.5).saturating_mul(2);
    if config.factors.is_none() && !daq && !config.is_sequential() {
        let kind = if needs_sketch_b {
            SketchKind::B
        } else {
            SketchKind::Xtx
        };
        let factors = memory::block_factor_file_bytes(mc, kind).saturating_mul(mc.n_layers as u64);
        need = need.saturating_add(factors.saturating_mul(2));
    }
    preflight::check_output(
        "--out",
        &config.out,
        need,
        "the quantized file with its parts",
    )?;
    if let Some(eval) = &config.eval {
        eval.check(&loaded, ["--eval-window", "--eval-windows"])?;
    }
    // Evaluation text from a file is read now, so a text too short for the windows is refused before
    // the layers are rounded rather than after; sampled text needs the model and comes at the end.
    let eval_text_tokens = match &config.eval {
        Some(text) if text.text.is_some() => {
            Some(eval_tokens(backend, &loaded, text, None, progress)?)
        }
        _ => None,
    };
    let params = config.spec.layer_params();
    let layer_params = |id: LayerId| per_layer[&id];
    if let (true, Some(path)) = (daq, &config.base) {
        return quantize_daq(backend, &loaded, path, config, eval_text_tokens, progress);
    }
    if config.is_sequential() {
        let cal = calibration_set(backend, &loaded, &config.calib, Shard::default(), progress)?;
        let factors_json = json!({
            "source": "sequential",
            "seed": config.calib.seed, "seq_len": cal.seq_len, "n_seqs": cal.seqs.len(),
            "calib": cal.source,
        });
        let n_tokens = cal.seqs.iter().map(|s| s.ids.len()).sum();
        let stream_bytes = sequential::stream_bytes(params.method, n_tokens, mc.hidden_size);
        progress.note(format!(
            "sequential: residual streams of {} calibration tokens, {} ({} f32 streams of width {})",
            n_tokens,
            memory::Bytes(stream_bytes),
            if sequential::needs_original(params.method) { "quantized and original" } else { "quantized" },
            mc.hidden_size
        ));
        let mut report = quantize_with(
            backend,
            &loaded,
            config,
            factors_json,
            Source::Sequential(&cal.seqs),
            &layers,
            eval_text_tokens,
            progress,
        )?;
        let peak_rss = sequential::peak_rss();
        if let Some(peak) = peak_rss {
            progress.note(format!(
                "sequential: peak resident memory {}",
                memory::Bytes(peak)
            ));
        }
        report.sequential = Some(SequentialMemory {
            stream_bytes,
            peak_rss,
        });
        return Ok(report);
    }
    match &config.factors {
        Some(dir) => {
            let index = factor_index(dir)?;
            let mut picks = BTreeMap::new();
            for &id in &layers {
                let files = index.get(&id).with_context(|| {
                    format!("{}: no factor files for {}", dir.display(), id.name())
                })?;
                picks.insert(id, pick_factor_file(files, per_layer[&id].method, id)?);
            }
            let first = picks
                .values()
                .next()
                .context("a model with no linear layers")?;
            let prov = read_factor_checked(first, &loaded.fingerprint)?.provenance;
            let mut factors_json = json!({
                "source": dir.display().to_string(),
                "seed": prov.seed, "seq_len": prov.seq_len, "calib": prov.calib,
                "shards": prov.shards,
            });
            record_scales_from(&mut factors_json, config);
            let fp = loaded.fingerprint.clone();
            let mut load = |id: LayerId| Ok(read_factor_checked(&picks[&id], &fp)?.factors);
            let mut round = from_factors(backend, &layer_params, scales.as_ref(), &mut load);
            quantize_with(
                backend,
                &loaded,
                config,
                factors_json,
                Source::Round(&mut round),
                &layers,
                eval_text_tokens,
                progress,
            )
        }
        None => {
            let kind = if needs_sketch_b {
                SketchKind::B
            } else {
                SketchKind::Xtx
            };
            let mut cal =
                calibration_set(backend, &loaded, &config.calib, Shard::default(), progress)?;
            let factors = collect_for_quantize(backend, &loaded, kind, &mut cal, config, progress)?;
            let mut factors_json = collected_json(kind, config.calib.seed, &cal);
            record_scales_from(&mut factors_json, config);
            let mut load = |id: LayerId| {
                factors
                    .get(&id)
                    .cloned()
                    .with_context(|| format!("no factors were collected for {}", id.name()))
            };
            let mut round = from_factors(backend, &layer_params, scales.as_ref(), &mut load);
            let report = quantize_with(
                backend,
                &loaded,
                config,
                factors_json,
                Source::Round(&mut round),
                &layers,
                eval_text_tokens,
                progress,
            )?;
            resume::finish(&quantize_factors_dir(&config.out))?;
            Ok(report)
        }
    }
}

/// Where `quantize` checkpoints the factors it collects: `OUT.factors.partial/`.
fn quantize_factors_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.factors"))
}

/// Collects `quantize`'s own factors, checkpointed like `hessian`'s; the finished set stays as the
/// checkpoint until the quantized file is written, so a run killed while quantizing does not collect
/// again.
fn collect_for_quantize<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    kind: SketchKind,
    cal: &mut Calibration,
    config: &QuantizeConfig,
    progress: &dyn Progress,
) -> Result<BTreeMap<LayerId, Factors>> {
    let prov = Provenance {
        seed: config.calib.seed,
        seq_len: cal.seq_len,
        calib: cal.source.clone(),
        shards: cal.shards.clone(),
        model_fingerprint: loaded.fingerprint.clone(),
    };
    let record = RecordHeader {
        seed: prov.seed,
        seq_len: cal.seq_len,
        n_seqs: cal.n_seqs,
        calib: prov.calib.clone(),
        shards: prov.shards.clone(),
        sketch: sketch_tag(kind),
        labels: kind
            .needs_gradients()
            .then(|| cal.labels.unwrap_or(LabelOrigin::Sampled)),
        model_fingerprint: prov.model_fingerprint.clone(),
    };
    let out = quantize_factors_dir(&config.out);
    let kinds = [kind];
    let job = Job {
        kinds: &kinds,
        seed: config.calib.seed,
        prov: &prov,
        record: &record,
        out: &out,
        every: config.checkpoint.every,
        budget: config.checkpoint.stop_after_seqs,
        label: "factors",
        progress,
    };
    let start = vec![empty_factors(&loaded.model, kind)];
    let seqs = &mut cal.seqs;
    match resume::collect(backend, &loaded.model, seqs, 0, start, &job)? {
        Outcome::Finished {
            mut sets,
            processed,
        } => {
            if processed > 0 {
                resume::save(&loaded.model, &sets, seqs, 0, seqs.len(), &job)?;
            }
            sets.pop().context("no factors collected")
        }
        Outcome::Stopped(done) => Err(ModelError::Stopped(format!("after {done} sequences"))),
    }
}

/// The provenance of factors collected inside `quantize`; `labels` says where the Fisher labels came
/// from when a calibration file gave them.
fn collected_json(kind: SketchKind, seed: u64, cal: &Calibration) -> Value {
    let mut v = json!({
        "source": "collected",
        "sketch": sketch_tag(kind),
        "seed": seed, "seq_len": cal.seq_len, "n_seqs": cal.seqs.len(), "calib": cal.source,
    });
    if let (Some(origin), true, Value::Object(o)) = (cal.labels, kind.needs_gradients(), &mut v) {
        o.insert("labels".into(), json!(origin.as_str()));
    }
    v
}

/// Where the layer loop gets each layer's statistics.
enum Source<'a> {
    /// Each layer rounded by a closure: from its factors (a folder, or collected before the loop;
    /// [`from_factors`]) or, for DAQ, against the base checkpoint's weight.
    Round(&'a mut dyn FnMut(LayerId, &Mat<f32>) -> Result<QuantizedLayer>),
    /// Collected by the sequential pipeline as it goes, on these sequences.
    Sequential(&'a [CalibSeq]),
}

/// The layer loop, the evaluation of the finished parts, and the final file.
fn quantize_with<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    config: &QuantizeConfig,
    factors_json: Value,
    source: Source<'_>,
    layers: &[LayerId],
    eval_text_tokens: Option<(Vec<u32>, String)>,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    let t0 = Instant::now();
    let params = config.spec.layer_params();
    let mut run = run_header(&params, &loaded.fingerprint, factors_json);
    // Recorded only when given, so the files of runs without overrides keep their bytes and resume.
    if !config.overrides.is_empty() {
        let kept: Vec<String> = LayerId::all(&loaded.model)
            .into_iter()
            .filter(|id| !layers.contains(id))
            .map(|id| id.name())
            .collect();
        if !kept.is_empty() {
            progress.note(format!(
                "--override keeps {} layers unquantized: {}",
                kept.len(),
                kept.join(", ")
            ));
        }
        run["overrides"] = config.overrides.to_json();
        run["kept"] = json!(kept);
    }
    let mut lines = Vec::with_capacity(layers.len());
    let mut clock = LayerClock::new(&loaded.model.config, params.method);
    progress.event(Event::Start {
        label: params.method.name(),
        total: layers.len(),
    });
    let mut on_layer = |l: &LayerDone<'_>| {
        let name = l.id.name();
        progress.event(Event::Layer {
            name: &name,
            report: l.result.map(|q| &q.report),
            seconds: l.seconds,
            done: l.done,
            total: l.total,
        });
        if l.result.is_some()
            && let Some(line) = clock.record(l.id, l.seconds, &layers[l.done..])
        {
            progress.note(line);
        }
        lines.push(LayerLine {
            name,
            report: l.result.map(|q| q.report.clone()),
            seconds: l.seconds,
        });
    };
    let outcome = match source {
        Source::Round(round) => round_layers(
            &loaded.model,
            layers,
            round,
            &run,
            &config.out,
            config.stop_after_layers,
            &mut on_layer,
        ),
        Source::Sequential(seqs) => SequentialJob {
            model: &loaded.model,
            seqs,
            params: &params,
            run: &run,
            out: &config.out,
            stop_after: config.stop_after_layers,
        }
        .run(backend, &mut |_| {}, &mut on_layer),
    };
    progress.event(Event::Finish);
    let outcome = outcome.with_context(|| format!("quantizing into {}", config.out.display()))?;
    if !outcome.finished {
        return Err(ModelError::Stopped(format!(
            "after {} layers",
            outcome.done.len()
        )));
    }
    let eval = match &config.eval {
        Some(text) => {
            let parts = outcome
                .parts
                .iter()
                .map(|(_, part)| QuantFile::open_part(part))
                .collect::<Result<Vec<_>>>()?;
            let name = crate::job::calib_set::file_name(&config.out);
            let model = QuantizedModel::from_files(name, parts, &loaded.model)?;
            let (tokens, source) = match eval_text_tokens {
                Some(read) => read,
                None => eval_tokens(backend, loaded, text, None, progress)?,
            };
            let table = eval_models(
                backend,
                &loaded.model,
                &[model],
                &tokens,
                text,
                source,
                None,
                progress,
            )?;
            Some(table)
        }
        None => None,
    };
    let eval_json = eval.as_ref().map(|t| {
        let row = &t.rows[0];
        json!({
            "kl": row.kl, "ppl": row.ppl, "original_ppl": t.original_ppl,
            "text": t.source, "window": t.window, "n_windows": t.n_windows,
        })
    });
    assemble_parts(&outcome.parts, &run, eval_json.as_ref(), &config.out)
        .with_context(|| format!("writing {}", config.out.display()))?;
    Ok(QuantizeReport {
        out: config.out.clone(),
        layers: lines,
        resumed: outcome.resumed.len(),
        seconds: t0.elapsed().as_secs_f64(),
        eval,
        sequential: None,
    })
}

/// DAQ's scale blocks searched on rayon's threads ([`yaqa_core::daq::MapBlocks`]).
fn par_blocks(n: usize, f: &(dyn Fn(usize) -> u32 + Sync)) -> Vec<u32> {
    use rayon::prelude::*;
    (0..n).into_par_iter().map(f).collect()
}

/// Refuses what DAQ cannot take, and `--base` without DAQ, before the model is opened: DAQ needs the
/// base checkpoint and is data-free, so factors and calibration have nothing to do.
fn check_daq_inputs(config: &QuantizeConfig) -> Result<()> {
    let daq = config.spec.method == Method::Daq;
    if daq {
        if config.base.is_none() {
            crate::bail!(
                "--method daq keeps the delta from the checkpoint this model was fine-tuned from: \
                 pass it as --base"
            );
        }
        if config.factors.is_some() {
            crate::bail!("--method daq is data-free: it reads no factors (drop --factors)");
        }
        if !config.calib.text.is_empty() || config.calib.ids.is_some() {
            crate::bail!(
                "--method daq is data-free: it reads no calibration (drop --calib/--calib-ids)"
            );
        }
    } else if config.daq.no_clip {
        crate::bail!("--daq-no-clip is an option of --method daq");
    } else if config.base.is_some() {
        crate::bail!(
            "--base is the reference of --method daq; to measure how a quantized fine-tune keeps its \
             delta, use `yaqa eval --base`"
        );
    }
    Ok(())
}

/// DAQ (DESIGN.md §9): every layer's FP8 scales searched against the same layer of the base at `path`
/// ([`yaqa_core::daq::quantize_layer`]), the base streamed one block at a time beside the model; then
/// the evaluation and the file as for every method. Prints how many scale blocks moved off AbsMax.
fn quantize_daq<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    path: &Path,
    config: &QuantizeConfig,
    eval_text_tokens: Option<(Vec<u32>, String)>,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    let base = open_base(loaded, path)?;
    let QuantizerSpec::Fp8 { scaling } = config.spec.layer_params().quantizer else {
        crate::bail!("--method daq needs an FP8 quantizer (checked before)");
    };
    let factors_json = json!({
        "source": "none: DAQ is data-free",
        "base": path.display().to_string(),
        "base_fingerprint": base.fingerprint,
        "search": format!("r in [{:.2}, 1.50], cosine of the delta first", config.daq.lowest() as f64 / 100.0),
    });
    let (mut moved, mut blocks) = (0usize, 0usize);
    let mut round = |id: LayerId, w: &Mat<f32>| -> Result<QuantizedLayer> {
        let block = base.model.layers.get(id.block)?;
        let (q, search) = yaqa_core::daq::quantize_layer(
            &id.name(),
            w,
            block.linear(id.kind),
            scaling,
            config.daq,
            &par_blocks,
        )?;
        moved += search.moved;
        blocks += search.multipliers.len();
        Ok(q)
    };
    let report = quantize_with(
        backend,
        loaded,
        config,
        factors_json,
        Source::Round(&mut round),
        &LayerId::all(&loaded.model),
        eval_text_tokens,
        progress,
    )?;
    if blocks > 0 {
        progress.note(format!(
            "DAQ: {moved} of {blocks} scale blocks moved off AbsMax (layers quantized in this run)"
        ));
    }
    Ok(report)
}

/// The scale multiplier of every layer in `layers` from the quantized file `path` ([`QuantizeConfig::
/// scales_from`]), checked to come from this model and this run's quantizer and rotation.
///
/// **Errors**: an unreadable file, another model's file, another quantizer or rotation, a layer without
/// a searched multiplier (kept, or quantized with per-row or group scales).
fn shared_scales(
    path: &Path,
    loaded: &Loaded,
    spec: &QuantSpec,
    layers: &[LayerId],
) -> Result<BTreeMap<LayerId, f64>> {
    let file = QuantFile::open(path)?;
    file.layers_of(loaded)?;
    let theirs = file.run();
    let ours = run_header(&spec.layer_params(), &loaded.fingerprint, Value::Null);
    for key in ["quantizer", "incoherence"] {
        if theirs[key] != ours[key] {
            crate::bail!(
                "{} was quantized with {key} {}, this run uses {}: a scale multiplier means the same \
                 scale only for the same quantizer and rotation",
                path.display(),
                theirs[key],
                ours[key]
            );
        }
    }
    let multipliers = file.scale_multipliers()?;
    layers
        .iter()
        .map(|&id| {
            let c = multipliers.get(&id).copied().with_context(|| {
                format!(
                    "{} has no searched scale multiplier for {} (a layer it kept, or one with per-row \
                     or group scales)",
                    path.display(),
                    id.name()
                )
            })?;
            Ok((id, c))
        })
        .collect()
}

/// Records `--scales-from` in the run's factor description, so a rerun with another file (or none) does
/// not resume into this one.
fn record_scales_from(factors_json: &mut Value, config: &QuantizeConfig) {
    if let Some(p) = &config.scales_from {
        factors_json["scale_c_from"] = json!(p.display().to_string());
    }
}
