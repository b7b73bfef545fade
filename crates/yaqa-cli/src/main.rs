//! The `yaqa` command line: collect Fisher factor sketches (`hessian`), quantize a model (`quantize`),
//! measure it (`eval`), round one matrix (`round`), convert GGUF to Hugging Face (`convert`), export a
//! dequantized checkpoint (`export`) and run the whole story on SmolLM2-135M (`demo`).
//!
//! The backend is chosen here, once (`--device`), and everything below is generic over it (STYLE.md).
//! Every file and flag boundary is wrapped in `anyhow` context naming what was being read or written.

mod commands;
mod compare;
mod demo;
mod resume;
mod sketch_a;
mod util;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Hessian(HessianArgs),
    /// Quantize every linear layer of a model (resumable).
    Quantize(QuantizeArgs),
    /// KL divergence to the original model and perplexity of quantized models, as a table.
    Eval(EvalArgs),
    /// Round one weight matrix against its factors (safetensors in, safetensors out).
    Round(RoundArgs),
    /// Convert a GGUF checkpoint into a Hugging Face safetensors folder (f32).
    Convert(ConvertArgs),
    /// Export a quantized model, dequantized, as a Hugging Face bf16 checkpoint.
    ///
    /// With `--format gptq`, export it instead as a GPTQ-packed Hugging Face checkpoint (int32 codes,
    /// float16 scales) for the GPTQ loaders of transformers and vLLM.
    Export(ExportArgs),
    /// Quantize one model with several methods and bit widths from one calibration set, and print the KL
    /// table (resumable).
    Compare(compare::CompareArgs),
    /// Quantize SmolLM2-135M with RTN, LDLQ and YAQA-B at INT3, data-free, and print the KL table.
    Demo(DemoArgs),
}

/// Where the computation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

/// Which factors to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SketchArg {
    /// Sketch A: power iteration over passes, per token.
    A,
    /// Sketch B: per-sequence gradients, one pass (the default).
    B,
    /// `Σ x xᵀ` from a forward pass (the GPTQ/LDLQ Hessian).
    Xtx,
}

/// The rounding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Rtn,
    Gptq,
    Ldlq,
    Yaqa,
}

/// The quantizer grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantizerArg {
    Int2,
    Int3,
    Int4,
    Int8,
}

impl QuantizerArg {
    pub fn bits(self) -> u32 {
        match self {
            QuantizerArg::Int2 => 2,
            QuantizerArg::Int3 => 3,
            QuantizerArg::Int4 => 4,
            QuantizerArg::Int8 => 8,
        }
    }
}

/// Where calibration sequences come from and how many.
#[derive(Debug, Args, Clone)]
pub struct CalibArgs {
    /// Calibration text files; without any, sequences are sampled from the model itself (data-free).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub calib: Vec<PathBuf>,
    /// tokenizer.json for the calibration text (default: the model folder's, or rebuilt from the GGUF).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Number of calibration sequences (before sharding).
    #[arg(long, default_value_t = 64)]
    pub n_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Seed of the calibration windows or samples and of the sampled Fisher labels (recorded).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Damping of the factors before their LDL (DESIGN.md §3), as multiples of the mean diagonal.
#[derive(Debug, Args, Clone, Copy)]
pub struct DampArgs {
    /// First damping σ of h_in, doubled until the Cholesky succeeds (GPTQ's percdamp for --method gptq)
    #[arg(long, value_name = "σ", value_parser = damping, default_value_t = yaqa_core::LdlParams::default().damp)]
    pub damp: f64,
    /// First damping σ of h_out (YAQA): larger than h_in's, because Sketch B's h_out is noisy beyond its
    /// strongest directions at small calibration sets
    #[arg(long, value_name = "σ", value_parser = damping, default_value_t = yaqa_core::layer::DEFAULT_DAMP_OUT)]
    pub damp_out: f64,
}

/// Coordinate descent after the rounding ([`yaqa_core::refine`]).
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct RefineArgs {
    /// Coordinate-descent sweeps on the method's own proxy after the rounding (0: none); each sweep
    /// revisits every weight and costs about one rounding pass
    #[arg(long, value_name = "SWEEPS", default_value_t = 0)]
    pub refine: usize,
}

/// Checkpoints of a factor collection ([`resume`]).
#[derive(Debug, Args, Clone, Copy)]
pub struct CheckpointArgs {
    /// Write the factors collected so far to a checkpoint folder beside the output (….partial/) about
    /// every MIN minutes of collection; rerunning the same command resumes from it
    #[arg(long, value_name = "MIN", value_parser = minutes, default_value_t = 30.0)]
    pub checkpoint_minutes: f64,
    /// Checkpoint every N sequences instead
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub checkpoint_every: Option<usize>,
    /// Stop after K sequences, as if interrupted (for testing resumption).
    #[arg(long, hide = true, value_name = "K")]
    pub stop_after_seqs: Option<usize>,
}

impl CheckpointArgs {
    pub fn every(&self) -> resume::Every {
        match self.checkpoint_every {
            Some(n) => resume::Every::Seqs(n),
            None => resume::Every::Secs(self.checkpoint_minutes * 60.0),
        }
    }
}

impl Default for CheckpointArgs {
    fn default() -> Self {
        Self {
            checkpoint_minutes: 30.0,
            checkpoint_every: None,
            stop_after_seqs: None,
        }
    }
}

/// A `--checkpoint-minutes` value: a finite number > 0.
fn minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number of minutes > 0")),
    }
}

