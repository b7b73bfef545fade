//! Sketch A one pass at a time on a tiny synthetic model: passes run as shards (`--shard I/N`, then
//! `--from` the merged folder of the previous pass) and merged between passes give the factors and the
//! calibration record of `--passes P` in one process; and every way of starting a pass from the wrong
//! folder or with the wrong flags is refused, naming the folder and what differs, before anything is
//! written.

mod common;
use common::{fails, ok, s, scratch};

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use yaqa_core::mat::rel_diff_fro;
use yaqa_model::formats::calib_file::{CalibFile, LabelOrigin, RECORD_FILE, read_calib_file};
use yaqa_model::formats::factor_file::{FactorFile, read_factors};
use yaqa_model::formats::hf::{RawTensor, write_hf, write_safetensors};
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

/// Merged shards differ from one process only in the order of the f64 additions of each pass (and of
/// `‖fixed side‖_F²` in `scale`): relative differences near 1e-16 in general, and 1e-12 leaves room for
/// a fixed side whose f32 copy (the CPU sketch rounds it to f32 for its GEMMs) rounds an entry the other
/// way. Measured 2026-11-23 on these models: 0, bit-identical, because each sequence adds an f32 GEMM
/// result and a handful of f32 values sum exactly in f64, in any order.
const MERGE_REL: f64 = 1e-12;

/// A tiny Llama in `dir/name`; `tied` embeddings or not (the fingerprint hashes the configuration and
/// the tensor headers, not the weights, so another model must differ in those).
fn tiny_model(dir: &Path, name: &str, tied: bool, seed: u64) -> PathBuf {
    let path = dir.join(name);
    write_hf(
        &Model::synthetic(tiny_config(Family::Llama, tied), seed),
        &path,
    )
    .unwrap();
    path
}

/// `hessian --sketch a` on `model` into `out`, with `extra` arguments.
fn sketch_a(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "hessian",
        "--model",
        s(model),
        "--sketch",
        "a",
        "--out",
        s(out),
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn run_ok(args: &[String]) {
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn run_fails(args: &[String]) -> String {
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs passes `0..passes` as `shards` shards each, merging after every pass into `dir/p<K>`; returns
/// the folder of the last merged pass.
fn sharded_passes(model: &Path, dir: &Path, passes: u32, shards: usize, calib: &[&str]) -> PathBuf {
    let mut prev: Option<PathBuf> = None;
    for pass in 0..passes {
        let mut shard_dirs = Vec::new();
        for i in 0..shards {
            let out = dir.join(format!("p{pass}-s{i}"));
            let shard = format!("{i}/{shards}");
            let mut extra = vec!["--shard", shard.as_str()];
            extra.extend(calib);
            if let Some(p) = &prev {
                extra.extend(["--from", s(p)]);
            }
            run_ok(&sketch_a(model, &out, &extra));
            shard_dirs.push(out);
        }
        let merged = dir.join(format!("p{pass}"));
        let mut a = vec!["hessian", "merge", "--out", s(&merged)];
        a.extend(shard_dirs.iter().map(|d| s(d)));
        ok(&a);
        prev = Some(merged);
    }
    prev.unwrap()
}

/// The factor files of a folder, by file name.
fn factor_files(dir: &Path) -> Vec<(String, FactorFile)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != RECORD_FILE)
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let f = read_factors(&dir.join(&n)).unwrap();
            (n, f)
        })
        .collect()
}

fn record(dir: &Path) -> CalibFile {
    read_calib_file(&dir.join(RECORD_FILE), Some(37)).unwrap()
}

