//! `yaqa compare`: the KL table. One calibration set feeds every method: a forward pass for `Σ x xᵀ`
//! (Sketch A's pass 0), backward passes for Sketch A's later passes and Sketch B (pass 1 collects both from
//! the same gradients). Every quantizer (INT bit width or E8P) is quantized with each method against the same scale: round to
//! nearest searches it per matrix on `tr(Δ Σxxᵀ Δᵀ)` and the other methods take RTN's choice (DESIGN.md
//! §5). Then every model is evaluated on the same windows (KL to the original, perplexity).
//!
//! Everything lands in `--work`: factor files after each pass, each quantized model and each quantizer's
//! evaluation (`eval-<quantizer>.json`). A rerun with the same arguments reuses what is finished (factor
//! sets whose provenance matches, quantized files whose run header matches, part files of an
//! interrupted layer loop, an evaluation of the same models from the same runs on the same tokens), so a
//! killed run continues where it stopped.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use yaqa_core::backend::Backend;
use yaqa_core::layer::Method;
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::{Factors, SketchKind};

use crate::error::{Context, ModelError, Result};
use crate::formats::calib_file::{LabelOrigin, RECORD_FILE, RecordHeader, write_record};
use crate::formats::factor_file::{Provenance, factor_path, read_factors, sketch_tag};
use crate::formats::quant_file::QuantFile;
use crate::job::calib::{CalibSeq, Shard};
use crate::job::calib_set::{Calibration, calibration_set};
use crate::job::collect::{Set, empty_factors, sampled_labels};
use crate::job::evaluate::{
    EvalTable, EvalText, QuantizedModel, eval_models, eval_tokens, write_json,
};
use crate::job::factors::{load_set, next_sketch_a_pass, write_factor_dir};
use crate::job::guard::{named, refuse_overwrite};
use crate::job::pipeline::{quantize_model, run_header};
use crate::job::progress::{Progress, ProgressExt};
use crate::job::resume::{self, Job, Outcome, labels_from_record};
use crate::job::{CalibConfig, CheckpointPolicy, Grid, QuantSpec, memory, open_model, preflight};
use crate::transformer::config::ModelConfig;
use crate::transformer::tokenizer::Tokenizer;
use crate::transformer::weights::{LayerId, Model};

/// A row of the table: a rounding method and the factors it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CompareMethod {
    Rtn,
    Gptq,
    Ldlq,
    /// YAQA with Sketch A factors.
    YaqaA,
    /// YAQA with Sketch B factors.
    YaqaB,
    /// YAQA with the blend of Sketch A's and Sketch B's normalised factors ([`Factors::mix`], equal
    /// weights; not in the paper). Needs both sketches; not a default row.
    YaqaAb,
}

impl CompareMethod {
    /// Every row a table can have, in the table's order.
    pub const CHOICES: [CompareMethod; 6] = [
        CompareMethod::Rtn,
        CompareMethod::Gptq,
        CompareMethod::Ldlq,
        CompareMethod::YaqaA,
        CompareMethod::YaqaB,
        CompareMethod::YaqaAb,
    ];

    /// The default rows: the paper's methods, in the table's order.
    pub const ALL: [CompareMethod; 5] = [
        CompareMethod::Rtn,
        CompareMethod::Gptq,
        CompareMethod::Ldlq,
        CompareMethod::YaqaA,
        CompareMethod::YaqaB,
    ];

    /// The row's name (`rtn`, `gptq`, `ldlq`, `yaqa-a`, `yaqa-b`), also its flag value.
    pub fn label(self) -> &'static str {
        match self {
            CompareMethod::Rtn => "rtn",
            CompareMethod::Gptq => "gptq",
            CompareMethod::Ldlq => "ldlq",
            CompareMethod::YaqaA => "yaqa-a",
            CompareMethod::YaqaB => "yaqa-b",
            CompareMethod::YaqaAb => "yaqa-ab",
        }
    }

    fn method(self) -> Method {
        match self {
            CompareMethod::Rtn => Method::Rtn,
            CompareMethod::Gptq => Method::Gptq,
            CompareMethod::Ldlq => Method::Ldlq,
            CompareMethod::YaqaA | CompareMethod::YaqaB | CompareMethod::YaqaAb => Method::Yaqa,
        }
    }
}

