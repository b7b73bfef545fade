//! Layer-level transformer operations behind one trait, each with its backward (STYLE.md).
//!
//! `yaqa-model` runs Llama-family decoders (DESIGN.md §1, §6) through [`ModelOps`], so the same forward
//! and backward drive the naive f64 [`crate::reference::Reference`] oracle, the CPU backend and, later,
//! CUDA. The operations are coarse (a whole RMSNorm, a whole causal attention), buffers are contiguous
//! row-major [`Mat`]s with one token per row, and a batch of `batch` sequences of `seq` tokens is stored
//! as `batch · seq` rows, sequence-major (row `b · seq + t` is token `t` of sequence `b`).
//!
//! The trait is generic over the element type [`Real`] so that the reference can run a whole model in
//! f64 for finite-difference gradient checks; the fast backends implement it for `f32`.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::error::{CoreError, Result};
use crate::mat::Mat;

/// The element types a model can run in: `f32` (production) and `f64` (gradient checks).
pub trait Real:
    Copy
    + Default
    + Debug
    + Send
    + Sync
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    /// Rounds an f64 to this type.
    fn from_f64(v: f64) -> Self;
    /// Widens (or keeps) this value as an f64.
    fn to_f64(self) -> f64;
    /// Converts an f32 to this type (exact for both implementations).
    fn from_f32(v: f32) -> Self;
}

impl Real for f32 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Real for f64 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
}

/// The shape of one causal self-attention call with grouped-query attention (GQA).
///
/// `q` is `(batch · seq) × (n_heads · head_dim)`, `k` and `v` are `(batch · seq) × (n_kv_heads · head_dim)`;
/// query head `h` reads key/value head `h / (n_heads / n_kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Checks the shape itself and the three operands against it.
    pub fn check<T>(&self, q: &Mat<T>, k: &Mat<T>, v: &Mat<T>) -> Result<()> {
        if self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
            || self.head_dim == 0
        {
            return Err(CoreError::InvalidParameter {
                name: "AttentionShape",
                value: format!("{self:?}"),
                why: "n_heads must be a positive multiple of n_kv_heads and head_dim > 0".into(),
            });
        }
        let rows = self.batch * self.seq;
        let check = |what: &str, m: &Mat<T>, heads: usize| {
            if m.rows == rows && m.cols == heads * self.head_dim {
                Ok(())
            } else {
                Err(CoreError::shape(
                    what,
                    format!("{rows}×{}", heads * self.head_dim),
                    format!("{}×{}", m.rows, m.cols),
                ))
            }
        };
        check("attention q", q, self.n_heads)?;
        check("attention k", k, self.n_kv_heads)?;
        check("attention v", v, self.n_kv_heads)
    }
}

/// Rotary position embedding parameters, rotate-half ("NeoX"/HF Llama) layout.
///
/// Within each head of `head_dim` channels, channel `i < head_dim/2` pairs with `i + head_dim/2`; at
/// position `t` the pair is rotated by `θ_i(t) = fl32(t · inv_freq[i])`, evaluated with f64 `cos`/`sin`
/// (so f32 backends and the reference agree on the angle bit for bit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams<'a> {
    /// Tokens per sequence; row `r` has position `r % seq`.
    pub seq: usize,
    pub head_dim: usize,
    /// `head_dim / 2` inverse frequencies (after any Llama-3 style scaling).
    pub inv_freq: &'a [f32],
}

impl RopeParams<'_> {
    /// The rotation angle of pair `i` at position `t`.
    #[inline]
    pub fn angle(&self, t: usize, i: usize) -> f64 {
        ((t as f32) * self.inv_freq[i]) as f64
    }

    /// Checks that `x` is made of whole heads and whole sequences.
    pub fn check<T>(&self, x: &Mat<T>) -> Result<()> {
        if self.head_dim == 0
            || !self.head_dim.is_multiple_of(2)
            || self.inv_freq.len() != self.head_dim / 2
            || self.seq == 0
        {
            return Err(CoreError::InvalidParameter {
                name: "RopeParams",
                value: format!(
                    "seq {} head_dim {} inv_freq.len() {}",
                    self.seq,
                    self.head_dim,
                    self.inv_freq.len()
                ),
                why: "head_dim must be even and inv_freq must hold head_dim/2 values".into(),
            });
        }
        if !x.cols.is_multiple_of(self.head_dim) || !x.rows.is_multiple_of(self.seq) {
            return Err(CoreError::shape(
                "rope input",
                format!(
                    "rows a multiple of {} and cols of {}",
                    self.seq, self.head_dim
                ),
                format!("{}×{}", x.rows, x.cols),
            ));
        }
        Ok(())
    }
}

