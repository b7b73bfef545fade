//! The flag groups several subcommands share, and what each means to the library: calibration,
//! calibration ids, damping, refinement, checkpoints, the method and grid, and `--device`, which picks
//! the backend here, once.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::Method;
use yaqa_core::quant::fp8::Fp8Scaling;
use yaqa_core::quant::ggml::GgmlFormat;
use yaqa_model::job::{CalibConfig, CheckpointPolicy, Every, Grid, QuantSpec};

/// Where the computation runs. `cuda` is hidden from the help (it is not offered where it does not
/// work) but still parsed, so asking for it gets the message of [`backend`] rather than "invalid value".
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    #[value(hide = true)]
    Cuda,
}

/// The backend for `--device`. CUDA is refused with a clear message until the CUDA backend implements
/// the model operations.
pub fn backend(device: Device) -> Result<Cpu> {
    match device {
        Device::Cpu => Ok(Cpu::default()),
        Device::Cuda => bail!(
            "--device cuda: this build of yaqa has no CUDA backend wired into the command line yet \
             (no device used); run with --device cpu"
        ),
    }
}

/// The rounding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Rtn,
    Gptq,
    Ldlq,
    Yaqa,
    Daq,
    Qronos,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Rtn => Method::Rtn,
            MethodArg::Gptq => Method::Gptq,
            MethodArg::Ldlq => Method::Ldlq,
            MethodArg::Yaqa => Method::Yaqa,
            MethodArg::Daq => Method::Daq,
            MethodArg::Qronos => Method::Qronos,
        }
    }
}

/// The quantizer: an INT grid, or a vector codebook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantizerArg {
    Int2,
    Int3,
    Int4,
    Int8,
    // The E8P lattice codebook of QuIP# (documented on `--quantizer`: a doc comment here would switch
    // the whole help to clap's long layout).
    E8p,
    // FP8 E4M3 with scales per 128 × 128 block, per row or per tensor.
    Fp8,
    Fp8Row,
    Fp8Tensor,
    // The QTIP bitshift trellis at 2, 3 and 4 bits (documented on `--quantizer`).
    Trellis2,
    Trellis3,
    Trellis4,
    // llama.cpp's block grids (documented on `--quantizer`).
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl From<QuantizerArg> for Grid {
    fn from(q: QuantizerArg) -> Grid {
        match q {
            QuantizerArg::Int2 => Grid::Int(2),
            QuantizerArg::Int3 => Grid::Int(3),
            QuantizerArg::Int4 => Grid::Int(4),
            QuantizerArg::Int8 => Grid::Int(8),
            QuantizerArg::E8p => Grid::E8p,
            QuantizerArg::Fp8 => Grid::Fp8(Fp8Scaling::Block),
            QuantizerArg::Fp8Row => Grid::Fp8(Fp8Scaling::Row),
            QuantizerArg::Fp8Tensor => Grid::Fp8(Fp8Scaling::Tensor),
            QuantizerArg::Trellis2 => Grid::Trellis(2),
            QuantizerArg::Trellis3 => Grid::Trellis(3),
            QuantizerArg::Trellis4 => Grid::Trellis(4),
            QuantizerArg::Q8_0 => Grid::Ggml(GgmlFormat::Q8_0),
            QuantizerArg::Q4_0 => Grid::Ggml(GgmlFormat::Q4_0),
            QuantizerArg::Q4_1 => Grid::Ggml(GgmlFormat::Q4_1),
            QuantizerArg::Q5_0 => Grid::Ggml(GgmlFormat::Q5_0),
            QuantizerArg::Q4K => Grid::Ggml(GgmlFormat::Q4_K),
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
    #[arg(long, allow_negative_numbers = true, default_value_t = 64)]
    pub n_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, allow_negative_numbers = true, default_value_t = 512)]
    pub seq_len: usize,
    /// Seed of the calibration windows or samples and of the sampled Fisher labels (recorded).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Accept calibration sequences and evaluation windows longer than the model's context
    /// (max_position_embeddings), at positions it was not trained for
    #[arg(long)]
    pub allow_long_context: bool,
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

/// The library's calibration config for these flags.
pub fn calib_config(calib: &CalibArgs, ids: &CalibIdsArgs) -> CalibConfig {
    CalibConfig {
        text: calib.calib.clone(),
        tokenizer: calib.tokenizer.clone(),
        ids: ids.calib_ids.clone(),
        n_seqs: calib.n_seqs,
        seq_len: calib.seq_len,
        seed: calib.seed,
        allow_long_context: calib.allow_long_context,
    }
}

/// Damping of the factors before their LDL (DESIGN.md §3), as multiples of the mean diagonal.
#[derive(Debug, Args, Clone, Copy)]
pub struct DampArgs {
    /// First damping σ of h_in, doubled until the Cholesky succeeds (GPTQ's percdamp for --method gptq)
    #[arg(long, allow_negative_numbers = true, value_name = "σ", value_parser = damping, default_value_t = yaqa_core::LdlParams::default().damp)]
    pub damp: f64,
    /// First damping σ of h_out (YAQA): larger than h_in's, because Sketch B's h_out is noisy beyond its
    /// strongest directions at small calibration sets
    #[arg(long, allow_negative_numbers = true, value_name = "σ", value_parser = damping, default_value_t = yaqa_core::layer::DEFAULT_DAMP_OUT)]
    pub damp_out: f64,
}

/// Coordinate descent after the rounding ([`yaqa_core::refine`]).
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct RefineArgs {
    /// Coordinate-descent sweeps on the method's own proxy after the rounding (0: none); each sweep
    /// revisits every weight and costs about one rounding pass
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SWEEPS",
        default_value_t = 0
    )]
    pub refine: usize,
}

