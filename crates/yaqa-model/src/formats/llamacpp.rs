//! `export --format gguf`: a quantized file whose layers were rounded onto llama.cpp's own block grids
//! (`quantize --quantizer q8_0|q4_0|q4_1|q5_0|q4_k --no-incoherence`, any method) repacked, bit for bit,
//! into a GGUF file that llama.cpp loads.
//!
//! Every linear layer becomes the tensor llama.cpp names it (`blk.N.attn_q.weight`, …,
//! `blk.N.ffn_down.weight`) in ggml's block layout ([`encode_blocks`]), rows of `attn_q`/`attn_k` in
//! llama.cpp's permuted order ([`hf_row_of`]). From a GGUF original everything else comes unchanged: the
//! metadata (architecture, sizes, RoPE, norms' epsilon, the whole tokenizer) but for `general.file_type`,
//! `general.quantization_version` and `general.alignment`, which are rewritten, and the bytes of every
//! tensor that is not a quantized linear layer (norms, the token embedding, an untied `output`), so the
//! exported model differs from the original in the quantized layers only, exactly as the model `yaqa
//! eval` measures does. From a Hugging Face folder the metadata is built from `config.json` and
//! `tokenizer.json` as llama.cpp's converter builds it ([`gguf_from_hf`]) and the other tensors are
//! written with their values exact (F16 where that holds them, else F32).

use std::collections::HashMap;

use half::f16;
use yaqa_core::layer::FittedQuantizer;
use yaqa_core::quant::ggml::{BLOCK, GgmlBlocks, GgmlFormat, kquant};

use crate::error::{ModelError, Result};
use crate::formats::checkpoint::Loaded;
use crate::formats::gguf::{GgufFile, GgufValue, gguf_to_hf_name, hf_row_of, hf_to_gguf_name};
use crate::formats::gguf_from_hf;
use crate::formats::gguf_writer::{TensorOut, write_gguf};
use crate::formats::quant_file::QuantFile;
use crate::transformer::weights::{LayerId, LinearKind};

/// The GGUF keys llama.cpp needs for `general.architecture = llama` (beyond the tokenizer's, checked
/// below), which must be in the original's metadata.
pub const REQUIRED_KEYS: [&str; 9] = [
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.model",
];

/// llama.cpp's `llama_ftype` of a file whose linear layers are mostly `format` (`LLAMA_FTYPE_MOSTLY_*`).
pub fn file_type(format: GgmlFormat) -> u32 {
    match format {
        GgmlFormat::Q4_0 => 2,
        GgmlFormat::Q4_1 => 3,
        GgmlFormat::Q8_0 => 7,
        GgmlFormat::Q5_0 => 8,
        // LLAMA_FTYPE_MOSTLY_Q4_K_S, what llama-quantize calls a file of Q4_K with its Q5_0 fallbacks.
        GgmlFormat::Q4_K => 14,
    }
}

/// One layer ready to write: its block format, `(m, n)` and ggml blocks in GGUF row order.
type Encoded = (GgmlFormat, (usize, usize), Vec<u8>);

/// What [`write_llamacpp`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufSummary {
    /// The block format of the linear layers (`q4_k` when any layer has it, as llama-quantize names a
    /// `Q4_K` file with `Q5_0` fallbacks; else the first layer's).
    pub format: GgmlFormat,
    /// Linear layers written from the quantized file.
    pub layers: usize,
    /// Tensors that are not quantized layers: copied from a GGUF original, written exactly from an HF one.
    pub copied: usize,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Encodes one layer's codes and grids as ggml blocks, rows in GGUF order: row `r` of the result is row