/// Gradients of a causal attention with respect to its three inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGrads<T> {
    pub d_q: Mat<T>,
    pub d_k: Mat<T>,
    pub d_v: Mat<T>,
}

/// The layer-level operations of a Llama-family decoder, each with its backward.
///
/// All are deterministic for fixed inputs. Backward functions return the gradient with respect to the
/// activations; weight gradients are formed by the caller as `gᵀ x` (DESIGN.md §2) from the `(x, g)` pairs.
pub trait ModelOps<T: Real = f32>: Send + Sync + Debug {
    /// A short human-readable name.
    fn model_ops_name(&self) -> String;

    /// `y = x Wᵀ (+ b)`.
    ///
    /// **Shapes**: `x` is `t × n`, `w` is `m × n`, `bias` has `m` values; `y` is `t × m`.
    fn linear(&self, x: &Mat<T>, w: &Mat<T>, bias: Option<&[T]>) -> Result<Mat<T>>;

    /// `dx = dy W` (the bias gradient is not needed).
    ///
    /// **Shapes**: `w` is `m × n`, `d_y` is `t × m`; `dx` is `t × n`.
    fn linear_backward(&self, w: &Mat<T>, d_y: &Mat<T>) -> Result<Mat<T>>;

    /// Row-wise RMSNorm `y = w ⊙ x / sqrt(mean(x²) + eps)`, the mean taken in f64 (the residual stream
    /// holds values near 1,000 next to values near 0.1: see the fixture README).
    ///
    /// **Shapes**: `x` is `t × d`, `weight` has `d` values.
    fn rms_norm(&self, x: &Mat<T>, weight: &[T], eps: f64) -> Result<Mat<T>>;

    /// The gradient of [`ModelOps::rms_norm`] with respect to `x`.
    fn rms_norm_backward(&self, x: &Mat<T>, weight: &[T], eps: f64, d_y: &Mat<T>)
    -> Result<Mat<T>>;

    /// Rotary embedding in place; `inverse` rotates by `−θ`, which is also the backward (the rotation is
    /// orthogonal).
    ///
    /// **Shapes**: `x` is `(batch · seq) × (heads · head_dim)`.
    fn rope(&self, x: &mut Mat<T>, params: &RopeParams<'_>, inverse: bool) -> Result<()>;

    /// The gradient of [`ModelOps::rope`]: the inverse rotation of `d_y`, in place.
    fn rope_backward(&self, d_y: &mut Mat<T>, params: &RopeParams<'_>) -> Result<()> {
        self.rope(d_y, params, true)
    }

    /// Causal softmax attention with scale `1/sqrt(head_dim)`, each sequence of the batch on its own.
    ///
    /// **Shapes**: see [`AttentionShape`]; the output has the shape of `q`.
    fn attention(
        &self,
        q: &Mat<T>,
        k: &Mat<T>,
        v: &Mat<T>,
        shape: &AttentionShape,
    ) -> Result<Mat<T>>;

    /// The gradients of [`ModelOps::attention`] (the probabilities are recomputed); `d_k` and `d_v` sum
    /// over the query heads of each group.
    fn attention_backward(
        &self,
        q: &Mat<T>,
        k: &Mat<T>,
        v: &Mat<T>,
        d_out: &Mat<T>,
        shape: &AttentionShape,
    ) -> Result<AttentionGrads<T>>;

    /// SwiGLU `y = silu(gate) ⊙ up` with `silu(z) = z / (1 + e^(−z))`.
    fn swiglu(&self, gate: &Mat<T>, up: &Mat<T>) -> Result<Mat<T>>;

    /// The gradients `(d_gate, d_up)` of [`ModelOps::swiglu`].
    fn swiglu_backward(&self, gate: &Mat<T>, up: &Mat<T>, d_y: &Mat<T>)
    -> Result<(Mat<T>, Mat<T>)>;
}

/// Errors unless `a` and `b` have the same shape.
pub fn check_same_shape<T>(what: &str, a: &Mat<T>, b: &Mat<T>) -> Result<()> {
    if (a.rows, a.cols) == (b.rows, b.cols) {
        Ok(())
    } else {
        Err(CoreError::shape(
            what,
            format!("{}×{}", a.rows, a.cols),
            format!("{}×{}", b.rows, b.cols),
        ))
    }
}

/// Errors unless a per-channel vector has `expected` values.
pub fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len == expected {
        Ok(())
    } else {
        Err(CoreError::shape(what, expected, len))
    }
}
