//! Files broken on purpose, byte by byte (issue #28): every reader in `formats/` must refuse them with an
//! error that names the file and the tensor or field, and must never panic, wrap an offset around or
//! allocate what a header claims before checking it against the file.
//!
//! The cases are the lies a damaged or hostile header can tell: offsets near 2^64, ranges that overlap
//! or leave gaps, shapes whose products overflow, counts and lengths larger than the file, sizes in a
//! configuration that multiply past memory. Each runs inside `catch_unwind`, so a panic fails the case
//! instead of ending the test. A seeded mutation fuzz then damages valid files of every format a few
//! thousand times and checks that the readers answer `Ok` or `Err` and nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use yaqa_backend_cpu::Cpu;
use yaqa_core::Rng;
use yaqa_model::formats::bitpack;
use yaqa_model::formats::calib_file::{LabelOrigin, RecordHeader, read_calib_file, write_record};
use yaqa_model::formats::factor_file::read_factors;
use yaqa_model::formats::gguf::GgufFile;
use yaqa_model::formats::hf::{
    HfCheckpoint, RawTensor, SafetensorsFile, write_hf, write_safetensors,
};
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::job::calib::{CalibSeq, Shard};
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, LayerId, LinearKind, Model, ModelConfig, ModelError};

/// A fresh temporary folder, removed when dropped (also when a case fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("yaqa-model-bad-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `bytes` to `name` in the folder.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `read` on `path`: it must return an error, not panic and not succeed, whose message names the
/// file and contains each of `needles`. Returns the error.
fn refused<T>(
    path: &Path,
    read: impl FnOnce(&Path) -> Result<T, ModelError>,
    needles: &[&str],
) -> ModelError {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    match catch_unwind(AssertUnwindSafe(|| read(path))) {
        Err(payload) => panic!("{name}: the reader panicked: {}", panic_text(&*payload)),
        Ok(Ok(_)) => panic!("{name}: the reader accepted the file"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&name),
                "{name}: the error does not name the file: {msg}"
            );
            for needle in needles {
                assert!(msg.contains(needle), "{name}: no {needle:?} in: {msg}");
            }
            e
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Sixteen distinct bytes: one F32 `[4]` tensor.
fn four_floats() -> Vec<u8> {
    f32_bytes(&[1.0, -2.0, 0.5, 3.25])
}

// ---------------------------------------------------------------------------------------------------
// safetensors

/// A safetensors header (JSON text) of tensors `(name, dtype, shape, data_offsets)`; shapes and offsets
/// are JSON values, so any number (or non-number) can be written.
fn st_header(tensors: &[(&str, &str, Value, Value)]) -> String {
    let mut map = serde_json::Map::new();
    for (name, dtype, shape, offsets) in tensors {
        map.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
    }
    Value::Object(map).to_string()
}

/// A safetensors file: the header's length, the header padded with spaces to exactly `len` bytes, the
/// data section.
fn st_raw_len(header: &str, len: usize, data: &[u8]) -> Vec<u8> {
    assert!(header.len() <= len, "header longer than {len}");
    let mut out = (len as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(8 + len, b' ');
    out.extend_from_slice(data);
    out
}

/// A safetensors file with the header padded to a multiple of 8, as writers do.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    st_raw_len(header, header.len().next_multiple_of(8), data)
}

/// A safetensors file of one F32 `[4]` tensor `name` whose `data_offsets` are `[begin, begin + 16]` with
/// `begin = 2^64 - (start of the data section) + at`: added to the data section's start, they wrap
/// around to byte `at` of the file. The header is padded to a length fixed before the offsets are
/// known; any such offset has 20 digits, so the final header has the probe's length.
fn st_wrapped(name: &str, at: u64, data: &[u8]) -> Vec<u8> {
    let entry = |b: u64, e: u64| st_header(&[(name, "F32", json!([4]), json!([b, e]))]);
    let len = entry(u64::MAX, u64::MAX).len().next_multiple_of(8);
    let begin = (8 + len as u64).wrapping_neg().wrapping_add(at);
    st_raw_len(&entry(begin, begin + 16), len, data)
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let dir = Scratch::new("safetensors");
    let open = |p: &Path| SafetensorsFile::open(p);
    let data = four_floats();
    let one = |offsets: Value| st_header(&[("norm.weight", "F32", json!([4]), offsets)]);
    let two = |a: Value, b: Value| {
        st_header(&[
            ("first.weight", "F32", json!([4]), a),
            ("second.weight", "F32", json!([4]), b),
        ])
    };
    let huge = 1u64 << 61;
    // (file name, bytes, what the error must say besides the file name)
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        // The offsets of issue #28: added to the header's end they wrap to byte 0, the header itself.
        (
            "wraps-to-header.safetensors",
            st_wrapped("norm.weight", 0, &data),
            vec!["norm.weight", "beyond the end of any file"],
        ),
        (
            "offset-near-max.safetensors",
            st_raw(&one(json!([u64::MAX - 16, u64::MAX])), &data),
            vec!["norm.weight", "beyond the end of any file"],
        ),
        (
            "begin-after-end.safetensors",
            st_raw(&one(json!([16, 0])), &data),
            vec!["norm.weight", "[16, 0]"],
        ),
        (
            "end-beyond-file.safetensors",
            st_raw(&one(json!([0, 16])), &data[..8]),
            vec!["truncated", "tensor norm.weight data"],
        ),
        (
            "begin-beyond-file.safetensors",
            st_raw(&one(json!([1u64 << 40, (1u64 << 40) + 16])), &data),
            vec!["truncated", "tensor norm.weight data"],
        ),
        (
            "overlap.safetensors",
            st_raw(
                &two(json!([0, 16]), json!([8, 24])),
                &[data.clone(), data[..8].to_vec()].concat(),
            ),
            vec!["first.weight", "second.weight", "overlap"],
        ),
        (
            "same-range.safetensors",
            st_raw(&two(json!([0, 16]), json!([0, 16])), &data),
            vec!["first.weight", "second.weight", "overlap"],
        ),
        (
            "empty-inside-another.safetensors",
            st_raw(
                &st_header(&[
                    ("first.weight", "F32", json!([4]), json!([0, 16])),
                    ("second.weight", "F32", json!([0]), json!([8, 8])),
                ]),
                &data,
            ),
            vec!["first.weight", "second.weight", "overlap"],
        ),
        (
            "gap.safetensors",
            st_raw(
                &two(json!([0, 16]), json!([20, 36])),
                &[data.clone(), vec![0; 4], data.clone()].concat(),
            ),
            vec!["first.weight", "second.weight", "belong to no tensor"],
        ),
        (
            "late-start.safetensors",
            st_raw(&one(json!([4, 20])), &[vec![0; 4], data.clone()].concat()),
            vec!["norm.weight", "bytes 0..4", "belong to no tensor"],
        ),
        (
            "trailing-bytes.safetensors",
            st_raw(&one(json!([0, 16])), &[data.clone(), vec![0; 4]].concat()),
            vec!["norm.weight", "4 trailing bytes"],
        ),
        (
            "shape-overflow.safetensors",
            st_raw(
                &st_header(&[("norm.weight", "F32", json!([huge, huge]), json!([0, 0]))]),
                &[],
            ),
            vec![
                "norm.weight",
                "shape [2305843009213693952, 2305843009213693952]",
            ],
        ),
        (
            "bytes-overflow.safetensors",
            st_raw(
                &st_header(&[("norm.weight", "F32", json!([1u64 << 62]), json!([0, 0]))]),
                &[],
            ),
            vec!["norm.weight", "shape [4611686018427387904] of F32"],
        ),
        (
            "size-disagrees.safetensors",
            st_raw(&one(json!([0, 12])), &data[..12]),
            vec!["norm.weight", "hold 12 bytes", "16 bytes"],
        ),
        (
            "header-beyond-file.safetensors",
            [1000u64.to_le_bytes().to_vec(), b"{}      ".to_vec()].concat(),
            vec!["truncated", "JSON header"],
        ),
        (
            "header-near-max.safetensors",
            [(u64::MAX - 7).to_le_bytes().to_vec(), b"{}      ".to_vec()].concat(),
            vec!["truncated", "JSON header"],
        ),
        (
            "header-max.safetensors",
            [u64::MAX.to_le_bytes().to_vec(), b"{}      ".to_vec()].concat(),
            vec!["truncated", "JSON header"],
        ),
        (
            "shorter-than-length.safetensors",
            vec![8, 0, 0],
            vec!["truncated", "header length"],
        ),
        (
            "unknown-dtype.safetensors",
            st_raw(
                &st_header(&[("norm.weight", "Q4", json!([4]), json!([0, 16]))]),
                &data,
            ),
            vec!["norm.weight", "Q4"],
        ),
        (
            "name-twice.safetensors",
            st_raw(
                r#"{"norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                &data,
            ),
            vec!["norm.weight", "appears twice"],
        ),
        (
            "metadata-not-string.safetensors",
            st_raw(
                r#"{"__metadata__":{"format":1},"norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &data,
            ),
            vec!["__metadata__", "\"format\""],
        ),
        (
            "half-a-byte.safetensors",
            st_raw(
                &st_header(&[("norm.weight", "F4", json!([3]), json!([0, 2]))]),
                &data[..2],
            ),
            vec!["norm.weight", "whole number of bytes"],
        ),
        (
            "negative-dimension.safetensors",
            st_raw(
                &st_header(&[("norm.weight", "F32", json!([-4]), json!([0, 16]))]),
                &data,
            ),
            vec!["norm.weight", "shape"],
        ),
        (
            "offsets-not-a-pair.safetensors",
            st_raw(&one(json!([0])), &data),
            vec!["norm.weight", "data_offsets"],
        ),
        (
            "offset-beyond-u64.safetensors",
            st_raw(&one(json!([18446744073709551616u128 as f64, 0])), &data),
            vec!["norm.weight", "data_offsets"],
        ),
        (
            "header-not-json.safetensors",
            st_raw("{\"norm.weight\": [", &data),
            vec!["invalid safetensors header"],
        ),
        (
            "header-not-object.safetensors",
            st_raw("[1, 2]", &data),
            vec!["invalid safetensors header"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = dir.file(name, &bytes);
        refused(&path, open, &needles);
    }

    // A header longer than the safetensors crate's 100 MB limit, inside a (sparse) file that long.
    let path = dir.file(
        "header-too-large.safetensors",
        &100_000_001u64.to_le_bytes(),
    );
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(8 + 100_000_001).unwrap();
    refused(
        &path,
        open,
        &["JSON header of 100000001 bytes", "at most 100000000"],
    );

    // What the reference reader accepts still opens: empty tensors (also at the end of the data section),
    // a sub-byte dtype filling whole bytes, tensors listed out of offset order.
    let ok = st_raw(
        &st_header(&[
            ("a.weight", "F32", json!([4]), json!([2, 18])),
            ("b.empty", "F32", json!([0, 1u64 << 40]), json!([18, 18])),
            ("c.packed", "F4", json!([4]), json!([0, 2])),
        ]),
        &[vec![0x21, 0x43], data.clone()].concat(),
    );
    let path = dir.file("valid-edge-cases.safetensors", &ok);
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(
        file.tensor_f32("a.weight").unwrap().1,
        vec![1.0, -2.0, 0.5, 3.25]
    );
    assert_eq!(
        file.tensor_f32("b.empty").unwrap(),
        (vec![0, 1 << 40], vec![])
    );
}

/// The file of issue #28: a real checkpoint whose `model.norm.weight` offsets wrap around to the start
/// of the file. Before the fix its norm weights were read from the header's bytes and the model loaded.
#[test]
fn the_norm_weight_that_wrapped_onto_the_header_is_refused() {
    let dir = Scratch::new("issue-28");
    let model = Model::synthetic(tiny_config(Family::Llama, true), 28);
    write_hf(&model, &dir.0).unwrap();
    let st = dir.0.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = bytes[8 + n..].to_vec();
    // Pad the header to a length fixed in advance (20-digit offsets), then point the norm at byte 0.
    let norm = "model.norm.weight";
    header[norm]["data_offsets"] = json!([u64::MAX, u64::MAX]);
    let len = header.to_string().len().next_multiple_of(8);
    let begin = (8 + len as u64).wrapping_neg();
    let hidden = model.config.hidden_size as u64;
    header[norm]["data_offsets"] = json!([begin, begin + 4 * hidden]);
    std::fs::write(&st, st_raw_len(&header.to_string(), len, &data)).unwrap();
    let open = |p: &Path| HfCheckpoint::open(p).and_then(|c| c.load_model());
    let err = refused(&dir.0, open, &["model.safetensors", norm]);
    assert!(matches!(err, ModelError::BadFormat { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// calibration files

#[test]
fn calibration_files_with_impossible_shapes_are_refused() {
    let dir = Scratch::new("calib");
    let read = |p: &Path| read_calib_file(p, Some(100));
    let ids_only = |dtype: &str, shape: Value| {
        st_raw(
            &st_header(&[("input_ids", dtype, shape, json!([0, 0]))]),
            &[],
        )
    };
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        // [2^61, 2] of I32 is 2^64 bytes, which wrapped to 0 and matched the empty data; the reader
        // then built 2^61 sequence numbers ("capacity overflow").
        (
            "ids-2p61.safetensors",
            ids_only("I32", json!([1u64 << 61, 2])),
            vec!["input_ids", "shape [2305843009213693952, 2] of I32"],
        ),
        (
            "ids-2p61-i64.safetensors",
            ids_only("I64", json!([1u64 << 61, 2])),
            vec!["input_ids", "shape [2305843009213693952, 2] of I64"],
        ),
        (
            "ids-2p61-i8.safetensors",
            ids_only("I8", json!([1u64 << 61, 2])),
            vec!["input_ids", "shape [2305843009213693952, 2] of I8"],
        ),
        (
            "ids-2p59-i8.safetensors",
            ids_only("I8", json!([1u64 << 59, 2])),
            vec!["input_ids", "data_offsets [0, 0] hold 0 bytes"],
        ),
        (
            "ids-empty-rows-huge.safetensors",
            ids_only("I32", json!([0, 1u64 << 62, 1u64 << 62])),
            vec!["input_ids", "shape"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = dir.file(name, &bytes);
        refused(&path, read, &needles);
    }

    // A record whose header claims 2^62 sequences: the file is sound, and choosing a sparse shard of it
    // must not walk all 2^62 sequence numbers (before, a filter over 0..n_seqs did, for ever).
    let path = dir.0.join("record.safetensors");
    let seqs: Vec<CalibSeq> = (0..2)
        .map(|i| CalibSeq {
            index: i,
            ids: vec![1, 2, 3],
            labels: None,
        })
        .collect();
    let header = RecordHeader {
        seed: 1,
        seq_len: 3,
        n_seqs: 1 << 62,
        calib: "data-free".into(),
        shards: vec!["0/1".into()],
        sketch: "xtx".into(),
        labels: None,
        model_fingerprint: "feed".into(),
    };
    write_record(&path, &seqs, &header).unwrap();
    let file = read_calib_file(&path, Some(100)).unwrap();
    let sparse = Shard {
        index: 0,
        count: 1 << 61,
    };
    let err = file.select(sparse, "feed", 1).unwrap_err().to_string();
    assert!(
        err.contains("record.safetensors") && err.contains("do not include all of shard"),
        "{err}"
    );

    // Header sizes that do not fit are named.
    let labels = Some(LabelOrigin::Sampled);
    let lying = dir.0.join("seq-len.safetensors");
    let mut with_labels = seqs.clone();
    for s in &mut with_labels {
        s.labels = Some(vec![0, 1, 2]);
    }
    write_record(
        &lying,
        &with_labels,
        &RecordHeader {
            labels,
            seq_len: 3,
            ..header.clone()
        },
    )
    .unwrap();
    // Rewrite the seq_len in the record's header (a JSON string inside the safetensors header) as
    // 2^64 - 1, which matches the tensors no more than 3 did.
    let bytes = std::fs::read(&lying).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let patched = text.replace(
        "\\\"seq_len\\\":3",
        &format!("\\\"seq_len\\\":{}", u64::MAX),
    );
    assert_ne!(patched, text, "the header has a seq_len");
    let path = dir.file(
        "seq-len-max.safetensors",
        &st_raw(patched.trim_end(), &bytes[8 + n..]),
    );
    refused(&path, read, &["seq_len"]);
}

// ---------------------------------------------------------------------------------------------------
// quantized and factor files

const LAYER: LayerId = LayerId {
    block: 0,
    kind: LinearKind::Up,
};

/// A quantized file of one layer written by hand: `m × n` 3-bit codes of a symmetric grid, with `edit`
/// applied to the header and the tensors before writing.
fn quant_file(
    dir: &Scratch,
    name: &str,
    edit: impl FnOnce(&mut Value, &mut Vec<(String, RawTensor)>),
) -> PathBuf {
    let (m, n, bits) = (4usize, 6usize, 3u32);
    let codes: Vec<u16> = (0..m * n).map(|i| (i % 8) as u16).collect();
    let packed = bitpack::pack_rows(&codes, m, n, bits).unwrap();
    let layer = LAYER.name();
    let mut tensors = vec![
        (
            format!("{layer}.codes"),
            RawTensor {
                dtype: safetensors::Dtype::U8,
                shape: vec![m, bitpack::packed_len(n, bits)],
                bytes: packed,
            },
        ),
        (format!("{layer}.scale"), RawTensor::f32s(vec![1], &[0.25])),
    ];
    let mut header = json!({
        "format": "yaqa-quantized",
        "version": 2,
        "method": "rtn",
        "layers": {
            layer: {
                "m": m, "n": n, "code_bits": bits,
                "quantizer": {"kind": "int-sym", "bits": bits},
                "incoherence": false,
                "report": {},
            }
        }
    });
    edit(&mut header, &mut tensors);
    let path = dir.0.join(name);
    write_safetensors(&path, &tensors, "yaqa", &header.to_string()).unwrap();
    path
}

#[test]
fn quantized_files_with_inconsistent_shapes_are_refused() {
    let dir = Scratch::new("quant");
    let cpu = Cpu::default();
    let layer = LAYER.name();
    let codes_name = format!("{layer}.codes");
    // Both readers of a layer: the codes alone, and the whole dequantization.
    let codes = |p: &Path| QuantFile::open(p).and_then(|q| q.codes(LAYER));
    let dequantize = |p: &Path| QuantFile::open(p).and_then(|q| q.dequantize(&cpu, LAYER));

    // The valid file reads back.
    let good = quant_file(&dir, "good.safetensors", |_, _| {});
    let written: Vec<u16> = (0..24).map(|i| i % 8).collect();
    assert_eq!(codes(&good).unwrap(), written);
    let w = dequantize(&good).unwrap();
    assert_eq!((w.rows, w.cols), (4, 6));
    assert_ne!(w.data[0], w.data[1]);

    type Edit = Box<dyn Fn(&mut Value, &mut Vec<(String, RawTensor)>)>;
    let set = |key: &'static str, v: Value| -> Edit {
        let layer = LAYER.name();
        Box::new(move |h: &mut Value, _: &mut Vec<(String, RawTensor)>| {
            h["layers"][&layer][key] = v.clone()
        })
    };
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        // n·3 overflowed in the packed row length: a panic before.
        (
            "n-2p63.safetensors",
            set("n", json!(1u64 << 63)),
            vec!["\"n\" = 9223372036854775808"],
        ),
        (
            "n-max.safetensors",
            set("n", json!(u64::MAX)),
            vec!["\"n\" = 18446744073709551615"],
        ),
        (
            "m-max.safetensors",
            set("m", json!(u64::MAX)),
            vec![codes_name.as_str(), "expected [18446744073709551615, 3]"],
        ),
        (
            "n-zero.safetensors",
            set("n", json!(0)),
            vec!["header field \"n\" is 0"],
        ),
        (
            "code-bits-wrap.safetensors",
            Box::new(|h: &mut Value, _: &mut Vec<(String, RawTensor)>| {
                h["layers"][LAYER.name()]["quantizer"]["bits"] = json!((1u64 << 32) + 3)
            }),
            vec!["4294967299"],
        ),
        // n = 0 with 2^62 empty rows: before, the codes read back as nothing and dequantizing looped
        // over all 2^62 rows.
        (
            "rows-of-nothing.safetensors",
            Box::new(|h: &mut Value, t: &mut Vec<(String, RawTensor)>| {
                h["layers"][LAYER.name()]["m"] = json!(1u64 << 62);
                h["layers"][LAYER.name()]["n"] = json!(0);
                t[0].1.shape = vec![1 << 62, 0];
                t[0].1.bytes = Vec::new();
            }),
            vec!["header field \"n\" is 0"],
        ),
        (
            "codes-wide.safetensors",
            Box::new(|_: &mut Value, t: &mut Vec<(String, RawTensor)>| {
                t[0].1.shape = vec![4, 4];
                t[0].1.bytes = vec![0; 16];
            }),
            vec![codes_name.as_str(), "shape [4, 4], expected [4, 3]"],
        ),
        (
            "codes-flat.safetensors",
            Box::new(|_: &mut Value, t: &mut Vec<(String, RawTensor)>| {
                t[0].1.shape = vec![12];
            }),
            vec![codes_name.as_str(), "expected [4, 3]"],
        ),
    ];
    for (name, edit, needles) in cases {
        let path = quant_file(&dir, name, |h, t| edit(h, t));
        refused(&path, codes, &needles);
        refused(&path, dequantize, &needles);
    }

    // The asymmetric grid's group size and scales, and the rotation's signs, are checked too.
    let asym = |group: Value, scales_shape: Vec<usize>| {
        move |h: &mut Value, t: &mut Vec<(String, RawTensor)>| {
            h["layers"][LAYER.name()]["quantizer"] =
                json!({"kind": "int-asym", "bits": 3, "group_size": group});
            let n: usize = scales_shape.iter().product();
            t[1] = (
                format!("{}.scales", LAYER.name()),
                RawTensor::f32s(scales_shape.clone(), &vec![0.5; n]),
            );
            t.push((
                format!("{}.zeros", LAYER.name()),
                RawTensor {
                    dtype: safetensors::Dtype::U8,
                    shape: vec![4, 2],
                    bytes: vec![1; 8],
                },
            ));
        }
    };
    let path = quant_file(
        &dir,
        "group-max.safetensors",
        asym(json!(u64::MAX), vec![4, 2]),
    );
    refused(&path, dequantize, &["group_size 18446744073709551615"]);
    let path = quant_file(&dir, "group-zero.safetensors", asym(json!(0), vec![4, 2]));
    refused(&path, dequantize, &["group_size 0"]);
    let path = quant_file(&dir, "scales-shape.safetensors", asym(json!(3), vec![4, 3]));
    refused(
        &path,
        dequantize,
        &[".scales", "shape [4, 3], expected [4, 2]"],
    );
    let path = quant_file(&dir, "signs-shape.safetensors", |h, t| {
        h["layers"][LAYER.name()]["incoherence"] = json!(true);
        let signs = |len: usize| RawTensor {
            dtype: safetensors::Dtype::I8,
            shape: vec![len],
            bytes: vec![1; len],
        };
        t.push((format!("{}.signs_in", LAYER.name()), signs(7)));
        t.push((format!("{}.signs_out", LAYER.name()), signs(4)));
    });
    refused(&path, dequantize, &[".signs_in", "shape [7], expected [6]"]);
}

/// The codebook quantizers' layers: an E8P or trellis entry whose codes, sizes or scale cannot be what
/// the rounding wrote gets one error naming the file and the tensor or field, never a panic; valid ones
/// read back.
#[test]
fn e8p_and_trellis_layers_that_cannot_be_decoded_are_refused() {
    let dir = Scratch::new("quant-codebooks");
    let cpu = Cpu::default();
    let layer = LAYER.name();
    let dequantize = |p: &Path| QuantFile::open(p).and_then(|q| q.dequantize(&cpu, LAYER));
    // A layer of `m × n` with `bits`-bit codes of `d` weights each, all codes `code`. (Rows of E8P and
    // trellis codes fill whole bytes, so there are no padding bits to corrupt.)
    let codebook = |kind: Value, m: usize, n: usize, bits: u32, d: usize, code: u16| {
        let layer = layer.clone();
        move |h: &mut Value, t: &mut Vec<(String, RawTensor)>| {
            let codes = vec![code; m * (n / d)];
            let packed = bitpack::pack_rows(&codes, m, n / d, bits).unwrap();
            let row = bitpack::packed_len(n / d, bits);
            h["layers"][&layer]["m"] = json!(m);
            h["layers"][&layer]["n"] = json!(n);
            h["layers"][&layer]["code_bits"] = json!(bits);
            h["layers"][&layer]["quantizer"] = kind.clone();
            t[0].1.shape = vec![m, row];
            t[0].1.bytes = packed;
        }
    };
    let e8p = json!({"kind": "e8p"});
    let trellis = |bits: u32| json!({"kind": "trellis", "bits": bits});

    let good = quant_file(
        &dir,
        "e8p.safetensors",
        codebook(e8p.clone(), 2, 16, 16, 8, 0xBEEF),
    );
    let w = dequantize(&good).unwrap();
    assert!(w.data.iter().all(|v| v.is_finite() && *v != 0.0));
    let good = quant_file(
        &dir,
        "trellis.safetensors",
        codebook(trellis(2), 16, 16, 2, 1, 3),
    );
    assert_eq!(dequantize(&good).unwrap().data.len(), 256);

    type Edit = Box<dyn Fn(&mut Value, &mut Vec<(String, RawTensor)>)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        // E8P codes cover 8 weights: a width of 12 does not split into them.
        (
            "e8p-width.safetensors",
            Box::new(codebook(e8p.clone(), 2, 12, 16, 4, 1)),
            vec!["12"],
        ),
        // The file says 8-bit codes for a 16-bit codebook.
        (
            "e8p-code-bits.safetensors",
            Box::new(codebook(e8p.clone(), 2, 16, 8, 8, 1)),
            vec!["code_bits"],
        ),
        (
            "e8p-scale-nan.safetensors",
            Box::new({
                let f = codebook(e8p.clone(), 2, 16, 16, 8, 1);
                move |h: &mut Value, t: &mut Vec<(String, RawTensor)>| {
                    f(h, t);
                    t[1].1 = RawTensor::f32s(vec![1], &[f32::NAN]);
                }
            }),
            vec!["scale"],
        ),
        // A trellis walk covers a 16 × 16 tile.
        (
            "trellis-tiles.safetensors",
            Box::new(codebook(trellis(2), 8, 16, 2, 1, 1)),
            vec!["does not split into 16 × 16 tiles"],
        ),
        (
            "trellis-bits.safetensors",
            Box::new(codebook(trellis(5), 16, 16, 5, 1, 1)),
            vec!["5"],
        ),
        (
            "trellis-scale.safetensors",
            Box::new({
                let f = codebook(trellis(3), 16, 16, 3, 1, 5);
                move |h: &mut Value, t: &mut Vec<(String, RawTensor)>| {
                    f(h, t);
                    t[1].1 = RawTensor::f32s(vec![1], &[-0.5]);
                }
            }),
            vec!["scale"],
        ),
    ];
    for (name, edit, needles) in cases {
        let path = quant_file(&dir, name, |h, t| edit(h, t));
        let mut all = needles.clone();
        all.push(layer.as_str());
        refused(&path, dequantize, &all);
    }
}

/// A factor file written by hand: `h_in` of `n = 2` (three packed values) and `edit` applied.
fn factor_file(
    dir: &Scratch,
    name: &str,
    edit: impl FnOnce(&mut Value, &mut Vec<(String, RawTensor)>),
) -> PathBuf {
    let mut header = json!({
        "format": "yaqa-factors", "version": 2, "layer": LAYER.name(), "m": 3, "n": 2,
        "sketch": "xtx", "n_seqs": 1, "n_tokens": 4, "scale": 1.0, "seed": 0, "seq_len": 4,
        "calib": "data-free", "shards": ["0/1"], "model_fingerprint": "feed",
    });
    let mut tensors = vec![("h_in".to_string(), RawTensor::f64s(&[2.0, 0.5, 1.0]))];
    edit(&mut header, &mut tensors);
    let path = dir.0.join(name);
    write_safetensors(&path, &tensors, "yaqa", &header.to_string()).unwrap();
    path
}

#[test]
fn factor_files_with_inconsistent_shapes_are_refused() {
    let dir = Scratch::new("factors");
    let read = |p: &Path| read_factors(p);
    let good = factor_file(&dir, "good.safetensors", |_, _| {});
    assert_eq!(read_factors(&good).unwrap().factors.h_in.n, 2);
    // (file name, header field n, the packed h_in, what the error must say)
    let cases: Vec<(&str, u64, Vec<f64>, Vec<&str>)> = vec![
        // n·(n+1) overflowed (a panic before); with n = 2^64 - 1, n + 1 did.
        (
            "n-2p32.safetensors",
            1u64 << 32,
            vec![2.0, 0.5, 1.0],
            vec!["h_in", "4294967296 × 4294967296 overflows"],
        ),
        (
            "n-max.safetensors",
            u64::MAX,
            vec![],
            vec!["h_in", "overflows"],
        ),
        (
            "n-zero.safetensors",
            0,
            vec![],
            vec!["header field \"n\" is 0"],
        ),
        (
            "h-in-shape.safetensors",
            2,
            vec![2.0, 0.5, 1.0, 4.0],
            vec!["h_in", "expected shape [3], found [4]"],
        ),
        (
            "n-too-large.safetensors",
            3,
            vec![2.0, 0.5, 1.0],
            vec!["h_in", "expected shape [6], found [3]"],
        ),
    ];
    for (name, n, h_in, needles) in cases {
        let path = factor_file(&dir, name, |h, t| {
            h["n"] = json!(n);
            t[0].1 = RawTensor::f64s(&h_in);
        });
        refused(&path, read, &needles);
    }
    // h_out of the wrong size for m, and an m that overflows.
    let path = factor_file(&dir, "h-out-shape.safetensors", |_, t| {
        t.push(("h_out".into(), RawTensor::f64s(&[1.0; 5])));
    });
    refused(&path, read, &["h_out", "expected shape [6], found [5]"]);
    let path = factor_file(&dir, "m-max.safetensors", |h, t| {
        h["m"] = json!(u64::MAX);
        t.push(("h_out".into(), RawTensor::f64s(&[])));
    });
    refused(&path, read, &["h_out", "overflows"]);
}

// ---------------------------------------------------------------------------------------------------
// GGUF

fn gguf_string(s: &str) -> Vec<u8> {
    [
        (s.len() as u64).to_le_bytes().to_vec(),
        s.as_bytes().to_vec(),
    ]
    .concat()
}

/// A metadata entry's value: `(type id, bytes)`.
type Kv = (String, u32, Vec<u8>);

fn kv_str(k: &str, v: &str) -> Kv {
    (k.into(), 8, gguf_string(v))
}

fn kv_u32(k: &str, v: u32) -> Kv {
    (k.into(), 4, v.to_le_bytes().to_vec())
}

fn kv_u64(k: &str, v: u64) -> Kv {
    (k.into(), 10, v.to_le_bytes().to_vec())
}

/// A GGUF v3 file: the metadata, the tensor infos `(name, dimensions fastest first, ggml type, offset)`,
/// padding to 32, then `data`. Returns the bytes and where the data section starts.
fn gguf_raw(kv: &[Kv], tensors: &[(&str, Vec<u64>, u32, u64)], data: &[u8]) -> (Vec<u8>, usize) {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, ty, v) in kv {
        out.extend(gguf_string(k));
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(v);
    }
    for (name, dims, ty, offset) in tensors {
        out.extend(gguf_string(name));
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(32), 0);
    let start = out.len();
    out.extend_from_slice(data);
    (out, start)
}

/// `gguf_raw` with the architecture key first and two F32 `[8]` tensors at `offsets`.
fn gguf_two(offsets: [u64; 2], dims: [Vec<u64>; 2], types: [u32; 2], data_len: usize) -> Vec<u8> {
    let kv = [kv_str("general.architecture", "llama")];
    let [d0, d1] = dims;
    let tensors = [
        ("first.weight", d0, types[0], offsets[0]),
        ("second.weight", d1, types[1], offsets[1]),
    ];
    let data: Vec<u8> = (0..data_len).map(|i| (i * 7) as u8).collect();
    gguf_raw(&kv, &tensors, &data).0
}

/// Overwrites the little-endian `u64` at byte `at`.
fn put_u64(mut bytes: Vec<u8>, at: usize, v: u64) -> Vec<u8> {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    bytes
}

#[test]
fn gguf_headers_that_lie_are_refused() {
    let dir = Scratch::new("gguf");
    let open = |p: &Path| GgufFile::open(p);
    let f32x8 = || [vec![8u64], vec![8u64]];
    let good = gguf_two([0, 32], f32x8(), [0, 0], 64);
    GgufFile::open(dir.file("good.gguf", &good)).unwrap();
    // Byte 24 starts the first metadata key (general.architecture, 20 bytes); its value's length is at 56.
    let (key_len_at, value_len_at) = (24, 56);
    let nested = {
        // Seven arrays, each holding one array, around an empty u32 array.
        let mut v = Vec::new();
        for _ in 0..7 {
            v.extend_from_slice(&9u32.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
        }
        v.extend_from_slice(&4u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    };
    let array = |inner: u32, count: u64| {
        [inner.to_le_bytes().to_vec(), count.to_le_bytes().to_vec()].concat()
    };
    let count_text = format!("tensor count {}", good.len() - 1);
    let with_kv = |kv: Vec<Kv>| gguf_raw(&kv, &[("first.weight", vec![8], 0, 0)], &[0; 32]).0;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "offset-overflow.gguf",
            gguf_two([0, u64::MAX - 31], f32x8(), [0, 0], 64),
            vec!["tensor second.weight", "beyond 2^64"],
        ),
        (
            "offset-beyond-file.gguf",
            gguf_two([0, 1 << 40], f32x8(), [0, 0], 64),
            vec!["truncated", "tensor second.weight data"],
        ),
        (
            "overlap-same-offset.gguf",
            gguf_two([0, 0], f32x8(), [0, 0], 64),
            vec!["first.weight", "second.weight", "overlap"],
        ),
        (
            "overlap-partial.gguf",
            gguf_two([0, 32], [vec![16], vec![8]], [0, 0], 64),
            vec![
                "first.weight (data bytes 0..64)",
                "second.weight (data bytes 32..64)",
            ],
        ),
        // A Q4_K tensor (not dequantized here) whose 144 bytes run into an F32 tensor this crate reads.
        (
            "overlap-k-quant.gguf",
            gguf_two([0, 128], [vec![256], vec![8]], [12, 0], 160),
            vec![
                "first.weight (data bytes 0..144)",
                "second.weight",
                "overlap",
            ],
        ),
        (
            "dims-overflow.gguf",
            gguf_two([0, 32], [vec![8], vec![1 << 32, 1 << 32]], [0, 0], 64),
            vec!["tensor second.weight", "[4294967296, 4294967296]"],
        ),
        (
            "dims-overflow-3.gguf",
            gguf_two(
                [0, 32],
                [vec![8], vec![1 << 30, 1 << 30, 1 << 30]],
                [0, 0],
                64,
            ),
            vec!["tensor second.weight", "dimensions"],
        ),
        (
            "bytes-overflow.gguf",
            gguf_two([0, 32], [vec![8], vec![1 << 62]], [0, 0], 64),
            vec!["tensor second.weight", "beyond 2^64"],
        ),
        (
            "partial-block.gguf",
            gguf_two([0, 32], [vec![8], vec![33]], [0, 8], 96),
            vec!["tensor second.weight", "whole 32-element blocks"],
        ),
        (
            "misaligned.gguf",
            gguf_two([0, 36], f32x8(), [0, 0], 96),
            vec!["tensor second.weight", "not 32-aligned"],
        ),
        (
            "too-many-dims.gguf",
            gguf_two([0, 32], [vec![8], vec![1; 9]], [0, 0], 64),
            vec!["tensor second.weight", "9 dimensions"],
        ),
        (
            "unknown-type-beyond-file.gguf",
            gguf_two([0, 1 << 40], f32x8(), [0, 99], 64),
            vec!["truncated", "tensor second.weight data"],
        ),
        (
            "tensor-twice.gguf",
            gguf_raw(
                &[kv_str("general.architecture", "llama")],
                &[
                    ("first.weight", vec![8], 0, 0),
                    ("first.weight", vec![8], 0, 32),
                ],
                &[0; 64],
            )
            .0,
            vec!["tensor first.weight appears twice"],
        ),
        (
            "key-twice.gguf",
            with_kv(vec![
                kv_u32("llama.block_count", 1),
                kv_u32("llama.block_count", 2),
            ]),
            vec!["metadata key llama.block_count appears twice"],
        ),
        (
            "key-length-max.gguf",
            put_u64(good.clone(), key_len_at, u64::MAX),
            vec![
                "metadata key #0",
                "string length 18446744073709551615",
                "beyond the file",
            ],
        ),
        (
            "value-length-huge.gguf",
            put_u64(good.clone(), value_len_at, 1 << 40),
            vec![
                "metadata general.architecture",
                "string length 1099511627776",
            ],
        ),
        (
            "array-count-max.gguf",
            with_kv(vec![(
                "tokenizer.ggml.tokens".into(),
                9,
                array(8, u64::MAX),
            )]),
            vec![
                "metadata tokenizer.ggml.tokens",
                "array of 18446744073709551615 values",
            ],
        ),
        // 40 u64 values cannot fit in the ~100 bytes that follow, although 40 is below the file's size.
        (
            "array-count-beyond-rest.gguf",
            with_kv(vec![("llama.list".into(), 9, array(10, 40))]),
            vec!["truncated", "metadata llama.list: array of 40 values"],
        ),
        (
            "array-unknown-type.gguf",
            with_kv(vec![("llama.list".into(), 9, array(77, 0))]),
            vec!["metadata llama.list", "unknown metadata value type 77"],
        ),
        (
            "arrays-nested.gguf",
            with_kv(vec![("llama.list".into(), 9, nested)]),
            vec!["metadata llama.list", "nested too deep"],
        ),
        (
            "value-type-unknown.gguf",
            with_kv(vec![("llama.odd".into(), 13, vec![0; 8])]),
            vec!["metadata llama.odd", "unknown metadata value type 13"],
        ),
        (
            "tensor-count-max.gguf",
            put_u64(good.clone(), 8, u64::MAX),
            vec!["tensor count 18446744073709551615"],
        ),
        // Below the file's length (the check before the fix), above what the rest can hold.
        (
            "tensor-count-file-size.gguf",
            put_u64(good.clone(), 8, good.len() as u64 - 1),
            vec!["truncated", count_text.as_str()],
        ),
        (
            "metadata-count-max.gguf",
            put_u64(good.clone(), 16, u64::MAX),
            vec!["metadata count 18446744073709551615"],
        ),
        (
            "alignment-not-power.gguf",
            with_kv(vec![kv_u32("general.alignment", 48)]),
            vec!["general.alignment"],
        ),
        (
            "alignment-huge.gguf",
            with_kv(vec![kv_u64("general.alignment", 1 << 63)]),
            vec!["truncated", "tensor first.weight data"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = dir.file(name, &bytes);
        refused(&path, open, &needles);
    }

    // A type ggml does not define is no reason to refuse the file while its offset lies in it; reading
    // that tensor is refused, naming it.
    let path = dir.file(
        "unknown-type.gguf",
        &gguf_two([0, 32], f32x8(), [0, 99], 64),
    );
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.tensor_f32("first.weight").unwrap().1.len(), 8);
    let err = file.tensor_f32("second.weight").unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownDtype { .. }) && err.to_string().contains("second.weight"),
        "{err}"
    );
}

/// The metadata of a tiny llama (hidden 32, 4 heads, 2 KV heads, 2 blocks), `edit` applied by key.
fn llama_kv(edit: &[(&str, Option<Kv>)]) -> Vec<Kv> {
    let mut kv = vec![
        kv_str("general.architecture", "llama"),
        kv_u32("llama.block_count", 2),
        kv_u32("llama.embedding_length", 32),
        kv_u32("llama.feed_forward_length", 64),
        kv_u32("llama.attention.head_count", 4),
        kv_u32("llama.attention.head_count_kv", 2),
        kv_u32("llama.vocab_size", 40),
    ];
    for (key, value) in edit {
        kv.retain(|(k, _, _)| k != key);
        kv.extend(value.clone());
    }
    kv
}

#[test]
fn gguf_metadata_sizes_are_checked() {
    let dir = Scratch::new("gguf-config");
    let config = |p: &Path| GgufFile::open(p).and_then(|g| ModelConfig::from_gguf(&g));
    let f32_kv = |k: &str, v: f32| -> Kv { (k.into(), 6, v.to_le_bytes().to_vec()) };
    let good = gguf_raw(&llama_kv(&[]), &[], &[]).0;
    assert_eq!(config(&dir.file("good.gguf", &good)).unwrap().head_dim, 8);
    type Case<'a> = (&'a str, Vec<(&'a str, Option<Kv>)>, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            "hidden-zero.gguf",
            vec![(
                "llama.embedding_length",
                Some(kv_u32("llama.embedding_length", 0)),
            )],
            vec!["llama.embedding_length is 0"],
        ),
        (
            "heads-zero.gguf",
            vec![(
                "llama.attention.head_count",
                Some(kv_u32("llama.attention.head_count", 0)),
            )],
            vec!["llama.attention.head_count is 0"],
        ),
        (
            "heads-do-not-divide.gguf",
            vec![(
                "llama.attention.head_count",
                Some(kv_u32("llama.attention.head_count", 5)),
            )],
            vec!["llama.attention.head_count 5 does not divide llama.embedding_length 32"],
        ),
        (
            "kv-heads.gguf",
            vec![(
                "llama.attention.head_count_kv",
                Some(kv_u32("llama.attention.head_count_kv", 3)),
            )],
            vec!["is not a multiple of llama.attention.head_count_kv 3"],
        ),
        (
            "kv-heads-zero.gguf",
            vec![(
                "llama.attention.head_count_kv",
                Some(kv_u32("llama.attention.head_count_kv", 0)),
            )],
            vec!["llama.attention.head_count_kv is 0"],
        ),
        (
            "ffn-zero.gguf",
            vec![(
                "llama.feed_forward_length",
                Some(kv_u32("llama.feed_forward_length", 0)),
            )],
            vec!["llama.feed_forward_length is 0"],
        ),
        (
            "vocab-huge.gguf",
            vec![(
                "llama.vocab_size",
                Some(kv_u64("llama.vocab_size", 1 << 62)),
            )],
            vec!["llama.vocab_size 4611686018427387904 × llama.embedding_length 32"],
        ),
        (
            "vocab-missing.gguf",
            vec![("llama.vocab_size", None)],
            vec!["llama.vocab_size is 0"],
        ),
        (
            "hidden-huge.gguf",
            vec![(
                "llama.embedding_length",
                Some(kv_u64("llama.embedding_length", 1 << 40)),
            )],
            vec!["× llama.embedding_length 1099511627776"],
        ),
        (
            "blocks-huge.gguf",
            vec![(
                "llama.block_count",
                Some(kv_u64("llama.block_count", 1 << 62)),
            )],
            vec!["llama.block_count 4611686018427387904 blocks"],
        ),
        (
            "head-dim-odd.gguf",
            vec![(
                "llama.attention.key_length",
                Some(kv_u32("llama.attention.key_length", 7)),
            )],
            vec!["llama.attention.key_length 7 is odd"],
        ),
        (
            "rope-base-negative.gguf",
            vec![(
                "llama.rope.freq_base",
                Some(f32_kv("llama.rope.freq_base", -1.0)),
            )],
            vec!["llama.rope.freq_base -1 is not a positive number"],
        ),
        (
            "eps-nan.gguf",
            vec![(
                "llama.attention.layer_norm_rms_epsilon",
                Some(f32_kv("llama.attention.layer_norm_rms_epsilon", f32::NAN)),
            )],
            vec!["llama.attention.layer_norm_rms_epsilon NaN"],
        ),
        (
            "heads-negative.gguf",
            vec![(
                "llama.attention.head_count",
                Some((
                    "llama.attention.head_count".into(),
                    5,
                    (-4i32).to_le_bytes().to_vec(),
                )),
            )],
            vec!["llama.attention.head_count", "not a non-negative integer"],
        ),
    ];
    for (name, edit, needles) in cases {
        let path = dir.file(name, &gguf_raw(&llama_kv(&edit), &[], &[]).0);
        let err = refused(&path, config, &needles);
        assert!(matches!(err, ModelError::Config { .. }), "{name}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------------
// config.json

#[test]
fn config_json_sizes_are_checked() {
    let dir = Scratch::new("config");
    let read = |p: &Path| ModelConfig::from_hf_json_file(p);
    let base = json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    });
    read(&dir.file("config.json", base.to_string().as_bytes())).unwrap();
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "hidden-zero",
            json!({"hidden_size": 0}),
            vec!["hidden_size is 0"],
        ),
        (
            "heads-zero",
            json!({"num_attention_heads": 0}),
            vec!["num_attention_heads is 0"],
        ),
        (
            "heads-do-not-divide",
            json!({"num_attention_heads": 5, "num_key_value_heads": 5}),
            vec!["num_attention_heads 5 does not divide hidden_size 64"],
        ),
        (
            "kv-heads",
            json!({"num_key_value_heads": 3}),
            vec!["num_attention_heads 4 is not a multiple of num_key_value_heads 3"],
        ),
        (
            "kv-heads-zero",
            json!({"num_key_value_heads": 0}),
            vec!["num_key_value_heads is 0"],
        ),
        (
            "vocab-zero",
            json!({"vocab_size": 0}),
            vec!["vocab_size is 0"],
        ),
        (
            "layers-zero",
            json!({"num_hidden_layers": 0}),
            vec!["num_hidden_layers is 0"],
        ),
        (
            "vocab-huge",
            json!({"vocab_size": 1u64 << 62}),
            vec!["vocab_size 4611686018427387904 × hidden_size 64"],
        ),
        (
            "hidden-max",
            json!({"hidden_size": u64::MAX, "head_dim": 16}),
            vec!["hidden_size 18446744073709551615"],
        ),
        (
            "layers-huge",
            json!({"num_hidden_layers": 1u64 << 62}),
            vec!["num_hidden_layers 4611686018427387904 blocks"],
        ),
        (
            "intermediate-huge",
            json!({"intermediate_size": 1u64 << 60}),
            vec!["intermediate_size 1152921504606846976 × hidden_size 64"],
        ),
        (
            "head-dim-huge",
            json!({"head_dim": 1u64 << 62}),
            vec!["num_attention_heads 4 × head_dim 4611686018427387904"],
        ),
        (
            "head-dim-odd",
            json!({"head_dim": 7}),
            vec!["head_dim 7 is odd"],
        ),
        (
            "negative",
            json!({"intermediate_size": -128}),
            vec!["intermediate_size = -128 is not a non-negative integer"],
        ),
        (
            "not-a-number",
            json!({"num_key_value_heads": "two"}),
            vec!["num_key_value_heads = \"two\""],
        ),
        (
            "eps-negative",
            json!({"rms_norm_eps": -1e-5}),
            vec!["rms_norm_eps -0.00001 is not a positive number"],
        ),
        (
            "theta-zero",
            json!({"rope_theta": 0.0}),
            vec!["rope_theta 0 is not a positive number"],
        ),
        (
            "rope-factor-zero",
            json!({"rope_scaling": {"rope_type": "linear", "factor": 0.0}}),
            vec!["rope_scaling factor 0 is not a positive number"],
        ),
        (
            "window-zero",
            json!({"model_type": "mistral", "sliding_window": 0}),
            vec!["sliding_window is 0"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let mut config = base.clone();
        for (k, v) in edit.as_object().unwrap() {
            config[k] = v.clone();
        }
        let sub = dir.0.join(tag);
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        // The file name alone is config.json in every case: check the folder too.
        let err = refused(&path, read, &needles);
        assert!(err.to_string().contains(tag), "{tag}: {err}");
    }
}

/// A configuration with 2^40 blocks over a file with 2: it is consistent (the parameter count fits), so
/// loading runs and stops at the first missing block. Before, loading reserved room for 2^40 blocks
/// first and the process aborted.
#[test]
fn more_blocks_than_the_file_holds_is_a_missing_tensor() {
    let dir = Scratch::new("blocks");
    let model = Model::synthetic(tiny_config(Family::Llama, true), 40);
    write_hf(&model, &dir.0).unwrap();
    let mut config = model.config.to_hf_json();
    config["num_hidden_layers"] = json!(1u64 << 40);
    std::fs::write(dir.0.join("config.json"), config.to_string()).unwrap();
    let open = |p: &Path| HfCheckpoint::open(p).and_then(|c| c.load_model());
    let err = refused(&dir.0, open, &["model.layers.2.input_layernorm.weight"]);
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
}

/// Blocks past `num_hidden_layers` used to be dropped silently: the model ran with fewer blocks than its
/// checkpoint holds. Refused for both checkpoint kinds, naming both numbers.
#[test]
fn more_blocks_in_the_file_than_declared_is_refused() {
    let dir = Scratch::new("extra-blocks");
    let hf = dir.0.join("hf");
    let mut model = Model::synthetic(tiny_config(Family::Llama, true), 40);
    let first = model.layers[0].clone();
    model.layers.as_resident_mut().unwrap().push(first);
    model.config.n_layers = 3;
    write_hf(&model, &hf).unwrap();
    let mut config = model.config.to_hf_json();
    config["num_hidden_layers"] = json!(2);
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let open = |p: &Path| HfCheckpoint::open(p).and_then(|c| c.load_model());
    let err = refused(
        &hf,
        open,
        &[
            "model.safetensors: holds 3 decoder blocks",
            "(model.layers.2.input_layernorm.weight is in the last)",
            "num_hidden_layers in",
            "config.json declares 2",
        ],
    );
    assert!(matches!(err, ModelError::ExtraBlocks { .. }), "{err}");

    let gguf = dir.file("extra.gguf", &tiny_gguf_blocks(2, 1).0);
    let err = refused(
        &gguf,
        |p: &Path| Model::from_gguf(p),
        &[
            "holds 2 decoder blocks",
            "blk.1.attn_k.weight",
            "llama.block_count in its metadata declares 1",
        ],
    );
    assert!(matches!(err, ModelError::ExtraBlocks { .. }), "{err}");
    // The file itself is fine when it says what it holds.
    let fine = dir.file("fine.gguf", &tiny_gguf_blocks(2, 2).0);
    Model::from_gguf(&fine).unwrap();
}

/// Infinities and NaNs in a checkpoint's weights used to flow into perplexity NaN and KL 0; they are
/// refused when the tensor is loaded, counted, with the first one's position.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let dir = Scratch::new("non-finite");
    let (mut bytes, start) = tiny_gguf();
    let gguf = dir.file("clean.gguf", &bytes);
    let info = GgufFile::open(&gguf)
        .unwrap()
        .info("blk.0.ffn_down.weight")
        .unwrap()
        .clone();
    assert_eq!(info.type_id, 0, "an F32 tensor");
    let at = start + info.offset as usize;
    for (i, v) in [(3, f32::NAN), (70, f32::INFINITY), (71, f32::NEG_INFINITY)] {
        bytes[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    let gguf = dir.file("inf.gguf", &bytes);
    let err = refused(
        &gguf,
        |p: &Path| Model::from_gguf(p),
        &[
            "tensor model.layers.0.mlp.down_proj.weight: 3 of 2048 values are not finite",
            "the first, NaN, at index 3",
        ],
    );
    assert!(matches!(err, ModelError::NonFinite { .. }), "{err}");

    // The tied embedding of a Hugging Face folder.
    let hf = dir.0.join("hf");
    let mut model = Model::synthetic(tiny_config(Family::Llama, true), 40);
    model.embed.data[100] = f32::INFINITY;
    write_hf(&model, &hf).unwrap();
    let open = |p: &Path| HfCheckpoint::open(p).and_then(|c| c.load_model());
    refused(
        &hf,
        open,
        &[
            "tensor model.embed_tokens.weight: 1 of 592 values are not finite (the first, inf, at index 100)",
        ],
    );
}

/// A folder where a file belongs is named as such: mapping it used to fail with "No such device".
#[test]
fn folders_where_files_belong_are_named() {
    let dir = Scratch::new("folders");
    let folder = dir.0.join("not-a-file");
    std::fs::create_dir_all(&folder).unwrap();
    let expected = format!("{} is a folder, expected a file", folder.display());
    let cases: [(&str, Reader); 5] = [
        (
            "safetensors",
            Box::new(|p| SafetensorsFile::open(p).map(|_| true)),
        ),
        ("gguf", Box::new(|p| GgufFile::open(p).map(|_| true))),
        ("quantized", Box::new(|p| QuantFile::open(p).map(|_| true))),
        ("factors", Box::new(|p| read_factors(p).map(|_| true))),
        (
            "calibration",
            Box::new(|p| read_calib_file(p, None).map(|_| true)),
        ),
    ];
    for (what, read) in cases {
        let err = refused(&folder, read, &[&expected]);
        assert!(!err.to_string().contains("No such device"), "{what}: {err}");
    }
}

/// Damaged `tokenizer.json` files that made the `tokenizers` library panic (found by `scripts/fuzz.sh`'s
/// tokenizer target): each is an error naming the file.
#[test]
fn damaged_tokenizer_files_are_refused_not_panicked() {
    let dir = Scratch::new("tokenizer");
    let valid = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "WordLevel", "unk_token": "a", "vocab": {"a": 0, "b": 1}}
    });
    let read = |p: &Path| yaqa_model::Tokenizer::from_file(p).map(|_| true);
    let good = dir.file("good.json", valid.to_string().as_bytes());
    assert!(read(&good).unwrap());
    // The fuzz's crash: a decoder whose JSON breaks off after a key (`tokenizers` expects "Helper").
    let text = valid
        .to_string()
        .replace(r#""trim_offsets":true"#, r#""trim_offsets" "x""#);
    let broken = dir.file("broken-decoder.json", text.as_bytes());
    refused(
        &broken,
        read,
        &["broken-decoder.json", "not JSON", "expected `:`"],
    );
    // Valid JSON that the library still panics on: a Precompiled normalizer whose charsmap is a number.
    let mut bad = valid.clone();
    bad["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": 5});
    let precompiled = dir.file("precompiled.json", bad.to_string().as_bytes());
    refused(
        &precompiled,
        read,
        &[
            "precompiled.json",
            "the tokenizers library failed on it",
            "damaged",
        ],
    );
    // Not UTF-8.
    let binary = dir.file("binary.json", &[0xff, 0xfe, 0x00, 0x7b]);
    refused(&binary, read, &["binary.json"]);
}

