//! `eval`: KL divergence to the original model and perplexity of quantized models over the same windows
//! (DESIGN.md §6), as a table; the original runs once. Also the pieces `quantize` and `compare` share:
//! the evaluation tokens, a quantized file turned back into a model, and the table itself.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;

use crate::error::{Context, ModelError, Result};
use crate::formats::checkpoint::{Loaded, check_tokenizer, tokenizer_for};
use crate::formats::hf::write_atomic;
use crate::formats::quant_file::QuantFile;
use crate::job::calib::{Shard, sample_sequences};
use crate::job::calib_set::file_name;
use crate::job::open_model;
use crate::job::progress::{Progress, ProgressExt};
use crate::transformer::decoder::Transformer;
use crate::transformer::tokenizer::Tokenizer;
use crate::transformer::weights::Model;

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
}

/// One row of the KL table.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    pub name: String,
    /// Mean KL(original ‖ quantized) per token.
    pub kl: f64,
    pub ppl: f64,
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
    /// The table as JSON (`original_ppl`, `rows` of `{model, kl, ppl}`, and `setup`).
    pub fn to_json(&self, setup: Value) -> Value {
        json!({
            "original_ppl": self.original_ppl,
            "rows": self.rows.iter().map(|r| json!({"model": r.name, "kl": r.kl, "ppl": r.ppl})).collect::<Vec<_>>(),
            "setup": setup,
        })
    }
}

impl fmt::Display for EvalTable {
    /// The table as text, with the relative KL against the row named `reference`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refkl = self
            .reference
            .as_ref()
            .and_then(|r| self.rows.iter().find(|x| &x.name == r).map(|x| x.kl));
        writeln!(
            f,
            "{:<28} {:>12} {:>10} {:>14}",
            "model", "KL(orig‖q)", "PPL", "KL vs ref"
        )?;
        writeln!(
            f,
            "{:<28} {:>12} {:>10.3} {:>14}",
            "original", "0", self.original_ppl, ""
        )?;
        for r in &self.rows {
            let rel = match refkl {
                Some(k) if k > 0.0 => format!("{:+.1}%", 100.0 * (r.kl / k - 1.0)),
                _ => String::new(),
            };
            writeln!(
                f,
                "{:<28} {:>12.5} {:>10.3} {:>14}",
                r.name, r.kl, r.ppl, rel
            )?;
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
    let loaded = open_model(&config.model)?;
    config.text.check(&loaded, ["--window", "--n-windows"])?;
    let (tokens, source) = eval_tokens(backend, &loaded, &config.text, None, progress)?;
    let mut models = Vec::new();
    for f in &config.quantized {
        let name = f
            .file_stem()
            .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into());
        models.push((name, dequantized_model(backend, &loaded, f)?));
    }
    eval_models(
        backend,
        &loaded.model,
        &models,
        &tokens,
        &config.text,
        source,
        progress,
    )
}

/// The original model with every quantized layer of `file` replaced by its dequantized `Ŵ`.
///
/// **Errors**: an unreadable file, one quantized from another model, layers beyond the model or of the
/// wrong shape (each naming the file).
pub fn dequantized_model(
    backend: &dyn Backend,
    original: &Loaded,
    file: &Path,
) -> Result<Model<f32>> {
    let q = QuantFile::open(file).with_context(|| format!("opening {}", file.display()))?;
    let fp = q.header["model_fingerprint"].as_str().unwrap_or("");
    if fp != original.fingerprint {
        crate::bail!(
            "{} was quantized from a different model than {}",
            file.display(),
            original.path.display()
        );
    }
    dequantize_into(backend, original.model.clone(), &q)
}

/// `model` with every layer of `q` replaced by its dequantized `Ŵ`.
pub(crate) fn dequantize_into(
    backend: &dyn Backend,
    mut model: Model<f32>,
    q: &QuantFile,
) -> Result<Model<f32>> {
    let file = q.file.path();
    for id in q.layers()? {
        let w = q
            .dequantize(backend, id)
            .with_context(|| format!("dequantizing {} from {}", id.name(), file.display()))?;
        let layers = model.layers.as_resident_mut().with_context(|| {
            format!(
                "{}: dequantizing into a streamed model is not implemented",
                file.display()
            )
        })?;
        let slot = layers
            .get_mut(id.block)
            .with_context(|| format!("{}: layer {} beyond the model", file.display(), id.name()))?
            .linear_mut(id.kind);
        if slot.shape() != w.shape() {
            crate::bail!("{}: {} has the wrong shape", file.display(), id.name());
        }
        *slot = w;
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
                "{} has {} tokens, fewer than {n_windows} windows of {window}",
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
/// once).
///
/// **Errors**: forward errors.
pub fn eval_models<B: Backend + ModelOps<f32>>(
    backend: &B,
    original: &Model<f32>,
    models: &[(String, Model<f32>)],
    tokens: &[u32],
    text: &EvalText,
    source: String,
    progress: &dyn Progress,
) -> Result<EvalTable> {
    let batch = 2;
    let tf = Transformer::new(original, backend);
    let tqs: Vec<_> = models
        .iter()
        .map(|(_, m)| Transformer::new(m, backend))
        .collect();
    let refs: Vec<_> = tqs.iter().collect();
    let stage = progress.stage("evaluating", tokens.len() / text.window);
    let c = crate::job::eval::compare(&tf, &refs, tokens, text.window, batch, &mut |d| {
        stage.step(d)
    })
    .context("evaluating KL and perplexity")?;
    drop(stage);
    let rows = models
        .iter()
        .zip(&c.models)
        .map(|((name, _), (kl, ppl))| EvalRow {
            name: name.clone(),
            kl: kl.mean,
            ppl: ppl.ppl,
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

/// Writes pretty JSON atomically.
///
/// **Errors**: I/O on `path` (named).
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| ModelError::Input(format!("formatting JSON: {e}")))?;
    write_atomic(path, |tmp| std::fs::write(tmp, &text))
}
