//! The memory plan of a factor collection: what a run holds (weights, factors, activations), whether
//! the blocks stay resident or are streamed from the checkpoint, and which blocks' factors one run can
//! collect under `--max-memory`.
//!
//! The figures are estimates from the shapes alone, printed before any work starts and compared with
//! measured peak RSS in `docs/BENCHMARKS.md`. The terms:
//! - **weights**: the embedding and head in f32 (always resident), plus every block widened to f32 when
//!   resident, or the `keep` most recently used blocks when streamed (file pages are released after
//!   each tensor is widened, so the mapping does not add to the resident set);
//! - **factors**: the f64 packed triangles of the selected layers' factors (`h_in`, and `h_out` for the
//!   sketches that have one), plus one sequence's dense Gram of the widest side (f32), the transient of
//!   adding a sequence;
//! - **activations**: one sequence's backward: every block's residual input, one block's trace and its
//!   gradients, a chunk of logits;
//! - a fixed allowance for the process itself and the CPU backend's scratch pool.
//!
//! A plan under `--max-memory` keeps an eighth of the budget free for what the estimate misses (the
//! allocator's slack above all): `hessian`'s measured peak was 17% above its estimate at 8B shapes;
//! `quantize`'s, once the rounding was counted phase by phase, 3% below (docs/BENCHMARKS.md, "Memory").

use std::fmt;
use std::ops::Range;

use yaqa_core::sketch::SketchKind;

use crate::error::Result;
use crate::transformer::config::ModelConfig;
use crate::transformer::decoder::HEAD_CHUNK;
use crate::transformer::weights::LinearKind;

/// Bytes for the binary, its libraries, the tokenizer, rayon's threads and the CPU backend's pool of
/// scratch buffers (at most 256 MB), measured on SmolLM2 runs as the peak RSS beyond the other terms.
pub const PROCESS_BYTES: u64 = 300 << 20;

const GB: f64 = (1u64 << 30) as f64;

/// A byte count printed in GiB with two decimals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / GB)
    }
}

/// Parses `--max-memory`: a number with an optional unit `K`, `M`, `G`, `T` (powers of 1024, `iB` and
/// `B` accepted), such as `20G`, `1536M`, `0.5T`.
///
/// **Errors**: anything else, or a size that does not fit in 64 bits.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 20G or 1536M"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: not a size this machine can have"));
    }
    Ok(bytes as u64)
}

/// Parses `--layers A..B`: blocks `A` to `B − 1`, as a Rust range.
///
/// **Errors**: not of that form, or empty.
pub fn parse_blocks(text: &str) -> std::result::Result<Range<usize>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?}: expected A..B (blocks A to B−1), such as 0..8"))?;
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {a:?} is not a block number"))?;
    let b: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {b:?} is not a block number"))?;
    if a >= b {
        return Err(format!("{text:?}: an empty range of blocks"));
    }
    Ok(a..b)
}

fn tri_bytes(n: usize) -> u64 {
    let n = n as u64;
    n.saturating_mul(n.saturating_add(1)) / 2 * 8
}

/// Bytes of one block widened to f32.
pub fn block_bytes(config: &ModelConfig) -> u64 {
    let lin: u64 = LinearKind::ALL
        .iter()
        .map(|k| {
            let (r, c) = k.shape(config);
            (r as u64).saturating_mul(c as u64)
        })
        .sum();
    let small = 2 * config.hidden_size as u64
        + if config.attention_bias {
            let (q, _) = LinearKind::Q.shape(config);
            let (k, _) = LinearKind::K.shape(config);
            (q + 2 * k) as u64
        } else {
            0
        }
        + if config.qk_norm {
            2 * config.head_dim as u64
        } else {
            0
        };
    (lin + small) * 4
}

/// Bytes of the embedding, the head (unless tied) and the final norm in f32.
pub fn edge_bytes(config: &ModelConfig) -> u64 {
    let table = (config.vocab_size as u64).saturating_mul(config.hidden_size as u64) * 4;
    table * if config.tie_word_embeddings { 1 } else { 2 } + config.hidden_size as u64 * 4
}

