//! `hessian`: collect every linear layer's Kronecker factors over a calibration set (DESIGN.md §1–2)
//! into a factor folder with the calibration record, checkpointed and resumable; and `hessian merge`,
//! which adds the folders of several shards.
//!
//! Sketch B and `Σ x xᵀ` take one pass. Sketch A takes `passes` passes here in one process; on a cluster
//! each pass is a job array instead ([`crate::job::sketch_a`]).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::SketchKind;

use crate::error::{Context, ModelError, Result};
use crate::formats::calib_file::{
    LabelOrigin, RECORD_FILE, RecordHeader, merge_records, read_calib_file, write_record,
};
use crate::formats::factor_file::{
    Provenance, factor_path, merge_into, parse_sketch_tag, read_factors, sketch_tag, write_factors,
};
use crate::job::calib::{CalibSeq, Shard};
use crate::job::calib_set::{Calibration, calibration_set};
use crate::job::collect::{Set, empty_factors, sampled_labels};
use crate::job::factors::{factor_index, load_set, next_sketch_a_pass, write_factor_dir};
use crate::job::guard::{named, refuse_overwrite};
use crate::job::memory::{self, Residency};
use crate::job::preflight;
use crate::job::progress::{Progress, ProgressExt};
use crate::job::resume::{self, Job, Outcome, labels_from_record};
use crate::job::sketch_a::{self, DEFAULT_PASSES};
use crate::job::{CalibConfig, CheckpointPolicy};
use crate::transformer::weights::Model;

/// Which factors to collect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sketch {
    /// Sketch A: power iteration over passes, per token.
    A,
    /// Sketch B: per-sequence gradients, one pass.
    #[default]
    B,
    /// `Σ x xᵀ` from a forward pass (the GPTQ/LDLQ Hessian).
    Xtx,
}

impl Sketch {
    /// The flag value (`a`, `b`, `xtx`).
    pub fn name(self) -> &'static str {
        match self {
            Sketch::A => "a",
            Sketch::B => "b",
            Sketch::Xtx => "xtx",
        }
    }
}

/// What `hessian` collects, from what, and where it goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HessianConfig {
    /// A GGUF file or a Hugging Face folder.
    pub model: PathBuf,
    pub sketch: Sketch,
    /// Sketch A's passes in this process (at least 2; default 2). Not with `shard` or `from`.
    pub passes: Option<u32>,
    /// Run the one Sketch A pass after the merged pass stored in this folder.
    pub from: Option<PathBuf>,
    pub calib: CalibConfig,
    /// Collect only this shard of the calibration set (default: all of it).
    pub shard: Option<Shard>,
    /// The factor folder written.
    pub out: PathBuf,
    pub checkpoint: CheckpointPolicy,
    /// Collect only the linear layers of these blocks (`--layers A..B`); `hessian merge` joins the
    /// folders of disjoint groups. Default: every block.
    pub layers: Option<Range<usize>>,
    /// The memory this run may use (`--max-memory`): the blocks are streamed from the checkpoint and
    /// the layers collected in groups, one after another, when the whole model does not fit
    /// ([`crate::job::memory`]). Default: no limit, every block resident.
    pub max_memory: Option<u64>,
}

/// What a finished `hessian` run wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct HessianReport {
    pub out: PathBuf,
    /// Factor files written.
    pub files: usize,
    /// The sketch tag of the files (`b`, `xtx`, `a-p1`, ...).
    pub sketch: String,
    /// Sequences collected (this shard's).
    pub n_seqs: usize,
    pub seconds: f64,
    /// What to run next, for a Sketch A pass of a cluster run.
    pub next: Option<String>,
}

/// What a `hessian --sketch a` run does, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan<'a> {
    /// Passes `0..P` in one process over this run's sequences: `--passes P`, or `P = 1` (pass 0 only)
    /// for a sharded run without `--from`.
    FromStart(u32),
    /// Exactly the pass after the one stored in this folder (`--from`).
    After(&'a Path),
}

