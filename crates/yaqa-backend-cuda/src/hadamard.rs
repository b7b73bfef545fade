//! Randomized Hadamard rotations on the device (DESIGN.md §3.2): `cuda/hadamard.cu`'s sign scaling,
//! segment-wise Walsh–Hadamard butterflies and `k × k` base mix, with the base matrix `H_k` taken from
//! [`yaqa_core::hadamard::HadamardPlan`] (the same plan, hence the same rotation, as every backend).
//!
//! The kernels rotate rows. `Side::Rows` (the vectors are the columns of `W`) transposes on the device,
//! rotates rows and transposes back; the factor rotation `R diag(s) h diag(s) Rᵀ` rotates the rows of the
//! dense f64 factor, transposes, and rotates the rows again, then packs the lower triangle on the device.

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use yaqa_core::backend::Side;
use yaqa_core::hadamard::HadamardPlan;
use yaqa_core::sym::packed_len;
use yaqa_core::{CoreError, Mat, Result, SymMat};

use crate::device::{Dev, elementwise, ll, transpose_config};
use crate::error::CudaError;

/// Threads per block of the butterflies.
const FWHT_THREADS: u32 = 256;
/// Shared memory a block may use without opting in.
const DEFAULT_SMEM: usize = 48 * 1024;

/// Element types of the rotation kernels.
trait Elem: DeviceRepr + ValidAsZeroBits + Copy {
    const SUFFIX: &'static str;
    fn from_f64(x: f64) -> Self;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Elem for f64 {
    const SUFFIX: &'static str = "f64";
    fn from_f64(x: f64) -> Self {
        x
    }
}

fn name<T: Elem>(stem: &str) -> &'static str {
    // The kernel table is static, so map to its entries rather than leaking formatted strings.
    match (stem, T::SUFFIX) {
        ("scale_cols", "f32") => "scale_cols_f32",
        ("scale_cols", _) => "scale_cols_f64",
        ("fwht_segments", "f32") => "fwht_segments_f32",
        ("fwht_segments", _) => "fwht_segments_f64",
        ("base_mix", "f32") => "base_mix_f32",
        ("base_mix", _) => "base_mix_f64",
        ("transpose", "f32") => "transpose_f32",
        _ => "transpose_f64",
    }
}

/// `data` (rows × n) ← rows rotated: forward `v ← R (s ⊙ v)`, inverse `v ← s ⊙ (Rᵀ v)`.
fn rotate_rows<T: Elem>(
    dev: &Dev<'_>,
    plan: &HadamardPlan,
    data: &mut CudaSlice<T>,
    rows: usize,
    signs: &[f32],
    inverse: bool,
) -> Result<(), CudaError> {
    let n = plan.n();
    let seg = plan.pow2();
    let k = plan.k();
    let scaled: Vec<T> = signs
        .iter()
        .map(|&s| T::from_f64(s as f64 * plan.scale()))
        .collect();
    let d = dev.upload("the scaled signs", &scaled)?;
    let (rows_ll, n_ll, seg_ll) = (ll(rows), ll(n), ll(seg));
    let scale = |dev: &Dev<'_>, data: &mut CudaSlice<T>| -> Result<(), CudaError> {
        let f = dev.func(name::<T>("scale_cols"))?;
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(data).arg(&d).arg(&rows_ll).arg(&n_ll);
        // SAFETY: `scale_cols_*(T* data, const T* d, long long rows, long long n)`: data holds rows·n
        // values, d holds n, and threads past rows·n return.
        unsafe { launch.launch(elementwise(rows * n)?) }
            .map_err(|e| CudaError::driver("launching scale_cols", e))?;
        Ok(())
    };
    if !inverse {
        scale(dev, data)?;
    }
    if seg > 1 {
        let bytes = seg * std::mem::size_of::<T>();
        let f = dev.func(name::<T>("fwht_segments"))?;
        if bytes > DEFAULT_SMEM {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| {
                CudaError::driver(
                    format!("allowing {bytes} bytes of shared memory for a {seg}-point transform"),
                    e,
                )
            })?;
        }
        let (Ok(gx), Ok(gy)) = (u32::try_from(rows.max(1)), u32::try_from(k)) else {
            return Err(CudaError::Unsupported {
                what: format!("rotating {rows} vectors"),
                why: "grid too large".into(),
            });
        };
        let log2 = plan.log2_pow2() as i32;
        let cfg = LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (FWHT_THREADS, 1, 1),
            shared_mem_bytes: bytes as u32,
        };
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&mut *data).arg(&n_ll).arg(&log2);
        // SAFETY: `fwht_segments_*(T* data, long long n, int log2_seg)`: block (row, segment) reads and
        // writes the 2^log2_seg values of its segment inside row `row` of the rows × n buffer, through
        // `bytes` of dynamic shared memory, which the launch provides.
        unsafe { launch.launch(cfg) }
            .map_err(|e| CudaError::driver("launching fwht_segments", e))?;
    }
    if k > 1 {
        let h: Vec<i8> = plan.base().entries().to_vec();
        let hd = dev.upload("the base Hadamard matrix", &h)?;
        let mut mixed = dev.zeros::<T>("the mixed rows", rows * n)?;
        let f = dev.func(name::<T>("base_mix"))?;
        let k_i = k as i32;
        let transpose = i32::from(inverse);
        let mut launch = dev.stream.launch_builder(f);
        launch
            .arg(&*data)
            .arg(&mut mixed)
            .arg(&hd)
            .arg(&rows_ll)
            .arg(&n_ll)
            .arg(&k_i)
            .arg(&seg_ll)
            .arg(&transpose);
        // SAFETY: `base_mix_*(const T* src, T* dst, const signed char* h, long long rows, long long n,
        // int k, long long seg, int transpose)`: src and dst hold rows·n values, h holds k·k, n = k·seg.
        unsafe { launch.launch(elementwise(rows * n)?) }
            .map_err(|e| CudaError::driver("launching base_mix", e))?;
        *data = mixed;
    }
    if inverse {
        scale(dev, data)?;
    }
    Ok(())
}

