//! The quantizer interface the rounding algorithms call, independent of any codebook (DESIGN.md §5).
//!
//! A quantizer takes one tile of (feedback-corrected) weights, replaces it by its reconstruction and
//! writes its codes. It knows where the tile sits in the matrix, so per-group scales and zero-points can
//! be looked up. Concrete quantizers live in the submodules.

pub mod e8p;
pub mod fp8;
pub mod ggml;
pub mod int;
pub mod scale;
pub mod trellis;

use crate::rng::Rng;

/// The uniform grid a scalar quantizer uses at one weight: its step `δ` and its first and last levels.
/// The OPTQ bounds (DESIGN.md §9, [`crate::optq`]) are stated in these terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridCell {
    /// The distance `δ` between neighbouring levels.
    pub step: f64,
    /// The lowest and highest reconstruction values; values beyond them are clipped.
    pub lo: f64,
    pub hi: f64,
}

/// A quantizer that rounds tiles of a weight matrix.
pub trait TileQuantizer: Send + Sync + std::fmt::Debug {
    /// A short name for reports (`int4`, `int4-asym-g128`).
    fn name(&self) -> String;

    /// Weights per code: 1 for scalar grids, 8 for E8P. Codes run along rows.
    fn code_dim(&self) -> usize {
        1
    }

    /// Bits per weight, including scales and zero-points amortised over the matrix.
    fn bits_per_weight(&self) -> f64;

    /// The only tile shape `quantize_tile` takes, `(rows, cols)`, for quantizers whose codes depend on
    /// each other across a whole tile (the trellis: one walk per `16 × 16` tile); `None` for any tile
    /// whose width is a multiple of [`TileQuantizer::code_dim`].
    fn tile_shape(&self) -> Option<(usize, usize)> {
        None
    }

    /// Whether each weight is rounded on its own (code dimension 1, any tile): what GPTQ, Qronos and the
    /// coordinate-descent refinement need, since they move one weight at a time.
    fn is_scalar(&self) -> bool {
        self.code_dim() == 1 && self.tile_shape().is_none()
    }

    /// The uniform grid used at weight `(row, col)` (original column index), or `None` for quantizers
    /// that are not a uniform scalar grid (vector codebooks, [`Exact`]).
    fn grid(&self, _row: usize, _col: usize) -> Option<GridCell> {
        None
    }

    /// Replaces `values` (the `rows × cols` tile at `(row0, col0)`, row-major) by their reconstruction and
    /// writes `rows × cols / code_dim` codes. With `dither`, scalar grids round stochastically
    /// (unbiased: up with probability equal to the fractional position between the two neighbours).
    fn quantize_tile(
        &self,
        row0: usize,
        col0: usize,
        rows: usize,
        cols: usize,
        values: &mut [f32],
        codes: &mut [u16],
        dither: Option<&mut Rng>,
    );
}

/// The quantizer with infinite precision: returns its input and writes code 0. Rounding with it must give
/// back `W` exactly (DESIGN.md §4's special cases), which is what the identity tests check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exact;

impl TileQuantizer for Exact {
    fn name(&self) -> String {
        "exact".into()
    }

    fn bits_per_weight(&self) -> f64 {
        32.0
    }

    fn quantize_tile(
        &self,
        _row0: usize,
        _col0: usize,
        _rows: usize,
        _cols: usize,
        _values: &mut [f32],
        codes: &mut [u16],
        _dither: Option<&mut Rng>,
    ) {
        codes.fill(0);
    }
}
