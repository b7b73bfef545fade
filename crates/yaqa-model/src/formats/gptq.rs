//! GPTQ-format Hugging Face checkpoints (`yaqa export --format gptq`): the packed layout that the GPTQ
//! loaders of transformers (optimum with gptqmodel), AutoGPTQ and vLLM read when `config.json` says
//! `"quant_method": "gptq"`, `"checkpoint_format": "gptq"` (GPTQ "v1").
//!
//! A quantized file made with the asymmetric group grid and no incoherence processing already holds GPTQ
//! codes: the level of code `c` in output row `j` and input group `t` is `scale[j, t]·(c − zero[j, t])`,
//! exactly GPTQ's dequantization. Exporting is therefore a repacking, plus one rounding: the scales are
//! stored in float16, which moves every dequantized weight by at most `2^-11` of itself for scales in
//! float16's normal range (the export reports the largest change it made).
//!
//! Layout of one linear layer `L` with weight `W` (`m × n`, `y = x Wᵀ`), `k`-bit codes, groups of `g`
//! input features and `p = 32/k` codes per int32 word (words are little-endian; field `f` of a word is
//! bits `k·f .. k·f + k`):
//!
//! | tensor | dtype | shape | content |
//! | --- | --- | --- | --- |
//! | `L.qweight` | I32 | `[n/p, m]` | word `(r, j)`, field `f`: code of `W[j, p·r + f]` |
//! | `L.qzeros` | I32 | `[n/g, m/p]` | word `(t, c)`, field `f`: `zero[p·c + f, t] − 1` |
//! | `L.scales` | F16 | `[n/g, m]` | `scale[j, t]` at `(t, j)` |
//! | `L.g_idx` | I32 | `[n]` | `i / g` (groups in input order: no act-order permutation) |
//!
//! and a loader rebuilds `W[j, i] = scales[g_idx[i], j]·(q(i, j) − (qz(g_idx[i], j) + 1))`.
//!
//! **The v1 off-by-one.** AutoGPTQ's `pack` subtracts one from every zero-point before packing and every
//! v1 reader adds it back after masking the field to `k` bits. A zero-point of 0 has no v1 encoding: its
//! `−1` is all ones, read back as `2^k`, and GPTQModel's v1→v2 conversion (adding `0x11111111` to each
//! word for `k = 4`) carries into the neighbouring field. The asymmetric fit gives zero-point 0 only to a
//! group whose weights are all above `−scale/2`. Such a group is written exactly when it never uses the top
//! code: as zero-point 1 with every code raised by one, which leaves every level unchanged. A group that
//! does use the top code is refused with its row and group.
//!
//! Only widths whose codes tile an int32 word are written (2, 4 and 8 bits): GPTQ's 3-bit packing lets
//! codes straddle words and is refused.

use std::collections::HashSet;
use std::path::Path;

use half::f16;
use safetensors::Dtype;
use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::formats::checkpoint::Loaded;
use crate::formats::hf::{Half, RawTensor, half_tensors, write_json, write_safetensors};
use crate::formats::quant_file::QuantFile;
use crate::transformer::weights::LayerId;

/// Bit widths written: those whose codes fill an int32 word exactly (`32/k` codes per word).
pub const PACKED_BITS: [u32; 3] = [2, 4, 8];

/// The `checkpoint_format` written to `quantization_config`.
pub const CHECKPOINT_FORMAT: &str = "gptq";

/// Codes per int32 word, `32/k`.
///
/// **Errors**: `bits` outside [`PACKED_BITS`].
pub fn codes_per_word(bits: u32) -> Result<usize> {
    if PACKED_BITS.contains(&bits) {
        Ok((32 / bits) as usize)
    } else {
        Err(ModelError::Input(format!(
            "GPTQ packing of {bits}-bit codes: only {PACKED_BITS:?} bits fill an int32 word exactly \
             (GPTQ's 3-bit codes straddle words)"
        )))
    }
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "{what}: {len} values, expected {expected}"
        )))
    }
}

fn check_multiple(what: &str, value: usize, of: usize) -> Result<()> {
    if value.is_multiple_of(of) {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "{what} = {value} is not a multiple of {of}"
        )))
    }
}

// A word is built as u32 and stored as the int32 with the same bits (two's complement), as torch does
// when AutoGPTQ casts its uint32 array to int32.
fn to_word(bits: u32) -> i32 {
    i32::from_ne_bytes(bits.to_ne_bytes())
}

