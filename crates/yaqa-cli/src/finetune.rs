//! `yaqa finetune`: flags → [`yaqa_model::job::finetune`], the losses and perplexities printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use yaqa_model::job::CalibConfig;
use yaqa_model::job::finetune::{self, FinetuneConfig};

use crate::args::{Device, backend};
use crate::progress::Bars;

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// The base model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Training text files.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub text: Vec<PathBuf>,
    /// tokenizer.json for the text (default: the model folder's, or rebuilt from the GGUF).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Optimizer steps (Adam).
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub steps: usize,
    /// Windows of text per step.
    #[arg(long, allow_negative_numbers = true, default_value_t = 4)]
    pub batch: usize,
    /// Tokens each window predicts.
    #[arg(long, allow_negative_numbers = true, default_value_t = 256)]
    pub seq_len: usize,
    /// Learning rate (constant).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-4)]
    pub lr: f64,
    /// Seed of the training windows.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Windows of 256 tokens (or the model's context, if shorter) from the start of the first text on
    /// which perplexity is reported.
    #[arg(long, allow_negative_numbers = true, default_value_t = 8)]
    pub eval_windows: usize,
    /// Accept training windows longer than the model's context (max_position_embeddings), at positions
    /// it was not trained for
    #[arg(long)]
    pub allow_long_context: bool,
    /// The output folder (config.json, model.safetensors in f32, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let config = FinetuneConfig {
        model: args.model,
        calib: CalibConfig {
            text: args.text,
            tokenizer: args.tokenizer,
            seq_len: args.seq_len,
            seed: args.seed,
            allow_long_context: args.allow_long_context,
            ..CalibConfig::default()
        },
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        out: args.out,
        eval_windows: args.eval_windows,
    };
    let r = finetune::run(&cpu, &config, &Bars::default())?;
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "fine-tuned in {:.1} s: training loss {first:.4} → {last:.4}; perplexity on the first windows of \
         the text {:.3} → {:.3}; ‖ΔW‖/‖W‖ {:.2e}",
        r.seconds, r.ppl_before, r.ppl_after, r.relative_delta
    );
    println!("wrote {}", r.out.display());
    Ok(())
}