/// Bytes of one block's factors of the sketches in `kinds`.
pub fn block_factor_bytes(config: &ModelConfig, kinds: &[SketchKind]) -> u64 {
    LinearKind::ALL
        .iter()
        .map(|k| {
            let (m, n) = k.shape(config);
            kinds
                .iter()
                .map(|kind| {
                    tri_bytes(n)
                        + match kind {
                            SketchKind::Xtx => 0,
                            _ => tri_bytes(m),
                        }
                })
                .sum::<u64>()
        })
        .sum()
}

/// Bytes one block's factor files of `kind` take on disk: every file holds `h_in` as a packed f64
/// triangle; two-sided files (Sketch B, Sketch A after pass 0) also `h_out` and the same sequences'
/// `Σ x xᵀ`, which the one-sided methods read. (A few kilobytes of headers per file are left out.)
pub fn block_factor_file_bytes(config: &ModelConfig, kind: SketchKind) -> u64 {
    LinearKind::ALL
        .iter()
        .map(|k| {
            let (m, n) = k.shape(config);
            match kind {
                SketchKind::Xtx | SketchKind::A { pass: 0 } => tri_bytes(n),
                _ => 2 * tri_bytes(n) + tri_bytes(m),
            }
        })
        .sum()
}

/// Bytes of a quantized file of every linear layer at `bits_per_weight` (codes, scales and side data
/// amortised).
pub fn quantized_file_bytes(config: &ModelConfig, bits_per_weight: f64) -> u64 {
    let weights: u64 = LinearKind::ALL
        .iter()
        .map(|k| {
            let (m, n) = k.shape(config);
            m as u64 * n as u64
        })
        .sum::<u64>()
        .saturating_mul(config.n_layers as u64);
    (weights as f64 * bits_per_weight / 8.0).ceil() as u64
}

/// Bytes of the dense f32 Gram one sequence adds to the widest factor of a block (the transient of
/// accumulating a sketch).
pub fn gram_bytes(config: &ModelConfig) -> u64 {
    let widest = LinearKind::ALL
        .iter()
        .map(|k| {
            let (m, n) = k.shape(config);
            m.max(n) as u64
        })
        .max()
        .unwrap_or(0);
    widest.saturating_mul(widest) * 4
}

/// Bytes of one sequence's pass of `seq` tokens: with gradients, every block's residual input plus one
/// block's trace and gradients and a chunk of logits with their gradient; forward only, one block's
/// trace.
pub fn activation_bytes(config: &ModelConfig, seq: usize, gradients: bool) -> u64 {
    let (t, d, f) = (
        seq as u64,
        config.hidden_size as u64,
        config.intermediate_size as u64,
    );
    let (qd, _) = LinearKind::Q.shape(config);
    let (kd, _) = LinearKind::K.shape(config);
    let (qd, kd) = (qd as u64, kd as u64);
    // xn1, q_lin, q, k_lin, k, v, attn, h_mid, xn2, gate, up, act, out.
    let trace = t * (5 * d + 3 * qd + 3 * kd + 3 * f) * 4;
    let logits = HEAD_CHUNK as u64 * config.vocab_size as u64 * 4;
    if gradients {
        let inputs = config.n_layers as u64 * t * d * 4;
        inputs + 2 * trace + 2 * logits + 2 * t * d * 4
    } else {
        trace + t * d * 4
    }
}

/// Windows per forward in an evaluation.
pub const EVAL_BATCH: usize = 2;

/// What an evaluation may spend on the residual streams of the windows it runs block by block
/// ([`crate::job::eval::compare_blocks`]): more windows per chunk read each streamed block fewer times.
pub const EVAL_STATE_BYTES: u64 = 1 << 30;

