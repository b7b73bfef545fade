//! Continuing factor collections. Every pass over the calibration sequences (`hessian`'s Sketch B,
//! `Σ x xᵀ` and Sketch A passes, `compare`'s factor stages) runs in chunks, and between chunks the sums so
//! far go to a checkpoint folder `OUT.partial/` next to the output folder, so a killed run restarted with
//! the same arguments goes on from its last checkpoint instead of from the first sequence. Also here: the
//! reloading of a finished set and its labels that `compare`'s reuse and `--b-seqs` extension share
//! ([`load_set`], [`labels_from_record`]).
//!
//! A checkpoint holds the partial sums of every sketch the pass collects and a calibration record of the
//! sequences done (with the Fisher labels their backward passes drew), written as a whole under a
//! temporary name and renamed. Factors are sums accumulated one sequence at a time in f64 and stored
//! exactly, each partial sum carries the start it continues from ([`Factors::pass_start`]), and each
//! sequence's labels come from its own seed, so a resumed run writes the same bytes as an uninterrupted
//! one. A checkpoint of another run (other model or calibration, another sketch or pass, a Sketch A pass
//! started from another fixed side) is set aside with a message, never mixed in.
//!
//! By default a checkpoint is written about every 30 minutes of collection (`--checkpoint-minutes`): one
//! holds every layer's factors (1.7 GB for SmolLM2-135M's Sketch B, tens of GB for an 8B model), so a
//! fixed number of sequences would be too often for a large model and too rare for a small one.
//! `--checkpoint-every N` checkpoints every `N` sequences instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::SketchKind;

use crate::error::{Context, ModelError, Result};
use crate::formats::calib_file::{
    LabelOrigin, RECORD_FILE, RecordHeader, read_calib_file, write_record,
};
use crate::formats::factor_file::{Provenance, factor_path, read_factors};
use crate::job::calib::CalibSeq;
use crate::job::collect::{Set, attach_labels, collect_sets, sampled_labels};
use crate::job::estimate::SeqWarmUp;
use crate::job::factors::{load_set, write_factor_dir};
use crate::job::progress::{Progress, ProgressExt};
use crate::transformer::weights::{LayerId, Model};

/// When a collection writes its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Every {
    /// After every this many sequences.
    Seqs(usize),
    /// About every this many seconds of collection; the chunks are sized from the rate so far.
    Secs(f64),
}

impl Every {
    /// Sequences to collect before the next decision, given the seconds per sequence of the last chunk
    /// (`None` before any) and the seconds since the last checkpoint: under `Secs`, one sequence to
    /// measure the rate, then enough to reach the interval but at most a quarter of it at that rate,
    /// so a run that slows down (a machine that gets busy) is re-measured and still checkpoints
    /// about on time instead of running a chunk sized by its fast start for hours.
    fn chunk(self, rate: Option<f64>, since: f64) -> usize {
        match (self, rate) {
            (Every::Seqs(n), _) => n.max(1),
            (Every::Secs(_), None) => 1,
            (Every::Secs(s), Some(r)) => {
                let r = r.max(1e-9);
                ((s - since) / r).min(s / 4.0 / r).ceil().clamp(1.0, 1e9) as usize
            }
        }
    }

    /// Whether a checkpoint is due after a chunk: always under `Seqs`; under `Secs` once the interval is
    /// reached to within half a sequence.
    fn due(self, rate: f64, since: f64) -> bool {
        match self {
            Every::Seqs(_) => true,
            Every::Secs(s) => since + rate / 2.0 >= s,
        }
    }
}

/// What one collection needs besides the model, the sequences and its start.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    /// The sketches collected together, in the order of the start sets.
    pub kinds: &'a [SketchKind],
    pub seed: u64,
    pub prov: &'a Provenance,
    /// The calibration record's header (its `n_seqs` is the whole run's); the checkpoint's record gets
    /// labels when every sequence in it has them.
    pub record: &'a RecordHeader,
    /// The output folder; the checkpoint is `OUT.partial/`.
    pub out: &'a Path,
    pub every: Every,
    /// Sequences this call may still go through before it stops as if interrupted (`--stop-after-seqs`).
    pub budget: Option<usize>,
    /// The progress stage's label.
    pub label: &'a str,
    pub progress: &'a dyn Progress,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("kinds", &self.kinds)
            .field("out", &self.out)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// How a collection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every sequence is in `sets`; `processed` of them went through in this call.
    Finished { sets: Vec<Set>, processed: usize },
    /// Stopped at this sequence as asked (`--stop-after-seqs`); the checkpoint holds the ones before.
    Stopped(usize),
}