// ---------------------------------------------------------------------------------------------------
// mutation fuzz

/// Damages `base` with one to three seeded edits, most of them in its first `header` bytes (where the
/// sizes are): bit flips, special bytes, little-endian `u64` boundary values, runs of digits inserted
/// into JSON numbers, JSON numbers replaced by boundary values (and their negations modulo 2^64, which
/// is how an offset that wraps onto the header is written), deletions and truncations.
///
/// With `prefixed` (a safetensors file, whose first 8 bytes are the header's length), edits that change
/// the header's length usually fix that prefix up too, so that the damaged header still parses and its
/// numbers reach the checks behind the JSON parser.
fn mutate(rng: &mut Rng, base: &[u8], mut header: usize, prefixed: bool) -> Vec<u8> {
    const SPECIAL: &[u8] = b"09-\",[]{}:.e \x00\xff\x7f\x80";
    const BOUNDARY: [u64; 9] = [
        0,
        1,
        31,
        u64::MAX,
        u64::MAX - 7,
        1 << 61,
        1 << 63,
        i64::MAX as u64,
        u32::MAX as u64 + 1,
    ];
    let mut b = base.to_vec();
    // Replaces `range` of `b` by `with`, moving the header's end along when the range lies in it.
    fn splice(b: &mut Vec<u8>, header: &mut usize, range: std::ops::Range<usize>, with: Vec<u8>) {
        if range.start < *header {
            *header = (*header + with.len())
                .saturating_sub(range.len())
                .max(range.start);
        }
        b.splice(range, with);
    }
    // One edit half of the time: a single well-placed lie is what reaches the checks behind the parser.
    let edits = [1, 1, 2, 3][rng.below(4) as usize];
    for _ in 0..edits {
        if b.is_empty() {
            break;
        }
        let len = b.len() as u64;
        let at = if rng.below(4) > 0 {
            rng.below((header as u64).clamp(1, len))
        } else {
            rng.below(len)
        } as usize;
        match rng.below(10) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.below(256) as u8,
            2 => b[at] = SPECIAL[rng.below(SPECIAL.len() as u64) as usize],
            3 => {
                let v = BOUNDARY[rng.below(BOUNDARY.len() as u64) as usize];
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            4 => {
                // Digits spliced in front of the next digit: a JSON number grows by up to 20 digits.
                let at = b[at..]
                    .iter()
                    .position(u8::is_ascii_digit)
                    .map_or(at, |p| at + p);
                let digits: Vec<u8> = (0..1 + rng.below(20))
                    .map(|_| b'0' + rng.below(10) as u8)
                    .collect();
                splice(&mut b, &mut header, at..at, digits);
            }
            5 => {
                let end = (at + 1 + rng.below(16) as usize).min(b.len());
                splice(&mut b, &mut header, at..end, Vec::new());
            }
            6..=8 => {
                // The JSON number at or after `at`, all of it, replaced by a boundary value.
                let Some(start) = b[at..].iter().position(u8::is_ascii_digit) else {
                    continue;
                };
                let mut start = at + start;
                while start > 0 && b[start - 1].is_ascii_digit() {
                    start -= 1;
                }
                let end = b[start..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(b.len(), |p| start + p);
                let v = BOUNDARY[rng.below(BOUNDARY.len() as u64) as usize];
                let v = if rng.below(2) == 0 {
                    v
                } else {
                    v.wrapping_neg()
                };
                splice(&mut b, &mut header, start..end, v.to_string().into_bytes());
            }
            _ => b.truncate(rng.below(len) as usize),
        }
    }
    if prefixed && rng.below(4) > 0 && (8..=b.len()).contains(&header) {
        b[..8].copy_from_slice(&(header as u64 - 8).to_le_bytes());
    }
    b
}

/// A tiny llama GGUF with every dequantized type (hidden 32, 4 heads of 8, 2 KV heads, 1 block, vocab
/// 40): its bytes and where its data section starts.
fn tiny_gguf() -> (Vec<u8>, usize) {
    tiny_gguf_blocks(1, 1)
}

/// [`tiny_gguf`] with the tensors of `present` blocks and `llama.block_count = declared`.
fn tiny_gguf_blocks(present: usize, declared: u32) -> (Vec<u8>, usize) {
    // (name, dimensions fastest first, ggml type)
    let block: [(&str, Vec<u64>, u32); 9] = [
        ("attn_norm.weight", vec![32], 0),
        ("ffn_norm.weight", vec![32], 0),
        ("attn_q.weight", vec![32, 32], 3),
        ("attn_k.weight", vec![32, 16], 2),
        ("attn_v.weight", vec![32, 16], 1),
        ("attn_output.weight", vec![32, 32], 30),
        ("ffn_gate.weight", vec![32, 64], 2),
        ("ffn_up.weight", vec![32, 64], 8),
        ("ffn_down.weight", vec![64, 32], 0),
    ];
    let mut specs = vec![("token_embd.weight".to_string(), vec![32, 40], 8)];
    for b in 0..present {
        specs.extend(
            block
                .iter()
                .map(|(name, dims, ty)| (format!("blk.{b}.{name}"), dims.clone(), *ty)),
        );
    }
    specs.push(("output_norm.weight".into(), vec![32], 0));
    let mut rng = Rng::derive(5, "bad-files-gguf");
    let mut data = Vec::new();
    let mut tensors = Vec::new();
    for (name, dims, ty) in &specs {
        let (name, dims, ty) = (name.as_str(), dims.clone(), *ty);
        let n: u64 = dims.iter().product();
        let (block_elems, block_bytes) = match ty {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            _ => (32, 34),
        };
        let offset = data.len() as u64;
        for _ in 0..n / block_elems * block_bytes {
            // Small bytes keep every f16 scale and f32 value finite.
            data.push(rng.below(60) as u8);
        }
        data.resize(data.len().next_multiple_of(32), 0);
        tensors.push((name, dims, ty, offset));
    }
    let mut kv = llama_kv(&[]);
    kv.retain(|(k, _, _)| k != "llama.block_count");
    kv.push(kv_u32("llama.block_count", declared));
    gguf_raw(&kv, &tensors, &data)
}

/// Writes `bytes` to `path` as a new file. Removing the old one first matters for speed: ext4 writes out
/// a file truncated and rewritten in place when it is closed (`auto_da_alloc`), about 3 ms per mutant.
fn rewrite(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

/// One valid file the fuzz damages, and the readers it is read back with.
struct Corpus<'a> {
    name: &'static str,
    /// Where the damaged copies are written (the readers may look for the file by this name).
    path: PathBuf,
    base: Vec<u8>,
    /// Bytes of header at the start (the safetensors header with its length, the GGUF up to its data).
    header: usize,
    /// Whether the file starts with a safetensors header length.
    prefixed: bool,
    mutants: usize,
    read: Reader<'a>,
}

/// The readers of a corpus, run on a damaged copy: `Ok(true)` when the file was accepted.
type Reader<'a> = Box<dyn Fn(&Path) -> Result<bool, ModelError> + 'a>;

#[test]
fn mutated_files_never_panic_a_reader() {
    let dir = Scratch::new("fuzz");
    let cpu = Cpu::default();

    // A Hugging Face folder: its model.safetensors and its config.json are damaged in place, one at a
    // time, and the folder loaded.
    let hf = dir.0.join("hf");
    let model = Model::synthetic(tiny_config(Family::Qwen2, false), 3);
    write_hf(&model, &hf).unwrap();
    let st = hf.join("model.safetensors");
    let config_path = hf.join("config.json");
    let config_bytes = std::fs::read(&config_path).unwrap();
    let load = |_: &Path| {
        HfCheckpoint::open(&hf)
            .and_then(|c| c.load_model())
            .map(|_| true)
    };

    // A calibration record with labels, a quantized file, a factor file, a GGUF model.
    let record = dir.0.join("record.safetensors");
    let seqs: Vec<CalibSeq> = (0..3)
        .map(|i| CalibSeq {
            index: i,
            ids: vec![i as u32, 5, 7, 1],
            labels: Some(vec![2, 3, 4, i as u32]),
        })
        .collect();
    let record_header = RecordHeader {
        seed: 9,
        seq_len: 4,
        n_seqs: 3,
        calib: "data-free".into(),
        shards: vec!["0/1".into()],
        sketch: "b".into(),
        labels: Some(LabelOrigin::Sampled),
        model_fingerprint: "feed".into(),
    };
    write_record(&record, &seqs, &record_header).unwrap();
    let quant = quant_file(&dir, "quant.safetensors", |_, _| {});
    let factors = factor_file(&dir, "factors.safetensors", |h, t| {
        h["sketch"] = json!("b");
        t.push((
            "h_out".into(),
            RawTensor::f64s(&[1.0, 0.1, 2.0, 0.2, 0.3, 3.0]),
        ));
        t.push(("xtx".into(), RawTensor::f64s(&[4.0, 0.5, 5.0])));
    });
    let (gguf_bytes, gguf_header) = tiny_gguf();
    let gguf = dir.file("tiny.gguf", &gguf_bytes);
    // A corpus of a safetensors file: its header is its length's 8 bytes and the JSON.
    let safetensors = |name, path: &Path, mutants, read| {
        let base = std::fs::read(path).unwrap();
        let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        Corpus {
            name,
            path: path.to_path_buf(),
            base,
            header,
            prefixed: true,
            mutants,
            read,
        }
    };

    let corpora = vec![
        safetensors("hf-safetensors", &st, 2000, Box::new(load)),
        Corpus {
            name: "hf-config",
            path: config_path.clone(),
            header: config_bytes.len(),
            base: config_bytes,
            prefixed: false,
            mutants: 500,
            read: Box::new(load),
        },
        safetensors(
            "calibration",
            &record,
            500,
            Box::new(|p: &Path| {
                let f = read_calib_file(p, Some(40))?;
                f.select(Shard { index: 1, count: 2 }, "feed", 9)?;
                Ok(true)
            }),
        ),
        safetensors(
            "quantized",
            &quant,
            500,
            Box::new(|p: &Path| {
                let q = QuantFile::open(p)?;
                for id in q.layers()? {
                    q.dequantize(&cpu, id)?;
                }
                Ok(true)
            }),
        ),
        safetensors(
            "factors",
            &factors,
            400,
            Box::new(|p: &Path| read_factors(p).map(|_| true)),
        ),
        Corpus {
            name: "gguf",
            path: gguf.clone(),
            base: gguf_bytes,
            header: gguf_header,
            prefixed: false,
            mutants: 2500,
            read: Box::new(|p: &Path| {
                let file = GgufFile::open(p)?;
                for t in &file.tensors {
                    // Types that are not dequantized are refused by name; that is an answer too.
                    let _ = file.tensor_f32(&t.name);
                }
                Model::from_gguf(p).map(|_| true)
            }),
        },
    ];

    // `scripts/fuzz.sh` takes the valid files as the seeds of its cargo-fuzz targets (named like the
    // corpora, with `_` for `-`).
    if let Some(seeds) = std::env::var_os("YAQA_FUZZ_SEEDS") {
        for c in &corpora {
            let dir = Path::new(&seeds).join(c.name.replace('-', "_"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("valid"), &c.base).unwrap();
        }
    }
    let mut rng = Rng::derive(28, "bad-files-fuzz");
    let mut panics = Vec::new();
    for c in &corpora {
        // The undamaged file is read without error: the fuzz starts from valid files.
        rewrite(&c.path, &c.base);
        assert!(
            (c.read)(&c.path).unwrap(),
            "{}: the base file is refused",
            c.name
        );
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..c.mutants {
            let bytes = mutate(&mut rng, &c.base, c.header, c.prefixed);
            rewrite(&c.path, &bytes);
            match catch_unwind(AssertUnwindSafe(|| (c.read)(&c.path))) {
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(_)) => refused += 1,
                // The seed is fixed: the case number is enough to make the file again.
                Err(payload) => {
                    panics.push(format!("{} #{case}: {}", c.name, panic_text(&*payload)))
                }
            }
        }
        rewrite(&c.path, &c.base);
        // Both answers occur, so the mutations reach the checks and also leave readable files.
        assert!(
            accepted > 0 && refused > 0,
            "{}: {accepted} accepted, {refused} refused",
            c.name
        );
    }
    assert!(
        panics.is_empty(),
        "readers panicked:\n{}",
        panics.join("\n")
    );
}
