//! `yaqa.collect` and `yaqa.merge`: keyword arguments → [`yaqa_model::job::hessian`] (`yaqa hessian`
//! and `yaqa hessian merge`), the reports back as dicts.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use yaqa_backend_cpu::Cpu;
use yaqa_model::job::hessian::{self, HessianConfig};
use yaqa_model::job::memory;

use crate::args;
use crate::progress::run_job;

/// Collect every linear layer's Kronecker factors over a calibration set into a folder
/// (``yaqa hessian``), for ``yaqa.quantize(..., factors=out)``.
///
/// ``model`` is a GGUF file or a Hugging Face folder, ``out`` the factor folder: one file per layer and
/// ``calibration.safetensors`` with the token ids and Fisher labels used. ``sketch`` is ``"b"`` (Sketch
/// B, per-sequence gradients, one pass), ``"a"`` (Sketch A, power iteration over ``passes`` passes,
/// default 2) or ``"xtx"`` (Σ x xᵀ from a forward pass, for GPTQ and LDLQ). ``from_dir`` runs the one
/// Sketch A pass after the merged pass stored there (collection over machines).
///
/// Calibration: ``n_seqs`` sequences of ``seq_len`` tokens, windows of the ``calib`` text files (a path
/// or a list; ``tokenizer`` a tokenizer.json, default the model's), token ids from ``calib_ids``, or,
/// with neither, sampled from the model; ``seed`` seeds them and the Fisher labels. ``shard="I/N"``
/// collects only shard I of N (0-based), to be added up by ``yaqa.merge``. The collection checkpoints
/// about every ``checkpoint_minutes``, or every ``checkpoint_every`` sequences, into
/// ``OUT.partial/``; calling again with the same arguments resumes. ``layers="A..B"`` collects only the
/// layers of blocks A to B−1 (``yaqa.merge`` joins disjoint groups); ``max_memory="20G"`` streams the
/// blocks from the checkpoint and collects the layers in groups when the model does not fit.
///
/// ``progress``, when given, is called with a dict per event (see the package docs).
///
/// Returns a dict: ``out`` (a ``pathlib.Path``), ``files`` (factor files written), ``sketch`` (their
/// tag: ``"b"``, ``"xtx"``, ``"a-p1"``, ...), ``n_seqs`` (sequences of this shard), ``seconds``, and
/// ``next`` (what to run next in a Sketch A run over machines, else ``None``).
///
/// Raises ``YaqaError`` with the library's message, ``ValueError`` for an argument the binding cannot
/// read.
#[pyfunction]
#[pyo3(signature = (
    model, out, *, sketch = "b", passes = None, from_dir = None, calib = None, tokenizer = None,
    calib_ids = None, n_seqs = 64, seq_len = 512, seed = 0, shard = None,
    checkpoint_minutes = 30.0, checkpoint_every = None, layers = None, max_memory = None,
    progress = None
))]
pub fn collect<'py>(
    py: Python<'py>,
    model: PathBuf,
    out: PathBuf,
    sketch: &str,
    passes: Option<u32>,
    from_dir: Option<PathBuf>,
    calib: Option<&Bound<'py, PyAny>>,
    tokenizer: Option<PathBuf>,
    calib_ids: Option<PathBuf>,
    n_seqs: usize,
    seq_len: usize,
    seed: u64,
    shard: Option<&str>,
    checkpoint_minutes: f64,
    checkpoint_every: Option<usize>,
    layers: Option<&str>,
    max_memory: Option<&str>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let bad = |e: String| pyo3::exceptions::PyValueError::new_err(e);
    let config = HessianConfig {
        model,
        sketch: args::sketch(sketch)?,
        passes,
        from: from_dir,
        calib: args::calib(calib, tokenizer, calib_ids, n_seqs, seq_len, seed)?,
        shard: shard.map(args::shard).transpose()?,
        out,
        checkpoint: args::checkpoint(checkpoint_minutes, checkpoint_every)?,
        layers: layers.map(memory::parse_blocks).transpose().map_err(bad)?,
        max_memory: args::max_memory(max_memory)?,
    };
    let r = run_job(py, progress, |p| hessian::run(&Cpu::default(), &config, p))?;
    let d = PyDict::new(py);
    d.set_item("out", &r.out)?;
    d.set_item("files", r.files)?;
    d.set_item("sketch", &r.sketch)?;
    d.set_item("n_seqs", r.n_seqs)?;
    d.set_item("seconds", r.seconds)?;
    d.set_item("next", &r.next)?;
    Ok(d)
}

/// Add factor shards (folders ``yaqa.collect(..., shard="I/N")`` wrote) into the folder ``out``
/// (``yaqa hessian merge``).
///
/// ``shards`` is a list of folders. Returns a dict: ``out`` (a ``pathlib.Path``), ``shards`` (how
/// many), ``files`` (factor files written) and ``records`` (whether the shards' calibration records
/// were merged too).
///
/// Raises ``YaqaError`` with the library's message: shards that do not hold the same layers, repeat a
/// shard or sequence, or come from other runs.
#[pyfunction]
#[pyo3(signature = (out, shards))]
pub fn merge<'py>(
    py: Python<'py>,
    out: PathBuf,
    shards: Vec<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let r = run_job(py, None, |_| hessian::merge(&out, &shards))?;
    let d = PyDict::new(py);
    d.set_item("out", &r.out)?;
    d.set_item("shards", r.shards)?;
    d.set_item("files", r.files)?;
    d.set_item("records", r.records)?;
    Ok(d)
}
