//! The quantization job as a library: every job the command line runs, as a config struct with the
//! command line's defaults and a `run` generic over the backend that returns a typed report and tells
//! its caller what it is doing through [`Progress`].
//!
//! - [`hessian`]: collect factors (Sketch B, Sketch A's passes, `Σ x xᵀ`), by shard, and merge shards;
//!   [`sketch_a`] runs one Sketch A pass after a merged folder, for clusters.
//! - [`quantize`]: every linear layer of a model, from a factor folder or collecting its own, then the
//!   KL and perplexity of the result; [`sequential`] is its true-sequential pipeline (GPTQ, LDLQ,
//!   Qronos on the inputs of the partially quantized model).
//! - [`evaluate`]: KL to the original and perplexity of quantized files; [`compare`]: the KL table.
//! - [`round`]: one matrix against one factor file; [`export`]: GGUF → Hugging Face, and quantized files
//!   out as Hugging Face or GPTQ checkpoints; [`demo`]: the SmolLM2 model the demo runs on.
//!
//! Underneath: calibration sequences ([`calib`]), one pass of collection ([`collect`]), checkpoints that
//! make every pass resumable ([`resume`]), factor folders ([`factors`]), the per-layer pipeline
//! ([`pipeline`]), and the KL and perplexity arithmetic ([`eval`]).

pub mod calib;
pub mod calib_set;
pub mod collect;
pub mod compare;
pub mod demo;
pub mod estimate;
pub mod eval;
pub mod evaluate;
pub mod export;
pub mod factors;
pub mod finetune;
pub mod guard;
pub mod hessian;
pub mod memory;
pub mod overrides;
pub mod pipeline;
pub mod preflight;
pub mod progress;
pub mod quantize;
pub mod resume;
pub mod round;
pub mod sequential;
pub mod sketch_a;

use std::path::PathBuf;

use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::quant::fp8::Fp8Scaling;
use yaqa_core::quant::ggml::GgmlFormat;
use yaqa_core::{GptqParams, LdlParams, RoundParams};

use crate::formats::checkpoint::Loaded;

pub use progress::{Event, Progress, Silent};
pub use resume::Every;

/// Where calibration sequences come from and how many (`hessian`, `quantize`, `compare`).
#[derive(Clone, Debug, PartialEq)]
pub struct CalibConfig {
    /// Calibration text files; with none (and no `ids`), sequences are sampled from the model itself.
    pub text: Vec<PathBuf>,
    /// tokenizer.json for the text (default: the model folder's, or rebuilt from the GGUF).
    pub tokenizer: Option<PathBuf>,
    /// A safetensors file of token ids (and optionally Fisher labels) instead of text or sampling.
    pub ids: Option<PathBuf>,
    /// Sequences in the whole (unsharded) set.
    pub n_seqs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Seed of the windows or samples and of the sampled Fisher labels (recorded).
    pub seed: u64,
    /// Accept sequences longer than the model's `max_position_embeddings` (positions it was not trained
    /// for); refused by default.
    pub allow_long_context: bool,
}

impl CalibConfig {
    /// The files the calibration reads, for [`guard::refuse_overwrite`].
    pub fn inputs(&self) -> Vec<guard::Named<'_>> {
        let mut v: Vec<_> = self
            .text
            .iter()
            .map(|p| guard::named("--calib", p))
            .collect();
        v.extend(
            self.tokenizer
                .as_deref()
                .map(|p| guard::named("--tokenizer", p)),
        );
        v.extend(self.ids.as_deref().map(|p| guard::named("--calib-ids", p)));
        v
    }

    /// Refuses sizes no calibration of `loaded` can use, before any work: no sequences, sequences of
    /// fewer than 2 tokens (nothing to predict), or longer than the model's context unless
    /// `allow_long_context`. With `ids` the file fixes the sizes, and [`calib_set`] checks them when it
    /// reads it.
    ///
    /// **Errors**: [`crate::ModelError::Refused`] naming the flag.
    pub fn check(&self, loaded: &Loaded) -> crate::Result<()> {
        if self.ids.is_some() {
            return Ok(());
        }
        if self.n_seqs == 0 {
            crate::bail!("--n-seqs 0: calibration needs at least one sequence");
        }
        if self.seq_len < 2 {
            crate::bail!(
                "--seq-len {}: a calibration sequence needs at least 2 tokens (a token and the one \
                 it predicts)",
                self.seq_len
            );
        }
        check_context(
            &format!("--seq-len {}", self.seq_len),
            self.seq_len,
            loaded,
            self.allow_long_context,
            |max| format!("lower --seq-len to at most {max}"),
        )
    }
}

