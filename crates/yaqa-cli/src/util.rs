//! Helpers shared by the subcommands: the backend behind `--device`, progress bars, opening models and
//! calibration data, building layer parameters from flags, and finding factor files.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::sketch::SketchKind;
use yaqa_core::{GptqParams, LdlParams};
use yaqa_model::formats::calib_file::{LabelOrigin, read_calib_file};
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::factor_file::{FactorFile, parse_sketch_tag, read_factors};
use yaqa_model::job::calib::{CalibSeq, Shard, sample_sequences, text_tokens, text_windows};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::LayerId;

use crate::{CalibArgs, DampArgs, Device, MethodArg, QuantizerArg};

/// The backend for `--device`. CUDA is refused with a clear message until the CUDA backend is wired in.
pub fn backend(device: Device) -> Result<Cpu> {
    match device {
        Device::Cpu => Ok(Cpu::default()),
        Device::Cuda => bail!(
            "--device cuda: this build of yaqa has no CUDA backend wired into the command line yet \
             (no device used); run with --device cpu"
        ),
    }
}

/// A progress bar with rate and ETA on stderr. When stderr is not a terminal (a batch job's log), the same
/// line is written as plain text at most every [`LOG_EVERY`], so long runs still show progress and ETA.
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::term_like(Box::new(LogLines::default())));
    }
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {mean_eta}",
    )
    .map(|s| s.progress_chars("=> ").with_key("mean_eta", mean_eta))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// The time left at the mean rate so far, `elapsed · (len − pos) / pos` as `H:MM:SS` (`-` before the