fn from_word(word: i32) -> u32 {
    u32::from_ne_bytes(word.to_ne_bytes())
}

/// Packs the codes of `W` into GPTQ's `qweight`: the codes of `Wᵀ`, `p = 32/k` consecutive input features
/// per int32 word, input `i` in field `i mod p` (bits `k·(i mod p)` up).
///
/// **Shapes**: `codes` is `m × n` row-major, one byte per code (as [`QuantFile::codes`] returns them);
/// the result is `[n/p, m]` row-major. **Errors**: unsupported `bits`, a length that is not `m·n`, `n` not
/// a multiple of `p`, a code above `2^k − 1`.
pub fn pack_qweight(codes: &[u8], m: usize, n: usize, bits: u32) -> Result<Vec<i32>> {
    let p = codes_per_word(bits)?;
    check_len("GPTQ qweight codes", codes.len(), m * n)?;
    check_multiple("GPTQ qweight in_features", n, p)?;
    let max_code = (1u32 << bits) - 1;
    if let Some(&c) = codes.iter().find(|&&c| u32::from(c) > max_code) {
        return Err(ModelError::Input(format!(
            "GPTQ qweight: code {c} outside the {bits}-bit grid"
        )));
    }
    let mut words = vec![0u32; n / p * m];
    for j in 0..m {
        for (i, &c) in codes[j * n..(j + 1) * n].iter().enumerate() {
            words[(i / p) * m + j] |= u32::from(c) << (bits as usize * (i % p));
        }
    }
    Ok(words.into_iter().map(to_word).collect())
}

/// Inverse of [`pack_qweight`]: the `m × n` codes of `W`.
///
/// **Errors**: unsupported `bits`, `n` not a multiple of `p`, a length that is not `n/p · m`.
pub fn unpack_qweight(qweight: &[i32], m: usize, n: usize, bits: u32) -> Result<Vec<u8>> {
    let p = codes_per_word(bits)?;
    check_multiple("GPTQ qweight in_features", n, p)?;
    check_len("GPTQ qweight", qweight.len(), n / p * m)?;
    let mask = (1u32 << bits) - 1;
    let mut codes = vec![0u8; m * n];
    for j in 0..m {
        for i in 0..n {
            let word = from_word(qweight[(i / p) * m + j]);
            // The field is at most 8 bits wide.
            codes[j * n + i] = ((word >> (bits as usize * (i % p))) & mask) as u8;
        }
    }
    Ok(codes)
}

/// Packs zero-points into GPTQ v1's `qzeros`: `zero − 1` (see the module docs), `p = 32/k` consecutive
/// outputs per int32 word, output `j` in field `j mod p`.
///
/// **Shapes**: `zeros` is `m × groups` row-major (the quantized file's layout); the result is
/// `[groups, m/p]` row-major. **Errors**: unsupported `bits`, a length that is not `m·groups`, `m` not a
/// multiple of `p`, a zero-point outside `1 ..= 2^k − 1` (0 has no v1 encoding).
pub fn pack_qzeros(zeros: &[u8], m: usize, groups: usize, bits: u32) -> Result<Vec<i32>> {
    let p = codes_per_word(bits)?;
    check_len("GPTQ zero-points", zeros.len(), m * groups)?;
    check_multiple("GPTQ qzeros out_features", m, p)?;
    let max_zero = (1u32 << bits) - 1;
    let mut words = vec![0u32; groups * (m / p)];
    for j in 0..m {
        for t in 0..groups {
            let z = u32::from(zeros[j * groups + t]);
            if z == 0 || z > max_zero {
                return Err(ModelError::Input(format!(
                    "GPTQ v1 qzeros: zero-point {z} of output {j}, group {t} is outside 1..={max_zero} \
                     (v1 stores zero − 1)"
                )));
            }
            words[t * (m / p) + j / p] |= (z - 1) << (bits as usize * (j % p));
        }
    }
    Ok(words.into_iter().map(to_word).collect())
}