/// Refuses `len` tokens of `what` (a flag and its value) when the model of `loaded` declares a shorter
/// context and `allow` is off, or a shorter sliding attention window (Mistral's, or Qwen's with
/// `use_sliding_window`) whatever `allow` says, saying how to `fix` it (given the limit).
///
/// A sliding window is not implemented: every position attends to the whole sequence before it, which
/// is what such a model computes exactly when the sequence fits the window (`sliding_window` absent,
/// `null`, or at least every length a run uses), and something else otherwise.
///
/// **Errors**: [`crate::ModelError::Refused`] naming `what`, the model's limit and where it is declared.
pub(crate) fn check_context(
    what: &str,
    len: usize,
    loaded: &Loaded,
    allow: bool,
    fix: impl Fn(usize) -> String,
) -> crate::Result<()> {
    let declared = |field: &str, gguf_key: &str| {
        if loaded.path.is_dir() {
            format!("{field} in {}", loaded.path.join("config.json").display())
        } else {
            format!("{gguf_key} in {}", loaded.path.display())
        }
    };
    if let Some(window) = loaded.model.config.sliding_window
        && len > window
    {
        crate::bail!(
            "{what} exceeds the model's sliding attention window of {window} tokens ({}): yaqa attends \
             over the whole sequence and does not implement the window, so it runs such a model only on \
             sequences that fit it: {}",
            declared("sliding_window", "sliding_window"),
            fix(window)
        )
    }
    match loaded.model.config.max_position_embeddings {
        Some(max) if len > max && !allow => {
            let source = declared("max_position_embeddings", "context_length");
            crate::bail!(
                "{what} exceeds the model's context of {max} tokens ({source}): {}, or pass \
                 --allow-long-context to run positions the model was not trained for",
                fix(max)
            )
        }
        _ => Ok(()),
    }
}

impl Default for CalibConfig {
    fn default() -> Self {
        Self {
            text: Vec::new(),
            tokenizer: None,
            ids: None,
            n_seqs: 64,
            seq_len: 512,
            seed: 0,
            allow_long_context: false,
        }
    }
}

/// How a factor collection checkpoints ([`resume`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointPolicy {
    pub every: Every,
    /// Stop after this many sequences as if interrupted (tests of resumption).
    pub stop_after_seqs: Option<usize>,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every: Every::Secs(30.0 * 60.0),
            stop_after_seqs: None,
        }
    }
}

/// The quantizer a run asks for, as the command line spells it (`int4`, `e8p`): a family and its size.
/// New quantizers (the QTIP trellis, FP8) become new variants here and in [`QuantSpec::layer_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grid {
    /// The INT-k grid (k = 2, 3, 4, 8): symmetric with one searched scale per matrix, or asymmetric
    /// with zero-points and per-group scales (`QuantSpec::group`, or no incoherence).
    Int(u32),
    /// The E8P lattice codebook of QuIP# (2 bits, one 16-bit code per 8 weights of a row), one searched
    /// scale per matrix; rounded in tiles of [`E8P_TILE`].
    E8p,
    /// FP8 E4M3 (8 bits, max 448) with AbsMax scales per 128 × 128 block (`fp8`), per row (`fp8-row`)
    /// or per tensor (`fp8-tensor`): the deployed format DAQ searches the scales of.
    Fp8(Fp8Scaling),
    /// The QTIP bitshift trellis with `K` = 2, 3 or 4 bits per weight (1MAD code, 16-bit states,
    /// tail-biting), one searched scale per matrix; rounded in tiles of [`TRELLIS_TILE`], one trellis walk
    /// each.
    Trellis(u32),
    /// llama.cpp's block grids `q8_0`, `q4_0`, `q4_1`, `q5_0` (per row and 32 columns a float16 scale,
    /// and for `q4_1` a minimum) and `q4_k` (super-blocks of 256: float16 `d`, `dmin` and 6-bit scales and
    /// minimums per 32), fixed as llama.cpp's reference quantizer fixes them, without rotation: what
    /// `export --format gguf` writes as llama.cpp blocks.
    Ggml(GgmlFormat),
}