/// Checks the flags that shape Sketch A (before the model is loaded) and says what the run does; `None`
/// for the other sketches.
///
/// **Errors**: `--from` without `--sketch a`; `--passes` next to `--from` or `--shard` (those runs do
/// one pass each); fewer than 2 passes.
fn plan(args: &HessianConfig) -> Result<Option<Plan<'_>>> {
    if args.sketch != Sketch::A {
        if let Some(from) = &args.from {
            crate::bail!(
                "--from {}: --from continues Sketch A from a finished pass and needs --sketch a",
                from.display()
            );
        }
        if let Some(p) = args.passes {
            crate::bail!(
                "--passes {p}: passes are Sketch A's, and this run collects --sketch {}",
                args.sketch.name()
            );
        }
        return Ok(None);
    }
    let one_pass = |why: &str, p: u32| {
        ModelError::Refused(format!(
            "--passes {p} with {why}: --passes runs every pass in one process, while a run with --shard \
             or --from runs exactly one pass (pass 0 without --from, otherwise the pass after --from's); \
             drop --passes and loop over the passes, merging the shards in between"
        ))
    };
    match (&args.from, args.shard, args.passes) {
        (Some(from), _, Some(p)) => Err(one_pass(&format!("--from {}", from.display()), p)),
        (None, Some(shard), Some(p)) => Err(one_pass(&format!("--shard {shard}"), p)),
        (Some(from), _, None) => Ok(Some(Plan::After(from))),
        (None, Some(_), None) => Ok(Some(Plan::FromStart(1))),
        (None, None, Some(p)) if p < 2 => {
            crate::bail!("--passes: Sketch A needs at least 2 passes (the reference uses 6)")
        }
        (None, None, p) => Ok(Some(Plan::FromStart(p.unwrap_or(DEFAULT_PASSES)))),
    }
}