/// Windows of `window` tokens an evaluation of `models` quantized models runs per chunk: as many whole
/// batches as fit [`EVAL_STATE_BYTES`] with one residual stream per model and one for the original,
/// at least one batch.
pub fn eval_chunk_windows(config: &ModelConfig, window: usize, models: usize) -> usize {
    let per_window = (window as u64)
        .saturating_mul(config.hidden_size as u64)
        .saturating_mul(4)
        .saturating_mul(models as u64 + 1)
        .max(1);
    let fit = usize::try_from(EVAL_STATE_BYTES / per_window).unwrap_or(usize::MAX);
    (fit / EVAL_BATCH).max(1) * EVAL_BATCH
}

/// Memory an evaluation of `models` quantized models needs beyond the original's weights: the
/// quantized block being run (dequantized from its file; one at a time), the residual streams of a
/// chunk of windows and a chunk of logits for every model and the original, one batch's activations.
pub fn eval_bytes(config: &ModelConfig, window: usize, n_windows: usize, models: usize) -> u64 {
    let streams = models as u64 + 1;
    let chunk = eval_chunk_windows(config, window, models).min(n_windows.max(1)) as u64;
    let states = streams * chunk * window as u64 * config.hidden_size as u64 * 4;
    let logits = streams * HEAD_CHUNK as u64 * config.vocab_size as u64 * 4;
    block_bytes(config) + states + activation_bytes(config, EVAL_BATCH * window, false) + logits
}

/// How a run holds its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Every block widened in memory (fastest; what a small model wants).
    Resident,
    /// Blocks read from the checkpoint when reached, the `keep` most recently used cached.
    Streamed { keep: usize },
}

/// The plan of one collection: residency, the blocks whose factors are collected together, and the
/// estimated bytes of each term.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub residency: Residency,
    /// Groups of blocks collected one after another (one group: all selected blocks at once).
    pub groups: Vec<Range<usize>>,
    pub weights: u64,
    /// The largest group's factors and one sequence's Gram.
    pub factors: u64,
    pub activations: u64,
    pub budget: Option<u64>,
}

impl MemoryPlan {
    /// The estimated peak: weights, factors, activations, and the process's own.
    pub fn total(&self) -> u64 {
        self.weights + self.factors + self.activations + PROCESS_BYTES
    }
}

