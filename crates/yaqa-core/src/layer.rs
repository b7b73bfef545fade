//! One linear layer from its factors to rounded weights: DESIGN.md §3 (normalise, rotate, damp, block
//! LDL) then §4 (round), for every method yaqa compares, with the per-layer report.
//!
//! All methods share the preparation and the quantizer's scale, so their proxy errors (and later the
//! model's KL) differ only by the rounding — the comparison DESIGN.md §5 asks for. The scale of a
//! symmetric grid or of the E8P codebook is searched on round-to-nearest's output error `tr(Δ Σxxᵀ Δᵀ)` whatever the method's
//! own factors are, so given the same calibration tokens every method gets the same scale.

use crate::backend::round_to_nearest;
use crate::backend::{Backend, GptqParams, RoundParams, Rounded, Side};
use crate::error::{CoreError, Result, check_finite};
use crate::hadamard::sign_vector;
use crate::ldl::{LdlParams, normalize_mean_diag};
use crate::mat::Mat;
use crate::optq::{OptqReport, RunFacts};
use crate::quant::TileQuantizer;
use crate::quant::e8p::{self, E8p, search_e8p_scale};
use crate::quant::fp8::{Fp8, Fp8Scaling};
use crate::quant::ggml::{self, GgmlBlocks, GgmlFormat};
use crate::quant::int::{AsymFitParams, IntAsymGroup, IntSym, search_sym_scale};
use crate::quant::trellis::{self, Trellis, search_trellis_scale};
use crate::refine::{RefineStats, refine_coordinate};
use crate::rng::Rng;
use crate::sketch::Factors;
use crate::sym::SymMat;

/// The rounding method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest, no feedback.
    Rtn,
    /// GPTQ/OPTQ against `h_in`.
    Gptq,
    /// One-sided adaptive rounding against `h_in` (YAQA with `h_out = I`).
    Ldlq,
    /// Two-sided adaptive rounding against `h_in` and `h_out`.
    Yaqa,
    /// Delta-aware FP8 scales against a base checkpoint's weight, then round to nearest: data-free
    /// ([`crate::daq::quantize_layer`]; [`quantize_layer`] refuses it, having no base weight).
    Daq,
    /// Qronos (arXiv 2505.11695, DESIGN.md §9): GPTQ against `h_in = X̃ᵀX̃` after the corrective first
    /// step that uses `G = X̃ᵀX` ([`LayerFactors::cross`]); needs the sequential pipeline's inputs.
    Qronos,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Ldlq => "ldlq",
            Method::Yaqa => "yaqa",
            Method::Daq => "daq",
            Method::Qronos => "qronos",
        }
    }
}

/// Which quantizer to fit to the (rotated) weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QuantizerSpec {
    /// Symmetric half-integer grid, one scale per matrix searched on RTN's output error (DESIGN.md §5).
    IntSym { bits: u32 },
    /// Asymmetric with zero-points and per-group scales (GPTQ checkpoint layout), min/max fitted.
    IntAsym {
        bits: u32,
        group_size: Option<usize>,
    },
    /// The E8P lattice codebook of QuIP# (2 bits, codes of 8 weights along a row), one scale per matrix
    /// searched like the symmetric grid's. Needs tiles whose width is a multiple of 8 (16 × 16 is
    /// DESIGN.md's shape for vector codebooks); GPTQ and `--refine` move one weight at a time and refuse
    /// it.
    E8p,
    /// FP8 E4M3 with AbsMax scales per 128 × 128 block, row or tensor ([`Fp8`]); a scalar grid, but not
    /// a uniform one, so runs report no OPTQ bound.
    Fp8 { scaling: Fp8Scaling },
    /// The QTIP bitshift trellis (`bits` = 2, 3 or 4 per weight, 1MAD code), one scale per matrix searched
    /// like the symmetric grid's. Encodes whole `16 × 16` tiles ([`trellis::TILE`]), so both dimensions
    /// must be multiples of 16 and the rounding must use that tile; GPTQ and `--refine` refuse it.
    Trellis { bits: u32 },
    /// One of llama.cpp's block grids (`Q8_0`, `Q4_0`, `Q4_1`: [`GgmlBlocks`]): per row and 32 columns a
    /// float16 scale (and minimum) fixed from `W` as llama.cpp's reference quantizer fixes it, then any
    /// method rounds onto it. Needs widths that are multiples of 32 and no rotation (llama.cpp applies
    /// none), which the job refuses before any work.
    Ggml { format: GgmlFormat },
}

