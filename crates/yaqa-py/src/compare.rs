//! `yaqa.compare`: keyword arguments → [`yaqa_model::job::compare`], the KL table back as a list of
//! rows.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use yaqa_backend_cpu::Cpu;
use yaqa_model::job::Grid;
use yaqa_model::job::compare::{CompareConfig, CompareMethod};
use yaqa_model::job::evaluate::EvalText;

use crate::args;
use crate::progress::run_job;

/// The KL table (``yaqa compare``): one calibration set collected once, every quantizer quantized by
/// each method against the same per-matrix scale (RTN's), every model evaluated on the same windows.
///
/// ``model`` is a GGUF file or a Hugging Face folder; ``work`` a folder for the factors and quantized
/// models, which a call with the same arguments reuses (an interrupted call continues). ``bits`` are
/// widths of the symmetric INT grid, of 2, 3, 4, 8 (default ``[2, 3, 4]``; incoherence processing
/// on), or ``quantizers`` names instead, of ``"int2"``, ``"int3"``, ``"int4"``, ``"int8"``, ``"e8p"``
/// (the E8P lattice codebook of QuIP#), ``"trellis2"``, ``"trellis3"``, ``"trellis4"`` (the QTIP
/// trellis; E8P and the trellis without ``"gptq"`` or ``refine``); ``methods`` the rows, of ``"rtn"``, ``"gptq"``, ``"ldlq"``, ``"yaqa-a"``, ``"yaqa-b"``, ``"yaqa-ab"`` (YAQA with the equal-weight blend of both sketches' normalised factors; not in the paper, not a default row)
/// (default: all; RTN always runs, it chooses the shared scales). ``passes`` are Sketch A's passes
/// for YAQA-A (at least 2).
///
/// Calibration: ``n_seqs`` sequences of ``seq_len`` tokens, windows of the ``calib`` text files (a path
/// or a list; ``tokenizer`` a tokenizer.json, default the model's), token ids from ``calib_ids``, or,
/// with neither, sampled from the model; ``seed`` seeds them, the Fisher labels and the sampled
/// evaluation text. ``b_seqs`` (default ``n_seqs``) sequences feed Sketch B and the Σ x xᵀ of RTN,
/// GPTQ and LDLQ. Evaluation: the first ``n_windows`` windows of ``window`` tokens of ``text``, or
/// sampled from the model. ``sign_seed``, ``damp``, ``damp_out`` as for ``yaqa.quantize``; ``refine``
/// coordinate-descent sweeps after every method but RTN (rows ``<method>-cd<N>-<quantizer>``).
///
/// ``progress``, when given, is called with a dict per event (see the package docs).
///
/// Returns a list with one dict per row: ``model`` (``"ldlq-int4"``, ``"ldlq-e8p"``, ...),
/// ``quantizer``, ``bits``, ``kl``, ``ppl``,
/// and ``original_ppl`` (the original's perplexity on the same windows).
///
/// Raises ``YaqaError`` with the library's message, ``ValueError`` for an argument the binding cannot
/// read.
#[pyfunction]
#[pyo3(signature = (
    model, work, *, bits = None, quantizers = None, methods = None, passes = 2, b_seqs = None, calib = None,
    tokenizer = None, calib_ids = None, n_seqs = 64, seq_len = 512, seed = 0, text = None,
    window = 512, n_windows = 8, sign_seed = 0, damp = 0.01, damp_out = 1.0, refine = 0,
    checkpoint_minutes = 30.0, checkpoint_every = None, progress = None
))]
pub fn compare<'py>(
    py: Python<'py>,
    model: PathBuf,
    work: PathBuf,
    bits: Option<Vec<u32>>,
    quantizers: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    passes: u32,
    b_seqs: Option<usize>,
    calib: Option<&Bound<'py, PyAny>>,
    tokenizer: Option<PathBuf>,
    calib_ids: Option<PathBuf>,
    n_seqs: usize,
    seq_len: usize,
    seed: u64,
    text: Option<PathBuf>,
    window: usize,
    n_windows: usize,
    sign_seed: u64,
    damp: f64,
    damp_out: f64,
    refine: usize,
    checkpoint_minutes: f64,
    checkpoint_every: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let methods = match methods {
        Some(names) => names
            .iter()
            .map(|m| args::compare_method(m))
            .collect::<PyResult<_>>()?,
        None => CompareMethod::ALL.to_vec(),
    };
    let config = CompareConfig {
        model,
        calib: args::calib(calib, tokenizer, calib_ids, n_seqs, seq_len, seed)?,
        passes,
        b_seqs,
        grids: match (bits, quantizers) {
            (Some(_), Some(_)) => {
                return Err(args::value_error(
                    "bits and quantizers both given: give one of them".into(),
                ));
            }
            (Some(bits), None) => bits.into_iter().map(Grid::Int).collect(),
            (None, Some(names)) => names
                .iter()
                .map(|q| args::quantizer_name(q))
                .collect::<PyResult<_>>()?,
            (None, None) => CompareConfig::default().grids,
        },
        methods,
        eval: EvalText {
            text,
            tokenizer: None,
            window,
            n_windows,
            // As on the command line: sampled evaluation text takes the calibration seed (its stream
            // is kept apart from the calibration samples').
            seed,
            allow_long_context: false,
        },
        sign_seed,
        damp: args::damping("damp", damp)?,
        damp_out: args::damping("damp_out", damp_out)?,
        refine,
        work,
        checkpoint: args::checkpoint(checkpoint_minutes, checkpoint_every)?,
    };
    let report = run_job(py, progress, |p| {
        yaqa_model::job::compare::run(&Cpu::default(), &config, None, p)
    })?;
    let rows = PyList::empty(py);
    for t in &report.tables {
        for r in &t.table.rows {
            let d = PyDict::new(py);
            d.set_item("model", &r.name)?;
            d.set_item("quantizer", t.grid.name())?;
            d.set_item("bits", t.grid.bits())?;
            d.set_item("kl", r.kl)?;
            d.set_item("kl_se", r.kl_se())?;
            if let Some((ratio, se)) = t.table.reference_row().and_then(|b| r.ratio_to(b)) {
                d.set_item("ratio_to_ldlq", ratio)?;
                d.set_item("ratio_se", se)?;
            }
            d.set_item("ppl", r.ppl)?;
            d.set_item("original_ppl", t.table.original_ppl)?;
            rows.append(d)?;
        }
    }
    Ok(rows)
}
