//! The calibration record of `yaqa hessian` and `--calib-ids`, end to end on a tiny synthetic model: a
//! run replayed from its own `calibration.safetensors` writes the same files byte for byte (the audit
//! path), labels in an ids file are the ones the gradients use, shard records merge into the unsharded
//! record, and bad files are refused naming the file and the tensor.

mod common;
use common::{fails, ok, s, scratch};

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;
use yaqa_model::formats::calib_file::{CalibFile, LabelOrigin, RECORD_FILE, read_calib_file};
use yaqa_model::formats::factor_file::read_factors;
use yaqa_model::formats::hf::{RawTensor, write_hf, write_safetensors};
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

/// Every file of a folder by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn record(dir: &Path) -> CalibFile {
    read_calib_file(&dir.join(RECORD_FILE), Some(37)).unwrap()
}

/// `hessian` on `model` into `out` with `extra` arguments.
fn hessian(model: &Path, out: &Path, extra: &[&str]) {
    let mut a = vec!["hessian", "--model", s(model), "--out", s(out)];
    a.extend(extra);
    ok(&a);
}

/// A plain ids file (no yaqa header): `input_ids` as I64, `labels` as I32 when given.
fn ids_file(path: &Path, seqs: usize, ids: &[u32], labels: Option<&[u32]>) {
    let t = ids.len() / seqs;
    let mut tensors = vec![(
        "input_ids".to_string(),
        RawTensor {
            dtype: Dtype::I64,
            shape: vec![seqs, t],
            bytes: ids.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
        },
    )];
    if let Some(l) = labels {
        tensors.push((
            "labels".to_string(),
            RawTensor {
                dtype: Dtype::I32,
                shape: vec![seqs, t],
                bytes: l.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
            },
        ));
    }
    write_safetensors(path, &tensors, "format", "pt").unwrap();
}

fn flat(f: &CalibFile) -> (Vec<u32>, Vec<u32>) {
    let ids = f.seqs.iter().flat_map(|q| q.ids.clone()).collect();
    let labels = f
        .seqs
        .iter()
        .flat_map(|q| q.labels.clone().unwrap_or_default())
        .collect();
    (ids, labels)
}

