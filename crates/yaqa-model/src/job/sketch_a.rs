//! Sketch A one pass at a time, so that each pass can be spread over machines (DESIGN.md §2 and §9,
//! "Scale-out").
//!
//! Sketch A is a power iteration: pass `K + 1` starts from the merged result of pass `K` over *every*
//! calibration sequence. A cluster therefore runs each pass as a job array of `--shard I/N` jobs and
//! merges between passes with `yaqa hessian merge`. `yaqa hessian --sketch a --shard I/N` runs pass 0
//! (`Σ x xᵀ`, forward only), and `--from DIR` runs the pass after the one stored in `DIR`; `--passes P`
//! keeps running every pass in one process and goes with neither.
//!
//! A folder is a valid start only when it is one complete, merged pass of this run: one `a-pK` file for
//! every layer of the model, all of the same pass, model and calibration, next to a calibration record
//! that holds every sequence of the calibration set. Anything else is refused before any work, naming the
//! folder and what differs: a power iteration started from a partial sum or from another run's factors
//! gives factors that look plausible and are wrong.
//!
//! The next pass runs over the sequences of the folder's record, not over sequences made again from the
//! flags. They are the tokens pass 0 used (sampling data-free sequences again would cost more than the
//! pass itself), and from pass 1 on the record also holds the Fisher labels, which every later pass
//! reuses as the one-process run does ([`crate::job::hessian`]), so a pass split into shards sums exactly the
//! terms the one-process pass sums. The calibration flags must still describe the same calibration set
//! (seed, sequence length, number of sequences, source): one job script with the same flags on every pass
//! cannot then mix two runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::SketchKind;

use crate::error::{Context, ModelError, Result};
use crate::formats::calib_file::{
    LabelOrigin, RECORD_FILE, RecordHeader, read_calib_file, write_record,
};
use crate::formats::checkpoint::Loaded;
use crate::formats::factor_file::{Provenance, parse_sketch_tag, sketch_tag};
use crate::job::calib::{CalibSeq, Shard};
use crate::job::calib_set::calibration_set;
use crate::job::collect::Set;
use crate::job::factors::{
    factor_index, next_sketch_a_pass, read_factor_checked, write_factor_dir,
};
use crate::job::progress::{Progress, ProgressExt};
use crate::job::resume::{self, Job, Outcome};
use crate::job::{CalibConfig, CheckpointPolicy};
use crate::transformer::weights::LayerId;

/// Sketch A's passes in one process when `--passes` is not given.
pub const DEFAULT_PASSES: u32 = 2;

