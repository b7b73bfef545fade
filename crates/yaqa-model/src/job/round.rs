//! `round`: one weight matrix (from a safetensors file) rounded against one layer's factor file, written
//! as `w_hat` (F32) and `codes` (bit-packed row by row as in quantized files: U8 `[m, ⌈(n/d)·k/8⌉]`,
//! `k` = `code_bits`, `d` = `code_dim`) with the layer report in the header. An existing output is never
//! replaced: the command refuses it before any work.

use std::path::PathBuf;

use serde_json::{Value, json};
use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::layer::{LayerReport, quantize_layer};

use crate::error::{Context, ModelError, Result};
use crate::formats::factor_file::read_factors;
use crate::formats::hf::{RawTensor, SafetensorsFile, write_safetensors};
use crate::formats::quant_file::{code_layout, packed_codes, report_json};
use crate::job::QuantSpec;
use crate::job::guard::{named, refuse_overwrite};
use crate::job::pipeline::quantizer_json;

/// What `round` rounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundConfig {
    /// Safetensors file holding the weight matrix (F32, F16 or BF16, m × n).
    pub weights: PathBuf,
    /// Tensor name (default: the file's only 2-D tensor).
    pub tensor: Option<String>,
    /// One layer's factor file from `hessian`.
    pub factors: PathBuf,
    pub spec: QuantSpec,
    /// The output safetensors file.
    pub out: PathBuf,
}

/// What `round` did.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    pub tensor: String,
    pub report: LayerReport,
}

impl RoundReport {
    /// The layer report as the file's header records it.
    pub fn to_json(&self) -> Value {
        report_json(&self.report)
    }
}

/// Rounds the matrix `config` names and writes the result.
///
/// **Errors**: no or several 2-D tensors without a name, a tensor that is not a matrix, an unreadable
/// factor file or one whose factors do not fit the matrix (another layer's), a spec the matrix cannot
/// take, rounding errors (naming the tensor), I/O.
pub fn run(backend: &dyn Backend, config: &RoundConfig) -> Result<RoundReport> {
    refuse_overwrite(
        &[named("--out", &config.out)],
        &[
            named("--weights", &config.weights),
            named("--factors", &config.factors),
        ],
    )?;
    // `round` has no resumption to protect and no overwrite flag: a result already there (perhaps of
    // another matrix or method) is the user's to remove.
    if config.out.exists() {
        crate::bail!(
            "--out {} already exists: round does not replace a file; remove it or choose another --out",
            config.out.display()
        );
    }
    let shown = config.weights.display();
    let file =
        SafetensorsFile::open(&config.weights).with_context(|| format!("opening {shown}"))?;
    let name = match &config.tensor {
        Some(n) => n.clone(),
        None => {
            let two_d: Vec<&String> = file
                .tensors
                .iter()
                .filter(|(_, t)| t.shape.len() == 2)
                .map(|(n, _)| n)
                .collect();
            match two_d.as_slice() {
                [one] => (*one).clone(),
                _ => crate::bail!(
                    "{shown} holds {} 2-D tensors: name one with --tensor",
                    two_d.len()
                ),
            }
        }
    };
    let (shape, data) = file
        .tensor_f32(&name)
        .with_context(|| format!("reading {name} from {shown}"))?;
    let [m, n] = shape[..] else {
        crate::bail!("{shown}: {name} is not a matrix: shape {shape:?}");
    };
    config.spec.check_shapes(&[(m, n)])?;
    let w = Mat::from_vec(m, n, data)?;
    let f = read_factors(&config.factors)
        .with_context(|| format!("reading factors {}", config.factors.display()))?;
    let params = config.spec.layer_params();
    let factors = f.factors.for_method(params.method);
    // Factors of another layer would fail inside the rounding as an unnamed shape mismatch.
    let wrong = |side: &str, k: usize, what: String| {
        ModelError::Refused(format!(
            "--factors {}: {side} of {} is {k} × {k}, but {name} in --weights {shown} is {m} × {n} \
             ({what}): pass the factor file of the layer this matrix belongs to",
            config.factors.display(),
            f.layer.name(),
        ))
    };
    if factors.h_in.n != n {
        return Err(wrong("h_in", factors.h_in.n, format!("{n} columns")));
    }
    if let Some(h_out) = factors.h_out
        && h_out.n != m
    {
        return Err(wrong("h_out", h_out.n, format!("{m} rows")));
    }
    let q = quantize_layer(backend, &name, &w, &factors, &params)
        .with_context(|| format!("rounding {name}"))?;
    // Bit-packed row by row, as `L.codes` in a quantized file.
    let (codes, code_bits) = packed_codes(&name, &q)?;
    let code_dim = code_layout(&q.quantizer).1;
    let tensors = vec![
        (
            "w_hat".to_string(),
            RawTensor::f32s(vec![m, n], &q.w_hat.data),
        ),
        ("codes".to_string(), codes),
    ];
    let header = json!({
        "tensor": name,
        "method": params.method.name(),
        "quantizer": quantizer_json(&params.quantizer),
        "incoherence": params.incoherence,
        "sign_seed": params.seed,
        "code_bits": code_bits,
        "code_dim": code_dim,
        "report": report_json(&q.report),
    });
    write_safetensors(&config.out, &tensors, "yaqa", &header.to_string())?;
    Ok(RoundReport {
        tensor: name,
        report: q.report,
    })
}
