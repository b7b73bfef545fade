//! Kronecker-factor sketches of a linear layer's Fisher (DESIGN.md §2), as mergeable partial sums.
//!
//! [`Factors`] holds `h_in` (`n × n`) and, for the two-sided sketches, `h_out` (`m × m`), plus how many
//! sequences and tokens went in. Factors are plain sums, so shards accumulated on different machines are
//! added with [`Factors::merge`] and give exactly the factors of one pass over all the data (up to the
//! order of f64 additions).

use crate::backend::Backend;
use crate::error::{CoreError, Result, check_finite};
use crate::mat::Mat;
use crate::sym::SymMat;

/// Which sketch a set of factors holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SketchKind {
    /// `h_in = Σ x xᵀ`, `h_out = I` (GPTQ/LDLQ).
    Xtx,
    /// Sketch A, power iteration: during pass `p` the side that pass accumulates is a sum and the other
    /// side is the previous pass's (fixed) result. Pass 0 accumulates `Σ x xᵀ`.
    A { pass: u32 },
    /// Sketch B: per-sequence `G_b = Σ_t g_bt x_btᵀ`, `h_in = Σ G_bᵀ G_b`, `h_out = Σ G_b G_bᵀ`.
    B,
}

impl SketchKind {
    /// Whether a pass of this sketch needs gradients (a backward pass).
    pub fn needs_gradients(&self) -> bool {
        !matches!(self, SketchKind::Xtx | SketchKind::A { pass: 0 })
    }
}

/// The two Kronecker factors of one layer, or a partial sum of them.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub kind: SketchKind,
    pub h_in: SymMat,
    /// `None` for [`SketchKind::Xtx`] (meaning `I`) and for Sketch A pass 0.
    pub h_out: Option<SymMat>,
    /// Sequences accumulated in the current pass.
    pub n_seqs: u64,
    /// Tokens accumulated in the current pass.
    pub n_tokens: u64,
    /// For Sketch A passes ≥ 1: `1/‖fixed side‖_F²`, the normalisation of DESIGN.md §2.
    pub scale: f64,
    /// `Σ x xᵀ` over the same tokens, carried by the two-sided sketches (accumulated alongside Sketch B,
    /// kept from pass 0 by Sketch A): the metric of the scale search every method shares
    /// ([`crate::layer::LayerFactors::xtx`]). `None` for [`SketchKind::Xtx`] and Sketch A pass 0, whose
    /// `h_in` is that sum.
    pub xtx: Option<SymMat>,
}

impl Factors {
    /// Empty `Σ x xᵀ` factors for a layer with `n` inputs.
    pub fn xtx(n: usize) -> Self {
        Self {
            kind: SketchKind::Xtx,
            h_in: SymMat::zeros(n),
            h_out: None,
            n_seqs: 0,
            n_tokens: 0,
            scale: 1.0,
            xtx: None,
        }
    }

    /// Empty Sketch B factors for an `m × n` layer.
    pub fn sketch_b(m: usize, n: usize) -> Self {
        Self {
            kind: SketchKind::B,
            h_in: SymMat::zeros(n),
            h_out: Some(SymMat::zeros(m)),
            n_seqs: 0,
            n_tokens: 0,
            scale: 1.0,
            xtx: Some(SymMat::zeros(n)),
        }
    }

    /// `Σ x xᵀ` over the tokens of these factors: [`Factors::xtx`] for the two-sided sketches, `h_in`
    /// for the others.
    pub fn xtx_sum(&self) -> &SymMat {
        self.xtx.as_ref().unwrap_or(&self.h_in)
    }

    /// Empty Sketch A pass-0 factors (`Σ x xᵀ`).
    pub fn sketch_a_start(n: usize) -> Self {
        Self {
            kind: SketchKind::A { pass: 0 },
            ..Self::xtx(n)
        }
    }

    /// Starts the next Sketch A pass from the finished previous one: odd passes accumulate `h_out` with
    /// `h_in` fixed, even passes accumulate `h_in` with `h_out` fixed.
    ///
    /// **Errors**: called on a non-A sketch, or the fixed side is zero.
    pub fn next_sketch_a_pass(&self, m: usize) -> Result<Self> {
        let SketchKind::A { pass } = self.kind else {
            return Err(CoreError::InvalidParameter {
                name: "sketch",
                value: format!("{:?}", self.kind),
                why: "only Sketch A has passes".into(),
            });
        };
        let next = pass + 1;
        let (h_in, h_out, fixed_norm) = if next % 2 == 1 {
            (self.h_in.clone(), SymMat::zeros(m), self.h_in.norm_fro())
        } else {
            let h_out = self
                .h_out
                .clone()
                .ok_or_else(|| CoreError::InvalidParameter {
                    name: "sketch",
                    value: format!("A pass {pass}"),
                    why: "an even pass needs h_out from the previous odd pass".into(),
                })?;
            let norm = h_out.norm_fro();
            (SymMat::zeros(self.h_in.n), h_out, norm)
        };
        if !(fixed_norm > 0.0 && fixed_norm.is_finite()) {
            return Err(CoreError::NotPositiveDefinite {
                what: format!("Sketch A pass {pass} result (norm {fixed_norm})"),
                pivot: 0,
                damp_added: 0.0,
                tries: 0,
            });
        }
        Ok(Self {
            kind: SketchKind::A { pass: next },
            h_in,
            h_out: Some(h_out),
            n_seqs: 0,
            n_tokens: 0,
            scale: 1.0 / (fixed_norm * fixed_norm),
            xtx: Some(self.xtx_sum().clone()),
        })
    }

