//! The scales of llama.cpp's `Q4_K` super-blocks as its reference quantizer (`quantize_row_q4_K_ref` in
//! ggml-quants.c) fixes them, in f32 with C's order of operations:
//!
//! 1. each sub-block of 32 weights gets a scale `s_j` and a minimum `μ_j ≥ 0` from `make_qkx2_quants`:
//!    start from the range `[min(x, 0), max x]` at 15 steps, then try 21 step counts `14 + 0.1·i`
//!    (`i = 0..=20`), each time fitting scale and minimum to the rounded codes by weighted least squares
//!    (weights `rms(x) + |x_l|`, the minimum held at ≤ 0), and keep the fit of least weighted squared
//!    error;
//! 2. the super-block's `d = max_j s_j / 63` and `dmin = max_j μ_j / 63` are stored as float16, and each
//!    sub-block's `sc_j = min(63, round(63·s_j / max s))` and `m_j = min(63, round(63·μ_j / max μ))` as
//!    6-bit integers;
//! 3. a weight `x` of sub-block `j` then decodes as `(f16(d)·sc_j)·c − f16(dmin)·m_j`, `c ∈ 0..=15`.
//!
//! Rounding is ggml's `nearest_int` (the float-magic round half to even) throughout.

/// Weights per `Q4_K` super-block (ggml's `QK_K`).
pub const SUPER: usize = 256;

/// ggml's `nearest_int`: round half to even by adding `1.5·2²³`, for `|v| ≤ 2²² − 1` (values beyond
/// are clamped there first, which moves no code of a 4-bit grid).
pub fn nearest_int(v: f32) -> i32 {
    let v = v.clamp(-4_194_303.0, 4_194_303.0);
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qkx2_quants(32, 15, x, weights, …, rmin = −1, rdelta = 0.1, nstep = 20, use_mad = false)`:
/// `(scale, the_min)`, `the_min ≥ 0` the value subtracted (`x ≈ scale·c − the_min`).
fn qkx2(x: &[f32], w: &[f32]) -> (f32, f32) {
    const NMAX: i32 = 15;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        return (0.0, -min);
    }
    let code = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, NMAX);
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..x.len() {
        let l = code(iscale, x[i], min);
        let diff = scale * l as f32 + min - x[i];
        best += w[i] * (diff * diff);
    }
    let mut laux = [0i32; 32];
    for is in 0..=20 {
        iscale = (-1.0 + 0.1 * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..x.len() {
            let l = code(iscale, x[i], min);
            laux[i] = l;
            let l = l as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for i in 0..x.len() {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One super-block's stored scales: float16 `d` and `dmin` (as f32) and the 6-bit `sc_j`, `m_j` of its
/// eight sub-blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuperScales {
    pub d: f32,
    pub dmin: f32,
    pub sc: [u8; 8],
    pub m: [u8; 8],
}

/// The scales `quantize_row_q4_K_ref` stores for the 256 weights `x`.
pub fn q4_k_scales(x: &[f32]) -> SuperScales {
    debug_assert_eq!(x.len(), SUPER);
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in sub {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = qkx2(sub, &weights);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C stores the int in a uint8_t (modulo 256) before MIN(63, ·).
    let six = |v: f32| (nearest_int(v) as u8).min(63);
    SuperScales {
        d: super::to_f16(max_scale / 63.0),
        dmin: super::to_f16(max_min / 63.0),
        sc: std::array::from_fn(|j| six(inv_scale * scales[j])),
        m: std::array::from_fn(|j| six(inv_min * mins[j])),
    }
}

/// The 12 bytes `Q4_K` packs the eight 6-bit `(sc, m)` pairs into (the inverse of ggml's
/// `get_scale_min_k4`): pairs 0–3 in the low 6 bits of bytes 0–3 (`sc`) and 4–7 (`m`), pairs 4–7 in the
/// nibbles of bytes 8–11 with their top two bits in the top bits of bytes 0–7.
pub fn pack_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    q[..4].copy_from_slice(&sc[..4]);
    q[4..8].copy_from_slice(&m[..4]);
    for j in 4..8 {
        q[j + 4] = (sc[j] & 0x0F) | ((m[j] & 0x0F) << 4);
        q[j - 4] |= (sc[j] >> 4) << 6;
        q[j] |= (m[j] >> 4) << 6;
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `get_scale_min_k4`, written out.
    fn unpack(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    #[test]
    fn six_bit_pairs_survive_the_packing() {
        let sc: [u8; 8] = [0, 63, 17, 32, 48, 5, 63, 1];
        let m: [u8; 8] = [63, 0, 40, 31, 16, 63, 2, 33];
        let q = pack_scales(&sc, &m);
        for j in 0..8 {
            assert_eq!(unpack(j, &q), (sc[j], m[j]), "pair {j}");
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even_as_the_float_trick_does() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (14.49, 14),
            (1e9, 4_194_303),
        ];
        for (v, want) in cases {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn scales_fit_the_block_and_the_largest_gets_63() {
        // Sub-block j spans about [−0.01·(j+1), 0.02·(j+1)]: the last has the largest scale and minimum.
        let x: Vec<f32> = (0..SUPER)
            .map(|i| {
                let (j, l) = (i / 32, i % 32);
                (l as f32 / 31.0 * 0.03 - 0.01) * (j + 1) as f32
            })
            .collect();
        let s = q4_k_scales(&x);
        assert_eq!((s.sc[7], s.m[7]), (63, 63));
        assert!(s.sc.windows(2).all(|p| p[0] <= p[1]), "{:?}", s.sc);
        // Every sub-block's range is covered by its 16 levels to within a step.
        for j in 0..8 {
            let (d1, m1) = (s.d * s.sc[j] as f32, s.dmin * s.m[j] as f32);
            let sub = &x[32 * j..32 * (j + 1)];
            let lo = sub.iter().copied().fold(f32::MAX, f32::min);
            let hi = sub.iter().copied().fold(f32::MIN, f32::max);
            assert!(
                (-m1 - lo).abs() <= d1 && (15.0 * d1 - m1 - hi).abs() <= d1,
                "sub-block {j}"
            );
        }
        // A block of zeros has no scale.
        let z = q4_k_scales(&[0.0; SUPER]);
        assert_eq!((z.d, z.dmin, z.sc, z.m), (0.0, 0.0, [0; 8], [0; 8]));
    }
}