/// Collects the factors `config` asks for into `config.out` (module docs).
///
/// **Errors**: contradictory flags (before the model is loaded), calibration sizes the model cannot use
/// ([`CalibConfig::check`]), an output folder holding another Sketch A pass, the errors of loading the
/// model and the calibration set, of collection and of writing; a run stopped by
/// `checkpoint.stop_after_seqs` returns [`ModelError::Stopped`].
pub fn run<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &HessianConfig,
    progress: &dyn Progress,
) -> Result<HessianReport> {
    let out = &config.out;
    let mut inputs = config.calib.inputs();
    inputs.push(named("--model", &config.model));
    inputs.extend(config.from.as_deref().map(|p| named("--from", p)));
    refuse_overwrite(&[named("--out", out)], &inputs)?;
    // Sketch A runs every pass here (`passes`), or one pass of a sharded run (`sketch_a` module).
    let plan = plan(config)?;
    let passes = match plan {
        Some(Plan::FromStart(passes)) => {
            sketch_a::check_out(out, passes - 1)?;
            passes
        }
        _ => 0,
    };
    let t0 = Instant::now();
    let model_config = crate::formats::checkpoint::config(&config.model)
        .with_context(|| format!("loading the model {}", config.model.display()))?;
    let n_blocks = model_config.n_layers;
    let selected = match &config.layers {
        Some(r) if r.start >= r.end || r.end > n_blocks => crate::bail!(
            "--layers {}..{}: the model has {n_blocks} blocks (0..{n_blocks})",
            r.start,
            r.end
        ),
        Some(r) => r.clone(),
        None => 0..n_blocks,
    };
    let kinds: Vec<SketchKind> = match config.sketch {
        Sketch::Xtx => vec![SketchKind::Xtx],
        Sketch::B => vec![SketchKind::B],
        // A pass holds its sums and the previous pass's factors it multiplies by, both two-sided.
        Sketch::A => vec![SketchKind::A { pass: 1 }; 2],
    };
    let mem = memory::plan(
        &model_config,
        selected.clone(),
        &kinds,
        config.calib.seq_len,
        config.max_memory,
    )?;
    progress.note(mem.to_string());
    // The files this run writes and the checkpoint beside them; with layer groups the groups' folders
    // until they are joined, and one group's checkpoint.
    let file_kinds: Vec<SketchKind> = match (config.sketch, &plan) {
        (Sketch::A, Some(Plan::FromStart(p))) => {
            (0..*p).map(|pass| SketchKind::A { pass }).collect()
        }
        (Sketch::A, _) => vec![SketchKind::A { pass: 1 }],
        (Sketch::B, _) => vec![SketchKind::B],
        (Sketch::Xtx, _) => vec![SketchKind::Xtx],
    };
    let files = file_kinds
        .iter()
        .map(|&k| memory::block_factor_file_bytes(&model_config, k))
        .sum::<u64>()
        .saturating_mul(selected.len() as u64);
    let groups = mem.groups.len().max(1) as u64;
    preflight::check_output(
        "--out",
        out,
        files
            .saturating_mul(2)
            .saturating_add(if groups > 1 { files / groups } else { 0 }),
        "the factor files and their checkpoint",
    )?;
    if mem.groups.len() > 1 {
        return run_groups(backend, config, &mem.groups, t0, progress);
    }
    let keep = match mem.residency {
        Residency::Resident => None,
        Residency::Streamed { keep } => Some(keep),
    };
    let mut loaded = crate::formats::checkpoint::load_with(&config.model, keep)
        .with_context(|| format!("loading the model {}", config.model.display()))?;
    loaded.model.selected = selected;
    config.calib.check(&loaded)?;
    if let Some(Plan::After(from)) = plan {
        let w = sketch_a::next_pass(
            backend,
            &loaded,
            &config.calib,
            config.shard.unwrap_or_default(),
            from,
            out,
            config.checkpoint,
            progress,
        )?;
        return Ok(HessianReport {
            out: out.clone(),
            files: w.files,
            sketch: sketch_tag(SketchKind::A { pass: w.pass }),
            n_seqs: w.n_seqs,
            seconds: t0.elapsed().as_secs_f64(),
            next: Some(w.next),
        });
    }
    let shard = config.shard.unwrap_or_default();
    let Calibration {
        mut seqs,
        source,
        seq_len,
        n_seqs,
        shards,
        labels: given_labels,
    } = calibration_set(backend, &loaded, &config.calib, shard, progress)?;
    progress.note(format!(
        "collecting {:?} over {} sequences of {seq_len} tokens (shard {shard}, {source}{})",
        config.sketch,
        seqs.len(),
        if given_labels.is_some() && config.sketch != Sketch::Xtx {
            ", labels from the file"
        } else {
            ""
        }
    ));
    let sketch = match config.sketch {
        Sketch::Xtx => SketchKind::Xtx,
        Sketch::B => SketchKind::B,
        Sketch::A => SketchKind::A { pass: passes - 1 },
    };
    let prov = Provenance {
        seed: config.calib.seed,
        seq_len,
        calib: source,
        shards,
        model_fingerprint: loaded.fingerprint.clone(),
    };
    let record = RecordHeader {
        seed: prov.seed,
        seq_len,
        n_seqs,
        calib: prov.calib.clone(),
        shards: prov.shards.clone(),
        sketch: sketch_tag(sketch),
        labels: match sketch {
            // A sharded pass 0 keeps the labels a calibration file gave, for the passes that follow.
            SketchKind::A { pass: 0 } => given_labels,
            _ => sketch
                .needs_gradients()
                .then(|| given_labels.unwrap_or(LabelOrigin::Sampled)),
        },
        model_fingerprint: prov.model_fingerprint.clone(),
    };
    let kind = [sketch];
    let job = Job {
        kinds: &kind,
        seed: config.calib.seed,
        prov: &prov,
        record: &record,
        out,
        every: config.checkpoint.every,
        budget: config.checkpoint.stop_after_seqs,
        label: match sketch {
            SketchKind::B => "Sketch B",
            _ => "Σ x xᵀ",
        },
        progress,
    };
    let factors = match config.sketch {
        Sketch::Xtx | Sketch::B => {
            // A finished run of the first sequences of this set in `out` is extended, not redone.
            let (from, start) =
                match finished_prefix(backend, &loaded.model, &mut seqs, sketch, &job)? {
                    Some((k, set)) => {
                        progress.note(format!(
                            "{}: extending the {k} sequences already in {} to {}",
                            job.label,
                            out.display(),
                            seqs.len()
                        ));
                        (k, set)
                    }
                    None => (0, empty_factors(&loaded.model, sketch)),
                };
            match resume::collect(backend, &loaded.model, &mut seqs, from, vec![start], &job)? {
                Outcome::Finished { mut sets, .. } => sets.pop().context("no factors collected")?,
                Outcome::Stopped(done) => {
                    return Err(ModelError::Stopped(format!("after {done} sequences")));
                }
            }
        }
        Sketch::A => sketch_a_passes(backend, &loaded.model, &mut seqs, passes, &job)?,
    };
    write_factor_dir(out, &loaded.model, &factors, &prov)?;
    let path = out.join(RECORD_FILE);
    write_record(&path, &seqs, &record)
        .with_context(|| format!("writing the calibration record {}", path.display()))?;
    resume::finish(out)?;
    let next =
        matches!(sketch, SketchKind::A { pass: 0 }).then(|| sketch_a::next_steps(0, shard, out));
    Ok(HessianReport {
        out: out.clone(),
        files: factors.len(),
        sketch: sketch_tag(sketch),
        n_seqs: seqs.len(),
        seconds: t0.elapsed().as_secs_f64(),
        next,
    })
}

