//! `write_compressed_tensors` read back independently of the writer: the exported `model.safetensors` is
//! parsed with the `safetensors` crate and decompressed here, straight from compressed-tensors' layout
//! (its `unpack_from_int32` and `dequantize`: the row as one little-endian bit stream of `k`-bit fields
//! cut into int32 words, zero-points packed down the outputs, the signed value `q − 2^(k−1)`, the level
//! `(q − zp)·scale` in the scale's dtype; FP8 bytes decoded from the OCP E4M3 definition written out
//! below, times their block, row or tensor scale). Every weight must equal the quantized file's own
//! dequantization bit for bit, every other tensor the original in bfloat16, and `config.json` must name the
//! scheme vLLM selects. Files the format cannot hold are refused with the file, the layer and the reason,
//! and leave nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::quant::fp8::Fp8Scaling;
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::compressed_tensors::{Scheme, write_compressed_tensors};
use yaqa_model::formats::hf::write_hf;
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::job::calib::{Shard, sample_sequences};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::pipeline::{quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::{LayerId, tiny_config};
use yaqa_model::{Family, Model, ModelConfig};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-ct-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Qwen2 (q/k/v biases, untied head): q/o 64 × 64, k/v 32 × 64, gate/up 160 × 64, down 64 × 160, so
/// 128 × 128 FP8 blocks are cut at the edges of the MLP layers and no output count is a multiple of
/// 32/k words.
fn config() -> ModelConfig {
    ModelConfig {
        hidden_size: 64,
        intermediate_size: 160,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ..tiny_config(Family::Qwen2, false)
    }
}

fn checkpoint(dir: &Path, seed: u64) -> Loaded {
    checkpoint_of(dir, seed, config())
}

fn checkpoint_of(dir: &Path, seed: u64, config: ModelConfig) -> Loaded {
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

fn params(method: Method, quantizer: QuantizerSpec, incoherence: bool) -> LayerParams {
    LayerParams {
        method,
        quantizer,
        incoherence,
        ..LayerParams::default()
    }
}

fn tensor<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype, shape: &[usize]) -> &'a [u8] {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!((t.dtype(), t.shape()), (dtype, shape), "{name}");
    t.data()
}

fn i32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// compressed-tensors' `unpack_from_int32` along dimension 1 for one row of `words`: value `i` is
/// stream bits `k·i .. k·i + k` of the row's words laid end to end (word `w` holds stream bits
/// `32w .. 32w + 32`, least significant first), returned as the signed `q = field − 2^(k−1)`.
fn spec_unpack_row(words: &[u32], cols: usize, k: usize) -> Vec<i32> {
    (0..cols)
        .map(|i| {
            let field = (0..k).fold(0u32, |acc, b| {
                let bit = k * i + b;
                acc | (((words[bit / 32] >> (bit % 32)) & 1) << b)
            });
            field as i32 - (1 << (k - 1))
        })
        .collect()
}

