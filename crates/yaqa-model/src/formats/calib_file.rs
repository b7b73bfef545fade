//! Calibration records: the token ids a `yaqa hessian` run went through, their sequence numbers and the
//! Fisher labels its backward passes used (docs/FORMAT.md, "Calibration record"); and any safetensors
//! file of `input_ids` (with optional `labels`) read back as calibration input.
//!
//! A record is what makes a run auditable. DESIGN.md §1 has every backward use labels sampled from the
//! model itself, so the factors depend on draws that no other implementation can repeat from the seed
//! alone; with the ids and the labels written down, another implementation can compute its factors
//! from exactly the same data, and `yaqa hessian --calib-ids` on the record reproduces the run's factor
//! files bit for bit. Records of shards merge as the factors do: concatenated in sequence order, every
//! sequence and every shard at most once, so a multi-shard run is audited against one file.
//!
//! A record read back stands for the run that wrote it: its calibration source, seed, sequence numbers
//! and label origin carry over into the new run's provenance (which is what makes the rerun's files
//! identical), after checking that the model and the seed are the same. A plain ids file, written by
//! anything, is its own calibration set (`ids:<file name>`), its sequences numbered by position unless it
//! has an `index` tensor.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::formats::factor_file::META_KEY;
use crate::formats::header::Header;
use crate::formats::hf::{RawTensor, SafetensorsFile, write_safetensors};
use crate::job::calib::{CalibSeq, Shard};

/// The record's file name inside a `yaqa hessian` output folder.
pub const RECORD_FILE: &str = "calibration.safetensors";
/// The `format` field of a record.
pub const FORMAT: &str = "yaqa-calibration";
/// The version written (and the only one read).
pub const VERSION: u64 = 1;

/// Where the labels in a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOrigin {
    /// Drawn from the model's own softmax with `label_seed(seed, index)` (DESIGN.md §1).
    Sampled,
    /// Taken from a calibration file that came with its own labels.
    Given,
}

impl LabelOrigin {
    /// The header spelling: `sampled` or `given`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelOrigin::Sampled => "sampled",
            LabelOrigin::Given => "given",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sampled" => Some(LabelOrigin::Sampled),
            "given" => Some(LabelOrigin::Given),
            _ => None,
        }
    }
}

/// The header of a calibration record (the JSON under the `"yaqa"` metadata key).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordHeader {
    /// The run's seed: of the windows or samples, and of every label marked [`LabelOrigin::Sampled`].
    pub seed: u64,
    /// Tokens per sequence (`T`).
    pub seq_len: usize,
    /// Sequences in the unsharded calibration set the shards are cut from.
    pub n_seqs: usize,
    /// `data-free`, `text:<file names>` or `ids:<file name>`, as in factor files.
    pub calib: String,
    /// The shards `I/N` of the calibration set this record holds (several after a merge).
    pub shards: Vec<String>,
    /// The sketch the run collected, as in factor file names (`xtx`, `b`, `a-pK`); every backward pass
    /// of the run (Sketch A passes 1 to K) used the same `labels`.
    pub sketch: String,
    /// Where `labels` came from; `None` (and no `labels` tensor) for a forward-only run.
    pub labels: Option<LabelOrigin>,
    /// The fingerprint of the model the run used ([`crate::formats::checkpoint`]).
    pub model_fingerprint: String,
}

impl RecordHeader {
    fn to_json(&self) -> Value {
        let mut h = json!({
            "format": FORMAT,
            "version": VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_seqs": self.n_seqs,
            "calib": self.calib,
            "shards": self.shards,
            "sketch": self.sketch,
            "model_fingerprint": self.model_fingerprint,
        });
        if let (Some(origin), Value::Object(o)) = (self.labels, &mut h) {
            o.insert("labels".into(), json!(origin.as_str()));
        }
        h
    }