impl QuantizerSpec {
    /// Weights per code of the quantizer this spec fits: 8 for E8P, 1 for the scalar grids.
    pub fn code_dim(&self) -> usize {
        match self {
            QuantizerSpec::E8p => e8p::CODE_DIM,
            QuantizerSpec::IntSym { .. }
            | QuantizerSpec::IntAsym { .. }
            | QuantizerSpec::Fp8 { .. }
            | QuantizerSpec::Trellis { .. }
            | QuantizerSpec::Ggml { .. } => 1,
        }
    }

    /// Whether each weight is rounded on its own ([`TileQuantizer::is_scalar`]): false for E8P and the
    /// trellis.
    pub fn is_scalar(&self) -> bool {
        matches!(
            self,
            QuantizerSpec::IntSym { .. }
                | QuantizerSpec::IntAsym { .. }
                | QuantizerSpec::Ggml { .. }
        )
    }
}

/// A quantizer fitted to one matrix.
#[derive(Clone, Debug, PartialEq)]
pub enum FittedQuantizer {
    IntSym(IntSym),
    IntAsym(IntAsymGroup),
    E8p(E8p),
    Fp8(Fp8),
    Trellis(Trellis),
    Ggml(GgmlBlocks),
}

impl FittedQuantizer {
    pub fn as_dyn(&self) -> &dyn TileQuantizer {
        match self {
            FittedQuantizer::IntSym(q) => q,
            FittedQuantizer::IntAsym(q) => q,
            FittedQuantizer::E8p(q) => q,
            FittedQuantizer::Fp8(q) => q,
            FittedQuantizer::Trellis(q) => q,
            FittedQuantizer::Ggml(q) => q,
        }
    }
}

/// Everything that decides how one layer is quantized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerParams {
    pub method: Method,
    pub quantizer: QuantizerSpec,
    /// Randomized Hadamard incoherence processing on both sides.
    pub incoherence: bool,
    /// Seed of the sign vectors (recorded in the output).
    pub seed: u64,
    /// Damping and retries of `h_in`; the block size is taken from the tile shape.
    pub ldl: LdlParams,
    /// First damping `σ` of the normalised `h_out` (YAQA), retried like `ldl` ([`DEFAULT_DAMP_OUT`]).
    pub damp_out: f64,
    pub round: RoundParams,
    pub gptq: GptqParams,
    /// The scale multiplier `c` of the symmetric grid or E8P (`s = c·RMS(W_r)/RMS(grid)`), when it was chosen
    /// elsewhere (for example once per layer for several methods); `None` searches it.
    pub scale_c: Option<f64>,
    /// Coordinate-descent sweeps on the method's own proxy after the rounding ([`crate::refine`]); 0 runs
    /// none.
    pub refine_sweeps: usize,
}

/// The first damping of `h_out`, above `h_in`'s 0.01 (DESIGN.md §3 gives one σ for both).
///
/// Sketch B's `h_out = Σ_b G_b G_bᵀ` is a sum of one rank-≤T term per calibration sequence, and on
/// SmolLM2-135M its bulk is noise at the sequence counts a CPU affords; a larger σ keeps the strong
/// output directions and stops the rounding from pushing error into the poorly measured ones. YAQA-B's
/// KL to the original (the `h_in` side at 0.01, where 0.003 and 0.03 both did worse):
///
/// | calibration, evaluation | σ_out 0.01 | 0.1 | 1.0 | 3.0 | LDLQ |
/// |---|---|---|---|---|---|
/// | data-free 8 × 128 (the demo), INT3 | 0.93751 | 0.65402 | 0.56080 | 0.56367 | 0.60622 |
/// | text 512 × 256, INT2, model-sampled text | 1.34683 | 1.27849 | 1.22046 | | 1.69260 |
///
/// With 512 sequences the INT3 and INT4 figures on `prideprejudice.txt` move by at most 3% over
/// 0.01–1.0 (docs/BENCHMARKS.md, "Damping of h_out").
pub const DEFAULT_DAMP_OUT: f64 = 1.0;

impl Default for LayerParams {
    fn default() -> Self {
        Self {
            method: Method::Yaqa,
            quantizer: QuantizerSpec::IntSym { bits: 4 },
            incoherence: true,
            seed: 0,
            ldl: LdlParams::default(),
            damp_out: DEFAULT_DAMP_OUT,
            // Scalar grids round each weight on its own, so 1 × 1 tiles let every weight see the feedback of
            // all weights below and right of it (with 16 × 16 tiles a scalar grid loses the feedback inside
            // a tile and LDLQ falls behind GPTQ; tests/methods.rs shows 1 × 1 LDLQ is GPTQ). 16 × 16 is the
            // shape for vector and trellis codebooks (DESIGN.md §5).
            round: RoundParams {
                tile_rows: 1,
                tile_cols: 1,
                ..RoundParams::default()
            },
            gptq: GptqParams::default(),
            scale_c: None,
            refine_sweeps: 0,
        }
    }
}

