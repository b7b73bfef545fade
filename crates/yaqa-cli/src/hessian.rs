//! `yaqa hessian` and `yaqa hessian merge`: flags → [`yaqa_model::job::hessian`].

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use yaqa_model::job::hessian::{self, HessianConfig, Sketch};
use yaqa_model::job::memory;

use crate::args::{CalibArgs, CalibIdsArgs, CheckpointArgs, Device, backend, calib_config};
use crate::progress::Bars;

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
    #[arg(long, allow_negative_numbers = true)]
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
    /// Collect only the layers of blocks A to B−1 (a layer group); `yaqa hessian merge` joins the
    /// folders of disjoint groups of the same calibration. Default: every block.
    #[arg(long, value_name = "A..B", value_parser = memory::parse_blocks)]
    pub layers: Option<std::ops::Range<usize>>,
    /// The memory this run may use, such as 20G: when the whole model and its factors do not fit, the
    /// blocks are streamed from the checkpoint and the layers collected in groups one after another
    /// (the plan is printed first). Default: no limit, every block resident.
    #[arg(long, value_name = "SIZE", value_parser = memory::parse_bytes)]
    pub max_memory: Option<u64>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: HessianArgs) -> Result<()> {
    if let Some(HessianCommand::Merge { out, shards }) = args.merge {
        let r = hessian::merge(&out, &shards)?;
        if !r.records {
            eprintln!("no calibration.safetensors in the shards: merged the factors only");
        }
        eprintln!(
            "merged {} shards into {} ({} files)",
            r.shards,
            r.out.display(),
            r.files
        );
        return Ok(());
    }
    let a = args.collect;
    let (Some(model), Some(out)) = (a.model, a.out) else {
        bail!("yaqa hessian needs --model and --out (or the merge subcommand)");
    };
    let config = HessianConfig {
        model,
        sketch: match a.sketch {
            SketchArg::A => Sketch::A,
            SketchArg::B => Sketch::B,
            SketchArg::Xtx => Sketch::Xtx,
        },
        passes: a.passes,
        from: a.from,
        calib: calib_config(&a.calib, &a.calib_ids),
        shard: a.shard,
        out,
        checkpoint: a.checkpoint.policy(),
        layers: a.layers,
        max_memory: a.max_memory,
    };
    let cpu = backend(a.device)?;
    let r = hessian::run(&cpu, &config, &Bars::default())?;
    eprintln!(
        "wrote {} {} factor files and calibration.safetensors to {} in {:.1} s",
        r.files,
        r.sketch,
        r.out.display(),
        r.seconds
    );
    if let Some(next) = r.next {
        eprintln!("{next}");
    }
    Ok(())
}