/// The checkpoint folder that goes with the output folder `out`.
fn partial_dir(out: &Path) -> PathBuf {
    sibling(out, "partial")
}

/// Removes `dir` and everything in it, if it is there.
fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| ModelError::io(dir, e))
            .context("removing a checkpoint")?;
    }
    Ok(())
}

/// Whether `out` has a checkpoint folder next to it (a run into it has not finished).
pub fn has_checkpoint(out: &Path) -> bool {
    partial_dir(out).exists()
}

/// `OUT.suffix` next to the output folder `out`.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "factors".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.{suffix}"))
}

/// Collects `job.kinds` over `seqs[from..]`, continuing `start` (sums over the sequences before `from`,
/// or empty), resuming from `OUT.partial/` when it holds a checkpoint of this collection, and
/// checkpointing as `job.every` says. The labels the backward passes used end up on `seqs`. The checkpoint
/// is left in place; [`finish`] removes it once the caller has written the result.
pub fn collect<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seqs: &mut [CalibSeq],
    from: usize,
    start: Vec<Set>,
    job: &Job<'_>,
) -> Result<Outcome> {
    let to = seqs.len();
    let partial = partial_dir(job.out);
    let (mut sets, mut done) = match resume_point(model, from, to, &start, job)? {
        Some((sets, done)) => {
            if job.kinds.iter().any(|k| k.needs_gradients()) {
                labels_from_record(
                    &partial.join(RECORD_FILE),
                    &mut seqs[from..done],
                    &|s| {
                        sampled_labels(backend, model, s, job.seed).with_context(|| {
                            format!("resampling the labels of sequence {}", s.index)
                        })
                    },
                    job.progress,
                )?;
            }
            job.progress.note(format!(
                "{}: resuming after {done} of {to} sequences from {}",
                job.label,
                partial.display()
            ));
            (sets, done)
        }
        None => (start, from),
    };
    let first = done;
    let stage = job.progress.stage(job.label, to - first);
    let mut warm_up = SeqWarmUp::new(to - first);
    let mut last = Instant::now();
    // Seconds per sequence of the last chunk.
    let mut recent: Option<f64> = None;
    let mut budget = job.budget;
    while done < to {
        if budget == Some(0) {
            return Ok(Outcome::Stopped(done));
        }
        let mut end = (done + job.every.chunk(recent, last.elapsed().as_secs_f64())).min(to);
        if let Some(b) = budget {
            end = end.min(done + b);
        }
        let offset = done - first;
        let chunk_start = Instant::now();
        let (next, labels) =
            collect_sets(backend, model, &seqs[done..end], job.seed, sets, &mut |d| {
                stage.step(offset + d);
                if let Some(line) = warm_up.after(job.label, offset + d) {
                    job.progress.note(line);
                }
            })
            .with_context(|| format!("{}: sequences {done}..{end}", job.label))?;
        sets = next;
        if !labels.is_empty() {
            attach_labels(&mut seqs[done..end], labels);
        }
        budget = budget.map(|b| b - (end - done));
        let rate = chunk_start.elapsed().as_secs_f64() / (end - done) as f64;
        recent = Some(rate);
        done = end;
        if done < to && (job.every.due(rate, last.elapsed().as_secs_f64()) || budget == Some(0)) {
            save(model, &sets, seqs, from, done, job)?;
            last = Instant::now();
        }
    }
    drop(stage);
    Ok(Outcome::Finished {
        sets,
        processed: done - first,
    })
}

/// Removes the checkpoint of a finished run.
pub fn finish(out: &Path) -> Result<()> {
    remove_dir_if_present(&partial_dir(out))?;
    remove_dir_if_present(&sibling(out, "partial.old"))?;
    // Left by a run killed while it wrote a checkpoint.
    remove_dir_if_present(&sibling(out, "partial.tmp"))
}

