//! The backend trait: the coarse, algorithm-level operations that a CPU or GPU implementation provides.
//!
//! Operations are whole steps of the method (STYLE.md: faer / llm.c granularity), not tensor primitives,
//! so a backend can fuse, block and schedule each one as its hardware likes. Every operation has a naive
//! f64 counterpart in [`crate::reference`] that shares no code with any backend, and a conformance check
//! in [`crate::conformance`] that every backend instantiates.
//!
//! Conventions (DESIGN.md): a layer computes `y = x Wᵀ`, `W` is `m × n` row-major; `x` holds one token per
//! row (`t × n`), `g` the gradient of the loss with respect to the layer output (`t × m`).

use crate::error::Result;
use crate::ldl::{BlockLdl, LdlParams};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;

/// Which side of `W` a rotation or sign vector acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The output dimension (`m`, rows of `W`): `W ← R_m diag(s) W`.
    Rows,
    /// The input dimension (`n`, columns of `W`): `W ← W diag(s) R_nᵀ`.
    Cols,
}

/// The order in which tiles are rounded (DESIGN.md §4). Both give identical results in exact arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoundOrder {
    /// Bottom strip first; one GEMM of row feedback per strip, then one-sided LDLQ along the strip.
    #[default]
    Strips,
    /// Anti-diagonal wavefront from the bottom-right corner; all tiles of a step are independent.
    Wavefront,
}

/// Parameters of the adaptive rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundParams {
    /// Rows per tile; must divide `m` and equal the block size of the LDL of `h_out`.
    pub tile_rows: usize,
    /// Columns per tile; must divide `n` and equal the block size of the LDL of `h_in`.
    pub tile_cols: usize,
    pub order: RoundOrder,
}

impl Default for RoundParams {
    fn default() -> Self {
        Self {
            tile_rows: 16,
            tile_cols: 16,
            order: RoundOrder::Strips,
        }
    }
}

/// Parameters of GPTQ/OPTQ (Frantar et al.), in the layout of the reference implementation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqParams {
    /// Columns per lazy batch update.
    pub block_size: usize,
    /// Damping as a fraction of the mean diagonal of `H` (GPTQ's `percdamp`).
    pub damp: f64,
    /// Process columns by decreasing `diag(H)` ("act-order"); groups still follow the original column index
    /// (static groups), as GPTQ checkpoints with `g_idx` expect.
    pub act_order: bool,
    /// Stochastic rounding seed; `None` rounds to nearest.
    pub stochastic_seed: Option<u64>,
}

impl Default for GptqParams {
    fn default() -> Self {
        Self {
            block_size: 128,
            damp: 0.01,
            act_order: false,
            stochastic_seed: None,
        }
    }
}

/// The result of a rounding run.
#[derive(Clone, Debug, PartialEq)]
pub struct Rounded {
    /// Reconstructed weights `Ŵ`, same shape as `W`.
    pub w_hat: Mat<f32>,
    /// Quantizer codes, row-major, `m × n / code_dim`.
    pub codes: Vec<u16>,
    /// The LDL pivots (`d_t`) the run used, in processing order, for the OPTQ error bound (DESIGN.md §9).
    pub pivots: Vec<f64>,
    /// The column rounded at each step (`pivots[t]` belongs to column `order[t]`); empty means the
    /// natural order `0..n`.
    pub order: Vec<usize>,
    /// The rounding errors `ε` of the run ([`crate::optq`], DESIGN.md §9): for every weight, the
    /// feedback-corrected value handed to the quantizer minus its reconstruction, `m × n` at the weight's
    /// own position. `None` where a backend does not record them.
    pub eps: Option<Mat<f32>>,
    /// Stochastic GPTQ only: the drift gains `ρ_t` in processing order ([`crate::optq`]); empty otherwise.
    pub drift_gains: Vec<f64>,
}

