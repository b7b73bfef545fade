//! Running a job with the GIL released: its [`Progress`] events become dicts handed to an optional
//! Python callable, and Ctrl-C or an exception raised by that callable stops the job.
//!
//! The library's [`Progress`] cannot stop a job, and a job of an hour must answer Ctrl-C. So at every
//! event the adapter takes the GIL, runs Python's signal handlers and the callback, and when either
//! raises it keeps the exception and unwinds out of the job with [`std::panic::resume_unwind`] (which,
//! unlike `panic!`, runs no panic hook and prints nothing). [`run_job`] catches that unwind and raises
//! the kept exception. A job unwound this way leaves what a killed process leaves (checkpoints and
//! part files, nothing half-written under a final name), so running it again resumes, as after a kill.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use yaqa_model::job::{Event, Progress};

use crate::YaqaError;

/// The unwind payload that carries a job out after Python asked it to stop.
struct Cancelled;

/// Forwards events to Python and remembers why the job was stopped.
struct Callback {
    callback: Option<Py<PyAny>>,
    /// Set once the job was asked to stop; later events (a stage's `Finish` while unwinding) are
    /// dropped.
    cancelled: AtomicBool,
    /// The exception that stopped the job.
    error: Mutex<Option<PyErr>>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("callback", &self.callback.is_some())
            .field("cancelled", &self.cancelled)
            .finish()
    }
}

impl Progress for Callback {
    fn event(&self, event: Event<'_>) {
        if self.cancelled.load(Ordering::Acquire) {
            return;
        }
        let result = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(callback) = &self.callback {
                callback.bind(py).call1((event_dict(py, event)?,))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.cancelled.store(true, Ordering::Release);
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            // Unwinding while already unwinding would abort the process; an event sent from a `Drop`
            // during another panic is left to that panic.
            if !std::thread::panicking() {
                resume_unwind(Box::new(Cancelled));
            }
        }
    }
}

/// The dict a callback receives for `event`: `{"event": "start", "label", "total"}`,
/// `{"event": "step", "done"}`, `{"event": "finish"}`, `{"event": "note", "text"}`, or
/// `{"event": "layer", "name", "proxy_one_sided", "proxy_two_sided", "seconds", "done", "total",
/// "resumed"}`.
fn event_dict<'py>(py: Python<'py>, event: Event<'_>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match event {
        Event::Start { label, total } => {
            d.set_item("event", "start")?;
            d.set_item("label", label)?;
            d.set_item("total", total)?;
        }
        Event::Step { done } => {
            d.set_item("event", "step")?;
            d.set_item("done", done)?;
        }
        Event::Finish => d.set_item("event", "finish")?,
        Event::Note(text) => {
            d.set_item("event", "note")?;
            d.set_item("text", text)?;
        }
        Event::Layer {
            name,
            report,
            seconds,
            done,
            total,
        } => {
            d.set_item("event", "layer")?;
            d.set_item("name", name)?;
            d.set_item("proxy_one_sided", report.map(|r| r.proxy_one_sided))?;
            d.set_item("proxy_two_sided", report.and_then(|r| r.proxy_two_sided))?;
            d.set_item("seconds", seconds)?;
            d.set_item("done", done)?;
            d.set_item("total", total)?;
            d.set_item("resumed", report.is_none())?;
        }
    }
    Ok(d)
}

/// Runs `job` with the GIL released, its events sent to `callback` (a callable taking one dict, or
/// `None`).
///
/// **Errors**: the job's [`yaqa_model::ModelError`] as [`YaqaError`] with its full message; the
/// exception the callback raised, or `KeyboardInterrupt` on Ctrl-C, when either stopped the job.
pub fn run_job<T, F>(py: Python<'_>, callback: Option<Py<PyAny>>, job: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&dyn Progress) -> yaqa_model::Result<T> + Send,
{
    let progress = Callback {
        callback,
        cancelled: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let outcome = py.detach(|| catch_unwind(AssertUnwindSafe(|| job(&progress))));
    let stopped = progress
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match (outcome, stopped) {
        // A job that ended although it was asked to stop (the unwind was caught inside it) still
        // raises why it was asked.
        (Ok(_), Some(e)) => Err(e),
        (Ok(Ok(v)), None) => Ok(v),
        (Ok(Err(e)), None) => Err(YaqaError::new_err(e.to_string())),
        (Err(payload), Some(e)) if payload.is::<Cancelled>() => Err(e),
        // A panic of the library itself: PyO3 turns it into `PanicException` at the boundary.
        (Err(payload), _) => resume_unwind(payload),
    }
}