/// One layer's factors as [`quantize_layer`] takes them.
#[derive(Clone, Copy, Debug)]
pub struct LayerFactors<'a> {
    /// The method's input-side factor (`n × n`).
    pub h_in: &'a SymMat,
    /// The output-side factor (`m × m`); `None` means `I`.
    pub h_out: Option<&'a SymMat>,
    /// `Σ x xᵀ` over the calibration tokens, the metric of the scale search; `None` when `h_in` is
    /// `Σ x xᵀ` itself (GPTQ/LDLQ factors).
    pub xtx: Option<&'a SymMat>,
    /// Qronos only: `X̃ᵀ(X − X̃)` (`n × n`, not symmetric; row index on `X̃`), where `X̃` are the layer's
    /// inputs in the partially quantized model (`h_in = X̃ᵀX̃`) and `X` the original model's inputs on
    /// the same tokens, so that `G = X̃ᵀX = h_in + cross`. Carried as the difference because it is
    /// small next to `h_in` and keeps its precision through the rotation.
    pub cross: Option<&'a Mat<f64>>,
}

impl Factors {
    /// The factors `method` rounds against: YAQA takes both sides (and `Σ x xᵀ` for the scale), every
    /// other method `Σ x xᵀ` alone, which every sketch carries.
    pub fn for_method(&self, method: Method) -> LayerFactors<'_> {
        match method {
            Method::Yaqa => LayerFactors {
                h_in: &self.h_in,
                h_out: self.h_out.as_ref(),
                xtx: self.xtx.as_ref(),
                cross: None,
            },
            _ => LayerFactors::xtx(self.xtx_sum()),
        }
    }
}

impl<'a> LayerFactors<'a> {
    /// The GPTQ/LDLQ factors: `h_in = Σ x xᵀ`, `h_out = I`.
    pub fn xtx(h: &'a SymMat) -> Self {
        Self {
            h_in: h,
            h_out: None,
            xtx: None,
            cross: None,
        }
    }