/// Round-to-nearest over the whole matrix: every tile quantized with no feedback.
pub fn round_to_nearest(w: &Mat<f32>, quantizer: &dyn TileQuantizer) -> Rounded {
    let per_code = quantizer.code_dim();
    let (w_hat, codes) = match quantizer.tile_shape() {
        None => {
            let mut w_hat = w.clone();
            let mut codes = vec![0u16; w.rows * w.cols / per_code];
            let codes_per_row = w.cols / per_code;
            for i in 0..w.rows {
                let row = w_hat.row_mut(i);
                quantizer.quantize_tile(
                    i,
                    0,
                    1,
                    w.cols,
                    row,
                    &mut codes[i * codes_per_row..(i + 1) * codes_per_row],
                    None,
                );
            }
            (w_hat, codes)
        }
        Some(tile) => round_fixed_tiles(w, quantizer, tile),
    };
    Rounded {
        w_hat,
        codes,
        pivots: Vec::new(),
        order: Vec::new(),
        eps: None,
        drift_gains: Vec::new(),
    }
}

/// Round-to-nearest for a quantizer with a fixed tile shape ([`TileQuantizer::tile_shape`]): strips of
/// `tr` rows, split among scoped threads (the tiles are independent, so the result does not depend on
/// the split). Codes land at their weights' row-major positions, as the adaptive rounding writes them.
///
/// Panics if `tr`, `tc` do not divide `W`'s shape or `tc` is not a multiple of the code dimension (a
/// caller bug: the layer checks shapes before rounding).
fn round_fixed_tiles(
    w: &Mat<f32>,
    quantizer: &dyn TileQuantizer,
    (tr, tc): (usize, usize),
) -> (Mat<f32>, Vec<u16>) {
    let (m, n) = w.shape();
    let code_dim = quantizer.code_dim();
    assert!(
        tr > 0
            && tc > 0
            && m.is_multiple_of(tr)
            && n.is_multiple_of(tc)
            && tc.is_multiple_of(code_dim),
        "round_to_nearest: {m} × {n} does not split into {tr} × {tc} tiles"
    );
    let mut w_hat = w.clone();
    let mut codes = vec![0u16; m * n / code_dim];
    let strips = m / tr;
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, strips.max(1));
    let per_thread = strips.div_ceil(threads);
    let round_strips = |first: usize, values: &mut [f32], strip_codes: &mut [u16]| {
        let mut tile = vec![0f32; tr * tc];
        let mut tile_codes = vec![0u16; tr * tc / code_dim];
        let per_row = tc / code_dim;
        for (s, (vals, cods)) in values
            .chunks_exact_mut(tr * n)
            .zip(strip_codes.chunks_exact_mut(tr * n / code_dim))
            .enumerate()
        {
            for c0 in (0..n).step_by(tc) {
                for r in 0..tr {
                    tile[r * tc..(r + 1) * tc].copy_from_slice(&vals[r * n + c0..r * n + c0 + tc]);
                }
                quantizer.quantize_tile(
                    (first + s) * tr,
                    c0,
                    tr,
                    tc,
                    &mut tile,
                    &mut tile_codes,
                    None,
                );
                for r in 0..tr {
                    vals[r * n + c0..r * n + c0 + tc].copy_from_slice(&tile[r * tc..(r + 1) * tc]);
                    let dst = r * (n / code_dim) + c0 / code_dim;
                    cods[dst..dst + per_row]
                        .copy_from_slice(&tile_codes[r * per_row..(r + 1) * per_row]);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for (k, (values, strip_codes)) in w_hat
            .data
            .chunks_mut(per_thread * tr * n)
            .zip(codes.chunks_mut(per_thread * tr * n / code_dim))
            .enumerate()
        {
            let round_strips = &round_strips;
            scope.spawn(move || round_strips(k * per_thread, values, strip_codes));
        }
    });
    (w_hat, codes)
}

/// The operations a compute backend provides. All are deterministic for fixed inputs.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short human-readable name (`cpu`, `cpu-scalar`, `reference-f64`, `cuda:0`).
    fn name(&self) -> String;

    /// `h_in += Σ_t x_t x_tᵀ` (the GPTQ/LDLQ Hessian, DESIGN.md §2).
    ///
    /// **Shapes**: `x` is `t × n`; `h_in` is `n × n`. **Errors**: shape mismatch.
    fn accumulate_xtx(&self, h_in: &mut SymMat, x: &Mat<f32>) -> Result<()>;

    /// Sketch B for one sequence: `G = gᵀ x`, `h_in += Gᵀ G`, `h_out += G Gᵀ` (DESIGN.md §2).
    ///
    /// **Shapes**: `x` is `t × n`, `g` is `t × m`; `h_in` is `n × n`, `h_out` is `m × m`.
    fn accumulate_sketch_b(
        &self,
        h_in: &mut SymMat,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
    ) -> Result<()>;

    /// Sketch A, odd pass: `h_out += scale · Σ_t (x_tᵀ h_in x_t) g_t g_tᵀ` (DESIGN.md §2, with
    /// `scale = 1/‖h_in‖_F²` supplied by the caller so that shards agree).
    fn accumulate_sketch_a_out(
        &self,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_in: &SymMat,
        scale: f64,
    ) -> Result<()>;

    /// Sketch A, even pass: `h_in += scale · Σ_t (g_tᵀ h_out g_t) x_t x_tᵀ`.
    fn accumulate_sketch_a_in(
        &self,
        h_in: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_out: &SymMat,
        scale: f64,
    ) -> Result<()>;

    /// Randomized Hadamard rotation of `W` along one side, in place (DESIGN.md §3.2):
    /// forward `v ← R (s ⊙ v)` for every row vector (`Side::Cols`) or column vector (`Side::Rows`);
    /// `inverse` applies `v ← s ⊙ (Rᵀ v)`.
    ///
    /// **Errors**: a dimension with no Hadamard construction, or `signs.len()` not matching.
    fn hadamard_rotate(
        &self,
        w: &mut Mat<f32>,
        side: Side,
        signs: &[f32],
        inverse: bool,
    ) -> Result<()>;

    /// `R diag(s) h diag(s) Rᵀ` for a symmetric factor (DESIGN.md §3.2).
    fn rotate_factor(&self, h: &SymMat, signs: &[f32]) -> Result<SymMat>;

    /// Damping loop and block LDL in f64 (DESIGN.md §3.3–3.4).
    fn block_ldl(&self, h: &SymMat, params: &LdlParams) -> Result<BlockLdl>;

    /// Two-sided adaptive rounding (DESIGN.md §4). `a_in` (`n × n`) and `a_out` (`m × m`) are the strictly
    /// block-lower parts of the unit LDL factors; `a_out = None` is LDLQ.
    fn round_adaptive(
        &self,
        w: &Mat<f32>,
        a_in: &Mat<f32>,
        a_out: Option<&Mat<f32>>,
        quantizer: &dyn TileQuantizer,
        params: &RoundParams,
    ) -> Result<Rounded>;

    /// GPTQ/OPTQ with lazy block updates against `h` (`n × n`), columns left to right (or act-order).
    fn gptq(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded>;

    /// Qronos (arXiv 2505.11695, DESIGN.md §9) against `h = X̃ᵀX̃` and `g = X̃ᵀX` (both `n × n`), columns
    /// left to right: the corrective first step, then GPTQ's updates ([`crate::reference`]'s `qronos`
    /// states the equations). `params.act_order` is refused.
    ///
    /// **Errors**: those of [`check_qronos_inputs`]; `H + λI` not positive definite.
    fn qronos(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        g: &Mat<f64>,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded>;

    /// The weighted norm `tr(D h_in Dᵀ h_out)` of an `m × n` matrix `D` (`h_out = None` means `I`),
    /// accumulated in f64. The scale search calls it once per candidate grid.
    ///
    /// **Errors**: `h_in` not `n × n`, `h_out` not `m × m` ([`check_weighted_inputs`]).
    fn weighted_error(&self, d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64>;

    /// DESIGN.md §4's proxy error of `Ŵ`: [`Self::weighted_error`] of `Δ = W − Ŵ` (formed in f32), and
    /// of `W` itself as the baseline.
    ///
    /// **Errors**: `w_hat` not shaped like `W`, and those of [`Self::weighted_error`].
    fn proxy_error(
        &self,
        w: &Mat<f32>,
        w_hat: &Mat<f32>,
        h_in: &SymMat,
        h_out: Option<&SymMat>,
    ) -> Result<ProxyError> {
        w_hat.expect_shape("proxy_error: w_hat vs W", w.rows, w.cols)?;
        // `weighted_error` checks the factors' sizes against `Δ`, which has `W`'s shape.
        let delta = Mat {
            rows: w.rows,
            cols: w.cols,
            data: w.data.iter().zip(&w_hat.data).map(|(a, b)| a - b).collect(),
        };
        Ok(ProxyError {
            error: self.weighted_error(&delta, h_in, h_out)?,
            baseline: self.weighted_error(w, h_in, h_out)?,
        })
    }
}

/// Numerator and denominator of a proxy error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProxyError {
    /// `tr(Δ h_in Δᵀ h_out)`.
    pub error: f64,
    /// `tr(W h_in Wᵀ h_out)`.
    pub baseline: f64,
}

impl ProxyError {
    /// `error / baseline` (0 when the baseline is 0).
    pub fn relative(&self) -> f64 {
        if self.baseline == 0.0 {
            0.0
        } else {
            self.error / self.baseline
        }
    }
}

/// Checks the inputs of [`Backend::round_adaptive`] (shared by every backend so that all reject the same
/// inputs with the same message).
///
/// **Errors**: shape mismatches, tile sizes that do not divide the matrix or the quantizer's code
/// dimension, non-finite weights or feedback matrices.
pub fn check_round_inputs(
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: Option<&Mat<f32>>,
    quantizer: &dyn TileQuantizer,
    params: &RoundParams,
) -> Result<()> {
    use crate::error::{CoreError, check_finite};
    let (m, n) = w.shape();
    a_in.expect_shape("round: a_in (n × n)", n, n)?;
    if let Some(a) = a_out {
        a.expect_shape("round: a_out (m × m)", m, m)?;
        check_finite("round: a_out", &a.data)?;
    }
    if params.tile_rows == 0 || !m.is_multiple_of(params.tile_rows) {
        return Err(CoreError::InvalidParameter {
            name: "tile_rows",
            value: params.tile_rows.to_string(),
            why: format!("must divide the {m} rows of W"),
        });
    }
    if let Some((tr, tc)) = quantizer.tile_shape()
        && (params.tile_rows, params.tile_cols) != (tr, tc)
    {
        return Err(CoreError::InvalidParameter {
            name: "tile_rows × tile_cols",
            value: format!("{} × {}", params.tile_rows, params.tile_cols),
            why: format!("{} encodes whole {tr} × {tc} tiles", quantizer.name()),
        });
    }
    let code_dim = quantizer.code_dim();
    if params.tile_cols == 0
        || !n.is_multiple_of(params.tile_cols)
        || !params.tile_cols.is_multiple_of(code_dim)
    {
        return Err(CoreError::InvalidParameter {
            name: "tile_cols",
            value: params.tile_cols.to_string(),
            why: format!(
                "must divide the {n} columns of W and be a multiple of the quantizer's code dimension {code_dim}"
            ),
        });
    }
    check_finite("round: W", &w.data)?;
    check_finite("round: a_in", &a_in.data)?;
    Ok(())
}

/// Checks the inputs of [`Backend::weighted_error`] (shared by every backend).
///
/// **Errors**: `h_in` not `n × n`, `h_out` not `m × m` for an `m × n` matrix `d`.
pub fn check_weighted_inputs(d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<()> {
    use crate::error::CoreError;
    if h_in.n != d.cols {
        return Err(CoreError::shape(
            "weighted_error: h_in vs the matrix's columns",
            d.cols,
            h_in.n,
        ));
    }
    if let Some(h) = h_out
        && h.n != d.rows
    {
        return Err(CoreError::shape(
            "weighted_error: h_out vs the matrix's rows",
            d.rows,
            h.n,
        ));
    }
    Ok(())
}

/// Checks that `signs` has length `n` and holds only ±1 (shared by every backend's rotations).
pub fn check_signs(signs: &[f32], n: usize) -> Result<()> {
    if signs.len() != n {
        return Err(crate::error::CoreError::shape(
            "Hadamard sign vector",
            n,
            signs.len(),
        ));
    }
    if let Some(i) = signs.iter().position(|&s| s != 1.0 && s != -1.0) {
        return Err(crate::error::CoreError::InvalidParameter {
            name: "signs",
            value: format!("signs[{i}] = {}", signs[i]),
            why: "a Hadamard sign vector holds only +1 and −1".into(),
        });
    }
    Ok(())
}

/// Checks the inputs of [`Backend::hadamard_rotate`] and returns the rotated dimension (`n` for
/// `Cols`, `m` for `Rows`).
pub fn check_rotate_inputs(w: &Mat<f32>, side: Side, signs: &[f32]) -> Result<usize> {
    let (m, n) = (w.rows, w.cols);
    if w.data.len() != m * n {
        return Err(crate::error::CoreError::shape(
            "hadamard_rotate: W data",
            m * n,
            w.data.len(),
        ));
    }
    let dim = match side {
        Side::Cols => n,
        Side::Rows => m,
    };
    check_signs(signs, dim)?;
    Ok(dim)
}

/// Checks that `v` (`t × k`, one token per row) matches the order `k` of the factor `acc` it feeds
/// (shared by every backend's sketch operations).
pub fn check_factor_side(what: &str, acc: &SymMat, v: &Mat<f32>) -> Result<()> {
    if acc.n != v.cols {
        return Err(crate::error::CoreError::shape(
            what,
            format!("{} columns", acc.n),
            format!("{}×{}", v.rows, v.cols),
        ));
    }
    Ok(())
}

/// Checks that layer inputs and output gradients cover the same tokens.
pub fn check_same_tokens(x: &Mat<f32>, g: &Mat<f32>) -> Result<()> {
    if x.rows != g.rows {
        return Err(crate::error::CoreError::shape(
            "tokens in x and g",
            x.rows,
            g.rows,
        ));
    }
    Ok(())
}

/// Checks the inputs of [`Backend::gptq`] (shared by every backend): `h` is `n × n` for a non-empty
/// `m × n` `w`, both finite, a scalar quantizer, and a usable damping and block size.
pub fn check_gptq_inputs(
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<()> {
    let (m, n) = w.shape();
    if m == 0 || n == 0 {
        return Err(crate::error::CoreError::shape(
            "gptq W",
            "a non-empty matrix",
            format!("{m}×{n}"),
        ));
    }
    if h.n != n {
        return Err(crate::error::CoreError::shape(
            "gptq H",
            format!("{n}×{n} (W is {m}×{n})"),
            format!("{0}×{0}", h.n),
        ));
    }
    if !quantizer.is_scalar() {
        return Err(crate::error::CoreError::InvalidParameter {
            name: "quantizer",
            value: quantizer.name(),
            why: "GPTQ rounds one column at a time and needs a scalar quantizer (code_dim 1, any tile)"
                .into(),
        });
    }
    if !(params.damp >= 0.0 && params.damp.is_finite()) {
        return Err(crate::error::CoreError::InvalidParameter {
            name: "damp",
            value: params.damp.to_string(),
            why: "damping must be a finite number ≥ 0".into(),
        });
    }
    if params.block_size == 0 {
        return Err(crate::error::CoreError::InvalidParameter {
            name: "block_size",
            value: "0".into(),
            why: "the lazy-update block holds at least one column".into(),
        });
    }
    crate::error::check_finite("gptq W", &w.data)?;
    crate::error::check_finite("gptq H", &h.data)?;
    Ok(())
}

/// Checks the inputs of [`Backend::qronos`] (shared by every backend): those of [`check_gptq_inputs`],
/// `g` is `n × n` and finite, and no act-order (Qronos's first step is defined for the first column of the
/// order the caller chose; permute `W`, `H` and `G` before calling instead).
pub fn check_qronos_inputs(
    w: &Mat<f32>,
    h: &SymMat,
    g: &Mat<f64>,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<()> {
    check_gptq_inputs(w, h, quantizer, params)?;
    let n = w.cols;
    g.expect_shape("qronos G = X̃ᵀX (n × n)", n, n)?;
    crate::error::check_finite("qronos G", &g.data)?;
    if params.act_order {
        return Err(crate::error::CoreError::InvalidParameter {
            name: "act_order",
            value: "true".into(),
            why: "Qronos takes the columns in the order given; permute W, H and G first".into(),
        });
    }
    Ok(())
}
