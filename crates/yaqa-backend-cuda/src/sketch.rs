//! Factor accumulation on the device (DESIGN.md §2): `Σ x xᵀ`, Sketch B and both Sketch A half-steps,
//! every product one launch of `cuda/sketch.cu`'s `gram_*` kernel (`C = α·AᵀB`, optionally lower
//! triangle only).
//!
//! Per call: the inputs are uploaded, the products accumulate in f32 on the device (3×TF32 tensor-core
//! MMA by default, f32 SIMT on request), the lower triangle is packed on the device (`pack_lower_f32`,
//! half the bytes of the dense result) and added into the caller's f64 [`SymMat`] on the host. Summing
//! many sequences therefore keeps f32-level accuracy per sequence and f64 across sequences, as the CPU
//! backend does. Keeping the f32 partial sums resident on the device across a batch of sequences (to
//! save the per-call download at 14336 × 14336) is the next step; see `cuda/NOTES.md`.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use yaqa_core::backend::{check_factor_side as check_cols, check_same_tokens as check_tokens};
use yaqa_core::{Mat, Result, SymMat};

use crate::device::{Dev, elementwise, ll, transpose_config};
use crate::error::CudaError;

/// How the sketch products multiply on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SketchPrecision {
    /// Tensor cores with the error-compensated 3×TF32 split (`gram_tf32x3`): f32-level accuracy at
    /// tensor-core speed. DESIGN.md §2: plain TF32 is not accurate enough.
    #[default]
    Tf32x3,
    /// Plain f32 FMA on the SIMT cores (`gram_f32`): the cross-check.
    F32,
}

/// The operands of one `gram_*` launch: `C (p × q) = α · Aᵀ B (+ C)`, A `t × p`, B `t × q`, rows of A
/// scaled by `weight` when given.
struct Gram<'a> {
    a: &'a CudaSlice<f32>,
    b: &'a CudaSlice<f32>,
    weight: Option<&'a CudaSlice<f32>>,
    t: usize,
    p: usize,
    q: usize,
    lower_only: bool,
}

