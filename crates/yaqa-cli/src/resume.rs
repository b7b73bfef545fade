//! Continuing factor collections: `hessian`'s one-pass collection (Sketch B, `Σ x xᵀ`) in checkpointed
//! chunks, so a killed run restarted with the same arguments goes on from its last checkpoint instead of
//! from the first sequence, and the reloading of a finished set and its labels that this and `compare`'s
//! reuse and `--b-seqs` extension share ([`load_set`], [`labels_from_record`]).
//!
//! Every `--checkpoint-every` sequences the factors so far and the calibration record of the sequences
//! done (with the Fisher labels their backward passes drew) go to `OUT.partial/`, written as a whole
//! under a temporary name and renamed. Factors are sums accumulated one sequence at a time in f64 and
//! stored exactly, and each sequence's labels come from its own seed, so a resumed run writes the same
//! bytes as an uninterrupted one. A checkpoint of another run (other model, calibration or sketch) is
//! set aside with a message, never mixed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use yaqa_backend_cpu::Cpu;
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::Model;
use yaqa_model::calib::CalibSeq;
use yaqa_model::calib_file::{RECORD_FILE, RecordHeader, read_calib_file, write_record};
use yaqa_model::collect::{LayerId, empty_factors, sampled_labels};
use yaqa_model::factor_file::{Provenance, factor_path, read_factors};

use crate::commands::{attach_labels, collect_factors_labelled, write_factor_dir};
use crate::util::bar;

/// The checkpoint folder that goes with the output folder `out`.
fn partial_dir(out: &Path) -> PathBuf {
    sibling(out, "partial")
}

/// Removes `dir` and everything in it, if it is there.
fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "factors".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.{suffix}"))
}

/// How a collection ended.
pub enum Outcome {
    Finished(BTreeMap<LayerId, Factors>),
    /// Stopped after this many sequences as asked (`--stop-after-seqs`); the checkpoint holds them.
    Stopped(usize),
}

/// What one collection needs besides the model and the sequences.
pub struct Job<'a> {
    pub kind: SketchKind,
    pub seed: u64,
    pub prov: &'a Provenance,
    /// The calibration record's header (its `n_seqs` is the whole run's).
    pub record: &'a RecordHeader,
    pub out: &'a Path,
    pub every: usize,
    pub stop_after: Option<usize>,
}

/// Collects `job.kind` over `seqs`, resuming from `OUT.partial/` when it holds a checkpoint of this
/// run, and checkpointing every `job.every` sequences. The labels the backward passes used end up on
/// `seqs`. The checkpoint is left in place; [`finish`] removes it once the output is written.
pub fn collect(
    cpu: &Cpu,
    model: &Model<f32>,
    seqs: &mut [CalibSeq],
    job: &Job<'_>,
) -> Result<Outcome> {
    let partial = partial_dir(job.out);
    let (mut set, mut done) = match resume_point(model, seqs.len(), job)? {
        Some((set, done)) => {
            if job.kind.needs_gradients() {
                labels_from_record(&partial.join(RECORD_FILE), &mut seqs[..done], &|s| {
                    sampled_labels(cpu, model, s, job.seed)
                        .with_context(|| format!("resampling the labels of sequence {}", s.index))
                })?;
            }
            eprintln!(
                "resuming after {done} of {} sequences from {}",
                seqs.len(),
                partial.display()
            );
            (set, done)
        }
        None => (empty_factors(model, job.kind), 0),
    };
    while done < seqs.len() {
        let mut end = (done + job.every).min(seqs.len());
        if let Some(k) = job.stop_after
            && k > done
        {
            end = end.min(k);
        }
        let what = format!("sequences {done}..{end}");
        let mut got =
            collect_factors_labelled(cpu, model, &seqs[done..end], job.seed, vec![set], &what)?;
        attach_labels(&mut seqs[done..end], got.labels);
        set = got.sets.pop().context("no factors collected")?;
        done = end;
        if done < seqs.len() {
            write_checkpoint(&partial, model, &set, &seqs[..done], job)?;
            if job.stop_after.is_some_and(|k| done >= k) {
                return Ok(Outcome::Stopped(done));
            }
        }
    }
    Ok(Outcome::Finished(set))
}

/// Removes the checkpoint of a finished run.
pub fn finish(out: &Path) -> Result<()> {
    remove_dir_if_present(&partial_dir(out))?;
    remove_dir_if_present(&sibling(out, "partial.old"))
}