/// Asserts that `merged` (a folder of merged shards) holds the factors and record of `whole` (one
/// process): factors within [`MERGE_REL`], headers identical but for the shard lists. Returns the
/// largest relative difference seen.
fn assert_same_run(whole: &Path, merged: &Path, shards: &[&str]) -> f64 {
    let (want, got) = (factor_files(whole), factor_files(merged));
    assert_eq!(want.len(), 14, "one file per layer");
    assert_eq!(
        want.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        got.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let mut worst = 0f64;
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let (wf, gf) = (&w.factors, &g.factors);
        let norm = |h: &yaqa_core::SymMat| h.norm_fro();
        assert!(
            norm(&wf.h_in) > 0.0 && wf.h_out.as_ref().is_some_and(|h| norm(h) > 0.0),
            "{name}: empty factors"
        );
        let mut close = |what: &str, a: &[f64], b: &[f64]| {
            let d = rel_diff_fro(a, b);
            assert!(d <= MERGE_REL, "{name}: {what} differs by {d:e}");
            worst = worst.max(d);
        };
        close("h_in", &gf.h_in.data, &wf.h_in.data);
        let (wo, go) = (wf.h_out.as_ref().unwrap(), gf.h_out.as_ref().unwrap());
        close("h_out", &go.data, &wo.data);
        let (wx, gx) = (wf.xtx.as_ref().unwrap(), gf.xtx.as_ref().unwrap());
        close("xtx", &gx.data, &wx.data);
        close("scale", &[gf.scale], &[wf.scale]);
        assert_eq!(
            (gf.kind, gf.n_seqs, gf.n_tokens, g.layer, g.m),
            (wf.kind, wf.n_seqs, wf.n_tokens, w.layer, w.m),
            "{name}"
        );
        assert_eq!(w.provenance.shards, ["0/1"], "{name}");
        assert_eq!(g.provenance.shards, shards, "{name}");
        let mut p = g.provenance.clone();
        p.shards = w.provenance.shards.clone();
        assert_eq!(p, w.provenance, "{name}");
    }
    let (w, g) = (record(whole), record(merged));
    assert_eq!(g.seqs, w.seqs, "the same sequences and labels, in order");
    let (mut gh, wh) = (g.header.unwrap(), w.header.unwrap());
    assert_eq!(gh.shards, shards);
    gh.shards = wh.shards.clone();
    assert_eq!(gh, wh);
    worst
}