#[test]
fn a_run_replayed_from_its_record_writes_identical_files() {
    let dir = scratch("calib-replay");
    let model = dir.join("model");
    write_hf(
        &Model::synthetic(tiny_config(Family::Llama, true), 5),
        &model,
    )
    .unwrap();
    let calib = ["--n-seqs", "3", "--seq-len", "10", "--seed", "5"];
    for (tag, sketch) in [
        ("b", &["--sketch", "b"][..]),
        ("a", &["--sketch", "a", "--passes", "3"][..]),
        ("xtx", &["--sketch", "xtx"][..]),
    ] {
        let first = dir.join(format!("{tag}-first"));
        let mut a = sketch.to_vec();
        a.extend(calib);
        hessian(&model, &first, &a);
        let rec = record(&first);
        let h = rec.header.clone().unwrap();
        assert_eq!(rec.seqs.len(), 3);
        assert_eq!(
            rec.seqs.iter().map(|q| q.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!((h.seed, h.seq_len, h.n_seqs), (5, 10, 3));
        assert_eq!(
            (h.calib.as_str(), h.shards.clone()),
            ("data-free", vec!["0/1".to_string()])
        );
        let gradients = tag != "xtx";
        assert_eq!(h.labels, gradients.then_some(LabelOrigin::Sampled), "{tag}");
        assert!(rec.seqs.iter().all(|q| q.labels.is_some() == gradients));

        // The audit path: ids and labels from the record give the same files, byte for byte.
        let replay = dir.join(format!("{tag}-replay"));
        let mut a = sketch.to_vec();
        let path = first.join(RECORD_FILE);
        a.extend(["--calib-ids", s(&path), "--seed", "5"]);
        hessian(&model, &replay, &a);
        let (want, got) = (files(&first), files(&replay));
        assert_eq!(want.len(), 15, "{tag}: 14 factor files and the record");
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &want {
            assert!(
                got[name] == *bytes,
                "{tag}: {name} differs after the replay"
            );
        }
    }
    // The record stands for its run: another seed is refused rather than silently recorded.
    let b_record = dir.join("b-first").join(RECORD_FILE);
    let err = fails(&[
        "hessian",
        "--model",
        s(&model),
        "--out",
        s(&dir.join("wrong-seed")),
        "--calib-ids",
        s(&b_record),
    ]);
    assert!(
        err.contains("--seed 5") && err.contains(RECORD_FILE),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_in_an_ids_file_are_the_ones_used() {
    let dir = scratch("calib-labels");
    let model = dir.join("model");
    write_hf(
        &Model::synthetic(tiny_config(Family::Llama, true), 6),
        &model,
    )
    .unwrap();
    let sampled = dir.join("sampled");
    hessian(
        &model,
        &sampled,
        &["--n-seqs", "3", "--seq-len", "10", "--seed", "2"],
    );
    let (ids, labels) = flat(&record(&sampled));
    let layer = "model.layers.1.mlp.down_proj.b.safetensors";
    let factors = |d: &Path| read_factors(&d.join(layer)).unwrap().factors;

    // The same ids without labels: sampled again with the same per-sequence seeds, the same labels and
    // factors; only the provenance names the file.
    let bare = dir.join("bare.safetensors");
    ids_file(&bare, 3, &ids, None);
    let from_bare = dir.join("from-bare");
    hessian(
        &model,
        &from_bare,
        &["--calib-ids", s(&bare), "--seed", "2"],
    );
    let rec = record(&from_bare);
    assert_eq!(flat(&rec), (ids.clone(), labels.clone()));
    assert_eq!(
        rec.header.as_ref().unwrap().labels,
        Some(LabelOrigin::Sampled)
    );
    assert_eq!(rec.header.as_ref().unwrap().calib, "ids:bare.safetensors");
    let f = read_factors(&from_bare.join(layer)).unwrap();
    assert_eq!(f.factors, factors(&sampled));
    assert_eq!(
        (f.provenance.calib.as_str(), f.provenance.seq_len),
        ("ids:bare.safetensors", 10)
    );

    // Other labels in the file: used as given (whatever the seed), so other Sketch B factors.
    let mut other = labels.clone();
    for (k, l) in other.iter_mut().enumerate() {
        if k % 3 == 0 {
            *l = (*l + 1 + k as u32) % 37;
        }
    }
    let edited = dir.join("edited.safetensors");
    ids_file(&edited, 3, &ids, Some(&other));
    let from_edited = dir.join("from-edited");
    hessian(
        &model,
        &from_edited,
        &["--calib-ids", s(&edited), "--seed", "9"],
    );
    let rec = record(&from_edited);
    assert_eq!(flat(&rec), (ids.clone(), other.clone()));
    assert_eq!(
        rec.header.as_ref().unwrap().labels,
        Some(LabelOrigin::Given)
    );
    let (want, got) = (factors(&sampled), factors(&from_edited));
    assert_ne!(got.h_in, want.h_in);
    assert_ne!(got.h_out, want.h_out);
    // Given the sampled labels back, the factors are the sampled run's again.
    let same = dir.join("same.safetensors");
    ids_file(&same, 3, &ids, Some(&labels));
    let from_same = dir.join("from-same");
    hessian(
        &model,
        &from_same,
        &["--calib-ids", s(&same), "--seed", "9"],
    );
    assert_eq!(factors(&from_same), factors(&sampled));

    // quantize takes the same option.
    let q = dir.join("q.safetensors");
    ok(&[
        "quantize",
        "--model",
        s(&model),
        "--quantizer",
        "int3",
        "--calib-ids",
        s(&edited),
        "--out",
        s(&q),
    ]);
    assert!(q.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shard_records_merge_into_the_unsharded_record() {
    let dir = scratch("calib-shards");
    let model = dir.join("model");
    write_hf(
        &Model::synthetic(tiny_config(Family::Llama, true), 7),
        &model,
    )
    .unwrap();
    let calib = ["--n-seqs", "5", "--seq-len", "8", "--seed", "4"];
    let whole = dir.join("whole");
    hessian(&model, &whole, &calib);
    for shard in ["0/2", "1/2"] {
        let mut a = vec!["--shard", shard];
        a.extend(calib);
        hessian(&model, &dir.join(format!("s{}", &shard[..1])), &a);
    }
    assert_eq!(
        record(&dir.join("s1"))
            .seqs
            .iter()
            .map(|q| q.index)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    let merged = dir.join("merged");
    ok(&[
        "hessian",
        "merge",
        "--out",
        s(&merged),
        s(&dir.join("s1")),
        s(&dir.join("s0")),
    ]);
    // The merged record holds the unsharded run's sequences and labels, in order.
    let (m, w) = (record(&merged), record(&whole));
    assert_eq!(m.seqs, w.seqs);
    assert_eq!(m.header.as_ref().unwrap().shards, ["0/2", "1/2"]);

    // One shard replayed from the merged record is that shard's run, byte for byte.
    let replay = dir.join("replay-s1");
    let path = merged.join(RECORD_FILE);
    hessian(
        &model,
        &replay,
        &["--calib-ids", s(&path), "--shard", "1/2", "--seed", "4"],
    );
    assert_eq!(files(&replay), files(&dir.join("s1")));

    // A shard merged twice, or a shard without its record, is refused before anything is written.
    let err = fails(&[
        "hessian",
        "merge",
        "--out",
        s(&dir.join("twice")),
        s(&dir.join("s0")),
        s(&dir.join("s0")),
    ]);
    assert!(err.contains("already"), "{err}");
    std::fs::remove_file(dir.join("s1").join(RECORD_FILE)).unwrap();
    let err = fails(&[
        "hessian",
        "merge",
        "--out",
        s(&dir.join("partial")),
        s(&dir.join("s0")),
        s(&dir.join("s1")),
    ]);
    assert!(err.contains(RECORD_FILE) && err.contains("s1"), "{err}");
    assert!(!dir.join("partial").join(RECORD_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_ids_files_and_flags_are_refused() {
    let dir = scratch("calib-bad");
    let model = dir.join("model");
    write_hf(
        &Model::synthetic(tiny_config(Family::Llama, true), 8),
        &model,
    )
    .unwrap();
    let run = |file: &Path| {
        fails(&[
            "hessian",
            "--model",
            s(&model),
            "--out",
            s(&dir.join("out")),
            "--calib-ids",
            s(file),
        ])
    };
    let big_label = dir.join("big-label.safetensors");
    ids_file(
        &big_label,
        2,
        &[1, 2, 3, 4, 5, 6],
        Some(&[1, 2, 3, 4, 5, 37]),
    );
    let err = run(&big_label);
    assert!(
        err.contains("big-label.safetensors") && err.contains("labels: label 37"),
        "{err}"
    );
    let big_id = dir.join("big-id.safetensors");
    ids_file(&big_id, 2, &[1, 2, 3, 99, 5, 6], None);
    let err = run(&big_id);
    assert!(
        err.contains("big-id.safetensors") && err.contains("input_ids: token id 99"),
        "{err}"
    );
    let bytes = std::fs::read(&big_label).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 4]).unwrap();
    let err = run(&cut);
    assert!(
        err.contains("cut.safetensors") && err.contains("truncated") && err.contains("labels"),
        "{err}"
    );
    let err = run(&dir.join("absent.safetensors"));
    assert!(err.contains("absent.safetensors"), "{err}");
    assert!(!dir.join("out").exists(), "nothing written for a bad file");

    // --calib-ids replaces the text and size options, which clap refuses next to it.
    ids_file(&dir.join("ids.safetensors"), 2, &[1, 2, 3, 4, 5, 6], None);
    let ids = dir.join("ids.safetensors");
    for flag in [["--calib", "x.txt"], ["--seq-len", "6"], ["--n-seqs", "2"]] {
        let mut a = vec!["quantize", "--model", s(&model), "--out", "q.safetensors"];
        a.extend(["--calib-ids", s(&ids)]);
        a.extend(flag);
        let err = fails(&a);
        assert!(err.contains("cannot be used with"), "{flag:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
