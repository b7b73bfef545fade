//! The error type of `yaqa-backend-cuda`: every variant says what is missing or what failed, and what a
//! person can do about it.
//!
//! [`yaqa_core::Backend`] returns [`yaqa_core::CoreError`], which has no variant for device failures; such
//! errors cross the trait as `CoreError::InvalidParameter { name: "cuda", .. }` carrying this error's
//! message (see [`CudaError::into_core`]). Input errors (shapes, non-finite values) are raised by the
//! shared checks in `yaqa_core` and keep their own variants.

use thiserror::Error;

/// Errors raised by the CUDA backend.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CudaError {
    /// A CUDA library could not be loaded (`libcuda` for the driver, `libnvrtc`, `libcublas`).
    #[error("CUDA library {library} could not be loaded: {hint}")]
    LibraryMissing { library: &'static str, hint: String },
    /// The driver loaded but there is no device with this ordinal.
    #[error("no CUDA device with ordinal {ordinal} ({count} found)")]
    NoDevice { ordinal: usize, count: usize },
    /// The device is too old for the kernels (they use sm_80 tensor-core instructions).
    #[error(
        "CUDA device {ordinal} ({name}) has compute capability {major}.{minor}; yaqa needs 8.0 or newer"
    )]
    UnsupportedDevice {
        ordinal: usize,
        name: String,
        major: i32,
        minor: i32,
    },
    /// NVRTC rejected a kernel file.
    #[error("NVRTC could not compile cuda/{file}.cu for {arch}:\n{log}")]
    Compile {
        file: &'static str,
        arch: &'static str,
        log: String,
    },
    /// A kernel name that no kernel file declares (a bug in this crate).
    #[error("no kernel named {name} is loaded")]
    MissingKernel { name: &'static str },
    /// A driver or cuBLAS call failed.
    #[error("CUDA call failed while {what}: {message}")]
    Driver { what: String, message: String },
    /// A quantizer whose parameters the device kernels cannot reproduce.
    #[error("the CUDA rounding kernels do not support quantizer {name}: {why}")]
    UnsupportedQuantizer { name: String, why: String },
    /// A shape beyond what a kernel supports.
    #[error("{what}: {why}")]
    Unsupported { what: String, why: String },
    /// An operation that has no CUDA implementation yet.
    #[error("{operation} is not yet implemented on CUDA; use the CPU backend for it")]
    NotYetOnCuda { operation: &'static str },
}

impl CudaError {
    /// A [`CudaError::Driver`] from any displayable driver or cuBLAS error.
    pub fn driver(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::Driver {
            what: what.into(),
            message: err.to_string(),
        }
    }

    /// This error as the core's error type, for crossing [`yaqa_core::Backend`].
    pub fn into_core(self, operation: &str) -> yaqa_core::CoreError {
        yaqa_core::CoreError::InvalidParameter {
            name: "cuda",
            value: operation.to_string(),
            why: self.to_string(),
        }
    }
}
