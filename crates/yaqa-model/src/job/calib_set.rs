//! The calibration set of one run, from its [`CalibConfig`]: token ids from a file, windows of text,
//! or sequences sampled from the model ([`crate::job::calib`] makes them), with what the run's
//! provenance records about them.

use std::path::Path;

use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;

use crate::error::{Context, Result};
use crate::formats::calib_file::{LabelOrigin, read_calib_file};
use crate::formats::checkpoint::{Loaded, tokenizer_for};
use crate::job::calib::{CalibSeq, Shard, sample_sequences, text_tokens, text_windows};
use crate::job::progress::{Progress, ProgressExt};
use crate::job::{CalibConfig, check_context};
use crate::transformer::decoder::Transformer;

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
    /// The shards of that set `seqs` are: the run's shard, or a record's own shards when it holds only
    /// some.
    pub shards: Vec<String>,
    /// Where the sequences' labels came from, when a calibration file gave them.
    pub labels: Option<LabelOrigin>,
}

/// The calibration sequences of `shard`: from the ids file when `config` names one (its labels, if any,
/// ride along on the sequences), otherwise windows of the text files, or sequences sampled from the
/// model.
///
/// **Errors**: an unreadable or inconsistent ids file or text (named), too little text, no sequences.
pub fn calibration_set<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    config: &CalibConfig,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<Calibration> {
    config.check(loaded)?;
    calibration_set_unchecked(backend, loaded, config, shard, progress)
}

/// [`calibration_set`] without [`CalibConfig::check`], for a caller that checked the sizes against the
/// model itself: `finetune`'s windows of `--seq-len + 1` tokens run only their first `--seq-len` through
/// the model, so the context and the sliding window limit `--seq-len`, not the window.
pub(crate) fn calibration_set_unchecked<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    config: &CalibConfig,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<Calibration> {
    if let Some(path) = &config.ids {
        let file = read_calib_file(path, Some(loaded.model.config.vocab_size))
            .with_context(|| format!("reading calibration ids {}", path.display()))?;
        if file.seqs.is_empty() {
            crate::bail!("{}: no calibration sequences in input_ids", path.display());
        }
        check_context(
            &format!(
                "--calib-ids {}: a sequence of {} tokens",
                path.display(),
                file.seq_len
            ),
            file.seq_len,
            loaded,
            config.allow_long_context,
            |max| format!("use sequences of at most {max} tokens"),
        )?;
        // The errors of `select` name the file.
        let selection = file.select(shard, &loaded.fingerprint, config.seed)?;
        return Ok(Calibration {
            seqs: selection.seqs,
            source: selection.calib,
            seq_len: file.seq_len,
            n_seqs: selection.n_seqs,
            shards: selection.shards,
            labels: selection.labels,
        });
    }
    let from = |seqs: Vec<CalibSeq>, source: String| Calibration {
        seqs,
        source,
        seq_len: config.seq_len,
        n_seqs: config.n_seqs,
        shards: vec![shard.to_string()],
        labels: None,
    };
    if !config.text.is_empty() {
        let tok = tokenizer_for(loaded, config.tokenizer.as_deref())
            .context("loading the tokenizer for the calibration text")?;
        let tokens = text_tokens(&tok, &config.text).context("reading the calibration text")?;
        let seqs = text_windows(&tokens, config.seq_len, config.n_seqs, config.seed, shard)
            .with_context(|| {
                let files: Vec<String> = config
                    .text
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!("cutting calibration windows from {}", files.join(", "))
            })?;
        let names: Vec<String> = config.text.iter().map(|p| file_name(p)).collect();
        return Ok(from(seqs, format!("text:{}", names.join(","))));
    }
    let bos = loaded.model.config.bos_token_id.unwrap_or(1) as u32;
    let tf = Transformer::new(&loaded.model, backend);
    let mine = (0..config.n_seqs).filter(|&i| shard.contains(i)).count();
    let stage = progress.stage("sampling", mine);
    let seqs = sample_sequences(
        &tf,
        config.n_seqs,
        config.seq_len,
        config.seed,
        shard,
        bos,
        8,
        &mut |d| stage.step(d),
    )
    .context("sampling data-free calibration sequences from the model")?;
    drop(stage);
    Ok(from(seqs, "data-free".into()))
}

/// A path's file name for a message or a record (the whole path when it has none).
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}
