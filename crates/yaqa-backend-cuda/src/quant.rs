//! The quantizer's parameters in the form the rounding kernel takes them (`cuda/round.cu`).
//!
//! [`yaqa_core::TileQuantizer`] is a trait object with no accessor for its parameters, so this module
//! *asks the quantizer* through its only interface, `quantize_tile`, with probe values whose results are
//! exact: for the symmetric grid (`int{k}`), zero rounds to the level `+½·s`, which gives `s` exactly;
//! for the asymmetric grouped grid (`int{k}-asym-g{G}` / `int{k}-asym-row`), zero returns the zero-point
//! as its code, and a value one step from it returns `±s` exactly. The recovered parameters are then
//! checked by replaying a set of test values through the quantizer and through [`DeviceQuant::emulate`]
//! (the kernel's arithmetic, operation for operation, in Rust): any difference, or any other quantizer,
//! is a [`CudaError::UnsupportedQuantizer`], never a silently different rounding.
//!
//! A `TileQuantizer::params()` accessor in `yaqa-core` would make the probing unnecessary; until then
//! this keeps the CUDA crate to the trait as it is.

use yaqa_core::TileQuantizer;

use crate::error::CudaError;

/// A quantizer the rounding kernel can apply.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceQuant {
    /// Symmetric half-integer grid with one scale (kernel kind 0).
    IntSym { bits: u32, scale: f32 },
    /// Asymmetric grid with per-row, per-group scales and zero-points (kernel kind 1), `m × groups`.
    IntAsym {
        bits: u32,
        group_size: usize,
        groups: usize,
        scales: Vec<f32>,
        zeros: Vec<u16>,
    },
}

impl DeviceQuant {
    /// `2^k − 1`.
    pub fn max_level(&self) -> f32 {
        let bits = match self {
            Self::IntSym { bits, .. } | Self::IntAsym { bits, .. } => *bits,
        };
        ((1u32 << bits) - 1) as f32
    }

    /// The kernel's arithmetic for one value at `(row, col)`: `(reconstruction, code)`.
    pub fn emulate(&self, x: f32, row: usize, col: usize) -> (f32, u16) {
        let max_level = self.max_level();
        match self {
            Self::IntSym { scale, .. } => {
                let offset = 0.5 * max_level;
                let level = (x / scale + offset).round_ties_even().clamp(0.0, max_level);
                (0.5 * (2.0 * level - max_level) * scale, level as u16)
            }
            Self::IntAsym {
                group_size,
                groups,
                scales,
                zeros,
                ..
            } => {
                let at = row * groups + col / group_size;
                let (s, z) = (scales[at], zeros[at] as f32);
                let level = ((x / s).round_ties_even() + z).clamp(0.0, max_level);
                (s * (level - z), level as u16)
            }
        }
    }
}

/// Quantizes one value at `(row, col)` through the trait.
fn ask(quantizer: &dyn TileQuantizer, row: usize, col: usize, x: f32) -> (f32, u16) {
    let mut value = [x];
    let mut code = [0u16];
    quantizer.quantize_tile(row, col, 1, 1, &mut value, &mut code, None);
    (value[0], code[0])
}

fn unsupported(quantizer: &dyn TileQuantizer, why: impl Into<String>) -> CudaError {
    CudaError::UnsupportedQuantizer {
        name: quantizer.name(),
        why: why.into(),
    }
}

/// Parses `int{k}`, `int{k}-asym-g{G}` and `int{k}-asym-row` into `(bits, None | Some(group))`, where a
/// row-wide group is `Some(n)`.
fn parse_name(name: &str, n: usize) -> Option<(u32, Option<usize>)> {
    let rest = name.strip_prefix("int")?;
    let (bits, tail) = match rest.find('-') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let bits: u32 = bits.parse().ok()?;
    if !yaqa_core::quant::int::SUPPORTED_BITS.contains(&bits) {
        return None;
    }
    match tail {
        None => Some((bits, None)),
        Some("asym-row") => Some((bits, Some(n))),
        Some(t) => {
            let group: usize = t.strip_prefix("asym-g")?.parse().ok()?;
            (group > 0 && n.is_multiple_of(group)).then_some((bits, Some(group)))
        }
    }
}

