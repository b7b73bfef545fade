//! The library's progress events on stderr: a bar with rate and ETA per counted stage, notes and
//! per-layer lines printed above it. When stderr is not a terminal (a batch job's log), the bar's line is
//! written as plain text at most every [`LOG_EVERY`], so long runs still show progress and ETA.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use yaqa_core::layer::LayerReport;
use yaqa_core::optq::OptqReport;
use yaqa_model::job::{Event, Progress};

/// Renders [`Event`]s with indicatif.
#[derive(Debug, Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn event(&self, event: Event<'_>) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Start { label, total } => {
                if let Some(old) = slot.take() {
                    old.finish_and_clear();
                }
                *slot = Some(bar(total, label));
            }
            Event::Step { done } => {
                if let Some(pb) = &*slot {
                    pb.set_position(done as u64);
                }
            }
            Event::Finish => {
                if let Some(pb) = slot.take() {
                    pb.finish_and_clear();
                }
            }
            Event::Note(line) => print_above(slot.as_ref(), line),
            Event::Layer {
                name,
                report,
                seconds,
                done,
                ..
            } => {
                if let Some(r) = report {
                    print_above(slot.as_ref(), &layer_line(name, r, seconds));
                }
                if let Some(pb) = &*slot {
                    pb.set_position(done as u64);
                }
            }
        }
    }
}

fn print_above(bar: Option<&ProgressBar>, line: &str) {
    match bar {
        Some(pb) => pb.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// One line of the per-layer report `quantize` prints: proxy errors, damping, scale and time.
fn layer_line(name: &str, r: &LayerReport, seconds: f64) -> String {
    let two = r
        .proxy_two_sided
        .map_or_else(String::new, |p| format!(" two-sided {p:.3e}"));
    let damp_out = r.damp_out.map_or_else(String::new, |d| format!("/{d:.3}"));
    let scale = r.scale_c.map_or_else(String::new, |c| format!(" c {c:.1}"));
    let refine = r.refine.map_or_else(String::new, |s| {
        format!(" cd {} sweeps/{} moves", s.sweeps, s.moves)
    });
    let optq = r
        .optq
        .as_ref()
        .map_or_else(String::new, |o| format!(" | {}", optq_line(o)));
    format!(
        "{name:<36} proxy {:.3e}{two} damp {:.3}{damp_out}{scale}{refine} {seconds:.2} s{optq}",
        r.proxy_one_sided, r.damp_in
    )
}

/// The OPTQ figures of one layer: measured error against the bound, the identity's discrepancy, and for
/// stochastic GPTQ the drift and ℓ∞ bounds in grid steps with the headroom to the grid's ends.
pub fn optq_line(o: &OptqReport) -> String {
    let clipped = if o.clipped > 0 {
        format!(" clipped {}", o.clipped)
    } else {
        String::new()
    };
    let stochastic = o.stochastic.map_or_else(String::new, |s| {
        format!(
            " drift {:.2}/{:.2} ℓ∞ {:.2}/{:.2} headroom {:.2} steps",
            s.drift_measured_steps,
            s.drift_bound_steps,
            s.linf_measured_steps,
            s.linf_bound_steps,
            s.headroom_steps
        )
    });
    format!(
        "optq {:.3e} ≤ {:.3e} ({:.3}) identity Δ {:.1e}{clipped}{stochastic}",
        o.measured,
        o.bound,
        o.ratio(),
        o.discrepancy()
    )
}

/// A progress bar with rate and ETA on stderr.
fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::term_like(Box::new(LogLines::default())));
    }
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {mean_eta}",
    )
    .map(|s| s.progress_chars("=> ").with_key("mean_eta", mean_eta))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// The time left at the mean rate so far, `elapsed · (len − pos) / pos` as `H:MM:SS` (`-` before the
/// first step). indicatif's own estimate weights recent steps and, with a steady tick and steps of
/// several seconds, printed figures such as `6d 06:00:53` for a 30-minute loop.
fn mean_eta(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let (pos, len) = (state.pos(), state.len().unwrap_or(0));
    if pos == 0 || len < pos {
        let _ = write!(w, "-");
        return;
    }
    let left = state.elapsed().as_secs_f64() * (len - pos) as f64 / pos as f64;
    let s = left.round() as u64;
    let _ = write!(w, "{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

/// How often a progress line is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A `TermLike` for logs: cursor movements are dropped and drawn lines are printed to stderr, one line at
/// most every [`LOG_EVERY`].
#[derive(Debug, Default)]
struct LogLines {
    last: Mutex<Option<Instant>>,
}

impl LogLines {
    fn log(&self, line: &str) -> std::io::Result<()> {
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            writeln!(std::io::stderr(), "{line}")?;
        }
        Ok(())
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