/// Collects `groups` of blocks one after another, each into its own folder `OUT.groups/blocks-A-B/` (a
/// finished one is not redone, so a killed run resumes in the group it stopped in), then joins them into
/// `out` with [`merge`] and removes the group folders.
///
/// **Errors**: those of [`run`] for each group and of [`merge`].
fn run_groups<B: Backend + ModelOps<f32>>(
    backend: &B,
    config: &HessianConfig,
    groups: &[Range<usize>],
    t0: Instant,
    progress: &dyn Progress,
) -> Result<HessianReport> {
    let out = &config.out;
    let root = resume::sibling(out, "groups");
    let mut dirs = Vec::new();
    let mut last = None;
    for (i, g) in groups.iter().enumerate() {
        let dir = root.join(format!("blocks-{}-{}", g.start, g.end));
        dirs.push(dir.clone());
        if dir.join(RECORD_FILE).is_file() && !resume::has_checkpoint(&dir) {
            progress.note(format!(
                "group {}/{} (blocks {g:?}) already collected in {}",
                i + 1,
                groups.len(),
                dir.display()
            ));
            continue;
        }
        progress.note(format!("group {}/{}: blocks {g:?}", i + 1, groups.len()));
        let group = HessianConfig {
            layers: Some(g.clone()),
            out: dir,
            ..config.clone()
        };
        let started = Instant::now();
        last = Some(run(backend, &group, progress)?);
        // Every group runs the same passes over the same sequences: the first measures the rest.
        let took = started.elapsed().as_secs_f64();
        let left = groups.len() - i - 1;
        if left > 0 {
            progress.note(format!(
                "group {}/{} took {took:.0} s; the {left} left about {:.0} s more",
                i + 1,
                groups.len(),
                took * left as f64
            ));
        }
    }
    let merged = merge(out, &dirs)?;
    std::fs::remove_dir_all(&root).map_err(|e| ModelError::io(&root, e))?;
    let n_seqs = match last {
        Some(r) => r.n_seqs,
        None => read_calib_file(&out.join(RECORD_FILE), None)
            .map(|f| f.seqs.len())
            .unwrap_or(0),
    };
    Ok(HessianReport {
        out: out.clone(),
        files: merged.files,
        sketch: match config.sketch {
            Sketch::A => sketch_tag(SketchKind::A {
                pass: config.passes.unwrap_or(DEFAULT_PASSES) - 1,
            }),
            Sketch::B => sketch_tag(SketchKind::B),
            Sketch::Xtx => sketch_tag(SketchKind::Xtx),
        },
        n_seqs,
        seconds: t0.elapsed().as_secs_f64(),
        next: None,
    })
}

