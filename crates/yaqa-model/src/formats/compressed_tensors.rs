//! compressed-tensors checkpoints (`yaqa export --format compressed-tensors`): the layout that vLLM
//! loads natively when `config.json` says `"quant_method": "compressed-tensors"`, and that the
//! `compressed-tensors` package (the library behind llm-compressor) decompresses.
//!
//! A quantized file made without incoherence processing holds codes on an unrotated grid, so exporting
//! is a repacking of the codes the method chose, with the file's f32 scales kept as they are (nothing is
//! requantized, and the package's own decompression returns the file's `Ŵ` bit for bit). Two of the
//! package's formats are written (the layout of compressed-tensors 0.20.1, [`LAYOUT_VERSION`]):
//!
//! - **`pack-quantized`**, from the asymmetric INT grid (`int-asym`) at 4 or 8 bits. The package's
//!   integer level of code `c` with zero-point `z` is `scale·(q − zp)` with the signed `q = c − 2^(k−1)`
//!   and `zp = z − 2^(k−1)`, and it packs `q + 2^(k−1)` and `zp + 2^(k−1)`: exactly the file's `c` and `z`.
//!   A row of codes is one little-endian bit stream cut into int32 words (element `i` at stream bits
//!   `k·i .. k·i + k`); at 4 and 8 bits no code straddles a word, so this is also the layout of the
//!   package's versions before dense packing (0.12 and older: `32/k` codes per word). Strategy `group`
//!   when the file has groups of `g < n` columns (`--group G`), `channel` when its groups are whole rows
//!   (the no-incoherence default).
//!
//!   | tensor | dtype | shape | content |
//!   | --- | --- | --- | --- |
//!   | `L.weight_packed` | I32 | `[m, ⌈n·k/32⌉]` | word `(j, w)`, bits `k·f .. k·f + k`: code `c` of `W[j, w·32/k + f]` |
//!   | `L.weight_scale` | F32 | `[m, n/g]` | scale of output `j`, group `t` at `(j, t)` (`n/g = 1` for `channel`) |
//!   | `L.weight_zero_point` | I32 | `[⌈m·k/32⌉, n/g]` | word `(r, t)`, bits `k·f ..`: zero-point `z` of output `r·32/k + f` in group `t` (packed along the outputs) |
//!   | `L.weight_shape` | I64 | `[2]` | `[m, n]` |
//!
//! - **`float-quantized`**, from the FP8 E4M3 quantizers (`fp8`, `fp8-row`, `fp8-tensor`): `L.weight` is
//!   the file's E4M3 bytes as `F8_E4M3 [m, n]` and `L.weight_scale` the file's F32 scales, `[⌈m/128⌉,
//!   ⌈n/128⌉]` for strategy `block` (`block_structure` `[128, 128]`, the last blocks smaller when `m` or
//!   `n` is not a multiple of 128), `[m, 1]` for `channel`, `[1]` for `tensor`; the weight is the
//!   decoded byte times its scale.
//!
//! Refused, naming the file and the layer, before anything is written: rotated layers (the randomized
//! Hadamard rotation of incoherence processing has no place in the format), the symmetric half-integer
//! grid (no integer `q` with `scale·q` gives its levels), E8P and the trellis (codebooks), INT widths
//! other than 4 and 8 (vLLM's kernels take zero-points at 4 and 8 bits only), and layers whose bits,
//! strategy or group size differ from the first layer's (`quantization_config` holds one scheme).

use std::collections::HashSet;
use std::path::Path;

use safetensors::Dtype;
use serde_json::{Value, json};
use yaqa_core::quant::fp8::Fp8Scaling;

use crate::error::{ModelError, Result};
use crate::formats::checkpoint::Loaded;
use crate::formats::hf::{Half, RawTensor, half_tensors, write_json, write_safetensors};
use crate::formats::quant_file::QuantFile;
use crate::transformer::weights::LayerId;

/// The compressed-tensors release whose layout this module writes (pinned in
/// `scripts/compressed-tensors-check.sh`, which decompresses an export with it).
pub const LAYOUT_VERSION: &str = "0.20.1";

/// INT widths written: those vLLM's `pack-quantized` kernels take with zero-points.
pub const INT_BITS: [u32; 2] = [4, 8];

/// The side of an FP8 scale block (`Fp8Scaling::Block`, the `block` strategy).
pub const FP8_BLOCK: usize = 128;