/// Reads GPTQ v1's `qzeros` back as a v1 loader does: each `k`-bit field plus one, returned `m × groups`
/// row-major (so an all-ones field reads as `2^k`).
///
/// **Errors**: unsupported `bits`, `m` not a multiple of `p`, a length that is not `groups · m/p`.
pub fn unpack_qzeros(qzeros: &[i32], m: usize, groups: usize, bits: u32) -> Result<Vec<u16>> {
    let p = codes_per_word(bits)?;
    check_multiple("GPTQ qzeros out_features", m, p)?;
    check_len("GPTQ qzeros", qzeros.len(), groups * (m / p))?;
    let mask = (1u32 << bits) - 1;
    let mut zeros = vec![0u16; m * groups];
    for j in 0..m {
        for t in 0..groups {
            let word = from_word(qzeros[t * (m / p) + j / p]);
            // A field plus one is at most 256.
            zeros[j * groups + t] = (((word >> (bits as usize * (j % p))) & mask) + 1) as u16;
        }
    }
    Ok(zeros)
}

/// One linear layer in GPTQ layout.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqLayer {
    /// Output features.
    pub m: usize,
    /// Input features.
    pub n: usize,
    pub bits: u32,
    pub group_size: usize,
    /// `[n/p, m]`, see [`pack_qweight`].
    pub qweight: Vec<i32>,
    /// `[n/g, m/p]`, see [`pack_qzeros`].
    pub qzeros: Vec<i32>,
    /// `[n/g, m]`.
    pub scales: Vec<f16>,
    /// `[n]`, `i / g`.
    pub g_idx: Vec<i32>,
    /// Groups with zero-point 0 written as zero-point 1 with every code raised by one (same levels).
    pub shifted_groups: usize,
    /// `max |Ŵ₁₆ − Ŵ| / |Ŵ|` over the weights with `Ŵ ≠ 0`: the change the float16 scales make to the
    /// dequantized weights (`Ŵ` as [`QuantFile::dequantize`] computes it, `Ŵ₁₆` from the stored tensors).
    pub max_rel_change: f64,
}

/// One layer of a quantized file in the file's own layout.
struct LayerCodes<'a> {
    m: usize,
    n: usize,
    bits: u32,
    group_size: usize,
    /// `m × n`, one byte per code (unpacked by [`QuantFile::codes`]).
    codes: &'a [u8],
    /// `m × n/g`.
    scales: &'a [f32],
    /// `m × n/g`.
    zeros: &'a [u8],
}