/// The trellis's tile: QTIP encodes a `16 × 16` tile per walk and runs LDLQ with blocks of 16, so the
/// feedback reaches each tile from every tile below and right of it, never inside it (the walk sees the
/// whole tile at once).
pub const TRELLIS_TILE: (usize, usize) = yaqa_core::quant::trellis::TILE;

/// The tile shape of vector codebooks: one row by one code (DESIGN.md §4's tiles with the width of a
/// code), so every code sees the feedback of all rows below and codes to its right, as the 1 × 1 tiles of
/// the scalar grids do (`layer::LayerParams`).
pub const E8P_TILE: (usize, usize) = (1, yaqa_core::quant::e8p::CODE_DIM);

impl Grid {
    /// Every spelling [`Grid::parse`] takes.
    pub const NAMES: [&'static str; 16] = [
        "int2",
        "int3",
        "int4",
        "int8",
        "e8p",
        "trellis2",
        "trellis3",
        "trellis4",
        "fp8",
        "fp8-row",
        "fp8-tensor",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q4_k",
    ];

    /// `int<k>`, `e8p`, `trellis<k>` or `fp8[-row|-tensor]`; `None` for anything else (an INT width
    /// outside [`QuantSpec::BITS`] or a trellis width outside 2..=4 included).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "e8p" => Some(Grid::E8p),
            "trellis2" => Some(Grid::Trellis(2)),
            "trellis3" => Some(Grid::Trellis(3)),
            "trellis4" => Some(Grid::Trellis(4)),
            "fp8" => Some(Grid::Fp8(Fp8Scaling::Block)),
            "fp8-row" => Some(Grid::Fp8(Fp8Scaling::Row)),
            "fp8-tensor" => Some(Grid::Fp8(Fp8Scaling::Tensor)),
            _ if GgmlFormat::parse(s).is_some() => GgmlFormat::parse(s).map(Grid::Ggml),
            _ => s
                .strip_prefix("int")?
                .parse()
                .ok()
                .filter(|b| QuantSpec::BITS.contains(b))
                .map(Grid::Int),
        }
    }

    /// The name: `int4`, `e8p`.
    pub fn name(&self) -> String {
        match self {
            Grid::Int(bits) => format!("int{bits}"),
            Grid::E8p => "e8p".into(),
            Grid::Fp8(Fp8Scaling::Block) => "fp8".into(),
            Grid::Fp8(scaling) => format!("fp8-{}", scaling.name()),
            Grid::Trellis(bits) => format!("trellis{bits}"),
            Grid::Ggml(format) => format.name().into(),
        }
    }

    /// Bits per weight of the codes (scales not counted).
    pub fn bits(&self) -> u32 {
        match self {
            Grid::Int(bits) => *bits,
            Grid::E8p => 2,
            Grid::Fp8(_) => 8,
            Grid::Trellis(bits) => *bits,
            Grid::Ggml(format) => format.bits(),
        }
    }
}

impl std::fmt::Display for Grid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Grid {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Grid::parse(s).ok_or_else(|| {
            format!(
                "{s:?} is not a quantizer: expected one of {}",
                Grid::NAMES.join(", ")
            )
        })
    }
}

/// How each layer is rounded: the method, the grid and its preparation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantSpec {
    pub method: Method,
    /// The quantizer: an INT grid (2, 3, 4 or 8 bits) or the E8P codebook.
    pub grid: Grid,
    /// Asymmetric grid with zero-points and one scale per `group` columns (GPTQ layout; INT grids only);
    /// `None`: the symmetric grid with one searched scale per matrix (with incoherence) or per row
    /// (without).
    pub group: Option<usize>,
    /// Randomized Hadamard incoherence processing on both sides.
    pub incoherence: bool,
    /// Seed of the rotations' sign vectors (recorded).
    pub sign_seed: u64,
    /// First damping σ of `h_in` (and GPTQ's percdamp), doubled until the Cholesky succeeds.
    pub damp: f64,
    /// First damping σ of `h_out` (YAQA).
    pub damp_out: f64,
    /// Coordinate-descent sweeps on the method's own proxy after the rounding.
    pub refine: usize,
    /// GPTQ: columns by decreasing `diag(H)` (act-order); groups stay on the original column index
    /// (GPTQ's static groups).
    pub act_order: bool,
    /// GPTQ: unbiased stochastic rounding inside the error feedback with this seed (recorded); each
    /// layer draws its own stream of it. `None` rounds to nearest.
    pub stochastic: Option<u64>,
}