/// What `compare` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareConfig {
    /// A GGUF file or a Hugging Face folder.
    pub model: PathBuf,
    /// The calibration set; Sketch A and `Σ x xᵀ` use its first `n_seqs` sequences.
    pub calib: CalibConfig,
    /// Passes of Sketch A for YAQA-A (at least 2; the reference uses 6).
    pub passes: u32,
    /// Sequences for Sketch B and for the `Σ x xᵀ` of RTN, GPTQ and LDLQ (default: `calib.n_seqs`).
    /// A calibration set's first k sequences are the same whatever its size, so raising this later
    /// only collects the new ones.
    pub b_seqs: Option<usize>,
    /// The quantizers, one table each: symmetric INT grids of some bit widths and the E8P codebook
    /// (incoherence processing on).
    pub grids: Vec<Grid>,
    /// The rows (RTN always runs: it chooses the shared scales).
    pub methods: Vec<CompareMethod>,
    /// The evaluation text (the command line samples it, when there is no file, with the calibration
    /// seed).
    pub eval: EvalText,
    /// Seed of the rotations' sign vectors (recorded).
    pub sign_seed: u64,
    /// First damping σ of `h_in` and of `h_out`.
    pub damp: f64,
    pub damp_out: f64,
    /// Coordinate-descent sweeps after every method but RTN (rows `<method>-cd<N>`).
    pub refine: usize,
    /// Folder for factors and quantized models; a rerun reuses what is finished.
    pub work: PathBuf,
    pub checkpoint: CheckpointPolicy,
}

impl Default for CompareConfig {
    fn default() -> Self {
        let spec = QuantSpec::default();
        Self {
            model: PathBuf::new(),
            calib: CalibConfig::default(),
            passes: 2,
            b_seqs: None,
            grids: vec![Grid::Int(2), Grid::Int(3), Grid::Int(4)],
            methods: CompareMethod::ALL.to_vec(),
            eval: EvalText {
                seed: 0,
                ..EvalText::default()
            },
            sign_seed: 0,
            damp: spec.damp,
            damp_out: spec.damp_out,
            refine: 0,
            work: PathBuf::new(),
            checkpoint: CheckpointPolicy::default(),
        }
    }
}

/// The KL table of one quantizer.
#[derive(Clone, Debug, PartialEq)]
pub struct GridTable {
    pub grid: Grid,
    /// The row the relative column divides by (`ldlq-<grid>`, or its refined label).
    pub reference: String,
    pub table: EvalTable,
}

/// What a finished `compare` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    pub tables: Vec<GridTable>,
    /// The whole report as JSON (rows of every quantizer and the setup), as `--json` writes it.
    pub json: Value,
    /// Seconds spent on the factors, and in all.
    pub factor_seconds: f64,
    pub seconds: f64,
}

/// What `compare` writes into its work folder, about: every factor set it collects (the passes of
/// Sketch A, Sketch B, or `Σ x xᵀ` alone), their checkpoint, and one quantized model per method and
/// quantizer.
pub fn work_bytes(config: &ModelConfig, args: &CompareConfig) -> u64 {
    let set =
        |kind| memory::block_factor_file_bytes(config, kind).saturating_mul(config.n_layers as u64);
    let has = |m: CompareMethod| {
        args.methods.contains(&m) || args.methods.contains(&CompareMethod::YaqaAb)
    };
    let mut kinds = Vec::new();
    if has(CompareMethod::YaqaA) {
        kinds.extend((0..args.passes).map(|pass| SketchKind::A { pass }));
    }
    if has(CompareMethod::YaqaB) {
        kinds.push(SketchKind::B);
    }
    if kinds.is_empty() {
        kinds.push(SketchKind::Xtx);
    }
    // The largest set once more, for the checkpoint beside it.
    let largest = kinds.iter().map(|&k| set(k)).max().unwrap_or(0);
    let factors = kinds
        .iter()
        .fold(largest, |sum, &k| sum.saturating_add(set(k)));
    // RTN runs whether asked for or not (it chooses the scales).
    let rows = args
        .methods
        .iter()
        .filter(|&&m| m != CompareMethod::Rtn)
        .count() as u64
        + 1;
    let models = args.grids.iter().fold(0u64, |sum, grid| {
        let one = memory::quantized_file_bytes(config, f64::from(grid.bits()) + 0.5);
        sum.saturating_add(one.saturating_mul(rows))
    });
    factors.saturating_add(models)
}

