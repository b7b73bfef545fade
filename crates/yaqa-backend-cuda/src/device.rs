//! Small helpers shared by the operation modules: uploads, downloads, zeroed buffers, launch shapes and
//! the packed-triangle transfers, all returning [`CudaError`] with what was being done.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};

use crate::error::CudaError;
use crate::kernels::Kernels;

/// Threads per block of the element-wise kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;

/// Borrowed device state for one operation (the caller holds the backend's lock).
pub(crate) struct Dev<'a> {
    #[allow(dead_code)]
    pub ctx: &'a Arc<CudaContext>,
    pub stream: &'a Arc<CudaStream>,
    pub blas: &'a CudaBlas,
    pub kernels: &'a Kernels,
}

impl Dev<'_> {
    pub fn upload<T: DeviceRepr>(&self, what: &str, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| CudaError::driver(format!("uploading {what}"), e))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        what: &str,
        len: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        // cudarc refuses zero-length allocations on some drivers; one element costs nothing.
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| CudaError::driver(format!("allocating {what}"), e))
    }

    pub fn download<T: DeviceRepr>(
        &self,
        what: &str,
        data: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        self.stream
            .clone_dtoh(data)
            .map_err(|e| CudaError::driver(format!("downloading {what}"), e))
    }

    pub fn func(&self, name: &'static str) -> Result<&CudaFunction, CudaError> {
        self.kernels.get(name)
    }

    pub fn sync(&self, what: &str) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver(format!("waiting for {what}"), e))
    }
}

/// A 1-D launch with one thread per element.
pub(crate) fn elementwise(len: usize) -> Result<LaunchConfig, CudaError> {
    let blocks = len.div_ceil(ELEMENTWISE_THREADS as usize).max(1);
    let blocks = u32::try_from(blocks).map_err(|_| CudaError::Unsupported {
        what: format!("an element-wise launch over {len} values"),
        why: "more than 2^32 blocks".into(),
    })?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The launch of layout.cu's `transpose_*` for a `rows × cols` source.
pub(crate) fn transpose_config(rows: usize, cols: usize) -> Result<LaunchConfig, CudaError> {
    let gx = u32::try_from(cols.div_ceil(32).max(1));
    let gy = u32::try_from(rows.div_ceil(32).max(1));
    match (gx, gy) {
        (Ok(gx), Ok(gy)) if gy < 65536 => Ok(LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        }),
        _ => Err(CudaError::Unsupported {
            what: format!("transposing a {rows} × {cols} matrix"),
            why: "more than 65535 row tiles".into(),
        }),
    }
}

/// `usize` → `i64` for kernel arguments (`long long`); every in-memory size fits.
pub(crate) fn ll(v: usize) -> i64 {
    v as i64
}