    /// The Qronos factors of the sequential pipeline: `h_in = X̃ᵀX̃` and `cross = X̃ᵀ(X − X̃)`.
    pub fn qronos(h: &'a SymMat, cross: &'a Mat<f64>) -> Self {
        Self {
            h_in: h,
            h_out: None,
            xtx: None,
            cross: Some(cross),
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    pub method: Method,
    /// `tr(Δ h_in Δᵀ h_out) / tr(W h_in Wᵀ h_out)` when `h_out` was given.
    pub proxy_two_sided: Option<f64>,
    /// `tr(Δ h_in Δᵀ) / tr(W h_in Wᵀ)`.
    pub proxy_one_sided: f64,
    /// Damping `σ` added to the normalised `h_in` (0 for RTN).
    pub damp_in: f64,
    /// Damping added to the normalised `h_out` (YAQA only).
    pub damp_out: Option<f64>,
    /// The scale multiplier `c` chosen by the search (symmetric grids and E8P).
    pub scale_c: Option<f64>,
    pub bits_per_weight: f64,
    /// What the coordinate-descent refinement did, when it ran.
    pub refine: Option<RefineStats>,
    /// The OPTQ identity and bounds ([`crate::optq`]) of GPTQ, LDLQ and YAQA runs with 1 × 1 tiles on a
    /// uniform grid, when the backend kept the rounding errors and no refinement moved the result.
    pub optq: Option<OptqReport>,
}

/// A rounded layer: the dequantized weights in the original basis and what reproduces them.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLayer {
    /// `Ŵ` in the original (unrotated) basis, `m × n`.
    pub w_hat: Mat<f32>,
    /// Codes of the rotated `Ŵ_r`, row-major.
    pub codes: Vec<u16>,
    pub quantizer: FittedQuantizer,
    /// Sign vectors of the rotation (`None` without incoherence processing).
    pub signs_in: Option<Vec<f32>>,
    pub signs_out: Option<Vec<f32>>,
    /// Pivots of the factorization the rounding used (GPTQ: `d_t` in processing order; LDLQ/YAQA: the
    /// diagonal of `D_in`), for the OPTQ error bound.
    pub pivots: Vec<f64>,
    pub report: LayerReport,
}

/// Quantizes one layer. `factors.h_out = None` means `I` (then YAQA is refused: use LDLQ).
///
/// **Shapes**: `w` is `m × n`, `h_in` and `xtx` `n × n`, `h_out` `m × m`.
/// **Errors**: shapes, non-finite inputs, dimensions without a Hadamard construction, factors that stay
/// indefinite after damping, YAQA without `h_out`, a given scale multiplier that is not positive; every
/// error names `name`.
pub fn quantize_layer(
    backend: &dyn Backend,
    name: &str,
    w: &Mat<f32>,
    factors: &LayerFactors<'_>,
    params: &LayerParams,
) -> Result<QuantizedLayer> {
    quantize_layer_inner(backend, name, w, factors, params).map_err(|e| e.in_layer(name))
}

fn quantize_layer_inner(
    backend: &dyn Backend,
    name: &str,
    w: &Mat<f32>,
    factors: &LayerFactors<'_>,
    params: &LayerParams,
) -> Result<QuantizedLayer> {
    let LayerFactors {
        h_in,
        h_out,
        xtx,
        cross,
    } = *factors;
    let (m, n) = w.shape();
    check_finite("weights W", &w.data)?;
    check_finite("h_in", &h_in.data)?;
    if h_in.n != n {
        return Err(CoreError::shape("h_in vs W columns", n, h_in.n));
    }
    if let Some(h) = xtx {
        check_finite("Σ x xᵀ", &h.data)?;
        if h.n != n {
            return Err(CoreError::shape("Σ x xᵀ vs W columns", n, h.n));
        }
    }
    if let Some(c) = params.scale_c
        && !(c > 0.0 && c.is_finite())
    {
        return Err(CoreError::InvalidParameter {
            name: "scale_c",
            value: c.to_string(),
            why: "the scale multiplier must be positive and finite".into(),
        });
    }
    if let Some(h) = h_out {
        check_finite("h_out", &h.data)?;
        if h.n != m {
            return Err(CoreError::shape("h_out vs W rows", m, h.n));
        }
    }
    if params.quantizer == QuantizerSpec::E8p {
        e8p::check_width(n)?;
    }
    if let QuantizerSpec::Ggml { format } = params.quantizer {
        ggml::check_width(format, n)?;
        if params.incoherence {
            return Err(CoreError::InvalidParameter {
                name: "incoherence",
                value: "true".into(),
                why: format!(
                    "{format} is llama.cpp's block grid, and llama.cpp cannot undo a rotation: \
                     quantize without incoherence processing"
                ),
            });
        }
    }
    if let QuantizerSpec::Trellis { bits } = params.quantizer {
        trellis::check_bits(bits)?;
        trellis::check_shape(m, n)?;
        let tiles = (params.round.tile_rows, params.round.tile_cols);
        if params.method != Method::Rtn && params.method != Method::Gptq && tiles != trellis::TILE {
            return Err(CoreError::InvalidParameter {
                name: "tile_rows × tile_cols",
                value: format!("{} × {}", tiles.0, tiles.1),
                why: format!(
                    "the trellis encodes whole {} × {} tiles",
                    trellis::TILE.0,
                    trellis::TILE.1
                ),
            });
        }
        if params.method == Method::Gptq {
            return Err(CoreError::InvalidParameter {
                name: "method",
                value: "gptq".into(),
                why: "GPTQ rounds one weight at a time; the trellis encodes whole tiles (use LDLQ)"
                    .into(),
            });
        }
    }
    // Refused before any work rather than after the rounding.
    if params.refine_sweeps > 0 && !params.quantizer.is_scalar() {
        return Err(CoreError::InvalidParameter {
            name: "refine_sweeps",
            value: params.refine_sweeps.to_string(),
            why: match params.quantizer {
                QuantizerSpec::Trellis { .. } => {
                    "coordinate descent moves one weight at a time and \
                     needs a scalar quantizer; the trellis encodes whole 16 × 16 tiles"
                        .into()
                }
                _ => format!(
                    "coordinate descent moves one weight at a time and needs a scalar quantizer; \
                     this one's codes cover {} weights",
                    params.quantizer.code_dim()
                ),
            },
        });
    }
    if params.method == Method::Daq {
        return Err(CoreError::InvalidParameter {
            name: "method",
            value: "daq".into(),
            why: "DAQ rounds against the base checkpoint's weight, not factors: \
                  yaqa_core::daq::quantize_layer"
                .into(),
        });
    }
    if let Some(c) = cross {
        check_finite("Qronos X̃ᵀ(X − X̃)", &c.data)?;
        c.expect_shape("Qronos X̃ᵀ(X − X̃) (n × n)", n, n)?;
    }
    if params.method == Method::Qronos {
        if cross.is_none() {
            return Err(CoreError::InvalidParameter {
                name: "method",
                value: "qronos".into(),
                why: "Qronos needs X̃ᵀX, the inputs of the partially quantized model against the \
                      original's, which only the sequential pipeline collects"
                    .into(),
            });
        }
        if params.quantizer.code_dim() != 1 {
            return Err(CoreError::InvalidParameter {
                name: "method",
                value: "qronos".into(),
                why: format!(
                    "Qronos rounds one weight at a time (GPTQ's updates) and needs a scalar \
                     quantizer; this one's codes cover {} weights",
                    params.quantizer.code_dim()
                ),
            });
        }
    }
    if params.method == Method::Yaqa && h_out.is_none() {
        return Err(CoreError::InvalidParameter {
            name: "method",
            value: "yaqa".into(),
            why: "YAQA needs h_out (collect Sketch A or B factors); with h_out = I it is LDLQ"
                .into(),
        });
    }

    // 1. Normalise by the mean diagonal.
    let mut h_in = h_in.clone();
    let h_in_mean = normalize_mean_diag("h_in", &mut h_in)?;
    // Qronos's `X̃ᵀ(X − X̃)`, normalised by `h_in`'s divisor so that `G = h_in + cross` still holds; f32
    // for the rotation, which is exact enough for a term this small next to `h_in`.
    let mut cross =
        cross.map(|c| Mat::<f32>::from_fn(n, n, |i, j| (c.at(i, j) / h_in_mean) as f32));
    let mut h_out = h_out.cloned();
    if let Some(h) = h_out.as_mut() {
        normalize_mean_diag("h_out", h)?;
    }
    // The scale search's metric, only needed when the scale is searched here.
    let searches = params.scale_c.is_none()
        && matches!(
            params.quantizer,
            QuantizerSpec::IntSym { .. } | QuantizerSpec::E8p | QuantizerSpec::Trellis { .. }
        );
    let mut metric = match xtx {
        Some(h) if searches => {
            let mut h = h.clone();
            normalize_mean_diag("Σ x xᵀ", &mut h)?;
            Some(h)
        }
        _ => None,
    };

    // 2. Incoherence processing.
    let mut w_r = w.clone();
    let (signs_in, signs_out) = if params.incoherence {
        let s_in = sign_vector(params.seed, &format!("{name}/in"), n);
        let s_out = sign_vector(params.seed, &format!("{name}/out"), m);
        backend.hadamard_rotate(&mut w_r, Side::Cols, &s_in, false)?;
        backend.hadamard_rotate(&mut w_r, Side::Rows, &s_out, false)?;
        h_in = backend.rotate_factor(&h_in, &s_in)?;
        if let Some(h) = h_out.as_mut() {
            *h = backend.rotate_factor(h, &s_out)?;
        }
        if let Some(h) = metric.as_mut() {
            *h = backend.rotate_factor(h, &s_in)?;
        }
        if let Some(c) = cross.as_mut() {
            // R diag(s) C diag(s) Rᵀ: the columns, then the rows, of the square matrix.
            backend.hadamard_rotate(c, Side::Cols, &s_in, false)?;
            backend.hadamard_rotate(c, Side::Rows, &s_in, false)?;
        }
        (Some(s_in), Some(s_out))
    } else {
        (None, None)
    };

    // The quantizer, fitted once and shared by every method.
    let (quantizer, scale_c) = match params.quantizer {
        QuantizerSpec::IntSym { bits } => {
            let (q, c) = match params.scale_c {
                Some(c) => (IntSym::for_multiplier(bits, &w_r, c)?, c),
                None => {
                    search_sym_scale(backend, &w_r, metric.as_ref().unwrap_or(&h_in), None, bits)?
                }
            };
            (FittedQuantizer::IntSym(q), Some(c))
        }
        QuantizerSpec::IntAsym { bits, group_size } => {
            let fit = AsymFitParams {
                group_size,
                ..AsymFitParams::default()
            };
            (
                FittedQuantizer::IntAsym(IntAsymGroup::fit(&w_r, bits, &fit)?),
                None,
            )
        }
        QuantizerSpec::E8p => {
            let (q, c) = match params.scale_c {
                Some(c) => (E8p::for_multiplier(&w_r, c)?, c),
                None => search_e8p_scale(backend, &w_r, metric.as_ref().unwrap_or(&h_in), None)?,
            };
            (FittedQuantizer::E8p(q), Some(c))
        }
        QuantizerSpec::Fp8 { scaling } => (FittedQuantizer::Fp8(Fp8::fit(&w_r, scaling)?), None),
        QuantizerSpec::Ggml { format } => {
            (FittedQuantizer::Ggml(GgmlBlocks::fit(&w_r, format)?), None)
        }
        QuantizerSpec::Trellis { bits } => {
            let (q, c) = match params.scale_c {
                Some(c) => (Trellis::for_multiplier(bits, &w_r, c)?, c),
                None => search_trellis_scale(
                    backend,
                    &w_r,
                    metric.as_ref().unwrap_or(&h_in),
                    None,
                    bits,
                )?,
            };
            (FittedQuantizer::Trellis(q), Some(c))
        }
    };
    // The scale is fitted: the metric's copy is not needed again (it is a packed `n × n` triangle).
    drop(metric);
    let q = quantizer.as_dyn();

    // 3–5 and §4: damp, factor, round. Each factorization's f64 `L` is dropped once its f32 `A` and
    // pivots are taken, so the rounding holds only the `A`s (memory::rounding_bytes counts this).
    let ldl_in = |block| -> Result<(Mat<f32>, f64, Vec<f64>)> {
        let ldl = backend.block_ldl(
            &h_in,
            &LdlParams {
                block,
                ..params.ldl
            },
        )?;
        Ok((ldl.a_strict(), ldl.damp_added, ldl.pivots()))
    };
    // The pivots of `h_out`'s LDL (YAQA with 1 × 1 tiles), for the OPTQ report.
    let mut pivots_out: Option<Vec<f64>> = None;
    let (mut rounded, damp_in, damp_out, pivots): (Rounded, f64, Option<f64>, Vec<f64>) =
        match params.method {
            // DAQ was refused above: it has no factors to round against.
            Method::Rtn | Method::Daq => (round_to_nearest(&w_r, q), 0.0, None, Vec::new()),
            Method::Gptq => {
                // Each layer draws its own stream of the recorded seed.
                let gptq = GptqParams {
                    stochastic_seed: params
                        .gptq
                        .stochastic_seed
                        .map(|seed| Rng::derive(seed, &format!("{name}/stochastic")).next_u64()),
                    ..params.gptq
                };
                let r = backend.gptq(&w_r, &h_in, q, &gptq)?;
                let pivots = r.pivots.clone();
                (r, params.gptq.damp * h_in.mean_diag(), None, pivots)
            }
            Method::Qronos => {
                let cross = cross.as_ref().ok_or_else(|| CoreError::InvalidParameter {
                    name: "cross",
                    value: "None".into(),
                    why: "Qronos needs X̃ᵀ(X − X̃)".into(),
                })?;
                let g = Mat::<f64>::from_fn(n, n, |i, j| h_in.at(i, j) + cross.at(i, j) as f64);
                let r = backend.qronos(&w_r, &h_in, &g, q, &params.gptq)?;
                let pivots = r.pivots.clone();
                (r, params.gptq.damp * h_in.mean_diag(), None, pivots)
            }
            Method::Ldlq => {
                let (a_in, damp, pivots) = ldl_in(params.round.tile_cols)?;
                let r = backend.round_adaptive(&w_r, &a_in, None, q, &params.round)?;
                (r, damp, None, pivots)
            }
            Method::Yaqa => {
                let (a_in, damp, pivots) = ldl_in(params.round.tile_cols)?;
                let h_out = h_out.as_ref().ok_or_else(|| CoreError::InvalidParameter {
                    name: "h_out",
                    value: "None".into(),
                    why: "YAQA needs h_out".into(),
                })?;
                let ldl_out = backend
                    .block_ldl(
                        h_out,
                        &LdlParams {
                            block: params.round.tile_rows,
                            damp: params.damp_out,
                            ..params.ldl
                        },
                    )
                    .map_err(|e| match e {
                        CoreError::NotPositiveDefinite {
                            pivot,
                            damp_added,
                            tries,
                            ..
                        } => CoreError::NotPositiveDefinite {
                            what: "h_out".into(),
                            pivot,
                            damp_added,
                            tries,
                        },
                        other => other,
                    })?;
                let (a_out, damp_out) = (ldl_out.a_strict(), ldl_out.damp_added);
                pivots_out = Some(ldl_out.pivots());
                drop(ldl_out);
                let r = backend.round_adaptive(&w_r, &a_in, Some(&a_out), q, &params.round)?;
                (r, damp, Some(damp_out), pivots)
            }
        };
    let optq = if params.refine_sweeps == 0 {
        optq_report(
            backend,
            params,
            &w_r,
            &h_in,
            h_out.as_ref(),
            &rounded,
            (damp_in, damp_out),
            (&pivots, pivots_out.as_deref()),
            q,
        )?
    } else {
        None
    };

    let refine = if params.refine_sweeps > 0 {
        // The proxy the rounding minimised: the same normalised, rotated and damped factors.
        let mut hi = h_in.clone();
        hi.add_diag(damp_in);
        // Only YAQA damps (and rounds against) h_out; every other method's proxy has h_out = I.
        let ho = h_out.as_ref().zip(damp_out).map(|(h, d)| {
            let mut h = h.clone();
            h.add_diag(d);
            h
        });
        Some(refine_coordinate(
            &w_r,
            &mut rounded,
            &hi,
            ho.as_ref(),
            q,
            params.refine_sweeps,
        )?)
    } else {
        None
    };

    let one = backend.proxy_error(&w_r, &rounded.w_hat, &h_in, None)?;
    let two = match h_out.as_ref() {
        Some(h) => Some(
            backend
                .proxy_error(&w_r, &rounded.w_hat, &h_in, Some(h))?
                .relative(),
        ),
        None => None,
    };

    // Back to the original basis.
    let mut w_hat = rounded.w_hat;
    if let (Some(s_in), Some(s_out)) = (&signs_in, &signs_out) {
        backend.hadamard_rotate(&mut w_hat, Side::Rows, s_out, true)?;
        backend.hadamard_rotate(&mut w_hat, Side::Cols, s_in, true)?;
    }
    let bits_per_weight = q.bits_per_weight();
    Ok(QuantizedLayer {
        w_hat,
        codes: rounded.codes,
        signs_in,
        signs_out,
        pivots,
        report: LayerReport {
            method: params.method,
            proxy_two_sided: two,
            proxy_one_sided: one.relative(),
            damp_in,
            damp_out,
            scale_c,
            bits_per_weight,
            refine,
            optq,
        },
        quantizer,
    })
}

/// The OPTQ report of a finished rounding ([`crate::optq`]): the measured error on the damped factors the
/// rounding used, against the run's pivots and rounding errors. `None` for RTN, tiles larger than 1 × 1
/// (block pivots), a backend that kept no rounding errors, or a quantizer that is not a uniform grid.
///
/// GPTQ's dead columns (zero diagonal) are rounded by GPTQ as zero weights against `H_ii = 1`, so the
/// measured error uses the same `H` and `W`.
#[allow(clippy::too_many_arguments)]
fn optq_report(
    backend: &dyn Backend,
    params: &LayerParams,
    w_r: &Mat<f32>,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
    rounded: &Rounded,
    (damp_in, damp_out): (f64, Option<f64>),
    (pivots, pivots_out): (&[f64], Option<&[f64]>),
    q: &dyn TileQuantizer,
) -> Result<Option<OptqReport>> {
    let Some(eps) = rounded.eps.as_ref() else {
        return Ok(None);
    };
    let n = w_r.cols;
    let one_by_one = params.round.tile_rows == 1 && params.round.tile_cols == 1;
    let mut w = w_r.clone();
    let mut h = h_in.clone();
    let mut h_out_damped = None;
    let (pivots_in, gains) = match params.method {
        Method::Gptq => {
            let order: Vec<usize> = if rounded.order.is_empty() {
                (0..n).collect()
            } else {
                rounded.order.clone()
            };
            if rounded.pivots.len() != n || order.len() != n {
                return Ok(None);
            }
            let mut at = vec![0.0; n];
            for (t, &col) in order.iter().enumerate() {
                at[col] = rounded.pivots[t];
            }
            let gains = (rounded.drift_gains.len() == n).then(|| {
                let mut g = vec![0.0; n];
                for (t, &col) in order.iter().enumerate() {
                    g[col] = rounded.drift_gains[t];
                }
                g
            });
            let dead: Vec<usize> = (0..n).filter(|&i| h.at(i, i) == 0.0).collect();
            for &i in &dead {
                *h.at_mut(i, i) = 1.0;
                for r in 0..w.rows {
                    *w.at_mut(r, i) = 0.0;
                }
            }
            h.add_diag(params.gptq.damp * h.mean_diag());
            (at, gains)
        }
        Method::Ldlq | Method::Yaqa if one_by_one => {
            h.add_diag(damp_in);
            if let (Method::Yaqa, Some(ho), Some(d)) = (params.method, h_out, damp_out) {
                let mut ho = ho.clone();
                ho.add_diag(d);
                h_out_damped = Some(ho);
            }
            if pivots.len() != n {
                return Ok(None);
            }
            (pivots.to_vec(), None)
        }
        _ => return Ok(None),
    };
    if params.method == Method::Yaqa && (h_out_damped.is_none() || pivots_out.is_none()) {
        return Ok(None);
    }
    let delta = Mat {
        rows: w.rows,
        cols: n,
        data: w
            .data
            .iter()
            .zip(&rounded.w_hat.data)
            .map(|(a, b)| a - b)
            .collect(),
    };
    let measured = backend.weighted_error(&delta, &h, h_out_damped.as_ref())?;
    let facts = RunFacts {
        measured,
        pivots_in: &pivots_in,
        pivots_out,
        drift_gains: gains.as_deref(),
    };
    Ok(crate::optq::report(&w, &rounded.w_hat, eps, q, &facts))
}

#[cfg(test)]
mod optq_tests {
    use crate::layer::{LayerFactors, LayerParams, Method, QuantizerSpec, quantize_layer};
    use crate::reference::Reference;
    use crate::sym::SymMat;
    use crate::synthetic;