/// The factor sets of one calibration run.
struct FactorSets {
    /// Sketch A's last pass (YAQA-A).
    a: Option<Set>,
    /// Sketch B (YAQA-B).
    b: Option<Set>,
    /// The blend of both (YAQA-AB).
    ab: Option<Set>,
    /// `Σ x xᵀ` when neither sketch was asked for.
    xtx: Option<Set>,
}

impl FactorSets {
    /// The factors of a row; the one-sided methods read `Σ x xᵀ` from whichever set there is, Sketch B's
    /// first: it spans every sequence, Sketch A only the first `--n-seqs`.
    fn for_row(&self, row: CompareMethod) -> Option<&Set> {
        match row {
            CompareMethod::YaqaA => self.a.as_ref(),
            CompareMethod::YaqaB => self.b.as_ref(),
            CompareMethod::YaqaAb => self.ab.as_ref(),
            _ => self.xtx.as_ref().or(self.b.as_ref()).or(self.a.as_ref()),
        }
    }
}

/// Runs the comparison and returns one table per quantizer. `tokenizer` is the evaluation text's
/// tokenizer (default: the one `eval` or `calib` names, or the model's).
///
/// **Errors**: fewer than 2 passes with YAQA-A, bits no grid takes, E8P with GPTQ or `refine` or layers
/// whose width does not split into its codes, calibration or evaluation sizes the model cannot use
/// ([`CalibConfig::check`], [`EvalText::check`]), an evaluation text too short for its windows, a method
/// or grid given twice, `b_seqs` below `calib.n_seqs` (all before any work), and the errors of
/// calibration, collection, quantization and evaluation; a run stopped by `checkpoint.stop_after_seqs`
/// returns [`ModelError::Stopped`].
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    args: &CompareConfig,
    tokenizer: Option<&Tokenizer>,
    progress: &dyn Progress,
) -> Result<CompareReport> {
    let t0 = Instant::now();
    if args.passes < 2 && args.methods.contains(&CompareMethod::YaqaA) {
        crate::bail!("--passes: Sketch A needs at least 2 passes (the reference uses 6)");
    }
    if let Some(b) = args.grids.iter().find_map(|g| match g {
        Grid::Int(b) if !QuantSpec::BITS.contains(b) => Some(b),
        _ => None,
    }) {
        crate::bail!("--bits: {b} is not one of 2, 3, 4, 8");
    }
    if let Some(grid) = args.grids.iter().find(|g| matches!(g, Grid::Trellis(_))) {
        if args.methods.contains(&CompareMethod::Gptq) {
            crate::bail!(
                "--methods gptq with {grid}: GPTQ rounds one weight at a time and the trellis encodes \
                 whole 16 × 16 tiles; leave gptq out of --methods (rtn, ldlq, yaqa-a and yaqa-b take it)"
            );
        }
        if args.refine > 0 {
            crate::bail!(
                "--refine {} with {grid}: coordinate descent moves one weight at a time and the \
                 trellis encodes whole 16 × 16 tiles",
                args.refine
            );
        }
    }
    if args.grids.contains(&Grid::E8p) {
        if args.methods.contains(&CompareMethod::Gptq) {
            crate::bail!(
                "--methods gptq with E8P: GPTQ rounds one weight at a time and E8P codes cover 8 \
                 weights; leave gptq out of --methods (rtn, ldlq, yaqa-a and yaqa-b take E8P)"
            );
        }
        if args.refine > 0 {
            crate::bail!(
                "--refine {} with E8P: coordinate descent moves one weight at a time and E8P codes \
                 cover 8 weights",
                args.refine
            );
        }
    }
    // A method or grid given twice would be quantized and evaluated once more for a duplicate row or
    // table.
    if let Some(m) = args
        .methods
        .iter()
        .enumerate()
        .find_map(|(i, m)| args.methods[..i].contains(m).then_some(m))
    {
        crate::bail!("--methods: {} is given twice", m.label());
    }
    if let Some(g) = args
        .grids
        .iter()
        .enumerate()
        .find_map(|(i, g)| args.grids[..i].contains(g).then_some(g))
    {
        crate::bail!("--bits/--quantizers: {g} is given twice");
    }
    let b_seqs = args.b_seqs.unwrap_or(args.calib.n_seqs);
    if b_seqs < args.calib.n_seqs {
        crate::bail!(
            "--b-seqs {b_seqs} is below --n-seqs {}: Sketch B uses the first --n-seqs sequences and more",
            args.calib.n_seqs
        );
    }
    if b_seqs != args.calib.n_seqs && args.calib.ids.is_some() {
        crate::bail!("--b-seqs takes no --calib-ids: the ids file fixes the sequences");
    }
    let mut inputs = args.calib.inputs();
    inputs.push(named("--model", &args.model));
    inputs.extend(args.eval.text.as_deref().map(|p| named("--text", p)));
    refuse_overwrite(&[named("--work", &args.work)], &inputs)?;
    let loaded = open_model(&args.model)?;
    args.calib.check(&loaded)?;
    args.eval.check(&loaded, ["--window", "--n-windows"])?;
    preflight::check_output(
        "--work",
        &args.work,
        work_bytes(&loaded.model.config, args),
        "the factors and quantized models",
    )?;
    let shapes: Vec<(usize, usize)> = LayerId::all(&loaded.model)
        .iter()
        .map(|id| id.kind.shape(&loaded.model.config))
        .collect();
    for &grid in &args.grids {
        for row in &args.methods {
            let refine = if *row == CompareMethod::Rtn {
                0
            } else {
                args.refine
            };
            QuantSpec {
                method: row.method(),
                grid,
                refine,
                ..QuantSpec::default()
            }
            .check_shapes(&shapes)
            .with_context(|| format!("{} with {grid}", row.label()))?;
        }
    }
    let text = EvalText {
        tokenizer: args.eval.tokenizer.clone().or(args.calib.tokenizer.clone()),
        ..args.eval.clone()
    };
    // Evaluation text from a file is read before any work, so a text too short for the windows is
    // refused before the factors are collected; sampled text needs the model and comes after them.
    let text_tokens = match &text.text {
        Some(_) => Some(eval_tokens(backend, &loaded, &text, tokenizer, progress)?),
        None => None,
    };
    std::fs::create_dir_all(&args.work)
        .map_err(|e| ModelError::io(&args.work, e))
        .with_context(|| format!("creating {}", args.work.display()))?;

    let t = Instant::now();
    let drawn = CalibConfig {
        n_seqs: b_seqs,
        ..args.calib.clone()
    };
    let mut calib = calibration_set(backend, &loaded, &drawn, Shard::default(), progress)?;
    // Sequences of Sketch A and `Σ x xᵀ`: --n-seqs, or every sequence of a --calib-ids file.
    let n_main = if args.calib.ids.is_some() {
        calib.seqs.len()
    } else {
        args.calib.n_seqs
    };
    let prov = Provenance {
        seed: args.calib.seed,
        seq_len: calib.seq_len,
        calib: calib.source.clone(),
        shards: calib.shards.clone(),
        model_fingerprint: loaded.fingerprint.clone(),
    };
    let source = calib.source.clone();
    let a_note = if calib.seqs.len() > n_main {
        format!(", Sketch A on the first {n_main}")
    } else {
        String::new()
    };
    progress.note(format!(
        "calibration: {} sequences × {} tokens{a_note} ({source}, seed {})",
        calib.seqs.len(),
        calib.seq_len,
        args.calib.seed
    ));
    let sets = factor_sets(
        backend,
        &loaded.model,
        &mut calib,
        n_main,
        args,
        &prov,
        progress,
    )?;
    let seqs = &calib.seqs;
    let factor_s = t.elapsed().as_secs_f64();
    progress.note(format!("factors: {factor_s:.1} s"));

    let (tokens, text_name) = match text_tokens {
        Some(read) => read,
        None => eval_tokens(backend, &loaded, &text, tokenizer, progress)?,
    };

    let mut tables = Vec::new();
    let mut rows_json = Vec::new();
    let mut base_ppl = 0.0;
    for &grid in &args.grids {
        let mut files = Vec::new();
        // Each evaluated model's label and run header: with the windows, what a kept evaluation must match.
        let mut runs = Vec::new();
        let mut scales: Option<BTreeMap<LayerId, f64>> = None;
        // RTN first: its search chooses the scales every other method takes. It is never refined.
        let mut rows: Vec<(CompareMethod, usize)> = vec![(CompareMethod::Rtn, 0)];
        rows.extend(
            args.methods
                .iter()
                .filter(|&&m| m != CompareMethod::Rtn)
                .map(|&m| (m, args.refine)),
        );
        for (row, refine) in rows {
            let label = row_label(row, refine, grid);
            let factors = sets
                .for_row(row)
                .with_context(|| format!("no factors were collected for {label}"))?;
            let out = args.work.join(format!("{label}.safetensors"));
            let params = QuantSpec {
                method: row.method(),
                grid,
                group: None,
                incoherence: true,
                sign_seed: args.sign_seed,
                damp: args.damp,
                damp_out: args.damp_out,
                refine,
                ..QuantSpec::default()
            }
            .layer_params();
            let row_seqs = if row == CompareMethod::YaqaA {
                n_main
            } else {
                seqs.len()
            };
            let mut factors_json = json!({
                "source": "compare",
                "sketch": factors.values().next().map(|f| sketch_tag(f.kind)),
                "seed": prov.seed, "seq_len": prov.seq_len, "n_seqs": row_seqs, "calib": prov.calib,
            });
            if row == CompareMethod::YaqaAb {
                factors_json["sketch"] = json!(format!(
                    "mean of normalised a-p{} (first {n_main} sequences) and b",
                    args.passes - 1
                ));
            }
            if scales.is_some() {
                factors_json["scale_c_from"] = json!(format!("rtn-{grid}.safetensors"));
            }
            let run = run_header(&params, &loaded.fingerprint, factors_json);
            let t = Instant::now();
            let reused = finished(&out, &run);
            if !reused {
                let layers = LayerId::all(&loaded.model);
                let stage = progress.stage(&label, layers.len());
                quantize_model(
                    backend,
                    &loaded.model,
                    &layers,
                    &mut |id| {
                        factors
                            .get(&id)
                            .cloned()
                            .with_context(|| format!("no factors for {}", id.name()))
                    },
                    &params,
                    scales.as_ref(),
                    &run,
                    &out,
                    None,
                    &mut |l| stage.step(l.done),
                )
                .with_context(|| format!("quantizing {label} into {}", out.display()))?;
            }
            progress.note(format!(
                "{label}: {}",
                if reused {
                    "reused".to_string()
                } else {
                    format!("quantized in {:.1} s", t.elapsed().as_secs_f64())
                }
            ));
            if row == CompareMethod::Rtn {
                let q =
                    QuantFile::open(&out).with_context(|| format!("opening {}", out.display()))?;
                scales = Some(q.scale_multipliers()?);
            }
            if row == CompareMethod::Rtn && !args.methods.contains(&CompareMethod::Rtn) {
                continue;
            }
            runs.push(json!({"model": label, "run": run}));
            files.push((label, out));
        }
        let models = files
            .iter()
            .map(|(label, out)| {
                let q =
                    QuantFile::open(out).with_context(|| format!("opening {}", out.display()))?;
                QuantizedModel::from_files(label.clone(), vec![q], &loaded.model)
            })
            .collect::<Result<Vec<_>>>()?;
        // A rerun skips an evaluation it finished: same models from the same runs, same windows.
        let key = json!({
            "models": runs, "text": text_name, "window": text.window, "n_windows": text.n_windows,
            "tokens": tokens_digest(&tokens),
        });
        let cache = args.work.join(format!("eval-{grid}.json"));
        let kept = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["key"] == key)
            .and_then(|v| EvalTable::from_json(&v["table"]));
        let mut table = match kept {
            Some(table) => {
                progress.note(format!(
                    "{grid}: evaluation reused from {}",
                    cache.display()
                ));
                table
            }
            None => {
                let table = eval_models(
                    backend,
                    &loaded.model,
                    &models,
                    &tokens,
                    &text,
                    text_name.clone(),
                    None,
                    progress,
                )?;
                let setup = json!({
                    "source": table.source, "window": table.window, "n_windows": table.n_windows,
                });
                write_json(&cache, &json!({"key": key, "table": table.to_json(setup)}))?;
                table
            }
        };
        base_ppl = table.original_ppl;
        let reference = row_label(CompareMethod::Ldlq, args.refine, grid);
        table.reference = Some(reference.clone());
        for r in &table.rows {
            rows_json.push(json!({
                "model": r.name, "quantizer": grid.name(), "bits": grid.bits(), "kl": r.kl, "ppl": r.ppl,
            }));
        }
        tables.push(GridTable {
            grid,
            reference,
            table,
        });
    }
    let wall = t0.elapsed().as_secs_f64();
    let report = json!({
        "original_ppl": base_ppl,
        "rows": rows_json,
        "setup": {
            "model": args.model.display().to_string(),
            "calibration": {
                "source": source, "n_seqs": seqs.len(), "sketch_a_seqs": n_main,
                "seq_len": calib.seq_len, "seed": args.calib.seed, "sketch_a_passes": args.passes,
            },
            "eval": {"text": text_name, "window": text.window, "n_windows": text.n_windows},
            "quantizer": "int symmetric or e8p, one scale per matrix searched on RTN's tr(Δ Σxxᵀ Δᵀ) and shared by every method, randomized Hadamard both sides",
            "damp": args.damp,
            "damp_out": args.damp_out,
            "refine_sweeps": args.refine,
            "factors_s": factor_s,
            "wall_s": wall,
        },
    });
    Ok(CompareReport {
        tables,
        json: report,
        factor_seconds: factor_s,
        seconds: wall,
    })
}