    fn from_json(path: &Path, h: &Value) -> Result<Self> {
        let header = Header::new(path, h, FORMAT, VERSION)?;
        let bad = |why: String| header.bad(why);
        let num = |key: &str| header.u64(key);
        let string = |key: &str| header.string(key);
        let shards = header.strings("shards")?;
        let labels = match &h["labels"] {
            Value::Null => None,
            v => Some(v.as_str().and_then(LabelOrigin::parse).ok_or_else(|| {
                bad(format!(
                    "header field \"labels\" is {v}: expected \"sampled\" or \"given\""
                ))
            })?),
        };
        Ok(Self {
            seed: num("seed")?,
            seq_len: header.usize("seq_len")?,
            n_seqs: header.usize("n_seqs")?,
            calib: string("calib")?,
            shards,
            sketch: string("sketch")?,
            labels,
            model_fingerprint: string("model_fingerprint")?,
        })
    }
}

/// Writes a record of `seqs` (atomically): `input_ids` and `index` always, `labels` when
/// `header.labels` says the run used labels, in which case every sequence must carry them.
///
/// **Errors**: sequences whose length is not `header.seq_len`, missing labels, I/O (naming the path).
pub fn write_record(path: &Path, seqs: &[CalibSeq], header: &RecordHeader) -> Result<()> {
    let t = header.seq_len;
    let bad = |why: String| ModelError::format(path, why);
    let mut ids = Vec::with_capacity(seqs.len() * t * 4);
    let mut index = Vec::with_capacity(seqs.len() * 8);
    let mut labels = Vec::new();
    for s in seqs {
        if s.ids.len() != t {
            return Err(bad(format!(
                "sequence {} has {} tokens, the record's sequences have {t}",
                s.index,
                s.ids.len()
            )));
        }
        ids.extend(s.ids.iter().flat_map(|&v| (v as i32).to_le_bytes()));
        index.extend((s.index as i64).to_le_bytes());
        if header.labels.is_some() {
            let l = s
                .labels
                .as_ref()
                .filter(|l| l.len() == t)
                .ok_or_else(|| bad(format!("sequence {} has no labels to record", s.index)))?;
            labels.extend(l.iter().flat_map(|&v| (v as i32).to_le_bytes()));
        }
    }
    let shape = vec![seqs.len(), t];
    let mut tensors = vec![
        (
            "input_ids".to_string(),
            RawTensor {
                dtype: Dtype::I32,
                shape: shape.clone(),
                bytes: ids,
            },
        ),
        (
            "index".to_string(),
            RawTensor {
                dtype: Dtype::I64,
                shape: vec![seqs.len()],
                bytes: index,
            },
        ),
    ];
    if header.labels.is_some() {
        tensors.push((
            "labels".to_string(),
            RawTensor {
                dtype: Dtype::I32,
                shape,
                bytes: labels,
            },
        ));
    }
    write_safetensors(path, &tensors, META_KEY, &header.to_json().to_string())
}

/// A calibration file read back: a yaqa record or a plain file of `input_ids`.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibFile {
    pub path: PathBuf,
    /// Every sequence in file order; `labels` is set on all of them when the file has `labels`.
    pub seqs: Vec<CalibSeq>,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The record's header; `None` for a plain ids file.
    pub header: Option<RecordHeader>,
}

/// Reads token values of an I32 or I64 tensor, refusing values outside `0..limit` (when given) with the
/// file, the tensor and the position. Returns `None` when the tensor is absent.
fn token_tensor(
    file: &SafetensorsFile,
    name: &str,
    limit: Option<usize>,
) -> Result<Option<(Vec<usize>, Vec<u32>)>> {
    let Some(info) = file.tensors.get(name) else {
        return Ok(None);
    };
    let values = int_values(file, name, &info.dtype)?;
    let cols = info.shape.last().copied().unwrap_or(1).max(1);
    let what = if name == "labels" {
        "label"
    } else {
        "token id"
    };
    let mut out = Vec::with_capacity(values.len());
    for (k, v) in values.into_iter().enumerate() {
        let fits = u32::try_from(v)
            .ok()
            .filter(|&u| limit.is_none_or(|l| (u as usize) < l));
        match fits {
            Some(u) => out.push(u),
            None => {
                let range = limit.map_or_else(String::new, |l| format!(" (vocab size {l})"));
                return Err(ModelError::format(
                    file.path(),
                    format!(
                        "tensor {name}: {what} {v} at [{}, {}] is out of range{range}",
                        k / cols,
                        k % cols
                    ),
                ));
            }
        }
    }
    Ok(Some((info.shape.clone(), out)))
}