/// What a plan under `budget` may fill: all but an eighth (module docs).
pub fn usable(budget: u64) -> u64 {
    budget - budget / 8
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let res = match self.residency {
            Residency::Resident => "every block resident in f32".to_string(),
            Residency::Streamed { keep } => {
                format!("blocks streamed from the checkpoint, {keep} kept widened in f32")
            }
        };
        let groups = if self.groups.len() == 1 {
            format!("blocks {:?} in one pass", self.groups[0])
        } else {
            format!(
                "{} groups of blocks, one after another ({})",
                self.groups.len(),
                self.groups
                    .iter()
                    .map(|g| format!("{g:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        writeln!(
            f,
            "memory plan{}:",
            self.budget
                .map(|b| format!(" (--max-memory {})", Bytes(b)))
                .unwrap_or_default()
        )?;
        writeln!(f, "  weights      {} ({res})", Bytes(self.weights))?;
        writeln!(
            f,
            "  factors      {} ({groups}; with one sequence's Gram)",
            Bytes(self.factors)
        )?;
        writeln!(
            f,
            "  activations  {} (one sequence)",
            Bytes(self.activations)
        )?;
        writeln!(f, "  process      {}", Bytes(PROCESS_BYTES))?;
        write!(f, "  peak         {} estimated", Bytes(self.total()))?;
        if let Some(b) = self.budget {
            write!(
                f,
                " (an eighth of the budget, {}, kept free)",
                Bytes(b - usable(b))
            )?;
        }
        Ok(())
    }
}

/// Plans a collection of `kinds` over blocks `selected` of `config` with sequences of `seq` tokens:
/// resident when everything fits the budget (or there is none), otherwise streamed with as many blocks
/// kept as fit, and the selected blocks split into the fewest groups whose factors fit.
///
/// **Errors**: a budget below what one block needs (its weights, its factors, one sequence's
/// activations), naming the minimum.
pub fn plan(
    config: &ModelConfig,
    selected: Range<usize>,
    kinds: &[SketchKind],
    seq: usize,
    budget: Option<u64>,
) -> Result<MemoryPlan> {
    let gradients = kinds.iter().any(|k| k.needs_gradients());
    let blocks = selected.len() as u64;
    let per_block = block_bytes(config);
    let per_factors = block_factor_bytes(config, kinds);
    let edge = edge_bytes(config);
    let activations = activation_bytes(config, seq, gradients);
    let resident = edge + per_block * config.n_layers as u64;
    let gram = gram_bytes(config);
    let all_factors = per_factors * blocks + gram;
    let fixed = activations + PROCESS_BYTES + gram;
    // Resident when there is no budget or everything fits in what it leaves usable.
    let fits = |b: u64| resident + all_factors + activations + PROCESS_BYTES <= usable(b);
    let Some(full) = budget.filter(|&b| !fits(b)) else {
        return Ok(MemoryPlan {
            residency: Residency::Resident,
            groups: vec![selected],
            weights: resident,
            factors: all_factors,
            activations,
            budget,
        });
    };
    let budget = usable(full);
    let minimum = edge + per_block + per_factors + fixed;
    if minimum > budget {
        let needed = minimum_budget(config, kinds, seq);
        crate::bail!(
            "--max-memory {}: too small for one block of this model; it needs at least {} (the \
             embedding and head {}, one block {}, its factors {}, one sequence's Gram {} and \
             activations {}, the process {}, and an eighth of the budget kept free)",
            Bytes(full),
            Bytes(needed),
            Bytes(edge),
            Bytes(per_block),
            Bytes(per_factors),
            Bytes(gram),
            Bytes(activations),
            Bytes(PROCESS_BYTES)
        );
    }
    // Factors first (fewer groups means fewer passes over the calibration set), then cached blocks.
    let room = budget - edge - per_block - fixed;
    let per_group = (room / per_factors.max(1)).clamp(1, blocks.max(1));
    let groups: Vec<Range<usize>> = selected
        .clone()
        .step_by(per_group as usize)
        .map(|s| s..(s + per_group as usize).min(selected.end))
        .collect();
    let factors = per_factors * per_group;
    let left = budget - edge - factors - fixed;
    let keep = (left / per_block).clamp(1, config.n_layers.max(1) as u64) as usize;
    Ok(MemoryPlan {
        residency: Residency::Streamed { keep },
        groups,
        weights: edge + per_block * keep as u64,
        factors: factors + gram,
        activations,
        budget: Some(full),
    })
}

/// Bytes of rounding one `m × n` layer from its factors, the largest of the phases of
/// [`yaqa_core::layer::quantize_layer`] on the CPU backend, each on top of what the whole layer holds:
/// the factor file as read (`h_in` and `Σ x xᵀ` as packed `n × n` f64 triangles, `h_out` as an `m × m`
/// one: the two-sided files, the largest) and its normalised copies of `h_in` and `h_out`, plus the
/// rotated f32 weight. With `P_k` a packed triangle, `D_k` a dense f64 `k × k`, `x` the larger side
/// and `y` the smaller, `W = 4mn`:
/// - rotating the factors: the scale search's copy of `Σ x xᵀ` (`P_n`), and the side being rotated
///   dense with its packed result (`D_x + P_x`);
/// - factoring: the dense factor Cholesky-factored in place and its `L` (`2 D_x`), the other side's f32
///   `A` (`D_y / 2`);
/// - rounding: both f32 `A`s and the rounding's buffers (error, rounding error, `Ŵ`, codes, and for
///   one-sided rounding a whole-matrix strip: about `10 W`);
/// - the report: damped copies of both factors, their f32 dense forms and the error matrices
///   (`P_n + P_m + (D_n + D_m)/2 + 8 W`).
///
/// Measured with `yaqa round` on an 8B-shaped `down_proj` (4096 × 14336; docs/BENCHMARKS.md).
pub fn rounding_bytes(m: usize, n: usize) -> u64 {
    let packed = |k: usize| tri_bytes(k);
    let dense = |k: usize| 8 * (k as u64).saturating_mul(k as u64);
    let w = 4 * (m as u64).saturating_mul(n as u64);
    let (x, y) = (m.max(n), m.min(n));
    let file = 2 * packed(n) + packed(m);
    let held = file + packed(n) + packed(m) + w;
    let rotate = packed(n) + dense(x) + packed(x);
    let factor = 2 * dense(x) + dense(y) / 2;
    let round = (dense(n) + dense(m)) / 2 + 10 * w;
    let report = packed(n) + packed(m) + (dense(n) + dense(m)) / 2 + 8 * w;
    held + rotate.max(factor).max(round).max(report)
}

/// How `quantize` or `eval` holds the model under `--max-memory` ([`quantize_plan`], [`eval_plan`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPlan {
    pub residency: Residency,
    pub weights: u64,
    /// Rounding the largest layer; 0 for `eval`.
    pub rounding: u64,
    /// Evaluating the result ([`eval_bytes`]); 0 without evaluation.
    pub evaluation: u64,
    pub budget: u64,
}

impl RunPlan {
    /// The peak: the weights and the larger of the rounding and the evaluation, which run one after
    /// the other.
    pub fn total(&self) -> u64 {
        self.weights + self.rounding.max(self.evaluation) + PROCESS_BYTES
    }

    /// Resident when every block and `rounding` or `evaluation` (whichever is larger) fit `budget`,
    /// else one streamed block at a time; `what` says what the run could not do in the error.
    fn fit(
        config: &ModelConfig,
        budget: u64,
        rounding: u64,
        evaluation: u64,
        what: &str,
    ) -> Result<Self> {
        let edge = edge_bytes(config);
        let per_block = block_bytes(config);
        let work = rounding.max(evaluation);
        let resident = edge + per_block * config.n_layers as u64;
        let usable_bytes = usable(budget);
        let (residency, weights) = if resident + work + PROCESS_BYTES <= usable_bytes {
            (Residency::Resident, resident)
        } else if edge + per_block + work + PROCESS_BYTES <= usable_bytes {
            (Residency::Streamed { keep: 1 }, edge + per_block)
        } else {
            let need = edge + per_block + work + PROCESS_BYTES;
            let mut parts = vec![
                format!("the embedding and head {}", Bytes(edge)),
                format!("one block {}", Bytes(per_block)),
            ];
            if rounding > 0 {
                parts.push(format!("rounding its largest layer {}", Bytes(rounding)));
            }
            if evaluation > 0 {
                parts.push(format!("evaluating {}", Bytes(evaluation)));
            }
            crate::bail!(
                "--max-memory {}: too small to {what}; it needs at least {} ({}, the process {}, and \
                 an eighth of the budget kept free)",
                Bytes(budget),
                Bytes(need + need / 7 + 1),
                parts.join(", "),
                Bytes(PROCESS_BYTES)
            );
        };
        Ok(Self {
            residency,
            weights,
            rounding,
            evaluation,
            budget,
        })
    }
}

impl fmt::Display for RunPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let res = match self.residency {
            Residency::Resident => "every block resident in f32",
            Residency::Streamed { .. } => "blocks streamed from the checkpoint, one at a time",
        };
        writeln!(f, "memory plan (--max-memory {}):", Bytes(self.budget))?;
        writeln!(f, "  weights      {} ({res})", Bytes(self.weights))?;
        if self.rounding > 0 {
            writeln!(
                f,
                "  rounding     {} (the largest layer)",
                Bytes(self.rounding)
            )?;
        }
        if self.evaluation > 0 {
            writeln!(
                f,
                "  evaluation   {} (a dequantized block, the windows' residual streams)",
                Bytes(self.evaluation)
            )?;
        }
        writeln!(f, "  process      {}", Bytes(PROCESS_BYTES))?;
        write!(f, "  peak         {} estimated", Bytes(self.total()))
    }
}

