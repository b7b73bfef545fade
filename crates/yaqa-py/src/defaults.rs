//! `yaqa._yaqa._library_defaults()`: the library's defaults under the Python keyword names, for the test
//! that every Python signature shows them (`python/tests/test_yaqa.py`).
//!
//! The signatures carry literal defaults (`damp=0.01`), because PyO3 shows any other expression as
//! `...` in `help()` and `inspect.signature`; this is what keeps those literals from drifting away from
//! the `Default` impls of `yaqa_model::job`, which the command line's flags also follow. Not part of
//! the package's API (`yaqa/__init__.py` does not export it).

use pyo3::prelude::*;
use pyo3::types::PyDict;
use yaqa_model::job::compare::CompareConfig;
use yaqa_model::job::evaluate::EvalText;
use yaqa_model::job::hessian::HessianConfig;
use yaqa_model::job::quantize::QuantizeConfig;
use yaqa_model::job::{CalibConfig, CheckpointPolicy, Every};

/// `{function name: {keyword: library default}}` for the keywords whose default comes from the library.
#[pyfunction]
pub fn _library_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let all = PyDict::new(py);

    let q = QuantizeConfig::default();
    let d = PyDict::new(py);
    d.set_item("method", q.spec.method.name())?;
    d.set_item("bits", q.spec.grid.bits())?;
    d.set_item("group", q.spec.group)?;
    d.set_item("incoherence", q.spec.incoherence)?;
    d.set_item("sign_seed", q.spec.sign_seed)?;
    d.set_item("damp", q.spec.damp)?;
    d.set_item("damp_out", q.spec.damp_out)?;
    d.set_item("refine", q.spec.refine)?;
    d.set_item("act_order", q.spec.act_order)?;
    d.set_item("stochastic", q.spec.stochastic)?;
    d.set_item("sequential", q.sequential)?;
    d.set_item("evaluate", q.eval.is_some())?;
    let e = q.eval.clone().unwrap_or_default();
    d.set_item("eval_windows", e.n_windows)?;
    d.set_item("eval_window", e.window)?;
    calib(&d, &q.calib)?;
    checkpoint(&d, q.checkpoint)?;
    all.set_item("quantize", d)?;

    let h = HessianConfig::default();
    let d = PyDict::new(py);
    d.set_item("sketch", h.sketch.name())?;
    d.set_item("passes", h.passes)?;
    calib(&d, &h.calib)?;
    checkpoint(&d, h.checkpoint)?;
    all.set_item("collect", d)?;

    let t = EvalText::default();
    let d = PyDict::new(py);
    d.set_item("window", t.window)?;
    d.set_item("n_windows", t.n_windows)?;
    d.set_item("seed", t.seed)?;
    all.set_item("evaluate", d)?;

    let c = CompareConfig::default();
    let d = PyDict::new(py);
    d.set_item("passes", c.passes)?;
    d.set_item("b_seqs", c.b_seqs)?;
    d.set_item("window", c.eval.window)?;
    d.set_item("n_windows", c.eval.n_windows)?;
    d.set_item("sign_seed", c.sign_seed)?;
    d.set_item("damp", c.damp)?;
    d.set_item("damp_out", c.damp_out)?;
    d.set_item("refine", c.refine)?;
    calib(&d, &c.calib)?;
    checkpoint(&d, c.checkpoint)?;
    all.set_item("compare", d)?;
    Ok(all)
}

fn calib(d: &Bound<'_, PyDict>, c: &CalibConfig) -> PyResult<()> {
    d.set_item("n_seqs", c.n_seqs)?;
    d.set_item("seq_len", c.seq_len)?;
    d.set_item("seed", c.seed)
}

fn checkpoint(d: &Bound<'_, PyDict>, c: CheckpointPolicy) -> PyResult<()> {
    match c.every {
        Every::Secs(s) => {
            d.set_item("checkpoint_minutes", s / 60.0)?;
            d.set_item("checkpoint_every", None::<usize>)
        }
        Every::Seqs(n) => d.set_item("checkpoint_every", n),
    }
}