/// The values of an I32 or I64 tensor, widened to i64.
fn int_values(file: &SafetensorsFile, name: &str, dtype: &str) -> Result<Vec<i64>> {
    Ok(match dtype {
        "I32" => file
            .raw(name, "I32")?
            .1
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            .collect(),
        "I64" => file
            .raw(name, "I64")?
            .1
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a)
            })
            .collect(),
        other => {
            return Err(ModelError::UnknownDtype {
                path: file.path().to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{other} (expected I32 or I64)"),
            });
        }
    })
}

/// Reads a calibration file: `input_ids` (I32 or I64, `[S, T]`, `T ≥ 2`), optional `labels` (I32 or
/// I64, `[S, T]`), optional `index` (I32 or I64, `[S]`, distinct, non-negative; required in a record).
/// With `vocab_size`, ids and labels must lie below it. A `"yaqa"` header must be a calibration record's,
/// consistent with the tensors. Other tensors are ignored.
///
/// **Errors**: every problem names the file and, where there is one, the tensor: truncation, a missing
/// `input_ids`, a wrong dtype or rank, labels or index of the wrong shape, values out of range,
/// repeated sequence numbers, a malformed or inconsistent header.
pub fn read_calib_file(path: &Path, vocab_size: Option<usize>) -> Result<CalibFile> {
    let file = SafetensorsFile::open(path)?;
    let bad = |why: String| ModelError::format(path, why);
    let header = match file.metadata.get(META_KEY) {
        None => None,
        Some(text) => {
            let h: Value = serde_json::from_str(text)
                .map_err(|e| bad(format!("\"{META_KEY}\" header is not JSON: {e}")))?;
            if h["format"] != FORMAT {
                return Err(bad(format!(
                    "a {} file, not a calibration record ({FORMAT})",
                    h["format"]
                )));
            }
            Some(RecordHeader::from_json(path, &h)?)
        }
    };
    let (shape, ids) =
        token_tensor(&file, "input_ids", vocab_size)?.ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            tensor: "input_ids".into(),
        })?;
    let [n, t] = shape[..] else {
        return Err(bad(format!(
            "tensor input_ids: shape {shape:?} is not [sequences, tokens]"
        )));
    };
    if t < 2 {
        return Err(bad(format!(
            "tensor input_ids: sequences of {t} tokens; a calibration sequence needs at least 2"
        )));
    }
    let labels = match token_tensor(&file, "labels", vocab_size)? {
        Some((found, _)) if found != shape => {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: "labels".into(),
                expected: shape,
                found,
            });
        }
        other => other.map(|(_, l)| l),
    };
    let index: Vec<usize> = match file.tensors.get("index") {
        None if header.is_some() => {
            return Err(ModelError::MissingTensor {
                path: path.to_path_buf(),
                tensor: "index".into(),
            });
        }
        None => (0..n).collect(),
        Some(info) => {
            if info.shape != [n] {
                return Err(ModelError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: "index".into(),
                    expected: vec![n],
                    found: info.shape.clone(),
                });
            }
            let values = int_values(&file, "index", &info.dtype)?;
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(n);
            for v in values {
                let i = usize::try_from(v)
                    .map_err(|_| bad(format!("tensor index: negative sequence number {v}")))?;
                if !seen.insert(i) {
                    return Err(bad(format!("tensor index: sequence {i} appears twice")));
                }
                out.push(i);
            }
            out
        }
    };
    if let Some(h) = &header {
        if h.seq_len != t {
            return Err(bad(format!(
                "header says seq_len {} but tensor input_ids has {t} tokens per sequence",
                h.seq_len
            )));
        }
        if h.labels.is_some() != labels.is_some() {
            return Err(bad(format!(
                "header field \"labels\" is {} but the file {} a labels tensor",
                h.labels.map_or("absent", LabelOrigin::as_str),
                if labels.is_some() { "has" } else { "has no" }
            )));
        }
        if let Some(&i) = index.iter().find(|&&i| i >= h.n_seqs) {
            return Err(bad(format!(
                "tensor index: sequence {i} is beyond the {} sequences of the calibration set",
                h.n_seqs
            )));
        }
    }
    let seqs = index
        .iter()
        .enumerate()
        .map(|(row, &i)| CalibSeq {
            index: i,
            ids: ids[row * t..(row + 1) * t].to_vec(),
            labels: labels.as_ref().map(|l| l[row * t..(row + 1) * t].to_vec()),
        })
        .collect();
    Ok(CalibFile {
        path: path.to_path_buf(),
        seqs,
        seq_len: t,
        header,
    })
}