/// How `quantize` holds the model under `budget`: resident when the widened model and the largest
/// layer's rounding (or the evaluation of `eval = (window, n_windows)`, whichever is larger) fit,
/// otherwise one streamed block at a time.
///
/// **Errors**: a budget below the embedding, one block and the largest layer's rounding or evaluation.
pub fn quantize_plan(
    config: &ModelConfig,
    budget: u64,
    eval: Option<(usize, usize)>,
) -> Result<RunPlan> {
    let round = LinearKind::ALL
        .iter()
        .map(|k| {
            let (m, n) = k.shape(config);
            rounding_bytes(m, n)
        })
        .max()
        .unwrap_or(0);
    let evaluation = eval.map_or(0, |(window, n)| eval_bytes(config, window, n, 1));
    RunPlan::fit(
        config,
        budget,
        round,
        evaluation,
        "quantize one layer of this model",
    )
}

/// How `eval` of `models` quantized files over `n_windows` windows of `window` tokens holds the
/// original under `budget`: resident when it fits with the evaluation, otherwise one streamed block at
/// a time.
///
/// **Errors**: a budget below the embedding, one block and the evaluation.
pub fn eval_plan(
    config: &ModelConfig,
    budget: u64,
    window: usize,
    n_windows: usize,
    models: usize,
) -> Result<RunPlan> {
    let evaluation = eval_bytes(config, window, n_windows, models);
    RunPlan::fit(config, budget, 0, evaluation, "evaluate this model")
}

