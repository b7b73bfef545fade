//! `write_gptq` on a small synthetic Qwen2 model (biases, untied head) quantized with GPTQ on the INT4
//! asymmetric grid, groups of 32, no incoherence: the checkpoint read back with the `safetensors` crate
//! and dequantized with GPTQ v1's formula, written out here from the published layout, gives the quantized
//! file's exact `Ŵ` up to the float16 rounding of the scales; every other tensor is the original in
//! float16; the config carries what the GPTQ loaders read. Files that GPTQ cannot hold are refused with
//! the file, the layer and the reason, and leave nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::gptq::write_gptq;
use yaqa_model::formats::hf::write_hf;
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::job::calib::{Shard, sample_sequences};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::pipeline::{quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::LayerId;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model, ModelConfig};

/// Per-weight tolerance of the GPTQ dequantization against the exact `Ŵ`, relative to `|Ŵ|`: rounding a
/// scale in float16's normal range to nearest moves it by at most 2^-11 of itself (11 significant bits),
/// and the file's f32 product `s·(c − z)` is itself within 2^-24 of exact, so `|Ŵ₁₆ − Ŵ| ≤ (2^-11 +
/// 2^-24)/(1 − 2^-24)·|Ŵ| < 2^-11·(1 + 2^-10)·|Ŵ|`. The test checks that every scale is normal.
const REL_TOL: f64 = (1.0 / 2048.0) * (1.0 + 1.0 / 1024.0);

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-gptq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Qwen2 with every dimension a multiple of 32: q/o 64 × 64, k/v 32 × 64, gate/up 96 × 64, down 64 × 96.
fn config(hidden: usize, intermediate: usize) -> ModelConfig {
    ModelConfig {
        hidden_size: hidden,
        intermediate_size: intermediate,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: hidden / 4,
        ..tiny_config(Family::Qwen2, false)
    }
}

/// The model written as a Hugging Face folder and loaded back (for its fingerprint).
fn checkpoint(dir: &Path, config: ModelConfig, seed: u64) -> Loaded {
    let model = Model::synthetic(config, seed);
    let path = dir.join(format!("model-{seed}"));
    write_hf(&model, &path).unwrap();
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

fn asym(method: Method, bits: u32, group: usize, incoherence: bool) -> LayerParams {
    LayerParams {
        method,
        quantizer: QuantizerSpec::IntAsym {
            bits,
            group_size: Some(group),
        },
        incoherence,
        ..LayerParams::default()
    }
}

fn i32s(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Vec<i32> {
    let t = st.tensor(name).unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::I32, shape), "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f16s(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Vec<f16> {
    let t = st.tensor(name).unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::F16, shape), "{name}");
    t.data()
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn gptq_checkpoint_dequantizes_to_the_quantized_file() {
    let dir = scratch("roundtrip");
    let loaded = checkpoint(&dir, config(64, 96), 21);
    let quant = quantize(
        &loaded,
        &asym(Method::Gptq, 4, 32, false),
        &dir.join("q.safetensors"),
    );
    let out = dir.join("gptq");
    let summary = write_gptq(&loaded, &quant, &out).unwrap();
    assert_eq!(
        (summary.bits, summary.group_size, summary.layers),
        (4, 32, 14)
    );

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let g = 32;
    let mut observed_max_rel = 0.0f64;
    for id in LayerId::all(&loaded.model) {
        let name = id.name();
        let (m, n) = loaded.model.layers[id.block].linear(id.kind).shape();
        let qweight = i32s(&st, &format!("{name}.qweight"), &[n / 8, m]);
        let qzeros = i32s(&st, &format!("{name}.qzeros"), &[n / g, m / 8]);
        let scales = f16s(&st, &format!("{name}.scales"), &[n / g, m]);
        let g_idx = i32s(&st, &format!("{name}.g_idx"), &[n]);
        assert!(st.tensor(&format!("{name}.weight")).is_err());
        assert!(
            scales.iter().all(|s| s.is_normal() && *s > f16::ZERO),
            "{name}: REL_TOL assumes normal float16 scales"
        );
        let exact = quant.dequantize(&Cpu::default(), id).unwrap();
        for j in 0..m {
            for i in 0..n {
                assert_eq!(g_idx[i] as usize, i / g);
                let t = g_idx[i] as usize;
                // GPTQ v1: q from bits 4·(i mod 8) of word (i/8, j); zero = field (j mod 8) of word
                // (t, j/8), plus one; w = scale·(q − zero).
                let q = (qweight[(i / 8) * m + j] as u32 >> (4 * (i % 8))) & 0xF;
                let qz = (qzeros[t * (m / 8) + j / 8] as u32 >> (4 * (j % 8))) & 0xF;
                let w = scales[t * m + j].to_f64() * (f64::from(q) - f64::from(qz + 1));
                let w_hat = f64::from(exact.at(j, i));
                assert!(
                    (w - w_hat).abs() <= REL_TOL * w_hat.abs(),
                    "{name}[{j}, {i}]: GPTQ {w} vs exact {w_hat}"
                );
                if w_hat != 0.0 {
                    observed_max_rel = observed_max_rel.max((w - w_hat).abs() / w_hat.abs());
                }
            }
        }
    }
    // The reported change is the one a reader sees, and float16 did round something.
    assert!(
        (summary.max_rel_change - observed_max_rel).abs() <= 1e-12,
        "reported {} vs observed {observed_max_rel}",
        summary.max_rel_change
    );
    assert!(observed_max_rel > 0.0 && observed_max_rel <= 1.0 / 2048.0);

    // Everything else (embeddings, norms, biases, the untied head) is the original in float16.
    let linear: Vec<String> = LayerId::all(&loaded.model)
        .iter()
        .map(|id| id.kind.hf_name(id.block))
        .collect();
    let mut others = 0;
    for (name, shape, data) in loaded.model.hf_tensors().unwrap() {
        if linear.contains(&name) {
            continue;
        }
        let stored = f16s(&st, &name, &shape);
        assert!(
            stored
                .iter()
                .zip(data)
                .all(|(&s, &v)| s == f16::from_f32(v)),
            "{name}"
        );
        others += 1;
    }
    assert!(st.tensor("model.layers.1.self_attn.k_proj.bias").is_ok());
    assert!(st.tensor("lm_head.weight").is_ok());
    assert_eq!(st.names().len(), others + 4 * linear.len());

    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
    };
    let config = read("config.json");
    assert_eq!(config["torch_dtype"], "float16");
    assert_eq!(config["dtype"], "float16");
    assert_eq!(config["model_type"], "qwen2");
    let qc = &config["quantization_config"];
    for (key, value) in [
        ("quant_method", json!("gptq")),
        ("bits", json!(4)),
        ("group_size", json!(32)),
        ("desc_act", json!(false)),
        ("sym", json!(false)),
        ("checkpoint_format", json!("gptq")),
    ] {
        assert_eq!(qc[key], value, "{key}");
    }
    assert_eq!(&read("quantize_config.json"), qc);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The error of an export that must be refused, after checking it left no file behind.