#[test]
fn three_passes_on_two_shards_each_equal_one_process() {
    let dir = scratch("sketch-a-equal");
    let model = tiny_model(&dir, "model", true, 5);
    let calib = ["--n-seqs", "5", "--seq-len", "10", "--seed", "3"];
    let whole = dir.join("whole");
    let mut extra = vec!["--passes", "3"];
    extra.extend(calib);
    run_ok(&sketch_a(&model, &whole, &extra));
    let last = sharded_passes(&model, &dir, 3, 2, &calib);
    let worst = assert_same_run(&whole, &last, &["0/2", "1/2"]);
    eprintln!("largest relative difference, merged shards vs one process: {worst:e}");

    // Pass 0 is forward only (no labels in its record); pass 1 sampled the labels that pass 2 reused,
    // which are the one-process run's.
    let (p0, p1) = (record(&dir.join("p0")), record(&dir.join("p1")));
    assert_eq!(p0.header.as_ref().unwrap().labels, None);
    assert!(p0.seqs.iter().all(|q| q.labels.is_none()));
    assert_eq!(p0.header.as_ref().unwrap().sketch, "a-p0");
    assert_eq!(
        p1.header.as_ref().unwrap().labels,
        Some(LabelOrigin::Sampled)
    );
    assert_eq!(p1.seqs, record(&whole).seqs);
    assert_eq!(
        record(&dir.join("p1-s1"))
            .seqs
            .iter()
            .map(|q| q.index)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    // Shards of a pass started from the same folder merge as Sketch B's do; each pass ≥ 1 carries pass
    // 0's Σ x xᵀ unchanged.
    let layer = "model.layers.1.mlp.down_proj";
    let a0 = read_factors(&dir.join(format!("p0/{layer}.a-p0.safetensors"))).unwrap();
    let a2 = read_factors(&last.join(format!("{layer}.a-p2.safetensors"))).unwrap();
    assert_eq!(a2.factors.xtx.as_ref(), Some(&a0.factors.h_in));
    assert_eq!(a2.factors.n_seqs, 5);

    // A pass-1 shard started from an unmerged pass-0 shard is refused rather than computed.
    let err = run_fails(&sketch_a(
        &model,
        &dir.join("bad"),
        &[
            &calib[..],
            &["--from", s(&dir.join("p0-s1")), "--shard", "1/2"],
        ]
        .concat(),
    ));
    assert!(
        err.contains("p0-s1") && err.contains("2 of the 5 calibration sequences"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_from_an_ids_file_carry_through_sharded_passes() {
    let dir = scratch("sketch-a-ids");
    let model = tiny_model(&dir, "model", true, 6);
    let (n, t) = (3, 8);
    let mut ids: Vec<i64> = (0..n * t).map(|k| ((k * 7 + 3) % 37) as i64).collect();
    let labels: Vec<i32> = (0..n * t).map(|k| ((k * 5 + 1) % 37) as i32).collect();
    let file = dir.join("ids.safetensors");
    let write = |ids: &[i64]| {
        let tensors = vec![
            (
                "input_ids".to_string(),
                RawTensor {
                    dtype: Dtype::I64,
                    shape: vec![n, t],
                    bytes: ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            ),
            (
                "labels".to_string(),
                RawTensor {
                    dtype: Dtype::I32,
                    shape: vec![n, t],
                    bytes: labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            ),
        ];
        write_safetensors(&file, &tensors, "format", "pt").unwrap();
    };
    write(&ids);
    let calib = ["--calib-ids", s(&file), "--seed", "2"];
    let whole = dir.join("whole");
    run_ok(&sketch_a(
        &model,
        &whole,
        &[&calib[..], &["--passes", "2"]].concat(),
    ));
    let last = sharded_passes(&model, &dir, 2, 2, &calib);
    assert_same_run(&whole, &last, &["0/2", "1/2"]);
    // Pass 0's record keeps the given labels for pass 1, which used them.
    let p0 = record(&dir.join("p0"));
    assert_eq!(p0.header.as_ref().unwrap().labels, Some(LabelOrigin::Given));
    let used: Vec<i32> = record(&last)
        .seqs
        .iter()
        .flat_map(|q| q.labels.clone().unwrap())
        .map(|l| l as i32)
        .collect();
    assert_eq!(used, labels);

    // An ids file that changed since pass 0 no longer gives the recorded sequences: refused.
    ids[t + 2] = (ids[t + 2] + 1) % 37;
    write(&ids);
    let out = dir.join("changed");
    let p0 = dir.join("p0");
    let err = run_fails(&sketch_a(
        &model,
        &out,
        &[&calib[..], &["--from", s(&p0), "--shard", "1/2"]].concat(),
    ));
    assert!(
        err.contains(s(&p0)) && err.contains("calibration sequence 1 differs"),
        "{err}"
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn misused_flags_and_folders_are_refused() {
    let dir = scratch("sketch-a-refused");
    let model = tiny_model(&dir, "model", true, 7);
    let calib = ["--n-seqs", "4", "--seq-len", "8", "--seed", "4"];
    let p0 = sharded_passes(&model, &dir, 1, 2, &calib);
    let out = dir.join("out");
    // `hessian --sketch a --out out` with the calibration flags, `--from p0` and `extra`.
    let from = |folder: &Path, extra: &[&str]| {
        let mut a = calib.to_vec();
        a.extend(extra);
        let mut a = sketch_a(&model, &out, &a);
        a.extend(["--from".to_string(), s(folder).to_string()]);
        a
    };
    let refused = |args: Vec<String>, wants: &[&str]| {
        let err = run_fails(&args);
        for want in wants {
            assert!(err.contains(want), "{args:?}: wanted {want:?} in\n{err}");
        }
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    };
    let p0_name = s(&p0);

    // Flags: --passes runs every pass in one process, so it goes with neither --from nor --shard;
    // --from is Sketch A's; --passes is too.
    refused(
        from(&p0, &["--passes", "2"]),
        &["--passes 2 with --from", p0_name],
    );
    refused(
        sketch_a(&model, &out, &["--shard", "0/2", "--passes", "3"]),
        &["--passes 3 with --shard 0/2"],
    );
    let sketch_b = |extra: &[&str]| {
        let mut a = vec!["hessian", "--model", s(&model), "--out", s(&out)];
        a.extend(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    refused(sketch_b(&["--from", p0_name]), &["needs --sketch a"]);
    refused(
        sketch_b(&["--sketch", "xtx", "--passes", "3"]),
        &["--passes 3", "Sketch A", "--sketch xtx"],
    );

    // The calibration flags must be pass 0's: seed, sequence length, number of sequences, source.
    let with = |flag: &str, value: &str| {
        let mut a: Vec<String> = calib.map(String::from).to_vec();
        let k = a.iter().position(|x| x == flag).unwrap();
        a[k + 1] = value.to_string();
        a.extend(["--from".into(), p0_name.into()]);
        let mut args = sketch_a(&model, &out, &[]);
        args.extend(a);
        args
    };
    refused(with("--seed", "5"), &[p0_name, "--seed 4", "--seed 5"]);
    refused(
        with("--seq-len", "9"),
        &[p0_name, "8 tokens", "--seq-len 9"],
    );
    refused(
        with("--n-seqs", "6"),
        &[p0_name, "4 calibration sequences", "--n-seqs 6"],
    );
    let ids = dir.join("ids.safetensors");
    let bytes: Vec<u8> = (0..32i64).flat_map(|v| (v % 37).to_le_bytes()).collect();
    let t = RawTensor {
        dtype: Dtype::I64,
        shape: vec![4, 8],
        bytes,
    };
    write_safetensors(&ids, &[("input_ids".to_string(), t)], "format", "pt").unwrap();
    let mut a = sketch_a(&model, &out, &["--calib-ids", s(&ids), "--seed", "4"]);
    a.extend(["--from".into(), p0_name.into()]);
    refused(a, &[p0_name, "data-free", "ids:ids.safetensors"]);

    // Another model: its fingerprint differs.
    let other = tiny_model(&dir, "other", false, 7);
    let mut a = calib.to_vec();
    a.extend(["--from", p0_name]);
    refused(sketch_a(&other, &out, &a), &[p0_name, "different model"]);

    // Folders: a shard not merged, passes mixed, a layer missing, a layer of one shard among merged
    // ones, no record, a record of another pass, the output folder itself.
    refused(
        from(&dir.join("p0-s0"), &[]),
        &["p0-s0", "2 of the 4 calibration sequences", "hessian merge"],
    );
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&p0).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let p1 = dir.join("p1-s0");
    run_ok(&sketch_a(
        &model,
        &p1,
        &[&calib[..], &["--from", p0_name, "--shard", "0/2"]].concat(),
    ));
    let layer = "model.layers.1.mlp.down_proj";
    let mixed = copy("mixed");
    std::fs::copy(
        p1.join(format!("{layer}.a-p1.safetensors")),
        mixed.join(format!("{layer}.a-p1.safetensors")),
    )
    .unwrap();
    refused(
        from(&mixed, &[]),
        &["mixed", "mixes Sketch A passes a-p0, a-p1"],
    );
    let missing = copy("missing");
    std::fs::remove_file(missing.join(format!("{layer}.a-p0.safetensors"))).unwrap();
    refused(
        from(&missing, &[]),
        &["missing", &format!("no a-p0 factors for {layer}")],
    );
    let stale = copy("stale-layer");
    std::fs::copy(
        dir.join(format!("p0-s0/{layer}.a-p0.safetensors")),
        stale.join(format!("{layer}.a-p0.safetensors")),
    )
    .unwrap();
    refused(
        from(&stale, &[]),
        &[
            "stale-layer",
            "mixes runs",
            "shards [\"0/2\"] over 2 sequences",
        ],
    );
    let no_record = copy("no-record");
    std::fs::remove_file(no_record.join(RECORD_FILE)).unwrap();
    refused(from(&no_record, &[]), &["no-record", RECORD_FILE]);
    let foreign = copy("foreign-record");
    std::fs::copy(p1.join(RECORD_FILE), foreign.join(RECORD_FILE)).unwrap();
    refused(
        from(&foreign, &[]),
        &["foreign-record", "records sketch a-p1", "mixes runs"],
    );
    let mut a = calib.to_vec();
    a.extend(["--from", p0_name]);
    let err = run_fails(&sketch_a(&model, &p0, &a));
    // --out is --from: refused as an output that is an input, before the pass check.
    assert!(
        err.contains("is --from") && err.contains("would destroy an input"),
        "{err}"
    );
    assert_eq!(
        record(&p0).header.unwrap().sketch,
        "a-p0",
        "--from untouched"
    );

    // Pass-1 shards merged into the pass-0 folder would mix passes there: refused.
    let err = fails(&["hessian", "merge", "--out", p0_name, s(&p1)]);
    assert!(err.contains("already holds Sketch A pass 0"), "{err}");
    assert_eq!(record(&p0).header.unwrap().sketch, "a-p0");

    // Shards of different passes do not merge.
    let err = fails(&[
        "hessian",
        "merge",
        "--out",
        s(&out),
        s(&dir.join("p0-s1")),
        s(&p1),
    ]);
    assert!(
        err.contains("different run") && err.contains("p1-s0"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