/// Checks and packs one layer; the error says what about the layer GPTQ v1 cannot hold.
fn pack_layer(x: &LayerCodes<'_>) -> std::result::Result<GptqLayer, String> {
    let (m, n, g, bits) = (x.m, x.n, x.group_size, x.bits);
    let p = codes_per_word(bits).map_err(|_| {
        format!(
            "{bits}-bit codes: GPTQ checkpoints are written for {PACKED_BITS:?} bits (GPTQ's 3-bit \
             packing lets codes straddle int32 words)"
        )
    })?;
    if g == 0 || !n.is_multiple_of(g) {
        return Err(format!(
            "group size {g} does not divide in_features n = {n}"
        ));
    }
    if !n.is_multiple_of(p) {
        return Err(format!(
            "in_features n = {n} is not a multiple of {p}: qweight packs {p} inputs per int32"
        ));
    }
    if !m.is_multiple_of(p) {
        return Err(format!(
            "out_features m = {m} is not a multiple of {p}: qzeros packs {p} outputs per int32"
        ));
    }
    let groups = n / g;
    if x.codes.len() != m * n || x.scales.len() != m * groups || x.zeros.len() != m * groups {
        return Err(format!(
            "tensor sizes {} codes, {} scales, {} zeros do not match m = {m}, n = {n}, g = {g}",
            x.codes.len(),
            x.scales.len(),
            x.zeros.len()
        ));
    }
    // bits ≤ 8 (checked above), so the top code fits a byte.
    let max_code = ((1u32 << bits) - 1) as u8;
    if let Some(&c) = x.codes.iter().find(|&&c| c > max_code) {
        return Err(format!("code {c} outside the {bits}-bit grid"));
    }
    if let Some(&z) = x.zeros.iter().find(|&&z| z > max_code) {
        return Err(format!("zero-point {z} outside the {bits}-bit grid"));
    }

    let mut codes = x.codes.to_vec();
    let mut zeros = x.zeros.to_vec();
    let mut shifted_groups = 0;
    for j in 0..m {
        for t in 0..groups {
            if zeros[j * groups + t] != 0 {
                continue;
            }
            let span = j * n + t * g..j * n + (t + 1) * g;
            if codes[span.clone()].contains(&max_code) {
                return Err(format!(
                    "output {j}, group {t} has zero-point 0 and uses the top code {max_code}: GPTQ v1 \
                     stores zero − 1 and has no encoding for it (a group whose weights all lie above \
                     −scale/2)"
                ));
            }
            // Same levels: scale·((c + 1) − 1) = scale·(c − 0).
            codes[span].iter_mut().for_each(|c| *c += 1);
            zeros[j * groups + t] = 1;
            shifted_groups += 1;
        }
    }

    let mut scales = vec![f16::ZERO; groups * m];
    for j in 0..m {
        for t in 0..groups {
            let s = x.scales[j * groups + t];
            let s16 = f16::from_f32(s);
            if !(s.is_finite() && s > 0.0 && s16.is_finite() && s16 > f16::ZERO) {
                return Err(format!(
                    "scale {s:e} of output {j}, group {t} is not a positive float16 (float16 holds \
                     6.0e-8 ..= 65504)"
                ));
            }
            scales[t * m + j] = s16;
        }
    }

    // The change float16 makes, against the file's exact levels (same f32 operations as
    // `QuantFile::dequantize`); the shift above leaves `c − z` unchanged, so the original codes serve.
    let mut max_rel_change = 0.0f64;
    for j in 0..m {
        for i in 0..n {
            let t = i / g;
            let (c, z) = (x.codes[j * n + i], x.zeros[j * groups + t]);
            if c == z {
                continue;
            }
            let exact = x.scales[j * groups + t] * (c as f32 - z as f32);
            let stored = scales[t * m + j].to_f64() * (f64::from(c) - f64::from(z));
            let rel = (stored - f64::from(exact)).abs() / f64::from(exact).abs();
            max_rel_change = max_rel_change.max(rel);
        }
    }

    let qweight = pack_qweight(&codes, m, n, bits).map_err(|e| e.to_string())?;
    let qzeros = pack_qzeros(&zeros, m, groups, bits).map_err(|e| e.to_string())?;
    let g_idx = (0..n)
        .map(|i| i32::try_from(i / g).map_err(|_| format!("{groups} groups overflow int32")))
        .collect::<std::result::Result<Vec<i32>, String>>()?;
    Ok(GptqLayer {
        m,
        n,
        bits,
        group_size: g,
        qweight,
        qzeros,
        scales,
        g_idx,
        shifted_groups,
        max_rel_change,
    })
}

