//! `yaqa.quantize`: keyword arguments → [`yaqa_model::job::quantize`], the report back as a dict.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use yaqa_backend_cpu::Cpu;
use yaqa_model::job::QuantSpec;
use yaqa_model::job::evaluate::EvalText;
use yaqa_model::job::overrides::Overrides;
use yaqa_model::job::quantize::{QuantizeConfig, QuantizeReport, default_eval};

use crate::args;
use crate::evaluate::eval_dict;
use crate::progress::run_job;

/// Quantize every linear layer of a model into one safetensors file, then measure the result's KL to
/// the original and its perplexity (``yaqa quantize``).
///
/// ``model`` is a GGUF file or a Hugging Face folder, ``out`` the quantized file. Finished layers go to
/// ``OUT.parts/`` first, factors collected here to ``OUT.factors.partial/``: calling again with the same
/// arguments after an interruption (Ctrl-C included) resumes.
///
/// Rounding: ``method`` is ``"rtn"``, ``"gptq"``, ``"ldlq"`` or ``"yaqa"`` (also ``"yaqa-b"``), or
/// ``"daq"``: delta-aware FP8 scales searched against ``base``, the checkpoint the model was
/// fine-tuned from (data-free; with ``quantizer="fp8"`` and ``incoherence=False``; ``daq_no_clip=True``
/// searches multipliers in [1, 1.5] only); ``bits``
/// 2, 3, 4 or 8 of the INT grid (or ``quantizer="int4"``, the command line's spelling,
/// ``quantizer="e8p"`` for the E8P lattice codebook of QuIP#, 2 bits, ``quantizer="trellis2"``
/// (``"trellis3"``, ``"trellis4"``) for the QTIP trellis, both not with ``"gptq"`` or ``refine``, and
/// ``"fp8"``, ``"fp8-row"``, ``"fp8-tensor"`` for FP8 E4M3 with AbsMax scales per 128 × 128 block, row
/// or tensor; ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``, ``"q4_k"`` for llama.cpp's block grids with ``incoherence=False``,
/// which ``yaqa export --format gguf`` writes as a GGUF file); ``group`` an asymmetric grid with one scale per ``group`` columns (GPTQ layout); ``incoherence=False`` skips the
/// randomized Hadamard rotations, whose signs ``sign_seed`` seeds; ``damp`` and ``damp_out`` the first
/// damping of ``h_in`` and ``h_out`` (multiples of the mean diagonal); ``refine`` coordinate-descent
/// sweeps after the rounding; ``act_order=True`` (GPTQ) rounds columns by decreasing ``diag(H)`` with
/// static groups; ``stochastic`` (GPTQ) an integer seed for unbiased stochastic rounding inside the error
/// feedback (recorded; each layer draws its own stream), ``None`` rounds to nearest; ``method="qronos"``
/// is Qronos (arXiv 2505.11695), always sequential.
///
/// ``sequential=True`` (``"gptq"``, ``"ldlq"``; implied by ``"qronos"``) quantizes block by block in
/// true-sequential order, each group of layers on the inputs of the already quantized model, collecting
/// its statistics on the calibration sequences as it goes (no ``factors``).
///
/// ``overrides`` (a list of ``"REGEX=RULE"`` strings, the command line's ``--override``): layers whose
/// name matches REGEX take RULE, ``"keep"`` (left unquantized) or comma-separated ``quantizer:Q``,
/// ``bits:K``, ``group:G`` or ``group:none``, ``method:rtn|gptq|ldlq|yaqa``; the first matching rule
/// decides, each must match a layer, and they are recorded in the output.
///
/// ``scales_from`` (the command line's ``--scales-from``): a file quantized earlier from this model with
/// the same quantizer, whose searched scale multiplier every layer takes instead of searching again.
///
/// Factors: from ``factors`` (a folder ``yaqa.collect`` wrote), or collected first (Sketch B for YAQA,
/// Σ x xᵀ otherwise) over ``n_seqs`` sequences of ``seq_len`` tokens: windows of the ``calib`` text
/// files (a path or a list; ``tokenizer`` a tokenizer.json, default the model's), token ids from
/// ``calib_ids`` (a calibration.safetensors), or, with neither, sampled from the model; ``seed`` seeds
/// the windows or samples and the Fisher labels. The collection checkpoints about every
/// ``checkpoint_minutes``, or every ``checkpoint_every`` sequences.
///
/// Evaluation (unless ``evaluate=False``): ``eval_windows`` windows of ``eval_window`` tokens of
/// ``eval_text``, or sampled from the original model.
///
/// ``max_memory="20G"`` streams the blocks from the checkpoint when the model does not fit; that needs
/// ``factors``, and ``eval_text`` or ``evaluate=False``.
///
/// ``progress``, when given, is called with a dict per event (see the package docs).
///
/// Returns a dict: ``out`` (a ``pathlib.Path``), ``layers`` (a list of dicts ``name``,
/// ``proxy_one_sided``, ``proxy_two_sided``, ``damp_in``, ``damp_out``, ``bits_per_weight``,
/// ``seconds``, ``resumed``, ``optq``; the numbers ``None`` for a layer an earlier run had finished;
/// ``optq`` is ``None`` or a dict of the OPTQ error bounds: ``measured``, ``identity``, ``discrepancy``,
/// ``bound``, ``clipped``, and for stochastic GPTQ ``drift_bound_steps``, ``drift_measured_steps``,
/// ``linf_bound_steps``, ``linf_measured_steps``, ``headroom_steps``),
/// ``resumed`` (how many), ``seconds``, and ``eval``: ``None`` or a dict ``kl``, ``ppl``,
/// ``original_ppl``, ``text``, ``window``, ``n_windows``.
///
/// Raises ``YaqaError`` with the library's message (a missing file names it), ``ValueError`` for an
/// argument the binding cannot read.
#[pyfunction]
#[pyo3(signature = (
    model, out, *, method = "yaqa", bits = 4, quantizer = None, group = None, incoherence = true,
    sign_seed = 0, damp = 0.01, damp_out = 1.0, refine = 0, act_order = false, stochastic = None,
    sequential = false, factors = None, calib = None,
    tokenizer = None, calib_ids = None, n_seqs = 64, seq_len = 512, seed = 0, evaluate = true,
    eval_text = None, eval_windows = 8, eval_window = 256, checkpoint_minutes = 30.0,
    checkpoint_every = None, max_memory = None, base = None, daq_no_clip = false, overrides = None,
    scales_from = None, progress = None
))]
pub fn quantize<'py>(
    py: Python<'py>,
    model: PathBuf,
    out: PathBuf,
    method: &str,
    bits: u32,
    quantizer: Option<&str>,
    group: Option<usize>,
    incoherence: bool,
    sign_seed: u64,
    damp: f64,
    damp_out: f64,
    refine: usize,
    act_order: bool,
    stochastic: Option<u64>,
    sequential: bool,
    factors: Option<PathBuf>,
    calib: Option<&Bound<'py, PyAny>>,
    tokenizer: Option<PathBuf>,
    calib_ids: Option<PathBuf>,
    n_seqs: usize,
    seq_len: usize,
    seed: u64,
    evaluate: bool,
    eval_text: Option<PathBuf>,
    eval_windows: usize,
    eval_window: usize,
    checkpoint_minutes: f64,
    checkpoint_every: Option<usize>,
    max_memory: Option<&str>,
    base: Option<PathBuf>,
    daq_no_clip: bool,
    overrides: Option<Vec<String>>,
    scales_from: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let overrides = Overrides::parse(overrides.as_deref().unwrap_or_default())
        .map_err(pyo3::exceptions::PyValueError::new_err)?;
    let config = QuantizeConfig {
        model,
        spec: QuantSpec {
            method: args::method(method)?,
            grid: args::grid(bits, quantizer)?,
            group,
            incoherence,
            sign_seed,
            damp: args::damping("damp", damp)?,
            damp_out: args::damping("damp_out", damp_out)?,
            refine,
            act_order,
            stochastic,
        },
        factors,
        calib: args::calib(calib, tokenizer.clone(), calib_ids, n_seqs, seq_len, seed)?,
        out,
        checkpoint: args::checkpoint(checkpoint_minutes, checkpoint_every)?,
        stop_after_layers: None,
        eval: evaluate.then(|| EvalText {
            text: eval_text,
            tokenizer,
            window: eval_window,
            n_windows: eval_windows,
            ..default_eval()
        }),
        max_memory: args::max_memory(max_memory)?,
        base,
        daq: yaqa_core::daq::DaqParams {
            no_clip: daq_no_clip,
        },
        sequential,
        overrides,
        scales_from,
    };
    let report = run_job(py, progress, |p| {
        yaqa_model::job::quantize::run(&Cpu::default(), &config, p)
    })?;
    report_dict(py, &report)
}