    /// The same sketch and pass with nothing accumulated: the start a partial sum of it continued from.
    /// Sketch A passes ≥ 1 keep their fixed side, normalisation and `Σ x xᵀ`; every sum is zero.
    pub fn pass_start(&self) -> Self {
        let zero = |h: &SymMat| SymMat::zeros(h.n);
        let (h_in, h_out, xtx) = match self.kind {
            SketchKind::A { pass } if pass > 0 => {
                let (h_in, h_out) = if pass % 2 == 1 {
                    (self.h_in.clone(), self.h_out.as_ref().map(zero))
                } else {
                    (zero(&self.h_in), self.h_out.clone())
                };
                (h_in, h_out, self.xtx.clone())
            }
            _ => (
                zero(&self.h_in),
                self.h_out.as_ref().map(zero),
                self.xtx.as_ref().map(zero),
            ),
        };
        Self {
            kind: self.kind,
            h_in,
            h_out,
            n_seqs: 0,
            n_tokens: 0,
            scale: self.scale,
            xtx,
        }
    }

    /// Whether `self` and `other` are sums of the same sketch and pass from the same start (their
    /// [`Factors::pass_start`] agree), so that the one can be continued where the other began.
    pub fn same_start(&self, other: &Factors) -> bool {
        let same_shape = |a: &SymMat, b: &SymMat| a.n == b.n;
        let opt_shape = |a: &Option<SymMat>, b: &Option<SymMat>| match (a, b) {
            (Some(a), Some(b)) => same_shape(a, b),
            (None, None) => true,
            _ => false,
        };
        if self.kind != other.kind
            || self.scale != other.scale
            || !same_shape(&self.h_in, &other.h_in)
            || !opt_shape(&self.h_out, &other.h_out)
            || !opt_shape(&self.xtx, &other.xtx)
        {
            return false;
        }
        match self.kind {
            SketchKind::A { pass } if pass > 0 => {
                self.xtx == other.xtx
                    && if pass % 2 == 1 {
                        self.h_in == other.h_in
                    } else {
                        self.h_out == other.h_out
                    }
            }
            _ => true,
        }
    }

    /// Accumulates one sequence: `x` is `t × n` (layer inputs), `g` is `t × m` (output gradients, not needed
    /// by `Σ x xᵀ` and Sketch A pass 0).
    ///
    /// **Errors**: shapes, missing gradients, non-finite values (named).
    pub fn add_sequence(
        &mut self,
        backend: &dyn Backend,
        x: &Mat<f32>,
        g: Option<&Mat<f32>>,
    ) -> Result<()> {
        check_finite("layer input x", &x.data)?;
        if let Some(g) = g {
            check_finite("output gradient g", &g.data)?;
        }
        let need_g = || {
            g.ok_or_else(|| CoreError::InvalidParameter {
                name: "g",
                value: "None".into(),
                why: format!("{:?} needs output gradients", self.kind),
            })
        };
        match self.kind {
            SketchKind::Xtx | SketchKind::A { pass: 0 } => {
                backend.accumulate_xtx(&mut self.h_in, x)?
            }
            SketchKind::B => {
                let g = need_g()?;
                let h_out = self
                    .h_out
                    .as_mut()
                    .ok_or_else(|| missing_h_out(self.kind))?;
                backend.accumulate_sketch_b(&mut self.h_in, h_out, x, g)?;
                if let Some(xtx) = self.xtx.as_mut() {
                    backend.accumulate_xtx(xtx, x)?
                }
            }
            SketchKind::A { pass } => {
                let g = need_g()?;
                let h_out = self
                    .h_out
                    .as_mut()
                    .ok_or_else(|| missing_h_out(self.kind))?;
                if pass % 2 == 1 {
                    backend.accumulate_sketch_a_out(h_out, x, g, &self.h_in, self.scale)?
                } else {
                    backend.accumulate_sketch_a_in(&mut self.h_in, x, g, h_out, self.scale)?
                }
            }
        }
        self.n_seqs += 1;
        self.n_tokens += x.rows as u64;
        Ok(())
    }