/// The name the export's refusals give the format.
const FORMAT_NAME: &str = "a compressed-tensors checkpoint";

/// The compressed-tensors `format` of an integer export.
pub const PACK_QUANTIZED: &str = "pack-quantized";
/// The compressed-tensors `format` of an FP8 export.
pub const FLOAT_QUANTIZED: &str = "float-quantized";

/// How one layer's weight is stored: the `weights` arguments of the config group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Asymmetric `k`-bit integers, `pack-quantized`; `group_size: None` is the `channel` strategy (one
    /// scale and zero-point per output row).
    Int {
        bits: u32,
        group_size: Option<usize>,
    },
    /// FP8 E4M3 with block, row (`channel`) or tensor scales, `float-quantized`.
    Fp8 { scaling: Fp8Scaling },
}

impl Scheme {
    /// The compressed-tensors `format`.
    pub fn format(self) -> &'static str {
        match self {
            Scheme::Int { .. } => PACK_QUANTIZED,
            Scheme::Fp8 { .. } => FLOAT_QUANTIZED,
        }
    }

    /// The compressed-tensors `strategy`.
    pub fn strategy(self) -> &'static str {
        match self {
            Scheme::Int {
                group_size: Some(_),
                ..
            } => "group",
            Scheme::Int {
                group_size: None, ..
            } => "channel",
            Scheme::Fp8 {
                scaling: Fp8Scaling::Block,
            } => "block",
            Scheme::Fp8 {
                scaling: Fp8Scaling::Row,
            } => "channel",
            Scheme::Fp8 {
                scaling: Fp8Scaling::Tensor,
            } => "tensor",
        }
    }

    /// The `weights` object of the config group (compressed-tensors' `QuantizationArgs`).
    pub fn weights_json(self) -> Value {
        let (num_bits, kind, symmetric, group_size, block) = match self {
            Scheme::Int { bits, group_size } => (bits, "int", false, group_size, None),
            Scheme::Fp8 { scaling } => (
                8,
                "float",
                true,
                None,
                (scaling == Fp8Scaling::Block).then_some([FP8_BLOCK, FP8_BLOCK]),
            ),
        };
        json!({
            "num_bits": num_bits,
            "type": kind,
            "symmetric": symmetric,
            "group_size": group_size,
            "strategy": self.strategy(),
            "block_structure": block,
            "dynamic": false,
            "actorder": null,
            "observer": "minmax",
            "observer_kwargs": {},
        })
    }

    /// A short description for reports: `int4 asymmetric, group 128`, `fp8 e4m3, block 128×128`.
    pub fn describe(self) -> String {
        match self {
            Scheme::Int {
                bits,
                group_size: Some(g),
            } => format!("int{bits} asymmetric, group {g}"),
            Scheme::Int {
                bits,
                group_size: None,
            } => format!("int{bits} asymmetric, per channel"),
            Scheme::Fp8 { scaling } => match scaling {
                Fp8Scaling::Block => format!("fp8 e4m3, block {FP8_BLOCK}×{FP8_BLOCK}"),
                Fp8Scaling::Row => "fp8 e4m3, per channel".into(),
                Fp8Scaling::Tensor => "fp8 e4m3, per tensor".into(),
            },
        }
    }
}

/// int32 words holding `cols` values of `bits` bits: `⌈cols·k/32⌉`, or `None` on overflow.
pub fn words_per_row(cols: usize, bits: u32) -> Option<usize> {
    cols.checked_mul(bits as usize).map(|b| b.div_ceil(32))
}

// A word is built as u32 and stored as the int32 with the same bits (two's complement), as torch stores
// the package's int32 words.
fn to_word(bits: u32) -> i32 {
    i32::from_ne_bytes(bits.to_ne_bytes())
}

fn from_word(word: i32) -> u32 {
    u32::from_ne_bytes(word.to_ne_bytes())
}