/// FNV-1a over the evaluation's token ids: the windows a kept evaluation was made on.
fn tokens_digest(tokens: &[u32]) -> String {
    let h = tokens.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
        t.to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    });
    format!("{h:016x}")
}

/// A row's name and file stem: `ldlq-int2`, `ldlq-e8p`, or `ldlq-cd3-int2` after 3 coordinate-descent
/// sweeps.
fn row_label(row: CompareMethod, refine: usize, grid: Grid) -> String {
    match refine {
        0 => format!("{}-{grid}", row.label()),
        k => format!("{}-cd{k}-{grid}", row.label()),
    }
}

/// Whether `out` is a finished quantized file made with `run`.
fn finished(out: &Path, run: &Value) -> bool {
    out.is_file() && QuantFile::open(out).is_ok_and(|q| &q.run() == run)
}

/// Collects (or reloads from `args.work/factors`) what the rows need: pass 0 forward (`Σ x xᵀ`, which
/// is Sketch A's pass 0), pass 1 backward for Sketch A pass 1 and Sketch B together, then Sketch A's
/// remaining passes on the labels pass 1 used. All of that runs on the first `n_main` sequences; Sketch
/// B (with its `Σ x xᵀ`) then goes on alone over the rest of `calib` (`--b-seqs`). The calibration record
/// (`calibration.safetensors`, with the labels of every backward pass) is written next to the factors.
fn factor_sets<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    calib: &mut Calibration,
    n_main: usize,
    args: &CompareConfig,
    prov: &Provenance,
    progress: &dyn Progress,
) -> Result<FactorSets> {
    let dir = args.work.join("factors");
    let record = RecordHeader {
        seed: prov.seed,
        seq_len: calib.seq_len,
        n_seqs: calib.n_seqs,
        calib: prov.calib.clone(),
        shards: prov.shards.clone(),
        sketch: "compare".into(),
        labels: None,
        model_fingerprint: prov.model_fingerprint.clone(),
    };
    let given_labels = calib.labels;
    let seqs = &mut calib.seqs;
    let need_ab = args.methods.contains(&CompareMethod::YaqaAb);
    let need_a = need_ab || args.methods.contains(&CompareMethod::YaqaA);
    let need_b = need_ab || args.methods.contains(&CompareMethod::YaqaB);
    let seed = args.calib.seed;
    let n_all = seqs.len();
    // What `--stop-after-seqs` leaves of its budget, over all the stages.
    let budget = Cell::new(args.checkpoint.stop_after_seqs);
    // One pass over the sequences `from..to`: reload its sets if a previous run finished them (with `to`
    // sequences), otherwise collect them (checkpointed next to the factors, resuming a checkpoint an
    // interrupted run left) and write them, with the record of sequences `..to`, labels included once a
    // backward has run.
    let stage = |seqs: &mut Vec<CalibSeq>,
                 (from, to): (usize, usize),
                 kinds: &[SketchKind],
                 start: &dyn Fn() -> Result<Vec<Set>>,
                 label: &str|
     -> Result<Vec<Set>> {
        let cached: Option<Vec<_>> = kinds
            .iter()
            .map(|&k| load_set(&dir, model, k, prov, to as u64))
            .collect();
        if let Some(sets) = cached {
            progress.note(format!("{label}: reusing {}", dir.display()));
            return Ok(sets);
        }
        progress.note(format!("{label}: collecting sequences {from}..{to}"));
        let backward = kinds.iter().any(|k| k.needs_gradients());
        let header = RecordHeader {
            sketch: kinds
                .iter()
                .map(|&k| sketch_tag(k))
                .collect::<Vec<_>>()
                .join("+"),
            labels: backward.then(|| given_labels.unwrap_or(LabelOrigin::Sampled)),
            n_seqs: to,
            ..record.clone()
        };
        let job = Job {
            kinds,
            seed,
            prov,
            record: &header,
            out: &dir,
            every: args.checkpoint.every,
            budget: budget.get(),
            label,
            progress,
        };
        let sets = match resume::collect(backend, model, &mut seqs[..to], from, start()?, &job)? {
            Outcome::Finished { sets, processed } => {
                budget.set(budget.get().map(|b| b - processed));
                sets
            }
            Outcome::Stopped(done) => {
                return Err(ModelError::Stopped(format!(
                    "in stage {label:?} after {done} sequences"
                )));
            }
        };
        if backward {
            // Sequences before `from` went through an earlier backward, perhaps in an earlier run: their
            // labels are in the record that run wrote.
            labels_from_record(
                &dir.join(RECORD_FILE),
                &mut seqs[..from],
                &|s| {
                    sampled_labels(backend, model, s, seed)
                        .with_context(|| format!("resampling the labels of sequence {}", s.index))
                },
                progress,
            )?;
        }
        let seqs = &seqs[..to];
        for s in &sets {
            write_factor_dir(&dir, model, s, prov)?;
        }
        let path = dir.join(RECORD_FILE);
        if backward || !path.exists() {
            write_record(&path, seqs, &header)
                .with_context(|| format!("writing the calibration record {}", path.display()))?;
        }
        resume::finish(&dir)?;
        Ok(sets)
    };

    let mut out = FactorSets {
        a: None,
        b: None,
        ab: None,
        xtx: None,
    };
    if !need_a && !need_b {
        out.xtx = stage(
            seqs,
            (0, n_main),
            &[SketchKind::Xtx],
            &|| Ok(vec![empty_factors(model, SketchKind::Xtx)]),
            "Σ x xᵀ",
        )?
        .pop();
        return Ok(out);
    }
    let mut a = if need_a {
        stage(
            seqs,
            (0, n_main),
            &[SketchKind::A { pass: 0 }],
            &|| Ok(vec![empty_factors(model, SketchKind::A { pass: 0 })]),
            "A pass 0",
        )?
        .pop()
    } else {
        None
    };
    let next = |prev: &Set, pass: u32| next_sketch_a_pass(model, prev, pass);
    // Pass 1: Sketch A pass 1 and Sketch B from the same backward passes. A Sketch B set that already
    // covers at least the first `n_main` sequences (from an earlier, smaller --b-seqs) is extended
    // instead.
    let b_prev = if need_b {
        // The count in the first layer's file; `load_set` then checks every layer against it.
        let first = LayerId::all(model).into_iter().next();
        first
            .and_then(|id| read_factors(&factor_path(&dir, id, SketchKind::B)).ok())
            .map(|f| f.factors.n_seqs as usize)
            .filter(|k| (n_main..=n_all).contains(k))
            .and_then(|k| Some((k, load_set(&dir, model, SketchKind::B, prov, k as u64)?)))
    } else {
        None
    };
    let b_in_pass_1 = need_b && b_prev.is_none();
    let mut kinds = Vec::new();
    if need_a {
        kinds.push(SketchKind::A { pass: 1 });
    }
    if b_in_pass_1 {
        kinds.push(SketchKind::B);
    }
    let mut sets = if kinds.is_empty() {
        Vec::new()
    } else {
        stage(
            seqs,
            (0, n_main),
            &kinds,
            &|| {
                let mut start = Vec::new();
                if let Some(a0) = &a {
                    start.push(next(a0, 1)?);
                }
                if b_in_pass_1 {
                    start.push(empty_factors(model, SketchKind::B));
                }
                Ok(start)
            },
            match (need_a, b_in_pass_1) {
                (true, true) => "A pass 1 + B",
                (true, false) => "A pass 1",
                _ => "B",
            },
        )?
    };
    let b_so_far = if b_in_pass_1 {
        Some((n_main, sets.pop().context("Sketch B lost its first pass")?))
    } else {
        b_prev
    };
    out.b = match b_so_far {
        Some((done, set)) if done < n_all => Some(
            stage(
                seqs,
                (done, n_all),
                &[SketchKind::B],
                &|| Ok(vec![set.clone()]),
                "B, more sequences",
            )?
            .pop()
            .context("Sketch B lost its sequences")?,
        ),
        other => other.map(|(_, set)| set),
    };
    if need_a {
        a = sets.pop();
        for pass in 2..args.passes {
            let prev = a.take().context("Sketch A lost its previous pass")?;
            a = stage(
                seqs,
                (0, n_main),
                &[SketchKind::A { pass }],
                &|| Ok(vec![next(&prev, pass)?]),
                &format!("A pass {pass}"),
            )?
            .pop();
        }
        out.a = a;
    }
    if let (true, Some(a), Some(b)) = (need_ab, &out.a, &out.b) {
        let mixed = a
            .iter()
            .map(|(id, fa)| {
                let fb = b
                    .get(id)
                    .with_context(|| format!("Sketch B has no factors for {}", id.name()))?;
                let f = Factors::mix(fa, fb, 0.5).map_err(|e| e.in_layer(&id.name()))?;
                Ok((*id, f))
            })
            .collect::<Result<Set>>()?;
        out.ab = Some(mixed);
    }
    Ok(out)
}
