//! Wall-time estimates printed early in a run, from a short measured warm-up: a collection's first
//! sequences ([`SeqWarmUp`]), a quantization's first layer and first block ([`LayerClock`]).
//!
//! Estimates are notes for the user, never stored: a resumed run prints its own.

use std::time::Instant;

use yaqa_core::layer::Method;

use crate::transformer::config::ModelConfig;
use crate::transformer::weights::{LayerId, LinearKind};

/// Sequences a collection times before it projects the rest of its pass: the first one also pays for
/// loading (and, streamed, widening) every block, so two average it out.
pub const WARM_UP_SEQS: usize = 2;

/// `secs` as a person reads it: `40 s`, `12 min`, `3 h 05 min`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => {
            let m = (s + 30) / 60;
            format!("{} h {:02} min", m / 60, m % 60)
        }
    }
}

/// Times the first [`WARM_UP_SEQS`] sequences of a pass over `total` and says once how long the rest
/// should take.
#[derive(Debug)]
pub struct SeqWarmUp {
    t0: Instant,
    total: usize,
    said: bool,
}

impl SeqWarmUp {
    /// Starts the clock for a pass of `total` sequences.
    pub fn new(total: usize) -> Self {
        Self {
            t0: Instant::now(),
            total,
            said: false,
        }
    }

    /// Call after `done` sequences of this pass: returns the line to print once the warm-up is over
    /// (and only then, once), `None` otherwise or when nothing is left to estimate.
    pub fn after(&mut self, label: &str, done: usize) -> Option<String> {
        if self.said || done < WARM_UP_SEQS.min(self.total) || done >= self.total {
            return None;
        }
        self.said = true;
        let took = self.t0.elapsed().as_secs_f64();
        let left = self.total - done;
        Some(format!(
            "{label}: warm-up {done} sequences in {}; the {left} left about {}",
            duration(took),
            duration(took / done as f64 * left as f64)
        ))
    }
}

/// The floating-point work of rounding one `m × n` layer with `method`, up to a constant: the block LDL
/// of each factor the method uses (`n³/3`, and `m³/3` for YAQA's `h_out`) and the feedback updates
/// (`m·n²` one-sided, `m·n·(m + n)` two-sided); round-to-nearest touches each weight a few times per
/// scale tried; DAQ rounds each weight once per multiplier it tries (8 coarse, up to 10 fine).
pub fn rounding_work(method: Method, m: usize, n: usize) -> f64 {
    let (m, n) = (m as f64, n as f64);
    match method {
        Method::Rtn => 16.0 * m * n,
        Method::Daq => 18.0 * m * n,
        Method::Gptq | Method::Ldlq | Method::Qronos => n * n * n / 3.0 + m * n * n,
        Method::Yaqa => (n * n * n + m * m * m) / 3.0 + m * n * (m + n),
    }
}

/// Projects a quantization's remaining layers from the ones it has timed: until one of each kind is
/// measured, by [`rounding_work`] from the layers measured so far; after that, each kind's own time
/// (every block has the same shapes).
#[derive(Debug)]
pub struct LayerClock<'a> {
    config: &'a ModelConfig,
    method: Method,
    /// Seconds of the first layer of each kind timed, in the order they were timed.
    measured: Vec<(LinearKind, f64)>,
    said_first: bool,
    said_block: bool,
}

impl<'a> LayerClock<'a> {
    pub fn new(config: &'a ModelConfig, method: Method) -> Self {
        Self {
            config,
            method,
            measured: Vec::new(),
            said_first: false,
            said_block: false,
        }
    }

    fn time_of(&self, kind: LinearKind) -> Option<f64> {
        self.measured.iter().find(|m| m.0 == kind).map(|m| m.1)
    }

    fn work(&self, kind: LinearKind) -> f64 {
        let (m, n) = kind.shape(self.config);
        rounding_work(self.method, m, n)
    }

    /// Records that `id` took `secs` (quantized in this run, not resumed) and, after the first layer
    /// and again once every kind is measured, returns a line with the time `left` should take.
    pub fn record(&mut self, id: LayerId, secs: f64, left: &[LayerId]) -> Option<String> {
        if self.time_of(id.kind).is_none() {
            self.measured.push((id.kind, secs));
        }
        if left.is_empty() {
            return None;
        }
        let all_kinds = LinearKind::ALL.iter().all(|&k| self.time_of(k).is_some());
        let line = if all_kinds && !self.said_block {
            self.said_block = true;
            "every kind of layer timed once"
        } else if !self.said_first {
            self.said_first = true;
            "first layer timed"
        } else {
            return None;
        };
        let (t, w): (f64, f64) = self
            .measured
            .iter()
            .map(|&(k, s)| (s, self.work(k)))
            .fold((0.0, 0.0), |(a, b), (s, w)| (a + s, b + w));
        let per_work = t / w.max(f64::MIN_POSITIVE);
        let secs: f64 = left
            .iter()
            .map(|l| match self.time_of(l.kind) {
                Some(s) => s,
                None => per_work * self.work(l.kind),
            })
            .sum();
        Some(format!(
            "{line}: the {} layers left about {}",
            left.len(),
            duration(secs)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_minutes_and_hours() {
        assert_eq!(duration(0.2), "0 s");
        assert_eq!(duration(89.0), "89 s");
        assert_eq!(duration(90.0), "2 min");
        assert_eq!(duration(45.0 * 60.0), "45 min");
        assert_eq!(duration(3.0 * 3600.0 + 5.0 * 60.0), "3 h 05 min");
        assert_eq!(duration(-3.0), "0 s");
    }

    #[test]
    fn the_warm_up_speaks_once_after_its_sequences_and_not_at_the_end() {
        let mut w = SeqWarmUp::new(10);
        assert_eq!(w.after("B", 1), None);
        let line = w.after("B", 2).expect("a line after the warm-up");
        assert!(line.starts_with("B: warm-up 2 sequences in "), "{line}");
        assert!(line.contains("the 8 left about"), "{line}");
        assert_eq!(w.after("B", 3), None);
        // A pass the warm-up would finish has nothing left to estimate.
        assert_eq!(SeqWarmUp::new(2).after("B", 2), None);
    }

    #[test]
    fn two_sided_rounding_costs_more_than_one_sided_and_grows_with_both_sides() {
        let (m, n) = (1536, 576);
        assert!(rounding_work(Method::Yaqa, m, n) > rounding_work(Method::Ldlq, m, n));
        assert!(rounding_work(Method::Ldlq, m, n) > rounding_work(Method::Rtn, m, n));
        assert!(rounding_work(Method::Yaqa, 2 * m, n) > 4.0 * rounding_work(Method::Yaqa, m, n));
    }
}
