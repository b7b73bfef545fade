//! `yaqa eval`: flags → [`yaqa_model::job::evaluate`], the table printed and optionally written as JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use yaqa_model::job::evaluate::{self, EvalConfig, EvalText, write_json};
use yaqa_model::job::guard::named;
use yaqa_model::job::preflight;

use crate::args::{Device, backend};
use crate::progress::Bars;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The original model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Quantized model files to compare.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub quantized: Vec<PathBuf>,
    /// Evaluation text (default: sequences sampled from the original model).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// tokenizer.json (default: the model folder's, or rebuilt from the GGUF).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, allow_negative_numbers = true, default_value_t = 512)]
    pub window: usize,
    /// Number of windows (from the start of the text).
    #[arg(long, allow_negative_numbers = true, default_value_t = 8)]
    pub n_windows: usize,
    /// Seed of the sampled evaluation text when no --text is given.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub seed: u64,
    /// Accept windows longer than the model's context (max_position_embeddings), at positions it was
    /// not trained for
    #[arg(long)]
    pub allow_long_context: bool,
    /// The memory this run may use, such as 20G: when the original model does not fit with the
    /// evaluation, its blocks are streamed from the checkpoint one at a time (needs --text). Default: no
    /// limit.
    #[arg(long, value_name = "SIZE", value_parser = yaqa_model::job::memory::parse_bytes)]
    pub max_memory: Option<u64>,
    /// The base model --model was fine-tuned from: also report how much of the fine-tune's weight delta
    /// each quantized model keeps (sign preservation, cosine per 128×128 block and per row).
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    if let Some(json) = &args.json {
        let mut inputs = vec![named("--model", &args.model)];
        inputs.extend(args.quantized.iter().map(|p| named("--quantized", p)));
        inputs.extend(args.text.as_deref().map(|p| named("--text", p)));
        inputs.extend(args.base.as_deref().map(|p| named("--base", p)));
        preflight::check_report("--json", json, &inputs)?;
    }
    let config = EvalConfig {
        model: args.model,
        quantized: args.quantized,
        text: EvalText {
            text: args.text,
            tokenizer: args.tokenizer,
            window: args.window,
            n_windows: args.n_windows,
            seed: args.seed,
            allow_long_context: args.allow_long_context,
        },
        max_memory: args.max_memory,
        base: args.base,
    };
    let table = evaluate::run(&cpu, &config, &Bars::default())?;
    println!(
        "{} windows of {} tokens of {}",
        table.n_windows, table.window, table.source
    );
    print!("{table}");
    if let Some(path) = &args.json {
        let setup =
            json!({"text": table.source, "window": table.window, "n_windows": table.n_windows});
        write_json(path, &table.to_json(setup))?;
    }
    Ok(())
}
