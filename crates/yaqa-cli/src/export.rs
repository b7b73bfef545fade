//! `yaqa convert` and `yaqa export`: flags → [`yaqa_model::job::export`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use yaqa_model::job::export::{self, ConvertConfig, ExportConfig, ExportFormat};

use crate::args::{Device, backend};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// GGUF file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Output folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    export::convert(&ConvertConfig {
        model: args.model,
        out: args.out.clone(),
    })?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The original model the quantized file was made from.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Quantized model file.
    #[arg(long, value_name = "FILE")]
    pub quantized: PathBuf,
    /// Output folder (config.json, model.safetensors, tokenizer.json; quantize_config.json for gptq);
    /// for gguf, the output file.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Checkpoint layout.
    #[arg(long, value_enum, default_value_t = FormatArg::Bf16)]
    pub format: FormatArg,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

/// The layout `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Every weight dequantized and rounded to bf16 (any quantized file).
    Bf16,
    /// GPTQ v1 packing of the codes with float16 scales (quantized with --group G --no-incoherence, 2, 4
    /// or 8 bits).
    Gptq,
    /// compressed-tensors for vLLM: pack-quantized int4/int8 (quantized with --no-incoherence, per row or
    /// --group G) or float-quantized FP8 (fp8, fp8-row, fp8-tensor), the codes and f32 scales as they are.
    CompressedTensors,
    /// A llama.cpp GGUF file (quantized with --quantizer q8_0, q4_0, q4_1, q5_0 or q4_k --no-incoherence,
    /// any method): the codes repacked as llama.cpp's blocks, bit for bit; metadata, tokenizer, norms and
    /// embeddings copied from a GGUF original, or built from a Hugging Face folder's config.json and
    /// tokenizer.json.
    Gguf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let r = export::export(
        &cpu,
        &ExportConfig {
            model: args.model,
            quantized: args.quantized,
            out: args.out,
            format: match args.format {
                FormatArg::Bf16 => ExportFormat::Bf16,
                FormatArg::Gptq => ExportFormat::Gptq,
                FormatArg::CompressedTensors => ExportFormat::CompressedTensors,
                FormatArg::Gguf => ExportFormat::Gguf,
            },
        },
    )?;
    if let Some(s) = &r.gptq {
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
    }
    if let Some(s) = &r.compressed_tensors {
        eprintln!(
            "compressed-tensors checkpoint ({}): {} layers, {}; codes and f32 scales as quantized",
            s.scheme.format(),
            s.layers,
            s.scheme.describe()
        );
        if let Some((layer, m, n)) = &s.partial_blocks {
            eprintln!(
                "note: {layer} ({m} × {n}) ends in partial 128 × 128 scale blocks; vLLM refuses those \
                 in merged projections (q/k/v, gate/up): quantize with --quantizer fp8-row for vLLM"
            );
        }
    }
    if let Some(s) = &r.gguf {
        eprintln!(
            "llama.cpp GGUF: {} layers as {} blocks, {} other tensors with the original's values, {:.1} MiB",
            s.layers,
            s.format,
            s.copied,
            s.bytes as f64 / (1u64 << 20) as f64
        );
    }
    eprintln!("wrote {}", r.out.display());
    Ok(())
}