/// The sketch and pass of the checkpoint next to `out`, if it holds one of this calibration whose record
/// says it belongs to a run of `n_seqs` sequences (for a caller that must know which pass to resume
/// before it can start it: `hessian --sketch a --passes P`).
pub fn checkpointed_kind(
    out: &Path,
    model: &Model<f32>,
    prov: &Provenance,
    n_seqs: usize,
    candidates: &[SketchKind],
) -> Option<SketchKind> {
    let dir = restored_partial(out).ok()??;
    let record = read_calib_file(&dir.join(RECORD_FILE), None).ok()?;
    if record.header?.n_seqs != n_seqs {
        return None;
    }
    let first = *LayerId::all(model).first()?;
    candidates
        .iter()
        .copied()
        .find(|&k| read_factors(&factor_path(&dir, first, k)).is_ok_and(|f| f.provenance == *prov))
}

/// Reads back the checkpoint next to `out` (which [`checkpointed_kind`] found): every layer's factors
/// of `kind`, all at the same count, and that count.
pub fn checkpointed_set(
    out: &Path,
    model: &Model<f32>,
    kind: SketchKind,
    prov: &Provenance,
) -> Option<(Set, u64)> {
    let dir = partial_dir(out);
    let first = *LayerId::all(model).first()?;
    let n = read_factors(&factor_path(&dir, first, kind))
        .ok()?
        .factors
        .n_seqs;
    Some((load_set(&dir, model, kind, prov, n)?, n))
}

/// `OUT.partial/` if there is a checkpoint, after restoring one that a crash left as `OUT.partial.old`
/// only (between the two renames of [`save`]).
fn restored_partial(out: &Path) -> Result<Option<PathBuf>> {
    let partial = partial_dir(out);
    let old = sibling(out, "partial.old");
    if !partial.is_dir() {
        if !old.is_dir() {
            return Ok(None);
        }
        std::fs::rename(&old, &partial)
            .map_err(|e| ModelError::io(&old, e))
            .with_context(|| {
                format!(
                    "restoring the checkpoint {} as {}",
                    old.display(),
                    partial.display()
                )
            })?;
    }
    Ok(Some(partial))
}

/// The sums and the sequence reached of a checkpoint that continues `start` (sums up to sequence
/// `from`) towards `to`, if there is one. A checkpoint of the same sketch that does not (another model,
/// calibration or start) is moved to `OUT.partial.stale/`.
fn resume_point(
    model: &Model<f32>,
    from: usize,
    to: usize,
    start: &[Set],
    job: &Job<'_>,
) -> Result<Option<(Vec<Set>, usize)>> {
    let Some(dir) = restored_partial(job.out)? else {
        return Ok(None);
    };
    let first = LayerId::all(model)[0];
    let Some(&kind) = job.kinds.first() else {
        return Ok(None);
    };
    if !factor_path(&dir, first, kind).exists() {
        // Another pass's or stage's checkpoint (a finished Sketch A pass waiting for the next one's first
        // checkpoint): left in place; this collection's first checkpoint replaces it.
        return Ok(None);
    }
    let found = (|| {
        let base = |set: &Set| set.get(&first).map(|f| f.n_seqs);
        let f = read_factors(&factor_path(&dir, first, kind)).ok()?;
        if f.provenance != *job.prov {
            return None;
        }
        let d = f.factors.n_seqs.checked_sub(base(start.first()?)?)?;
        let done = from + usize::try_from(d).ok()?;
        if d == 0 || done > to {
            return None;
        }
        let sets = job
            .kinds
            .iter()
            .zip(start)
            .map(|(&kind, s)| {
                let set = load_set(&dir, model, kind, job.prov, base(s)? + d)?;
                set.iter()
                    .all(|(id, f)| s.get(id).is_some_and(|s0| f.same_start(s0)))
                    .then_some(set)
            })
            .collect::<Option<Vec<_>>>()?;
        (sets.len() == job.kinds.len()).then_some((sets, done))
    })();
    if found.is_none() {
        let aside = sibling(job.out, "partial.stale");
        remove_dir_if_present(&aside)?;
        std::fs::rename(&dir, &aside)
            .map_err(|e| ModelError::io(&dir, e))
            .with_context(|| format!("setting aside {}", dir.display()))?;
        job.progress.note(format!(
            "{} is not a checkpoint of this collection (model, calibration or the pass's start differ); \
             moved to {} and starting from sequence {from}",
            dir.display(),
            aside.display()
        ));
    }
    Ok(found)
}