/// `dst (cols × rows) = srcᵀ`.
fn transpose<T: Elem>(
    dev: &Dev<'_>,
    src: &CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<CudaSlice<T>, CudaError> {
    let mut dst = dev.zeros::<T>("a transpose", rows * cols)?;
    let f = dev.func(name::<T>("transpose"))?;
    let (r, c) = (ll(rows), ll(cols));
    let mut launch = dev.stream.launch_builder(f);
    launch.arg(src).arg(&mut dst).arg(&r).arg(&c);
    // SAFETY: `transpose_*(const T* src, T* dst, long long rows, long long cols)`: both hold rows·cols
    // values and the kernel bounds-checks every index.
    unsafe { launch.launch(transpose_config(rows, cols)?) }
        .map_err(|e| CudaError::driver("launching a transpose", e))?;
    Ok(dst)
}

/// [`yaqa_core::Backend::hadamard_rotate`] on the device.
///
/// **Shapes**: `w` is `m × n`; `signs` has length `n` (`Cols`) or `m` (`Rows`). **Errors**: shape
/// mismatch, a sign that is not ±1, a dimension with no Hadamard plan, device failures.
pub(crate) fn rotate(
    dev: &Dev<'_>,
    w: &mut Mat<f32>,
    side: Side,
    signs: &[f32],
    inverse: bool,
) -> Result<()> {
    let (m, n) = w.shape();
    let dim = yaqa_core::backend::check_rotate_inputs(w, side, signs)?;
    let plan = HadamardPlan::cached(dim)?;
    let run = || -> Result<Vec<f32>, CudaError> {
        let wd = dev.upload("W", &w.data)?;
        let out = match side {
            Side::Cols => {
                let mut wd = wd;
                rotate_rows(dev, &plan, &mut wd, m, signs, inverse)?;
                wd
            }
            Side::Rows => {
                let mut t = transpose(dev, &wd, m, n)?;
                drop(wd);
                rotate_rows(dev, &plan, &mut t, n, signs, inverse)?;
                transpose(dev, &t, n, m)?
            }
        };
        dev.download("the rotated W", &out)
    };
    w.data = run().map_err(|e| e.into_core("hadamard_rotate"))?;
    Ok(())
}

/// [`yaqa_core::Backend::rotate_factor`] on the device, in f64: `R diag(s) h diag(s) Rᵀ`.
///
/// **Shapes**: `h` is `n × n` packed, `signs` has length `n`. **Errors**: as [`rotate`].
pub(crate) fn rotate_factor(dev: &Dev<'_>, h: &SymMat, signs: &[f32]) -> Result<SymMat> {
    let n = h.n;
    if h.data.len() != packed_len(n) {
        return Err(CoreError::shape(
            "rotate_factor: packed factor",
            packed_len(n),
            h.data.len(),
        ));
    }
    yaqa_core::backend::check_signs(signs, n)?;
    let plan = HadamardPlan::cached(n)?;
    let run = || -> Result<Vec<f64>, CudaError> {
        let packed = dev.upload("the factor", &h.data)?;
        let mut dense = dev.zeros::<f64>("the dense factor", n * n)?;
        let f = dev.func("unpack_sym_f64")?;
        let nn = ll(n);
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&packed).arg(&mut dense).arg(&nn);
        // SAFETY: `unpack_sym_f64(const double*, double*, long long n)`: packed holds n(n+1)/2 values,
        // dense n·n.
        unsafe { launch.launch(elementwise(n * n)?) }
            .map_err(|e| CudaError::driver("launching unpack_sym_f64", e))?;
        // Rows: H diag(s) Rᵀ; transpose: R diag(s) H; rows again: R diag(s) H diag(s) Rᵀ.
        rotate_rows(dev, &plan, &mut dense, n, signs, false)?;
        let mut turned = transpose(dev, &dense, n, n)?;
        drop(dense);
        rotate_rows(dev, &plan, &mut turned, n, signs, false)?;
        let mut out = dev.zeros::<f64>("the packed rotated factor", packed_len(n))?;
        let f = dev.func("pack_lower_f64")?;
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&turned).arg(&mut out).arg(&nn);
        // SAFETY: `pack_lower_f64(const double*, double*, long long n)`: turned holds n·n values, out
        // n(n+1)/2, and threads past n(n+1)/2 return.
        unsafe { launch.launch(elementwise(packed_len(n))?) }
            .map_err(|e| CudaError::driver("launching pack_lower_f64", e))?;
        let mut host = dev.download("the rotated factor", &out)?;
        host.truncate(packed_len(n));
        Ok(host)
    };
    let data = run().map_err(|e| e.into_core("rotate_factor"))?;
    SymMat::from_packed(n, data)
}
