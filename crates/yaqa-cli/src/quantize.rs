//! `yaqa quantize`: flags → [`yaqa_model::job::quantize`], then the result's KL and perplexity.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use yaqa_core::daq::DaqParams;
use yaqa_model::job::evaluate::{EvalText, write_json};
use yaqa_model::job::guard::named;
use yaqa_model::job::memory::Bytes;
use yaqa_model::job::overrides::{Override, Overrides};
use yaqa_model::job::preflight;
use yaqa_model::job::quantize::{self, QuantizeConfig, default_eval};

use crate::args::{
    CalibArgs, CalibIdsArgs, CheckpointArgs, Device, SpecArgs, backend, calib_config,
};
use crate::progress::Bars;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The model: a GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// The checkpoint MODEL was fine-tuned from (GGUF or Hugging Face folder), for --method daq: read
    /// one block at a time beside the model
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// DAQ: search scale multipliers in [1, 1.5] only, so no block's largest weight is clipped (default:
    /// [0.8, 1.5], the paper's range)
    #[arg(long)]
    pub daq_no_clip: bool,
    /// Factor folder from `yaqa hessian`; without it the factors are collected first (Sketch B for YAQA,
    /// Σ x xᵀ otherwise) with the calibration options below.
    #[arg(long, value_name = "DIR")]
    pub factors: Option<PathBuf>,
    /// Quantize block by block in true-sequential order ([q,k,v] → [o] → [gate,up] → [down]), each group
    /// on the inputs of the already quantized model (gptq, ldlq; always on for qronos)
    #[arg(long, conflicts_with = "factors")]
    pub sequential: bool,
    /// Per-module override, repeatable: layers whose name (model.layers.N.mlp.down_proj, …) matches
    /// REGEX take RULE: `keep` (left unquantized) or comma-separated quantizer:Q, bits:K, group:G|none,
    /// method:rtn|gptq|ldlq|yaqa. The first matching rule decides; each must match a layer; recorded in
    /// the output. E.g. --override 'down_proj=bits:8' --override '^model\.layers\.0\.=keep'
    #[arg(long = "override", value_name = "REGEX=RULE", value_parser = Override::parse)]
    pub overrides: Vec<Override>,
    /// A file quantized earlier from this model with the same quantizer: every layer takes the scale
    /// that file's search chose instead of searching again (one scale per matrix for every method
    /// compared, as in `compare`; the trellis skips its costly search)
    #[arg(long, value_name = "FILE")]
    pub scales_from: Option<PathBuf>,
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
    /// Evaluate the result on this text (default: text sampled from the original model, held out from
    /// calibration); KL and perplexity are printed and recorded in the output's header
    #[arg(long, value_name = "FILE", conflicts_with = "no_eval")]
    pub eval_text: Option<PathBuf>,
    /// Evaluation windows
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = default_eval().n_windows)]
    pub eval_windows: usize,
    /// Tokens per evaluation window
    #[arg(long, allow_negative_numbers = true, value_name = "TOKENS", default_value_t = default_eval().window)]
    pub eval_window: usize,
    /// Skip the evaluation of the result
    #[arg(long)]
    pub no_eval: bool,
    /// The memory this run may use, such as 20G: when the model does not fit, its blocks are streamed
    /// from the checkpoint one at a time (needs --factors, and --eval-text or --no-eval). Default: no
    /// limit.
    #[arg(long, value_name = "SIZE", value_parser = yaqa_model::job::memory::parse_bytes)]
    pub max_memory: Option<u64>,
    /// Also write the report as JSON: every layer's proxy errors and OPTQ bounds, their totals and the
    /// evaluation.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Stop after quantizing K layers, as if interrupted (for testing resumption).
    #[arg(long, allow_negative_numbers = true, hide = true, value_name = "K")]
    pub stop_after_layers: Option<usize>,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let cpu = backend(args.device)?;
    if let Some(json) = &args.json {
        let mut inputs = vec![named("--model", &args.model), named("--out", &args.out)];
        inputs.extend(args.factors.as_deref().map(|p| named("--factors", p)));
        inputs.extend(args.base.as_deref().map(|p| named("--base", p)));
        inputs.extend(
            args.scales_from
                .as_deref()
                .map(|p| named("--scales-from", p)),
        );
        inputs.extend(args.calib.calib.iter().map(|p| named("--calib", p)));
        preflight::check_report("--json", json, &inputs)?;
    }
    let config = QuantizeConfig {
        model: args.model,
        spec: args.spec.spec(args.calib.seed),
        factors: args.factors,
        calib: calib_config(&args.calib, &args.calib_ids),
        out: args.out,
        checkpoint: args.checkpoint.policy(),
        stop_after_layers: args.stop_after_layers,
        eval: (!args.no_eval).then(|| EvalText {
            text: args.eval_text,
            tokenizer: args.calib.tokenizer.clone(),
            window: args.eval_window,
            n_windows: args.eval_windows,
            allow_long_context: args.calib.allow_long_context,
            ..default_eval()
        }),
        max_memory: args.max_memory,
        base: args.base,
        daq: DaqParams {
            no_clip: args.daq_no_clip,
        },
        sequential: args.sequential,
        overrides: Overrides(args.overrides),
        scales_from: args.scales_from,
    };
    let r = quantize::run(&cpu, &config, &Bars::default())?;
    eprintln!(
        "{}: {} layers quantized, {} resumed, {:.1} s",
        r.out.display(),
        r.layers.len() - r.resumed,
        r.resumed,
        r.seconds
    );
    if let Some(t) = r.optq_totals() {
        let clipped = if t.clipped > 0 {
            format!(", {} clipped weights (the bound assumes none)", t.clipped)
        } else {
            String::new()
        };
        println!(
            "OPTQ over {} layers: measured {:.4e}, bound (δ²/4)·Σd {:.4e} (ratio {:.3}), identity Σ d·ε² \
             {:.4e} (worst relative discrepancy {:.1e}){clipped}",
            t.layers,
            t.measured,
            t.bound,
            t.measured / t.bound,
            t.identity,
            t.worst_discrepancy
        );
    }
    if let Some(m) = r.sequential {
        let peak = m
            .peak_rss
            .map_or_else(|| "not reported".into(), |p| Bytes(p).to_string());
        println!(
            "sequential: residual streams {}, peak resident memory {peak}",
            Bytes(m.stream_bytes)
        );
    }
    if let Some(t) = &r.eval {
        let row = &t.rows[0];
        println!(
            "KL(original ‖ quantized) {:.5} per token, perplexity {:.3} (original {:.3}) on {} windows of \
             {} tokens of {}",
            row.kl, row.ppl, t.original_ppl, t.n_windows, t.window, t.source
        );
    }
    if let Some(path) = &args.json {
        write_json(path, &r.to_json())?;
    }
    Ok(())
}