/// The factors and sequence count of a usable checkpoint, if there is one. A checkpoint that a crash
/// left as `OUT.partial.old` only (between the two renames) counts too.
fn resume_point(
    model: &Model<f32>,
    n_all: usize,
    job: &Job<'_>,
) -> Result<Option<(BTreeMap<LayerId, Factors>, usize)>> {
    let partial = partial_dir(job.out);
    let old = sibling(job.out, "partial.old");
    if !partial.is_dir() {
        if !old.is_dir() {
            return Ok(None);
        }
        std::fs::rename(&old, &partial).with_context(|| {
            format!(
                "restoring the checkpoint {} as {}",
                old.display(),
                partial.display()
            )
        })?;
    }
    let dir = partial;
    let first = LayerId::all(model)[0];
    let done = read_factors(&factor_path(&dir, first, job.kind))
        .ok()
        .filter(|f| f.provenance == *job.prov)
        .map(|f| f.factors.n_seqs as usize);
    match done.and_then(|d| Some((load_set(&dir, model, job.kind, job.prov, d as u64)?, d))) {
        Some((set, d)) if d > 0 && d < n_all => Ok(Some((set, d))),
        _ => {
            let aside = sibling(job.out, "partial.stale");
            remove_dir_if_present(&aside)?;
            std::fs::rename(&dir, &aside)
                .with_context(|| format!("setting aside {}", dir.display()))?;
            eprintln!(
                "{} is not a checkpoint of this run (model, calibration or sketch differ); moved to {} \
                 and starting from the first sequence",
                dir.display(),
                aside.display()
            );
            Ok(None)
        }
    }
}

/// Writes the factors after `seqs` and their record as `OUT.partial/`, replacing the previous one only
/// once the new one is complete.
fn write_checkpoint(
    partial: &Path,
    model: &Model<f32>,
    set: &BTreeMap<LayerId, Factors>,
    seqs: &[CalibSeq],
    job: &Job<'_>,
) -> Result<()> {
    let tmp = sibling(job.out, "partial.tmp");
    let old = sibling(job.out, "partial.old");
    remove_dir_if_present(&tmp)?;
    remove_dir_if_present(&old)?;
    write_factor_dir(&tmp, model, set, job.prov)
        .with_context(|| format!("writing the checkpoint {}", tmp.display()))?;
    write_record(&tmp.join(RECORD_FILE), seqs, job.record)
        .with_context(|| format!("writing the checkpoint's record in {}", tmp.display()))?;
    if partial.exists() {
        std::fs::rename(partial, &old)
            .with_context(|| format!("moving {} aside", partial.display()))?;
    }
    std::fs::rename(&tmp, partial)
        .with_context(|| format!("renaming {} to {}", tmp.display(), partial.display()))?;
    remove_dir_if_present(&old)
}

/// Every layer's factors of `kind` from `dir`, if all are there and were made from the same calibration.
pub(crate) fn load_set(
    dir: &Path,
    model: &Model<f32>,
    kind: SketchKind,
    prov: &Provenance,
    n_seqs: u64,
) -> Option<BTreeMap<LayerId, Factors>> {
    LayerId::all(model)
        .into_iter()
        .map(|id| {
            let f = read_factors(&factor_path(dir, id, kind)).ok()?;
            (f.provenance == *prov && f.factors.n_seqs == n_seqs && f.layer == id)
                .then_some((id, f.factors))
        })
        .collect()
}

/// Puts labels on those of `seqs` that have none (sequences whose backward ran in an earlier run): the
/// ones in `record` when it has them, matched by sequence number, otherwise `resample` (the seeded draw
/// [`collect`](yaqa_model::collect::collect) made, for records written before labels were kept; one
/// forward pass each, with a progress bar).
pub(crate) fn labels_from_record(
    record: &Path,
    seqs: &mut [CalibSeq],
    resample: &dyn Fn(&CalibSeq) -> Result<Vec<u32>>,
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
    let pb = (missing > 0).then(|| bar(missing, "redrawing earlier labels"));
    for s in seqs.iter_mut().filter(|s| s.labels.is_none()) {
        s.labels = Some(match recorded.remove(&s.index) {
            Some(l) => l,
            None => {
                let l = resample(s)?;
                if let Some(pb) = &pb {
                    pb.inc(1);
                }
                l
            }
        });
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(())
}
