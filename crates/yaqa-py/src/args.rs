//! Keyword arguments → the library's config pieces, shared by the functions: method and grid names,
//! paths given as one path or a list, calibration, checkpoints and damping. A value the binding itself
//! cannot read (an unknown method name, a shard that is not `I/N`) raises `ValueError` before any
//! work, as the command line's flag parser refuses it; everything the library checks raises
//! [`crate::YaqaError`].

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use yaqa_core::layer::Method;
use yaqa_model::job::calib::Shard;
use yaqa_model::job::compare::CompareMethod;
use yaqa_model::job::hessian::Sketch;
use yaqa_model::job::{CalibConfig, CheckpointPolicy, Every, Grid};

pub fn value_error(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// `quantize`'s `method`: `rtn`, `gptq`, `ldlq`, `yaqa` (YAQA with Sketch B factors, also spelled
/// `yaqa-b`, as in `compare`'s rows), `qronos` (always sequential), `daq`.
pub fn method(name: &str) -> PyResult<Method> {
    Ok(match name {
        "rtn" => Method::Rtn,
        "gptq" => Method::Gptq,
        "ldlq" => Method::Ldlq,
        "yaqa" | "yaqa-b" => Method::Yaqa,
        "qronos" => Method::Qronos,
        "daq" => Method::Daq,
        _ => {
            return Err(value_error(format!(
                "method={name:?}: expected one of \"rtn\", \"gptq\", \"ldlq\", \"yaqa\", \"yaqa-b\", \"qronos\", \"daq\""
            )));
        }
    })
}

/// `compare`'s row names (`rtn`, `gptq`, `ldlq`, `yaqa-a`, `yaqa-b`, `yaqa-ab`).
pub fn compare_method(name: &str) -> PyResult<CompareMethod> {
    CompareMethod::CHOICES
        .into_iter()
        .find(|m| m.label() == name)
        .ok_or_else(|| {
            let all: Vec<String> = CompareMethod::CHOICES
                .iter()
                .map(|m| format!("{:?}", m.label()))
                .collect();
            value_error(format!(
                "methods: {name:?} is not one of {}",
                all.join(", ")
            ))
        })
}

/// `collect`'s `sketch`: `a`, `b` or `xtx`.
pub fn sketch(name: &str) -> PyResult<Sketch> {
    [Sketch::A, Sketch::B, Sketch::Xtx]
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| value_error(format!("sketch={name:?}: expected \"a\", \"b\" or \"xtx\"")))
}

/// The quantizer from `bits` (an INT grid) and the command line's spelling `quantizer="int4"` or
/// `quantizer="e8p"`; `bits` must then be left at its default (4) or agree with the quantizer's bits.
pub fn grid(bits: u32, quantizer: Option<&str>) -> PyResult<Grid> {
    let Some(q) = quantizer else {
        return Ok(Grid::Int(bits));
    };
    let grid = quantizer_name(q)?;
    if bits != 4 && bits != grid.bits() {
        return Err(value_error(format!(
            "bits={bits} and quantizer={q:?} disagree: give one of them"
        )));
    }
    Ok(grid)
}

/// A quantizer's name, as the command line spells it (`int2`, …, `e8p`).
pub fn quantizer_name(q: &str) -> PyResult<Grid> {
    Grid::parse(q).ok_or_else(|| {
        value_error(format!(
            "quantizer={q:?}: expected one of {}",
            Grid::NAMES
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// `shard="I/N"`.
pub fn shard(s: &str) -> PyResult<Shard> {
    s.parse().map_err(value_error)
}

/// One path or a sequence of paths (`str` or `os.PathLike`); `None` is none.
pub fn paths(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<PathBuf>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    if let Ok(p) = obj.extract::<PathBuf>() {
        return Ok(vec![p]);
    }
    obj.extract::<Vec<PathBuf>>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(
            "expected a path (str or os.PathLike) or a list of paths",
        )
    })
}

/// A damping σ: a finite number ≥ 0.
pub fn damping(name: &str, v: f64) -> PyResult<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(value_error(format!(
            "{name}={v}: damping must be a finite number ≥ 0"
        )))
    }
}

/// The calibration set: text files, or a file of token ids (which fixes the sequences itself), or
/// neither (sampled from the model).
pub fn calib(
    text: Option<&Bound<'_, PyAny>>,
    tokenizer: Option<PathBuf>,
    ids: Option<PathBuf>,
    n_seqs: usize,
    seq_len: usize,
    seed: u64,
) -> PyResult<CalibConfig> {
    let text = paths(text)?;
    if ids.is_some() && (!text.is_empty() || tokenizer.is_some()) {
        return Err(value_error(
            "calib_ids gives the calibration tokens itself: leave calib and tokenizer out".into(),
        ));
    }
    Ok(CalibConfig {
        text,
        tokenizer,
        ids,
        n_seqs,
        seq_len,
        seed,
        allow_long_context: false,
    })
}

/// Checkpoints about every `minutes` of collection, or every `every` sequences when given.
pub fn checkpoint(minutes: f64, every: Option<usize>) -> PyResult<CheckpointPolicy> {
    let every = match every {
        Some(0) => return Err(value_error("checkpoint_every=0: must be at least 1".into())),
        Some(n) => Every::Seqs(n),
        None if minutes.is_finite() && minutes > 0.0 => Every::Secs(minutes * 60.0),
        None => {
            return Err(value_error(format!(
                "checkpoint_minutes={minutes}: must be a finite number > 0"
            )));
        }
    };
    Ok(CheckpointPolicy {
        every,
        stop_after_seqs: None,
    })
}

/// ``max_memory="20G"`` as bytes (``None``: no limit).
pub fn max_memory(text: Option<&str>) -> PyResult<Option<u64>> {
    text.map(yaqa_model::job::memory::parse_bytes)
        .transpose()
        .map_err(pyo3::exceptions::PyValueError::new_err)
}