impl Default for QuantSpec {
    fn default() -> Self {
        Self {
            method: Method::Yaqa,
            grid: Grid::Int(4),
            group: None,
            incoherence: true,
            sign_seed: 0,
            damp: LdlParams::default().damp,
            damp_out: yaqa_core::layer::DEFAULT_DAMP_OUT,
            refine: 0,
            act_order: false,
            stochastic: None,
        }
    }
}

impl QuantSpec {
    /// The bit widths the INT grids take.
    pub const BITS: [u32; 4] = [2, 3, 4, 8];

    /// The per-layer parameters of this spec.
    pub fn layer_params(&self) -> LayerParams {
        let defaults = LayerParams::default();
        let (quantizer, round) = match (self.grid, self.group, self.incoherence) {
            (Grid::Int(bits), Some(g), _) => (
                QuantizerSpec::IntAsym {
                    bits,
                    group_size: Some(g),
                },
                defaults.round,
            ),
            (Grid::Int(bits), None, true) => (QuantizerSpec::IntSym { bits }, defaults.round),
            (Grid::Int(bits), None, false) => (
                QuantizerSpec::IntAsym {
                    bits,
                    group_size: None,
                },
                defaults.round,
            ),
            (Grid::E8p, _, _) => (
                QuantizerSpec::E8p,
                RoundParams {
                    tile_rows: E8P_TILE.0,
                    tile_cols: E8P_TILE.1,
                    ..defaults.round
                },
            ),
            (Grid::Fp8(scaling), _, _) => (QuantizerSpec::Fp8 { scaling }, defaults.round),
            (Grid::Ggml(format), _, _) => (QuantizerSpec::Ggml { format }, defaults.round),
            (Grid::Trellis(bits), _, _) => (
                QuantizerSpec::Trellis { bits },
                RoundParams {
                    tile_rows: TRELLIS_TILE.0,
                    tile_cols: TRELLIS_TILE.1,
                    ..defaults.round
                },
            ),
        };
        LayerParams {
            method: self.method,
            quantizer,
            incoherence: self.incoherence,
            seed: self.sign_seed,
            ldl: LdlParams {
                damp: self.damp,
                ..LdlParams::default()
            },
            damp_out: self.damp_out,
            round,
            gptq: GptqParams {
                damp: self.damp,
                act_order: self.act_order,
                stochastic_seed: self.stochastic,
                ..GptqParams::default()
            },
            refine_sweeps: self.refine,
            ..defaults
        }
    }

    /// [`QuantSpec::check`] on the input widths of `shapes` (`m × n` of every layer), plus the trellis's
    /// heights: its `16 × 16` tiles need output heights that are multiples of 16 too.
    pub fn check_shapes(&self, shapes: &[(usize, usize)]) -> crate::Result<()> {
        self.check(shapes.iter().map(|&(_, n)| n))?;
        if let Grid::Trellis(_) = self.grid
            && let Some(&(m, _)) = shapes.iter().find(|(m, _)| m % TRELLIS_TILE.0 != 0)
        {
            crate::bail!(
                "--quantizer {}: a layer's output height {m} does not split into {}×{} tiles (one \
                 trellis walk each): widths and heights must be multiples of {}",
                self.grid.name(),
                TRELLIS_TILE.0,
                TRELLIS_TILE.1,
                TRELLIS_TILE.0
            );
        }
        Ok(())
    }

