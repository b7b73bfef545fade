//! The error type of `yaqa-core`: every variant carries what a person needs to act on it.

use thiserror::Error;

/// Errors raised by the numerical core.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// Two operands disagree on a dimension.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// A dimension the operation cannot handle (for example a Hadamard size with no known construction).
    #[error("unsupported dimension {dim} for {what}: {why}")]
    UnsupportedDimension {
        what: String,
        dim: usize,
        why: String,
    },
    /// Input values that are NaN or infinite.
    #[error("{count} non-finite values in {what} (first at index {first})")]
    NonFinite {
        what: String,
        count: usize,
        first: usize,
    },
    /// A factor stayed indefinite after the damping loop gave up.
    #[error(
        "{what} is not positive definite: Cholesky failed at pivot {pivot} after adding {damp_added:e}·I in {tries} tries"
    )]
    NotPositiveDefinite {
        what: String,
        pivot: usize,
        damp_added: f64,
        tries: usize,
    },
    /// A factor with no curvature to damp: its mean diagonal is zero (every input or gradient of the
    /// layer was zero on the calibration), negative or not finite. Damping is relative to the mean
    /// diagonal, so no damping schedule can make it positive definite.
    #[error(
        "{what} has mean diagonal {mean}: the layer saw only zero {seen} on the calibration (or the sum \
         overflowed), so damping relative to it cannot make it positive definite"
    )]
    DegenerateFactor {
        what: String,
        mean: f64,
        seen: &'static str,
    },
    /// Factor shards that cannot be added (different sketch, layer shape, or model).
    #[error("cannot merge factor shards: {why}")]
    IncompatibleShards { why: String },
    /// A parameter outside its documented range.
    #[error("invalid parameter {name} = {value}: {why}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        why: String,
    },
}

/// Result alias for the core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Builds a [`CoreError::ShapeMismatch`] from anything printable.
    pub fn shape(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Self::ShapeMismatch {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

/// Returns an error naming `what` if any value is not finite.
pub fn check_finite<T: Copy + Into<f64>>(what: &str, values: &[T]) -> Result<()> {
    let mut count = 0;
    let mut first = usize::MAX;
    for (i, &v) in values.iter().enumerate() {
        if !v.into().is_finite() {
            count += 1;
            first = first.min(i);
        }
    }
    if count == 0 {
        Ok(())
    } else {
        Err(CoreError::NonFinite {
            what: what.to_string(),
            count,
            first,
        })
    }
}

impl CoreError {
    /// Prefixes the error's subject with a layer name, so that a report names the layer it came from.
    pub fn in_layer(self, layer: &str) -> Self {
        let tag = |what: String| format!("{layer}: {what}");
        match self {
            Self::ShapeMismatch {
                what,
                expected,
                got,
            } => Self::ShapeMismatch {
                what: tag(what),
                expected,
                got,
            },
            Self::UnsupportedDimension { what, dim, why } => Self::UnsupportedDimension {
                what: tag(what),
                dim,
                why,
            },
            Self::NonFinite { what, count, first } => Self::NonFinite {
                what: tag(what),
                count,
                first,
            },
            Self::NotPositiveDefinite {
                what,
                pivot,
                damp_added,
                tries,
            } => Self::NotPositiveDefinite {
                what: tag(what),
                pivot,
                damp_added,
                tries,
            },
            Self::DegenerateFactor { what, mean, seen } => Self::DegenerateFactor {
                what: tag(what),
                mean,
                seen,
            },
            Self::IncompatibleShards { why } => Self::IncompatibleShards { why: tag(why) },
            Self::InvalidParameter { name, value, why } => Self::InvalidParameter {
                name,
                value,
                why: tag(why),
            },
        }
    }
}
