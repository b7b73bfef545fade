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
use yaqa_model::calib::Shard;
use yaqa_model::checkpoint::{self, Loaded};
use yaqa_model::collect::{FactorSet, LayerId, collect, empty_factors};
use yaqa_model::eval::{kl_divergence, perplexity};
use yaqa_model::factor_file::{Provenance, factor_path, merge_into, read_factors, write_factors};
use yaqa_model::hf::{RawTensor, SafetensorsFile, write_atomic, write_hf, write_safetensors};
use yaqa_model::pipeline::{quantize_model, run_header};
use yaqa_model::quant_file::{QuantFile, report_json};
use yaqa_model::transformer::Transformer;
use yaqa_model::{Model, Tokenizer};

use crate::util::{
    backend, bar, calibration, factor_index, layer_params, load_model, pick_factor_file,
    read_factor_checked,
};
use crate::{
    CalibArgs, ConvertArgs, EvalArgs, ExportArgs, HessianArgs, HessianCollect, HessianCommand,
    QuantizeArgs, RoundArgs, SketchArg,
};

/// Collects `kinds` for every layer over `seqs` with a progress bar; returns one factor per kind.
pub fn collect_factors(
    cpu: &Cpu,
    model: &Model<f32>,
    seqs: &[yaqa_model::calib::CalibSeq],
    seed: u64,
    start: Vec<BTreeMap<LayerId, Factors>>,
    what: &str,
) -> Result<Vec<BTreeMap<LayerId, Factors>>> {
    let count = start.len();
    let mut set: FactorSet = BTreeMap::new();
    for map in start {
        for (id, f) in map {
            set.entry(id).or_default().push(f);
        }
    }
    let pb = bar(seqs.len(), what);
    collect(cpu, model, seqs, seed, &mut set, &mut |d| {
        pb.set_position(d as u64)
    })
    .context("collecting factors")?;
    pb.finish_and_clear();
    let mut out: Vec<BTreeMap<LayerId, Factors>> = vec![BTreeMap::new(); count];
    for (id, list) in set {
        for (k, f) in list.into_iter().enumerate() {
            out[k].insert(id, f);
        }
    }
    Ok(out)
}

/// Runs Sketch A's passes (pass 0 is `Σ x xᵀ`), returning the last pass.
fn sketch_a(
    cpu: &Cpu,
    model: &Model<f32>,
    seqs: &[yaqa_model::calib::CalibSeq],
    seed: u64,
    passes: u32,
) -> Result<BTreeMap<LayerId, Factors>> {
    let mut current = empty_factors(model, SketchKind::A { pass: 0 });
    for pass in 0..passes {
        if pass > 0 {
            current = current
                .iter()
                .map(|(id, f)| {
                    let m = model.layers[id.block].linear(id.kind).rows;
                    f.next_sketch_a_pass(m)
                        .map(|n| (*id, n))
                        .with_context(|| format!("starting Sketch A pass {pass} of {}", id.name()))
                })
                .collect::<Result<_>>()?;
        }
        let label = format!("A pass {pass}");
        current = collect_factors(cpu, model, seqs, seed, vec![current], &label)?
            .pop()
            .context("Sketch A pass produced no factors")?;
    }
    Ok(current)
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
    let cpu = backend(args.device)?;
    let t0 = Instant::now();
    let loaded = load_model(model)?;
    if args.sketch == SketchArg::A && args.passes < 2 {
        bail!("--passes: Sketch A needs at least 2 passes (the reference uses 6)");
    }
    if args.sketch == SketchArg::A && args.shard.count > 1 {
        bail!(
            "--shard with Sketch A is not supported: each pass needs the merged result of the previous one"
        );
    }
    let (seqs, calib) = calibration(&loaded, &args.calib, args.shard, &cpu)?;
    eprintln!(
        "collecting {:?} over {} sequences of {} tokens (shard {}, {calib})",
        args.sketch,
        seqs.len(),
        args.calib.seq_len,
        args.shard
    );
    let factors = match args.sketch {
        SketchArg::Xtx | SketchArg::B => {
            let kind = if args.sketch == SketchArg::B {
                SketchKind::B
            } else {
                SketchKind::Xtx
            };
            let start = vec![empty_factors(&loaded.model, kind)];
            collect_factors(
                &cpu,
                &loaded.model,
                &seqs,
                args.calib.seed,
                start,
                "sequences",
            )?
            .pop()
            .context("no factors collected")?
        }
        SketchArg::A => sketch_a(&cpu, &loaded.model, &seqs, args.calib.seed, args.passes)?,
    };
    let prov = Provenance {
        seed: args.calib.seed,
        seq_len: args.calib.seq_len,
        calib,
        shards: vec![args.shard.to_string()],
        model_fingerprint: loaded.fingerprint.clone(),
    };
    write_factor_dir(out, &loaded.model, &factors, &prov)?;
    eprintln!(
        "wrote {} factor files to {} in {:.1} s",
        factors.len(),
        out.display(),
        t0.elapsed().as_secs_f64()
    );
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
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
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

/// What `quantize` produced (the demo reads it back).
#[derive(Debug)]
pub struct QuantizeSummary {
    pub seconds: f64,
}

/// Quantizes with factors from a folder or collected on the fly.
pub fn quantize(args: QuantizeArgs) -> Result<QuantizeSummary> {
    let cpu = backend(args.device)?;
    let loaded = load_model(&args.model)?;
    let params = layer_params(
        args.method,
        args.quantizer,
        args.group,
        args.no_incoherence,
        args.sign_seed,
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
                Ok((f.factors.h_in, f.factors.h_out))
            };
            run_quantize(&cpu, &loaded, &params, factors_json, &mut load, &args)
        }
        None => {
            let kind = if params.method == Method::Yaqa {
                SketchKind::B
            } else {
                SketchKind::Xtx
            };
            let (seqs, calib) = calibration(&loaded, &args.calib, Shard::default(), &cpu)?;
            let start = vec![empty_factors(&loaded.model, kind)];
            let factors = collect_factors(
                &cpu,
                &loaded.model,
                &seqs,
                args.calib.seed,
                start,
                "factors",
            )?
            .pop()
            .context("no factors collected")?;
            let factors_json = collected_json(kind, &args.calib, &calib);
            let mut load = |id: LayerId| {
                let f = &factors[&id];
                Ok((f.h_in.clone(), f.h_out.clone()))
            };
            run_quantize(&cpu, &loaded, &params, factors_json, &mut load, &args)
        }
    }
}

