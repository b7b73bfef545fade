//! Quantized-model files: codes, quantizer parameters and sign vectors of every quantized linear layer,
//! plus a JSON header (quantizer, rotation, seeds, method, per-layer report), enough to rebuild every
//! `Ŵ` bit for bit ([`QuantFile::dequantize`]). The layout is in docs/FORMAT.md; the codes are
//! bit-packed row by row ([`crate::formats::bitpack`]), and every reader takes them through [`QuantFile::codes`].
//!
//! A run writes one *part* file per layer as soon as the layer is finished ([`write_part`]) and
//! [`assemble`] joins the parts into the final file. Both go through the same serialisation, and the
//! final file is built only from the parts, so a run that was interrupted and resumed produces the same
//! bytes as one that was not.

use std::path::Path;

use safetensors::Dtype;
use serde_json::{Map, Value, json};
use yaqa_core::Mat;
use yaqa_core::backend::{Backend, Side};
use yaqa_core::layer::{FittedQuantizer, LayerReport, QuantizedLayer};
use yaqa_core::optq::OptqReport;
use yaqa_core::quant::e8p::{self, E8p};
use yaqa_core::quant::fp8::{Fp8, Fp8Scaling};
use yaqa_core::quant::ggml::{GgmlBlocks, GgmlFormat};
use yaqa_core::quant::int::{IntAsymGroup, IntSym};
use yaqa_core::quant::trellis::{self, Trellis};

use crate::error::{ModelError, Result};
use crate::formats::bitpack;
use crate::formats::hf::{RawTensor, SafetensorsFile, write_safetensors};
use crate::transformer::weights::LayerId;

/// The metadata key that holds the JSON header.
pub const META_KEY: &str = "yaqa";
/// The `format` field of a final file and of a part.
pub const FORMAT: &str = "yaqa-quantized";
pub const PART_FORMAT: &str = "yaqa-quantized-part";
/// Version 2 bit-packs the codes (`code_bits` per layer); version 1 stored one byte per code.
pub const VERSION: u64 = 2;

fn u8_tensor(shape: Vec<usize>, values: &[u16], what: &str) -> Result<RawTensor> {
    let bytes = values
        .iter()
        .map(|&v| u8::try_from(v))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| ModelError::Input(format!("{what}: a value above 255 does not fit U8")))?;
    Ok(RawTensor {
        dtype: Dtype::U8,
        shape,
        bytes,
    })
}

fn sign_tensor(signs: &[f32]) -> RawTensor {
    RawTensor {
        dtype: Dtype::I8,
        shape: vec![signs.len()],
        bytes: signs
            .iter()
            .map(|&s| if s < 0.0 { (-1i8) as u8 } else { 1u8 })
            .collect(),
    }
}

/// The JSON form of a layer report (floats as f64, exactly round-tripped by serde_json).
pub fn report_json(r: &LayerReport) -> Value {
    json!({
        "method": r.method.name(),
        "proxy_two_sided": r.proxy_two_sided,
        "proxy_one_sided": r.proxy_one_sided,
        "damp_in": r.damp_in,
        "damp_out": r.damp_out,
        "scale_c": r.scale_c,
        "bits_per_weight": r.bits_per_weight,
        "refine": r.refine.map(|s| json!({"sweeps": s.sweeps, "moves": s.moves})),
        "optq": r.optq.as_ref().map(optq_json),
    })
}

/// The JSON form of a layer's OPTQ report (`yaqa_core::optq`).
pub fn optq_json(o: &OptqReport) -> Value {
    let mut v = json!({
        "measured": o.measured,
        "identity": o.identity,
        "discrepancy": o.discrepancy(),
        "bound": o.bound,
        "clipped": o.clipped,
    });
    if let Some(s) = &o.stochastic {
        v["stochastic"] = json!({
            "failure_probability": yaqa_core::optq::STOCHASTIC_FAILURE_PROBABILITY,
            "drift_bound_steps": s.drift_bound_steps,
            "drift_measured_steps": s.drift_measured_steps,
            "linf_bound_steps": s.linf_bound_steps,
            "linf_measured_steps": s.linf_measured_steps,
            "headroom_steps": s.headroom_steps,
        });
    }
    v
}

/// How a fitted quantizer's codes are stored: `(bits per code, weights per code)`, `(k, 1)` for the
/// `k`-bit INT grids and trellis, `(8, 1)` for FP8 and `(16, 8)` for E8P.
pub fn code_layout(q: &FittedQuantizer) -> (u32, usize) {
    match q {
        FittedQuantizer::IntSym(s) => (s.bits(), 1),
        FittedQuantizer::IntAsym(a) => (a.bits(), 1),
        FittedQuantizer::E8p(_) => (e8p::CODE_BITS, e8p::CODE_DIM),
        FittedQuantizer::Fp8(_) => (8, 1),
        FittedQuantizer::Trellis(t) => (t.bits(), 1),
        FittedQuantizer::Ggml(g) => (g.format().bits(), 1),
    }
}

/// The codes of a rounded layer bit-packed row by row ([`bitpack::pack_rows`]): U8 `[m, ⌈(n/d)·k/8⌉]`
/// with `(k, d)` from [`code_layout`], the layout of `L.codes` in docs/FORMAT.md. Returns the tensor and
/// `k`. `name` prefixes the errors.
///
/// **Errors**: an `n` that does not split into codes of `d` weights, a code of `2^k` or more.
pub fn packed_codes(name: &str, q: &QuantizedLayer) -> Result<(RawTensor, u32)> {
    let (m, n) = q.w_hat.shape();
    let (code_bits, code_dim) = code_layout(&q.quantizer);
    if !n.is_multiple_of(code_dim) {
        return Err(ModelError::Input(format!(
            "{name}: n = {n} does not split into codes of {code_dim} weights"
        )));
    }
    let per_row = n / code_dim;
    let packed = bitpack::pack_rows(&q.codes, m, per_row, code_bits).map_err(|e| match e {
        ModelError::Input(why) => ModelError::Input(format!("{name} codes: {why}")),
        other => other,
    })?;
    let tensor = RawTensor {
        dtype: Dtype::U8,
        shape: vec![m, bitpack::packed_len(per_row, code_bits)],
        bytes: packed,
    };
    Ok((tensor, code_bits))
}