/// OCP FP8 E4M3 (the `float8_e4m3fn` of torch): sign bit 7, exponent bits 6–3 with bias 7, mantissa bits
/// 2–0; exponent 0 is subnormal `m/8·2⁻⁶`; `S.1111.111` is NaN and there are no infinities.
fn spec_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((b >> 3) & 0xF);
    let m = f32::from(b & 7);
    assert!(b & 0x7F != 0x7F, "NaN byte {b:#04x}");
    if e == 0 {
        sign * m / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// Decompresses every quantized layer of the exported `st` per the layout above and checks it against
/// `quant`'s own dequantization bit for bit; returns the number of layers checked.
fn check_layers(st: &SafeTensors<'_>, loaded: &Loaded, quant: &QuantFile, scheme: Scheme) -> usize {
    let cpu = Cpu::default();
    let mut checked = 0;
    for id in LayerId::all(&loaded.model) {
        let name = id.name();
        let (m, n) = loaded.model.layers[id.block].linear(id.kind).shape();
        assert!(st.tensor(&format!("{name}.weight_g_idx")).is_err());
        let exact = quant.dequantize(&cpu, id).unwrap();
        let got: Vec<f32> = match scheme {
            Scheme::Int { bits, group_size } => {
                assert!(st.tensor(&format!("{name}.weight")).is_err());
                let k = bits as usize;
                let g = group_size.unwrap_or(n);
                let groups = n / g;
                let row_words = (n * k).div_ceil(32);
                let packed = i32s(tensor(
                    st,
                    &format!("{name}.weight_packed"),
                    Dtype::I32,
                    &[m, row_words],
                ));
                let scale = f32s(tensor(
                    st,
                    &format!("{name}.weight_scale"),
                    Dtype::F32,
                    &[m, groups],
                ));
                let zp_words = (m * k).div_ceil(32);
                let zp = i32s(tensor(
                    st,
                    &format!("{name}.weight_zero_point"),
                    Dtype::I32,
                    &[zp_words, groups],
                ));
                let shape = tensor(st, &format!("{name}.weight_shape"), Dtype::I64, &[2]);
                assert_eq!(shape[..8], (m as i64).to_le_bytes());
                assert_eq!(shape[8..], (n as i64).to_le_bytes());
                // packed_dim = 0: transpose, unpack each group's column of m zero-points, transpose.
                let zp_cols: Vec<Vec<i32>> = (0..groups)
                    .map(|t| {
                        let column: Vec<u32> = (0..zp_words).map(|r| zp[r * groups + t]).collect();
                        spec_unpack_row(&column, m, k)
                    })
                    .collect();
                let mut w = Vec::with_capacity(m * n);
                for j in 0..m {
                    let q = spec_unpack_row(&packed[j * row_words..(j + 1) * row_words], n, k);
                    for (i, &q) in q.iter().enumerate() {
                        let t = i / g;
                        // `_dequantize`: (x_q − zp) in the scale's dtype, times the scale.
                        w.push((q as f32 - zp_cols[t][j] as f32) * scale[j * groups + t]);
                    }
                }
                w
            }
            Scheme::Fp8 { scaling } => {
                let bytes = tensor(st, &format!("{name}.weight"), Dtype::F8_E4M3, &[m, n]);
                let (rows, cols, shape): (usize, usize, Vec<usize>) = match scaling {
                    Fp8Scaling::Block => (
                        m.div_ceil(128),
                        n.div_ceil(128),
                        vec![m.div_ceil(128), n.div_ceil(128)],
                    ),
                    Fp8Scaling::Row => (m, 1, vec![m, 1]),
                    Fp8Scaling::Tensor => (1, 1, vec![1]),
                };
                let scale = f32s(tensor(
                    st,
                    &format!("{name}.weight_scale"),
                    Dtype::F32,
                    &shape,
                ));
                let (bh, bw) = (m.div_ceil(rows), n.div_ceil(cols));
                let (bh, bw) = match scaling {
                    Fp8Scaling::Block => (128, 128),
                    _ => (bh, bw),
                };
                (0..m * n)
                    .map(|at| {
                        let (j, i) = (at / n, at % n);
                        spec_e4m3(bytes[at]) * scale[(j / bh) * cols + i / bw]
                    })
                    .collect()
            }
        };
        for (at, (a, b)) in got.iter().zip(&exact.data).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}[{}, {}]: decompressed {a} vs the quantized file's {b}",
                at / n,
                at % n
            );
        }
        checked += 1;
    }
    checked
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Exports `quant` and checks every tensor and the config against `scheme`.
fn export_and_check(dir: &Path, loaded: &Loaded, quant: &QuantFile, scheme: Scheme, tag: &str) {
    let out = dir.join(tag);
    let summary = write_compressed_tensors(loaded, quant, &out).unwrap();
    assert_eq!(summary.scheme, scheme, "{tag}");
    assert_eq!(summary.layers, 14, "{tag}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(check_layers(&st, loaded, quant, scheme), 14);

    // Everything else (embeddings, norms, biases, the untied head) is the original in bfloat16.
    let linear: Vec<String> = LayerId::all(&loaded.model)
        .iter()
        .map(|id| id.kind.hf_name(id.block))
        .collect();
    let mut others = 0;
    for (name, shape, data) in loaded.model.hf_tensors().unwrap() {
        if linear.contains(&name) {
            // FP8 stores the quantized weight under its own name (F8_E4M3, checked above).
            let kept = st.tensor(&name).ok().map(|t| t.dtype());
            let expected = match scheme {
                Scheme::Int { .. } => None,
                Scheme::Fp8 { .. } => Some(Dtype::F8_E4M3),
            };
            assert_eq!(kept, expected, "{name}");
            continue;
        }
        let stored = tensor(&st, &name, Dtype::BF16, &shape);
        let expected: Vec<u8> = data
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(stored, &expected[..], "{name}");
        others += 1;
    }
    assert!(st.tensor("model.layers.1.self_attn.k_proj.bias").is_ok());
    let per_layer = match scheme {
        Scheme::Int { .. } => 4,
        Scheme::Fp8 { .. } => 2,
    };
    assert_eq!(st.names().len(), others + per_layer * linear.len(), "{tag}");

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(config["model_type"], "qwen2");
    let qc = &config["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["quantization_status"], "compressed");
    assert_eq!(qc["format"], scheme.format());
    assert_eq!(qc["ignore"], json!(["lm_head"]));
    let group = &qc["config_groups"]["group_0"];
    assert_eq!(group["targets"], json!(["Linear"]));
    assert!(group["input_activations"].is_null());
    assert_eq!(group["weights"], scheme.weights_json());
}

#[test]
fn int_exports_decompress_to_the_quantized_file_exactly() {
    let dir = scratch("int");
    let loaded = checkpoint(&dir, 31);
    // GPTQ, INT4, groups of 32: strategy "group".
    let int4 = params(
        Method::Gptq,
        QuantizerSpec::IntAsym {
            bits: 4,
            group_size: Some(32),
        },
        false,
    );
    let q = quantize(&loaded, &int4, &dir.join("int4.safetensors"));
    let scheme = Scheme::Int {
        bits: 4,
        group_size: Some(32),
    };
    export_and_check(&dir, &loaded, &q, scheme, "int4-g32");
    assert_eq!(scheme.weights_json()["strategy"], "group");

    // LDLQ, INT8, one group per row (the no-incoherence default): strategy "channel".
    let int8 = params(
        Method::Ldlq,
        QuantizerSpec::IntAsym {
            bits: 8,
            group_size: None,
        },
        false,
    );
    let q = quantize(&loaded, &int8, &dir.join("int8.safetensors"));
    let scheme = Scheme::Int {
        bits: 8,
        group_size: None,
    };
    export_and_check(&dir, &loaded, &q, scheme, "int8-channel");
    assert_eq!(scheme.weights_json()["strategy"], "channel");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--group 64` on a model whose attention and gate/up layers have 64 inputs: those layers hold one
/// group per row, as a per-channel layer does, and are written in the model's group scheme (before, the
/// export refused the model because the first layer's scheme read "per channel").
#[test]
fn a_group_as_long_as_a_layers_rows_is_the_models_group() {
    let dir = scratch("group-is-row");
    let loaded = checkpoint_of(
        &dir,
        32,
        ModelConfig {
            intermediate_size: 128,
            ..config()
        },
    );
    let int4 = params(
        Method::Gptq,
        QuantizerSpec::IntAsym {
            bits: 4,
            group_size: Some(64),
        },
        false,
    );
    let q = quantize(&loaded, &int4, &dir.join("int4.safetensors"));
    let scheme = Scheme::Int {
        bits: 4,
        group_size: Some(64),
    };
    export_and_check(&dir, &loaded, &q, scheme, "int4-g64");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fp8_exports_decompress_to_the_quantized_file_exactly() {
    let dir = scratch("fp8");
    let loaded = checkpoint(&dir, 32);
    for (scaling, strategy) in [
        (Fp8Scaling::Block, "block"),
        (Fp8Scaling::Row, "channel"),
        (Fp8Scaling::Tensor, "tensor"),
    ] {
        let p = params(Method::Rtn, QuantizerSpec::Fp8 { scaling }, false);
        let tag = scaling.name();
        let q = quantize(&loaded, &p, &dir.join(format!("{tag}.safetensors")));
        let scheme = Scheme::Fp8 { scaling };
        export_and_check(&dir, &loaded, &q, scheme, tag);
        assert_eq!(scheme.weights_json()["strategy"], strategy);
        let summary =
            write_compressed_tensors(&loaded, &q, &dir.join(format!("{tag}-again"))).unwrap();
        // Every layer of this model has a side that is not a multiple of 128.
        assert_eq!(
            summary.partial_blocks.is_some(),
            scaling == Fp8Scaling::Block,
            "{tag}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The error of an export that must be refused, after checking it left no file behind.
fn refused(loaded: &Loaded, quant: &QuantFile, out: &Path) -> String {
    let err = write_compressed_tensors(loaded, quant, out)
        .unwrap_err()
        .to_string();
    assert!(!out.join("model.safetensors").exists(), "{err}");
    assert!(!out.join("config.json").exists(), "{err}");
    err
}

#[test]
fn files_compressed_tensors_cannot_hold_are_refused_by_file_and_layer() {
    let dir = scratch("refuse");
    let loaded = checkpoint(&dir, 33);
    let out = dir.join("out");
    let first = "model.layers.0.self_attn.q_proj";

    let rotated = quantize(
        &loaded,
        &params(
            Method::Rtn,
            QuantizerSpec::IntAsym {
                bits: 4,
                group_size: Some(32),
            },
            true,
        ),
        &dir.join("rotated.safetensors"),
    );
    let err = refused(&loaded, &rotated, &out);
    assert!(
        err.contains("rotated.safetensors")
            && err.contains(first)
            && err.contains("incoherence")
            && err.contains("rotation"),
        "{err}"
    );

    let sym = quantize(
        &loaded,
        &params(Method::Rtn, QuantizerSpec::IntSym { bits: 4 }, false),
        &dir.join("sym.safetensors"),
    );
    let err = refused(&loaded, &sym, &out);
    assert!(
        err.contains("sym.safetensors") && err.contains(first) && err.contains("half-integer"),
        "{err}"
    );

    let two = quantize(
        &loaded,
        &params(
            Method::Rtn,
            QuantizerSpec::IntAsym {
                bits: 2,
                group_size: Some(32),
            },
            false,
        ),
        &dir.join("int2.safetensors"),
    );
    let err = refused(&loaded, &two, &out);
    assert!(err.contains(first) && err.contains("2-bit"), "{err}");

    // A file of another model.
    let other = checkpoint(&dir, 34);
    let other = Loaded {
        fingerprint: format!("{}-other", other.fingerprint),
        ..other
    };
    let err = refused(&other, &two, &out);
    assert!(
        err.contains("int2.safetensors") && err.contains("different model"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