/// The calibration of one run taken from a [`CalibFile`].
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// The sequences of the run's shard, in file order.
    pub seqs: Vec<CalibSeq>,
    /// The calibration source for the provenance: a record's own, or `ids:<file name>`.
    pub calib: String,
    /// Sequences in the unsharded calibration set.
    pub n_seqs: usize,
    /// The shards of the calibration set that [`Selection::seqs`] are.
    pub shards: Vec<String>,
    /// Where the file's labels came from, when it has labels.
    pub labels: Option<LabelOrigin>,
}

impl CalibFile {
    /// The file's sequences of `shard` (by sequence number, as for text windows), for a run on the
    /// model with `fingerprint` and `seed`.
    ///
    /// A plain file is its own calibration set. A record keeps standing for the set it was cut from, so
    /// it must come from the same model and seed, and the result must be a whole shard of that set: all
    /// of `shard` when the record holds it, or the record's own shards when `shard` is `0/1`.
    ///
    /// **Errors** ([`ModelError::Input`], naming the file): a record from another model or with another
    /// seed, or a `shard` the record holds only part of.
    pub fn select(&self, shard: Shard, fingerprint: &str, seed: u64) -> Result<Selection> {
        let seqs: Vec<CalibSeq> = self
            .seqs
            .iter()
            .filter(|s| shard.contains(s.index))
            .cloned()
            .collect();
        let Some(h) = &self.header else {
            let name = self.path.file_name().map_or_else(
                || self.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            return Ok(Selection {
                seqs,
                calib: format!("ids:{name}"),
                n_seqs: self.seqs.len(),
                shards: vec![shard.to_string()],
                labels: self
                    .seqs
                    .first()
                    .and_then(|s| s.labels.as_ref())
                    .map(|_| LabelOrigin::Given),
            });
        };
        // The file is sound; it does not fit this run.
        let bad = |why: String| ModelError::Input(format!("{}: {why}", self.path.display()));
        if h.model_fingerprint != fingerprint {
            return Err(bad(format!(
                "recorded on a different model (fingerprint {}…, this model {}…): its sequences and \
                 labels belong to that model",
                h.model_fingerprint
                    .get(..12)
                    .unwrap_or(&h.model_fingerprint),
                fingerprint.get(..12).unwrap_or(fingerprint)
            )));
        }
        if h.seed != seed {
            return Err(bad(format!(
                "recorded with seed {}; rerun with --seed {} (the seed is recorded with the factors and \
                 samples the labels of sequences that have none)",
                h.seed, h.seed
            )));
        }
        let have: BTreeSet<usize> = self.seqs.iter().map(|s| s.index).collect();
        // The shard's members directly (not a filter over all `n_seqs`, a number from the file): the
        // walk ends at the first member the record lacks, after at most `have.len() + 1` steps.
        let whole_shard = (shard.index..h.n_seqs)
            .step_by(shard.count.max(1))
            .all(|i| have.contains(&i));
        let shards = if whole_shard {
            vec![shard.to_string()]
        } else if shard == Shard::default() {
            h.shards.clone()
        } else {
            return Err(bad(format!(
                "holds shards {:?} of {} calibration sequences, which do not include all of shard {shard}",
                h.shards, h.n_seqs
            )));
        };
        Ok(Selection {
            seqs,
            calib: h.calib.clone(),
            n_seqs: h.n_seqs,
            shards,
            labels: h.labels,
        })
    }
}

/// Merges the records of shards into one at `out` (atomically): sequences concatenated in order of
/// their numbers, shards listed in order. Returns the merged header.
///
/// **Errors**: a file that is not a record, headers that differ in anything but their shards (a
/// different run), a shard or a sequence number present twice (naming the file that repeats it).
pub fn merge_records(paths: &[PathBuf], out: &Path) -> Result<RecordHeader> {
    let mut merged: Option<(RecordHeader, Vec<CalibSeq>)> = None;
    for path in paths {
        let f = read_calib_file(path, None)?;
        let bad = |why: String| ModelError::format(path, why);
        let h = f
            .header
            .ok_or_else(|| bad("no \"yaqa\" header: not a calibration record".into()))?;
        let Some((acc, seqs)) = &mut merged else {
            merged = Some((h, f.seqs));
            continue;
        };
        let same_run = RecordHeader {
            shards: acc.shards.clone(),
            ..h.clone()
        };
        if same_run != *acc {
            return Err(bad(format!(
                "recorded by a different run than the first shard (seed {} / seq_len {} / n_seqs {} / \
                 calib {} / sketch {} / labels {}, first: {} / {} / {} / {} / {} / {}, or another model)",
                h.seed,
                h.seq_len,
                h.n_seqs,
                h.calib,
                h.sketch,
                h.labels.map_or("none", LabelOrigin::as_str),
                acc.seed,
                acc.seq_len,
                acc.n_seqs,
                acc.calib,
                acc.sketch,
                acc.labels.map_or("none", LabelOrigin::as_str),
            )));
        }
        if let Some(dup) = h.shards.iter().find(|s| acc.shards.contains(s)) {
            return Err(bad(format!("shard {dup} is already in the merged record")));
        }
        let have: BTreeSet<usize> = seqs.iter().map(|s| s.index).collect();
        if let Some(dup) = f.seqs.iter().find(|s| have.contains(&s.index)) {
            return Err(bad(format!(
                "sequence {} is already in the merged record",
                dup.index
            )));
        }
        acc.shards.extend(h.shards);
        seqs.extend(f.seqs);
    }
    let (mut header, mut seqs) =
        merged.ok_or_else(|| ModelError::Input("no calibration records to merge".into()))?;
    header.shards.sort();
    seqs.sort_by_key(|s| s.index);
    write_record(out, &seqs, &header)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("yaqa-calib-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn seqs(indices: &[usize], with_labels: bool) -> Vec<CalibSeq> {
        indices
            .iter()
            .map(|&i| CalibSeq {
                index: i,
                ids: (0..5).map(|t| ((i * 7 + t * 3) % 37) as u32).collect(),
                labels: with_labels.then(|| (0..5).map(|t| ((i + t * 11) % 37) as u32).collect()),
            })
            .collect()
    }

    fn header(shards: &[&str], labels: Option<LabelOrigin>) -> RecordHeader {
        RecordHeader {
            seed: 4,
            seq_len: 5,
            n_seqs: 6,
            calib: "data-free".into(),
            shards: shards.iter().map(|s| s.to_string()).collect(),
            sketch: "b".into(),
            labels,
            model_fingerprint: "f00d".repeat(16),
        }
    }

    fn ints(dtype: Dtype, shape: Vec<usize>, values: &[i64]) -> RawTensor {
        let bytes = match dtype {
            Dtype::I32 => values
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            Dtype::I64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            _ => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        };
        RawTensor {
            dtype,
            shape,
            bytes,
        }
    }

    fn plain(path: &Path, tensors: Vec<(&str, RawTensor)>) {
        let named: Vec<(String, RawTensor)> = tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        write_safetensors(path, &named, "format", "pt").unwrap();
    }

    #[test]
    fn records_round_trip_and_select_shards() {
        let dir = scratch("round-trip");
        let path = dir.join(RECORD_FILE);
        let all = seqs(&[0, 1, 2, 3, 4, 5], true);
        let h = header(&["0/1"], Some(LabelOrigin::Sampled));
        write_record(&path, &all, &h).unwrap();
        let back = read_calib_file(&path, Some(37)).unwrap();
        assert_eq!(back.seqs, all);
        assert_eq!(back.header.as_ref(), Some(&h));
        let fp = h.model_fingerprint.as_str();
        // A complete record: any shard is a whole shard of the calibration set.
        let s = back.select(Shard { index: 1, count: 3 }, fp, 4).unwrap();
        assert_eq!(s.seqs, vec![all[1].clone(), all[4].clone()]);
        assert_eq!(
            (s.calib.as_str(), s.n_seqs, s.shards.clone()),
            ("data-free", 6, vec!["1/3".to_string()])
        );
        assert_eq!(s.labels, Some(LabelOrigin::Sampled));
        // Another model or seed is refused.
        let err = back.select(Shard::default(), "beef", 4).unwrap_err();
        assert!(err.to_string().contains("different model"), "{err}");
        let err = back.select(Shard::default(), fp, 5).unwrap_err();
        assert!(err.to_string().contains("--seed 4"), "{err}");

        // A forward-only record of shard 0/2: no labels; 0/1 of it is the record's shard, 0/4 a whole
        // sub-shard, 0/3 only part of one.
        let half = dir.join("half.safetensors");
        write_record(&half, &seqs(&[0, 2, 4], true), &header(&["0/2"], None)).unwrap();
        let back = read_calib_file(&half, Some(37)).unwrap();
        assert!(back.seqs.iter().all(|s| s.labels.is_none()));
        let s = back.select(Shard::default(), fp, 4).unwrap();
        assert_eq!(
            (s.seqs.len(), s.shards.clone()),
            (3, vec!["0/2".to_string()])
        );
        let s = back.select(Shard { index: 0, count: 4 }, fp, 4).unwrap();
        assert_eq!(
            (s.seqs.len(), s.shards.clone()),
            (2, vec!["0/4".to_string()])
        );
        let err = back
            .select(Shard { index: 0, count: 3 }, fp, 4)
            .unwrap_err();
        assert!(err.to_string().contains("half.safetensors"), "{err}");

        // A plain file is its own set, numbered by position, labels given.
        let ids = dir.join("ids.safetensors");
        plain(
            &ids,
            vec![
                (
                    "input_ids",
                    ints(Dtype::I64, vec![2, 3], &[1, 2, 3, 4, 5, 6]),
                ),
                (
                    "labels",
                    ints(Dtype::I32, vec![2, 3], &[7, 8, 9, 10, 11, 12]),
                ),
            ],
        );
        let s = read_calib_file(&ids, Some(37))
            .unwrap()
            .select(Shard { index: 1, count: 2 }, fp, 0)
            .unwrap();
        assert_eq!(
            s.seqs,
            vec![CalibSeq {
                index: 1,
                ids: vec![4, 5, 6],
                labels: Some(vec![10, 11, 12]),
            }]
        );
        assert_eq!(s.calib, "ids:ids.safetensors");
        assert_eq!(s.labels, Some(LabelOrigin::Given));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_merge_in_sequence_order_once() {
        let dir = scratch("merge");
        let (p0, p1) = (dir.join("r0.safetensors"), dir.join("r1.safetensors"));
        let l = Some(LabelOrigin::Sampled);
        write_record(&p0, &seqs(&[0, 2, 4], true), &header(&["0/2"], l)).unwrap();
        write_record(&p1, &seqs(&[1, 3, 5], true), &header(&["1/2"], l)).unwrap();
        let out = dir.join(RECORD_FILE);
        let h = merge_records(&[p1.clone(), p0.clone()], &out).unwrap();
        assert_eq!(h, header(&["0/2", "1/2"], l));
        let back = read_calib_file(&out, Some(37)).unwrap();
        assert_eq!(back.seqs, seqs(&[0, 1, 2, 3, 4, 5], true));

        // The same shard twice, the same sequence under another shard name, another run: refused.
        let err = merge_records(&[p0.clone(), p0.clone()], &dir.join("x.safetensors")).unwrap_err();
        assert!(err.to_string().contains("shard 0/2 is already"), "{err}");
        let p2 = dir.join("r2.safetensors");
        write_record(&p2, &seqs(&[2], true), &header(&["2/4"], l)).unwrap();
        let err = merge_records(&[p0.clone(), p2], &dir.join("x.safetensors")).unwrap_err();
        assert!(
            err.to_string().contains("sequence 2 is already") && err.to_string().contains("r2"),
            "{err}"
        );
        let p3 = dir.join("r3.safetensors");
        write_record(&p3, &seqs(&[1, 3, 5], false), &header(&["1/2"], None)).unwrap();
        let err = merge_records(&[p0, p3], &dir.join("x.safetensors")).unwrap_err();
        assert!(err.to_string().contains("different run"), "{err}");
        assert!(!dir.join("x.safetensors").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_name_the_file_and_the_tensor() {
        let dir = scratch("bad");
        let ids6 = || ints(Dtype::I32, vec![2, 3], &[1, 2, 3, 4, 5, 6]);
        // (file name, tensors, what the error must say)
        type Case = (&'static str, Vec<(&'static str, RawTensor)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "no-ids",
                vec![("labels", ids6())],
                "missing tensor input_ids",
            ),
            (
                "float-ids",
                vec![(
                    "input_ids",
                    ints(Dtype::F32, vec![2, 3], &[1, 2, 3, 4, 5, 6]),
                )],
                "input_ids: unsupported dtype F32",
            ),
            (
                "rank",
                vec![("input_ids", ints(Dtype::I32, vec![6], &[1, 2, 3, 4, 5, 6]))],
                "input_ids: shape [6]",
            ),
            (
                "short",
                vec![(
                    "input_ids",
                    ints(Dtype::I32, vec![6, 1], &[1, 2, 3, 4, 5, 6]),
                )],
                "input_ids: sequences of 1 tokens",
            ),
            (
                "big-id",
                vec![(
                    "input_ids",
                    ints(Dtype::I64, vec![2, 3], &[1, 2, 3, 4, 37, 6]),
                )],
                "input_ids: token id 37 at [1, 1] is out of range (vocab size 37)",
            ),
            (
                "negative-id",
                vec![(
                    "input_ids",
                    ints(Dtype::I32, vec![2, 3], &[1, -2, 3, 4, 5, 6]),
                )],
                "input_ids: token id -2 at [0, 1]",
            ),
            (
                "big-label",
                vec![
                    ("input_ids", ids6()),
                    ("labels", ints(Dtype::I32, vec![2, 3], &[1, 2, 3, 40, 5, 6])),
                ],
                "labels: label 40 at [1, 0] is out of range",
            ),
            (
                "label-shape",
                vec![
                    ("input_ids", ids6()),
                    ("labels", ints(Dtype::I32, vec![3, 2], &[1, 2, 3, 4, 5, 6])),
                ],
                "labels: expected shape [2, 3], found [3, 2]",
            ),
            (
                "label-dtype",
                vec![
                    ("input_ids", ids6()),
                    ("labels", ints(Dtype::F32, vec![2, 3], &[1, 2, 3, 4, 5, 6])),
                ],
                "labels: unsupported dtype F32",
            ),
            (
                "index-twice",
                vec![
                    ("input_ids", ids6()),
                    ("index", ints(Dtype::I64, vec![2], &[3, 3])),
                ],
                "index: sequence 3 appears twice",
            ),
        ];
        for (tag, tensors, want) in cases {
            let path = dir.join(format!("{tag}.safetensors"));
            plain(&path, tensors);
            let err = read_calib_file(&path, Some(37)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{tag}.safetensors")) && err.contains(want),
                "{tag}: {err}"
            );
        }

        // A truncated record names the tensor whose bytes are missing.
        let good = dir.join("good.safetensors");
        write_record(
            &good,
            &seqs(&[0, 1], true),
            &header(&["0/1"], Some(LabelOrigin::Sampled)),
        )
        .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let err = read_calib_file(&cut, Some(37)).unwrap_err().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated") && err.contains("tensor"),
            "{err}"
        );
        // A record whose header disagrees with its tensors, and a factor file, are refused.
        let lying = dir.join("lying.safetensors");
        let mut h = header(&["0/1"], Some(LabelOrigin::Sampled)).to_json();
        h["seq_len"] = json!(4);
        let named = vec![
            ("input_ids".to_string(), ids6()),
            ("index".to_string(), ints(Dtype::I64, vec![2], &[0, 1])),
        ];
        write_safetensors(&lying, &named, META_KEY, &h.to_string()).unwrap();
        let err = read_calib_file(&lying, Some(37)).unwrap_err().to_string();
        assert!(
            err.contains("lying.safetensors") && err.contains("seq_len 4"),
            "{err}"
        );
        let other = dir.join("other.safetensors");
        write_safetensors(
            &other,
            &named,
            META_KEY,
            &json!({"format": "yaqa-factors"}).to_string(),
        )
        .unwrap();
        let err = read_calib_file(&other, Some(37)).unwrap_err().to_string();
        assert!(err.contains("not a calibration record"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