/// The tensors of one quantized layer and its header entry.
fn layer_tensors(id: LayerId, q: &QuantizedLayer) -> Result<(Vec<(String, RawTensor)>, Value)> {
    let name = id.name();
    let (m, n) = q.w_hat.shape();
    let (codes, code_bits) = packed_codes(&name, q)?;
    let mut t = vec![(format!("{name}.codes"), codes)];
    let quantizer = match &q.quantizer {
        FittedQuantizer::IntSym(s) => {
            t.push((
                format!("{name}.scale"),
                RawTensor::f32s(vec![1], &[s.scale()]),
            ));
            json!({"kind": "int-sym", "bits": s.bits()})
        }
        FittedQuantizer::IntAsym(a) => {
            let s = a.scales();
            t.push((
                format!("{name}.scales"),
                RawTensor::f32s(vec![s.rows, s.cols], &s.data),
            ));
            let z = a.zeros();
            t.push((
                format!("{name}.zeros"),
                u8_tensor(vec![z.rows, z.cols], &z.data, &format!("{name} zeros"))?,
            ));
            json!({"kind": "int-asym", "bits": a.bits(), "group_size": a.group_size()})
        }
        FittedQuantizer::E8p(b) => {
            t.push((
                format!("{name}.scale"),
                RawTensor::f32s(vec![1], &[b.scale()]),
            ));
            json!({"kind": "e8p"})
        }
        FittedQuantizer::Fp8(f) => {
            let s = f.scales();
            t.push((
                format!("{name}.scales"),
                RawTensor::f32s(vec![s.rows, s.cols], &s.data),
            ));
            json!({"kind": "fp8-e4m3", "scaling": f.scaling().name()})
        }
        FittedQuantizer::Trellis(tr) => {
            t.push((
                format!("{name}.scale"),
                RawTensor::f32s(vec![1], &[tr.scale()]),
            ));
            json!({"kind": "trellis", "bits": tr.bits()})
        }
        FittedQuantizer::Ggml(g) => {
            let names = GgmlBlocks::stored_names(g.format());
            for (&(suffix, _), v) in names.iter().zip(g.stored()) {
                t.push((
                    format!("{name}.{suffix}"),
                    RawTensor::f32s(vec![v.rows, v.cols], &v.data),
                ));
            }
            json!({"kind": "ggml", "format": g.format().name()})
        }
    };
    if let (Some(s_in), Some(s_out)) = (&q.signs_in, &q.signs_out) {
        t.push((format!("{name}.signs_in"), sign_tensor(s_in)));
        t.push((format!("{name}.signs_out"), sign_tensor(s_out)));
    }
    let entry = json!({
        "m": m,
        "n": n,
        "code_bits": code_bits,
        "quantizer": quantizer,
        "incoherence": q.signs_in.is_some(),
        "report": report_json(&q.report),
    });
    Ok((t, entry))
}

/// Writes one finished layer as a part file (atomically). `run` is the run's header (method, seeds, ...),
/// copied into the part so a resumed run can check it was made with the same arguments.
pub fn write_part(path: &Path, id: LayerId, q: &QuantizedLayer, run: &Value) -> Result<()> {
    let (tensors, entry) = layer_tensors(id, q)?;
    let header = json!({
        "format": PART_FORMAT,
        "version": VERSION,
        "layer": id.name(),
        "entry": entry,
        "run": run,
    });
    write_safetensors(path, &tensors, META_KEY, &header.to_string())
}

fn header_of(file: &SafetensorsFile, want: &str) -> Result<Value> {
    let path = file.path();
    let text = file.metadata.get(META_KEY).ok_or_else(|| {
        ModelError::format(path, format!("no {META_KEY:?} metadata: not a yaqa file"))
    })?;
    let h: Value = serde_json::from_str(text)
        .map_err(|e| ModelError::format(path, format!("header is not JSON: {e}")))?;
    if h["format"] == want && h["version"].as_u64().is_some_and(|v| v < VERSION) {
        return Err(ModelError::format(
            path,
            format!(
                "{want} version {} was made by an older yaqa (one byte per code; version {VERSION} \
                 bit-packs them); re-run quantize",
                h["version"]
            ),
        ));
    }
    if h["format"] != want || h["version"] != VERSION {
        return Err(ModelError::format(
            path,
            format!(
                "format {} version {}: expected {want} version {VERSION}",
                h["format"], h["version"]
            ),
        ));
    }
    Ok(h)
}

/// Reads a part's run header, or `None` if the part is unreadable (a resumed run then redoes the layer).
pub fn part_run(path: &Path) -> Option<Value> {
    let file = SafetensorsFile::open(path).ok()?;
    header_of(&file, PART_FORMAT).ok().map(|h| h["run"].clone())
}

/// Joins the parts (in the order given) into the final file at `out`, with `run` as the run header,
/// every part's entry under `layers`, and `eval` (the result's KL and perplexity) under `eval` when
/// given.
///
/// **Errors**: unreadable or malformed parts (named), a part made by a different run, I/O on `out`.
pub fn assemble(
    parts: &[(LayerId, std::path::PathBuf)],
    run: &Value,
    eval: Option<&Value>,
    out: &Path,
) -> Result<()> {
    let mut tensors = Vec::new();
    let mut layers = Map::new();
    for (id, path) in parts {
        let file = SafetensorsFile::open(path)?;
        let h = header_of(&file, PART_FORMAT)?;
        if &h["run"] != run || h["layer"] != id.name() {
            return Err(ModelError::format(
                path,
                format!("part of layer {} from a different run", h["layer"]),
            ));
        }
        for (name, info) in &file.tensors {
            let (_, bytes) = file.raw(name, &info.dtype)?;
            let dtype = match info.dtype.as_str() {
                "U8" => Dtype::U8,
                "I8" => Dtype::I8,
                "F32" => Dtype::F32,
                other => {
                    return Err(ModelError::UnknownDtype {
                        path: path.clone(),
                        tensor: name.clone(),
                        dtype: other.to_string(),
                    });
                }
            };
            tensors.push((
                name.clone(),
                RawTensor {
                    dtype,
                    shape: info.shape.clone(),
                    bytes: bytes.to_vec(),
                },
            ));
        }
        layers.insert(id.name(), h["entry"].clone());
    }
    let mut header = run.clone();
    if let Value::Object(o) = &mut header {
        o.insert("format".into(), json!(FORMAT));
        o.insert("version".into(), json!(VERSION));
        o.insert("layers".into(), Value::Object(layers));
        if let Some(eval) = eval {
            o.insert("eval".into(), eval.clone());
        }
    }
    write_safetensors(out, &tensors, META_KEY, &header.to_string())
}

/// An open quantized-model file.
#[derive(Debug)]
pub struct QuantFile {
    pub file: SafetensorsFile,
    pub header: Value,
}