fn report_dict<'py>(py: Python<'py>, r: &QuantizeReport) -> PyResult<Bound<'py, PyDict>> {
    let layers = PyList::empty(py);
    for line in &r.layers {
        let d = PyDict::new(py);
        let rep = line.report.as_ref();
        d.set_item("name", &line.name)?;
        d.set_item("proxy_one_sided", rep.map(|r| r.proxy_one_sided))?;
        d.set_item("proxy_two_sided", rep.and_then(|r| r.proxy_two_sided))?;
        d.set_item("damp_in", rep.map(|r| r.damp_in))?;
        d.set_item("damp_out", rep.and_then(|r| r.damp_out))?;
        d.set_item("bits_per_weight", rep.map(|r| r.bits_per_weight))?;
        d.set_item("seconds", line.seconds)?;
        d.set_item("resumed", rep.is_none())?;
        d.set_item(
            "optq",
            rep.and_then(|r| r.optq)
                .map(|o| optq_dict(py, &o))
                .transpose()?,
        )?;
        layers.append(d)?;
    }
    let d = PyDict::new(py);
    d.set_item("out", &r.out)?;
    d.set_item("layers", layers)?;
    d.set_item("resumed", r.resumed)?;
    d.set_item("seconds", r.seconds)?;
    let eval = match &r.eval {
        Some(t) => {
            let e = eval_dict(py, t)?;
            // quantize evaluates one model: its row's numbers sit beside the original's.
            let row = t
                .rows
                .first()
                .ok_or_else(|| crate::YaqaError::new_err("the evaluation returned no row"))?;
            e.set_item("kl", row.kl)?;
            e.set_item("ppl", row.ppl)?;
            e.del_item("rows")?;
            Some(e)
        }
        None => None,
    };
    d.set_item("eval", eval)?;
    Ok(d)
}

/// The OPTQ report of one layer as a dict (the keys of ``quantize``'s docs).
fn optq_dict<'py>(
    py: Python<'py>,
    o: &yaqa_core::optq::OptqReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("measured", o.measured)?;
    d.set_item("identity", o.identity)?;
    d.set_item("discrepancy", o.discrepancy())?;
    d.set_item("bound", o.bound)?;
    d.set_item("clipped", o.clipped)?;
    if let Some(s) = &o.stochastic {
        d.set_item("drift_bound_steps", s.drift_bound_steps)?;
        d.set_item("drift_measured_steps", s.drift_measured_steps)?;
        d.set_item("linf_bound_steps", s.linf_bound_steps)?;
        d.set_item("linf_measured_steps", s.linf_measured_steps)?;
        d.set_item("headroom_steps", s.headroom_steps)?;
    }
    Ok(d)
}
