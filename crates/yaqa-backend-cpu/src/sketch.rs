//! CPU factor accumulation (DESIGN.md §2): per-sequence products in f32 on faer's GEMM, computing only the
//! lower triangle, added into f64 accumulators so that sums over many sequences keep f32-level accuracy.

use crate::gemm::{
    add_lower, col_major, gemm, gram_upper, mat, mirror_upper, par, recycle, scratch, transposed,
    view, view_mut,
};
use faer::Accum;
use yaqa_core::backend::{check_factor_side as check_cols, check_same_tokens as check_tokens};
use yaqa_core::{Mat, Result, SymMat};

pub(crate) fn accumulate_xtx(h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
    check_cols("accumulate_xtx: x vs h_in", h_in, x)?;
    let n = x.cols;
    // faer's GEMM runs at full speed when the right operand's columns are contiguous (a row-major right
    // operand ran at 62 against 140 GFLOP/s here, 2026-11-23): one blocked copy buys that layout.
    let xc = col_major(x);
    let gram = gram_upper(n, xc.transpose(), xc.as_ref());
    add_lower(h_in, &gram);
    recycle(gram);
    recycle(xc);
    Ok(())
}

pub(crate) fn accumulate_sketch_b(
    h_in: &mut SymMat,
    h_out: &mut SymMat,
    x: &Mat<f32>,
    g: &Mat<f32>,
) -> Result<()> {
    check_cols("accumulate_sketch_b: x vs h_in", h_in, x)?;
    check_cols("accumulate_sketch_b: g vs h_out", h_out, g)?;
    check_tokens(x, g)?;
    if kernels_are_cheaper(x.rows, g.cols, x.cols) {
        add_through_kernel(h_in, x, g);
        add_through_kernel(h_out, g, x);
        return Ok(());
    }
    let (m, n) = (g.cols, x.cols);
    // G = gᵀ x (m × n), column-major; `grad_rows` holds Gᵀ column-major, i.e. G's rows contiguous, the
    // right operand of G Gᵀ.
    let xc = col_major(x);
    let mut grad = scratch(m, n);
    crate::gemm::matmul(
        grad.as_mut(),
        Accum::Replace,
        mat(g).transpose(),
        xc.as_ref(),
        1.0,
        par(),
    );
    recycle(xc);
    let gram = gram_upper(n, grad.transpose(), grad.as_ref());
    add_lower(h_in, &gram);
    recycle(gram);
    let grad_rows = transposed(&grad);
    recycle(grad);
    let gram = gram_upper(m, grad_rows.transpose(), grad_rows.as_ref());
    add_lower(h_out, &gram);
    recycle(gram);
    recycle(grad_rows);
    Ok(())
}

/// Whether one sequence's Sketch B is cheaper through the `t × t` token kernels than through its weight
/// gradient. Both are exact: `GᵀG = xᵀ (g gᵀ) x` and `G Gᵀ = gᵀ (x xᵀ) g` for `G = gᵀ x`. Through `G`
/// the flops are `2tmn + n²m + m²n`; through the kernels (triangles of the Grams, full middle products)
/// `3t²(m + n) + t(m² + n²)`, which wins whenever the sequence is shorter than the layer is wide (for
/// example 2048 tokens at 4096 × 4096: 172 against 206 GFLOP; 256 tokens at 1536 × 576: 1.1 against
/// 2.3 GFLOP).
fn kernels_are_cheaper(t: usize, m: usize, n: usize) -> bool {
    let (t, m, n) = (t as u128, m as u128, n as u128);
    3 * t * t * (m + n) + t * (m * m + n * n) < 2 * t * m * n + n * n * m + m * m * n
}

/// `acc += aᵀ (b bᵀ) a` for `a`: `t × k` (the accumulated side) and `b`: `t × p` (the other side).
fn add_through_kernel(acc: &mut SymMat, a: &Mat<f32>, b: &Mat<f32>) {
    let (t, k) = (a.rows, a.cols);
    // b's rows are contiguous in both operands of b bᵀ, the layout faer's GEMM is fastest with.
    let mut kernel = gram_upper(t, mat(b), mat(b).transpose());
    mirror_upper(&mut kernel);
    let ac = col_major(a);
    let mut ka = scratch(t, k);
    crate::gemm::matmul(
        ka.as_mut(),
        Accum::Replace,
        kernel.transpose(), // symmetric: its transpose has contiguous rows
        ac.as_ref(),
        1.0,
        par(),
    );
    recycle(kernel);
    let gram = gram_upper(k, ac.transpose(), ka.as_ref());
    add_lower(acc, &gram);
    for spare in [gram, ka, ac] {
        recycle(spare);
    }
}

/// `acc += scale · Σ_t (u_tᵀ h u_t) v_t v_tᵀ`.
pub(crate) fn accumulate_weighted(
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
    let h_dense: Vec<f32> = h.to_dense().data.iter().map(|&x| x as f32).collect();
    let mut uh = vec![0f32; t * k];
    gemm(
        view_mut(&mut uh, t, k, k),
        false,
        mat(u),
        view(&h_dense, k, k, k),
        1.0,
    );
    // Weighted copy of v: row t scaled by its quadratic form.
    let n = v.cols;
    let mut weighted = v.data.clone();
    for row in 0..t {
        let q: f64 = uh[row * k..(row + 1) * k]
            .iter()
            .zip(u.row(row))
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let wt = (q * scale) as f32;
        for x in &mut weighted[row * n..(row + 1) * n] {
            *x *= wt;
        }
    }
    let weighted = Mat {
        rows: t,
        cols: n,
        data: weighted,
    };
    let (wc, vc) = (col_major(&weighted), col_major(v));
    let gram = gram_upper(n, wc.transpose(), vc.as_ref());
    add_lower(acc, &gram);
    for spare in [gram, wc, vc] {
        recycle(spare);
    }
    Ok(())
}