/// [`merge`] of layer groups: every group's factor files copied (read, checked and rewritten) into
/// `out`, and the calibration record, which every group must share, once.
fn join_groups(
    out: &Path,
    dirs: &[PathBuf],
    indexes: &[std::collections::BTreeMap<
        crate::LayerId,
        std::collections::BTreeMap<String, PathBuf>,
    >],
) -> Result<MergeReport> {
    let mut owner: std::collections::BTreeMap<crate::LayerId, &Path> = Default::default();
    for (dir, index) in dirs.iter().zip(indexes) {
        for id in index.keys() {
            if let Some(other) = owner.insert(*id, dir) {
                crate::bail!(
                    "{} and {} both hold {} but not the same layers: merge adds shards of the same \
                     layers or joins disjoint layer groups",
                    other.display(),
                    dir.display(),
                    id.name()
                );
            }
        }
    }
    let records: Vec<PathBuf> = dirs.iter().map(|d| d.join(RECORD_FILE)).collect();
    let first = read_calib_file(&records[0], None)
        .with_context(|| format!("reading {}", records[0].display()))?;
    for r in &records[1..] {
        let other = read_calib_file(r, None).with_context(|| format!("reading {}", r.display()))?;
        if (&other.seqs, other.seq_len, &other.header)
            != (&first.seqs, first.seq_len, &first.header)
        {
            crate::bail!(
                "{} and {} differ: layer groups must come from the same calibration (model, \
                 sequences and labels)",
                records[0].display(),
                r.display()
            );
        }
    }
    let written = into_new_files(out, |written| {
        for index in indexes {
            for path in index.values().flat_map(|files| files.values()) {
                let f =
                    read_factors(path).with_context(|| format!("reading {}", path.display()))?;
                let dest = out.join(path.file_name().context("factor file without a name")?);
                write_factors(&dest, f.layer, f.m, &f.factors, &f.provenance)?;
                written.push(dest);
            }
        }
        let dest = out.join(RECORD_FILE);
        let bytes = std::fs::read(&records[0]).map_err(|e| ModelError::io(&records[0], e))?;
        crate::formats::hf::write_atomic(&dest, |tmp| std::fs::write(tmp, &bytes))?;
        written.push(dest);
        Ok(())
    })?;
    Ok(MergeReport {
        out: out.to_path_buf(),
        shards: dirs.len(),
        files: written.len() - 1,
        records: true,
    })
}

