//! `yaqa-backend-cuda`: the CUDA implementation of [`yaqa_core::Backend`], kernels in the workspace's
//! `cuda/` folder (one `.cu` file per operation family) driven through cudarc.
//!
//! The crate always builds, with or without the CUDA toolkit, driver or a GPU: cudarc loads `libcuda`,
//! `libnvrtc` and `libcublas` dynamically at run time, and the kernels are embedded as nvcc PTX when the
//! build found nvcc, or as sources that NVRTC compiles on first use otherwise ([`kernels`]).
//! [`Cuda::new`] is the one place where a missing library or device shows up, as a [`CudaError`] that
//! says which; nothing in this crate panics for lack of CUDA.
//!
//! Operations (DESIGN.md §2–§4): the sketches on tensor cores with an error-compensated 3×TF32 split
//! ([`sketch`]), the YAQA/LDLQ rounding as an anti-diagonal wavefront with incrementally pushed feedback
//! ([`round`]), the fast Hadamard rotations ([`hadamard`]), proxy errors with cuBLAS DGEMM ([`proxy`]),
//! and the block LDL on the host in f64 ([`ldl`], a blocked Cholesky written for this crate). GPTQ is
//! not on the device yet and says so ([`CudaError::NotYetOnCuda`]).
//!
//! One [`Cuda`] owns one context, one stream and one cuBLAS handle; operations on it are serialised by a
//! mutex, so it can be shared between threads like the CPU backend.

pub mod error;
pub mod hadamard;
pub mod kernels;
pub mod ldl;
pub mod proxy;
pub mod quant;
pub mod round;
pub mod sketch;

mod device;

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaStream};
use yaqa_core::backend::{Backend, GptqParams, RoundParams, Rounded, Side};
use yaqa_core::{BlockLdl, LdlParams, Mat, Result, SymMat, TileQuantizer};

pub use error::CudaError;
pub use sketch::SketchPrecision;

use kernels::Kernels;

/// The CUDA backend on one device.
pub struct Cuda {
    ordinal: usize,
    device_name: String,
    capability: (i32, i32),
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    /// Serialises operations: they share the stream, the cuBLAS handle and scratch allocations.
    lock: Mutex<()>,
    /// How the sketches multiply (3×TF32 tensor cores by default).
    pub sketch_precision: SketchPrecision,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.ordinal)
            .field("device", &self.device_name)
            .field("capability", &self.capability)
            .field("sketch_precision", &self.sketch_precision)
            .finish_non_exhaustive()
    }
}

/// Whether the CUDA driver library can be loaded at all (no device needed).
pub fn driver_available() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the candidate names and drops the handles.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, or the reason there are none.
///
/// **Errors**: [`CudaError::LibraryMissing`] without `libcuda`; [`CudaError::NoDevice`] when the driver
/// reports no device (including `CUDA_ERROR_NO_DEVICE` from initialisation).
pub fn device_count() -> std::result::Result<usize, CudaError> {
    if !driver_available() {
        return Err(CudaError::LibraryMissing {
            library: "libcuda",
            hint: "no NVIDIA driver is installed on this machine (libcuda.so was not found)".into(),
        });
    }
    match CudaContext::device_count() {
        Ok(count) if count > 0 => Ok(count as usize),
        Ok(_) => Err(CudaError::NoDevice {
            ordinal: 0,
            count: 0,
        }),
        Err(e) => {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE {
                Err(CudaError::NoDevice {
                    ordinal: 0,
                    count: 0,
                })
            } else {
                Err(CudaError::driver("counting devices", e))
            }
        }
    }
}

