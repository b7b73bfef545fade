//! Checkpoints out: `convert` (a GGUF file as a Hugging Face f32 folder) and `export` (a quantized file
//! as a dequantized bf16 Hugging Face checkpoint, as a GPTQ or compressed-tensors packed one, or as a
//! llama.cpp GGUF file).

use std::path::PathBuf;

use yaqa_core::backend::Backend;

use crate::error::{Context, ModelError, Result};
use crate::formats::checkpoint::{Loaded, find_tokenizer};
use crate::formats::compressed_tensors::{CtSummary, write_compressed_tensors};
use crate::formats::gptq::{GptqSummary, write_gptq};
use crate::formats::hf::{Half, half_tensors, write_hf, write_safetensors};
use crate::formats::llamacpp::{GgufSummary, write_llamacpp};
use crate::formats::quant_file::QuantFile;
use crate::job::evaluate::{dequantized_model, write_json};
use crate::job::guard::{named, refuse_overwrite};
use crate::job::open_model;

/// What `convert` converts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertConfig {
    /// A GGUF file.
    pub model: PathBuf,
    /// The output folder (config.json, model.safetensors, tokenizer.json).
    pub out: PathBuf,
}

/// Writes the GGUF `config.model` as a Hugging Face folder, with the tokenizer rebuilt from the GGUF.
///
/// **Errors**: a folder instead of a GGUF file, an unreadable model or tokenizer, I/O.
pub fn convert(config: &ConvertConfig) -> Result<()> {
    if config.model.is_dir() {
        crate::bail!(
            "{} is a folder: convert reads a GGUF file",
            config.model.display()
        );
    }
    refuse_overwrite(
        &[named("--out", &config.out)],
        &[named("--model", &config.model)],
    )?;
    let loaded = open_model(&config.model)?;
    let mc = &loaded.model.config;
    let f32_bytes = crate::job::memory::edge_bytes(mc)
        .saturating_add(crate::job::memory::block_bytes(mc).saturating_mul(mc.n_layers as u64));
    crate::job::preflight::check_output("--out", &config.out, f32_bytes, "the f32 checkpoint")?;
    write_hf(&loaded.model, &config.out)?;
    let tok =
        find_tokenizer(&config.model, None).context("rebuilding the tokenizer from the GGUF")?;
    let tpath = config.out.join("tokenizer.json");
    tok.save(&tpath)
}

/// The layout `export` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// Every weight dequantized and rounded to bf16 (any quantized file).
    #[default]
    Bf16,
    /// GPTQ v1 packing of the codes with float16 scales (asymmetric grid, no rotation, 2, 4 or 8 bits).
    Gptq,
    /// compressed-tensors, vLLM's native format: `pack-quantized` from the asymmetric INT grid (4 or 8
    /// bits, groups or whole rows) and `float-quantized` from FP8, with the file's f32 scales (no
    /// rotation).
    CompressedTensors,
    /// A llama.cpp GGUF file: the codes of llama.cpp's block grids (`q8_0`, `q4_0`, `q4_1`, `q5_0`,
    /// `q4_k`, no rotation) repacked as ggml blocks; metadata, tokenizer and other tensors from a GGUF
    /// original, or built from a Hugging Face folder's `config.json` and `tokenizer.json`.
    Gguf,
}

/// What `export` exports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportConfig {
    /// The original model the quantized file was made from.
    pub model: PathBuf,
    pub quantized: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    pub format: ExportFormat,
}

/// What `export` wrote: for the packed formats, the summary of the repacking.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    pub out: PathBuf,
    pub gptq: Option<GptqSummary>,
    pub compressed_tensors: Option<CtSummary>,
    pub gguf: Option<GgufSummary>,
}

/// Writes `config.quantized` as a checkpoint of `config.format`, with the model's tokenizer when it has
/// one.
///
/// **Errors**: unreadable files, a quantized file of another model, layers the format cannot hold (named),
/// I/O.
pub fn export(backend: &dyn Backend, config: &ExportConfig) -> Result<ExportReport> {
    refuse_overwrite(
        &[named("--out", &config.out)],
        &[
            named("--model", &config.model),
            named("--quantized", &config.quantized),
        ],
    )?;
    let loaded = open_model(&config.model)?;
    let mc = &loaded.model.config;
    let f32_bytes = crate::job::memory::edge_bytes(mc)
        .saturating_add(crate::job::memory::block_bytes(mc).saturating_mul(mc.n_layers as u64));
    crate::job::preflight::check_output("--out", &config.out, f32_bytes / 2, "the checkpoint")?;
    let open = || {
        let file = &config.quantized;
        QuantFile::open(file).with_context(|| format!("opening {}", file.display()))
    };
    // The writers' errors name the quantized file and the layer already.
    let (gptq, compressed_tensors) = match config.format {
        ExportFormat::Bf16 => {
            export_bf16(backend, &loaded, config)?;
            (None, None)
        }
        ExportFormat::Gguf => {
            // One file with the tokenizer inside: no folder, no tokenizer.json.
            let s = write_llamacpp(&loaded, &open()?, &config.out)?;
            return Ok(ExportReport {
                out: config.out.clone(),
                gptq: None,
                compressed_tensors: None,
                gguf: Some(s),
            });
        }
        ExportFormat::Gptq => (Some(write_gptq(&loaded, &open()?, &config.out)?), None),
        ExportFormat::CompressedTensors => (
            None,
            Some(write_compressed_tensors(&loaded, &open()?, &config.out)?),
        ),
    };
    if let Ok(tok) = find_tokenizer(&config.model, None) {
        let tpath = config.out.join("tokenizer.json");
        tok.save(&tpath)?;
    }
    Ok(ExportReport {
        out: config.out.clone(),
        gptq,
        compressed_tensors,
        gguf: None,
    })
}

/// `export --format bf16`: the dequantized model, every tensor in bf16.
fn export_bf16(backend: &dyn Backend, loaded: &Loaded, config: &ExportConfig) -> Result<()> {
    let model = dequantized_model(backend, loaded, &config.quantized)?;
    std::fs::create_dir_all(&config.out).map_err(|e| ModelError::io(&config.out, e))?;
    // bf16 rounds Ŵ (exact values live in the quantized file); norms and embeddings are rounded too.
    let tensors = half_tensors(&model, Half::Bf16, |_| false)?;
    let weights = config.out.join("model.safetensors");
    write_safetensors(&weights, &tensors, "format", "pt")?;
    write_json(
        &config.out.join("config.json"),
        &model.config.to_hf_json_as("bfloat16"),
    )
}