/// `hf_row(r)` of the layer (`m × n`, codes as [`GgmlBlocks`] writes them). The layouts are ggml's
/// `block_q8_0`, `block_q4_0`, `block_q4_1`, `block_q5_0` (float16 `d`, then the fifth bits of the 32
/// codes as one little-endian `u32`, then the low nibbles, code `j` and `j + 16` sharing a byte) and
/// `block_q4_K` (float16 `d` and `dmin`, the 12 bytes of [`kquant::pack_scales`], then 128 bytes in which
/// each run of 64 codes puts its first 32 in the low nibbles and its last 32 in the high ones).
pub fn encode_blocks(
    q: &GgmlBlocks,
    codes: &[u16],
    (m, n): (usize, usize),
    hf_row: impl Fn(usize) -> usize,
) -> Vec<u8> {
    let format = q.format();
    let per = format.block();
    let mut out = Vec::with_capacity(m * (n / per) * format.block_bytes());
    let half = |x: f32| f16::from_f32(x).to_le_bytes();
    // Codes `j` and `j + len/2` of `c` share byte `j`, low nibble first.
    let nibbles = |out: &mut Vec<u8>, c: &[u16]| {
        let h = c.len() / 2;
        out.extend((0..h).map(|j| (c[j] as u8 & 0x0F) | ((c[j + h] as u8 & 0x0F) << 4)));
    };
    for r in 0..m {
        let src = hf_row(r);
        let row = &codes[src * n..(src + 1) * n];
        for (b, c) in row.chunks_exact(per).enumerate() {
            match format {
                GgmlFormat::Q8_0 => {
                    out.extend_from_slice(&half(q.scales().at(src, b)));
                    out.extend(c.iter().map(|&v| v as u8));
                }
                GgmlFormat::Q4_0 | GgmlFormat::Q4_1 => {
                    out.extend_from_slice(&half(q.scales().at(src, b)));
                    if let Some(mins) = q.mins() {
                        out.extend_from_slice(&half(mins.at(src, b)));
                    }
                    nibbles(&mut out, c);
                }
                GgmlFormat::Q5_0 => {
                    out.extend_from_slice(&half(q.scales().at(src, b)));
                    let qh = c
                        .iter()
                        .enumerate()
                        .fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j));
                    out.extend_from_slice(&qh.to_le_bytes());
                    nibbles(&mut out, c);
                }
                GgmlFormat::Q4_K => {
                    let k = q.k_scales().expect("Q4_K grids carry their K scales");
                    out.extend_from_slice(&half(k.d.at(src, b)));
                    out.extend_from_slice(&half(k.dmin.at(src, b)));
                    let six = |m: &yaqa_core::mat::Mat<f32>| -> [u8; 8] {
                        std::array::from_fn(|j| m.at(src, 8 * b + j) as u8)
                    };
                    out.extend_from_slice(&kquant::pack_scales(&six(&k.sc), &six(&k.m)));
                    for run in c.chunks_exact(64) {
                        nibbles(&mut out, run);
                    }
                }
            }
        }
    }
    out
}

/// Writes `quant` (made from `original`, a GGUF file or a Hugging Face folder) as the llama.cpp GGUF file
/// `out`. Every layer is
/// checked and encoded before anything is written, and the file goes to a temporary name that is
/// renamed, so a refused export leaves nothing behind.
///
/// **Errors**: the original not a GGUF file, or not `general.architecture = llama`, or missing one of
/// [`REQUIRED_KEYS`] or `tokenizer.ggml.tokens`; a file quantized from another model; a layer of the
/// model missing from the file or one beyond it; a layer quantized with incoherence processing, or on a
/// grid that is not one of llama.cpp's (both [`ModelError::NotExportable`], naming the layer); malformed
/// tensors of the quantized file (named); I/O.
pub fn write_llamacpp(
    original: &Loaded,
    quant: &QuantFile,
    out: &std::path::Path,
) -> Result<GgufSummary> {
    let qpath = quant.file.path();
    let ids = quant.layers_of(original)?;
    let config = &original.model.config;
    let refuse = |id: &LayerId, why: String| ModelError::NotExportable {
        path: qpath.to_path_buf(),
        layer: id.name(),
        format: "a llama.cpp GGUF file",
        why,
    };
    // Every layer checked and encoded before anything is written.
    let mut blocks: HashMap<String, Encoded> = HashMap::new();
    let mut first = None;
    for &id in &ids {
        let e = &quant.header["layers"][id.name()];
        if e.is_null() {
            return Err(refuse(
                &id,
                "not in the file; the GGUF file needs every linear layer quantized".into(),
            ));
        }
        if e["incoherence"].as_bool() != Some(false) {
            return Err(refuse(
                &id,
                "quantized with incoherence processing (a Hadamard rotation), which llama.cpp cannot \
                 undo; quantize with --quantizer q4_0 (or q8_0, q4_1, q5_0, q4_k) --no-incoherence"
                    .into(),
            ));
        }
        let FittedQuantizer::Ggml(q) = quant.quantizer(id)? else {
            return Err(refuse(
                &id,
                format!(
                    "quantizer {} is not one of llama.cpp's block grids; quantize with --quantizer \
                     q4_0 (or q8_0, q4_1, q5_0, q4_k) --no-incoherence",
                    e["quantizer"]
                ),
            ));
        };
        let codes = quant.checked_codes(id, &FittedQuantizer::Ggml(q.clone()))?;
        let (m, n) = id.kind.shape(config);
        let (qm, nb) = q.scales().shape();
        quant.check_layer_shape(id, (qm, nb * BLOCK), (m, n))?;
        let hf_row: Box<dyn Fn(usize) -> usize> = match id.kind {
            LinearKind::Q | LinearKind::K => Box::new(|r| hf_row_of(r, config.head_dim)),
            _ => Box::new(|r| r),
        };
        let bytes = encode_blocks(&q, &codes, (m, n), hf_row);
        if first.is_none_or(|f| q.format() == GgmlFormat::Q4_K && f != q.format()) {
            first = Some(q.format());
        }
        blocks.insert(format!("{}.weight", id.name()), (q.format(), (m, n), bytes));
    }
    let Some(format) = first else {
        return Err(ModelError::format(qpath, "the model has no linear layers"));
    };

    let from_hf = original.path.is_dir();
    let (mut metadata, tensors, copied) = if from_hf {
        from_hf_folder(original, &mut blocks)?
    } else {
        from_gguf(original, &mut blocks)?
    };
    if let Some(left) = blocks.keys().next() {
        return Err(ModelError::MissingTensor {
            path: original.path.clone(),
            tensor: left.clone(),
        });
    }
    metadata.extend([
        (
            "general.file_type".into(),
            GgufValue::U32(file_type(format)),
        ),
        ("general.quantization_version".into(), GgufValue::U32(2)),
        (
            "general.quantized_by".into(),
            GgufValue::String(format!("yaqa {}", env!("CARGO_PKG_VERSION"))),
        ),
        (
            "yaqa.method".into(),
            GgufValue::String(quant.header["method"].as_str().unwrap_or("?").into()),
        ),
    ]);
    // The reader's map is sorted by key; llama.cpp looks keys up by name, so the order is free.
    write_gguf(out, &metadata, &tensors)?;
    let bytes = std::fs::metadata(out)
        .map_err(|e| ModelError::io(out, e))?
        .len();
    Ok(GgufSummary {
        format,
        layers: ids.len(),
        copied,
        bytes,
    })
}

