//! `export --format gguf` (`formats::llamacpp`): a small synthetic Llama model written as a GGUF file,
//! quantized by LDLQ onto llama.cpp's block grids (`q8_0`, `q4_0`, `q4_1`, no rotation), exported, and
//! read back with this crate's own GGUF reader: every linear layer dequantizes to the quantized file's
//! exact `Ŵ` (Q/K rows through llama.cpp's permutation and back), every other tensor and the metadata
//! are the original's, and the exported file loads as a model with those weights. Rotated layers, other
//! grids, a Hugging Face original and corrupt quantized files are refused and leave nothing behind. On
//! the real SmolLM2 fixture, round-to-nearest on the `q4_1` grid re-encodes the fixture's own Q4_1
//! tensors byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use yaqa_backend_cpu::Cpu;
use yaqa_core::Mat;
use yaqa_core::backend::round_to_nearest;
use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::quant::ggml::{GgmlBlocks, GgmlFormat};
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::gguf::{
    GgufFile, GgufValue, gguf_to_hf_name, permute_rows, unpermute_rows,
};
use yaqa_model::formats::gguf_writer::{TensorOut, write_gguf};
use yaqa_model::formats::hf::{RawTensor, SafetensorsFile, write_hf, write_safetensors};
use yaqa_model::formats::llamacpp::{encode_blocks, write_llamacpp};
use yaqa_model::formats::quant_file::{META_KEY, QuantFile};
use yaqa_model::job::calib::{Shard, sample_sequences};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::pipeline::{quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::{LayerId, LinearKind, tiny_config};
use yaqa_model::{Family, Model, ModelConfig};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-gguf-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Llama with every width a multiple of 32: q/o 64 × 64, k/v 32 × 64, gate/up 96 × 64, down 64 × 96;
/// an untied head, so `output.weight` is among the copied tensors.
fn config() -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        intermediate_size: 96,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ..tiny_config(Family::Llama, false)
    }
}

/// The GGUF name of a Hugging Face tensor name (the inverse of the reader's map, by search).
fn gguf_name(hf: &str, n_layers: usize) -> String {
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".into(),
        "output.weight".into(),
    ];
    for b in 0..n_layers {
        for t in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            names.push(format!("blk.{b}.{t}.weight"));
        }
    }
    names
        .into_iter()
        .find(|g| gguf_to_hf_name(g).as_deref() == Some(hf))
        .unwrap_or_else(|| panic!("no GGUF name for {hf}"))
}

