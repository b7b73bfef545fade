//! `eval`: KL divergence to the original model and perplexity of quantized models over the same windows
//! (DESIGN.md §6), as a table; the original runs once. Also the pieces `quantize` and `compare` share:
//! the evaluation tokens, a quantized file turned back into a model, and the table itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;

use crate::error::{Context, Result};
use crate::formats::checkpoint::{Loaded, check_tokenizer, tokenizer_for};
use crate::formats::quant_file::QuantFile;
use crate::job::calib::{Shard, sample_sequences};
use crate::job::calib_set::file_name;
use crate::job::eval::{Candidate, compare_blocks};
use crate::job::memory;
use crate::job::open_model;
use crate::job::progress::{Progress, ProgressExt};
use crate::transformer::blocks::Block;
use crate::transformer::decoder::Transformer;
use crate::transformer::tokenizer::Tokenizer;
use crate::transformer::weights::{LayerId, LayerWeights, LinearKind, Model};
use yaqa_core::delta::DeltaStats;

/// The evaluation text: the first windows of a file, or sequences sampled from the original model.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalText {
    /// A text file; `None`: sample the windows from the original model (data-free).
    pub text: Option<PathBuf>,
    /// tokenizer.json for the text (default: the model folder's, or rebuilt from the GGUF).
    pub tokenizer: Option<PathBuf>,
    /// Tokens per window.
    pub window: usize,
    /// Windows, from the start of the text.
    pub n_windows: usize,
    /// Seed of the sampled text when there is no file.
    pub seed: u64,
    /// Accept windows longer than the model's `max_position_embeddings`; refused by default.
    pub allow_long_context: bool,
}

impl EvalText {
    /// Refuses sizes no evaluation of `loaded` can use, before any work: no windows, windows of fewer
    /// than 2 tokens (nothing to predict), or longer than the model's context unless
    /// `allow_long_context`. `flags` are the command's names for `window` and `n_windows`.
    ///
    /// **Errors**: [`ModelError::Refused`] naming the flag.
    pub fn check(&self, loaded: &Loaded, flags: [&str; 2]) -> Result<()> {
        let [window_flag, n_windows_flag] = flags;
        if self.n_windows == 0 {
            crate::bail!("{n_windows_flag} 0: evaluation needs at least one window");
        }
        if self.window < 2 {
            crate::bail!(
                "{window_flag} {}: an evaluation window needs at least 2 tokens (a token and the one \
                 it predicts)",
                self.window
            );
        }
        crate::job::check_context(
            &format!("{window_flag} {}", self.window),
            self.window,
            loaded,
            self.allow_long_context,
            |max| format!("lower {window_flag} to at most {max}"),
        )
    }
}

impl Default for EvalText {
    fn default() -> Self {
        Self {
            text: None,
            tokenizer: None,
            window: 512,
            n_windows: 8,
            seed: 1,
            allow_long_context: false,
        }
    }
}

/// What `eval` measures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalConfig {
    /// The original model (GGUF file or Hugging Face folder).
    pub model: PathBuf,
    /// Quantized model files.
    pub quantized: Vec<PathBuf>,
    pub text: EvalText,
    /// The memory this run may use (`--max-memory`): when the original does not fit with the
    /// evaluation, its blocks are streamed from the checkpoint ([`memory::eval_plan`]), which needs
    /// evaluation text (sampling it decodes token by token through every block). Default: no limit.
    pub max_memory: Option<u64>,
    /// The base model `config.model` was fine-tuned from (`--base`): each row then carries the delta
    /// metrics of [`yaqa_core::delta`]. Streamed, one block at a time.
    pub base: Option<PathBuf>,
}

/// The delta metrics of one quantized model against a base ([`yaqa_core::delta`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaReport {
    /// Per quantized layer, in model order.
    pub layers: Vec<(LayerId, DeltaStats)>,
    /// Every layer pooled.
    pub total: DeltaStats,
}