/// Packs each row of the `rows × cols` values (each below `2^k`) as compressed-tensors' `pack_to_int32`
/// does along dimension 1: the row is one little-endian bit stream (value `i` at stream bits
/// `k·i .. k·i + k`, least significant first) cut into int32 words, the last word's unused high bits zero.
///
/// **Shapes**: `values` is `rows × cols` row-major; the result is `rows × ⌈cols·k/32⌉`. **Errors**: `bits`
/// outside `1..=8`, a length that is not `rows·cols`, a value of `2^k` or more.
pub fn pack_rows(values: &[u8], rows: usize, cols: usize, bits: u32) -> Result<Vec<i32>> {
    if !(1..=8).contains(&bits) {
        return Err(ModelError::Input(format!(
            "compressed-tensors packing of {bits}-bit values: widths 1..=8 are packed"
        )));
    }
    let words = words_per_row(cols, bits)
        .filter(|_| rows.checked_mul(cols) == Some(values.len()))
        .ok_or_else(|| {
            ModelError::Input(format!(
                "compressed-tensors packing: {} values are not {rows} rows of {cols}",
                values.len()
            ))
        })?;
    if let Some(&v) = values.iter().find(|&&v| u32::from(v) >> bits != 0) {
        return Err(ModelError::Input(format!(
            "compressed-tensors packing: value {v} does not fit {bits} bits"
        )));
    }
    let k = bits as usize;
    let mut out = vec![0u32; rows * words];
    for (row, packed) in values
        .chunks_exact(cols.max(1))
        .zip(out.chunks_exact_mut(words.max(1)))
    {
        for (i, &v) in row.iter().enumerate() {
            let bit = k * i;
            let (w, offset) = (bit / 32, bit % 32);
            packed[w] |= u32::from(v) << offset;
            // A value that straddles two words (never at 4 or 8 bits) continues in the next one.
            if offset + k > 32 {
                packed[w + 1] |= u32::from(v) >> (32 - offset);
            }
        }
    }
    Ok(out.into_iter().map(to_word).collect())
}