/// Recovers the parameters of `quantizer` for an `m × n` matrix and checks them by replay.
///
/// **Errors**: [`CudaError::UnsupportedQuantizer`] for a quantizer that is not one of the INT grids, has
/// codes of more than one weight, or whose replay disagrees with the kernel's arithmetic.
pub fn probe(quantizer: &dyn TileQuantizer, m: usize, n: usize) -> Result<DeviceQuant, CudaError> {
    if quantizer.code_dim() != 1 {
        return Err(unsupported(
            quantizer,
            "only scalar grids (code dimension 1) run on CUDA so far",
        ));
    }
    let name = quantizer.name();
    let Some((bits, group)) = parse_name(&name, n) else {
        return Err(unsupported(
            quantizer,
            "only the INT grids IntSym (`int{k}`) and IntAsymGroup (`int{k}-asym-…`) run on CUDA so far",
        ));
    };
    let max_q = (1u16 << bits) - 1;
    let quant = match group {
        None => {
            // 0/s + (L−1)/2 is the exact tie (L−1)/2, which rounds to the even level L/2 = +½ step.
            let (value, code) = ask(quantizer, 0, 0, 0.0);
            if code != max_q.div_ceil(2) || !(value > 0.0 && value.is_finite()) {
                return Err(unsupported(quantizer, "zero did not round to the +½ level"));
            }
            DeviceQuant::IntSym {
                bits,
                scale: 2.0 * value,
            }
        }
        Some(group_size) => {
            let groups = n / group_size;
            let mut scales = Vec::with_capacity(m * groups);
            let mut zeros = Vec::with_capacity(m * groups);
            for row in 0..m {
                for g in 0..groups {
                    let col = g * group_size;
                    let (_, z) = ask(quantizer, row, col, 0.0);
                    let (far, sign) = if z < max_q {
                        (f32::MAX, 1.0f32)
                    } else {
                        (-f32::MAX, -1.0)
                    };
                    let (end, _) = ask(quantizer, row, col, far);
                    let steps = if sign > 0.0 {
                        (max_q - z) as f32
                    } else {
                        z as f32
                    };
                    let estimate = (end / steps).abs();
                    let (one_step, code) = ask(quantizer, row, col, sign * estimate);
                    let expected = if sign > 0.0 {
                        z + 1
                    } else {
                        z.saturating_sub(1)
                    };
                    if code != expected || !(one_step.abs() > 0.0 && one_step.is_finite()) {
                        return Err(unsupported(
                            quantizer,
                            format!("could not recover the scale of row {row}, group {g}"),
                        ));
                    }
                    scales.push(one_step.abs());
                    zeros.push(z);
                }
            }
            DeviceQuant::IntAsym {
                bits,
                group_size,
                groups,
                scales,
                zeros,
            }
        }
    };
    replay(quantizer, &quant, m, n)?;
    Ok(quant)
}

/// Checks the recovered parameters on values spread over the grid and beyond its ends, at rows and
/// columns across the matrix.
fn replay(
    quantizer: &dyn TileQuantizer,
    quant: &DeviceQuant,
    m: usize,
    n: usize,
) -> Result<(), CudaError> {
    let rows = [0, m / 3, m / 2, m.saturating_sub(1)];
    let cols = [0, n / 5, n / 2, n.saturating_sub(1)];
    for &row in &rows {
        for &col in &cols {
            let (unit, _) = ask(quantizer, row, col, f32::MAX);
            let span = if unit.is_finite() && unit != 0.0 {
                unit.abs()
            } else {
                1.0
            };
            for step in -40i32..=40 {
                // Values at odd multiples of a 1/37 of the span, including exact ties and clamped ends.
                let x = span * step as f32 / 37.0 * 1.25;
                let want = ask(quantizer, row, col, x);
                let got = quant.emulate(x, row, col);
                if want.0.to_bits() != got.0.to_bits() || want.1 != got.1 {
                    return Err(unsupported(
                        quantizer,
                        format!(
                            "replay at ({row}, {col}) with x = {x:e}: the quantizer gives ({}, {}), the \
                             kernel arithmetic ({}, {})",
                            want.0, want.1, got.0, got.1
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaqa_core::Mat;
    use yaqa_core::quant::int::{AsymFitParams, IntAsymGroup, IntSym};

    #[test]
    fn symmetric_scale_is_recovered_exactly() {
        for bits in yaqa_core::quant::int::SUPPORTED_BITS {
            for scale in [0.013f32, 0.37, 2.5] {
                let q = IntSym::new(bits, scale).unwrap_or_else(|e| panic!("{e}"));
                let got = probe(&q, 8, 16).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got, DeviceQuant::IntSym { bits, scale });
            }
        }
    }

    #[test]
    fn asymmetric_groups_are_recovered_exactly() {
        let w = yaqa_core::synthetic::weights(12, 64, 5);
        for group in [Some(16), None] {
            let params = AsymFitParams {
                group_size: group,
                ..AsymFitParams::default()
            };
            let q = IntAsymGroup::fit(&w, 4, &params).unwrap_or_else(|e| panic!("{e}"));
            let got = probe(&q, 12, 64).unwrap_or_else(|e| panic!("{e}"));
            let DeviceQuant::IntAsym { scales, zeros, .. } = got else {
                panic!("expected the asymmetric grid");
            };
            assert_eq!(scales, q.scales().data);
            assert_eq!(zeros, q.zeros().data);
        }
    }

    /// A zero-point at the top of the grid takes the downward probe.
    #[test]
    fn zero_point_at_the_top_is_recovered() {
        let scales = Mat::from_fn(2, 2, |i, j| 0.1 + (i * 2 + j) as f32 * 0.05);
        let zeros = Mat::from_fn(2, 2, |i, j| if (i + j) % 2 == 0 { 15u16 } else { 0 });
        let q = IntAsymGroup::from_parts(4, 8, scales.clone(), zeros.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let got = probe(&q, 2, 16).unwrap_or_else(|e| panic!("{e}"));
        let DeviceQuant::IntAsym {
            scales: s,
            zeros: z,
            ..
        } = got
        else {
            panic!("expected the asymmetric grid");
        };
        assert_eq!(s, scales.data);
        assert_eq!(z, zeros.data);
    }
}