    fn factor(n: usize, seed: u64) -> SymMat {
        let x = synthetic::activations(3 * n, n, 0.8, seed);
        let mut h = SymMat::zeros(n);
        for t in 0..x.rows {
            for i in 0..n {
                for j in 0..=i {
                    *h.at_mut(i, j) += x.at(t, i) as f64 * x.at(t, j) as f64;
                }
            }
        }
        h
    }

    /// Every method with pivots reports the OPTQ identity ([`crate::optq`]) through `quantize_layer` (rotated, normalised,
    /// damped coordinates), to f32 round-off; RTN and refined runs report none.
    #[test]
    fn layer_reports_carry_the_identity() {
        let (m, n) = (16, 32);
        let h_in = factor(n, 1);
        let h_out = factor(m, 2);
        let w = synthetic::weights(m, n, 3);
        let factors = LayerFactors {
            h_in: &h_in,
            h_out: Some(&h_out),
            xtx: None,
            cross: None,
        };
        for method in [Method::Gptq, Method::Ldlq, Method::Yaqa] {
            for quantizer in [
                QuantizerSpec::IntSym { bits: 3 },
                QuantizerSpec::IntAsym {
                    bits: 4,
                    group_size: Some(8),
                },
            ] {
                let params = LayerParams {
                    method,
                    quantizer,
                    ..LayerParams::default()
                };
                let q = quantize_layer(&Reference, "l", &w, &factors, &params).expect("layer");
                let o = q.report.optq.expect("optq report");
                assert!(o.measured > 0.0 && o.bound > 0.0);
                // f32 storage of ε and Δ: tests/gptq.rs measures about 1e-7 (IDENTITY_REL_TOL).
                assert!(o.discrepancy() < 1e-5, "{method:?} {quantizer:?}: {o:?}");
                if o.clipped == 0 {
                    assert!(o.measured <= o.bound, "{method:?}: {o:?}");
                }
            }
        }
        let rtn = LayerParams {
            method: Method::Rtn,
            ..LayerParams::default()
        };
        let q = quantize_layer(&Reference, "l", &w, &factors, &rtn).expect("rtn");
        assert!(q.report.optq.is_none());
        let refined = LayerParams {
            method: Method::Gptq,
            refine_sweeps: 1,
            ..LayerParams::default()
        };
        let q = quantize_layer(&Reference, "l", &w, &factors, &refined).expect("refined");
        assert!(q.report.optq.is_none());
    }

    /// Stochastic GPTQ through `quantize_layer`: the same seed replays bit for bit, another seed or
    /// another layer name draws another stream, and the stochastic bounds are reported.
    #[test]
    fn stochastic_layers_replay_by_seed_and_name() {
        let (m, n) = (8, 32);
        let h = factor(n, 4);
        let w = synthetic::weights(m, n, 5);
        let run = |name: &str, seed: u64| {
            let mut params = LayerParams {
                method: Method::Gptq,
                quantizer: QuantizerSpec::IntSym { bits: 4 },
                ..LayerParams::default()
            };
            params.gptq.stochastic_seed = Some(seed);
            quantize_layer(&Reference, name, &w, &LayerFactors::xtx(&h), &params).expect("gptq")
        };
        let a = run("a", 7);
        assert_eq!(a.codes, run("a", 7).codes);
        assert_ne!(a.codes, run("a", 8).codes);
        assert_ne!(a.codes, run("b", 7).codes);
        let o = a.report.optq.expect("optq");
        let s = o.stochastic.expect("stochastic bounds");
        assert!(s.drift_bound_steps > 0.0 && s.linf_bound_steps == s.drift_bound_steps + 1.0);
        assert!(o.discrepancy() < 1e-5, "{o:?}");
    }
}