    /// Refuses a spec no quantizer can take, before any work: bits outside [`Self::BITS`], a group of 0
    /// or one that does not divide every layer's input width `widths`, negative or non-finite damping;
    /// for E8P, a group, GPTQ or `--refine` (they round one weight at a time) and input widths that do
    /// not split into codes of 8 weights.
    pub fn check(&self, widths: impl IntoIterator<Item = usize>) -> crate::Result<()> {
        if let Grid::Int(bits) = self.grid
            && !Self::BITS.contains(&bits)
        {
            crate::bail!("bits: {bits} is not one of 2, 3, 4, 8");
        }
        for (name, v) in [("damp", self.damp), ("damp-out", self.damp_out)] {
            if !(v.is_finite() && v >= 0.0) {
                crate::bail!("--{name} {v}: damping must be a finite number ≥ 0");
            }
        }
        if self.method == Method::Daq
            && (!matches!(self.grid, Grid::Fp8(_)) || self.incoherence || self.group.is_some())
        {
            crate::bail!(
                "--method daq searches FP8 scales on the weights as they are: it needs --quantizer \
                 fp8 (or fp8-row, fp8-tensor) and --no-incoherence, and takes no --group"
            );
        }
        if let Grid::Fp8(_) = self.grid {
            if self.group.is_some() {
                crate::bail!(
                    "--group: FP8 has one scale per 128 × 128 block, row or tensor (--quantizer fp8, \
                     fp8-row, fp8-tensor); groups are for the INT grids"
                );
            }
            if self.stochastic.is_some() {
                crate::bail!(
                    "--stochastic rounds between neighbours of a uniform grid; FP8's levels are not \
                     uniform"
                );
            }
        }
        if self.method != Method::Gptq {
            if self.act_order {
                crate::bail!("--act-order is a GPTQ option: use it with --method gptq");
            }
            if self.stochastic.is_some() {
                crate::bail!("--stochastic is a GPTQ option: use it with --method gptq");
            }
        }
        if self.method == Method::Qronos {
            if self.grid == Grid::E8p {
                crate::bail!(
                    "--method qronos rounds one weight at a time (GPTQ's updates after its first \
                     step) and needs a scalar grid; E8P codes cover 8 weights: use --method ldlq, \
                     yaqa or rtn"
                );
            }
            if self.refine > 0 {
                crate::bail!(
                    "--refine with --method qronos: coordinate descent would refine on tr(Δ X̃ᵀX̃ \
                     Δᵀ), not Qronos's objective ‖Xw − X̃q‖²"
                );
            }
        }
        if let Grid::Ggml(format) = self.grid {
            if self.incoherence {
                crate::bail!(
                    "--quantizer {format} is llama.cpp's block grid, and llama.cpp applies no \
                     rotation: add --no-incoherence"
                );
            }
            let block = format.block();
            if self.group.is_some() {
                crate::bail!(
                    "--group: --quantizer {format} has llama.cpp's blocks of {block} weights per scale"
                );
            }
            if self.stochastic.is_some() {
                crate::bail!(
                    "--stochastic: --quantizer {format} rounds with llama.cpp's rule; stochastic \
                     rounding is offered on the INT grids"
                );
            }
            if let Some(n) = widths.into_iter().find(|n| n % block != 0) {
                let fallback = if format == GgmlFormat::Q4_K {
                    "; llama-quantize writes such tensors as q5_0: add --override \
                     'REGEX=quantizer:q5_0' for them"
                } else {
                    ""
                };
                crate::bail!(
                    "--quantizer {format}: a layer's input width {n} does not split into llama.cpp's \
                     {format} blocks of {block} weights{fallback}"
                );
            }
            return Ok(());
        }
        if self.grid == Grid::E8p {
            if self.group.is_some() {
                crate::bail!(
                    "--group: the E8P codebook has one scale per matrix; groups are for the INT grids"
                );
            }
            if self.method == Method::Gptq {
                crate::bail!(
                    "--method gptq rounds one weight at a time and needs a scalar grid; E8P codes \
                     cover 8 weights: use --method ldlq, yaqa or rtn"
                );
            }
            if self.refine > 0 {
                crate::bail!(
                    "--refine moves one weight at a time and needs a scalar grid; E8P codes cover \
                     8 weights"
                );
            }
            let code = yaqa_core::quant::e8p::CODE_DIM;
            if let Some(n) = widths.into_iter().find(|n| n % code != 0) {
                crate::bail!(
                    "--quantizer e8p: a layer's input width {n} does not split into codes of {code} \
                     weights"
                );
            }
            return Ok(());
        }
        if let Grid::Trellis(bits) = self.grid {
            let name = self.grid.name();
            if !yaqa_core::quant::trellis::SUPPORTED_BITS.contains(&bits) {
                crate::bail!("--quantizer {name}: the trellis takes 2, 3 or 4 bits per weight");
            }
            if self.group.is_some() {
                crate::bail!(
                    "--group: the trellis has one scale per matrix; groups are for the INT grids"
                );
            }
            if self.method == Method::Gptq {
                crate::bail!(
                    "--method gptq rounds one weight at a time and needs a scalar grid; the trellis \
                     encodes whole 16 × 16 tiles: use --method ldlq, yaqa or rtn"
                );
            }
            if self.refine > 0 {
                crate::bail!(
                    "--refine moves one weight at a time and needs a scalar grid; the trellis encodes \
                     whole 16 × 16 tiles"
                );
            }
            let side = TRELLIS_TILE.1;
            if let Some(n) = widths.into_iter().find(|n| n % side != 0) {
                crate::bail!(
                    "--quantizer {name}: a layer's input width {n} does not split into {}×{side} \
                     tiles (one trellis walk each): widths and heights must be multiples of {side}",
                    TRELLIS_TILE.0
                );
            }
            return Ok(());
        }
        if let Some(g) = self.group {
            if g == 0 {
                crate::bail!("--group 0: a group holds at least one column");
            }
            if let Some(n) = widths.into_iter().find(|n| n % g != 0) {
                crate::bail!(
                    "--group {g} does not divide a layer's input width {n}: pick a divisor of it"
                );
            }
        }
        Ok(())
    }
}