fn refused(loaded: &Loaded, quant: &QuantFile, out: &Path) -> String {
    let err = write_gptq(loaded, quant, out).unwrap_err().to_string();
    assert!(!out.join("model.safetensors").exists(), "{err}");
    assert!(!out.join("config.json").exists(), "{err}");
    err
}

#[test]
fn files_gptq_cannot_hold_are_refused_by_file_and_layer() {
    let dir = scratch("refuse");
    let loaded = checkpoint(&dir, config(64, 96), 22);
    let out = dir.join("out");
    let first = "model.layers.0.self_attn.q_proj";

    let rotated = quantize(
        &loaded,
        &asym(Method::Rtn, 4, 32, true),
        &dir.join("rotated.safetensors"),
    );
    let err = refused(&loaded, &rotated, &out);
    assert!(
        err.contains("rotated.safetensors") && err.contains(first) && err.contains("incoherence"),
        "{err}"
    );

    let sym = LayerParams {
        method: Method::Rtn,
        quantizer: QuantizerSpec::IntSym { bits: 4 },
        incoherence: false,
        ..LayerParams::default()
    };
    let sym = quantize(&loaded, &sym, &dir.join("sym.safetensors"));
    let err = refused(&loaded, &sym, &out);
    assert!(
        err.contains("sym.safetensors") && err.contains(first) && err.contains("symmetric"),
        "{err}"
    );

    let three = quantize(
        &loaded,
        &asym(Method::Rtn, 3, 32, false),
        &dir.join("int3.safetensors"),
    );
    let err = refused(&loaded, &three, &out);
    assert!(err.contains(first) && err.contains("3-bit"), "{err}");

    // A file of another model (the fingerprint covers the config and tensor headers, not the weights).
    let other = checkpoint(&dir, config(64, 128), 23);
    let good = quantize(
        &loaded,
        &asym(Method::Rtn, 4, 32, false),
        &dir.join("good.safetensors"),
    );
    let err = refused(&other, &good, &out);
    assert!(
        err.contains("good.safetensors") && err.contains("different model"),
        "{err}"
    );

    // Groups of 4 weights are often all positive: zero-point 0, and round to nearest puts the largest
    // weight on the top code, which GPTQ v1 cannot store (the export names row and group).
    let small = quantize(
        &loaded,
        &asym(Method::Rtn, 4, 4, false),
        &dir.join("g4.safetensors"),
    );
    let err = refused(&loaded, &small, &out);
    assert!(
        err.contains("g4.safetensors") && err.contains("zero-point 0") && err.contains("group"),
        "{err}"
    );

    // One key/value head of 12: k_proj and v_proj have 12 outputs, and qzeros packs 8 per int32.
    let narrow = ModelConfig {
        n_kv_heads: 1,
        head_dim: 12,
        ..config(64, 96)
    };
    let narrow = checkpoint(&dir, narrow, 24);
    let q = quantize(
        &narrow,
        &asym(Method::Rtn, 4, 16, false),
        &dir.join("narrow.safetensors"),
    );
    let err = refused(&narrow, &q, &out);
    assert!(
        err.contains("model.layers.0.self_attn.k_proj") && err.contains("out_features m = 12"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