/// Writes `sets` (sums up to sequence `done`) and the record of the sequences they cover beyond `from`,
/// with every labelled one, as `OUT.partial/`, replacing the previous checkpoint only once the new one
/// is complete.
pub fn save(
    model: &Model<f32>,
    sets: &[Set],
    seqs: &[CalibSeq],
    from: usize,
    done: usize,
    job: &Job<'_>,
) -> Result<()> {
    let partial = partial_dir(job.out);
    let tmp = sibling(job.out, "partial.tmp");
    let old = sibling(job.out, "partial.old");
    remove_dir_if_present(&tmp)?;
    remove_dir_if_present(&old)?;
    for set in sets {
        write_factor_dir(&tmp, model, set, job.prov)
            .with_context(|| format!("writing the checkpoint {}", tmp.display()))?;
    }
    let kept: Vec<CalibSeq> = seqs
        .iter()
        .enumerate()
        .filter(|(i, s)| (from..done).contains(i) || s.labels.is_some())
        .map(|(_, s)| s.clone())
        .collect();
    let header = RecordHeader {
        labels: kept
            .iter()
            .all(|s| s.labels.is_some())
            .then(|| job.record.labels.unwrap_or(LabelOrigin::Sampled)),
        ..job.record.clone()
    };
    write_record(&tmp.join(RECORD_FILE), &kept, &header)
        .with_context(|| format!("writing the checkpoint's record in {}", tmp.display()))?;
    if partial.exists() {
        std::fs::rename(&partial, &old)
            .map_err(|e| ModelError::io(&partial, e))
            .with_context(|| format!("moving {} aside", partial.display()))?;
    }
    std::fs::rename(&tmp, &partial)
        .map_err(|e| ModelError::io(&tmp, e))
        .with_context(|| format!("renaming {} to {}", tmp.display(), partial.display()))?;
    remove_dir_if_present(&old)
}

/// Puts labels on those of `seqs` that have none (sequences whose backward ran in an earlier run): the
/// ones in `record` when it has them, matched by sequence number, otherwise `resample` (the seeded draw
/// [`collect`](yaqa_model::job::collect::collect) made, for records written before labels were kept; one
/// forward pass each, with a progress bar).
pub fn labels_from_record(
    record: &Path,
    seqs: &mut [CalibSeq],
    resample: &dyn Fn(&CalibSeq) -> Result<Vec<u32>>,
    progress: &dyn Progress,
) -> Result<()> {
    if seqs.iter().all(|s| s.labels.is_some()) {
        return Ok(());
    }
    let mut recorded: BTreeMap<usize, Vec<u32>> = match read_calib_file(record, None) {
        Ok(file) => file
            .seqs
            .into_iter()
            .filter_map(|s| Some((s.index, s.labels?)))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let missing = seqs
        .iter()
        .filter(|s| s.labels.is_none() && !recorded.contains_key(&s.index))
        .count();
    let stage = (missing > 0).then(|| progress.stage("redrawing earlier labels", missing));
    let mut redrawn = 0;
    for s in seqs.iter_mut().filter(|s| s.labels.is_none()) {
        s.labels = Some(match recorded.remove(&s.index) {
            Some(l) => l,
            None => {
                let l = resample(s)?;
                redrawn += 1;
                if let Some(stage) = &stage {
                    stage.step(redrawn);
                }
                l
            }
        });
    }
    drop(stage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Every;

    #[test]
    fn time_based_chunks_measure_then_fill_the_interval() {
        let every = Every::Secs(600.0);
        // One sequence first, to measure.
        assert_eq!(every.chunk(None, 0.0), 1);
        // 4 s per sequence, 500 s since the last checkpoint: 25 more reach 600 s.
        assert_eq!(every.chunk(Some(4.0), 500.0), 25);
        // 100 s since: 125 more would reach it, but a chunk is at most a quarter of the interval (150 s)
        // so a rate that changes is measured again before the checkpoint is due.
        assert_eq!(every.chunk(Some(4.0), 100.0), 38);
        // Past the interval (a slow checkpoint write): still one at a time, never zero.
        assert_eq!(every.chunk(Some(4.0), 700.0), 1);
        assert!(!every.due(4.0, 100.0));
        assert!(every.due(4.0, 598.5));
        assert!(every.due(4.0, 700.0));
        // Sequences that take longer than the interval: a checkpoint after each.
        assert_eq!(every.chunk(Some(900.0), 0.0), 1);
        assert!(every.due(900.0, 900.0));
        assert_eq!(Every::Seqs(64).chunk(Some(4.0), 1e6), 64);
        assert!(Every::Seqs(64).due(4.0, 0.0));
    }
}