impl Cuda {
    /// Opens device `ordinal`: context, stream, cuBLAS handle, and the kernels (nvcc PTX, or NVRTC).
    ///
    /// **Errors**: [`CudaError::LibraryMissing`] (no `libcuda`, `libcublas`, or `libnvrtc` when no nvcc
    /// PTX is embedded), [`CudaError::NoDevice`], [`CudaError::UnsupportedDevice`] below compute
    /// capability 8.0, [`CudaError::Compile`] or [`CudaError::Driver`] when the kernels do not load.
    pub fn new(ordinal: usize) -> std::result::Result<Self, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| CudaError::driver("creating a context", e))?;
        let device_name = ctx
            .name()
            .map_err(|e| CudaError::driver("reading the device name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::driver("reading the compute capability", e))?;
        if major < 8 {
            return Err(CudaError::UnsupportedDevice {
                ordinal,
                name: device_name,
                major,
                minor,
            });
        }
        // SAFETY: `is_culib_present` only tries `dlopen` on the candidate names and drops the handles.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing {
                library: "libcublas",
                hint: "install the CUDA toolkit's cuBLAS (or the nvidia-cublas-cu12 wheel) and put it on \
                       LD_LIBRARY_PATH"
                    .into(),
            });
        }
        let stream = ctx.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| CudaError::driver("creating cuBLAS", e))?;
        let kernels = Kernels::load(&ctx, major, minor)?;
        Ok(Self {
            ordinal,
            device_name,
            capability: (major, minor),
            ctx,
            stream,
            blas,
            kernels,
            lock: Mutex::new(()),
            sketch_precision: SketchPrecision::default(),
        })
    }

    /// The device's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device's compute capability `(major, minor)`.
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// Holds the operation lock (a poisoned lock only means another operation panicked; the device
    /// state it guards is rebuilt by every operation, so it is safe to continue).
    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dev(&self) -> device::Dev<'_> {
        device::Dev {
            ctx: &self.ctx,
            stream: &self.stream,
            blas: &self.blas,
            kernels: &self.kernels,
        }
    }
}

impl Backend for Cuda {
    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    fn accumulate_xtx(&self, h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
        let _g = self.guard();
        sketch::accumulate_xtx(&self.dev(), self.sketch_precision, h_in, x)
    }

    fn accumulate_sketch_b(
        &self,
        h_in: &mut SymMat,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
    ) -> Result<()> {
        let _g = self.guard();
        sketch::accumulate_sketch_b(&self.dev(), self.sketch_precision, h_in, h_out, x, g)
    }

    fn accumulate_sketch_a_out(
        &self,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_in: &SymMat,
        scale: f64,
    ) -> Result<()> {
        let _g = self.guard();
        sketch::accumulate_weighted(&self.dev(), self.sketch_precision, h_out, g, x, h_in, scale)
    }

    fn accumulate_sketch_a_in(
        &self,
        h_in: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_out: &SymMat,
        scale: f64,
    ) -> Result<()> {
        let _g = self.guard();
        sketch::accumulate_weighted(&self.dev(), self.sketch_precision, h_in, x, g, h_out, scale)
    }

    fn hadamard_rotate(
        &self,
        w: &mut Mat<f32>,
        side: Side,
        signs: &[f32],
        inverse: bool,
    ) -> Result<()> {
        let _g = self.guard();
        hadamard::rotate(&self.dev(), w, side, signs, inverse)
    }

    fn rotate_factor(&self, h: &SymMat, signs: &[f32]) -> Result<SymMat> {
        let _g = self.guard();
        hadamard::rotate_factor(&self.dev(), h, signs)
    }

    fn block_ldl(&self, h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
        // Host f64 (DESIGN.md §3.4 asks for f64); no device state, so no lock.
        ldl::block_ldl(h, params)
    }

    fn round_adaptive(
        &self,
        w: &Mat<f32>,
        a_in: &Mat<f32>,
        a_out: Option<&Mat<f32>>,
        quantizer: &dyn TileQuantizer,
        params: &RoundParams,
    ) -> Result<Rounded> {
        let _g = self.guard();
        round::round_adaptive(&self.dev(), w, a_in, a_out, quantizer, params)
    }

    fn gptq(
        &self,
        _w: &Mat<f32>,
        _h: &SymMat,
        _quantizer: &dyn TileQuantizer,
        _params: &GptqParams,
    ) -> Result<Rounded> {
        Err(CudaError::NotYetOnCuda { operation: "gptq" }.into_core("gptq"))
    }

    fn qronos(
        &self,
        _w: &Mat<f32>,
        _h: &SymMat,
        _g: &Mat<f64>,
        _quantizer: &dyn TileQuantizer,
        _params: &GptqParams,
    ) -> Result<Rounded> {
        Err(CudaError::NotYetOnCuda {
            operation: "qronos",
        }
        .into_core("qronos"))
    }

    fn weighted_error(&self, d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64> {
        let _g = self.guard();
        proxy::weighted_error(&self.dev(), d, h_in, h_out)
    }
}