/// Opens the model at `path` (a GGUF file or a Hugging Face folder) with its fingerprint.
///
/// **Errors**: those of [`crate::formats::checkpoint::load`], naming the path.
pub fn open_model(path: &std::path::Path) -> crate::Result<crate::formats::checkpoint::Loaded> {
    use crate::error::Context;
    crate::formats::checkpoint::load(path)
        .with_context(|| format!("loading the model {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's block grids parse under llama.cpp's names, need `--no-incoherence`, refuse groups,
    /// `--stochastic` and widths that are not whole blocks, and map to `QuantizerSpec::Ggml` with 1 × 1
    /// tiles.
    #[test]
    fn ggml_grids_are_checked_before_any_work() {
        for (name, format) in [
            ("q8_0", GgmlFormat::Q8_0),
            ("q4_0", GgmlFormat::Q4_0),
            ("q4_1", GgmlFormat::Q4_1),
            ("q5_0", GgmlFormat::Q5_0),
            ("q4_k", GgmlFormat::Q4_K),
        ] {
            let grid = Grid::parse(name).unwrap();
            assert_eq!(grid, Grid::Ggml(format));
            assert_eq!(grid.name(), name);
            assert!(Grid::NAMES.contains(&name));
            let spec = QuantSpec {
                grid,
                incoherence: false,
                method: Method::Ldlq,
                ..QuantSpec::default()
            };
            let widths = if format == GgmlFormat::Q4_K {
                [512, 1536]
            } else {
                [576, 1536]
            };
            spec.check(widths).unwrap();
            let p = spec.layer_params();
            assert_eq!(p.quantizer, QuantizerSpec::Ggml { format });
            assert_eq!((p.round.tile_rows, p.round.tile_cols), (1, 1));
            let refused = |s: QuantSpec, widths: &[usize], want: &str| {
                let e = s.check(widths.iter().copied()).unwrap_err().to_string();
                assert!(e.contains(want), "{name}: {e}");
            };
            refused(
                QuantSpec {
                    incoherence: true,
                    ..spec
                },
                &[576],
                "--no-incoherence",
            );
            refused(
                QuantSpec {
                    group: Some(32),
                    ..spec
                },
                &[576],
                "--group",
            );
            refused(
                QuantSpec {
                    method: Method::Gptq,
                    stochastic: Some(1),
                    ..spec
                },
                &[576],
                "--stochastic",
            );
            refused(spec, &[1536, 100], "input width 100");
        }
        // SmolLM2's width 576 is 2.25 super-blocks: refused, pointing at llama.cpp's fallback.
        let spec = QuantSpec {
            grid: Grid::Ggml(GgmlFormat::Q4_K),
            incoherence: false,
            ..QuantSpec::default()
        };
        let e = spec.check([1536, 576]).unwrap_err().to_string();
        assert!(
            e.contains("input width 576") && e.contains("quantizer:q5_0"),
            "{e}"
        );
    }
}