/// Runs `write` into the folder `out` (created if missing), which pushes every file it writes, and
/// returns those files; when it fails, nothing half-merged is left: they go, and `out` too if this call
/// created it.
fn into_new_files(
    out: &Path,
    write: impl FnOnce(&mut Vec<PathBuf>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let existed = out.exists();
    std::fs::create_dir_all(out)
        .map_err(|e| ModelError::io(out, e))
        .with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    if let Err(e) = write(&mut written) {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        if !existed {
            let _ = std::fs::remove_dir_all(out);
        }
        return Err(e);
    }
    Ok(written)
}

/// The factors of `kind` a finished earlier run wrote to `job.out` over the first `k` of `seqs` (`k`
/// below their number; same model, calibration and shards), with `k`; their sequences' labels are put
/// on `seqs` from the run's record. `None` when there is no such run, or its record's sequences are not
/// the first `k` of this set.
fn finished_prefix<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seqs: &mut [CalibSeq],
    kind: SketchKind,
    job: &Job<'_>,
) -> Result<Option<(usize, Set)>> {
    let Some(first) = crate::LayerId::all(model).into_iter().next() else {
        return Ok(None);
    };
    let Ok(f) = read_factors(&factor_path(job.out, first, kind)) else {
        return Ok(None);
    };
    let k = usize::try_from(f.factors.n_seqs).unwrap_or(usize::MAX);
    if f.provenance != *job.prov || k == 0 || k >= seqs.len() {
        return Ok(None);
    }
    let Some(set) = load_set(job.out, model, kind, job.prov, k as u64) else {
        return Ok(None);
    };
    let record = job.out.join(RECORD_FILE);
    let Ok(file) = read_calib_file(&record, Some(model.config.vocab_size)) else {
        return Ok(None);
    };
    let same = file.seqs.len() == k
        && file
            .seqs
            .iter()
            .zip(&seqs[..k])
            .all(|(r, s)| r.index == s.index && r.ids == s.ids);
    if !same {
        return Ok(None);
    }
    if kind.needs_gradients() {
        labels_from_record(
            &record,
            &mut seqs[..k],
            &|s| {
                sampled_labels(backend, model, s, job.seed)
                    .with_context(|| format!("resampling the labels of sequence {}", s.index))
            },
            job.progress,
        )?;
    }
    Ok(Some((k, set)))
}

/// Runs Sketch A's passes (pass 0 is `Σ x xᵀ`), returning the last pass. The labels pass 1 samples (or
/// the ones the sequences came with) are put on `seqs` and used by every later pass, so the power
/// iteration runs on one Fisher sample (resampling with the same seeds would draw the same labels, at
/// the price of one more forward per sequence and pass) and the record holds one `labels` tensor.
///
/// Each pass is checkpointed as `job` says, and a finished pass stays the checkpoint until the next pass
/// writes its own, so a rerun goes on inside the pass the run stopped in: the checkpoint's sums carry
/// their pass's start ([`yaqa_core::sketch::Factors::pass_start`]).
fn sketch_a_passes<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seqs: &mut [CalibSeq],
    passes: u32,
    job: &Job<'_>,
) -> Result<Set> {
    let all: Vec<SketchKind> = (0..passes).map(|pass| SketchKind::A { pass }).collect();
    let checkpointed = resume::checkpointed_kind(job.out, model, job.prov, job.record.n_seqs, &all)
        .and_then(|k| {
            let (set, _) = resume::checkpointed_set(job.out, model, k, job.prov)?;
            Some((k, set))
        });
    let (mut pass, mut current) = match checkpointed {
        Some((SketchKind::A { pass }, set)) => (
            pass,
            set.iter().map(|(id, f)| (*id, f.pass_start())).collect(),
        ),
        _ => (0, empty_factors(model, SketchKind::A { pass: 0 })),
    };
    let mut budget = job.budget;
    loop {
        let kind = [SketchKind::A { pass }];
        let label = format!("A pass {pass}");
        let pass_job = Job {
            kinds: &kind,
            label: &label,
            budget,
            ..*job
        };
        let (set, processed) =
            match resume::collect(backend, model, seqs, 0, vec![current], &pass_job)? {
                Outcome::Finished {
                    mut sets,
                    processed,
                } => {
                    budget = budget.map(|b| b - processed);
                    let set = sets.pop().context("Sketch A pass produced no factors")?;
                    (set, processed)
                }
                Outcome::Stopped(done) => {
                    return Err(ModelError::Stopped(format!(
                        "in Sketch A pass {pass} after {done} sequences"
                    )));
                }
            };
        if pass + 1 >= passes {
            return Ok(set);
        }
        if processed > 0 {
            // Otherwise the checkpoint already is this finished pass.
            resume::save(
                model,
                std::slice::from_ref(&set),
                seqs,
                0,
                seqs.len(),
                &pass_job,
            )?;
        }
        pass += 1;
        current = next_sketch_a_pass(model, &set, pass)?;
    }
}