/// The provenance of factors collected inside `quantize` or `demo`.
pub fn collected_json(kind: SketchKind, calib: &CalibArgs, source: &str) -> Value {
    json!({
        "source": "collected",
        "sketch": yaqa_model::factor_file::sketch_tag(kind),
        "seed": calib.seed, "seq_len": calib.seq_len, "n_seqs": calib.n_seqs, "calib": source,
    })
}

fn run_quantize(
    cpu: &Cpu,
    loaded: &Loaded,
    params: &yaqa_core::layer::LayerParams,
    factors_json: Value,
    load: &mut dyn FnMut(
        LayerId,
    ) -> yaqa_model::Result<(yaqa_core::SymMat, Option<yaqa_core::SymMat>)>,
    args: &QuantizeArgs,
) -> Result<QuantizeSummary> {
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
        &run,
        &args.out,
        args.stop_after_layers,
        &mut |_, done, _| pb.set_position(done as u64),
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
    } else {
        eprintln!(
            "stopped after {} layers as asked; rerun the same command to resume",
            outcome.done.len()
        );
    }
    Ok(QuantizeSummary { seconds })
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
    let seqs = yaqa_model::calib::sample_sequences(
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

/// KL to the original and perplexity of each model over the same windows.
pub fn eval_models(
    cpu: &Cpu,
    original: &Model<f32>,
    models: &[(String, Model<f32>)],
    tokens: &[u32],
    window: usize,
) -> Result<(f64, Vec<EvalRow>)> {
    let batch = 2;
    let tf = Transformer::new(original, cpu);
    let base = perplexity(&tf, tokens, window, batch).context("perplexity of the original")?;
    let pb = bar(models.len(), "evaluating");
    let mut rows = Vec::new();
    for (name, m) in models {
        let tq = Transformer::new(m, cpu);
        let kl = kl_divergence(&tf, &tq, tokens, window, batch)
            .with_context(|| format!("KL of {name}"))?;
        let ppl = perplexity(&tq, tokens, window, batch)
            .with_context(|| format!("perplexity of {name}"))?;
        rows.push(EvalRow {
            name: name.clone(),
            kl: kl.mean,
            ppl: ppl.ppl,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((base.ppl, rows))
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
    );
    let q = quantize_layer(
        &cpu,
        &name,
        &w,
        &f.factors.h_in,
        f.factors.h_out.as_ref(),
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
        "quantizer": yaqa_model::pipeline::quantizer_json(&params.quantizer),
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
    let model = dequantized_model(&cpu, &loaded, &args.quantized)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // bf16 rounds Ŵ (exact values live in the quantized file); norms and embeddings are rounded too.
    let tensors: Vec<(String, RawTensor)> = model
        .hf_tensors()
        .into_iter()
        .map(|(name, shape, data)| {
            let bytes = data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            (
                name,
                RawTensor {
                    dtype: Dtype::BF16,
                    shape,
                    bytes,
                },
            )
        })
        .collect();
    let weights = args.out.join("model.safetensors");
    write_safetensors(&weights, &tensors, "format", "pt")
        .with_context(|| format!("writing {}", weights.display()))?;
    let mut config = model.config.to_hf_json();
    if let Value::Object(o) = &mut config {
        o.insert("torch_dtype".into(), json!("bfloat16"));
    }
    write_json(&args.out.join("config.json"), &config)?;
    if let Ok(tok) = checkpoint::tokenizer_for(&args.model, None) {
        let tpath = args.out.join("tokenizer.json");
        tok.save(&tpath)
            .with_context(|| format!("writing {}", tpath.display()))?;
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
