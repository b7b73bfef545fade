//! How a job tells its caller what it is doing, without printing: a small trait the CLI renders with
//! progress bars, the Python package forwards to a callback, and tests can record.
//!
//! A job reports counted stages (a stage starts with its total, advances, finishes; one at a time),
//! lines meant for the user (what is being collected, what was reused or resumed), and each finished
//! layer of a quantization with its report.

use yaqa_core::layer::LayerReport;

/// One thing a job reports.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A counted stage starts: `total` steps under `label` (sequences, layers, windows).
    Start { label: &'a str, total: usize },
    /// `done` steps of the current stage are finished.
    Step { done: usize },
    /// The current stage is over.
    Finish,
    /// A line for the user.
    Note(&'a str),
    /// One layer quantized (`report` is `None` when an earlier run had finished it).
    Layer {
        name: &'a str,
        report: Option<&'a LayerReport>,
        seconds: f64,
        done: usize,
        total: usize,
    },
}

/// Receives a job's [`Event`]s. Jobs call it from the thread that called them.
pub trait Progress: Send + Sync {
    fn event(&self, event: Event<'_>);
}

/// Ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event<'_>) {}
}

/// Shorthands for the jobs.
pub(crate) trait ProgressExt {
    fn note(&self, line: impl AsRef<str>);
    /// Starts a stage and returns its step callback's owner; the stage finishes when it drops.
    fn stage(&self, label: &str, total: usize) -> Stage<'_>;
}

impl ProgressExt for dyn Progress + '_ {
    fn note(&self, line: impl AsRef<str>) {
        self.event(Event::Note(line.as_ref()));
    }

    fn stage(&self, label: &str, total: usize) -> Stage<'_> {
        self.event(Event::Start { label, total });
        Stage { progress: self }
    }
}

/// A counted stage in progress; reports [`Event::Finish`] when dropped, so an error ends it too.
pub(crate) struct Stage<'p> {
    progress: &'p dyn Progress,
}

impl Stage<'_> {
    pub fn step(&self, done: usize) {
        self.progress.event(Event::Step { done });
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        self.progress.event(Event::Finish);
    }
}