/// Writes `model` as a llama.cpp-style F32 GGUF file (Q/K rows permuted as llama.cpp's converter does,
/// a small GPT-2 style tokenizer vocabulary) and loads it back.
fn gguf_original(dir: &Path, model: &Model<f32>) -> Loaded {
    let c = &model.config;
    let u = |v: usize| GgufValue::U32(v as u32);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("general.name".into(), GgufValue::String("synthetic".into())),
        ("general.file_type".into(), GgufValue::U32(0)),
        ("llama.context_length".into(), u(512)),
        ("llama.embedding_length".into(), u(c.hidden_size)),
        ("llama.block_count".into(), u(c.n_layers)),
        ("llama.feed_forward_length".into(), u(c.intermediate_size)),
        ("llama.attention.head_count".into(), u(c.n_heads)),
        ("llama.attention.head_count_kv".into(), u(c.n_kv_heads)),
        ("llama.rope.dimension_count".into(), u(c.head_dim)),
        ("llama.rope.freq_base".into(), GgufValue::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(1e-5),
        ),
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(
                (0..c.vocab_size)
                    .map(|i| GgufValue::String(format!("t{i}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
    ];
    let mut tensors = Vec::new();
    for (name, shape, data) in model.hf_tensors().unwrap() {
        let data: Vec<f32> = data.to_vec();
        let (rows, cols) = (shape[0], shape.iter().skip(1).product::<usize>());
        let data = if name.ends_with("q_proj.weight") {
            permute_rows(&data, rows, cols, c.n_heads, c.head_dim).unwrap()
        } else if name.ends_with("k_proj.weight") {
            permute_rows(&data, rows, cols, c.n_kv_heads, c.head_dim).unwrap()
        } else {
            data
        };
        tensors.push(TensorOut {
            name: gguf_name(&name, c.n_layers),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            type_id: 0,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    let path = dir.join("original.gguf");
    write_gguf(&path, &metadata, &tensors).unwrap();
    checkpoint::load(&path).unwrap()
}

fn xtx_factors(model: &Model<f32>) -> BTreeMap<LayerId, Factors> {
    let cpu = Cpu::default();
    let tf = Transformer::new(model, &cpu);
    let seqs = sample_sequences(&tf, 4, 12, 3, Shard::default(), 1, 2, &mut |_| {}).unwrap();
    let mut set: FactorSet = empty_factors(model, SketchKind::Xtx)
        .into_iter()
        .map(|(id, f)| (id, vec![f]))
        .collect();
    collect(&cpu, model, &seqs, 3, &mut set, &mut |_| {}).unwrap();
    set.into_iter()
        .map(|(id, mut v)| (id, v.remove(0)))
        .collect()
}

fn quantize(loaded: &Loaded, params: &LayerParams, out: &Path) -> QuantFile {
    let f = xtx_factors(&loaded.model);
    let header = run_header(params, &loaded.fingerprint, json!({"sketch": "xtx"}));
    let o = quantize_model(
        &Cpu::default(),
        &loaded.model,
        &LayerId::all(&loaded.model),
        &mut |id| Ok(f[&id].clone()),
        params,
        None,
        &header,
        out,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert!(o.finished);
    QuantFile::open(out).unwrap()
}

fn params(method: Method, quantizer: QuantizerSpec, incoherence: bool) -> LayerParams {
    LayerParams {
        method,
        quantizer,
        incoherence,
        ..LayerParams::default()
    }
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn exported_gguf_reads_back_as_the_quantized_model() {
    let dir = scratch("roundtrip");
    let model = Model::synthetic(config(), 5);
    let original = gguf_original(&dir, &model);
    // The writer's Q/K permutation is the inverse of the reader's: the GGUF loads as the model it came from.
    for ((name, _, a), (_, _, b)) in model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .zip(original.model.hf_tensors().unwrap())
    {
        assert!(bits_equal(a, b), "{name} differs after the GGUF round trip");
    }
    let cpu = Cpu::default();
    // Q4_K's super-blocks need widths of whole 256s.
    let wide_dir = dir.join("wide");
    std::fs::create_dir_all(&wide_dir).unwrap();
    let wide = gguf_original(
        &wide_dir,
        &Model::synthetic(
            ModelConfig {
                hidden_size: 256,
                intermediate_size: 512,
                head_dim: 64,
                ..config()
            },
            6,
        ),
    );
    for format in GgmlFormat::ALL {
        let original = if format == GgmlFormat::Q4_K {
            &wide
        } else {
            &original
        };
        let c = &original.model.config;
        let quant = quantize(
            original,
            &params(Method::Ldlq, QuantizerSpec::Ggml { format }, false),
            &dir.join(format!("{format}.safetensors")),
        );
        let out = dir.join(format!("{format}.gguf"));
        let s = write_llamacpp(original, &quant, &out).unwrap();
        assert_eq!((s.format, s.layers, s.copied), (format, 14, 2 * 2 + 3));
        let src = GgufFile::open(&original.path).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!((g.version, g.alignment), (3, 32));
        assert_eq!(
            g.get("general.file_type"),
            Some(&GgufValue::U32(match format {
                GgmlFormat::Q8_0 => 7,
                GgmlFormat::Q4_0 => 2,
                GgmlFormat::Q4_1 => 3,
                GgmlFormat::Q5_0 => 8,
                GgmlFormat::Q4_K => 14,
            }))
        );
        for key in [
            "tokenizer.ggml.tokens",
            "llama.attention.head_count_kv",
            "general.name",
        ] {
            assert_eq!(g.get(key), src.get(key), "{key} copied");
        }
        assert_eq!(g.tensors.len(), src.tensors.len());
        for id in LayerId::all(&original.model) {
            let gname = gguf_name(&format!("{}.weight", id.name()), c.n_layers);
            let info = g.info(&gname).unwrap();
            assert_eq!(info.type_id, format.type_id(), "{gname}");
            let (shape, data) = g.tensor_f32(&gname).unwrap();
            let (m, n) = (shape[0], shape[1]);
            let data = match id.kind {
                LinearKind::Q => unpermute_rows(&data, m, n, c.n_heads, c.head_dim).unwrap(),
                LinearKind::K => unpermute_rows(&data, m, n, c.n_kv_heads, c.head_dim).unwrap(),
                _ => data,
            };
            let want = quant.dequantize(&cpu, id).unwrap();
            assert_eq!(want.shape(), (m, n));
            assert!(
                bits_equal(&data, &want.data),
                "{format} {gname}: dequantized weights differ"
            );
        }
        // Everything else is the original's bytes.
        for t in &src.tensors {
            if !t.name.starts_with("blk.") || t.name.contains("norm") {
                assert_eq!(
                    g.raw(&t.name).unwrap().1,
                    src.raw(&t.name).unwrap().1,
                    "{}",
                    t.name
                );
            }
        }
        // And the file loads as a model: the quantized layers' Ŵ, the rest the original's.
        let back = checkpoint::load(&out).unwrap();
        let ids = LayerId::all(&back.model);
        for ((name, _, a), (_, _, b)) in back
            .model
            .hf_tensors()
            .unwrap()
            .into_iter()
            .zip(original.model.hf_tensors().unwrap())
        {
            let want = match ids
                .iter()
                .find(|id| format!("{}.weight", id.name()) == name)
            {
                Some(&id) => quant.dequantize(&cpu, id).unwrap().data,
                None => b.to_vec(),
            };
            assert!(
                bits_equal(a, &want),
                "{format}: {name} of the loaded export"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites one tensor of a quantized file.
fn corrupt(src: &Path, dst: &Path, tensor: &str, edit: impl Fn(&mut Vec<u8>)) {
    let file = SafetensorsFile::open(src).unwrap();
    let mut tensors = Vec::new();
    for (name, info) in &file.tensors {
        let (_, bytes) = file.raw(name, &info.dtype).unwrap();
        let dtype = match info.dtype.as_str() {
            "U8" => safetensors::Dtype::U8,
            "I8" => safetensors::Dtype::I8,
            _ => safetensors::Dtype::F32,
        };
        let mut bytes = bytes.to_vec();
        if name == tensor {
            edit(&mut bytes);
        }
        tensors.push((
            name.clone(),
            RawTensor {
                dtype,
                shape: info.shape.clone(),
                bytes,
            },
        ));
    }
    write_safetensors(dst, &tensors, META_KEY, &file.metadata[META_KEY]).unwrap();
}

#[test]
fn files_llama_cpp_cannot_hold_are_refused_and_nothing_is_written() {
    let dir = scratch("refused");
    let original = gguf_original(&dir, &Model::synthetic(config(), 9));
    let out = dir.join("out.gguf");
    let refused = |quant: &QuantFile, original: &Loaded| -> String {
        let e = write_llamacpp(original, quant, &out)
            .unwrap_err()
            .to_string();
        assert!(!out.exists(), "a refused export wrote {}", out.display());
        e
    };
    // Rotated INT4: refused naming the layer and the rotation.
    let rotated = quantize(
        &original,
        &params(Method::Rtn, QuantizerSpec::IntSym { bits: 4 }, true),
        &dir.join("rotated.safetensors"),
    );
    let e = refused(&rotated, &original);
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("rotation"),
        "{e}"
    );
    // An unrotated INT grid is not one of llama.cpp's.
    let int = quantize(
        &original,
        &params(
            Method::Rtn,
            QuantizerSpec::IntAsym {
                bits: 4,
                group_size: Some(32),
            },
            false,
        ),
        &dir.join("int.safetensors"),
    );
    let e = refused(&int, &original);
    assert!(e.contains("not one of llama.cpp's block grids"), "{e}");
    // The ggml grid refuses a rotation before any work.
    let cpu = Cpu::default();
    let w = Mat::from_fn(32, 64, |i, j| ((i * 7 + j) % 13) as f32 * 0.01);
    let h = yaqa_core::SymMat::identity(64);
    let e = yaqa_core::layer::quantize_layer(
        &cpu,
        "x",
        &w,
        &yaqa_core::layer::LayerFactors::xtx(&h),
        &params(
            Method::Ldlq,
            QuantizerSpec::Ggml {
                format: GgmlFormat::Q4_0,
            },
            true,
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot undo a rotation"), "{e}");

    let good_path = dir.join("q8.safetensors");
    let good = quantize(
        &original,
        &params(
            Method::Ldlq,
            QuantizerSpec::Ggml {
                format: GgmlFormat::Q8_0,
            },
            false,
        ),
        &good_path,
    );
    // A Hugging Face original (the same weights) without tokenizer.json, or with a tokenizer the
    // export cannot write as llama.cpp's: a WordPiece model, a pre-tokenizer llama.cpp has no name for.
    let hf_dir = dir.join("hf");
    write_hf(&original.model, &hf_dir).unwrap();
    let hf = checkpoint::load(&hf_dir).unwrap();
    let hf = Loaded {
        fingerprint: original.fingerprint.clone(),
        ..hf
    };
    let e = refused(&good, &hf);
    assert!(e.contains("has no tokenizer.json"), "{e}");
    let bpe = |pre: serde_json::Value| {
        json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]},
               "added_tokens": [], "pre_tokenizer": pre})
    };
    for (tokenizer, want) in [
        (
            json!({"model": {"type": "WordPiece", "vocab": {}}}),
            "model.type \"WordPiece\"",
        ),
        (
            bpe(json!({"type": "Metaspace"})),
            "no llama.cpp pre-tokenizer name",
        ),
    ] {
        std::fs::write(hf_dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let e = refused(&good, &hf);
        assert!(e.contains("tokenizer.json") && e.contains(want), "{e}");
    }
    // A scale that is not a float16 value; a code −128; both name the tensor.
    let layer = "model.layers.1.mlp.down_proj";
    let bad = dir.join("bad-scale.safetensors");
    corrupt(&good_path, &bad, &format!("{layer}.scales"), |b| {
        b[4..8].copy_from_slice(&0.1f32.to_le_bytes());
    });
    let e = refused(&QuantFile::open(&bad).unwrap(), &original);
    assert!(
        e.contains(&format!("{layer}.scales")) && e.contains("float16"),
        "{e}"
    );
    let bad = dir.join("bad-code.safetensors");
    corrupt(&good_path, &bad, &format!("{layer}.codes"), |b| {
        b[96 + 5] = 0x80
    });
    let e = refused(&QuantFile::open(&bad).unwrap(), &original);
    assert!(
        e.contains(&format!("{layer}.codes")) && e.contains("row 1, column 5"),
        "{e}"
    );
    let e = QuantFile::open(&bad)
        .unwrap()
        .dequantize(&cpu, LayerId::parse(layer).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("0x80"), "{e}");
    // And the good file exports.
    write_llamacpp(&original, &good, &out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Round-to-nearest on the `q4_1` grid, applied to the fixture's own dequantized Q4_1 tensors, gives
/// back the fixture's bytes: llama.cpp's scale and minimum, and its codes, reproduced exactly. Blocks
/// 0, 14 and 29 (every linear kind; all 30 blocks in release take about a second).
#[test]
fn rtn_on_the_q4_1_grid_re_encodes_the_fixture_byte_for_byte() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let g = GgufFile::open(shared.join("fixtures/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap();
    let mut checked = 0;
    for t in &g.tensors {
        let block = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .map(|(b, _)| b);
        if t.type_id != GgmlFormat::Q4_1.type_id() || !matches!(block, Some("0" | "14" | "29")) {
            continue;
        }
        let (shape, data) = g.tensor_f32(&t.name).unwrap();
        let w = Mat::from_vec(shape[0], shape[1], data).unwrap();
        let q = GgmlBlocks::fit(&w, GgmlFormat::Q4_1).unwrap();
        let r = round_to_nearest(&w, &q);
        let bytes = encode_blocks(&q, &r.codes, w.shape(), |i| i);
        assert!(
            bytes == g.raw(&t.name).unwrap().1,
            "{}: re-encoded bytes differ",
            t.name
        );
        assert!(bits_equal(&r.w_hat.data, &w.data), "{}", t.name);
        checked += 1;
    }
    assert_eq!(checked, 21);
}

/// A Hugging Face original exports too: the fixture written as an HF folder (f32 weights and its
/// `tokenizer.json`), quantized by round-to-nearest onto `q4_0`, exported, and compared with the export
/// of the same rounding from the fixture GGUF itself. The quantized tensors are the same bytes, every
/// other tensor the same values (F16/F32 for the HF original where the GGUF keeps its Q8_0 embedding),
/// and the vocabulary, token types, merges, pre-tokenizer, special ids and `llama.*` keys built from
/// `config.json` and `tokenizer.json` equal those llama.cpp's own converter wrote into the fixture.
#[test]
fn a_hugging_face_original_exports_the_fixtures_own_gguf_metadata() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fixture = shared.join("fixtures/smollm2-135m");
    let gguf_path = fixture.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let from_gguf = checkpoint::load(&gguf_path).unwrap();
    let dir = scratch("hf-original");
    let hf_dir = dir.join("smollm2-hf");
    write_hf(&from_gguf.model, &hf_dir).unwrap();
    std::fs::copy(
        fixture.join("tokenizer.json"),
        hf_dir.join("tokenizer.json"),
    )
    .unwrap();
    // SmolLM2's tokenizer_config.json names these (the chat template is the fixture's own).
    let src = GgufFile::open(&gguf_path).unwrap();
    let template = src
        .get("tokenizer.chat_template")
        .unwrap()
        .as_str()
        .unwrap();
    std::fs::write(
        hf_dir.join("tokenizer_config.json"),
        json!({"unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "chat_template": template})
            .to_string(),
    )
    .unwrap();
    let from_hf = checkpoint::load(&hf_dir).unwrap();
    let p = params(
        Method::Rtn,
        QuantizerSpec::Ggml {
            format: GgmlFormat::Q4_0,
        },
        false,
    );
    let q_hf = quantize(&from_hf, &p, &dir.join("hf.safetensors"));
    let q_gguf = quantize(&from_gguf, &p, &dir.join("gguf.safetensors"));
    let (out_hf, out_gguf) = (dir.join("hf.gguf"), dir.join("gguf.gguf"));
    let s = write_llamacpp(&from_hf, &q_hf, &out_hf).unwrap();
    assert_eq!((s.layers, s.copied), (210, 62));
    write_llamacpp(&from_gguf, &q_gguf, &out_gguf).unwrap();
    let (h, g) = (
        GgufFile::open(&out_hf).unwrap(),
        GgufFile::open(&out_gguf).unwrap(),
    );
    assert_eq!(h.tensors.len(), g.tensors.len());
    for t in &g.tensors {
        let ht = h.info(&t.name).unwrap();
        assert_eq!(ht.dims, t.dims, "{}", t.name);
        if t.type_id == GgmlFormat::Q4_0.type_id() {
            assert_eq!(ht.type_id, t.type_id, "{}", t.name);
            assert!(
                h.raw(&t.name).unwrap().1 == g.raw(&t.name).unwrap().1,
                "{}",
                t.name
            );
        } else {
            let (a, b) = (
                h.tensor_f32(&t.name).unwrap().1,
                g.tensor_f32(&t.name).unwrap().1,
            );
            assert!(bits_equal(&a, &b), "{}: values differ", t.name);
        }
    }
    for key in [
        "general.architecture",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
    ] {
        assert!(h.get(key).is_some(), "{key} missing");
        assert_eq!(h.get(key), src.get(key), "{key}");
    }
    // And it loads as the model it was exported from.
    let back = checkpoint::load(&out_hf).unwrap();
    assert_eq!(
        back.model.config.vocab_size,
        from_hf.model.config.vocab_size
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