impl GptqLayer {
    /// Packs layer `id` of a quantized file.
    ///
    /// **Errors** ([`ModelError::NotExportable`], naming the file and the layer): a layer missing from the
    /// file, incoherence processing (rotated codes), the symmetric grid, bits outside [`PACKED_BITS`], a
    /// group size that does not divide `n`, `m` or `n` not a multiple of `32/k`, a zero-point 0 group using
    /// the top code, a scale outside float16's range; malformed tensors ([`ModelError::BadFormat`] and
    /// friends, naming the file).
    pub fn from_quant_file(quant: &QuantFile, id: LayerId) -> Result<Self> {
        let name = id.name();
        let path = quant.file.path();
        let refuse = |why: String| ModelError::NotExportable {
            path: path.to_path_buf(),
            layer: name.clone(),
            format: "a GPTQ checkpoint",
            why,
        };
        let e = &quant.header["layers"][&name];
        if e.is_null() {
            return Err(refuse(
                "not in the file; GPTQ loaders quantize every linear layer of every block".into(),
            ));
        }
        let dim = |k: &str| {
            e[k].as_u64().map(|v| v as usize).ok_or_else(|| {
                ModelError::format(path, format!("{name}: header field {k:?} missing"))
            })
        };
        let (m, n) = (dim("m")?, dim("n")?);
        if e["incoherence"].as_bool() != Some(false) {
            return Err(refuse(
                "quantized with incoherence processing, so its codes are of the rotated W_r and GPTQ \
                 kernels apply no rotation; quantize with --no-incoherence"
                    .into(),
            ));
        }
        let q = &e["quantizer"];
        match q["kind"].as_str() {
            Some("int-asym") => {}
            Some("int-sym") => {
                return Err(refuse(
                    "symmetric grid (int-sym, one scale, no zero-points); GPTQ stores per-group scales \
                     and zero-points: quantize with --group G"
                        .into(),
                ));
            }
            Some("e8p") => {
                return Err(refuse(
                    "E8P lattice codebook (codes of 8 weights); GPTQ checkpoints hold scalar grids: \
                     quantize with --quantizer int4 --group G"
                        .into(),
                ));
            }
            Some("trellis") => {
                return Err(refuse(
                    "QTIP trellis (one walk per 16 × 16 tile); GPTQ checkpoints hold scalar grids: \
                     quantize with --quantizer int4 --group G"
                        .into(),
                ));
            }
            other => return Err(refuse(format!("unknown quantizer kind {other:?}"))),
        }
        let bits = q["bits"]
            .as_u64()
            .and_then(|b| u32::try_from(b).ok())
            .ok_or_else(|| ModelError::format(path, format!("{name}: quantizer bits missing")))?;
        let group_size = q["group_size"]
            .as_u64()
            .map(|g| g as usize)
            .ok_or_else(|| ModelError::format(path, format!("{name}: group_size missing")))?;
        if !PACKED_BITS.contains(&bits) {
            return Err(refuse(format!(
                "{bits}-bit codes; GPTQ checkpoints are written for {PACKED_BITS:?} bits (GPTQ's 3-bit \
                 packing lets codes straddle int32 words)"
            )));
        }
        if group_size == 0 || !n.is_multiple_of(group_size) {
            return Err(refuse(format!(
                "group size {group_size} does not divide in_features n = {n}"
            )));
        }
        let groups = n / group_size;
        // Unpacked from the file's bit-packed rows, checked against m, n and the code width.
        let codes = quant
            .codes(id)?
            .into_iter()
            .map(u8::try_from)
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| refuse(format!("{bits}-bit codes above 255")))?;
        let scales = quant.f32s(&format!("{name}.scales"), &[m, groups])?;
        let zeros = quant.u8s(&format!("{name}.zeros"), &[m, groups])?;
        pack_layer(&LayerCodes {
            m,
            n,
            bits,
            group_size,
            codes: &codes,
            scales: &scales,
            zeros: &zeros,
        })
        .map_err(refuse)
    }

    /// The layer's four tensors under `module` (`model.layers.3.mlp.up_proj`).
    pub fn tensors(&self, module: &str) -> Vec<(String, RawTensor)> {
        let p = 32 / self.bits as usize;
        let groups = self.n / self.group_size;
        let ints = |shape: Vec<usize>, values: &[i32]| RawTensor {
            dtype: Dtype::I32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        vec![
            (
                format!("{module}.qweight"),
                ints(vec![self.n / p, self.m], &self.qweight),
            ),
            (
                format!("{module}.qzeros"),
                ints(vec![groups, self.m / p], &self.qzeros),
            ),
            (
                format!("{module}.scales"),
                RawTensor {
                    dtype: Dtype::F16,
                    shape: vec![groups, self.m],
                    bytes: self.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                },
            ),
            (format!("{module}.g_idx"), ints(vec![self.n], &self.g_idx)),
        ]
    }
}

/// The `quantization_config` object (also written as `quantize_config.json`): the fields the loaders
/// read. transformers' `GPTQConfig` and optimum's `GPTQQuantizer` need `bits` (2, 3, 4, 8) and
/// `group_size`; vLLM's `GPTQConfig.from_config` requires `bits`, `group_size`, `desc_act` and reads
/// `checkpoint_format` and `lm_head`; its Marlin path reads `sym` and declines asymmetric grids (falling
/// back to the `gptq` kernel); AutoGPTQ finds `model.safetensors` through `model_file_base_name`.
pub fn quantization_config(bits: u32, group_size: usize) -> Value {
    json!({
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": false,
        "sym": false,
        "lm_head": false,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "pack_dtype": "int32",
        "model_file_base_name": "model",
        "meta": {"quantizer": [format!("yaqa:{}", env!("CARGO_PKG_VERSION"))]},
    })
}

/// What [`write_gptq`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqSummary {
    pub bits: u32,
    pub group_size: usize,
    /// Quantized linear layers written.
    pub layers: usize,
    /// Groups with zero-point 0 rewritten as zero-point 1 (levels unchanged), over all layers.
    pub shifted_groups: usize,
    /// The largest [`GptqLayer::max_rel_change`] and its layer.
    pub max_rel_change: f64,
    pub worst_layer: String,
}