/// Inverse of [`pack_rows`]: the `rows × cols` values.
///
/// **Errors**: `bits` outside `1..=8`, a length that is not `rows·⌈cols·k/32⌉`.
pub fn unpack_rows(words: &[i32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u8>> {
    if !(1..=8).contains(&bits) {
        return Err(ModelError::Input(format!(
            "compressed-tensors unpacking of {bits}-bit values: widths 1..=8 are packed"
        )));
    }
    let per_row = words_per_row(cols, bits)
        .filter(|&w| rows.checked_mul(w) == Some(words.len()))
        .ok_or_else(|| {
            ModelError::Input(format!(
                "compressed-tensors unpacking: {} words are not {rows} rows of {cols} {bits}-bit values",
                words.len()
            ))
        })?;
    let k = bits as usize;
    let mask = (1u64 << k) - 1;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        let row = &words[r * per_row..(r + 1) * per_row];
        for i in 0..cols {
            let bit = k * i;
            let (w, offset) = (bit / 32, bit % 32);
            let mut pair = u64::from(from_word(row[w]));
            if w + 1 < per_row {
                pair |= u64::from(from_word(row[w + 1])) << 32;
            }
            // At most 8 bits after the mask.
            out[r * cols + i] = ((pair >> offset) & mask) as u8;
        }
    }
    Ok(out)
}

/// Packs zero-points as compressed-tensors' `pack_to_int32(.., packed_dim=0)`: the `m × groups` values
/// transposed, each group's `m` zero-points packed as one row ([`pack_rows`]), transposed back.
///
/// **Shapes**: `zeros` is `m × groups` row-major (the quantized file's layout); the result is
/// `⌈m·k/32⌉ × groups` row-major. **Errors**: as [`pack_rows`].
pub fn pack_columns(zeros: &[u8], m: usize, groups: usize, bits: u32) -> Result<Vec<i32>> {
    if m.checked_mul(groups) != Some(zeros.len()) {
        return Err(ModelError::Input(format!(
            "compressed-tensors zero-points: {} values are not {m} × {groups}",
            zeros.len()
        )));
    }
    let transposed: Vec<u8> = (0..groups)
        .flat_map(|t| (0..m).map(move |j| zeros[j * groups + t]))
        .collect();
    let packed = pack_rows(&transposed, groups, m, bits)?;
    let words = packed.len() / groups.max(1);
    Ok((0..words)
        .flat_map(|r| (0..groups).map(move |t| (r, t)))
        .map(|(r, t)| packed[t * words + r])
        .collect())
}

/// One linear layer in compressed-tensors layout.
#[derive(Clone, Debug, PartialEq)]
pub struct CtLayer {
    /// Output features.
    pub m: usize,
    /// Input features.
    pub n: usize,
    pub scheme: Scheme,
    /// The layer's tensors, without the module prefix (`weight_packed`, `weight_scale`, ...).
    pub tensors: Vec<(&'static str, RawTensor)>,
}

fn i32_tensor(shape: Vec<usize>, values: &[i32]) -> RawTensor {
    RawTensor {
        dtype: Dtype::I32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The header entry's `m` and `n`: positive integers that fit `usize`.
fn dims(quant: &QuantFile, name: &str) -> Result<(usize, usize)> {
    let e = &quant.header["layers"][name];
    let dim = |k: &str| {
        e[k].as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                ModelError::format(
                    quant.file.path(),
                    format!("{name}: header field {k:?} is missing or not a positive size"),
                )
            })
    };
    Ok((dim("m")?, dim("n")?))
}

impl CtLayer {
    /// Repacks layer `id` of a quantized file.
    ///
    /// **Errors** ([`ModelError::NotExportable`], naming the file and the layer): a layer missing from the
    /// file, incoherence processing, the symmetric grid, E8P, the trellis, INT bits outside [`INT_BITS`],
    /// a scale that is not finite and positive, an FP8 NaN byte; malformed tensors and header fields
    /// ([`ModelError::BadFormat`] and friends, naming the file and the tensor).
    pub fn from_quant_file(quant: &QuantFile, id: LayerId) -> Result<Self> {
        let name = id.name();
        let path = quant.file.path();
        let refuse = |why: String| ModelError::NotExportable {
            path: path.to_path_buf(),
            layer: name.clone(),
            format: FORMAT_NAME,
            why,
        };
        let e = &quant.header["layers"][&name];
        if e.is_null() {
            return Err(refuse(
                "not in the file; the checkpoint's config group targets every linear layer".into(),
            ));
        }
        let (m, n) = dims(quant, &name)?;
        if e["incoherence"].as_bool() != Some(false) {
            return Err(refuse(
                "quantized with incoherence processing: its codes are of the rotated W_r = R_m·diag(s_out)·W·\
                 diag(s_in)·R_nᵀ, and compressed-tensors has no way to express that rotation, so a loader \
                 would compute with the wrong weights; quantize with --no-incoherence"
                    .into(),
            ));
        }
        let q = &e["quantizer"];
        let bits = q["bits"].as_u64().and_then(|b| u32::try_from(b).ok());
        let scheme = match q["kind"].as_str() {
            Some("int-asym") => {
                let bits = bits.ok_or_else(|| {
                    ModelError::format(path, format!("{name}: quantizer bits missing"))
                })?;
                if !INT_BITS.contains(&bits) {
                    return Err(refuse(format!(
                        "{bits}-bit codes; compressed-tensors checkpoints are written for {INT_BITS:?} \
                         bits, the widths vLLM's pack-quantized kernels take with zero-points"
                    )));
                }
                let group = q["group_size"]
                    .as_u64()
                    .and_then(|g| usize::try_from(g).ok())
                    .filter(|&g| g > 0 && n.is_multiple_of(g))
                    .ok_or_else(|| {
                        ModelError::format(
                            path,
                            format!(
                                "{name}: quantizer group_size {} does not divide n = {n}",
                                q["group_size"]
                            ),
                        )
                    })?;
                Scheme::Int {
                    bits,
                    group_size: (group < n).then_some(group),
                }
            }
            Some("fp8-e4m3") => {
                let scaling = q["scaling"]
                    .as_str()
                    .and_then(Fp8Scaling::parse)
                    .ok_or_else(|| {
                        ModelError::format(
                            path,
                            format!(
                                "{name}: quantizer scaling {} is not one of \"b128\", \"row\", \"tensor\"",
                                q["scaling"]
                            ),
                        )
                    })?;
                Scheme::Fp8 { scaling }
            }
            Some("int-sym") => {
                return Err(refuse(
                    "symmetric half-integer grid (levels (c − (2^k − 1)/2)·scale, no zero level): \
                     compressed-tensors' levels are scale·q for integer q, which cannot hold it; \
                     quantize with --no-incoherence (asymmetric grid per row) or --group G"
                        .into(),
                ));
            }
            Some("e8p") => {
                return Err(refuse(
                    "E8P lattice codebook (codes of 8 weights); compressed-tensors holds scalar grids: \
                     quantize with --quantizer int4 or int8 (or fp8) and --no-incoherence"
                        .into(),
                ));
            }
            Some("trellis") => {
                return Err(refuse(
                    "QTIP trellis (one walk per 16 × 16 tile); compressed-tensors holds scalar grids: \
                     quantize with --quantizer int4 or int8 (or fp8) and --no-incoherence"
                        .into(),
                ));
            }
            other => return Err(refuse(format!("unknown quantizer kind {other:?}"))),
        };

        // Unpacked from the file's bit-packed rows, checked against m, n and code_bits.
        let codes = quant.codes(id)?;
        let codes: Vec<u8> = codes
            .into_iter()
            .map(u8::try_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| refuse("codes above 255".into()))?;
        let positive = |tensor: &str, scales: &[f32]| -> Result<()> {
            match scales.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
                None => Ok(()),
                Some(at) => Err(ModelError::format(
                    path,
                    format!(
                        "{tensor}: scale {} at index {at} is not finite and positive",
                        scales[at]
                    ),
                )),
            }
        };
        let shape_tensor = RawTensor {
            dtype: Dtype::I64,
            shape: vec![2],
            bytes: [m as i64, n as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let tensors = match scheme {
            Scheme::Int { bits, group_size } => {
                let groups = n / group_size.unwrap_or(n);
                let scale_name = format!("{name}.scales");
                let scales = quant.f32s(&scale_name, &[m, groups])?;
                positive(&scale_name, &scales)?;
                let zeros = quant.u8s(&format!("{name}.zeros"), &[m, groups])?;
                if let Some(at) = zeros.iter().position(|&z| u32::from(z) >> bits != 0) {
                    return Err(ModelError::format(
                        path,
                        format!(
                            "{name}.zeros: zero-point {} of output {}, group {} is outside the {bits}-bit grid",
                            zeros[at],
                            at / groups,
                            at % groups
                        ),
                    ));
                }
                let packed = pack_rows(&codes, m, n, bits)?;
                let packed_zeros = pack_columns(&zeros, m, groups, bits)?;
                // Sizes checked by the packers above.
                let words = packed.len() / m;
                let zero_words = packed_zeros.len() / groups;
                vec![
                    ("weight_packed", i32_tensor(vec![m, words], &packed)),
                    ("weight_scale", RawTensor::f32s(vec![m, groups], &scales)),
                    (
                        "weight_zero_point",
                        i32_tensor(vec![zero_words, groups], &packed_zeros),
                    ),
                    ("weight_shape", shape_tensor),
                ]
            }
            Scheme::Fp8 { scaling } => {
                let (sr, sc) = scaling.scale_shape(m, n);
                let scale_name = format!("{name}.scales");
                let scales = quant.f32s(&scale_name, &[sr, sc])?;
                positive(&scale_name, &scales)?;
                // E4M3's NaN bytes are never written: the rounding saturates at ±448.
                if let Some(at) = codes.iter().position(|&c| c & 0x7F == 0x7F) {
                    return Err(refuse(format!(
                        "code {:#04x} at row {}, column {} is an FP8 NaN, which no rounding writes",
                        codes[at],
                        at / n,
                        at % n
                    )));
                }
                let scale_shape = match scaling {
                    Fp8Scaling::Tensor => vec![1],
                    Fp8Scaling::Row | Fp8Scaling::Block => vec![sr, sc],
                };
                vec![
                    (
                        "weight",
                        RawTensor {
                            dtype: Dtype::F8_E4M3,
                            shape: vec![m, n],
                            bytes: codes,
                        },
                    ),
                    ("weight_scale", RawTensor::f32s(scale_shape, &scales)),
                ]
            }
        };
        Ok(Self {
            m,
            n,
            scheme,
            tensors,
        })
    }

    /// The layer's tensors under `module` (`model.layers.3.mlp.up_proj`).
    pub fn named_tensors(self, module: &str) -> Vec<(String, RawTensor)> {
        self.tensors
            .into_iter()
            .map(|(suffix, t)| (format!("{module}.{suffix}"), t))
            .collect()
    }
}

/// The `quantization_config` object: one config group targeting every `Linear` but the head, weights
/// only (`input_activations: null`, so vLLM picks its weight-only kernels: WNA16 for `pack-quantized`,
/// W8A16 FP8 for `float-quantized`), already compressed.
pub fn quantization_config(scheme: Scheme) -> Value {
    json!({
        "quant_method": "compressed-tensors",
        "format": scheme.format(),
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": scheme.weights_json(),
                "input_activations": null,
                "output_activations": null,
                "format": scheme.format(),
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
        "sparsity_config": {},
        "transform_config": {},
    })
}

/// What [`write_compressed_tensors`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct CtSummary {
    pub scheme: Scheme,
    /// Quantized linear layers written.
    pub layers: usize,
    /// For `block` FP8: the first layer whose 128 × 128 blocks are cut at its edges (vLLM refuses such
    /// blocks in a merged projection such as q/k/v or gate/up), with its shape.
    pub partial_blocks: Option<(String, usize, usize)>,
}

/// Writes `dir` as a compressed-tensors Hugging Face folder: `model.safetensors` (every quantized linear
/// layer in the scheme's tensors, every other tensor of the original model, biases included, in
/// bfloat16) and `config.json` (`torch_dtype` and `dtype` `bfloat16`, and `quantization_config`). Every
/// layer is checked and packed before anything is written, and each file is written to a temporary name
/// and renamed, so a refused export leaves the folder as it was.
///
/// **Errors**: a file quantized from another model; a layer of the model missing from the file or one
/// beyond it; any refusal of [`CtLayer::from_quant_file`]; layers whose scheme differs from the first
/// layer's (the config has one); I/O.
pub fn write_compressed_tensors(
    original: &Loaded,
    quant: &QuantFile,
    dir: &Path,
) -> Result<CtSummary> {
    let qpath = quant.file.path();
    let model = &original.model;
    let ids = quant.layers_of(original)?;
    let mut packed = Vec::with_capacity(ids.len());
    for &id in &ids {
        let layer = CtLayer::from_quant_file(quant, id)?;
        quant.check_layer_shape(id, (layer.m, layer.n), id.kind.shape(&model.config))?;
        packed.push((id, layer));
    }
    // A group as long as its layer's rows is one group per channel: such a layer (`--group 128` on a
    // layer of 128 inputs) belongs to the model's group scheme, as compressed-tensors reads it.
    let model_group = packed.iter().find_map(|(_, l)| match l.scheme {
        Scheme::Int {
            group_size: Some(g),
            ..
        } => Some(g),
        _ => None,
    });
    for (_, layer) in &mut packed {
        if let (
            Scheme::Int {
                bits,
                group_size: None,
            },
            Some(g),
        ) = (layer.scheme, model_group)
            && layer.n == g
        {
            layer.scheme = Scheme::Int {
                bits,
                group_size: Some(g),
            };
        }
    }
    let mut summary: Option<CtSummary> = None;
    for (id, layer) in &packed {
        let id = *id;
        let s = summary.get_or_insert(CtSummary {
            scheme: layer.scheme,
            layers: 0,
            partial_blocks: None,
        });
        if layer.scheme != s.scheme {
            return Err(ModelError::NotExportable {
                path: qpath.to_path_buf(),
                layer: id.name(),
                format: FORMAT_NAME,
                why: format!(
                    "{} differs from the first layer's {}; quantization_config holds one scheme",
                    layer.scheme.describe(),
                    s.scheme.describe()
                ),
            });
        }
        let cut = !layer.m.is_multiple_of(FP8_BLOCK) || !layer.n.is_multiple_of(FP8_BLOCK);
        if layer.scheme
            == (Scheme::Fp8 {
                scaling: Fp8Scaling::Block,
            })
            && cut
            && s.partial_blocks.is_none()
        {
            s.partial_blocks = Some((id.name(), layer.m, layer.n));
        }
        s.layers += 1;
    }
    let Some(summary) = summary else {
        return Err(ModelError::format(qpath, "the model has no linear layers"));
    };

    let quantized: HashSet<String> = ids.iter().map(|id| id.kind.hf_name(id.block)).collect();
    let mut tensors = half_tensors(model, Half::Bf16, |name| quantized.contains(name))?;
    for (id, layer) in packed {
        tensors.extend(layer.named_tensors(&id.name()));
    }

    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(&dir.join("model.safetensors"), &tensors, "format", "pt")?;
    let mut config = model.config.to_hf_json_as("bfloat16");
    if let Value::Object(o) = &mut config {
        o.insert(
            "quantization_config".into(),
            quantization_config(summary.scheme),
        );
    }
    write_json(&dir.join("config.json"), &config)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_bytes(seed: u64, len: usize, below: u32) -> Vec<u8> {
        let mut rng = yaqa_core::Rng::derive(seed, "compressed-tensors-test");
        (0..len)
            .map(|_| rng.below(u64::from(below)) as u8)
            .collect()
    }

    /// Words worked out by hand from the package's `pack_to_int32`: 4-bit values `0..8` of one row fill one
    /// word with value `i` at bits `4i`; 8-bit values take a word per four; a ninth 4-bit value starts a
    /// second word, whose unused bits stay zero.
    #[test]
    fn hand_computed_words() {
        let values: Vec<u8> = (0..8).collect();
        assert_eq!(
            pack_rows(&values, 1, 8, 4).unwrap(),
            vec![0x7654_3210u32 as i32]
        );
        assert_eq!(
            pack_rows(&[0x01, 0x02, 0x03, 0xFF], 1, 4, 8).unwrap(),
            vec![0xFF03_0201u32 as i32]
        );
        let values: Vec<u8> = (0..9).map(|i| 15 - i).collect();
        assert_eq!(
            pack_rows(&values, 1, 9, 4).unwrap(),
            vec![0x89AB_CDEFu32 as i32, 0x0000_0007]
        );
        // Two rows start two word rows; zero-points pack down the outputs: output j of group t in field
        // j mod 8 of word (j / 8, t).
        let zeros: Vec<u8> = (0..16).collect(); // 8 outputs × 2 groups
        let packed = pack_columns(&zeros, 8, 2, 4).unwrap();
        // Group 0 holds outputs' zeros 0, 2, 4, ..., 14; group 1 holds 1, 3, ..., 15.
        assert_eq!(packed, vec![0xECA8_6420u32 as i32, 0xFDB9_7531u32 as i32]);
    }

    #[test]
    fn pack_then_unpack_is_exact_including_straddling_widths() {
        for (bits, rows, cols) in [(4, 5, 24), (8, 3, 13), (3, 4, 23), (2, 2, 17), (5, 3, 40)] {
            let values = random_bytes(u64::from(bits), rows * cols, 1 << bits);
            let words = pack_rows(&values, rows, cols, bits).unwrap();
            assert_eq!(words.len(), rows * (cols * bits as usize).div_ceil(32));
            assert_eq!(unpack_rows(&words, rows, cols, bits).unwrap(), values);
            // The packed row is the little-endian bit stream of its values.
            let row_bytes: Vec<u8> = words[..words.len() / rows]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            for (i, &v) in values[..cols].iter().enumerate() {
                let mut got = 0u8;
                for b in 0..bits as usize {
                    let bit = bits as usize * i + b;
                    got |= ((row_bytes[bit / 8] >> (bit % 8)) & 1) << b;
                }
                assert_eq!(got, v, "{bits} bits, value {i}");
            }
        }
    }

    #[test]
    fn packers_refuse_what_does_not_fit() {
        assert!(pack_rows(&[16], 1, 1, 4).is_err(), "value above the grid");
        assert!(pack_rows(&[0; 5], 2, 3, 4).is_err(), "length");
        assert!(pack_rows(&[0; 4], 1, 4, 9).is_err(), "width");
        assert!(unpack_rows(&[0; 3], 2, 9, 4).is_err(), "word count");
        assert!(pack_columns(&[0; 5], 2, 3, 4).is_err(), "zero-point count");
    }

    #[test]
    fn config_names_the_scheme_vllm_selects() {
        let qc = quantization_config(Scheme::Int {
            bits: 4,
            group_size: Some(128),
        });
        assert_eq!(qc["quant_method"], "compressed-tensors");
        assert_eq!(qc["format"], "pack-quantized");
        let w = &qc["config_groups"]["group_0"]["weights"];
        assert_eq!(
            (&w["num_bits"], &w["type"], &w["symmetric"], &w["strategy"]),
            (&json!(4), &json!("int"), &json!(false), &json!("group"))
        );
        assert_eq!(w["group_size"], 128);
        assert!(qc["config_groups"]["group_0"]["input_activations"].is_null());
        let qc = quantization_config(Scheme::Fp8 {
            scaling: Fp8Scaling::Block,
        });
        let w = &qc["config_groups"]["group_0"]["weights"];
        assert_eq!(qc["format"], "float-quantized");
        assert_eq!(
            (&w["type"], &w["strategy"], &w["block_structure"]),
            (&json!("float"), &json!("block"), &json!([128, 128]))
        );
        let channel = Scheme::Int {
            bits: 8,
            group_size: None,
        };
        assert_eq!(channel.weights_json()["strategy"], "channel");
        assert!(channel.weights_json()["group_size"].is_null());
    }
}
