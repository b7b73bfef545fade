//! Two-sided adaptive rounding on the device (DESIGN.md §4): the anti-diagonal wavefront of
//! `cuda/round.cu`, one launch per step, feedback pushed incrementally (`O(mn(m+n))` flops in all).
//!
//! Both [`yaqa_core::RoundOrder`]s run as the wavefront: every order that finishes the tiles below and to
//! the right of a tile first gives the same result in exact arithmetic (DESIGN.md §4), and the wavefront
//! is the order whose steps are parallel. `a_out = None` (LDLQ) skips the row feedback. The summation
//! order of the feedback differs from the CPU backend's and the reference's, so the conformance suite
//! compares codes by agreement rate and proxy error.
//!
//! `Rounded::pivots` is left empty, as on the CPU backend: the caller owns the LDL and its pivots.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use yaqa_core::backend::{RoundParams, Rounded, check_round_inputs};
use yaqa_core::{Mat, Result, TileQuantizer};

use crate::device::{Dev, ll};
use crate::error::CudaError;
use crate::quant::{DeviceQuant, probe};

/// Threads per block of `round_wavefront_step`.
const THREADS: u32 = 256;
/// Push lines (rows above plus columns to the left) per block: one block per tile would leave most SMs
/// idle on short diagonals; this spreads each tile's pushes over several blocks.
const LINES_PER_BLOCK: usize = 512;
/// Largest tile (`tile_rows · tile_cols`): E and P of the tile live in 48 KiB of shared memory at most.
const MAX_TILE_ELEMS: usize = 4096;

pub(crate) fn round_adaptive(
    dev: &Dev<'_>,
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: Option<&Mat<f32>>,
    quantizer: &dyn TileQuantizer,
    params: &RoundParams,
) -> Result<Rounded> {
    check_round_inputs(w, a_in, a_out, quantizer, params)?;
    let run = || -> Result<Rounded, CudaError> {
        let (m, n) = w.shape();
        let (tr, tc) = (params.tile_rows, params.tile_cols);
        if tr * tc > MAX_TILE_ELEMS {
            return Err(CudaError::Unsupported {
                what: format!("a {tr} × {tc} rounding tile"),
                why: format!(
                    "the CUDA wavefront keeps a tile in shared memory ({MAX_TILE_ELEMS} values at most)"
                ),
            });
        }
        let quant = probe(quantizer, m, n)?;
        wavefront(dev, w, a_in, a_out, &quant, tr, tc)
    };
    run().map_err(|e| e.into_core("round_adaptive"))
}

fn wavefront(
    dev: &Dev<'_>,
    w: &Mat<f32>,
    a_in: &Mat<f32>,
    a_out: Option<&Mat<f32>>,
    quant: &DeviceQuant,
    tr: usize,
    tc: usize,
) -> Result<Rounded, CudaError> {
    let (m, n) = w.shape();
    let wd = dev.upload("W", &w.data)?;
    let a_in_d = dev.upload("a_in", &a_in.data)?;
    let a_out_d = match a_out {
        Some(a) => Some(dev.upload("a_out", &a.data)?),
        None => None,
    };
    let mut v = dev.zeros::<f32>("the column feedback V", m * n)?;
    let mut ut = dev.zeros::<f32>("the row feedback Uᵀ", m * n)?;
    let mut w_hat = dev.zeros::<f32>("Ŵ", m * n)?;
    let mut codes = dev.zeros::<u16>("the codes", m * n)?;
    let (kind, scale, group_size, groups, scales_d, zeros_d) = match quant {
        DeviceQuant::IntSym { scale, .. } => (0i32, *scale, 1usize, 1usize, None, None),
        DeviceQuant::IntAsym {
            group_size,
            groups,
            scales,
            zeros,
            ..
        } => (
            1i32,
            1.0f32,
            *group_size,
            *groups,
            Some(dev.upload("the group scales", scales)?),
            Some(dev.upload("the zero-points", zeros)?),
        ),
    };
    let max_level = quant.max_level();
    let f = dev.func("round_wavefront_step")?;
    let (mt, nt) = (m / tr, n / tc);
    let null: u64 = 0;
    let (m_ll, n_ll, gs_ll, groups_ll) = (ll(m), ll(n), ll(group_size), ll(groups));
    let (tr_i, tc_i) = (tr as i32, tc as i32);
    let chunk = LINES_PER_BLOCK as i32;
    for step in 0..mt + nt - 1 {
        // Tiles (mt−1−a, nt−1−b) with a + b = step.
        let a_lo = step.saturating_sub(nt - 1);
        let a_hi = step.min(mt - 1);
        let tiles = a_hi - a_lo + 1;
        // The most push lines of any tile on the step: rows above (with a_out) plus columns to the left.
        let lines = (a_lo..=a_hi)
            .map(|a| {
                let (ti, tj) = (mt - 1 - a, nt - 1 - (step - a));
                (if a_out.is_some() { ti * tr } else { 0 }) + tj * tc
            })
            .max()
            .unwrap_or(0);
        let chunks = lines.div_ceil(LINES_PER_BLOCK).max(1);
        let (Ok(gx), Ok(gy)) = (u32::try_from(tiles), u32::try_from(chunks)) else {
            return Err(CudaError::Unsupported {
                what: format!("a {m} × {n} wavefront"),
                why: "grid too large".into(),
            });
        };
        let cfg = LaunchConfig {
            grid_dim: (gx, gy.min(65535), 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (2 * tr * tc * 4) as u32,
        };
        if gy > 65535 {
            return Err(CudaError::Unsupported {
                what: format!("a {m} × {n} wavefront"),
                why: "more than 65535 push chunks per tile".into(),
            });
        }
        let step_i = step as i32;
        let mut launch = dev.stream.launch_builder(f);
        launch.arg(&wd).arg(&mut v).arg(&mut ut).arg(&a_in_d);
        match &a_out_d {
            Some(a) => launch.arg(a),
            None => launch.arg(&null),
        };
        launch
            .arg(&mut w_hat)
            .arg(&mut codes)
            .arg(&m_ll)
            .arg(&n_ll)
            .arg(&tr_i)
            .arg(&tc_i)
            .arg(&step_i)
            .arg(&chunk)
            .arg(&kind)
            .arg(&max_level)
            .arg(&scale);
        match (&scales_d, &zeros_d) {
            (Some(s), Some(z)) => launch.arg(s).arg(z),
            _ => launch.arg(&null).arg(&null),
        };
        launch.arg(&gs_ll).arg(&groups_ll);
        // SAFETY: the arguments follow `round_wavefront_step`'s signature in cuda/round.cu in order and
        // type (seven pointers, two `long long`, five ints, two floats, two pointers, two `long long`);
        // W, V, Uᵀ, Ŵ and the codes hold m·n values, a_in n·n, a_out m·m (or null, which the kernel
        // checks), scales and zeros m·groups; the dynamic shared memory holds the tile's E and P.
        unsafe { launch.launch(cfg) }
            .map_err(|e| CudaError::driver(format!("launching wavefront step {step}"), e))?;
    }
    dev.sync("the rounding wavefront")?;
    let w_hat = dev.download("Ŵ", &w_hat)?;
    let codes = dev.download("the codes", &codes)?;
    Ok(Rounded {
        w_hat: Mat {
            rows: m,
            cols: n,
            data: w_hat,
        },
        codes,
        pivots: Vec::new(),
        // The kernels do not keep the rounding errors yet, so the OPTQ identity is not checked on CUDA.
        order: Vec::new(),
        eps: None,
        drift_gains: Vec::new(),
    })
}