/// first step). indicatif's own estimate weights recent steps and, with a steady tick and steps of
/// several seconds, printed figures such as `6d 06:00:53` for a 30-minute loop.
fn mean_eta(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let (pos, len) = (state.pos(), state.len().unwrap_or(0));
    if pos == 0 || len < pos {
        let _ = write!(w, "-");
        return;
    }
    let left = state.elapsed().as_secs_f64() * (len - pos) as f64 / pos as f64;
    let s = left.round() as u64;
    let _ = write!(w, "{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

/// How often a progress line is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A `TermLike` for logs: cursor movements are dropped and drawn lines are printed to stderr, one line at
/// most every [`LOG_EVERY`].
#[derive(Debug, Default)]
struct LogLines {
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    fn log(&self, line: &str) -> std::io::Result<()> {
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            writeln!(std::io::stderr(), "{line}")?;
        }
        Ok(())
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Loads a model (GGUF file or HF folder) with its fingerprint.
pub fn load_model(path: &Path) -> Result<Loaded> {
    checkpoint::load(path).with_context(|| format!("loading the model {}", path.display()))
}

/// The calibration sequences of one run and what its provenance records about them.
#[derive(Debug)]
pub struct Calibration {
    pub seqs: Vec<CalibSeq>,
    /// `data-free`, `text:<file names>`, `ids:<file name>`, or the source a calibration record carries.
    pub source: String,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences in the unsharded calibration set.
    pub n_seqs: usize,
    /// The shards of that set `seqs` are: `--shard`, or a record's own shards when it holds only some.
    pub shards: Vec<String>,
    /// Where the sequences' labels came from, when a calibration file gave them.
    pub labels: Option<LabelOrigin>,
}

/// The calibration sequences of `shard`: from the ids file `ids` when given (its labels, if any, ride
/// along on the sequences), otherwise windows of the text files, or sequences sampled from the model.
pub fn calibration_set(
    loaded: &Loaded,
    args: &CalibArgs,
    ids: Option<&Path>,
    shard: Shard,
    backend: &Cpu,
) -> Result<Calibration> {
    if let Some(path) = ids {
        let file = read_calib_file(path, Some(loaded.model.config.vocab_size))
            .with_context(|| format!("reading calibration ids {}", path.display()))?;
        if file.seqs.is_empty() {
            bail!("{}: no calibration sequences in input_ids", path.display());
        }
        // The errors of `select` name the file.
        let selection = file.select(shard, &loaded.fingerprint, args.seed)?;
        return Ok(Calibration {
            seqs: selection.seqs,
            source: selection.calib,
            seq_len: file.seq_len,
            n_seqs: selection.n_seqs,
            shards: selection.shards,
            labels: selection.labels,
        });
    }
    if args.n_seqs == 0 {
        bail!("--n-seqs must be at least 1");
    }
    let from = |seqs: Vec<CalibSeq>, source: String| Calibration {
        seqs,
        source,
        seq_len: args.seq_len,
        n_seqs: args.n_seqs,
        shards: vec![shard.to_string()],
        labels: None,
    };
    if !args.calib.is_empty() {
        let tok = checkpoint::tokenizer_for(&loaded.path, args.tokenizer.as_deref())
            .context("loading the tokenizer for the calibration text")?;
        let tokens = text_tokens(&tok, &args.calib).context("reading the calibration text")?;
        let seqs = text_windows(&tokens, args.seq_len, args.n_seqs, args.seed, shard)
            .context("cutting calibration windows")?;
        let names: Vec<String> = args
            .calib
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect();
        return Ok(from(seqs, format!("text:{}", names.join(","))));
    }
    let bos = loaded.model.config.bos_token_id.unwrap_or(1) as u32;
    let tf = Transformer::new(&loaded.model, backend);
    let mine = (0..args.n_seqs).filter(|&i| shard.contains(i)).count();
    let pb = bar(mine, "sampling");
    let seqs = sample_sequences(
        &tf,
        args.n_seqs,
        args.seq_len,
        args.seed,
        shard,
        bos,
        8,
        &mut |d| pb.set_position(d as u64),
    )
    .context("sampling data-free calibration sequences from the model")?;
    pb.finish_and_clear();
    Ok(from(seqs, "data-free".into()))
}

/// The layer parameters for the quantization flags.
pub fn layer_params(
    method: MethodArg,
    quantizer: QuantizerArg,
    group: Option<usize>,
    no_incoherence: bool,
    sign_seed: u64,
    damp: &DampArgs,
    refine_sweeps: usize,
) -> LayerParams {
    let bits = quantizer.bits();
    let quantizer = match (group, no_incoherence) {
        (Some(g), _) => QuantizerSpec::IntAsym {
            bits,
            group_size: Some(g),
        },
        (None, false) => QuantizerSpec::IntSym { bits },
        (None, true) => QuantizerSpec::IntAsym {
            bits,
            group_size: None,
        },
    };
    LayerParams {
        method: match method {
            MethodArg::Rtn => Method::Rtn,
            MethodArg::Gptq => Method::Gptq,
            MethodArg::Ldlq => Method::Ldlq,
            MethodArg::Yaqa => Method::Yaqa,
        },
        quantizer,
        incoherence: !no_incoherence,
        seed: sign_seed,
        ldl: LdlParams {
            damp: damp.damp,
            ..LdlParams::default()
        },
        damp_out: damp.damp_out,
        gptq: GptqParams {
            damp: damp.damp,
            ..GptqParams::default()
        },
        refine_sweeps,
        ..LayerParams::default()
    }
}

/// The factor files of a folder, by layer and sketch.
pub fn factor_index(dir: &Path) -> Result<BTreeMap<LayerId, BTreeMap<String, PathBuf>>> {
    let mut index: BTreeMap<LayerId, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading factor folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading factor folder {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".safetensors") else {
            continue;
        };
        let Some((layer, tag)) = stem.rsplit_once('.') else {
            continue;
        };
        if let (Some(id), Some(_)) = (LayerId::parse(layer), parse_sketch_tag(tag)) {
            index
                .entry(id)
                .or_default()
                .insert(tag.to_string(), entry.path());
        }
    }
    if index.is_empty() {
        bail!(
            "{}: no factor files (expected model.layers.N.<module>.<sketch>.safetensors)",
            dir.display()
        );
    }
    Ok(index)
}

/// The factor file a method should use among a layer's files: YAQA needs a two-sided sketch (B, or the
/// last pass of A); the one-sided methods prefer `Σ x xᵀ` and fall back on a two-sided sketch's `h_in`.
pub fn pick_factor_file(
    files: &BTreeMap<String, PathBuf>,
    method: Method,
    layer: LayerId,
) -> Result<PathBuf> {
    let last_a = files
        .keys()
        .filter_map(|t| match parse_sketch_tag(t) {
            Some(SketchKind::A { pass }) if pass > 0 => Some((pass, t.clone())),
            _ => None,
        })
        .max()
        .map(|(_, t)| t);
    let mut order: Vec<String> = match method {
        Method::Yaqa => vec!["b".into()],
        _ => vec!["xtx".into(), "a-p0".into(), "b".into()],
    };
    order.extend(last_a);
    order
        .iter()
        .find_map(|t| files.get(t).cloned())
        .ok_or_else(|| {
            anyhow!(
                "no suitable factors for {} with method {} (found sketches {:?})",
                layer.name(),
                method.name(),
                files.keys().collect::<Vec<_>>()
            )
        })
}

/// Reads one factor file and checks that it belongs to the model.
pub fn read_factor_checked(path: &Path, fingerprint: &str) -> Result<FactorFile> {
    let f = read_factors(path).with_context(|| format!("reading factors {}", path.display()))?;
    if f.provenance.model_fingerprint != fingerprint {
        bail!(
            "{}: these factors were collected on a different model (fingerprint {}…, model {}…)",
            path.display(),
            &f.provenance.model_fingerprint.get(..12).unwrap_or(""),
            fingerprint.get(..12).unwrap_or("")
        );
    }
    Ok(f)
}
