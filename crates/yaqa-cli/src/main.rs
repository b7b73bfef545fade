//! The `yaqa` command line: collect Fisher factor sketches (`hessian`), quantize a model (`quantize`),
//! measure it (`eval`), round one matrix (`round`), convert GGUF to Hugging Face (`convert`), export a
//! quantized checkpoint (`export`), compare methods (`compare`), fine-tune a model for the delta
//! metrics (`finetune`) and run the whole story on SmolLM2-135M
//! (`demo`).
//!
//! A thin shell over [`yaqa_model::job`]: each subcommand's file turns its flags into the library's
//! config, runs it on the backend `--device` picks ([`args::backend`]) and prints the report; progress
//! arrives as events and is drawn by [`progress::Bars`].

mod args;
mod compare;
mod eval;
mod export;
mod finetune;
mod hessian;
mod progress;
mod quantize;
mod round;

use clap::{Parser, Subcommand};
use yaqa_model::ModelError;

/// Model-preserving post-training quantization of LLMs (YAQA, GPTQ, LDLQ, RTN).
#[derive(Debug, Parser)]
#[command(name = "yaqa", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect Kronecker-factored Fisher sketches of every linear layer, or merge shards of them.
    ///
    /// Sketch A on several machines goes one pass at a time: `--sketch a --shard I/N` runs pass 0 of
    /// shard I, `hessian merge` adds the shards' folders, `--sketch a --from MERGED --shard I/N` runs the
    /// next pass of shard I, merge again, and so on. Every Sketch A run with --shard or --from does
    /// exactly one pass.
    Hessian(hessian::HessianArgs),
    /// Quantize every linear layer of a model (resumable).
    Quantize(quantize::QuantizeArgs),
    /// KL divergence to the original model and perplexity of quantized models, as a table.
    Eval(eval::EvalArgs),
    /// Round one weight matrix against its factors (safetensors in, safetensors out).
    Round(round::RoundArgs),
    /// Convert a GGUF checkpoint into a Hugging Face safetensors folder (f32).
    Convert(export::ConvertArgs),
    /// Export a quantized model, dequantized, as a Hugging Face bf16 checkpoint.
    ///
    /// With `--format gptq`, export it instead as a GPTQ-packed Hugging Face checkpoint (int32 codes,
    /// float16 scales) for the GPTQ loaders of transformers and vLLM. With `--format gguf`, as one GGUF
    /// file llama.cpp loads: the codes of llama.cpp's block grids (quantize --quantizer q8_0, q4_0 or
    /// q4_1 --no-incoherence, from a GGUF model) in llama.cpp's blocks, bit for bit.
    Export(export::ExportArgs),
    /// Quantize one model with several methods and bit widths from one calibration set, and print the KL
    /// table (resumable).
    Compare(compare::CompareArgs),
    /// Fine-tune a model's linear layers on a text for a few deterministic Adam steps, as a Hugging Face
    /// folder: the base/fine-tuned pair that delta-aware quantization and `eval --base` measure.
    Finetune(finetune::FinetuneArgs),
    /// Quantize SmolLM2-135M with RTN, LDLQ, YAQA-A and YAQA-B at INT3, data-free, and print the KL table.
    Demo(compare::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hessian(a) => hessian::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Round(a) => round::run(a),
        Command::Convert(a) => export::convert(a),
        Command::Export(a) => export::export(a),
        Command::Compare(a) => compare::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Demo(a) => compare::demo(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A run stopped by the hidden test flags leaves what a killed run leaves, and succeeds.
        Err(e)
            if e.downcast_ref::<ModelError>()
                .is_some_and(ModelError::is_stopped) =>
        {
            eprintln!("{e}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", render(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: a cause whose text its wrapper already shows (an I/O error
/// inside a message naming the file) is not repeated.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