/// The smallest `--max-memory` a streamed collection of `kinds` over `seq`-token sequences accepts: one
/// block, its factors, one sequence's Gram and activations, the process, and the eighth kept free.
pub fn minimum_budget(config: &ModelConfig, kinds: &[SketchKind], seq: usize) -> u64 {
    let gradients = kinds.iter().any(|k| k.needs_gradients());
    let need = edge_bytes(config)
        + block_bytes(config)
        + block_factor_bytes(config, kinds)
        + gram_bytes(config)
        + activation_bytes(config, seq, gradients)
        + PROCESS_BYTES;
    // The smallest b with b − b/8 ≥ need: start near need · 8/7 and step to it.
    let mut b = need.saturating_add(need / 7);
    while usable(b) < need && b < u64::MAX {
        b += 1;
    }
    while b > 0 && usable(b - 1) >= need {
        b -= 1;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;
    use crate::transformer::config::Family;
    use crate::transformer::weights::tiny_config;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_bytes("20G"), Ok(20 << 30));
        assert_eq!(parse_bytes("1536M"), Ok(1536 << 20));
        assert_eq!(parse_bytes("0.5GiB"), Ok(1 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "G", "-1G", "20X", "1e30T", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_blocks("0..8"), Ok(0..8));
        for bad in ["3", "4..4", "5..2", "a..3", "1..b"] {
            assert!(parse_blocks(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_bytes_counts_every_value_of_a_block() {
        for family in [Family::Llama, Family::Qwen2, Family::Qwen3] {
            let model = Model::synthetic(tiny_config(family, false), 3);
            assert_eq!(
                block_bytes(&model.config),
                4 * model.layers[0].len() as u64,
                "{family:?}"
            );
        }
    }

    #[test]
    fn the_plan_streams_and_groups_only_when_the_budget_asks() {
        let c = tiny_config(Family::Llama, false);
        let kinds = [SketchKind::B];
        let free = plan(&c, 0..2, &kinds, 8, None).unwrap();
        assert_eq!(free.residency, Residency::Resident);
        assert_eq!(free.groups, vec![0..2]);
        let roomy = plan(&c, 0..2, &kinds, 8, Some(8 << 30)).unwrap();
        assert_eq!(roomy.residency, Residency::Resident);
        // Just enough for one block and one block's factors: streamed, one group per block.
        let one = minimum_budget(&c, &kinds, 8);
        let tight = plan(&c, 0..2, &kinds, 8, Some(one)).unwrap();
        assert_eq!(tight.residency, Residency::Streamed { keep: 1 });
        assert_eq!(tight.groups, vec![0..1, 1..2]);
        assert!(tight.total() <= usable(one));
        let err = plan(&c, 0..2, &kinds, 8, Some(one - 8)).unwrap_err();
        assert!(err.to_string().contains("too small for one block"), "{err}");
    }
}