    /// A blend of two two-sided estimates of the same layer's Kronecker factors (Sketch A's last pass
    /// and Sketch B, say): each side is `w·h_a/μ(h_a) + (1 − w)·h_b/μ(h_b)`, where `μ` is the mean
    /// diagonal, so neither estimate's overall scale (which the rounding divides out anyway, DESIGN.md
    /// §3 step 1) decides the blend. Not in the paper (issue #23's "combining Sketch A and B"): Sketch A
    /// fits the per-token Fisher's best Kronecker product, Sketch B the per-sequence gradients', so they
    /// err differently and their mean can beat both. `Σ x xᵀ` is `b`'s (`a`'s when `b` has none), the
    /// kind `b`'s, so the result rounds as `b` would.
    ///
    /// **Errors**: a weight outside `[0, 1]`, either side missing `h_out`, shapes that differ, a side
    /// whose mean diagonal is not positive and finite.
    pub fn mix(a: &Factors, b: &Factors, w: f64) -> Result<Factors> {
        if !(0.0..=1.0).contains(&w) {
            return Err(CoreError::InvalidParameter {
                name: "w",
                value: w.to_string(),
                why: "the blend's weight must lie in [0, 1]".into(),
            });
        }
        let (Some(a_out), Some(b_out)) = (&a.h_out, &b.h_out) else {
            return Err(missing_h_out(if a.h_out.is_none() {
                a.kind
            } else {
                b.kind
            }));
        };
        if a.h_in.n != b.h_in.n || a_out.n != b_out.n {
            return Err(CoreError::shape(
                "blended factors (n, m)",
                format!("({}, {})", a.h_in.n, a_out.n),
                format!("({}, {})", b.h_in.n, b_out.n),
            ));
        }
        let blend = |what: &str, x: &SymMat, y: &SymMat| -> Result<SymMat> {
            let (mut x, mut y) = (x.clone(), y.clone());
            crate::ldl::normalize_mean_diag(what, &mut x)?;
            crate::ldl::normalize_mean_diag(what, &mut y)?;
            x.scale(w);
            y.scale(1.0 - w);
            x.add_assign(&y)?;
            Ok(x)
        };
        Ok(Factors {
            kind: b.kind,
            h_in: blend("h_in", &a.h_in, &b.h_in)?,
            h_out: Some(blend("h_out", a_out, b_out)?),
            n_seqs: b.n_seqs,
            n_tokens: b.n_tokens,
            scale: 1.0,
            xtx: b.xtx.clone().or_else(|| a.xtx.clone()),
        })
    }

    /// Adds another shard of the same sketch and pass.
    ///
    /// **Errors**: different sketch kind, shapes, or (Sketch A) a different fixed side.
    pub fn merge(&mut self, other: &Factors) -> Result<()> {
        if self.kind != other.kind {
            return Err(CoreError::IncompatibleShards {
                why: format!("sketch {:?} vs {:?}", self.kind, other.kind),
            });
        }
        if self.h_in.n != other.h_in.n
            || self.h_out.as_ref().map(|h| h.n) != other.h_out.as_ref().map(|h| h.n)
        {
            return Err(CoreError::IncompatibleShards {
                why: "factor shapes differ (different layers?)".into(),
            });
        }
        match self.kind {
            SketchKind::A { pass } if pass > 0 => {
                // One side is a sum, the other is the fixed result of the previous pass: it must agree.
                if pass % 2 == 1 {
                    if self.h_in != other.h_in {
                        return Err(CoreError::IncompatibleShards {
                            why: format!(
                                "Sketch A pass {pass}: shards were started from different h_in"
                            ),
                        });
                    }
                    add_opt(&mut self.h_out, &other.h_out)?;
                } else {
                    if self.h_out != other.h_out {
                        return Err(CoreError::IncompatibleShards {
                            why: format!(
                                "Sketch A pass {pass}: shards were started from different h_out"
                            ),
                        });
                    }
                    self.h_in.add_assign(&other.h_in)?;
                }
            }
            _ => {
                self.h_in.add_assign(&other.h_in)?;
                add_opt(&mut self.h_out, &other.h_out)?;
            }
        }
        match self.kind {
            // Sketch A carries pass 0's sum unchanged: shards must agree on it.
            SketchKind::A { .. } if self.xtx != other.xtx => {
                return Err(CoreError::IncompatibleShards {
                    why: "Sketch A shards were started from different Σ x xᵀ".into(),
                });
            }
            SketchKind::A { .. } => {}
            _ => add_opt_named(&mut self.xtx, &other.xtx, "Σ x xᵀ")?,
        }
        self.n_seqs += other.n_seqs;
        self.n_tokens += other.n_tokens;
        Ok(())
    }
}

fn missing_h_out(kind: SketchKind) -> CoreError {
    CoreError::InvalidParameter {
        name: "h_out",
        value: "None".into(),
        why: format!("{kind:?} factors must carry h_out"),
    }
}

fn add_opt(a: &mut Option<SymMat>, b: &Option<SymMat>) -> Result<()> {
    add_opt_named(a, b, "h_out")
}

fn add_opt_named(a: &mut Option<SymMat>, b: &Option<SymMat>, what: &str) -> Result<()> {
    match (a, b) {
        (Some(a), Some(b)) => a.add_assign(b),
        (None, None) => Ok(()),
        _ => Err(CoreError::IncompatibleShards {
            why: format!("one shard has {what} and the other does not"),
        }),
    }
}
