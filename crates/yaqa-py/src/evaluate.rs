//! `yaqa.evaluate`: keyword arguments → [`yaqa_model::job::evaluate`], the KL table back as a dict.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use yaqa_backend_cpu::Cpu;
use yaqa_model::job::evaluate::{EvalConfig, EvalTable, EvalText};

use crate::args;
use crate::progress::run_job;

/// Measure quantized models against their original: mean KL(original ‖ quantized) per token and
/// perplexity, all on the same windows (``yaqa eval``).
///
/// ``model`` is the original (a GGUF file or a Hugging Face folder), ``quantized`` one file
/// ``yaqa.quantize`` wrote or a list of them. The windows are the first ``n_windows`` windows of
/// ``window`` tokens of ``text`` (tokenized by ``tokenizer``, default the model's), or, without
/// ``text``, sequences sampled from the original model with ``seed``.
///
/// ``base``, the model ``model`` was fine-tuned from, adds to each row ``delta``: the share of the
/// fine-tune's weight delta it keeps (``sign_preservation``, ``block_cosine``, ``row_cosine``).
///
/// ``max_memory="20G"`` streams the original's blocks from the checkpoint when it does not fit with
/// the evaluation (that needs ``text``).
///
/// ``progress``, when given, is called with a dict per event (see the package docs).
///
/// Returns a dict: ``original_ppl``, ``rows`` (one dict ``model``, ``kl``, ``ppl`` per quantized file,
/// ``model`` being the file's stem), ``text`` (the text's file name or ``"model-sampled text"``),
/// ``window`` and ``n_windows``.
///
/// Raises ``YaqaError`` with the library's message (a missing file names it; so does a file
/// quantized from another model).
#[pyfunction]
#[pyo3(signature = (
    model, quantized, *, text = None, tokenizer = None,
    window = 512, n_windows = 8, seed = 1, max_memory = None, base = None, progress = None
))]
pub fn evaluate<'py>(
    py: Python<'py>,
    model: PathBuf,
    quantized: &Bound<'py, PyAny>,
    text: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    window: usize,
    n_windows: usize,
    seed: u64,
    max_memory: Option<&str>,
    base: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let config = EvalConfig {
        model,
        quantized: args::paths(Some(quantized))?,
        text: EvalText {
            text,
            tokenizer,
            window,
            n_windows,
            seed,
            allow_long_context: false,
        },
        max_memory: args::max_memory(max_memory)?,
        base,
    };
    let table = run_job(py, progress, |p| {
        yaqa_model::job::evaluate::run(&Cpu::default(), &config, p)
    })?;
    eval_dict(py, &table)
}

/// The table as a dict: `original_ppl`, `rows` of `{model, kl, kl_se, ppl}`, `text`, `window`,
/// `n_windows`.
pub fn eval_dict<'py>(py: Python<'py>, t: &EvalTable) -> PyResult<Bound<'py, PyDict>> {
    let rows = PyList::empty(py);
    for r in &t.rows {
        let d = PyDict::new(py);
        d.set_item("model", &r.name)?;
        d.set_item("kl", r.kl)?;
        d.set_item("kl_se", r.kl_se())?;
        d.set_item("ppl", r.ppl)?;
        if let Some(delta) = &r.delta {
            let t = &delta.total;
            let dd = PyDict::new(py);
            dd.set_item("sign_preservation", t.sign_rate())?;
            dd.set_item("block_cosine", t.block_cos())?;
            dd.set_item("row_cosine", t.row_cos())?;
            d.set_item("delta", dd)?;
        }
        rows.append(d)?;
    }
    let d = PyDict::new(py);
    d.set_item("original_ppl", t.original_ppl)?;
    d.set_item("rows", rows)?;
    d.set_item("text", &t.source)?;
    d.set_item("window", t.window)?;
    d.set_item("n_windows", t.n_windows)?;
    Ok(d)
}
