//! The damping loop and block LDL in f64 on the host (DESIGN.md §3.3–3.4), with a blocked Cholesky
//! written for this crate so that it depends on neither the CPU backend nor faer.
//!
//! Cholesky is right-looking and blocked by [`PANEL`] columns: factor the diagonal block unblocked, solve
//! the panel below it row by row, and subtract the panel's outer product from the trailing lower
//! triangle, spread over the machine's cores with scoped threads (each row is owned by one thread, so the
//! result does not depend on the thread count). Rows are contiguous, so every inner loop is a dot product
//! of two contiguous runs of `PANEL` values. A pivot that is not positive and finite fails the attempt
//! with its index, exactly the reference's criterion, so both damp the same matrices the same way.
//!
//! Then, as DESIGN.md §3.4: `D_k = C_kk C_kkᵀ` and `L = C · blockdiag(C_kk⁻¹)` with identity diagonal
//! blocks. f64 throughout. Time at n = 4096 is about n³/3 flops on the host; moving it to cuSOLVER
//! (`potrf`) is listed in `cuda/NOTES.md` as the way to reach DESIGN.md §8's 3 ms.

use std::thread;

use yaqa_core::{BlockLdl, CoreError, LdlParams, Mat, Result, SymMat};

/// Columns per Cholesky panel.
const PANEL: usize = 64;

/// Row ranges of `lo..hi` for `parts` threads with about equal triangular work (row `i` costs ∝ `i`).
fn balanced_rows(lo: usize, hi: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.max(1);
    let total: f64 = (lo..hi).map(|i| (i + 1) as f64).sum();
    let mut out = Vec::with_capacity(parts);
    let mut start = lo;
    let mut acc = 0.0;
    for i in lo..hi {
        acc += (i + 1) as f64;
        if acc >= total * (out.len() + 1) as f64 / parts as f64 && out.len() + 1 < parts {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < hi {
        out.push((start, hi));
    }
    out
}

fn threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// In-place lower Cholesky of the dense row-major `n × n` matrix `a` (only the lower triangle is read
/// and written). Returns the index of the first pivot that is not positive and finite.
fn cholesky_in_place(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + PANEL).min(n);
        // 1. Diagonal block, unblocked (left-looking inside the block).
        for j in k0..k1 {
            let mut d = a[j * n + j];
            for p in k0..j {
                d -= a[j * n + p] * a[j * n + p];
            }
            if !(d > 0.0 && d.is_finite()) {
                return Err(j);
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..k1 {
                let mut s = a[i * n + j];
                for p in k0..j {
                    s -= a[i * n + p] * a[j * n + p];
                }
                a[i * n + j] = s / d;
            }
        }
        if k1 == n {
            break;
        }
        // 2. Panel below: row i solves L_kk · x = a[i, k0..k1] (forward substitution), rows in parallel.
        let (top, below) = a.split_at_mut(k1 * n);
        let diag = &top[k0 * n..k1 * n];
        let rows_below = n - k1;
        let chunk = rows_below.div_ceil(threads()).max(1);
        thread::scope(|scope| {
            for rows in below.chunks_mut(chunk * n) {
                scope.spawn(move || {
                    for row in rows.chunks_mut(n) {
                        for j in k0..k1 {
                            let dj = &diag[(j - k0) * n..(j - k0) * n + n];
                            let mut s = row[j];
                            for p in k0..j {
                                s -= row[p] * dj[p];
                            }
                            row[j] = s / dj[j];
                        }
                    }
                });
            }
        });
        // 3. Trailing update of the lower triangle: a[i][j] -= Σ_p L[i][p] L[j][p], k1 ≤ j ≤ i.
        // Every thread reads the panel columns of all trailing rows, so take a copy of them first.
        let width = k1 - k0;
        let mut panel = vec![0.0; rows_below * width];
        for (r, dst) in panel.chunks_mut(width).enumerate() {
            dst.copy_from_slice(&below[r * n + k0..r * n + k1]);
        }
        let panel = &panel;
        let ranges = balanced_rows(k1, n, threads());
        thread::scope(|scope| {
            let mut rest: &mut [f64] = below;
            let mut at = k1;
            for &(lo, hi) in &ranges {
                let (mine, others) = rest.split_at_mut((hi - lo) * n);
                rest = others;
                debug_assert_eq!(lo, at);
                at = hi;
                scope.spawn(move || {
                    for (r, row) in mine.chunks_mut(n).enumerate() {
                        let i = lo + r;
                        let li = &panel[(i - k1) * width..(i - k1 + 1) * width];
                        for j in k1..=i {
                            let lj = &panel[(j - k1) * width..(j - k1 + 1) * width];
                            let s: f64 = li.iter().zip(lj).map(|(x, y)| x * y).sum();
                            row[j] -= s;
                        }
                    }
                });
            }
        });
        k0 = k1;
    }
    Ok(())
}

/// [`yaqa_core::Backend::block_ldl`]: damping loop (σ doubled on every failed attempt) and block LDL.
///
/// **Shapes**: `h` is `n × n` packed; `params.block` divides `n`. **Errors**: invalid parameters,
/// non-finite entries, and [`CoreError::NotPositiveDefinite`] after `max_tries` attempts.
pub fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
    params.validate(h.n)?;
    yaqa_core::error::check_finite("factor passed to block_ldl", &h.data)?;
    let n = h.n;
    let b = params.block;
    let mut damp = params.damp;
    let mut last_pivot = 0;
    for tries in 1..=params.max_tries {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            c[i * n..i * n + i + 1].copy_from_slice(h.lower_row(i));
            c[i * n + i] += damp;
        }
        match cholesky_in_place(&mut c, n) {
            Ok(()) => return Ok(assemble(&c, n, b, damp, tries)),
            Err(pivot) => {
                last_pivot = pivot;
                damp = if damp > 0.0 { 2.0 * damp } else { 1e-6 };
            }
        }
    }
    Err(CoreError::NotPositiveDefinite {
        what: "factor".into(),
        pivot: last_pivot,
        damp_added: damp,
        tries: params.max_tries,
    })
}

