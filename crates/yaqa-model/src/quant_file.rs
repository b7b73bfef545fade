//! Quantized-model files: codes, quantizer parameters and sign vectors of every quantized linear layer,
//! plus a JSON header (quantizer, rotation, seeds, method, per-layer report), enough to rebuild every
//! `Ŵ` bit for bit ([`QuantFile::dequantize`]). The layout is in docs/FORMAT.md.
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
use yaqa_core::quant::int::{IntAsymGroup, IntSym};

use crate::collect::LayerId;
use crate::error::{ModelError, Result};
use crate::hf::{RawTensor, SafetensorsFile, write_safetensors};

/// The metadata key that holds the JSON header.
pub const META_KEY: &str = "yaqa";
/// The `format` field of a final file and of a part.
pub const FORMAT: &str = "yaqa-quantized";
pub const PART_FORMAT: &str = "yaqa-quantized-part";
pub const VERSION: u64 = 1;

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
    })
}

/// The tensors of one quantized layer and its header entry.
fn layer_tensors(id: LayerId, q: &QuantizedLayer) -> Result<(Vec<(String, RawTensor)>, Value)> {
    let name = id.name();
    let (m, n) = q.w_hat.shape();
    let mut t = vec![(
        format!("{name}.codes"),
        u8_tensor(vec![m, n], &q.codes, &format!("{name} codes"))?,
    )];
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
    };
    if let (Some(s_in), Some(s_out)) = (&q.signs_in, &q.signs_out) {
        t.push((format!("{name}.signs_in"), sign_tensor(s_in)));
        t.push((format!("{name}.signs_out"), sign_tensor(s_out)));
    }
    let entry = json!({
        "m": m,
        "n": n,
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

/// Joins the parts (in the order given) into the final file at `out`, with `run` as the run header and
/// every part's entry under `layers`.
///
/// **Errors**: unreadable or malformed parts (named), a part made by a different run, I/O on `out`.
pub fn assemble(parts: &[(LayerId, std::path::PathBuf)], run: &Value, out: &Path) -> Result<()> {
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

    /// The run header the file was made with (the header without `format`, `version` and `layers`), to
    /// compare with [`crate::pipeline::run_header`] before reusing a finished file.
    pub fn run(&self) -> Value {
        let mut run = self.header.clone();
        if let Value::Object(o) = &mut run {
            for key in ["format", "version", "layers"] {
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

    /// Rebuilds `Ŵ` of one layer: the quantizer's levels of the stored codes (the rotated `Ŵ_r`), then the
    /// inverse rotations the pipeline applied (`R_mᵀ` with `s_out`, then `R_nᵀ` with `s_in`), on `backend`.
    /// With the backend the pipeline used, the result equals its `w_hat` bit for bit.
    ///
    /// **Errors**: missing or malformed tensors and header fields (naming the file), codes outside the
    /// grid.
    pub fn dequantize(&self, backend: &dyn Backend, id: LayerId) -> Result<Mat<f32>> {
        let name = id.name();
        let e = &self.header["layers"][&name];
        let dim = |k: &str| {
            e[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| self.bad(format!("{name}: header field {k:?} missing")))
        };
        let (m, n) = (dim("m")?, dim("n")?);
        let q = &e["quantizer"];
        let bits = q["bits"]
            .as_u64()
            .ok_or_else(|| self.bad(format!("{name}: quantizer bits missing")))?
            as u32;
        let quantizer: FittedQuantizer = match q["kind"].as_str() {
            Some("int-sym") => {
                let s = self.f32s(&format!("{name}.scale"), &[1])?;
                FittedQuantizer::IntSym(IntSym::new(bits, s[0])?)
            }
            Some("int-asym") => {
                let group = q["group_size"]
                    .as_u64()
                    .filter(|&g| g > 0 && n % g as usize == 0)
                    .ok_or_else(|| self.bad(format!("{name}: bad group_size")))?
                    as usize;
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
            other => return Err(self.bad(format!("{name}: unknown quantizer {other:?}"))),
        };
        let codes = self.u8s(&format!("{name}.codes"), &[m, n])?;
        let max_code = (1u32 << bits) - 1;
        if let Some(&c) = codes.iter().find(|&&c| c as u32 > max_code) {
            return Err(self.bad(format!("{name}: code {c} outside the {bits}-bit grid")));
        }
        // The reconstruction formulas of the quantizers' `quantize_tile`, evaluated in the same order,
        // so every level is the f32 value the rounding wrote.
        let mut w = Mat::<f32>::zeros(m, n);
        for i in 0..m {
            let codes_row = &codes[i * n..(i + 1) * n];
            for (j, (x, &c)) in w.row_mut(i).iter_mut().zip(codes_row).enumerate() {
                *x = match &quantizer {
                    FittedQuantizer::IntSym(s) => s.level(c as u16),
                    FittedQuantizer::IntAsym(a) => {
                        let g = j / a.group_size();
                        a.scales().at(i, g) * (c as f32 - a.zeros().at(i, g) as f32)
                    }
                };
            }
        }
        if e["incoherence"].as_bool() == Some(true) {
            let s_in = self.signs(&format!("{name}.signs_in"), n)?;
            let s_out = self.signs(&format!("{name}.signs_out"), m)?;
            backend.hadamard_rotate(&mut w, Side::Rows, &s_out, true)?;
            backend.hadamard_rotate(&mut w, Side::Cols, &s_in, true)?;
        }
        Ok(w)
    }
}