/// A damping flag's value: a finite number ≥ 0.
fn damping(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number ≥ 0")),
    }
}

impl Default for DampArgs {
    fn default() -> Self {
        Self {
            damp: yaqa_core::LdlParams::default().damp,
            damp_out: yaqa_core::layer::DEFAULT_DAMP_OUT,
        }
    }
}

/// Calibration sequences from a file of token ids (`hessian` and `quantize`).
#[derive(Debug, Args, Clone)]
pub struct CalibIdsArgs {
    /// Calibration token ids instead of text or sampling: a safetensors file with `input_ids` (I32 or I64,
    /// [sequences, tokens]) and optionally the Fisher `labels` to use instead of sampled ones (a
    /// calibration.safetensors written by `yaqa hessian` replays that run)
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["calib", "tokenizer", "n_seqs", "seq_len"]
    )]
    pub calib_ids: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HessianArgs {
    #[command(subcommand)]
    pub merge: Option<HessianCommand>,
    #[command(flatten)]
    pub collect: HessianCollect,
}

#[derive(Debug, Subcommand)]
pub enum HessianCommand {
    /// Add factor shards (folders written by `yaqa hessian --shard I/N`) into one folder.
    Merge {
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Shard folders to add.
        #[arg(required = true, num_args = 1.., value_name = "DIR")]
        shards: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct HessianCollect {
    /// The model: a GGUF file or a Hugging Face folder (required unless merging).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Which sketch to collect.
    #[arg(long, value_enum, default_value_t = SketchArg::B)]
    pub sketch: SketchArg,
    /// Passes of Sketch A, all in this process (at least 2; default 2; the reference uses 6). Not with
    /// --shard or --from, which run one pass each.
    #[arg(long)]
    pub passes: Option<u32>,
    /// Run the one Sketch A pass after the one stored in DIR: a merged folder of pass K (an a-pK factor
    /// file for every layer, and calibration.safetensors holding every sequence). Its sequences and
    /// Fisher labels are reused; the model and the calibration flags (--seed, --n-seqs, --seq-len, --calib
    /// or --calib-ids) must be those of pass 0.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub calib_ids: CalibIdsArgs,
    /// Collect only shard I of N (0-based) of the calibration sequences; merge shards afterwards (default:
    /// all of them, 0/1). With --sketch a, one pass: pass 0 (Σ x xᵀ, forward only), or with --from the next.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<yaqa_model::job::calib::Shard>,
    /// Output folder: one factor file per layer, and calibration.safetensors with the token ids and the
    /// Fisher labels used (required unless merging).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = MethodArg::Yaqa)]
    pub method: MethodArg,
    #[arg(long, value_enum, default_value_t = QuantizerArg::Int4)]
    pub quantizer: QuantizerArg,
    /// Asymmetric grid with zero-points and one scale per GROUP columns (GPTQ layout); default: symmetric
    /// grid with one searched scale per matrix (with incoherence) or per row (without).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<usize>,
    /// Skip the randomized Hadamard incoherence processing.
    #[arg(long)]
    pub no_incoherence: bool,
    /// Seed of the sign vectors of the rotations (recorded).
    #[arg(long, default_value_t = 0)]
    pub sign_seed: u64,
    #[command(flatten)]
    pub damp: DampArgs,
    #[command(flatten)]
    pub refine: RefineArgs,
    /// Factor folder from `yaqa hessian`; without it the factors are collected first (Sketch B for YAQA,
    /// Σ x xᵀ otherwise) with the calibration options below.
    #[arg(long, value_name = "DIR")]
    pub factors: Option<PathBuf>,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub calib_ids: CalibIdsArgs,
    /// Output file (safetensors). Finished layers go to OUT.parts/ first, factors collected here to
    /// OUT.factors.partial/; rerunning resumes.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Stop after quantizing K layers, as if interrupted (for testing resumption).
    #[arg(long, hide = true, value_name = "K")]
    pub stop_after_layers: Option<usize>,
}

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
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Number of windows (from the start of the text).
    #[arg(long, default_value_t = 8)]
    pub n_windows: usize,
    /// Seed of the sampled evaluation text when no --text is given.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

#[derive(Debug, Args)]
pub struct RoundArgs {
    /// Safetensors file holding the weight matrix (F32, F16 or BF16, m × n).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Tensor name (default: the file's only 2-D tensor).
    #[arg(long)]
    pub tensor: Option<String>,
    /// Factor file (one layer's file from `yaqa hessian`).
    #[arg(long, value_name = "FILE")]
    pub factors: PathBuf,
    #[arg(long, value_enum, default_value_t = MethodArg::Yaqa)]
    pub method: MethodArg,
    #[arg(long, value_enum, default_value_t = QuantizerArg::Int4)]
    pub quantizer: QuantizerArg,
    /// Asymmetric grid with GROUP columns per scale.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<usize>,
    #[arg(long)]
    pub no_incoherence: bool,
    #[arg(long, default_value_t = 0)]
    pub sign_seed: u64,
    #[command(flatten)]
    pub damp: DampArgs,
    #[command(flatten)]
    pub refine: RefineArgs,
    /// Output safetensors: `w_hat` (F32) and `codes` (U8) plus the report.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// GGUF file.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Output folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The original model the quantized file was made from.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Quantized model file.
    #[arg(long, value_name = "FILE")]
    pub quantized: PathBuf,
    /// Output folder (config.json, model.safetensors, tokenizer.json; quantize_config.json for gptq).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Checkpoint layout.
    #[arg(long, value_enum, default_value_t = ExportFormat::Bf16)]
    pub format: ExportFormat,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

/// The layout `export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Every weight dequantized and rounded to bf16 (any quantized file).
    Bf16,
    /// GPTQ v1 packing of the codes with float16 scales (quantized with --group G --no-incoherence, 2, 4
    /// or 8 bits).
    Gptq,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data-free calibration sequences.
    #[arg(long, default_value_t = 8)]
    pub n_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Evaluation windows.
    #[arg(long, default_value_t = 4)]
    pub n_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Folder for the downloaded model and the demo's outputs.
    #[arg(long, value_name = "DIR", default_value = ".yaqa-cache")]
    pub cache: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hessian(a) => commands::hessian(a),
        Command::Quantize(a) => commands::quantize(a),
        Command::Eval(a) => commands::eval(a),
        Command::Round(a) => commands::round(a),
        Command::Convert(a) => commands::convert(a),
        Command::Export(a) => commands::export(a),
        Command::Compare(a) => compare::run(&a, None).map(|_| ()),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<resume::StoppedAsAsked>() => {
            eprintln!("{e}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