/// Writes `dir` as a GPTQ-format Hugging Face folder: `model.safetensors` (every quantized linear layer
/// as `qweight`, `qzeros`, `scales`, `g_idx`; every other tensor of the original model, biases included,
/// in float16), `config.json` (`torch_dtype: float16` and `quantization_config`) and
/// `quantize_config.json`. Every layer is checked and packed before anything is written, and each file
/// is written to a temporary name and renamed, so a refused export leaves the folder as it was.
///
/// **Errors**: a file quantized from another model; a layer of the model missing from the file or one
/// beyond it; any refusal of [`GptqLayer::from_quant_file`]; layers with different bits or group sizes
/// (the config has one of each); a non-quantized tensor beyond float16's range; I/O.
pub fn write_gptq(original: &Loaded, quant: &QuantFile, dir: &Path) -> Result<GptqSummary> {
    let qpath = quant.file.path();
    let model = &original.model;
    let ids = quant.layers_of(original)?;
    let mut packed = Vec::with_capacity(ids.len());
    let mut summary: Option<GptqSummary> = None;
    for &id in &ids {
        let layer = GptqLayer::from_quant_file(quant, id)?;
        quant.check_layer_shape(id, (layer.m, layer.n), id.kind.shape(&model.config))?;
        let s = summary.get_or_insert_with(|| GptqSummary {
            bits: layer.bits,
            group_size: layer.group_size,
            layers: 0,
            shifted_groups: 0,
            max_rel_change: 0.0,
            worst_layer: id.name(),
        });
        if (layer.bits, layer.group_size) != (s.bits, s.group_size) {
            return Err(ModelError::NotExportable {
                path: qpath.to_path_buf(),
                layer: id.name(),
                format: "a GPTQ checkpoint",
                why: format!(
                    "{} bits, group {} differ from the first layer's {} bits, group {}; \
                     quantization_config has one of each",
                    layer.bits, layer.group_size, s.bits, s.group_size
                ),
            });
        }
        s.layers += 1;
        s.shifted_groups += layer.shifted_groups;
        if layer.max_rel_change > s.max_rel_change {
            s.max_rel_change = layer.max_rel_change;
            s.worst_layer = id.name();
        }
        packed.push((id, layer));
    }
    let Some(summary) = summary else {
        return Err(ModelError::format(qpath, "the model has no linear layers"));
    };

    let quantized: HashSet<String> = ids.iter().map(|id| id.kind.hf_name(id.block)).collect();
    let f16_max = f16::MAX.to_f32();
    for (name, _, data) in model.hf_tensors()? {
        if quantized.contains(&name) {
            continue;
        }
        if let Some(v) = data.iter().find(|v| !v.is_finite() || v.abs() > f16_max) {
            return Err(ModelError::NotExportable {
                path: original.path.clone(),
                layer: name,
                format: "a GPTQ checkpoint",
                why: format!("value {v:e} does not fit float16 (|x| ≤ 65504)"),
            });
        }
    }
    let mut tensors = half_tensors(model, Half::F16, |name| quantized.contains(name))?;
    for (id, layer) in &packed {
        tensors.extend(layer.tensors(&id.name()));
    }
    drop(packed);

    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(&dir.join("model.safetensors"), &tensors, "format", "pt")?;
    let qc = quantization_config(summary.bits, summary.group_size);
    let mut config = model.config.to_hf_json_as("float16");
    if let Value::Object(o) = &mut config {
        o.insert("quantization_config".into(), qc.clone());
    }
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("quantize_config.json"), &qc)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent reading of the layout, straight from the module table: field `f` of word `(r, j)`
    /// is `(word >> (k·f)) & (2^k − 1)` and holds input `p·r + f` of output `j`.
    fn spec_unpack_qweight(qweight: &[i32], m: usize, n: usize, bits: u32) -> Vec<u8> {
        let p = 32 / bits as usize;
        let mut out = vec![0u8; m * n];
        for r in 0..n / p {
            for j in 0..m {
                let word = qweight[r * m + j] as u32;
                for f in 0..p {
                    let field = (word >> (bits as usize * f)) & ((1u32 << bits) - 1);
                    out[j * n + p * r + f] = field as u8;
                }
            }
        }
        out
    }

    /// Field `f` of word `(t, c)` plus one is the zero-point of output `p·c + f` in group `t`.
    fn spec_unpack_qzeros(qzeros: &[i32], m: usize, groups: usize, bits: u32) -> Vec<u8> {
        let p = 32 / bits as usize;
        let mut out = vec![0u8; m * groups];
        for t in 0..groups {
            for c in 0..m / p {
                let word = qzeros[t * (m / p) + c] as u32;
                for f in 0..p {
                    let field = (word >> (bits as usize * f)) & ((1u32 << bits) - 1);
                    out[(p * c + f) * groups + t] = (field + 1) as u8;
                }
            }
        }
        out
    }

    fn random_bytes(seed: u64, len: usize, below: u32) -> Vec<u8> {
        let mut rng = yaqa_core::Rng::derive(seed, "gptq-format-test");
        (0..len)
            .map(|_| rng.below(u64::from(below)) as u8)
            .collect()
    }

    #[test]
    fn pack_then_spec_unpack_is_exact_on_random_data() {
        for (bits, m, n, groups) in [(4, 24, 64, 2), (2, 32, 48, 3), (8, 12, 20, 5), (4, 8, 8, 1)] {
            let levels = 1u32 << bits;
            let codes = random_bytes(u64::from(bits), m * n, levels);
            let qweight = pack_qweight(&codes, m, n, bits).unwrap();
            assert_eq!(qweight.len(), n * bits as usize / 32 * m);
            assert_eq!(
                spec_unpack_qweight(&qweight, m, n, bits),
                codes,
                "{bits} bits"
            );
            assert_eq!(unpack_qweight(&qweight, m, n, bits).unwrap(), codes);

            // Zero-points 1..2^k − 1: v1 has no 0.
            let zeros: Vec<u8> = random_bytes(u64::from(bits) + 100, m * groups, levels - 1)
                .into_iter()
                .map(|z| z + 1)
                .collect();
            let qzeros = pack_qzeros(&zeros, m, groups, bits).unwrap();
            assert_eq!(qzeros.len(), groups * m * bits as usize / 32);
            assert_eq!(spec_unpack_qzeros(&qzeros, m, groups, bits), zeros);
            let back = unpack_qzeros(&qzeros, m, groups, bits).unwrap();
            assert!(back.iter().zip(&zeros).all(|(&a, &b)| a == u16::from(b)));
        }
    }

    #[test]
    fn hand_computed_words() {
        // 8 × 8 codes, W[j, i] = (i + j) mod 16: qweight has one row of 8 words; word j holds inputs
        // 0..8 of output j, input i at bits 4i, so output 0's word is 0x76543210.
        let codes: Vec<u8> = (0..64).map(|k| ((k / 8 + k % 8) % 16) as u8).collect();
        let qweight = pack_qweight(&codes, 8, 8, 4).unwrap();
        let expected: Vec<u32> = vec![
            0x7654_3210,
            0x8765_4321,
            0x9876_5432,
            0xA987_6543,
            0xBA98_7654,
            0xCBA9_8765,
            0xDCBA_9876,
            0xEDCB_A987,
        ];
        assert_eq!(
            qweight,
            expected.iter().map(|&w| w as i32).collect::<Vec<_>>()
        );

        // 16 inputs: input 8 of output 0 starts the second row of words.
        let mut codes = vec![0u8; 8 * 16];
        codes[8] = 0xF;
        codes[15] = 0x1;
        codes[16 + 1] = 0x3; // output 1, input 1
        let qweight = pack_qweight(&codes, 8, 16, 4).unwrap();
        assert_eq!(qweight[0] as u32, 0);
        assert_eq!(qweight[1] as u32, 0x0000_0030);
        assert_eq!(qweight[8] as u32, 0x1000_000F);

        // Zero-points of 8 outputs, one group: field j holds zero[j] − 1.
        let zeros: Vec<u8> = vec![1, 2, 3, 4, 5, 6, 7, 15];
        let qzeros = pack_qzeros(&zeros, 8, 1, 4).unwrap();
        assert_eq!(qzeros, vec![0xE654_3210u32 as i32]);

        // 2 bits: 16 codes per word; 8 bits: 4 per word.
        let codes: Vec<u8> = (0..16).map(|i| (i % 4) as u8).collect();
        assert_eq!(
            pack_qweight(&codes, 1, 16, 2).unwrap(),
            vec![0xE4E4_E4E4u32 as i32]
        );
        let codes = vec![0x01, 0x02, 0x03, 0xFF];
        assert_eq!(
            pack_qweight(&codes, 1, 4, 8).unwrap(),
            vec![0xFF03_0201u32 as i32]
        );
    }

    #[test]
    fn packers_refuse_what_v1_cannot_hold() {
        assert!(pack_qweight(&[0; 24], 1, 24, 3).is_err(), "3 bits");
        assert!(
            pack_qweight(&[16; 8], 1, 8, 4).is_err(),
            "code above the grid"
        );
        assert!(
            pack_qweight(&[0; 12], 1, 12, 4).is_err(),
            "n not a multiple of 8"
        );
        let err = pack_qzeros(&[0; 8], 8, 1, 4).unwrap_err().to_string();
        assert!(err.contains("zero − 1"), "{err}");
        assert!(
            pack_qzeros(&[1; 4], 4, 1, 4).is_err(),
            "m not a multiple of 8"
        );
    }

    fn layer<'a>(
        codes: &'a [u8],
        zeros: &'a [u8],
        scales: &'a [f32],
        m: usize,
        n: usize,
        g: usize,
    ) -> LayerCodes<'a> {
        LayerCodes {
            m,
            n,
            bits: 4,
            group_size: g,
            codes,
            scales,
            zeros,
        }
    }

    #[test]
    fn zero_point_zero_groups_shift_exactly_or_are_refused() {
        // 8 outputs, 16 inputs, groups of 8: output 2's first group has zero-point 0 and codes ≤ 14.
        let (m, n, g) = (8, 16, 8);
        let mut codes = random_bytes(7, m * n, 15);
        let mut zeros = vec![8u8; m * 2];
        zeros[2 * 2] = 0;
        let scales = vec![0.01f32; m * 2];
        let out = pack_layer(&layer(&codes, &zeros, &scales, m, n, g)).unwrap();
        assert_eq!(out.shifted_groups, 1);
        let back = unpack_qweight(&out.qweight, m, n, 4).unwrap();
        let back_zeros = unpack_qzeros(&out.qzeros, m, 2, 4).unwrap();
        for j in 0..m {
            for i in 0..n {
                let t = i / g;
                let before = i32::from(codes[j * n + i]) - i32::from(zeros[j * 2 + t]);
                let after = i32::from(back[j * n + i]) - i32::from(back_zeros[j * 2 + t]);
                assert_eq!(before, after, "level of ({j}, {i}) changed");
            }
        }
        assert_eq!(back_zeros[2 * 2], 1);

        // The same group using the top code cannot be written.
        codes[2 * n + 3] = 15;
        let err = pack_layer(&layer(&codes, &zeros, &scales, m, n, g)).unwrap_err();
        assert!(
            err.contains("output 2, group 0") && err.contains("zero-point 0"),
            "{err}"
        );
    }

    #[test]
    fn float16_scales_are_checked_and_measured() {
        let (m, n, g) = (8, 8, 8);
        let codes = vec![3u8; m * n];
        let zeros = vec![1u8; m];
        // 0.1 is not a float16: the relative change is |f16(0.1) − 0.1| / 0.1.
        let scales = vec![0.1f32; m];
        let out = pack_layer(&layer(&codes, &zeros, &scales, m, n, g)).unwrap();
        let expected = (f16::from_f32(0.1).to_f64() - f64::from(0.1f32)).abs() / f64::from(0.1f32);
        assert!(
            (out.max_rel_change - expected).abs() < 1e-9,
            "{} vs {expected}",
            out.max_rel_change
        );
        assert!(out.max_rel_change <= 2f64.powi(-11));
        // Beyond float16's range on either side.
        for s in [1e5f32, 1e-9] {
            let err = pack_layer(&layer(&codes, &zeros, &vec![s; m], m, n, g)).unwrap_err();
            assert!(
                err.contains("float16") && err.contains("output 0, group 0"),
                "{err}"
            );
        }
        let err = pack_layer(&layer(&codes, &zeros[..4], &scales[..4], 4, n, g)).unwrap_err();
        assert!(err.contains("out_features m = 4"), "{err}");
        let err = pack_layer(&layer(&codes, &zeros, &scales, m, n, 3)).unwrap_err();
        assert!(err.contains("group size 3 does not divide"), "{err}");
    }
}