/// What `hessian merge` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeReport {
    pub out: PathBuf,
    pub shards: usize,
    pub files: usize,
    /// Whether the shards' calibration records were merged too (folders from before records existed
    /// have none).
    pub records: bool,
}

/// Adds factor shards (folders written by `hessian` with a shard each) into `out`, or joins the folders
/// of disjoint layer groups (`hessian --layers A..B`, same calibration) into one.
///
/// **Errors**: shards that neither hold the same layers nor disjoint ones, repeat a shard or sequence,
/// or come from other runs; layer groups whose calibration records differ; a folder of another Sketch A
/// pass as `out`; I/O. Each names the folder or file, and a refused merge leaves no file of its own in
/// `out` (nor `out`, when it made it).
pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<MergeReport> {
    let Some(first) = shards.first() else {
        crate::bail!("hessian merge needs at least one shard folder");
    };
    let inputs: Vec<_> = shards.iter().map(|p| named("shard", p)).collect();
    refuse_overwrite(&[named("--out", out)], &inputs)?;
    let index = factor_index(first)?;
    let indexes = shards
        .iter()
        .map(|d| factor_index(d))
        .collect::<Result<Vec<_>>>()?;
    let same = indexes.iter().all(|i| i.keys().eq(index.keys()));
    if !same {
        return join_groups(out, shards, &indexes);
    }
    // A merged Sketch A pass is the start of the next one: it must not land among another pass's files.
    for tag in index.values().flat_map(|files| files.keys()) {
        if let Some(SketchKind::A { pass }) = parse_sketch_tag(tag) {
            sketch_a::check_out(out, pass)?;
        }
    }
    // Folders from before calibration records existed have none; a mixture is refused.
    let records: Vec<PathBuf> = shards.iter().map(|d| d.join(RECORD_FILE)).collect();
    let missing: Vec<&PathBuf> = records.iter().filter(|p| !p.is_file()).collect();
    if !missing.is_empty() && missing.len() < records.len() {
        crate::bail!(
            "{} is missing although other shards have one: every shard must come with its record",
            missing[0].display()
        );
    }
    let with_records = missing.is_empty();
    let written = into_new_files(out, |written| {
        add_shards(out, shards, &index, with_records, written)
    })?;
    Ok(MergeReport {
        out: out.to_path_buf(),
        shards: shards.len(),
        files: written.len() - usize::from(with_records),
        records: with_records,
    })
}

/// The work of [`merge`] for shards of the same layers: the calibration records first (with
/// `with_records`), as they refuse a repeated shard or sequence before any factor file is written, then
/// each layer's factor files added up. Every file written is pushed to `written`, so a failure can
/// remove them.
fn add_shards(
    out: &Path,
    shards: &[PathBuf],
    index: &std::collections::BTreeMap<crate::LayerId, std::collections::BTreeMap<String, PathBuf>>,
    with_records: bool,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    if with_records {
        let records: Vec<PathBuf> = shards.iter().map(|d| d.join(RECORD_FILE)).collect();
        let dest = out.join(RECORD_FILE);
        merge_records(&records, &dest)
            .with_context(|| format!("merging the calibration records into {}", dest.display()))?;
        written.push(dest);
    }
    for files in index.values() {
        for path in files.values() {
            let name = path
                .file_name()
                .context("factor file without a name")?
                .to_owned();
            let mut acc =
                read_factors(path).with_context(|| format!("reading {}", path.display()))?;
            for other_dir in &shards[1..] {
                let p = other_dir.join(&name);
                let other = read_factors(&p).with_context(|| {
                    format!(
                        "reading {} (every shard must hold the same layers)",
                        p.display()
                    )
                })?;
                merge_into(&mut acc, &other, &p)?;
            }
            let dest = out.join(&name);
            write_factors(&dest, acc.layer, acc.m, &acc.factors, &acc.provenance)?;
            written.push(dest);
        }
    }
    Ok(())
}