/// The method, grid and preparation of `quantize` and `round`.
#[derive(Debug, Args, Clone, Copy)]
pub struct SpecArgs {
    /// rtn, gptq, ldlq, yaqa round from factors; qronos (quantize only): GPTQ after Qronos's correction
    /// on the partially quantized model's inputs, always sequential; daq (quantize only): delta-aware
    /// FP8 scales searched against the base checkpoint --base, data-free (with --quantizer fp8* and
    /// --no-incoherence)
    #[arg(long, value_enum, default_value_t = MethodArg::Yaqa)]
    pub method: MethodArg,
    /// INT grids; e8p: the E8P lattice codebook of QuIP# (2 bits, codes of 8 weights); trellisK: the
    /// QTIP trellis (K bits, 16×16 tiles); e8p and trellisK not with gptq or --refine; fp8: FP8 E4M3 with
    /// AbsMax scales per 128 × 128 block (fp8-row, fp8-tensor: per row, per tensor); q8_0, q4_0, q4_1,
    /// q5_0: llama.cpp's blocks of 32 with float16 scales fixed as llama.cpp fixes them, q4_k its
    /// super-blocks of 256 (needs --no-incoherence; export --format gguf writes them)
    #[arg(long, value_enum, default_value_t = QuantizerArg::Int4)]
    pub quantizer: QuantizerArg,
    /// Asymmetric grid with zero-points and one scale per GROUP columns (GPTQ layout; INT grids only);
    /// default: symmetric grid with one searched scale per matrix (with incoherence) or per row (without).
    #[arg(long, allow_negative_numbers = true, value_name = "GROUP")]
    pub group: Option<usize>,
    /// Skip the randomized Hadamard incoherence processing.
    #[arg(long)]
    pub no_incoherence: bool,
    /// Seed of the sign vectors of the rotations (recorded).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub sign_seed: u64,
    #[command(flatten)]
    pub damp: DampArgs,
    #[command(flatten)]
    pub refine: RefineArgs,
    /// GPTQ: round columns by decreasing diag(H) (act-order); groups keep the original column index
    /// (GPTQ's static groups)
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ: unbiased stochastic rounding inside the error feedback, seeded by --seed (recorded in the
    /// output); the OPTQ drift and ℓ∞ bounds are printed per layer
    #[arg(long)]
    pub stochastic: bool,
}

impl SpecArgs {
    /// The library's spec; `seed` seeds stochastic rounding when `--stochastic` is given.
    pub fn spec(&self, seed: u64) -> QuantSpec {
        QuantSpec {
            method: self.method.into(),
            grid: self.quantizer.into(),
            group: self.group,
            incoherence: !self.no_incoherence,
            sign_seed: self.sign_seed,
            damp: self.damp.damp,
            damp_out: self.damp.damp_out,
            refine: self.refine.refine,
            act_order: self.act_order,
            stochastic: self.stochastic.then_some(seed),
        }
    }
}

/// Checkpoints of a factor collection.
#[derive(Debug, Args, Clone, Copy)]
pub struct CheckpointArgs {
    /// Write the factors collected so far to a checkpoint folder beside the output (….partial/) about
    /// every MIN minutes of collection; rerunning the same command resumes from it
    #[arg(long, allow_negative_numbers = true, value_name = "MIN", value_parser = minutes, default_value_t = 30.0)]
    pub checkpoint_minutes: f64,
    /// Checkpoint every N sequences instead
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub checkpoint_every: Option<usize>,
    /// Stop after K sequences, as if interrupted (for testing resumption).
    #[arg(long, allow_negative_numbers = true, hide = true, value_name = "K")]
    pub stop_after_seqs: Option<usize>,
}

impl CheckpointArgs {
    pub fn policy(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            every: match self.checkpoint_every {
                Some(n) => Every::Seqs(n),
                None => Every::Secs(self.checkpoint_minutes * 60.0),
            },
            stop_after_seqs: self.stop_after_seqs,
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