/// Refuses an output folder that already holds factor files of another Sketch A pass than `pass`: a
/// folder of mixed passes cannot start the next pass, and the record written last would describe only
/// one of them. This also refuses `--out` equal to `--from`.
///
/// **Errors**: such a file (named), or an unreadable folder.
pub fn check_out(out: &Path, pass: u32) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let entries = std::fs::read_dir(out)
        .map_err(|e| ModelError::io(out, e))
        .with_context(|| format!("reading the output folder {}", out.display()))?;
    for entry in entries {
        let entry = entry
            .map_err(|e| ModelError::io(out, e))
            .with_context(|| format!("reading the output folder {}", out.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let other = name
            .strip_suffix(".safetensors")
            .and_then(|stem| stem.rsplit_once('.'))
            .and_then(|(_, tag)| parse_sketch_tag(tag));
        if let Some(SketchKind::A { pass: found }) = other
            && found != pass
        {
            crate::bail!(
                "--out {} already holds Sketch A pass {found} factors ({name}), and this run writes pass \
                 {pass}: write each pass to its own folder",
                out.display()
            );
        }
    }
    Ok(())
}

/// The folder of one finished Sketch A pass, its names and record checked (see the module docs); the
/// factors are read by [`read_pass_factors`], after the cheap checks, because a large model's factors
/// take gigabytes.
#[derive(Debug)]
pub struct PassDir {
    pub dir: PathBuf,
    /// The pass the folder holds (`K` of its `a-pK` files).
    pub pass: u32,
    /// Every layer's `a-pK` file.
    pub files: BTreeMap<LayerId, PathBuf>,
    /// The header of the folder's calibration record.
    pub record: RecordHeader,
    /// Every sequence of the calibration set, from the record.
    pub seqs: Vec<CalibSeq>,
}

/// Finds the folder of a finished Sketch A pass for a run on `loaded` and reads its record, checking
/// that the folder holds one pass, a file for every layer of the model, and a record of that pass on
/// this model holding every sequence of the calibration set (module docs).
///
/// **Errors**, each naming the folder or the file: no Sketch A files, files of several passes, a layer
/// missing or one the model does not have, no record, a record of another pass or model, and a pass not
/// merged over every shard.
pub fn read_pass_dir(dir: &Path, loaded: &Loaded) -> Result<PassDir> {
    let shown = dir.display();
    let index = factor_index(dir)?;
    let passes: BTreeSet<u32> = index
        .values()
        .flat_map(|files| files.keys())
        .filter_map(|tag| match parse_sketch_tag(tag) {
            Some(SketchKind::A { pass }) => Some(pass),
            _ => None,
        })
        .collect();
    let pass = match passes.iter().collect::<Vec<_>>()[..] {
        [] => crate::bail!(
            "--from {shown}: no Sketch A factors (a-pK files) in the folder; --from takes the folder of a \
             finished Sketch A pass"
        ),
        [&one] => one,
        ref several => crate::bail!(
            "--from {shown} mixes Sketch A passes {}: --from takes the merged folder of one pass",
            several
                .iter()
                .map(|p| format!("a-p{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let tag = sketch_tag(SketchKind::A { pass });
    let layers = LayerId::all(&loaded.model);
    if let Some((id, _)) = index
        .iter()
        .find(|(id, files)| files.contains_key(&tag) && !layers.contains(id))
    {
        crate::bail!(
            "--from {shown}: {tag} factors for {}, a layer the model {} does not have",
            id.name(),
            loaded.path.display()
        );
    }
    let mut files = BTreeMap::new();
    for id in layers {
        let path = index.get(&id).and_then(|f| f.get(&tag)).with_context(|| {
            format!(
                "--from {shown}: no {tag} factors for {}; every layer of the model must be in the folder",
                id.name()
            )
        })?;
        files.insert(id, path.clone());
    }

    let path = dir.join(RECORD_FILE);
    if !path.is_file() {
        crate::bail!(
            "--from {shown} has no {RECORD_FILE}: --from needs a folder written by `yaqa hessian` or \
             `yaqa hessian merge`, whose record holds the sequences of the pass"
        );
    }
    let file = read_calib_file(&path, Some(loaded.model.config.vocab_size))
        .with_context(|| format!("reading the calibration record {}", path.display()))?;
    let shown_record = path.display();
    let Some(record) = file.header else {
        crate::bail!("{shown_record}: not a yaqa calibration record (no \"yaqa\" header)");
    };
    if record.sketch != tag {
        crate::bail!(
            "{shown_record} records sketch {}, but the factors are {tag}: the folder mixes runs",
            record.sketch
        );
    }
    if record.model_fingerprint != loaded.fingerprint {
        crate::bail!(
            "{shown_record} was recorded on a different model than {} (fingerprint {}…, model {}…)",
            loaded.path.display(),
            record.model_fingerprint.get(..12).unwrap_or(""),
            loaded.fingerprint.get(..12).unwrap_or("")
        );
    }
    // The record's sequence numbers are distinct and below `n_seqs` (`read_calib_file` checks), so
    // holding `n_seqs` of them is holding all.
    if file.seqs.len() != record.n_seqs {
        crate::bail!(
            "--from {shown} holds pass {pass} of {} of the {} calibration sequences (shards {:?}): merge \
             the folders of every shard of pass {pass} first (yaqa hessian merge --out DIR SHARD_DIRS...) \
             and run pass {} --from the merged folder",
            file.seqs.len(),
            record.n_seqs,
            record.shards,
            pass + 1
        );
    }
    Ok(PassDir {
        dir: dir.to_path_buf(),
        pass,
        files,
        record,
        seqs: file.seqs,
    })
}

/// Reads every layer's factors of `from`, checking each against the model and the folder's record: the
/// model's fingerprint and the layer's shape, the record's seed, sequence length, calibration source and
/// shards, and all of the record's sequences summed in.
///
/// **Errors**: a file that is unreadable, of another model or shape, or of another run than the record
/// (each naming the file).
pub fn read_pass_factors(from: &PassDir, loaded: &Loaded) -> Result<Set> {
    let rec = &from.record;
    let mut rec_shards = rec.shards.clone();
    rec_shards.sort();
    let mut factors = BTreeMap::new();
    for (&id, path) in &from.files {
        // Names the file when the model differs.
        let file = read_factor_checked(path, &loaded.fingerprint)?;
        let (m, n) = id.kind.shape(&loaded.model.config);
        if file.layer != id || (file.m, file.factors.h_in.n) != (m, n) {
            crate::bail!(
                "{}: factors of {} ({}×{}), but the model's {} is {m}×{n}",
                path.display(),
                file.layer.name(),
                file.m,
                file.factors.h_in.n,
                id.name()
            );
        }
        let p = &file.provenance;
        let mut shards = p.shards.clone();
        shards.sort();
        if (p.seed, p.seq_len, &p.calib, &shards, file.factors.n_seqs)
            != (
                rec.seed,
                rec.seq_len,
                &rec.calib,
                &rec_shards,
                rec.n_seqs as u64,
            )
        {
            crate::bail!(
                "--from {} mixes runs: {} was collected with seed {}, seq_len {}, calib {}, shards {:?} \
                 over {} sequences, but {RECORD_FILE} has seed {}, seq_len {}, calib {}, shards {:?} and \
                 {} sequences",
                from.dir.display(),
                path.display(),
                p.seed,
                p.seq_len,
                p.calib,
                p.shards,
                file.factors.n_seqs,
                rec.seed,
                rec.seq_len,
                rec.calib,
                rec.shards,
                rec.n_seqs
            );
        }
        factors.insert(id, file.factors);
    }
    Ok(factors)
}

/// The sequences of `shard` for the pass after `from`'s, with the origin of their labels when they
/// have any. They come from the folder's record (module docs); the flags must describe the same
/// calibration set, and when they name text or an ids file, the sequences made from it must be the
/// recorded ones.
///
/// **Errors**: a different seed, sequence length, number of sequences or source than the folder's
/// (naming the folder and both values), recorded sequences or labels that the text or ids file no
/// longer gives, and the errors of reading the calibration.
pub fn pass_sequences<B: Backend + ModelOps<f32>>(
    backend: &B,
    from: &PassDir,
    loaded: &Loaded,
    calib: &CalibConfig,
    shard: Shard,
    progress: &dyn Progress,
) -> Result<(Vec<CalibSeq>, Option<LabelOrigin>)> {
    let (shown, rec) = (from.dir.display(), &from.record);
    let seed = calib.seed;
    if seed != rec.seed {
        crate::bail!(
            "--from {shown} was collected with --seed {}, this run has --seed {seed}",
            rec.seed
        );
    }
    let mut seqs: Vec<CalibSeq> = from
        .seqs
        .iter()
        .filter(|s| shard.contains(s.index))
        .cloned()
        .collect();
    let ids = calib.ids.as_deref();
    let data_free = ids.is_none() && calib.text.is_empty();
    let (source, seq_len, n_seqs, made) = if data_free {
        // Sampling again would cost more than the pass; the record holds the samples.
        let (seq_len, n_seqs) = (calib.seq_len, calib.n_seqs);
        ("data-free".to_string(), seq_len, n_seqs, None)
    } else {
        let cal = calibration_set(backend, loaded, calib, shard, progress)?;
        (
            cal.source,
            cal.seq_len,
            cal.n_seqs,
            Some((cal.seqs, cal.labels)),
        )
    };
    if source != rec.calib {
        crate::bail!(
            "--from {shown} was collected from {}, this run's calibration flags give {source}",
            rec.calib
        );
    }
    // Where this run's numbers come from, for the messages.
    let this = |flag: &str, value: usize| match ids {
        Some(file) => format!("{} has {value}", file.display()),
        None => format!("this run has {flag} {value}"),
    };
    if seq_len != rec.seq_len {
        crate::bail!(
            "--from {shown} has sequences of {} tokens, {}",
            rec.seq_len,
            this("--seq-len", seq_len)
        );
    }
    if n_seqs != rec.n_seqs {
        crate::bail!(
            "--from {shown} has {} calibration sequences, {}",
            rec.n_seqs,
            this("--n-seqs", n_seqs)
        );
    }
    let mut origin = rec.labels;
    if let Some((made, given)) = made {
        let recorded: Vec<usize> = seqs.iter().map(|s| s.index).collect();
        let again: Vec<usize> = made.iter().map(|s| s.index).collect();
        if let Some(k) =
            (0..recorded.len().max(again.len())).find(|&k| recorded.get(k) != again.get(k))
        {
            let at = |v: &[usize]| {
                v.get(k)
                    .map_or("none".to_string(), |i| format!("sequence {i}"))
            };
            crate::bail!(
                "--from {shown}: for shard {shard} the calibration flags give {} sequences, the record \
                 {} (at position {k}: {} from the flags, {} in the record)",
                again.len(),
                recorded.len(),
                at(&again),
                at(&recorded)
            );
        }
        for (s, m) in seqs.iter_mut().zip(made) {
            if s.ids != m.ids {
                crate::bail!(
                    "--from {shown}: calibration sequence {} differs from the one recorded in {RECORD_FILE} \
                     (did the calibration file change since pass 0?)",
                    s.index
                );
            }
            match (&s.labels, m.labels) {
                (Some(a), Some(b)) if *a != b => crate::bail!(
                    "--from {shown}: the labels of calibration sequence {} differ from the recorded ones",
                    s.index
                ),
                (None, Some(b)) => s.labels = Some(b),
                _ => {}
            }
        }
        origin = origin.or(given);
    }
    Ok((seqs, origin))
}

/// What one pass wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct PassWritten {
    pub pass: u32,
    /// Factor files written.
    pub files: usize,
    /// Sequences of the shard.
    pub n_seqs: usize,
    /// What to run next.
    pub next: String,
}

/// `yaqa hessian --sketch a --from DIR`: the pass after `DIR`'s over `shard` of the calibration set
/// `calib` describes, written to `out` as `a-p<K+1>` factor files and a calibration record of the shard.
///
/// **Errors**: a `from` folder that is not one merged pass of this run, an output folder of another
/// pass, and the errors of collection and writing.
pub fn next_pass<B: Backend + ModelOps<f32>>(
    backend: &B,
    loaded: &Loaded,
    calib: &CalibConfig,
    shard: Shard,
    from: &Path,
    out: &Path,
    checkpoint: CheckpointPolicy,
    progress: &dyn Progress,
) -> Result<PassWritten> {
    let prev = read_pass_dir(from, loaded)?;
    let pass = prev.pass + 1;
    check_out(out, pass)?;
    let (mut seqs, origin) = pass_sequences(backend, &prev, loaded, calib, shard, progress)?;
    let start = next_sketch_a_pass(&loaded.model, &read_pass_factors(&prev, loaded)?, pass)?;
    progress.note(format!(
        "Sketch A pass {pass} from {} over {} sequences (shard {shard}, {}{})",
        from.display(),
        seqs.len(),
        prev.record.calib,
        if seqs.iter().any(|s| s.labels.is_some()) {
            ", labels from the record"
        } else {
            ""
        }
    ));
    let rec = &prev.record;
    let shards = vec![shard.to_string()];
    let prov = Provenance {
        seed: rec.seed,
        seq_len: rec.seq_len,
        calib: rec.calib.clone(),
        shards: shards.clone(),
        model_fingerprint: loaded.fingerprint.clone(),
    };
    let header = RecordHeader {
        shards,
        sketch: sketch_tag(SketchKind::A { pass }),
        labels: Some(origin.unwrap_or(LabelOrigin::Sampled)),
        ..rec.clone()
    };
    let label = format!("A pass {pass}");
    let kind = [SketchKind::A { pass }];
    let job = Job {
        kinds: &kind,
        seed: rec.seed,
        prov: &prov,
        record: &header,
        out,
        every: checkpoint.every,
        budget: checkpoint.stop_after_seqs,
        label: &label,
        progress,
    };
    let factors = match resume::collect(backend, &loaded.model, &mut seqs, 0, vec![start], &job)? {
        Outcome::Finished { mut sets, .. } => {
            sets.pop().context("Sketch A pass produced no factors")?
        }
        Outcome::Stopped(done) => {
            return Err(ModelError::Stopped(format!("after {done} sequences")));
        }
    };
    write_factor_dir(out, &loaded.model, &factors, &prov)?;
    let path = out.join(RECORD_FILE);
    write_record(&path, &seqs, &header)
        .with_context(|| format!("writing the calibration record {}", path.display()))?;
    resume::finish(out)?;
    Ok(PassWritten {
        pass,
        files: factors.len(),
        n_seqs: seqs.len(),
        next: next_steps(pass, shard, out),
    })
}

/// What to run after one pass written to `out` by shard `shard`.
pub fn next_steps(pass: u32, shard: Shard, out: &Path) -> String {
    if shard.count > 1 {
        format!(
            "next: once every shard of pass {pass} is done, `yaqa hessian merge` their folders, then run \
             pass {} with --from the merged folder",
            pass + 1
        )
    } else {
        format!("next: pass {} with --from {}", pass + 1, out.display())
    }
}
