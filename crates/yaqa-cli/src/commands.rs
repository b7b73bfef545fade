//! The subcommands other than `demo`: each reads its inputs with context on every file, calls the
//! library (`yaqa-model`, `yaqa-core`), shows progress on stderr and writes its outputs atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use safetensors::Dtype;
use serde_json::{Value, json};
use yaqa_backend_cpu::Cpu;
use yaqa_core::Mat;
use yaqa_core::layer::{Method, quantize_layer};
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::formats::calib_file::{
    LabelOrigin, RECORD_FILE, RecordHeader, merge_records, write_record,
};
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::factor_file::{
    Provenance, factor_path, merge_into, parse_sketch_tag, read_factors, sketch_tag, write_factors,
};
use yaqa_model::formats::hf::{
    RawTensor, SafetensorsFile, write_atomic, write_hf, write_safetensors,
};
use yaqa_model::formats::quant_file::{QuantFile, report_json};
use yaqa_model::job::calib::{CalibSeq, Shard};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::pipeline::{quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::LayerId;
use yaqa_model::{Model, Tokenizer};

use crate::resume;
use crate::sketch_a::{self, Plan};
use crate::util::{
    Calibration, backend, bar, calibration_set, factor_index, layer_params, load_model,
    pick_factor_file, read_factor_checked,
};
use crate::{
    ConvertArgs, EvalArgs, ExportArgs, HessianArgs, HessianCollect, HessianCommand, QuantizeArgs,
    RoundArgs, SketchArg,
};

/// Accumulates `seqs` into the factor maps `start` (one per sketch), reporting the sequences done to
/// `progress`; returns the maps and the Fisher labels the backward passes used.
pub fn collect_sets(
    cpu: &Cpu,
    model: &Model<f32>,
    seqs: &[CalibSeq],
    seed: u64,
    start: Vec<BTreeMap<LayerId, Factors>>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<resume::Set>, Vec<Vec<u32>>)> {
    let count = start.len();
    let mut set: FactorSet = BTreeMap::new();
    for map in start {
        for (id, f) in map {
            set.entry(id).or_default().push(f);
        }
    }
    let labels =
        collect(cpu, model, seqs, seed, &mut set, progress).context("collecting factors")?;
    let mut out: Vec<BTreeMap<LayerId, Factors>> = vec![BTreeMap::new(); count];
    for (id, list) in set {
        for (k, f) in list.into_iter().enumerate() {
            out[k].insert(id, f);
        }
    }
    Ok((out, labels))
}

/// Puts the labels a collection used on their sequences.
pub fn attach_labels(seqs: &mut [CalibSeq], labels: Vec<Vec<u32>>) {
    for (s, l) in seqs.iter_mut().zip(labels) {
        s.labels = Some(l);
    }
}

/// Runs Sketch A's passes (pass 0 is `Σ x xᵀ`), returning the last pass. The labels pass 1 samples (or
/// the ones the sequences came with) are put on `seqs` and used by every later pass, so the power
/// iteration runs on one Fisher sample (resampling with the same seeds would draw the same labels, at
/// the price of one more forward per sequence and pass) and the record holds one `labels` tensor.
///
/// Each pass is checkpointed as `job` says, and a finished pass stays the checkpoint until the next pass
/// writes its own, so a rerun goes on inside the pass the run stopped in: the checkpoint's sums carry
/// their pass's start ([`Factors::pass_start`]).
fn sketch_a(
    cpu: &Cpu,
    model: &Model<f32>,
    seqs: &mut [CalibSeq],
    passes: u32,
    job: &resume::Job<'_>,
) -> Result<BTreeMap<LayerId, Factors>> {
    let all: Vec<SketchKind> = (0..passes).map(|pass| SketchKind::A { pass }).collect();
    let checkpointed = resume::checkpointed_kind(job.out, model, job.prov, job.record.n_seqs, &all)
        .and_then(|k| {
            let (set, _) = resume::checkpointed_set(job.out, model, k, job.prov)?;
            Some((k, set))
        });
    let (mut pass, mut current) = match checkpointed {
        Some((SketchKind::A { pass }, set)) => (
            pass,
            set.iter().map(|(id, f)| (*id, f.pass_start())).collect(),
        ),
        _ => (0, empty_factors(model, SketchKind::A { pass: 0 })),
    };
    let mut budget = job.budget;
    loop {
        let kind = [SketchKind::A { pass }];
        let label = format!("A pass {pass}");
        let pass_job = resume::Job {
            kinds: &kind,
            label: &label,
            budget,
            ..*job
        };
        let (set, processed) = match resume::collect(cpu, model, seqs, 0, vec![current], &pass_job)?
        {
            resume::Outcome::Finished {
                mut sets,
                processed,
            } => {
                budget = budget.map(|b| b - processed);
                let set = sets.pop().context("Sketch A pass produced no factors")?;
                (set, processed)
            }
            resume::Outcome::Stopped(done) => {
                return Err(resume::StoppedAsAsked(format!(
                    "in Sketch A pass {pass} after {done} sequences"
                ))
                .into());
            }
        };
        if pass + 1 >= passes {
            return Ok(set);
        }
        if processed > 0 {
            // Otherwise the checkpoint already is this finished pass.
            resume::save(
                model,
                std::slice::from_ref(&set),
                seqs,
                0,
                seqs.len(),
                &pass_job,
            )?;
        }
        pass += 1;
        current = set
            .iter()
            .map(|(id, f)| {
                let m = model.layers[id.block].linear(id.kind).rows;
                f.next_sketch_a_pass(m)
                    .map(|n| (*id, n))
                    .with_context(|| format!("starting Sketch A pass {pass} of {}", id.name()))
            })
            .collect::<Result<_>>()?;
    }
}

pub fn hessian(args: HessianArgs) -> Result<()> {
    match args.merge {
        Some(HessianCommand::Merge { out, shards }) => merge(&out, &shards),
        None => hessian_collect(args.collect),
    }
}

fn hessian_collect(args: HessianCollect) -> Result<()> {
    let (Some(model), Some(out)) = (&args.model, &args.out) else {
        bail!("yaqa hessian needs --model and --out (or the merge subcommand)");
    };
    // Sketch A runs every pass here (`--passes`), or one pass of a sharded run (`sketch_a` module).
    let plan = sketch_a::plan(&args)?;
    let passes = match plan {
        Some(Plan::FromStart(passes)) => {
            sketch_a::check_out(out, passes - 1)?;
            passes
        }
        _ => 0,
    };
    let cpu = backend(args.device)?;
    let t0 = Instant::now();
    let loaded = load_model(model)?;
    if let Some(Plan::After(from)) = plan {
        return sketch_a::next_pass(&cpu, &loaded, &args, from, out, t0);
    }
    let shard = args.shard.unwrap_or_default();
    let Calibration {
        mut seqs,
        source,
        seq_len,
        n_seqs,
        shards,
        labels: given_labels,
    } = calibration_set(
        &loaded,
        &args.calib,
        args.calib_ids.calib_ids.as_deref(),
        shard,
        &cpu,
    )?;
    eprintln!(
        "collecting {:?} over {} sequences of {seq_len} tokens (shard {shard}, {source}{})",
        args.sketch,
        seqs.len(),
        if given_labels.is_some() && args.sketch != SketchArg::Xtx {
            ", labels from the file"
        } else {
            ""
        }
    );
    let sketch = match args.sketch {
        SketchArg::Xtx => SketchKind::Xtx,
        SketchArg::B => SketchKind::B,
        SketchArg::A => SketchKind::A { pass: passes - 1 },
    };
    let prov = Provenance {
        seed: args.calib.seed,
        seq_len,
        calib: source,
        shards,
        model_fingerprint: loaded.fingerprint.clone(),
    };
    let record = RecordHeader {
        seed: prov.seed,
        seq_len,
        n_seqs,
        calib: prov.calib.clone(),
        shards: prov.shards.clone(),
        sketch: sketch_tag(sketch),
        labels: match sketch {
            // A sharded pass 0 keeps the labels a calibration file gave, for the passes that follow.
            SketchKind::A { pass: 0 } => given_labels,
            _ => sketch
                .needs_gradients()
                .then(|| given_labels.unwrap_or(LabelOrigin::Sampled)),
        },
        model_fingerprint: prov.model_fingerprint.clone(),
    };
    let kind = [sketch];
    let job = resume::Job {
        kinds: &kind,
        seed: args.calib.seed,
        prov: &prov,
        record: &record,
        out,
        every: args.checkpoint.every(),
        budget: args.checkpoint.stop_after_seqs,
        label: match sketch {
            SketchKind::B => "Sketch B",
            _ => "Σ x xᵀ",
        },
    };
    let factors = match args.sketch {
        SketchArg::Xtx | SketchArg::B => {
            let start = vec![empty_factors(&loaded.model, sketch)];
            match resume::collect(&cpu, &loaded.model, &mut seqs, 0, start, &job)? {
                resume::Outcome::Finished { mut sets, .. } => {
                    sets.pop().context("no factors collected")?
                }
                resume::Outcome::Stopped(done) => {
                    return Err(resume::StoppedAsAsked(format!("after {done} sequences")).into());
                }
            }
        }
        SketchArg::A => sketch_a(&cpu, &loaded.model, &mut seqs, passes, &job)?,
    };
    write_factor_dir(out, &loaded.model, &factors, &prov)?;
    let path = out.join(RECORD_FILE);
    write_record(&path, &seqs, &record)
        .with_context(|| format!("writing the calibration record {}", path.display()))?;
    resume::finish(out)?;
    eprintln!(
        "wrote {} factor files and {RECORD_FILE} to {} in {:.1} s",
        factors.len(),
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let SketchKind::A { pass: 0 } = sketch {
        sketch_a::next_steps(0, shard, out);
    }
    Ok(())
}

/// Writes one factor file per layer into `dir`.
pub fn write_factor_dir(
    dir: &Path,
    model: &Model<f32>,
    factors: &BTreeMap<LayerId, Factors>,
    prov: &Provenance,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (id, f) in factors {
        let m = model.layers[id.block].linear(id.kind).rows;
        let path = factor_path(dir, *id, f.kind);
        write_factors(&path, *id, m, f, prov)
            .with_context(|| format!("writing factors {}", path.display()))?;
    }
    Ok(())
}

fn merge(out: &Path, shards: &[PathBuf]) -> Result<()> {
    let first = &shards[0];
    let index = factor_index(first)?;
    // A merged Sketch A pass is the start of the next one: it must not land among another pass's files.
    for tag in index.values().flat_map(|files| files.keys()) {
        if let Some(SketchKind::A { pass }) = parse_sketch_tag(tag) {
            sketch_a::check_out(out, pass)?;
        }
    }
    // The calibration records first: they refuse a repeated shard or sequence before any factor file
    // is written. Folders from before records existed have none; a mixture is refused.
    let records: Vec<PathBuf> = shards.iter().map(|d| d.join(RECORD_FILE)).collect();
    let missing: Vec<&PathBuf> = records.iter().filter(|p| !p.is_file()).collect();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if missing.is_empty() {
        let dest = out.join(RECORD_FILE);
        merge_records(&records, &dest)
            .with_context(|| format!("merging the calibration records into {}", dest.display()))?;
    } else if missing.len() < records.len() {
        bail!(
            "{} is missing although other shards have one: every shard must come with its record",
            missing[0].display()
        );
    } else {
        eprintln!("no {RECORD_FILE} in the shards: merging the factors only");
    }
    let mut written = 0;
    for files in index.values() {
        for path in files.values() {
            let name = path
                .file_name()
                .context("factor file without a name")?
                .to_owned();
            let mut acc =
                read_factors(path).with_context(|| format!("reading {}", path.display()))?;
            for other_dir in &shards[1..] {
                let p = other_dir.join(&name);
                let other = read_factors(&p).with_context(|| {
                    format!(
                        "reading {} (every shard must hold the same layers)",
                        p.display()
                    )
                })?;
                merge_into(&mut acc, &other, &p)?;
            }
            let dest = out.join(&name);
            write_factors(&dest, acc.layer, acc.m, &acc.factors, &acc.provenance)
                .with_context(|| format!("writing {}", dest.display()))?;
            written += 1;
        }
    }
    eprintln!(
        "merged {} shards into {} ({written} files)",
        shards.len(),
        out.display()
    );
    Ok(())
}

/// Quantizes with factors from a folder or collected on the fly.
pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let loaded = load_model(&args.model)?;
    let params = layer_params(
        args.method,
        args.quantizer,
        args.group,
        args.no_incoherence,
        args.sign_seed,
        &args.damp,
        args.refine.refine,
    );
    match &args.factors {
        Some(dir) => {
            let index = factor_index(dir)?;
            let mut picks = BTreeMap::new();
            for id in LayerId::all(&loaded.model) {
                let files = index.get(&id).with_context(|| {
                    format!("{}: no factor files for {}", dir.display(), id.name())
                })?;
                picks.insert(id, pick_factor_file(files, params.method, id)?);
            }
            let first = picks
                .values()
                .next()
                .context("a model with no linear layers")?;
            let prov = read_factor_checked(first, &loaded.fingerprint)?.provenance;
            let factors_json = json!({
                "source": dir.display().to_string(),
                "seed": prov.seed, "seq_len": prov.seq_len, "calib": prov.calib,
                "shards": prov.shards,
            });
            let fp = loaded.fingerprint.clone();
            let mut load = |id: LayerId| {
                let path = &picks[&id];
                let f = read_factor_checked(path, &fp)
                    .map_err(|e| yaqa_model::ModelError::Input(format!("{e:#}")))?;
                Ok(f.factors)
            };
            run_quantize(&cpu, &loaded, &params, factors_json, &mut load, &args)
        }
        None => {
            let kind = if params.method == Method::Yaqa {
                SketchKind::B
            } else {
                SketchKind::Xtx
            };
            let mut cal = calibration_set(
                &loaded,
                &args.calib,
                args.calib_ids.calib_ids.as_deref(),
                Shard::default(),
                &cpu,
            )?;
            let factors = collect_for_quantize(&cpu, &loaded, kind, &mut cal, &args)?;
            let factors_json = collected_json(kind, args.calib.seed, &cal);
            let mut load = |id: LayerId| Ok(factors[&id].clone());
            run_quantize(&cpu, &loaded, &params, factors_json, &mut load, &args)?;
            resume::finish(&quantize_factors_dir(&args.out))
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
fn collect_for_quantize(
    cpu: &Cpu,
    loaded: &Loaded,
    kind: SketchKind,
    cal: &mut Calibration,
    args: &QuantizeArgs,
) -> Result<BTreeMap<LayerId, Factors>> {
    let prov = Provenance {
        seed: args.calib.seed,
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
    let out = quantize_factors_dir(&args.out);
    let kinds = [kind];
    let job = resume::Job {
        kinds: &kinds,
        seed: args.calib.seed,
        prov: &prov,
        record: &record,
        out: &out,
        every: args.checkpoint.every(),
        budget: args.checkpoint.stop_after_seqs,
        label: "factors",
    };
    let start = vec![empty_factors(&loaded.model, kind)];
    let seqs = &mut cal.seqs;
    match resume::collect(cpu, &loaded.model, seqs, 0, start, &job)? {
        resume::Outcome::Finished {
            mut sets,
            processed,
        } => {
            if processed > 0 {
                resume::save(&loaded.model, &sets, seqs, 0, seqs.len(), &job)?;
            }
            sets.pop().context("no factors collected")
        }
        resume::Outcome::Stopped(done) => {
            Err(resume::StoppedAsAsked(format!("after {done} sequences")).into())
        }
    }
}

/// The provenance of factors collected inside `quantize`; `labels` says where the Fisher labels came
/// from when a calibration file gave them.
pub fn collected_json(kind: SketchKind, seed: u64, cal: &Calibration) -> Value {
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

fn run_quantize(
    cpu: &Cpu,
    loaded: &Loaded,
    params: &yaqa_core::layer::LayerParams,
    factors_json: Value,
    load: &mut dyn FnMut(LayerId) -> yaqa_model::Result<yaqa_core::sketch::Factors>,
    args: &QuantizeArgs,
) -> Result<()> {
    let t0 = Instant::now();
    let run = run_header(params, &loaded.fingerprint, factors_json);
    let layers = LayerId::all(&loaded.model);
    let pb = bar(layers.len(), params.method.name());
    let outcome = quantize_model(
        cpu,
        &loaded.model,
        &layers,
        load,
        params,
        None,
        &run,
        &args.out,
        args.stop_after_layers,
        &mut |l| {
            if let Some(q) = l.result {
                pb.suspend(|| eprintln!("{}", layer_line(&l.id.name(), &q.report, l.seconds)));
            }
            pb.set_position(l.done as u64)
        },
    )
    .with_context(|| format!("quantizing into {}", args.out.display()))?;
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    if outcome.finished {
        eprintln!(
            "{}: {} layers quantized, {} resumed, {:.1} s",
            args.out.display(),
            outcome.done.len(),
            outcome.resumed.len(),
            seconds
        );
        Ok(())
    } else {
        Err(resume::StoppedAsAsked(format!("after {} layers", outcome.done.len())).into())
    }
}

/// One line of the per-layer report `quantize` prints: proxy errors, damping, scale and time.
fn layer_line(name: &str, r: &yaqa_core::layer::LayerReport, seconds: f64) -> String {
    let two = r
        .proxy_two_sided
        .map_or_else(String::new, |p| format!(" two-sided {p:.3e}"));
    let damp_out = r.damp_out.map_or_else(String::new, |d| format!("/{d:.3}"));
    let scale = r.scale_c.map_or_else(String::new, |c| format!(" c {c:.1}"));
    let refine = r.refine.map_or_else(String::new, |s| {
        format!(" cd {} sweeps/{} moves", s.sweeps, s.moves)
    });
    format!(
        "{name:<36} proxy {:.3e}{two} damp {:.3}{damp_out}{scale}{refine} {seconds:.2} s",
        r.proxy_one_sided, r.damp_in
    )
}

/// The original model with every quantized layer of `file` replaced by its dequantized `Ŵ`.
pub fn dequantized_model(cpu: &Cpu, original: &Loaded, file: &Path) -> Result<Model<f32>> {
    let q = QuantFile::open(file).with_context(|| format!("opening {}", file.display()))?;
    let fp = q.header["model_fingerprint"].as_str().unwrap_or("");
    if fp != original.fingerprint {
        bail!(
            "{} was quantized from a different model than {}",
            file.display(),
            original.path.display()
        );
    }
    let mut model = original.model.clone();
    for id in q.layers()? {
        let w = q
            .dequantize(cpu, id)
            .with_context(|| format!("dequantizing {} from {}", id.name(), file.display()))?;
        let slot = model
            .layers
            .get_mut(id.block)
            .with_context(|| format!("{}: layer {} beyond the model", file.display(), id.name()))?
            .linear_mut(id.kind);
        if slot.shape() != w.shape() {
            bail!("{}: {} has the wrong shape", file.display(), id.name());
        }
        *slot = w;
    }
    Ok(model)
}

/// Evaluation tokens: the first `n × window` tokens of a text, or sampled sequences.
pub fn eval_tokens(
    cpu: &Cpu,
    loaded: &Loaded,
    text: Option<&Path>,
    tokenizer: Option<&Tokenizer>,
    window: usize,
    n_windows: usize,
    seed: u64,
) -> Result<(Vec<u32>, String)> {
    let need = window * n_windows;
    if let Some(path) = text {
        let owned;
        let tok = match tokenizer {
            Some(t) => t,
            None => {
                owned = checkpoint::tokenizer_for(&loaded.path, None)
                    .context("loading the tokenizer")?;
                &owned
            }
        };
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading evaluation text {}", path.display()))?;
        let mut ids = tok
            .encode(&s)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        if ids.len() < need {
            bail!(
                "{} has {} tokens, fewer than {n_windows} windows of {window}",
                path.display(),
                ids.len()
            );
        }
        ids.truncate(need);
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        return Ok((ids, name));
    }
    let tf = Transformer::new(&loaded.model, cpu);
    let bos = loaded.model.config.bos_token_id.unwrap_or(1) as u32;
    // A seed stream apart from the calibration samples', so evaluation text is never calibration text.
    let eval_seed = seed ^ 0x00e7_a15e_ed00_0000;
    let pb = bar(n_windows, "eval text");
    let seqs = yaqa_model::job::calib::sample_sequences(
        &tf,
        n_windows,
        window,
        eval_seed,
        Shard::default(),
        bos,
        8,
        &mut |d| pb.set_position(d as u64),
    )
    .context("sampling evaluation text from the model")?;
    pb.finish_and_clear();
    Ok((
        seqs.into_iter().flat_map(|s| s.ids).collect(),
        "model-sampled text".into(),
    ))
}

/// One row of the KL table.
#[derive(Clone, Debug)]
pub struct EvalRow {
    pub name: String,
    pub kl: f64,
    pub ppl: f64,
}

/// KL to the original and perplexity of each model over the same windows (the original runs once).
pub fn eval_models(
    cpu: &Cpu,
    original: &Model<f32>,
    models: &[(String, Model<f32>)],
    tokens: &[u32],
    window: usize,
) -> Result<(f64, Vec<EvalRow>)> {
    let batch = 2;
    let tf = Transformer::new(original, cpu);
    let tqs: Vec<_> = models
        .iter()
        .map(|(_, m)| Transformer::new(m, cpu))
        .collect();
    let refs: Vec<_> = tqs.iter().collect();
    let pb = bar(tokens.len() / window, "evaluating");
    let c = yaqa_model::job::eval::compare(&tf, &refs, tokens, window, batch, &mut |d| {
        pb.set_position(d as u64)
    })
    .context("evaluating KL and perplexity")?;
    pb.finish_and_clear();
    let rows = models
        .iter()
        .zip(&c.models)
        .map(|((name, _), (kl, ppl))| EvalRow {
            name: name.clone(),
            kl: kl.mean,
            ppl: ppl.ppl,
        })
        .collect();
    Ok((c.original.ppl, rows))
}

/// The table as text, with the relative KL against the first row named `reference`.
pub fn render_table(base_ppl: f64, rows: &[EvalRow], reference: Option<&str>) -> String {
    let refkl = reference.and_then(|r| rows.iter().find(|x| x.name == r).map(|x| x.kl));
    let mut s = format!(
        "{:<28} {:>12} {:>10} {:>14}\n",
        "model", "KL(orig‖q)", "PPL", "KL vs ref"
    );
    s += &format!(
        "{:<28} {:>12} {:>10.3} {:>14}\n",
        "original", "0", base_ppl, ""
    );
    for r in rows {
        let rel = match refkl {
            Some(k) if k > 0.0 => format!("{:+.1}%", 100.0 * (r.kl / k - 1.0)),
            _ => String::new(),
        };
        s += &format!(
            "{:<28} {:>12.5} {:>10.3} {:>14}\n",
            r.name, r.kl, r.ppl, rel
        );
    }
    s
}

/// The table as JSON.
pub fn table_json(base_ppl: f64, rows: &[EvalRow], extra: Value) -> Value {
    json!({
        "original_ppl": base_ppl,
        "rows": rows.iter().map(|r| json!({"model": r.name, "kl": r.kl, "ppl": r.ppl})).collect::<Vec<_>>(),
        "setup": extra,
    })
}

/// Writes JSON atomically.
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).context("formatting JSON")?;
    write_atomic(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| yaqa_model::ModelError::io(tmp, e))
    })
    .with_context(|| format!("writing {}", path.display()))
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let loaded = load_model(&args.model)?;
    let tok = match (&args.text, &args.tokenizer) {
        (Some(_), t) => Some(
            checkpoint::tokenizer_for(&loaded.path, t.as_deref())
                .context("loading the tokenizer")?,
        ),
        _ => None,
    };
    let (tokens, source) = eval_tokens(
        &cpu,
        &loaded,
        args.text.as_deref(),
        tok.as_ref(),
        args.window,
        args.n_windows,
        args.seed,
    )?;
    let mut models = Vec::new();
    for f in &args.quantized {
        let name = f
            .file_stem()
            .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into());
        models.push((name, dequantized_model(&cpu, &loaded, f)?));
    }
    let (base, rows) = eval_models(&cpu, &loaded.model, &models, &tokens, args.window)?;
    println!(
        "{} windows of {} tokens of {source}",
        args.n_windows, args.window
    );
    print!("{}", render_table(base, &rows, None));
    if let Some(path) = &args.json {
        let setup = json!({"text": source, "window": args.window, "n_windows": args.n_windows});
        write_json(path, &table_json(base, &rows, setup))?;
    }
    Ok(())
}

pub fn round(args: RoundArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let file = SafetensorsFile::open(&args.weights)
        .with_context(|| format!("opening {}", args.weights.display()))?;
    let name = match &args.tensor {
        Some(n) => n.clone(),
        None => {
            let two_d: Vec<&String> = file
                .tensors
                .iter()
                .filter(|(_, t)| t.shape.len() == 2)
                .map(|(n, _)| n)
                .collect();
            match two_d.as_slice() {
                [one] => (*one).clone(),
                _ => bail!(
                    "{} holds {} 2-D tensors: name one with --tensor",
                    args.weights.display(),
                    two_d.len()
                ),
            }
        }
    };
    let (shape, data) = file
        .tensor_f32(&name)
        .with_context(|| format!("reading {name} from {}", args.weights.display()))?;
    let [m, n] = shape[..] else {
        bail!(
            "{}: {name} is not a matrix: shape {shape:?}",
            args.weights.display()
        );
    };
    let w = Mat::from_vec(m, n, data)?;
    let f = read_factors(&args.factors)
        .with_context(|| format!("reading factors {}", args.factors.display()))?;
    let params = layer_params(
        args.method,
        args.quantizer,
        args.group,
        args.no_incoherence,
        args.sign_seed,
        &args.damp,
        args.refine.refine,
    );
    let q = quantize_layer(
        &cpu,
        &name,
        &w,
        &f.factors.for_method(params.method),
        &params,
    )
    .with_context(|| format!("rounding {name}"))?;
    let codes = q
        .codes
        .iter()
        .map(|&c| u8::try_from(c))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .context("codes above 255")?;
    let tensors = vec![
        (
            "w_hat".to_string(),
            RawTensor::f32s(vec![m, n], &q.w_hat.data),
        ),
        (
            "codes".to_string(),
            RawTensor {
                dtype: Dtype::U8,
                shape: vec![m, n],
                bytes: codes,
            },
        ),
    ];
    let header = json!({
        "tensor": name,
        "method": params.method.name(),
        "quantizer": yaqa_model::job::pipeline::quantizer_json(&params.quantizer),
        "incoherence": params.incoherence,
        "sign_seed": params.seed,
        "report": report_json(&q.report),
    });
    write_safetensors(&args.out, &tensors, "yaqa", &header.to_string())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&report_json(&q.report))?);
    Ok(())
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    if args.model.is_dir() {
        bail!(
            "{} is a folder: convert reads a GGUF file",
            args.model.display()
        );
    }
    let loaded = load_model(&args.model)?;
    write_hf(&loaded.model, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let tok = checkpoint::tokenizer_for(&args.model, None)
        .context("rebuilding the tokenizer from the GGUF")?;
    let tpath = args.out.join("tokenizer.json");
    tok.save(&tpath)
        .with_context(|| format!("writing {}", tpath.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let loaded = load_model(&args.model)?;
    match args.format {
        crate::ExportFormat::Bf16 => export_bf16(&cpu, &loaded, &args)?,
        crate::ExportFormat::Gptq => export_gptq(&loaded, &args)?,
    }
    if let Ok(tok) = checkpoint::tokenizer_for(&args.model, None) {
        let tpath = args.out.join("tokenizer.json");
        tok.save(&tpath)
            .with_context(|| format!("writing {}", tpath.display()))?;
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// `export --format bf16`: the dequantized model, every tensor in bf16.
fn export_bf16(cpu: &Cpu, loaded: &Loaded, args: &ExportArgs) -> Result<()> {
    let model = dequantized_model(cpu, loaded, &args.quantized)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // bf16 rounds Ŵ (exact values live in the quantized file); norms and embeddings are rounded too.
    let tensors =
        yaqa_model::formats::hf::half_tensors(&model, yaqa_model::formats::hf::Half::Bf16, |_| {
            false
        });
    let weights = args.out.join("model.safetensors");
    write_safetensors(&weights, &tensors, "format", "pt")
        .with_context(|| format!("writing {}", weights.display()))?;
    let mut config = model.config.to_hf_json();
    if let Value::Object(o) = &mut config {
        o.insert("torch_dtype".into(), json!("bfloat16"));
    }
    write_json(&args.out.join("config.json"), &config)
}

/// `export --format gptq`: the codes repacked for the GPTQ loaders (`yaqa_model::formats::gptq`).
fn export_gptq(loaded: &Loaded, args: &ExportArgs) -> Result<()> {
    let file = &args.quantized;
    let q = QuantFile::open(file).with_context(|| format!("opening {}", file.display()))?;
    // Its errors name the quantized file and the layer already.
    let s = yaqa_model::formats::gptq::write_gptq(loaded, &q, &args.out)?;
    eprintln!(
        "GPTQ v1 checkpoint: {} layers, int{} groups of {}; float16 scales change the dequantized \
         weights by at most {:.2e} relative ({})",
        s.layers, s.bits, s.group_size, s.max_rel_change, s.worst_layer
    );
    if s.shifted_groups > 0 {
        eprintln!(
            "{} groups with zero-point 0 written as zero-point 1 with codes raised by one (same levels)",
            s.shifted_groups
        );
    }
    Ok(())
}
