//! `yaqa compare` and `yaqa demo`: flags → [`yaqa_model::job::compare`] and [`yaqa_model::job::demo`],
//! one KL table per quantizer printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use yaqa_model::job::Grid;
use yaqa_model::job::compare::{self, CompareConfig, CompareMethod, CompareReport};
use yaqa_model::job::demo::{self, DemoConfig};
use yaqa_model::job::evaluate::{EvalTable, EvalText, write_json};
use yaqa_model::job::guard::named;
use yaqa_model::job::preflight;

use crate::args::{
    CalibArgs, CalibIdsArgs, CheckpointArgs, DampArgs, Device, backend, calib_config,
};
use crate::progress::Bars;

/// A row of the table: a rounding method and the factors it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum RowArg {
    Rtn,
    Gptq,
    Ldlq,
    /// YAQA with Sketch A factors.
    YaqaA,
    /// YAQA with Sketch B factors.
    YaqaB,
    /// YAQA with the equal-weight blend of Sketch A's and B's normalised factors (not in the paper;
    /// collects both sketches)
    YaqaAb,
}

impl From<RowArg> for CompareMethod {
    fn from(r: RowArg) -> Self {
        match r {
            RowArg::Rtn => CompareMethod::Rtn,
            RowArg::Gptq => CompareMethod::Gptq,
            RowArg::Ldlq => CompareMethod::Ldlq,
            RowArg::YaqaA => CompareMethod::YaqaA,
            RowArg::YaqaB => CompareMethod::YaqaB,
            RowArg::YaqaAb => CompareMethod::YaqaAb,
        }
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[command(flatten)]
    pub calib: CalibArgs,
    #[command(flatten)]
    pub calib_ids: CalibIdsArgs,
    /// Passes of Sketch A for YAQA-A (at least 2; the reference uses 6).
    #[arg(long, allow_negative_numbers = true, default_value_t = 2)]
    pub passes: u32,
    /// Sequences for Sketch B and for the `Σ x xᵀ` of RTN, GPTQ and LDLQ (default: --n-seqs); Sketch A
    /// keeps the first --n-seqs, its passes being the expensive part. Sketch B improves with more
    /// sequences; a calibration set's first k sequences are the same whatever its size, so raising this
    /// later only collects the new ones.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "N",
        conflicts_with = "calib_ids"
    )]
    pub b_seqs: Option<usize>,
    /// Bit widths of the symmetric INT grid (incoherence processing on); default 2,3,4.
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',')]
    pub bits: Vec<u32>,
    /// The quantizers instead, one table each: int2, int3, int4, int8, e8p, trellis2, trellis3, trellis4
    /// (E8P and the trellis take rtn, ldlq, yaqa-a and yaqa-b, not gptq or --refine), fp8, fp8-row,
    /// fp8-tensor
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "QUANTIZER",
        conflicts_with = "bits"
    )]
    pub quantizers: Vec<Grid>,
    /// Methods to compare (RTN always runs: it chooses the shared scales).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "rtn,gptq,ldlq,yaqa-a,yaqa-b"
    )]
    pub methods: Vec<RowArg>,
    /// Evaluation text (default: sequences sampled from the model).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, allow_negative_numbers = true, default_value_t = 512)]
    pub window: usize,
    /// Evaluation windows (the first ones of the text).
    #[arg(long, allow_negative_numbers = true, default_value_t = 8)]
    pub n_windows: usize,
    /// Seed of the sign vectors of the rotations (recorded).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub sign_seed: u64,
    #[command(flatten)]
    pub damp: DampArgs,
    /// Coordinate-descent sweeps after every method but RTN (0: none); the rows are labelled
    /// `<method>-cd<SWEEPS>`, so they share a --work folder with the unrefined ones
    #[arg(
        long,
        allow_negative_numbers = true,
        value_name = "SWEEPS",
        default_value_t = 0
    )]
    pub refine: usize,
    /// Folder for factors and quantized models; a rerun reuses what is finished.
    #[arg(long, value_name = "DIR")]
    pub work: PathBuf,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let config = CompareConfig {
        model: args.model,
        calib: calib_config(&args.calib, &args.calib_ids),
        passes: args.passes,
        b_seqs: args.b_seqs,
        grids: if !args.quantizers.is_empty() {
            args.quantizers
        } else if !args.bits.is_empty() {
            args.bits.into_iter().map(Grid::Int).collect()
        } else {
            CompareConfig::default().grids
        },
        methods: args.methods.into_iter().map(Into::into).collect(),
        eval: EvalText {
            text: args.text,
            tokenizer: None,
            window: args.window,
            n_windows: args.n_windows,
            // The evaluation text is sampled with the calibration seed (its stream is kept apart).
            seed: args.calib.seed,
            allow_long_context: args.calib.allow_long_context,
        },
        sign_seed: args.sign_seed,
        damp: args.damp.damp,
        damp_out: args.damp.damp_out,
        refine: args.refine,
        work: args.work,
        checkpoint: args.checkpoint.policy(),
    };
    if let Some(json) = &args.json {
        let mut inputs = config.calib.inputs();
        inputs.push(named("--model", &config.model));
        inputs.extend(config.eval.text.as_deref().map(|p| named("--text", p)));
        preflight::check_report("--json", json, &inputs)?;
    }
    let report = compare::run(&cpu, &config, None, &Bars::default())?;
    print_report(&report, args.json.as_deref(), &|_| None)
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data-free calibration sequences.
    #[arg(long, allow_negative_numbers = true, default_value_t = 8)]
    pub n_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, allow_negative_numbers = true, default_value_t = 128)]
    pub seq_len: usize,
    /// Passes of Sketch A for YAQA-A (at least 2).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4)]
    pub passes: u32,
    /// Evaluation windows.
    #[arg(long, allow_negative_numbers = true, default_value_t = 8)]
    pub n_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, allow_negative_numbers = true, default_value_t = 256)]
    pub window: usize,
    /// Folder for the downloaded model and the demo's outputs.
    #[arg(long, value_name = "DIR", default_value = ".yaqa-cache")]
    pub cache: PathBuf,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl From<DemoArgs> for DemoConfig {
    fn from(args: DemoArgs) -> Self {
        DemoConfig {
            n_seqs: args.n_seqs,
            seq_len: args.seq_len,
            passes: args.passes,
            n_windows: args.n_windows,
            window: args.window,
            cache: args.cache,
            seed: args.seed,
        }
    }
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let json = args.json.clone();
    let config = DemoConfig::from(args);
    let (_, report) = demo::run(&yaqa_backend_cpu::Cpu::default(), &config, &Bars::default())?;
    print_report(&report, json.as_deref(), &|t| {
        Some(demo::legend(&config, t))
    })
}

/// Prints each bit width's table, with the line `legend` gives for it (if any) below it.
fn print_report(
    report: &CompareReport,
    json: Option<&std::path::Path>,
    legend: &dyn Fn(&EvalTable) -> Option<String>,
) -> Result<()> {
    for t in &report.tables {
        println!(
            "{}, KL vs {}:\n{}",
            t.grid.name().to_uppercase(),
            t.reference,
            t.table
        );
        if let Some(line) = legend(&t.table) {
            println!("{line}\n");
        }
    }
    println!("total wall time: {:.1} s", report.seconds);
    if let Some(path) = json {
        write_json(path, &report.json)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    /// `yaqa demo` with no flags runs the library's default demo, so the sizes measured in
    /// docs/BENCHMARKS.md for `DemoConfig::default()` are the ones the README's command gets.
    #[test]
    fn demo_flags_default_to_the_library_defaults() {
        let cli = Cli::try_parse_from(["yaqa", "demo"]).expect("parses");
        let Command::Demo(args) = cli.command else {
            panic!("not the demo subcommand");
        };
        assert_eq!(DemoConfig::from(args), DemoConfig::default());
    }
}
