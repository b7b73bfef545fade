//! Hugging Face folders and GGUF files written here, read back, and broken on purpose.
//!
//! Every error test checks that the message names the file and the tensor, since that is what a person
//! needs to fix a bad download or a wrong conversion.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::json;
use yaqa_model::formats::hf::{HfCheckpoint, write_hf};
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model, ModelConfig, ModelError};

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yaqa-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a raw safetensors file: `(name, dtype, shape, little-endian bytes)`.
fn write_safetensors(path: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The model's tensors as raw entries in `dtype` (`F32`, `F16` or `BF16`).
fn entries(
    model: &Model<f32>,
    dtype: &'static str,
) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, shape, data)| {
            let bytes = match dtype {
                "F16" => data
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                "BF16" => data
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => f32_bytes(data),
            };
            (name, dtype, shape, bytes)
        })
        .collect()
}

fn write_config(dir: &Path, config: &ModelConfig) {
    std::fs::write(dir.join("config.json"), config.to_hf_json().to_string()).unwrap();
}

#[test]
fn every_family_round_trips_through_a_written_folder() {
    for (family, tied) in [
        (Family::Llama, true),
        (Family::Qwen2, false),
        (Family::Qwen3, true),
        (Family::Mistral, false),
    ] {
        let model = Model::synthetic(tiny_config(family, tied), 11);
        let dir = temp_dir(&format!("roundtrip-{family:?}"));
        write_hf(&model, &dir).unwrap();
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let back = HfCheckpoint::open(&dir).unwrap().load_model().unwrap();
        assert_eq!(back, model, "{family:?}");
        assert_eq!(back.lm_head.is_none(), tied);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn half_precision_and_sharded_checkpoints_load() {
    let model = Model::synthetic(tiny_config(Family::Qwen2, false), 5);
    for dtype in ["F16", "BF16"] {
        let dir = temp_dir(&format!("half-{dtype}"));
        write_config(&dir, &model.config);
        write_safetensors(&dir.join("model.safetensors"), &entries(&model, dtype));
        let back = HfCheckpoint::open(&dir).unwrap().load_model().unwrap();
        let expect = |v: f32| {
            if dtype == "F16" {
                f16::from_f32(v).to_f32()
            } else {
                bf16::from_f32(v).to_f32()
            }
        };
        let want: Vec<f32> = model.layers[1]
            .down_proj
            .data
            .iter()
            .map(|&v| expect(v))
            .collect();
        assert_eq!(back.layers[1].down_proj.data, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Two shards and an index.
    let dir = temp_dir("sharded");
    write_config(&dir, &model.config);
    let all = entries(&model, "F32");
    let (a, b) = all.split_at(all.len() / 2);
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), a);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), b);
    let mut map = serde_json::Map::new();
    for (name, ..) in a {
        map.insert(name.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for (name, ..) in b {
        map.insert(name.clone(), json!("model-00002-of-00002.safetensors"));
    }
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(
        HfCheckpoint::open(&dir).unwrap().load_model().unwrap(),
        model
    );
    // An index that promises a tensor its shard lacks.
    let mut bad = map.clone();
    bad.insert(
        "model.layers.0.mlp.extra.weight".into(),
        json!("model-00001-of-00002.safetensors"),
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"weight_map": bad}).to_string(),
    )
    .unwrap();
    let e = HfCheckpoint::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model-00001-of-00002.safetensors") && e.contains("mlp.extra"),
        "{e}"
    );
    // An index naming a shard that is not there.
    let mut missing = map.clone();
    missing.insert(
        "model.layers.0.mlp.down_proj.weight".into(),
        json!("model-00003-of-00002.safetensors"),
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"weight_map": missing}).to_string(),
    )
    .unwrap();
    let e = HfCheckpoint::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model-00003-of-00002.safetensors"), "{e}");
    // A truncated second shard: its last tensor named, with the shard.
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let shard = dir.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 3).unwrap();
    let e = HfCheckpoint::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains(b[b.len() - 1].0.as_str()),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_safetensors_errors_name_file_and_tensor() {
    let model = Model::synthetic(tiny_config(Family::Llama, true), 3);
    let dir = temp_dir("broken");
    write_config(&dir, &model.config);
    let st = dir.join("model.safetensors");
    let good = entries(&model, "F32");

    // Truncated: the last tensor's data runs past the end.
    write_safetensors(&st, &good);
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 10).unwrap();
    let e = HfCheckpoint::open(&dir).unwrap_err();
    // The writer lays tensors out in list order, so the cut lands in the last one.
    let last = &good[good.len() - 1].0;
    let msg = e.to_string();
    assert!(matches!(e, ModelError::Truncated { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains(last.as_str()),
        "{msg}"
    );

    // Wrong dtype: one tensor stored as I32.
    let mut wrong = good.clone();
    wrong[3].1 = "I32";
    let name3 = wrong[3].0.clone();
    write_safetensors(&st, &wrong);
    let e = HfCheckpoint::open(&dir).unwrap().load_model().unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ModelError::UnknownDtype { .. }) && msg.contains(&name3) && msg.contains("I32"),
        "{msg}"
    );

    // Missing tensor.
    let missing: Vec<_> = good
        .iter()
        .filter(|t| t.0 != "model.norm.weight")
        .cloned()
        .collect();
    write_safetensors(&st, &missing);
    let e = HfCheckpoint::open(&dir).unwrap().load_model().unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ModelError::MissingTensor { .. }) && msg.contains("model.norm.weight"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");

    // Shape mismatch: a transposed k_proj.
    let mut shaped = good.clone();
    let k = shaped
        .iter_mut()
        .find(|t| t.0 == "model.layers.1.self_attn.k_proj.weight")
        .unwrap();
    k.2.reverse();
    write_safetensors(&st, &shaped);
    let e = HfCheckpoint::open(&dir).unwrap().load_model().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.1.self_attn.k_proj.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );

    // Not a safetensors file at all, and a missing config.
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    assert!(
        HfCheckpoint::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("model.safetensors")
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(
        HfCheckpoint::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("config.json")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A minimal GGUF v3 writer for tests: metadata of strings/u32/f32 and raw tensor blocks.
struct GgufWriter {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl GgufWriter {
    fn new() -> Self {
        Self {
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }
    fn str(&mut self, k: &str, v: &str) {
        self.kv.push((k.into(), 8, gguf_string(v)));
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.kv.push((k.into(), 4, v.to_le_bytes().to_vec()));
    }
    fn f32(&mut self, k: &str, v: f32) {
        self.kv.push((k.into(), 6, v.to_le_bytes().to_vec()));
    }
    fn tensor(&mut self, name: &str, dims_fastest_first: Vec<u64>, type_id: u32, bytes: Vec<u8>) {
        self.tensors
            .push((name.into(), dims_fastest_first, type_id, bytes));
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            out.extend(gguf_string(k));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, bytes) in &self.tensors {
            out.extend(gguf_string(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (bytes.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

/// Encodes values that are exactly `d·q (+ m)` into a ggml block format, returning bytes and the values.
fn encode(type_id: u32, n: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    match type_id {
        0 | 1 | 30 => {
            for i in 0..n {
                let v = ((next() % 2001) as f32 - 1000.0) / 512.0 + i as f32 * 1e-3;
                match type_id {
                    0 => {
                        bytes.extend_from_slice(&v.to_le_bytes());
                        values.push(v);
                    }
                    1 => {
                        let h = f16::from_f32(v);
                        bytes.extend_from_slice(&h.to_le_bytes());
                        values.push(h.to_f32());
                    }
                    _ => {
                        let h = bf16::from_f32(v);
                        bytes.extend_from_slice(&h.to_le_bytes());
                        values.push(h.to_f32());
                    }
                }
            }
        }
        8 => {
            for _ in 0..n / 32 {
                let d = f16::from_f32(0.01 + (next() % 100) as f32 * 1e-3);
                bytes.extend_from_slice(&d.to_le_bytes());
                for _ in 0..32 {
                    let q = (next() % 255) as i32 - 127;
                    bytes.push(q as i8 as u8);
                    values.push(d.to_f32() * q as f32);
                }
            }
        }
        2 | 3 => {
            for _ in 0..n / 32 {
                let d = f16::from_f32(0.02 + (next() % 100) as f32 * 1e-3);
                let m = f16::from_f32(-0.1 - (next() % 100) as f32 * 1e-3);
                bytes.extend_from_slice(&d.to_le_bytes());
                if type_id == 3 {
                    bytes.extend_from_slice(&m.to_le_bytes());
                }
                let qs: Vec<u8> = (0..32).map(|_| (next() % 16) as u8).collect();
                for j in 0..16 {
                    bytes.push(qs[j] | (qs[j + 16] << 4));
                }
                for &q in &qs {
                    values.push(if type_id == 3 {
                        d.to_f32() * q as f32 + m.to_f32()
                    } else {
                        d.to_f32() * (q as f32 - 8.0)
                    });
                }
            }
        }
        _ => unreachable!("test encoder covers the supported types only"),
    }
    (bytes, values)
}

/// A tiny llama GGUF (hidden 32, 4 heads of 8, 2 KV heads, 2 blocks) using every supported type, and the
/// HF-order values it must load as.
fn tiny_gguf(
    arch: &str,
    skip: Option<&str>,
    override_type: Option<(&str, u32)>,
) -> (Vec<u8>, Vec<(String, Vec<f32>)>) {
    let mut w = GgufWriter::new();
    w.str("general.architecture", arch);
    for (k, v) in [
        ("block_count", 2),
        ("embedding_length", 32),
        ("feed_forward_length", 64),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("context_length", 128),
        ("vocab_size", 40),
    ] {
        w.u32(&format!("{arch}.{k}"), v);
    }
    w.f32(&format!("{arch}.rope.freq_base"), 10000.0);
    w.f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5);
    let mut expected = Vec::new();
    let mut seed = 0;
    let mut add = |w: &mut GgufWriter,
                   name: &str,
                   hf: &str,
                   out: usize,
                   inp: usize,
                   ty: u32,
                   permute_heads: usize| {
        seed += 1;
        if skip == Some(name) {
            return;
        }
        let ty = match override_type {
            Some((n, t)) if n == name => t,
            _ => ty,
        };
        let n = out * inp;
        // Q5_K, which the reader does not expand: the right byte count, no values.
        let (bytes, values) = if ty == 13 {
            (vec![0u8; n / 256 * 176], vec![])
        } else {
            encode(ty, n, seed)
        };
        let dims = if out == 1 {
            vec![inp as u64]
        } else {
            vec![inp as u64, out as u64]
        };
        w.tensor(name, dims, ty, bytes);
        // The GGUF stores llama's q/k rows permuted: HF row h·hd + k·hd/2 + i is GGUF row h·hd + 2i + k.
        let hf_values = if permute_heads > 0 && arch == "llama" {
            let hd = out / permute_heads;
            let mut v = vec![0.0; n];
            for h in 0..permute_heads {
                for k in 0..2 {
                    for i in 0..hd / 2 {
                        let (dst, src) = (h * hd + k * hd / 2 + i, h * hd + 2 * i + k);
                        v[dst * inp..(dst + 1) * inp]
                            .copy_from_slice(&values[src * inp..(src + 1) * inp]);
                    }
                }
            }
            v
        } else {
            values
        };
        expected.push((hf.to_string(), hf_values));
    };
    add(
        &mut w,
        "token_embd.weight",
        "model.embed_tokens.weight",
        40,
        32,
        8,
        0,
    );
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        add(
            &mut w,
            &format!("blk.{l}.attn_norm.weight"),
            &format!("{p}.input_layernorm.weight"),
            1,
            32,
            0,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.ffn_norm.weight"),
            &format!("{p}.post_attention_layernorm.weight"),
            1,
            32,
            0,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.attn_q.weight"),
            &format!("{p}.self_attn.q_proj.weight"),
            32,
            32,
            3,
            4,
        );
        add(
            &mut w,
            &format!("blk.{l}.attn_k.weight"),
            &format!("{p}.self_attn.k_proj.weight"),
            16,
            32,
            2,
            2,
        );
        add(
            &mut w,
            &format!("blk.{l}.attn_v.weight"),
            &format!("{p}.self_attn.v_proj.weight"),
            16,
            32,
            1,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.attn_output.weight"),
            &format!("{p}.self_attn.o_proj.weight"),
            32,
            32,
            30,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.ffn_gate.weight"),
            &format!("{p}.mlp.gate_proj.weight"),
            64,
            32,
            3,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.ffn_up.weight"),
            &format!("{p}.mlp.up_proj.weight"),
            64,
            32,
            8,
            0,
        );
        add(
            &mut w,
            &format!("blk.{l}.ffn_down.weight"),
            &format!("{p}.mlp.down_proj.weight"),
            32,
            64,
            0,
            0,
        );
    }
    add(
        &mut w,
        "output_norm.weight",
        "model.norm.weight",
        1,
        32,
        0,
        0,
    );
    (w.bytes(), expected)
}

#[test]
fn gguf_every_type_dequantizes_exactly_and_unpermutes() {
    let dir = temp_dir("gguf-types");
    let path = dir.join("tiny.gguf");
    let (bytes, expected) = tiny_gguf("llama", None, None);
    std::fs::write(&path, bytes).unwrap();
    let model = Model::from_gguf(&path).unwrap();
    assert!(model.config.tie_word_embeddings);
    let tensors = model.hf_tensors().unwrap();
    assert_eq!(tensors.len(), expected.len());
    for (name, values) in &expected {
        let got = tensors.iter().find(|t| &t.0 == name).unwrap();
        assert_eq!(got.2, &values[..], "{name}");
    }
    // Non-llama GGUFs (qwen2/qwen3) are stored in HF row order: nothing is un-permuted.
    let (bytes, expected) = tiny_gguf("qwen3", None, None);
    std::fs::write(&path, bytes).unwrap();
    let plain = Model::from_gguf(&path).unwrap();
    assert_eq!(plain.config.family, Family::Qwen3);
    assert!(!plain.config.qk_norm, "no q/k norm tensors in this file");
    let q = &expected
        .iter()
        .find(|t| t.0 == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .1;
    assert_eq!(&plain.layers[0].q_proj.data, q);
    assert_ne!(plain.layers[0].q_proj, model.layers[0].q_proj);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_gguf_errors_name_file_and_tensor() {
    let dir = temp_dir("gguf-broken");
    let path = dir.join("tiny.gguf");
    let msg = |e: ModelError| e.to_string();

    // Truncated: cut into the last tensor's data.
    let (bytes, _) = tiny_gguf("llama", None, None);
    std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    let e = Model::from_gguf(&path).unwrap_err();
    assert!(matches!(e, ModelError::Truncated { .. }));
    let m = msg(e);
    assert!(
        m.contains("tiny.gguf") && m.contains("output_norm.weight"),
        "{m}"
    );
    // Truncated inside the header.
    std::fs::write(&path, &bytes[..100]).unwrap();
    let m = msg(Model::from_gguf(&path).unwrap_err());
    assert!(m.contains("tiny.gguf") && m.contains("truncated"), "{m}");

    // Unknown dtype (Q5_K) on one tensor.
    let (bytes, _) = tiny_gguf("llama", None, Some(("blk.1.ffn_up.weight", 13)));
    std::fs::write(&path, bytes).unwrap();
    let e = Model::from_gguf(&path).unwrap_err();
    assert!(matches!(e, ModelError::UnknownDtype { .. }));
    let m = msg(e);
    assert!(
        m.contains("blk.1.ffn_up.weight") && m.contains("Q5_K") && m.contains("tiny.gguf"),
        "{m}"
    );

    // Missing tensor.
    let (bytes, _) = tiny_gguf("llama", Some("blk.1.ffn_down.weight"), None);
    std::fs::write(&path, bytes).unwrap();
    let e = Model::from_gguf(&path).unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { .. }));
    let m = msg(e);
    assert!(
        m.contains("model.layers.1.mlp.down_proj.weight") && m.contains("tiny.gguf"),
        "{m}"
    );

    // Unsupported architecture.
    let (bytes, _) = tiny_gguf("gpt2", None, None);
    std::fs::write(&path, bytes).unwrap();
    let e = Model::from_gguf(&path).unwrap_err();
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }),
        "{e}"
    );
    assert!(msg(e).contains("gpt2"));

    // Not a GGUF.
    std::fs::write(&path, b"GGML and then some").unwrap();
    assert!(msg(Model::from_gguf(&path).unwrap_err()).contains("not a GGUF"));
    std::fs::remove_dir_all(&dir).unwrap();
}