/// One row of the KL table.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub name: String,
    /// Mean KL(original ‖ quantized) per token.
    pub kl: f64,
    pub ppl: f64,
    /// The mean KL of each window (the windows have equal lengths, so `kl` is their mean).
    pub window_kl: Vec<f64>,
    /// With a base model: how much of the fine-tune's delta survived.
    pub delta: Option<DeltaReport>,
}

impl EvalRow {
    /// The standard error of `kl` over windows: their sample standard deviation / √windows (0 for a
    /// single window).
    pub fn kl_se(&self) -> f64 {
        let n = self.window_kl.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.window_kl.iter().sum::<f64>() / n as f64;
        let var = self
            .window_kl
            .iter()
            .map(|k| (k - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        (var / n as f64).sqrt()
    }

    /// `kl / reference.kl` with its standard error over the same windows, paired (the delta method on
    /// the per-window differences `a_i − r·b_i`, which keeps the windows' shared difficulty out of the
    /// error). `None` when the windows differ in number or the reference KL is not positive.
    pub fn ratio_to(&self, reference: &EvalRow) -> Option<(f64, f64)> {
        let n = self.window_kl.len();
        if n == 0 || n != reference.window_kl.len() || reference.kl <= 0.0 {
            return None;
        }
        let r = self.kl / reference.kl;
        if n < 2 {
            return Some((r, 0.0));
        }
        let d: Vec<f64> = self
            .window_kl
            .iter()
            .zip(&reference.window_kl)
            .map(|(a, b)| a - r * b)
            .collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Some((r, (var / n as f64).sqrt() / reference.kl))
    }
}

/// The KL table: the original's perplexity and one row per model, on the same windows.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalTable {
    pub original_ppl: f64,
    pub rows: Vec<EvalRow>,
    /// What was evaluated: the text file's name or `model-sampled text`.
    pub source: String,
    pub window: usize,
    pub n_windows: usize,
    /// The row the `KL vs ref` column divides by, when there is one.
    pub reference: Option<String>,
}

impl EvalTable {
    /// The table as JSON (`original_ppl`, `rows` of `{model, kl, kl_se, window_kl, ppl}` with
    /// `ratio_to_reference` and `ratio_se` when there is a reference row, and `setup`).
    pub fn to_json(&self, setup: Value) -> Value {
        let reference = self.reference_row();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "model": r.name, "kl": r.kl, "kl_se": r.kl_se(), "window_kl": r.window_kl,
                    "ppl": r.ppl,
                });
                if let Some((ratio, se)) = reference.and_then(|b| r.ratio_to(b)) {
                    v["ratio_to_reference"] = json!(ratio);
                    v["ratio_se"] = json!(se);
                }
                if let Some(d) = &r.delta {
                    let stats = |s: &DeltaStats| {
                        json!({
                            "sign_preservation": s.sign_rate(), "block_cosine": s.block_cos(),
                            "row_cosine": s.row_cos(), "counted": s.counted,
                        })
                    };
                    let mut total = stats(&d.total);
                    total["layers"] = d
                        .layers
                        .iter()
                        .map(|(id, s)| {
                            let mut v = stats(s);
                            v["layer"] = json!(id.name());
                            v
                        })
                        .collect();
                    v["delta"] = total;
                }
                v
            })
            .collect();
        json!({
            "original_ppl": self.original_ppl,
            "reference": self.reference,
            "rows": rows,
            "setup": setup,
        })
    }

    /// The table [`EvalTable::to_json`] wrote with `setup` = `{source, window, n_windows}`, without
    /// delta metrics or reference; `None` for JSON it did not write, or with a non-finite KL or
    /// perplexity (JSON holds those as null).
    pub fn from_json(v: &Value) -> Option<Self> {
        let rows = v["rows"]
            .as_array()?
            .iter()
            .map(|r| {
                Some(EvalRow {
                    name: r["model"].as_str()?.to_string(),
                    kl: r["kl"].as_f64()?,
                    ppl: r["ppl"].as_f64()?,
                    window_kl: r["window_kl"]
                        .as_array()?
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<_>>()?,
                    delta: None,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let setup = &v["setup"];
        Some(Self {
            original_ppl: v["original_ppl"].as_f64()?,
            rows,
            source: setup["source"].as_str()?.to_string(),
            window: usize::try_from(setup["window"].as_u64()?).ok()?,
            n_windows: usize::try_from(setup["n_windows"].as_u64()?).ok()?,
            reference: None,
        })
    }

    /// The row named by `reference`, if any.
    pub fn reference_row(&self) -> Option<&EvalRow> {
        let name = self.reference.as_ref()?;
        self.rows.iter().find(|r| &r.name == name)
    }
}

impl fmt::Display for EvalTable {
    /// The table as text, with the relative KL against the row named `reference`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = self.reference_row();
        writeln!(
            f,
            "{:<28} {:>20} {:>10} {:>16}",
            "model", "KL(orig‖q) ± se", "PPL", "× ref ± se"
        )?;
        writeln!(
            f,
            "{:<28} {:>20} {:>10.3} {:>16}",
            "original", "0", self.original_ppl, ""
        )?;
        for r in &self.rows {
            let rel = match reference.and_then(|b| r.ratio_to(b)) {
                Some((ratio, se)) => format!("{ratio:.3} ± {se:.3}"),
                None => String::new(),
            };
            let kl = format!("{:.5} ± {:.5}", r.kl, r.kl_se());
            writeln!(f, "{:<28} {:>20} {:>10.3} {:>16}", r.name, kl, r.ppl, rel)?;
        }
        if self.rows.iter().any(|r| r.delta.is_some()) {
            writeln!(
                f,
                "\nthe fine-tune's delta ΔW = W − W_base kept by each model (every layer pooled):"
            )?;
            writeln!(
                f,
                "{:<28} {:>12} {:>14} {:>12}",
                "model", "sign kept", "cos 128×128", "cos row"
            )?;
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
            let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
            for r in &self.rows {
                if let Some(d) = &r.delta {
                    let t = &d.total;
                    writeln!(
                        f,
                        "{:<28} {:>12} {:>14} {:>12}",
                        r.name,
                        pct(t.sign_rate()),
                        num(t.block_cos()),
                        num(t.row_cos())
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Evaluates every file of `config.quantized` against the original model.
///
/// **Errors**: window sizes the model cannot use ([`EvalText::check`], before any work), unreadable
/// model, text or quantized files, files quantized from another model, too little text, forward errors.
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &EvalConfig,
    progress: &dyn Progress,
) -> Result<EvalTable> {
    let loaded = match config.max_memory {
        None => open_model(&config.model)?,
        Some(budget) => {
            let model_config = crate::formats::checkpoint::config(&config.model)
                .with_context(|| format!("loading the model {}", config.model.display()))?;
            let t = &config.text;
            let plan = memory::eval_plan(
                &model_config,
                budget,
                t.window,
                t.n_windows,
                config.quantized.len(),
            )?;
            progress.note(plan.to_string());
            let keep = match plan.residency {
                memory::Residency::Resident => None,
                memory::Residency::Streamed { keep } => {
                    if t.text.is_none() {
                        crate::bail!(
                            "--max-memory {}: the model does not fit, and sampling evaluation text \
                             from it decodes token by token through every block: pass --text FILE",
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
    config.text.check(&loaded, ["--window", "--n-windows"])?;
    let (tokens, source) = eval_tokens(backend, &loaded, &config.text, None, progress)?;
    let models = config
        .quantized
        .iter()
        .map(|f| QuantizedModel::open(&loaded, f))
        .collect::<Result<Vec<_>>>()?;
    let base = match &config.base {
        Some(path) => Some(open_base(&loaded, path)?),
        None => None,
    };
    eval_models(
        backend,
        &loaded.model,
        &models,
        &tokens,
        &config.text,
        source,
        base.as_ref().map(|b| &b.model),
        progress,
    )
}

/// The base model of `eval --base`, streamed one block at a time, refused unless its shapes are the
/// fine-tuned model's and it is another checkpoint. (Fingerprints cannot tell a fine-tune from its
/// base: they hash the layout, which a fine-tune keeps. Identical weights show as no delta counted.)
///
/// **Errors**: an unreadable base (named), other shapes, the fine-tuned model's own path.
pub fn open_base(tuned: &Loaded, path: &Path) -> Result<Loaded> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(path, &tuned.path) {
        crate::bail!(
            "--base {} is the model itself: pass the checkpoint it was fine-tuned from",
            path.display()
        );
    }
    let base = crate::formats::checkpoint::load_with(path, Some(1))
        .with_context(|| format!("loading the base model {}", path.display()))?;
    let (a, b) = (&base.model.config, &tuned.model.config);
    if (a.hidden_size, a.intermediate_size, a.n_layers, a.vocab_size)
        != (b.hidden_size, b.intermediate_size, b.n_layers, b.vocab_size)
        || LinearKind::ALL.iter().any(|k| k.shape(a) != k.shape(b))
    {
        crate::bail!(
            "the base model {} has other shapes than {}: it is not the model this one was fine-tuned \
             from",
            path.display(),
            tuned.path.display()
        );
    }
    Ok(base)
}

/// A quantized model under evaluation: the files holding its layers (one quantized file, or the part
/// files of a run), dequantized block by block as the evaluation reaches them, so it never exists as a
/// whole model in memory.
#[derive(Debug)]
pub struct QuantizedModel {
    pub name: String,
    files: Vec<QuantFile>,
    /// Which file holds each quantized layer.
    index: std::collections::BTreeMap<LayerId, usize>,
}

impl QuantizedModel {
    /// The quantized file `file`, named by its stem, checked against `original`'s fingerprint.
    ///
    /// **Errors**: an unreadable file, one quantized from another model (naming both).
    pub fn open(original: &Loaded, file: &Path) -> Result<Self> {
        let q = QuantFile::open(file).with_context(|| format!("opening {}", file.display()))?;
        let fp = q.header["model_fingerprint"].as_str().unwrap_or("");
        if fp != original.fingerprint {
            crate::bail!(
                "{} was quantized from a different model than {}",
                file.display(),
                original.path.display()
            );
        }
        let name = file.file_stem().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Self::from_files(name, vec![q], &original.model)
    }

    /// A model made of the layers of `files` (each layer in at most one of them).
    ///
    /// **Errors**: unreadable layer lists, a layer in two files, layers beyond `model` (each naming the
    /// file).
    pub fn from_files(name: String, files: Vec<QuantFile>, model: &Model<f32>) -> Result<Self> {
        let mut index = std::collections::BTreeMap::new();
        for (k, q) in files.iter().enumerate() {
            let path = q.file.path();
            for id in q.layers()? {
                if id.block >= model.layers.len() {
                    crate::bail!("{}: layer {} beyond the model", path.display(), id.name());
                }
                if let Some(other) = index.insert(id, k) {
                    crate::bail!(
                        "{}: layer {} is also in {}",
                        path.display(),
                        id.name(),
                        files[other].file.path().display()
                    );
                }
            }
        }
        Ok(Self { name, files, index })
    }

    /// Whether this model quantized layer `id`.
    pub fn has(&self, id: LayerId) -> bool {
        self.index.contains_key(&id)
    }

    /// Block `i` of this model: `original` (the original model's block `i`) with each of its linear
    /// layers that this model quantized replaced by the dequantized `Ŵ`.
    ///
    /// **Errors**: dequantization errors and a layer of the wrong shape (naming the file and layer).
    pub fn block(
        &self,
        backend: &dyn Backend,
        i: usize,
        original: &LayerWeights<f32>,
    ) -> Result<LayerWeights<f32>> {
        original.with_linears(|kind| {
            let id = LayerId { block: i, kind };
            let Some(&k) = self.index.get(&id) else {
                return Ok(None);
            };
            let file = self.files[k].file.path();
            let w = self.files[k]
                .dequantize(backend, id)
                .with_context(|| format!("dequantizing {} from {}", id.name(), file.display()))?;
            if w.shape() != original.linear(kind).shape() {
                crate::bail!("{}: {} has the wrong shape", file.display(), id.name());
            }
            Ok(Some(w))
        })
    }
}

/// The original model with every quantized layer of `file` replaced by its dequantized `Ŵ`, whole in
/// memory (for export; evaluation goes block by block through [`QuantizedModel`]).
///
/// **Errors**: those of [`QuantizedModel::open`] and [`QuantizedModel::block`]; a streamed original.
pub fn dequantized_model(
    backend: &dyn Backend,
    original: &Loaded,
    file: &Path,
) -> Result<Model<f32>> {
    let q = QuantizedModel::open(original, file)?;
    let mut model = original.model.clone();
    let layers = model.layers.as_resident_mut().with_context(|| {
        format!(
            "{}: dequantizing into a streamed model is not implemented",
            file.display()
        )
    })?;
    for (i, block) in layers.iter_mut().enumerate() {
        *block = q.block(backend, i, block)?;
    }
    Ok(model)
}

/// Evaluation tokens: the first `n_windows × window` tokens of the text, or sampled sequences, with the
/// name of their source. The text is tokenized by `tokenizer`, or else by the one `text` names or the
/// model's.
///
/// **Errors**: an unreadable or too short text, a tokenizer that cannot be found, forward errors.
pub fn eval_tokens<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    text: &EvalText,
    tokenizer: Option<&Tokenizer>,
    progress: &dyn Progress,
) -> Result<(Vec<u32>, String)> {
    let (window, n_windows) = (text.window, text.n_windows);
    let need = window
        .checked_mul(n_windows)
        .filter(|&n| n > 0)
        .with_context(|| {
            format!("{n_windows} windows of {window} tokens: need at least one token")
        })?;
    if let Some(path) = &text.text {
        let owned;
        let tok = match tokenizer {
            Some(t) => {
                check_tokenizer(t, loaded).context("checking the evaluation tokenizer")?;
                t
            }
            None => {
                owned = tokenizer_for(loaded, text.tokenizer.as_deref())
                    .context("loading the tokenizer")?;
                &owned
            }
        };
        let s = crate::formats::read_text(path).context("reading the evaluation text")?;
        let mut ids = tok
            .encode(&s)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        if ids.len() < need {
            crate::bail!(
                "the evaluation text {} has {} tokens, but {n_windows} windows of {window} need {need}: \
                 give more text, or fewer or shorter windows",
                path.display(),
                ids.len()
            );
        }
        ids.truncate(need);
        return Ok((ids, file_name(path)));
    }
    let tf = Transformer::new(&loaded.model, backend);
    let bos = loaded.model.config.bos_token_id.unwrap_or(1) as u32;
    // A seed stream apart from the calibration samples', so evaluation text is never calibration text.
    let eval_seed = text.seed ^ 0x00e7_a15e_ed00_0000;
    let stage = progress.stage("eval text", n_windows);
    let seqs = sample_sequences(
        &tf,
        n_windows,
        window,
        eval_seed,
        Shard::default(),
        bos,
        8,
        &mut |d| stage.step(d),
    )
    .context("sampling evaluation text from the model")?;
    drop(stage);
    Ok((
        seqs.into_iter().flat_map(|s| s.ids).collect(),
        "model-sampled text".into(),
    ))
}

/// KL to the original and perplexity of each model over the same windows of `tokens` (the original runs
/// once), block by block ([`crate::job::eval::compare_blocks`]): each block of the original, resident
/// or streamed, is read once per chunk of windows and each model's block is dequantized from its
/// files then, so only one block of each model is in memory at a time.
///
/// **Errors**: forward and dequantization errors.
pub fn eval_models<B: Backend + ModelOps<f32>>(
    backend: &B,
    original: &Model<f32>,
    models: &[QuantizedModel],
    tokens: &[u32],
    text: &EvalText,
    source: String,
    base: Option<&Model<f32>>,
    progress: &dyn Progress,
) -> Result<EvalTable> {
    let tf = Transformer::new(original, backend);
    // Per model, the delta metrics of each layer, measured the first time its block is dequantized.
    let deltas: Vec<Mutex<BTreeMap<LayerId, DeltaStats>>> =
        models.iter().map(|_| Mutex::default()).collect();
    let candidates: Vec<_> = models
        .iter()
        .zip(&deltas)
        .map(|(m, deltas)| {
            move |i: usize, ob: &LayerWeights<f32>| {
                let q = m.block(backend, i, ob)?;
                if let Some(base) = base {
                    let bb = base.layers.get(i)?;
                    let mut d = deltas.lock().unwrap_or_else(|e| e.into_inner());
                    for kind in LinearKind::ALL {
                        let id = LayerId { block: i, kind };
                        if m.has(id) && !d.contains_key(&id) {
                            let stats = DeltaStats::of_layer(
                                ob.linear(kind),
                                bb.linear(kind),
                                q.linear(kind),
                            );
                            d.insert(id, stats);
                        }
                    }
                }
                Ok(Block::Shared(std::sync::Arc::new(q)))
            }
        })
        .collect();
    let refs: Vec<&Candidate<'_, f32>> = candidates
        .iter()
        .map(|c| c as &Candidate<'_, f32>)
        .collect();
    let chunk = memory::eval_chunk_windows(&original.config, text.window, models.len());
    let stage = progress.stage("evaluating", tokens.len() / text.window);
    let c = compare_blocks(
        &tf,
        &refs,
        tokens,
        text.window,
        memory::EVAL_BATCH,
        chunk,
        &mut |d| stage.step(d),
    )
    .context("evaluating KL and perplexity")?;
    drop(stage);
    let rows = models
        .iter()
        .zip(&c.models)
        .zip(deltas)
        .map(|((m, (kl, ppl)), d)| EvalRow {
            delta: base.map(|_| {
                let layers: Vec<_> = d
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .into_iter()
                    .collect();
                let mut total = DeltaStats::default();
                for (_, s) in &layers {
                    total.add(s);
                }
                DeltaReport { layers, total }
            }),
            name: m.name.clone(),
            kl: kl.mean,
            ppl: ppl.ppl,
            window_kl: kl
                .per_position
                .chunks((kl.per_position.len() / ppl.window_nll.len().max(1)).max(1))
                .map(|w| w.iter().sum::<f64>() / w.len() as f64)
                .collect(),
        })
        .collect();
    Ok(EvalTable {
        original_ppl: c.original.ppl,
        rows,
        source,
        window: text.window,
        n_windows: text.n_windows,
        reference: None,
    })
}

/// `value` as pretty JSON at `path`, atomically; one writer for every report and config file.
pub use crate::formats::hf::write_json;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, window_kl: &[f64]) -> EvalRow {
        EvalRow {
            name: name.into(),
            kl: window_kl.iter().sum::<f64>() / window_kl.len() as f64,
            ppl: 1.0,
            window_kl: window_kl.to_vec(),
            delta: None,
        }
    }

    #[test]
    fn standard_errors_of_the_kl_and_of_the_paired_ratio() {
        // Sample sd of (1, 2, 3) is 1: se = 1/√3.
        let a = row("a", &[1.0, 2.0, 3.0]);
        assert!((a.kl_se() - 1.0 / 3f64.sqrt()).abs() < 1e-15);
        // Proportional windows: the ratio is exact, whatever the spread of the windows.
        let b = row("b", &[2.0, 4.0, 6.0]);
        assert_eq!(a.ratio_to(&b), Some((0.5, 0.0)));
        // a_i − r b_i = (0.5, −0.5, 0) for b = (1, 5, 6)·… : r = 2/4, d = (0.5, -0.5, 0), sd 0.5.
        let c = row("c", &[1.0, 5.0, 6.0]);
        let (r, se) = a.ratio_to(&c).unwrap();
        assert!((r - 0.5).abs() < 1e-15);
        assert!((se - 0.5 / 3f64.sqrt() / 4.0).abs() < 1e-15, "{se}");
        assert_eq!(a.ratio_to(&row("d", &[1.0, 2.0])), None);
        assert_eq!(row("e", &[0.3]).kl_se(), 0.0);
    }
}
