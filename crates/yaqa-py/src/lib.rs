//! `yaqa._yaqa`: the extension module behind the `yaqa` Python package (`python/yaqa/__init__.py`
//! re-exports it). Like the command line, it only translates arguments and results: each function
//! fills one of `yaqa_model::job`'s config structs from keyword arguments with the command line's
//! defaults, runs the job on the CPU backend with the GIL released ([`progress::run_job`]), and hands the
//! typed report back as dicts and lists.
//!
//! One file per job, named after the CLI's: `quantize.rs`, `hessian.rs` (`collect`, `merge`),
//! `evaluate.rs`, `compare.rs`; `args.rs` reads the arguments they share, `progress.rs` forwards events
//! to Python and stops a job on Ctrl-C, `defaults.rs` lets the tests hold the signatures' literal
//! defaults to the library's.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod args;
mod compare;
mod defaults;
mod evaluate;
mod hessian;
mod progress;
mod quantize;

pyo3::create_exception!(
    yaqa,
    YaqaError,
    PyException,
    "An error of the yaqa library; its message is the library's, naming the file, flag or layer at fault."
);

#[pymodule]
fn _yaqa(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("YaqaError", m.py().get_type::<YaqaError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(quantize::quantize, m)?)?;
    m.add_function(wrap_pyfunction!(hessian::collect, m)?)?;
    m.add_function(wrap_pyfunction!(hessian::merge, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(compare::compare, m)?)?;
    m.add_function(wrap_pyfunction!(defaults::_library_defaults, m)?)?;
    Ok(())
}