fn gram(
    dev: &Dev<'_>,
    precision: SketchPrecision,
    op: &Gram<'_>,
    c: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (name, threads) = match precision {
        SketchPrecision::Tf32x3 => ("gram_tf32x3", 128),
        SketchPrecision::F32 => ("gram_f32", 256),
    };
    let tiles = |d: usize| u32::try_from(d.div_ceil(64).max(1));
    let (Ok(gx), Ok(gy)) = (tiles(op.q), tiles(op.p)) else {
        return Err(CudaError::Unsupported {
            what: format!("a {} × {} sketch product", op.p, op.q),
            why: "too many tiles for one launch".into(),
        });
    };
    if gy > 65535 {
        return Err(CudaError::Unsupported {
            what: format!("a {} × {} sketch product", op.p, op.q),
            why: "more than 65535 row tiles".into(),
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (gx, gy, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = dev.func(name)?;
    let null: u64 = 0;
    let (t, p, q) = (ll(op.t), ll(op.p), ll(op.q));
    let alpha = 1.0f32;
    let accumulate = 0i32;
    let lower = i32::from(op.lower_only);
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(op.a).arg(op.b);
    match op.weight {
        Some(w) => launch.arg(w),
        None => launch.arg(&null),
    };
    launch
        .arg(c)
        .arg(&t)
        .arg(&p)
        .arg(&q)
        .arg(&alpha)
        .arg(&accumulate)
        .arg(&lower);
    // SAFETY: the arguments match `gram_*`'s signature in cuda/sketch.cu in order and type (three f32
    // pointers or a null weight, the f32 output, three `long long`, a float and two ints); A holds t·p,
    // B t·q and C p·q values, which the kernel's bounds checks never exceed.
    unsafe { launch.launch(cfg) }.map_err(|e| CudaError::driver(format!("launching {name}"), e))?;
    Ok(())
}

/// Packs the lower triangle of the dense `n × n` device matrix `c`, downloads it and adds it to `acc`.
fn add_lower_to(dev: &Dev<'_>, c: &CudaSlice<f32>, acc: &mut SymMat) -> Result<(), CudaError> {
    let n = acc.n;
    let len = n * (n + 1) / 2;
    let mut packed = dev.zeros::<f32>("the packed triangle", len)?;
    let f = dev.func("pack_lower_f32")?;
    let nn = ll(n);
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(c).arg(&mut packed).arg(&nn);
    // SAFETY: `pack_lower_f32(const float*, float*, long long)`: c holds n·n values, packed n(n+1)/2,
    // and the kernel writes only indices below n(n+1)/2.
    unsafe { launch.launch(elementwise(len)?) }
        .map_err(|e| CudaError::driver("launching pack_lower_f32", e))?;
    let host = dev.download("the packed triangle", &packed)?;
    for (d, s) in acc.data.iter_mut().zip(&host[..len]) {
        *d += *s as f64;
    }
    Ok(())
}

/// `Σ_t A_t A_tᵀ` of a device `t × n` matrix, lower triangle, into `acc`.
fn symmetric_gram_into(
    dev: &Dev<'_>,
    precision: SketchPrecision,
    a: &CudaSlice<f32>,
    weight: Option<&CudaSlice<f32>>,
    t: usize,
    acc: &mut SymMat,
) -> Result<(), CudaError> {
    let n = acc.n;
    let mut c = dev.zeros::<f32>("a sketch product", n * n)?;
    let op = Gram {
        a,
        b: a,
        weight,
        t,
        p: n,
        q: n,
        lower_only: true,
    };
    gram(dev, precision, &op, &mut c)?;
    add_lower_to(dev, &c, acc)
}

/// `h_in += Σ_t x_t x_tᵀ`. **Shapes**: `x` is `t × n`, `h_in` `n × n`. **Errors**: shape mismatch; device
/// failures as [`CudaError`] inside `CoreError::InvalidParameter { name: "cuda" }`.
pub(crate) fn accumulate_xtx(
    dev: &Dev<'_>,
    precision: SketchPrecision,
    h_in: &mut SymMat,
    x: &Mat<f32>,
) -> Result<()> {
    check_cols("accumulate_xtx: x vs h_in", h_in, x)?;
    let mut run = || -> Result<(), CudaError> {
        let xd = dev.upload("x", &x.data)?;
        symmetric_gram_into(dev, precision, &xd, None, x.rows, h_in)
    };
    run().map_err(|e| e.into_core("accumulate_xtx"))
}

/// Sketch B for one sequence: `G = gᵀ x`, `h_in += GᵀG`, `h_out += GGᵀ` (DESIGN.md §2).
pub(crate) fn accumulate_sketch_b(
    dev: &Dev<'_>,
    precision: SketchPrecision,
    h_in: &mut SymMat,
    h_out: &mut SymMat,
    x: &Mat<f32>,
    g: &Mat<f32>,
) -> Result<()> {
    check_cols("accumulate_sketch_b: x vs h_in", h_in, x)?;
    check_cols("accumulate_sketch_b: g vs h_out", h_out, g)?;
    check_tokens(x, g)?;
    let (t, m, n) = (x.rows, g.cols, x.cols);
    let mut run = || -> Result<(), CudaError> {
        let xd = dev.upload("x", &x.data)?;
        let gd = dev.upload("g", &g.data)?;
        let mut grad = dev.zeros::<f32>("G", m * n)?;
        let op = Gram {
            a: &gd,
            b: &xd,
            weight: None,
            t,
            p: m,
            q: n,
            lower_only: false,
        };
        gram(dev, precision, &op, &mut grad)?;
        drop((xd, gd));
        symmetric_gram_into(dev, precision, &grad, None, m, h_in)?;
        let mut grad_t = dev.zeros::<f32>("Gᵀ", m * n)?;
        let f = dev.func("transpose_f32")?;
        let (rows, cols) = (ll(m), ll(n));
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&grad).arg(&mut grad_t).arg(&rows).arg(&cols);
        // SAFETY: `transpose_f32(const float*, float*, long long rows, long long cols)`; both buffers
        // hold rows·cols values and the kernel bounds-checks every index.
        unsafe { launch.launch(transpose_config(m, n)?) }
            .map_err(|e| CudaError::driver("launching transpose_f32", e))?;
        drop(grad);
        symmetric_gram_into(dev, precision, &grad_t, None, n, h_out)
    };
    run().map_err(|e| e.into_core("accumulate_sketch_b"))
}

/// `acc += scale · Σ_t (u_tᵀ h u_t) v_t v_tᵀ` (both Sketch A half-steps, DESIGN.md §2).
pub(crate) fn accumulate_weighted(
    dev: &Dev<'_>,
    precision: SketchPrecision,
    acc: &mut SymMat,
    v: &Mat<f32>,
    u: &Mat<f32>,
    h: &SymMat,
    scale: f64,
) -> Result<()> {
    check_cols("sketch A: accumulated side", acc, v)?;
    check_cols("sketch A: weighting side", h, u)?;
    check_tokens(v, u)?;
    let (t, k) = (u.rows, u.cols);
    let mut run = || -> Result<(), CudaError> {
        let ud = dev.upload("the weighting side", &u.data)?;
        let packed = dev.upload("the weighting factor", &h.data)?;
        let mut hd = dev.zeros::<f32>("the dense weighting factor", k * k)?;
        let kk = ll(k);
        let f = dev.func("unpack_sym_f32")?;
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&packed).arg(&mut hd).arg(&kk);
        // SAFETY: `unpack_sym_f32(const double*, float*, long long n)`: packed holds n(n+1)/2 values,
        // hd n·n, and the kernel reads only packed indices below n(n+1)/2.
        unsafe { launch.launch(elementwise(k * k)?) }
            .map_err(|e| CudaError::driver("launching unpack_sym_f32", e))?;
        // uh = u·h (row-major t × k) is, column-major, uhᵀ = h·uᵀ (h symmetric).
        let mut uh = dev.zeros::<f32>("u·h", t * k)?;
        let dim = |d: usize| {
            i32::try_from(d).map_err(|_| CudaError::Unsupported {
                what: format!("a cuBLAS dimension of {d}"),
                why: "cuBLAS takes 32-bit dimensions".into(),
            })
        };
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: dim(k)?,
            n: dim(t)?,
            k: dim(k)?,
            alpha: 1.0f32,
            lda: dim(k)?,
            ldb: dim(k)?,
            beta: 0.0f32,
            ldc: dim(k)?,
        };
        // SAFETY: column-major k × k (hd, ld k) times k × t (ud read as uᵀ, ld k) into k × t (uh, ld k):
        // every buffer holds exactly the elements these dimensions address.
        unsafe { dev.blas.gemm(cfg, &hd, &ud, &mut uh) }
            .map_err(|e| CudaError::driver("cuBLAS SGEMM u·h", e))?;
        let mut weight = dev.zeros::<f32>("the token weights", t)?;
        let f = dev.func("row_quadratic_f32")?;
        let (tt, kk) = (ll(t), ll(k));
        let mut launch = dev.stream.launch_builder(f);
        launch
            .arg(&uh)
            .arg(&ud)
            .arg(&mut weight)
            .arg(&tt)
            .arg(&kk)
            .arg(&scale);
        let warps_per_block = 8u32;
        let blocks = u32::try_from(t.div_ceil(warps_per_block as usize).max(1)).map_err(|_| {
            CudaError::Unsupported {
                what: format!("{t} tokens"),
                why: "too many blocks".into(),
            }
        })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32 * warps_per_block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `row_quadratic_f32(const float* uh, const float* u, float* weight, long long t,
        // long long k, double scale)`; uh and u hold t·k values, weight t, and warps past t return.
        unsafe { launch.launch(cfg) }
            .map_err(|e| CudaError::driver("launching row_quadratic_f32", e))?;
        drop((uh, ud, hd, packed));
        let vd = dev.upload("the accumulated side", &v.data)?;
        symmetric_gram_into(dev, precision, &vd, Some(&weight), t, acc)
    };
    run().map_err(|e| e.into_core("accumulate_sketch_a"))
}