/// A quantized layer's blocks by its Hugging Face weight name, removed as they are placed.
type Blocks = HashMap<String, Encoded>;

/// The file's metadata, its tensors in order, and how many of those were not quantized layers.
type Assembled = (Vec<(String, GgufValue)>, Vec<TensorOut>, usize);

/// The GGUF original's metadata (less the keys the export rewrites) and its tensors, the quantized
/// linear layers in place of its own: `(metadata, tensors, tensors copied)`.
fn from_gguf(original: &Loaded, blocks: &mut Blocks) -> Result<Assembled> {
    let gguf = GgufFile::open(&original.path)?;
    for key in REQUIRED_KEYS.iter().chain(&["tokenizer.ggml.tokens"]) {
        if gguf.get(key).is_none() {
            crate::bail!(
                "--format gguf: {} has no metadata {key}, which llama.cpp needs",
                original.path.display()
            );
        }
    }
    if gguf.get("general.architecture").and_then(GgufValue::as_str) != Some("llama") {
        crate::bail!(
            "--format gguf: {} has general.architecture = {:?}; the export writes llama models",
            original.path.display(),
            gguf.get("general.architecture")
        );
    }
    let mut tensors = Vec::with_capacity(gguf.tensors.len());
    let mut copied = 0;
    for t in &gguf.tensors {
        let hf = gguf_to_hf_name(&t.name);
        match hf.as_ref().and_then(|hf| blocks.remove(hf)) {
            Some((format, (m, n), bytes)) => {
                if t.dims != [n as u64, m as u64] {
                    return Err(ModelError::ShapeMismatch {
                        path: original.path.clone(),
                        tensor: t.name.clone(),
                        expected: vec![m, n],
                        found: t.shape(),
                    });
                }
                tensors.push(TensorOut {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    type_id: format.type_id(),
                    bytes,
                });
            }
            None => {
                let (_, bytes) = gguf.raw(&t.name)?;
                copied += 1;
                tensors.push(TensorOut {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    type_id: t.type_id,
                    bytes: bytes.to_vec(),
                });
            }
        }
    }
    let rewritten = [
        "general.alignment",
        "general.file_type",
        "general.quantization_version",
        "general.quantized_by",
        "yaqa.method",
    ];
    let metadata = gguf
        .metadata
        .iter()
        .filter(|(k, _)| !rewritten.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((metadata, tensors, copied))
}

/// A Hugging Face original's metadata built from `config.json`, `tokenizer.json` (and
/// `tokenizer_config.json`) as llama.cpp's converter writes it, and its tensors in GGUF order and
/// naming, the quantized linear layers in place: `(metadata, tensors, tensors written dense)`.
fn from_hf_folder(original: &Loaded, blocks: &mut Blocks) -> Result<Assembled> {
    let config = &original.model.config;
    let tokenizer = original.path.join("tokenizer.json");
    if !tokenizer.is_file() {
        crate::bail!(
            "--format gguf: the Hugging Face original {} has no tokenizer.json, which the GGUF file \
             carries as its tokenizer.ggml.* vocabulary",
            original.path.display()
        );
    }
    let name = original
        .path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let mut metadata = gguf_from_hf::llama_metadata(config, &name)?;
    metadata.extend(gguf_from_hf::tokenizer_metadata(&tokenizer, config)?);
    let mut tensors = Vec::new();
    let mut dense = 0;
    for (hf, shape, data) in original.model.hf_tensors()? {
        let Some(gname) = hf_to_gguf_name(&hf) else {
            crate::bail!(
                "--format gguf: {} has tensor {hf}, which has no llama.cpp name",
                original.path.display()
            );
        };
        match blocks.remove(&hf) {
            Some((format, (m, n), bytes)) => tensors.push(TensorOut {
                name: gname,
                dims: vec![n as u64, m as u64],
                type_id: format.type_id(),
                bytes,
            }),
            None => {
                dense += 1;
                tensors.push(gguf_from_hf::dense_tensor(gname, &shape, data));
            }
        }
    }
    Ok((metadata, tensors, dense))
}
