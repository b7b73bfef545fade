//! `yaqa round`: flags → [`yaqa_model::job::round`], the layer report printed as JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use yaqa_model::job::round::{self, RoundConfig};

use crate::args::{Device, SpecArgs, backend};

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
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Seed of the stochastic rounding (--stochastic).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors (must not exist): `w_hat` (F32) and `codes` (bit-packed row by row, U8) plus
    /// the report.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: RoundArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    let r = round::run(
        &cpu,
        &RoundConfig {
            weights: args.weights,
            tensor: args.tensor,
            factors: args.factors,
            spec: args.spec.spec(args.seed),
            out: args.out,
        },
    )?;
    if let Some(o) = &r.report.optq {
        eprintln!("{}", crate::progress::optq_line(o));
    }
    println!("{}", serde_json::to_string_pretty(&r.to_json())?);
    Ok(())
}