/// `D` and `L` from the Cholesky factor `c` (lower triangle of a row-major `n × n`).
fn assemble(c: &[f64], n: usize, b: usize, damp: f64, tries: usize) -> BlockLdl {
    let nb = n / b;
    let mut d = vec![0.0; n * b];
    let mut inverses = Vec::with_capacity(nb);
    for kb in 0..nb {
        let o = kb * b;
        let ckk: Vec<f64> = (0..b * b)
            .map(|x| {
                let (i, j) = (x / b, x % b);
                if j <= i { c[(o + i) * n + o + j] } else { 0.0 }
            })
            .collect();
        for i in 0..b {
            for j in 0..b {
                d[kb * b * b + i * b + j] = (0..b).map(|k| ckk[i * b + k] * ckk[j * b + k]).sum();
            }
        }
        inverses.push(yaqa_core::ldl::lower_block_inverse(&ckk, b));
    }
    let mut l = vec![0.0; n * n];
    let chunk = n.div_ceil(threads()).max(1);
    let inverses = &inverses;
    thread::scope(|scope| {
        for (part, rows) in l.chunks_mut(chunk * n).enumerate() {
            scope.spawn(move || {
                for (r, row) in rows.chunks_mut(n).enumerate() {
                    let i = part * chunk + r;
                    // The diagonal block is the identity by definition; set it exactly.
                    row[i] = 1.0;
                    for kb in 0..i / b {
                        let o = kb * b;
                        let inv = &inverses[kb];
                        for j in 0..b {
                            let mut s = 0.0;
                            for k in 0..b {
                                s += c[i * n + o + k] * inv[k * b + j];
                            }
                            row[o + j] = s;
                        }
                    }
                }
            });
        }
    });
    BlockLdl {
        n,
        block: b,
        l: Mat {
            rows: n,
            cols: n,
            data: l,
        },
        d,
        damp_added: damp,
        tries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `L D Lᵀ` reconstructs the damped factor, for panels that do and do not divide `n`.
    #[test]
    fn ldl_reconstructs_the_damped_factor() {
        for n in [48, 130] {
            let h = yaqa_core::synthetic::factor(n, 1.1, 7);
            let params = LdlParams {
                block: 2,
                ..LdlParams::default()
            };
            let ldl = block_ldl(&h, &params).unwrap_or_else(|e| panic!("{e}"));
            let back = ldl.reconstruct();
            let mut want = h.to_dense();
            for i in 0..n {
                *want.at_mut(i, i) += ldl.damp_added;
            }
            let err = yaqa_core::mat::rel_diff_fro(&back.data, &want.data);
            assert!(err < 1e-12, "n {n}: L D Lᵀ differs from h + σI by {err:e}");
        }
    }

    #[test]
    fn balanced_rows_cover_the_range() {
        for (lo, hi, parts) in [(0, 10, 3), (64, 4096, 16), (5, 6, 4), (7, 7, 2)] {
            let ranges = balanced_rows(lo, hi, parts);
            let mut at = lo;
            for (a, b) in ranges {
                assert_eq!(a, at);
                assert!(b > a);
                at = b;
            }
            assert_eq!(at, hi.max(lo));
        }
    }
}
