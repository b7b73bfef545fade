//! The weighted norm behind the proxy errors on the device (DESIGN.md §4): `tr(D h_in Dᵀ h_out)` with one
//! or two cuBLAS DGEMMs and `cuda/proxy.cu`'s deterministic f64 dot.
//!
//! f64 rather than SGEMM: differences between rounding methods are small fractions of the baseline, and
//! on an H100 f64 costs little here, so the device keeps far inside `PROXY_REL` (the CPU backend, where
//! f64 GEMM is 4× slower, uses f32 products reduced in f64). (H100 f64 tensor cores run DGEMM at about 60 TFLOP/s; see NOTES.md.)

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use yaqa_core::{Mat, Result, SymMat};

use crate::device::{Dev, elementwise, ll};
use crate::error::CudaError;

/// Values per block of `dot_partial_f64`.
const DOT_CHUNK: usize = 1 << 16;

fn dim(d: usize) -> Result<i32, CudaError> {
    i32::try_from(d).map_err(|_| CudaError::Unsupported {
        what: format!("a cuBLAS dimension of {d}"),
        why: "cuBLAS takes 32-bit dimensions".into(),
    })
}

/// The dense f64 matrix of a packed factor.
fn dense(dev: &Dev<'_>, h: &SymMat) -> Result<CudaSlice<f64>, CudaError> {
    let n = h.n;
    let packed = dev.upload("a factor", &h.data)?;
    let mut out = dev.zeros::<f64>("a dense factor", n * n)?;
    let f = dev.func("unpack_sym_f64")?;
    let nn = ll(n);
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(&packed).arg(&mut out).arg(&nn);
    // SAFETY: `unpack_sym_f64(const double*, double*, long long n)`: packed holds n(n+1)/2, out n·n.
    unsafe { launch.launch(elementwise(n * n)?) }
        .map_err(|e| CudaError::driver("launching unpack_sym_f64", e))?;
    Ok(out)
}

/// `f64(a)`, `len` values (`diff_widen` with no `b`).
fn widen(dev: &Dev<'_>, a: &CudaSlice<f32>, len: usize) -> Result<CudaSlice<f64>, CudaError> {
    let mut out = dev.zeros::<f64>("a widened matrix", len)?;
    let f = dev.func("diff_widen")?;
    let null: u64 = 0;
    let l = ll(len);
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(a).arg(&null).arg(&mut out).arg(&l);
    // SAFETY: `diff_widen(const float* a, const float* b_or_null, double* d, long long len)`: a and d
    // hold len values, b is null.
    unsafe { launch.launch(elementwise(len)?) }
        .map_err(|e| CudaError::driver("launching diff_widen", e))?;
    Ok(out)
}

/// `Σ a ∘ b` over `len` values, partial sums per block added on the host in order.
fn dot(
    dev: &Dev<'_>,
    a: &CudaSlice<f64>,
    b: &CudaSlice<f64>,
    len: usize,
) -> Result<f64, CudaError> {
    let blocks = len.div_ceil(DOT_CHUNK).max(1);
    let mut partial = dev.zeros::<f64>("the partial sums", blocks)?;
    let f = dev.func("dot_partial_f64")?;
    let (l, c) = (ll(len), ll(DOT_CHUNK));
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(blocks).map_err(|_| CudaError::Unsupported {
                what: format!("a dot product of {len} values"),
                why: "too many blocks".into(),
            })?,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(a).arg(b).arg(&mut partial).arg(&l).arg(&c);
    // SAFETY: `dot_partial_f64(const double*, const double*, double* partial, long long len, long long
    // chunk)`: a and b hold len values, partial one per block, and the kernel clips every range to len.
    unsafe { launch.launch(cfg) }.map_err(|e| CudaError::driver("launching dot_partial_f64", e))?;
    Ok(dev
        .download("the partial sums", &partial)?
        .iter()
        .take(blocks)
        .sum())
}

/// `tr(D h_in Dᵀ h_out)` for a device `m × n` matrix `D` (f64): `Σ (D h_in) ∘ (h_out D)`.
fn weighted(
    dev: &Dev<'_>,
    d: &CudaSlice<f64>,
    m: usize,
    n: usize,
    h_in: &CudaSlice<f64>,
    h_out: Option<&CudaSlice<f64>>,
) -> Result<f64, CudaError> {
    let gemm = |a: &CudaSlice<f64>,
                lda: usize,
                b: &CudaSlice<f64>,
                ldb: usize,
                rows: usize,
                cols: usize,
                inner: usize|
     -> Result<CudaSlice<f64>, CudaError> {
        let mut c = dev.zeros::<f64>("a proxy product", rows * cols)?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: dim(rows)?,
            n: dim(cols)?,
            k: dim(inner)?,
            alpha: 1.0f64,
            lda: dim(lda)?,
            ldb: dim(ldb)?,
            beta: 0.0f64,
            ldc: dim(rows)?,
        };
        // SAFETY: column-major (rows × inner, ld lda) times (inner × cols, ld ldb) into rows × cols: the
        // callers pass buffers of exactly these sizes.
        unsafe { dev.blas.gemm(cfg, a, b, &mut c) }
            .map_err(|e| CudaError::driver("cuBLAS DGEMM", e))?;
        Ok(c)
    };
    // Row-major D (m × n) is column-major Dᵀ (n × m). T = D h_in ⇔ Tᵀ = h_in Dᵀ (h_in symmetric).
    let t = gemm(h_in, n, d, n, n, m, n)?;
    match h_out {
        None => dot(dev, &t, d, m * n),
        Some(h_out) => {
            // S = h_out D ⇔ Sᵀ = Dᵀ h_out.
            let s = gemm(d, n, h_out, m, n, m, m)?;
            dot(dev, &t, &s, m * n)
        }
    }
}

pub(crate) fn weighted_error(
    dev: &Dev<'_>,
    d: &Mat<f32>,
    h_in: &SymMat,
    h_out: Option<&SymMat>,
) -> Result<f64> {
    yaqa_core::backend::check_weighted_inputs(d, h_in, h_out)?;
    let (m, n) = d.shape();
    let run = || -> Result<f64, CudaError> {
        let narrow = dev.upload("the weighted matrix", &d.data)?;
        let d64 = widen(dev, &narrow, m * n)?;
        drop(narrow);
        let h_in_d = dense(dev, h_in)?;
        let h_out_d = match h_out {
            Some(h) => Some(dense(dev, h)?),
            None => None,
        };
        weighted(dev, &d64, m, n, &h_in_d, h_out_d.as_ref())
    };
    run().map_err(|e| e.into_core("weighted_error"))
}