impl QuantFile {
    /// Opens and checks a final quantized file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let header = header_of(&file, FORMAT)?;
        Ok(Self { file, header })
    }

    /// Opens a part file (one layer, written by [`write_part`]) as a quantized file holding that layer,
    /// so a finished run can be evaluated before its parts are assembled.
    pub fn open_part(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let part = header_of(&file, PART_FORMAT)?;
        let layer = part["layer"]
            .as_str()
            .ok_or_else(|| ModelError::format(path, "part without a \"layer\" name"))?;
        let mut header = part["run"].clone();
        if let Value::Object(o) = &mut header {
            let mut layers = Map::new();
            layers.insert(layer.to_string(), part["entry"].clone());
            o.insert("layers".into(), Value::Object(layers));
        }
        Ok(Self { file, header })
    }

    /// The quantized layers, in file order of the header (block order).
    pub fn layers(&self) -> Result<Vec<LayerId>> {
        let path = self.file.path();
        let layers = self.header["layers"]
            .as_object()
            .ok_or_else(|| ModelError::format(path, "header has no \"layers\" object"))?;
        let mut ids = layers
            .keys()
            .map(|k| {
                LayerId::parse(k)
                    .ok_or_else(|| ModelError::format(path, format!("unknown layer {k:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    /// The run header the file was made with (the header without `format`, `version`, `layers` and
    /// `eval`), to
    /// compare with [`crate::job::pipeline::run_header`] before reusing a finished file.
    pub fn run(&self) -> Value {
        let mut run = self.header.clone();
        if let Value::Object(o) = &mut run {
            for key in ["format", "version", "layers", "eval"] {
                o.remove(key);
            }
        }
        run
    }

    /// The scale multiplier `c` each layer's symmetric grid was given (layers without one are left out).
    pub fn scale_multipliers(&self) -> Result<std::collections::BTreeMap<LayerId, f64>> {
        let mut out = std::collections::BTreeMap::new();
        for id in self.layers()? {
            if let Some(c) = self.header["layers"][id.name()]["report"]["scale_c"].as_f64() {
                out.insert(id, c);
            }
        }
        Ok(out)
    }

    fn bad(&self, why: String) -> ModelError {
        ModelError::format(self.file.path(), why)
    }

    fn signs(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (info, bytes) = self.file.raw(name, "I8")?;
        if info.shape != [len] {
            return Err(self.bad(format!("{name}: shape {:?}, expected [{len}]", info.shape)));
        }
        bytes
            .iter()
            .map(|&b| match b as i8 {
                1 => Ok(1.0),
                -1 => Ok(-1.0),
                other => Err(self.bad(format!("{name}: sign value {other}"))),
            })
            .collect()
    }

    pub(crate) fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (info, bytes) = self.file.raw(name, "F32")?;
        if info.shape != shape {
            return Err(self.bad(format!(
                "{name}: shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub(crate) fn u8s(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        let (info, bytes) = self.file.raw(name, "U8")?;
        if info.shape != shape {
            return Err(self.bad(format!(
                "{name}: shape {:?}, expected {shape:?}",
                info.shape
            )));
        }
        Ok(bytes.to_vec())
    }

    /// The checks every exporter makes before packing anything: this file was quantized from
    /// `original` (by fingerprint) and holds no layer `original` lacks. Returns the model's layers in
    /// order, which an exporter then reads one by one, each checked with [`QuantFile::check_layer_shape`].
    ///
    /// **Errors**: another model's file, a layer beyond the model (naming the file).
    pub fn layers_of(&self, original: &crate::formats::checkpoint::Loaded) -> Result<Vec<LayerId>> {
        let qpath = self.file.path();
        if self.header["model_fingerprint"].as_str() != Some(original.fingerprint.as_str()) {
            return Err(ModelError::format(
                qpath,
                format!(
                    "quantized from a different model than {}",
                    original.path.display()
                ),
            ));
        }
        let ids = LayerId::all(&original.model);
        if let Some(extra) = self.layers()?.into_iter().find(|id| !ids.contains(id)) {
            return Err(ModelError::format(
                qpath,
                format!(
                    "layer {} is not in {}",
                    extra.name(),
                    original.path.display()
                ),
            ));
        }
        Ok(ids)
    }

    /// That layer `id`'s codes describe an `m × n` matrix of the model's `expected` shape.
    ///
    /// **Errors**: [`ModelError::ShapeMismatch`] naming the file and `L.codes`.
    pub fn check_layer_shape(
        &self,
        id: LayerId,
        (m, n): (usize, usize),
        expected: (usize, usize),
    ) -> Result<()> {
        if (m, n) != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.file.path().to_path_buf(),
                tensor: format!("{}.codes", id.name()),
                expected: vec![expected.0, expected.1],
                found: vec![m, n],
            });
        }
        Ok(())
    }

    /// The `m × n` of layer `name` from its header entry: both positive integers that fit `usize`.
    fn dims(&self, name: &str) -> Result<(usize, usize)> {
        let e = &self.header["layers"][name];
        let dim = |k: &str| match e[k].as_u64() {
            None => Err(self.bad(format!("{name}: header field {k:?} missing"))),
            Some(0) => Err(self.bad(format!("{name}: header field {k:?} is 0"))),
            Some(v) => usize::try_from(v)
                .map_err(|_| self.bad(format!("{name}: header field {k:?} = {v} is too large"))),
        };
        Ok((dim("m")?, dim("n")?))
    }

    /// How layer `name` stores its codes, from its quantizer: `(bits per code, weights per code)`,
    /// `(k, 1)` for the `k`-bit INT grids and the `k`-bit trellis, and `(16, 8)` for E8P.
    fn code_layout(&self, name: &str) -> Result<(u32, usize)> {
        let q = &self.header["layers"][name]["quantizer"];
        match q["kind"].as_str() {
            Some("e8p") => Ok((e8p::CODE_BITS, e8p::CODE_DIM)),
            Some("fp8-e4m3") => Ok((8, 1)),
            Some("ggml") => Ok((self.ggml_format(name)?.bits(), 1)),
            Some("int-sym" | "int-asym" | "trellis") => q["bits"]
                .as_u64()
                .and_then(|b| u32::try_from(b).ok())
                .map(|b| (b, 1))
                .ok_or_else(|| {
                    self.bad(format!(
                        "{name}: quantizer bits {} is missing or not a bit width",
                        q["bits"]
                    ))
                }),
            other => Err(self.bad(format!("{name}: unknown quantizer {other:?}"))),
        }
    }

    /// The codes of layer `id`, unpacked: `m × n/d` row-major, each below `2^k`, where a code covers `d`
    /// consecutive weights of a row (`d = 1` for the INT grids, 8 for E8P) and `k` is `code_bits`.
    ///
    /// The tensor `L.codes` must be U8 `[m, ⌈(n/d)·k/8⌉]` for the layer entry's `m`, `n` and `code_bits`,
    /// every row packed as in [`bitpack::pack_rows`] with zero padding bits, and `code_bits` must be the
    /// quantizer's (the INT grids' `bits`, 16 for E8P).
    ///
    /// **Errors** (naming the file and the tensor or header field): a missing layer entry or field, an
    /// unknown quantizer, a `code_bits` different from the quantizer's, an `n` that does not split into
    /// codes, a missing tensor, another dtype, a shape that is not the packed size (a truncated or
    /// unpacked tensor), nonzero padding bits.
    pub fn codes(&self, id: LayerId) -> Result<Vec<u16>> {
        let name = id.name();
        let e = &self.header["layers"][&name];
        let (m, n) = self.dims(&name)?;
        let code_bits = e["code_bits"]
            .as_u64()
            .ok_or_else(|| self.bad(format!("{name}: header field \"code_bits\" missing")))?;
        let (bits, code_dim) = self.code_layout(&name)?;
        if code_bits != u64::from(bits) || !(1..=bitpack::MAX_BITS).contains(&bits) {
            return Err(self.bad(format!(
                "{name}: code_bits {code_bits} with a quantizer of {bits}-bit codes; expected code_bits = \
                 {bits}, at most {}",
                bitpack::MAX_BITS
            )));
        }
        if !n.is_multiple_of(code_dim) {
            return Err(self.bad(format!(
                "{name}: header field \"n\" = {n} does not split into codes of {code_dim} weights"
            )));
        }
        let cols = n / code_dim;
        let tensor = format!("{name}.codes");
        let (info, bytes) = self.file.raw(&tensor, "U8")?;
        let row_bytes = bitpack::checked_packed_len(cols, bits).ok_or_else(|| {
            self.bad(format!(
                "{name}: header field \"n\" = {n}: a row of {cols} {bits}-bit codes overflows"
            ))
        })?;
        let expected = [m, row_bytes];
        if info.shape != expected {
            return Err(self.bad(format!(
                "{tensor}: shape {:?}, expected {expected:?}: {m} rows of {cols} {bits}-bit codes, each \
                 row packed into ⌈{cols}·{bits}/8⌉ bytes",
                info.shape
            )));
        }
        bitpack::unpack_rows(bytes, m, cols, bits).map_err(|e| match e {
            ModelError::Input(why) => self.bad(format!("{tensor}: {why}")),
            other => other,
        })
    }

    /// The `format` of a `ggml` layer's quantizer.
    fn ggml_format(&self, name: &str) -> Result<GgmlFormat> {
        let q = &self.header["layers"][name]["quantizer"];
        q["format"]
            .as_str()
            .and_then(GgmlFormat::parse)
            .ok_or_else(|| {
                self.bad(format!(
                    "{name}: quantizer format {} is not one of \"q8_0\", \"q4_0\", \"q4_1\"",
                    q["format"]
                ))
            })
    }

    /// The quantizer of layer `id` as its header entry and tensors describe it, checked (every scale
    /// of a `ggml` layer a finite float16 value of the right sign, FP8 scales positive, ...).
    ///
    /// **Errors**: missing or malformed tensors and header fields, naming the file and the tensor or
    /// field.
    pub fn quantizer(&self, id: LayerId) -> Result<FittedQuantizer> {
        let name = id.name();
        let e = &self.header["layers"][&name];
        let (m, n) = self.dims(&name)?;
        let q = &e["quantizer"];
        let (bits, _) = self.code_layout(&name)?;
        Ok(match q["kind"].as_str() {
            Some("int-sym") => {
                let tensor = format!("{name}.scale");
                let s = self.f32s(&tensor, &[1])?;
                FittedQuantizer::IntSym(
                    IntSym::new(bits, s[0]).map_err(|e| self.bad(format!("{tensor}: {e}")))?,
                )
            }
            Some("int-asym") => {
                let group = q["group_size"]
                    .as_u64()
                    .and_then(|g| usize::try_from(g).ok())
                    .filter(|&g| g > 0 && n.is_multiple_of(g))
                    .ok_or_else(|| {
                        self.bad(format!(
                            "{name}: quantizer group_size {} does not divide n = {n}",
                            q["group_size"]
                        ))
                    })?;
                let groups = n / group;
                let scales = self.f32s(&format!("{name}.scales"), &[m, groups])?;
                let zeros = self.u8s(&format!("{name}.zeros"), &[m, groups])?;
                FittedQuantizer::IntAsym(IntAsymGroup::from_parts(
                    bits,
                    group,
                    Mat::from_vec(m, groups, scales)?,
                    Mat::from_vec(m, groups, zeros.into_iter().map(u16::from).collect())?,
                )?)
            }
            Some("e8p") => {
                let tensor = format!("{name}.scale");
                let s = self.f32s(&tensor, &[1])?;
                FittedQuantizer::E8p(
                    E8p::new(s[0]).map_err(|e| self.bad(format!("{tensor}: {e}")))?,
                )
            }
            Some("fp8-e4m3") => {
                let scaling = q["scaling"]
                    .as_str()
                    .and_then(Fp8Scaling::parse)
                    .ok_or_else(|| {
                        self.bad(format!(
                            "{name}: quantizer scaling {} is not one of \"b128\", \"row\", \"tensor\"",
                            q["scaling"]
                        ))
                    })?;
                let (sr, sc) = scaling.scale_shape(m, n);
                let tensor = format!("{name}.scales");
                let scales = self.f32s(&tensor, &[sr, sc])?;
                FittedQuantizer::Fp8(
                    Fp8::from_parts(scaling, m, n, Mat::from_vec(sr, sc, scales)?)
                        .map_err(|e| self.bad(format!("{tensor}: {e}")))?,
                )
            }
            Some("trellis") => {
                let tensor = format!("{name}.scale");
                let s = self.f32s(&tensor, &[1])?;
                FittedQuantizer::Trellis(
                    Trellis::new(bits, s[0]).map_err(|e| self.bad(format!("{tensor}: {e}")))?,
                )
            }
            Some("ggml") => {
                let format = self.ggml_format(&name)?;
                let block = format.block();
                if !n.is_multiple_of(block) {
                    return Err(self.bad(format!(
                        "{name}: header field \"n\" = {n} does not split into {format} blocks of \
                         {block} weights"
                    )));
                }
                let mut parts = Vec::new();
                for &(suffix, per) in GgmlBlocks::stored_names(format) {
                    let t = format!("{name}.{suffix}");
                    parts.push(Mat::from_vec(m, n / per, self.f32s(&t, &[m, n / per])?)?);
                }
                FittedQuantizer::Ggml(GgmlBlocks::from_stored(format, m, n, parts).map_err(
                    |e| {
                        let field = match &e {
                            yaqa_core::CoreError::InvalidParameter { name: suffix, .. } => {
                                format!("{name}.{suffix}")
                            }
                            _ => format!("{name}.scales"),
                        };
                        self.bad(format!("{field}: {e}"))
                    },
                )?)
            }
            other => return Err(self.bad(format!("{name}: unknown quantizer {other:?}"))),
        })
    }

    /// The codes of layer `id` ([`QuantFile::codes`]) checked against `quantizer`: no FP8 NaN byte, no
    /// `Q8_0` code −128 (`0x80`), which no rounding writes.
    ///
    /// **Errors**: those of [`QuantFile::codes`], and a code outside the grid naming its row and column.
    pub fn checked_codes(&self, id: LayerId, quantizer: &FittedQuantizer) -> Result<Vec<u16>> {
        let name = id.name();
        let (_, n) = self.dims(&name)?;
        // Below 2^bits by construction of the unpacking.
        let codes = self.codes(id)?;
        // E4M3's NaN bytes are never written: the rounding saturates at ±448.
        if matches!(quantizer, FittedQuantizer::Fp8(_))
            && let Some(at) = codes.iter().position(|&c| c & 0x7F == 0x7F)
        {
            return Err(self.bad(format!(
                "{name}.codes: code {:#04x} at row {}, column {} is an FP8 NaN, which no rounding writes",
                codes[at],
                at / n,
                at % n
            )));
        }
        if let FittedQuantizer::Ggml(g) = quantizer
            && g.format() == GgmlFormat::Q8_0
            && let Some(at) = codes.iter().position(|&c| c == 0x80)
        {
            return Err(self.bad(format!(
                "{name}.codes: code 0x80 (−128) at row {}, column {} is outside q8_0's grid −127..=127, \
                 which no rounding writes",
                at / n,
                at % n
            )));
        }
        Ok(codes)
    }

    /// Rebuilds `Ŵ` of one layer: the quantizer's levels of the stored codes (the rotated `Ŵ_r`), then the
    /// inverse rotations the pipeline applied (`R_mᵀ` with `s_out`, then `R_nᵀ` with `s_in`), on `backend`.
    /// With the backend the pipeline used, the result equals its `w_hat` bit for bit.
    ///
    /// **Errors**: missing or malformed tensors and header fields (naming the file), codes that are not
    /// the packed size ([`QuantFile::codes`]), zero-points outside the grid.
    pub fn dequantize(&self, backend: &dyn Backend, id: LayerId) -> Result<Mat<f32>> {
        let name = id.name();
        let (m, n) = self.dims(&name)?;
        let quantizer = self.quantizer(id)?;
        let codes = self.checked_codes(id, &quantizer)?;
        if let FittedQuantizer::E8p(book) = &quantizer {
            let mut w = Mat::<f32>::zeros(m, n);
            for (block, &c) in w.data.chunks_exact_mut(e8p::CODE_DIM).zip(&codes) {
                block.copy_from_slice(&book.values(c));
            }
            return self.unrotate(&name, backend, w);
        }
        if let FittedQuantizer::Trellis(t) = &quantizer {
            if !m.is_multiple_of(trellis::TILE.0) || !n.is_multiple_of(trellis::TILE.1) {
                return Err(self.bad(format!(
                    "{name}.codes: a trellis layer of {m} × {n} does not split into {} × {} tiles \
                     (one walk each)",
                    trellis::TILE.0,
                    trellis::TILE.1
                )));
            }
            let w = t
                .reconstruct(&codes, m, n)
                .map_err(|e| self.bad(format!("{name}.codes: {e}")))?;
            return self.unrotate(&name, backend, w);
        }
        // The reconstruction formulas of the quantizers' `quantize_tile`, evaluated in the same order,
        // so every level is the f32 value the rounding wrote.
        let mut w = Mat::<f32>::zeros(m, n);
        for i in 0..m {
            let codes_row = &codes[i * n..(i + 1) * n];
            for (j, (x, &c)) in w.row_mut(i).iter_mut().zip(codes_row).enumerate() {
                *x = match &quantizer {
                    FittedQuantizer::IntSym(s) => s.level(c),
                    FittedQuantizer::IntAsym(a) => {
                        let g = j / a.group_size();
                        a.scales().at(i, g) * (c as f32 - a.zeros().at(i, g) as f32)
                    }
                    FittedQuantizer::Fp8(f) => f.level(i, j, c),
                    FittedQuantizer::Ggml(g) => g.level(i, j, c),
                    // Returned above.
                    FittedQuantizer::E8p(_) => unreachable!("E8P codes cover 8 weights"),
                    FittedQuantizer::Trellis(_) => unreachable!("trellis codes form 16 × 16 walks"),
                };
            }
        }
        self.unrotate(&name, backend, w)
    }

    /// The inverse rotations of layer `name` applied to its `Ŵ_r`, when it was quantized with incoherence.
    fn unrotate(&self, name: &str, backend: &dyn Backend, mut w: Mat<f32>) -> Result<Mat<f32>> {
        let (m, n) = w.shape();
        if self.header["layers"][name]["incoherence"].as_bool() == Some(true) {
            let s_in = self.signs(&format!("{name}.signs_in"), n)?;
            let s_out = self.signs(&format!("{name}.signs_out"), m)?;
            backend.hadamard_rotate(&mut w, Side::Rows, &s_out, true)?;
            backend.hadamard_rotate(&mut w, Side::Cols, &s_in, true)?;
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use yaqa_backend_cpu::Cpu;
    use yaqa_core::layer::Method;

    use super::*;
    use crate::transformer::weights::LinearKind;

    const ID: LayerId = LayerId {
        block: 0,
        kind: LinearKind::Up,
    };

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("yaqa-quant-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A layer with random codes on a `bits`-bit grid (symmetric, or asymmetric with groups of `n`),
    /// no rotation, and `w_hat` the grid's levels of the codes, as the pipeline would hand it over.
    fn layer(bits: u32, m: usize, n: usize, asym: bool, seed: u64) -> QuantizedLayer {
        let mut rng = yaqa_core::Rng::derive(seed, "quant-file-test");
        let codes: Vec<u16> = (0..m * n).map(|_| rng.below(1u64 << bits) as u16).collect();
        let quantizer = if asym {
            let scales = (0..m).map(|i| 0.01 * (i + 1) as f32).collect();
            let zeros = (0..m).map(|i| (i as u16) % (1 << bits)).collect();
            FittedQuantizer::IntAsym(
                IntAsymGroup::from_parts(
                    bits,
                    n,
                    Mat::from_vec(m, 1, scales).unwrap(),
                    Mat::from_vec(m, 1, zeros).unwrap(),
                )
                .unwrap(),
            )
        } else {
            FittedQuantizer::IntSym(IntSym::new(bits, 0.125).unwrap())
        };
        let mut w_hat = Mat::<f32>::zeros(m, n);
        for i in 0..m {
            for j in 0..n {
                let c = codes[i * n + j];
                *w_hat.at_mut(i, j) = match &quantizer {
                    FittedQuantizer::IntSym(s) => s.level(c),
                    FittedQuantizer::IntAsym(a) => {
                        a.scales().at(i, 0) * (c as f32 - a.zeros().at(i, 0) as f32)
                    }
                    FittedQuantizer::E8p(_)
                    | FittedQuantizer::Fp8(_)
                    | FittedQuantizer::Trellis(_)
                    | FittedQuantizer::Ggml(_) => {
                        unreachable!("the INT grids only: see e8p_layer and the FP8 and ggml tests")
                    }
                };
            }
        }
        QuantizedLayer {
            w_hat,
            codes,
            quantizer,
            signs_in: None,
            signs_out: None,
            pivots: Vec::new(),
            report: LayerReport {
                method: Method::Rtn,
                proxy_two_sided: None,
                proxy_one_sided: 0.0,
                damp_in: 0.0,
                damp_out: None,
                scale_c: None,
                bits_per_weight: f64::from(bits),
                refine: None,
                optq: None,
            },
        }
    }

    /// A layer of random E8P codes (one per 8 weights of a row), with incoherence so the inverse
    /// rotations run too: `w_hat` is the codewords, scaled, rotated back with `backend`.
    fn e8p_layer(backend: &dyn Backend, m: usize, n: usize, seed: u64) -> QuantizedLayer {
        let mut rng = yaqa_core::Rng::derive(seed, "quant-file-test");
        let codes: Vec<u16> = (0..m * n / 8).map(|_| rng.below(1 << 16) as u16).collect();
        let book = E8p::new(0.03).unwrap();
        let mut w_hat = Mat::<f32>::zeros(m, n);
        for (block, &c) in w_hat.data.chunks_exact_mut(8).zip(&codes) {
            block.copy_from_slice(&book.values(c));
        }
        let signs_in = rng.signs(n);
        let signs_out = rng.signs(m);
        backend
            .hadamard_rotate(&mut w_hat, Side::Rows, &signs_out, true)
            .unwrap();
        backend
            .hadamard_rotate(&mut w_hat, Side::Cols, &signs_in, true)
            .unwrap();
        QuantizedLayer {
            w_hat,
            codes,
            quantizer: FittedQuantizer::E8p(book),
            signs_in: Some(signs_in),
            signs_out: Some(signs_out),
            pivots: Vec::new(),
            report: LayerReport {
                method: Method::Ldlq,
                proxy_two_sided: None,
                proxy_one_sided: 0.0,
                damp_in: 0.0,
                damp_out: None,
                scale_c: Some(1.1),
                bits_per_weight: 2.0,
                refine: None,
                optq: None,
            },
        }
    }

    /// Writes `q` as a part and assembles it into `dir/name`.
    fn write_file(dir: &Path, name: &str, q: &QuantizedLayer) -> PathBuf {
        let run = json!({"method": "rtn"});
        let part = dir.join(format!("{name}.part"));
        write_part(&part, ID, q, &run).unwrap();
        let out = dir.join(name);
        assemble(&[(ID, part)], &run, None, &out).unwrap();
        out
    }

    /// Copies the safetensors file `src` to `dst` with every tensor and the header passed through `edit`.
    fn rewrite(
        src: &Path,
        dst: &Path,
        edit_tensor: impl Fn(&str, &mut RawTensor),
        edit_header: impl Fn(&mut Value),
    ) {
        let file = SafetensorsFile::open(src).unwrap();
        let mut tensors = Vec::new();
        for (name, info) in &file.tensors {
            let (_, bytes) = file.raw(name, &info.dtype).unwrap();
            let dtype = match info.dtype.as_str() {
                "U8" => Dtype::U8,
                "I8" => Dtype::I8,
                _ => Dtype::F32,
            };
            let mut t = RawTensor {
                dtype,
                shape: info.shape.clone(),
                bytes: bytes.to_vec(),
            };
            edit_tensor(name, &mut t);
            tensors.push((name.clone(), t));
        }
        let mut header: Value = serde_json::from_str(&file.metadata[META_KEY]).unwrap();
        edit_header(&mut header);
        write_safetensors(dst, &tensors, META_KEY, &header.to_string()).unwrap();
    }

    #[test]
    fn codes_are_stored_packed_and_dequantize_exactly() {
        let dir = scratch("packed");
        let cpu = Cpu::default();
        // n = 5: 5·k bits per row is not a whole number of bytes for k = 3 (15 bits → 2 bytes).
        for (bits, asym) in [(2, false), (3, false), (4, true), (8, true), (3, true)] {
            let (m, n) = (3, 5);
            let q = layer(bits, m, n, asym, u64::from(bits));
            let path = write_file(&dir, &format!("q{bits}-{asym}.safetensors"), &q);
            let file = QuantFile::open(&path).unwrap();
            let name = ID.name();
            let info = &file.file.tensors[&format!("{name}.codes")];
            assert_eq!(info.dtype, "U8");
            assert_eq!(
                info.shape,
                [m, (n * bits as usize).div_ceil(8)],
                "{bits} bits"
            );
            assert_eq!(file.header["layers"][&name]["code_bits"], bits);
            let (_, bytes) = file.file.raw(&format!("{name}.codes"), "U8").unwrap();
            let row_bytes = info.shape[1];
            for i in 0..m {
                assert_eq!(
                    bytes[i * row_bytes..(i + 1) * row_bytes],
                    bitpack::pack(&q.codes[i * n..(i + 1) * n], bits).unwrap(),
                    "{bits} bits: row {i} is its own stream"
                );
            }
            let codes = file.codes(ID).unwrap();
            assert!(codes.iter().zip(&q.codes).all(|(&a, &b)| a == b));
            let w = file.dequantize(&cpu, ID).unwrap();
            assert!(
                w.data
                    .iter()
                    .zip(&q.w_hat.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{bits} bits, asym {asym}: dequantized levels differ"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// E8P codes take 16 bits per 8 weights: `L.codes` is U8 `[m, 2·n/8]`, each row the little-endian
    /// `u16` codes of its 8-weight blocks, and dequantizing (codewords, then the inverse rotations) gives
    /// `w_hat` bit for bit. A header whose `code_bits` is not 16 is refused.
    #[test]
    fn e8p_codes_are_packed_16_bits_per_8_weights() {
        let dir = scratch("e8p");
        let cpu = Cpu::default();
        let (m, n) = (12, 48);
        let q = e8p_layer(&cpu, m, n, 4);
        let path = write_file(&dir, "e8p.safetensors", &q);
        let file = QuantFile::open(&path).unwrap();
        let name = ID.name();
        let info = &file.file.tensors[&format!("{name}.codes")];
        assert_eq!(
            (info.dtype.as_str(), &info.shape[..]),
            ("U8", &[m, n / 4][..])
        );
        assert_eq!(file.header["layers"][&name]["code_bits"], 16);
        assert_eq!(file.header["layers"][&name]["quantizer"]["kind"], "e8p");
        let (_, bytes) = file.file.raw(&format!("{name}.codes"), "U8").unwrap();
        let le: Vec<u8> = q.codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        assert_eq!(bytes, &le[..]);
        assert_eq!(file.codes(ID).unwrap(), q.codes);
        let w = file.dequantize(&cpu, ID).unwrap();
        assert!(
            w.data
                .iter()
                .zip(&q.w_hat.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "dequantized E8P layer differs"
        );
        let bad = dir.join("bits.safetensors");
        rewrite(
            &path,
            &bad,
            |_, _| {},
            |h| h["layers"][ID.name()]["code_bits"] = json!(2),
        );
        let err = QuantFile::open(&bad)
            .unwrap()
            .dequantize(&cpu, ID)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bits.safetensors") && err.contains("code_bits"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn codes_of_the_wrong_size_are_refused_naming_the_tensor() {
        let dir = scratch("short");
        let cpu = Cpu::default();
        let (m, n) = (4, 6);
        let good = write_file(&dir, "good.safetensors", &layer(3, m, n, false, 5));
        let codes_name = format!("{}.codes", ID.name());
        // The packed codes are [4, 3]. Too short as a flat stream, a row short, and the version 1 layout (one
        // byte per code) under a version 2 header; the bytes follow the shape (cut, or padded with zeros).
        let cases = [
            ("short", vec![m * 3 - 1]),
            ("short-row", vec![m, 2]),
            ("unpacked", vec![m, n]),
        ];
        for (tag, shape) in cases {
            let bad = dir.join(format!("{tag}.safetensors"));
            rewrite(
                &good,
                &bad,
                |name, t| {
                    if name == codes_name {
                        t.shape = shape.clone();
                        t.bytes.resize(shape.iter().product(), 0);
                    }
                },
                |_| {},
            );
            let file = QuantFile::open(&bad).unwrap();
            for err in [
                file.codes(ID).unwrap_err().to_string(),
                file.dequantize(&cpu, ID).unwrap_err().to_string(),
            ] {
                assert!(
                    err.contains(&format!("{tag}.safetensors"))
                        && err.contains(&codes_name)
                        && err.contains("expected [4, 3]"),
                    "{tag}: {err}"
                );
            }
        }

        // Nonzero padding bits: row 0 holds 18 bits in 3 bytes, the top 6 bits of its byte 2 are padding.
        let dirty = dir.join("dirty.safetensors");
        rewrite(
            &good,
            &dirty,
            |name, t| {
                if name == codes_name {
                    t.bytes[2] |= 0x80;
                }
            },
            |_| {},
        );
        let err = QuantFile::open(&dirty)
            .unwrap()
            .codes(ID)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dirty.safetensors")
                && err.contains(&codes_name)
                && err.contains("padding"),
            "{err}"
        );

        // code_bits that disagree with the grid, or are missing.
        for (tag, value) in [("bits-differ", json!(4)), ("bits-missing", Value::Null)] {
            let bad = dir.join(format!("{tag}.safetensors"));
            rewrite(
                &good,
                &bad,
                |_, _| {},
                |h| h["layers"][ID.name()]["code_bits"] = value.clone(),
            );
            let err = QuantFile::open(&bad)
                .unwrap()
                .codes(ID)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{tag}.safetensors")) && err.contains("code_bits"),
                "{tag}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// FP8 layers (made by DAQ, the way `quantize --method daq` makes them): one byte per weight, the
    /// scale grid as `L.scales` (edge blocks smaller), dequantized bit for bit; a NaN byte, a scale
    /// that is not positive, or an unknown scaling is refused naming the tensor or field.
    #[test]
    fn fp8_layers_round_trip_and_corrupt_ones_are_refused() {
        let dir = scratch("fp8");
        let cpu = Cpu::default();
        let (m, n) = (130, 200);
        let mut rng = yaqa_core::Rng::derive(5, "fp8-file-test");
        let base = Mat::from_fn(m, n, |_, _| rng.normal() as f32 * 0.02);
        let post = Mat::from_fn(m, n, |i, j| base.at(i, j) + 1e-3 * ((i * n + j) % 7) as f32);
        let (q, _) = yaqa_core::daq::quantize_layer(
            "fp8-test",
            &post,
            &base,
            Fp8Scaling::Block,
            yaqa_core::daq::DaqParams::default(),
            &yaqa_core::daq::serial,
        )
        .unwrap();
        let path = write_file(&dir, "fp8.safetensors", &q);
        let file = QuantFile::open(&path).unwrap();
        let name = ID.name();
        let entry = &file.header["layers"][&name];
        assert_eq!(entry["code_bits"], 8);
        assert_eq!(entry["quantizer"]["kind"], "fp8-e4m3");
        assert_eq!(entry["quantizer"]["scaling"], "b128");
        assert_eq!(file.file.tensors[&format!("{name}.scales")].shape, [2, 2]);
        assert_eq!(file.file.tensors[&format!("{name}.codes")].shape, [m, n]);
        let w = file.dequantize(&cpu, ID).unwrap();
        assert!(
            w.data
                .iter()
                .zip(&q.w_hat.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "dequantized FP8 layer differs"
        );
        let refused = |tag: &str,
                       edit_tensor: &dyn Fn(&str, &mut RawTensor),
                       edit_header: &dyn Fn(&mut Value)|
         -> String {
            let bad = dir.join(format!("{tag}.safetensors"));
            rewrite(&path, &bad, edit_tensor, edit_header);
            let e = QuantFile::open(&bad)
                .and_then(|f| f.dequantize(&cpu, ID))
                .expect_err(tag);
            e.to_string()
        };
        let nan = refused(
            "nan",
            &|t, raw| {
                if t.ends_with(".codes") {
                    raw.bytes[n + 3] = 0x7F;
                }
            },
            &|_| {},
        );
        assert!(
            nan.contains(".codes") && nan.contains("NaN") && nan.contains("row 1, column 3"),
            "{nan}"
        );
        let zero = refused(
            "zero-scale",
            &|t, raw| {
                if t.ends_with(".scales") {
                    raw.bytes[..4].copy_from_slice(&0f32.to_le_bytes());
                }
            },
            &|_| {},
        );
        assert!(
            zero.contains(".scales") && zero.contains("positive"),
            "{zero}"
        );
        let scaling = refused("scaling", &|_, _| {}, &|h| {
            h["layers"][ID.name()]["quantizer"]["scaling"] = json!("b64");
        });
        assert!(
            scaling.contains("scaling") && scaling.contains("b64"),
            "{scaling}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// llama.cpp's block grids: `L.scales` (and `L.mins` for q4_1) as float16 values in F32, the codes
    /// at 8 or 4 bits, dequantized bit for bit to the pipeline's `w_hat`; a minimum that is not a
    /// float16 value, or a missing one, is refused naming the tensor.
    #[test]
    fn ggml_layers_round_trip_and_bad_minimums_are_refused() {
        use yaqa_core::layer::{LayerFactors, LayerParams, QuantizerSpec, quantize_layer};
        let dir = scratch("ggml");
        let cpu = Cpu::default();
        let (m, n) = (6, 512);
        let mut rng = yaqa_core::Rng::derive(3, "ggml-file-test");
        let w = Mat::from_fn(m, n, |_, _| rng.normal() as f32 * 0.02);
        let h = yaqa_core::SymMat::identity(n);
        for format in GgmlFormat::ALL {
            let params = LayerParams {
                method: Method::Ldlq,
                quantizer: QuantizerSpec::Ggml { format },
                incoherence: false,
                ..LayerParams::default()
            };
            let q = quantize_layer(&cpu, "t", &w, &LayerFactors::xtx(&h), &params).unwrap();
            let path = write_file(&dir, &format!("{format}.safetensors"), &q);
            let file = QuantFile::open(&path).unwrap();
            let name = ID.name();
            let entry = &file.header["layers"][&name];
            assert_eq!(entry["quantizer"]["kind"], "ggml");
            assert_eq!(entry["quantizer"]["format"], format.name());
            assert_eq!(entry["code_bits"], format.bits());
            for &(suffix, per) in GgmlBlocks::stored_names(format) {
                assert_eq!(
                    file.file.tensors[&format!("{name}.{suffix}")].shape,
                    [m, n / per]
                );
            }
            assert_eq!(
                file.file.tensors.contains_key(&format!("{name}.mins")),
                format.has_min()
            );
            let back = file.dequantize(&cpu, ID).unwrap();
            assert!(
                back.data
                    .iter()
                    .zip(&q.w_hat.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{format}: dequantized layer differs"
            );
            if format == GgmlFormat::Q4_K {
                // A 6-bit sub-scale of 64: named with its tensor, row and block.
                let bad = dir.join("bad-sub.safetensors");
                rewrite(
                    &path,
                    &bad,
                    |t, raw| {
                        if t.ends_with(".sub_scales") {
                            raw.bytes[4..8].copy_from_slice(&64f32.to_le_bytes());
                        }
                    },
                    |_| {},
                );
                let e = QuantFile::open(&bad)
                    .unwrap()
                    .dequantize(&cpu, ID)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(&format!("{name}.sub_scales")) && e.contains("row 0, block 1"),
                    "{e}"
                );
            }
            if format.has_min() {
                let bad = dir.join("bad-min.safetensors");
                rewrite(
                    &path,
                    &bad,
                    |t, raw| {
                        if t.ends_with(".mins") {
                            raw.bytes[4..8].copy_from_slice(&1e-3f32.to_le_bytes());
                        }
                    },
                    |_| {},
                );
                let e = QuantFile::open(&bad)
                    .unwrap()
                    .dequantize(&cpu, ID)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(&format!("{name}.mins")) && e.contains("row 0, block 1"),
                    "{e}"
                );
                let gone = dir.join("no-min.safetensors");
                rewrite(&path, &gone, |_, _| {}, |_| {});
                let file = SafetensorsFile::open(&gone).unwrap();
                let tensors: Vec<_> = file
                    .tensors
                    .iter()
                    .filter(|(k, _)| !k.ends_with(".mins"))
                    .map(|(k, info)| {
                        let (_, b) = file.raw(k, &info.dtype).unwrap();
                        let dtype = if info.dtype == "U8" {
                            Dtype::U8
                        } else {
                            Dtype::F32
                        };
                        (
                            k.clone(),
                            RawTensor {
                                dtype,
                                shape: info.shape.clone(),
                                bytes: b.to_vec(),
                            },
                        )
                    })
                    .collect();
                let meta = file.metadata[META_KEY].clone();
                drop(file);
                write_safetensors(&gone, &tensors, META_KEY, &meta).unwrap();
                let e = QuantFile::open(&gone)
                    .unwrap()
                    .dequantize(&cpu, ID)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(&format!("{name}.mins")), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_1_files_are_refused() {
        let dir = scratch("v1");
        let good = write_file(&dir, "good.safetensors", &layer(4, 2, 8, false, 9));
        let old = dir.join("old.safetensors");
        rewrite(&good, &old, |_, _| {}, |h| h["version"] = json!(1));
        let err = QuantFile::open(&old).unwrap_err().to_string();
        assert!(
            err.contains("old.safetensors")
                && err.contains("made by an older yaqa")
                && err.contains("re-run quantize"),
            "{err}"
        );

        // A version-1 part is unreadable to a resumed run, which then quantizes that layer again.
        let run = json!({"method": "rtn"});
        let part = dir.join("part.safetensors");
        write_part(&part, ID, &layer(4, 2, 8, false, 9), &run).unwrap();
        assert_eq!(part_run(&part), Some(run.clone()));
        let old_part = dir.join("old-part.safetensors");
        rewrite(&part, &old_part, |_, _| {}, |h| h["version"] = json!(1));
        assert_eq!(part_run(&old_part), None);
        let err = assemble(&[(ID, old_part)], &run, None, &dir.join("out.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("older yaqa"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
