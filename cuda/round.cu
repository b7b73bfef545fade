// round.cu: two-sided adaptive rounding (YAQA, DESIGN.md §4) as an anti-diagonal wavefront with
// incrementally accumulated feedback, O(mn(m+n)) flops in all.
//
// What it computes. With E = W − Ŵ over finished tiles, tile (i, j) is rounded as
//     Ŵ_ij = Q(W_ij + U_ij + V_ij),
//     U_ij = Σ_{i'>i} a_out[i',i]ᵀ E_i'j                     (row feedback from the column below),
//     V_ij = Σ_{j'>j} P_ij' a_in[j',j],  P = E + U            (column feedback from the row to the right),
// which expands to exactly the three sums of DESIGN.md §4. Instead of recomputing each tile's feedback
// from scratch (O(m²n²/16), the published code), every finished tile *pushes* its contribution once:
// its E into U of the tiles above it in its column, its P into V of the tiles left of it in its row.
// Tiles of one anti-diagonal share no row and no column, and every push lands on a tile of a later
// step, so the pushes of one step never collide: no atomics are needed.
//
// Launch structure. One launch of `round_wavefront_step` per anti-diagonal step s = 0 .. mt+nt−2
// (counted from the bottom-right tile). gridDim.x = tiles on the step; gridDim.y = chunks of the push
// work. Every block of a tile recomputes that tile's rounding (a few hundred values, identical
// arithmetic, so identical results), block y = 0 writes Ŵ and the codes, and each block pushes its
// chunk of the rows above / columns to the left. U is stored transposed (n × m) so that the pushes
// read a_out and write U along contiguous memory.
//
// Quantizers. kind 0: symmetric half-integer INT grid (yaqa_core::quant::int::IntSym), level
// = clamp(rint(x/s + (L−1)/2), 0, L−1), value = ½(2·level − (L−1))·s. kind 1: asymmetric per-row/group
// grid (IntAsymGroup), q = clamp(rint(x/s_g) + z_g, 0, L−1), value = s_g·(q − z_g). rint rounds ties to
// even, as the host code. The explicit __f*_rn intrinsics keep nvcc/NVRTC from contracting into FMAs, so
// the quantizer arithmetic is the host's, operation for operation.
//
// Precision and determinism. f32 throughout, each U/V element summed by one thread in a fixed order:
// bitwise reproducible on one device. The summation order differs from the CPU and the f64 reference,
// so codes are compared by agreement rate and proxy error (yaqa_core::conformance).

#define QUANT_INT_SYM 0
#define QUANT_INT_ASYM 1

struct QuantParams {
    int kind;
    float max_level;           // L − 1
    float scale;               // IntSym
    const float* scales;       // IntAsymGroup, m × groups
    const unsigned short* zeros;
    long long group_size;
    long long groups;
};

__device__ __forceinline__ float quantize_value(float x, long long row, long long col,
                                                const QuantParams& qp, unsigned short* code) {
    if (qp.kind == QUANT_INT_SYM) {
        const float offset = __fmul_rn(0.5f, qp.max_level);
        float level = rintf(__fadd_rn(__fdiv_rn(x, qp.scale), offset));
        level = fminf(fmaxf(level, 0.0f), qp.max_level);
        *code = (unsigned short)level;
        return __fmul_rn(__fmul_rn(0.5f, __fsub_rn(__fmul_rn(2.0f, level), qp.max_level)), qp.scale);
    } else {
        const long long g = col / qp.group_size;
        const float s = qp.scales[row * qp.groups + g];
        const float z = (float)qp.zeros[row * qp.groups + g];
        float level = __fadd_rn(rintf(__fdiv_rn(x, s)), z);
        level = fminf(fmaxf(level, 0.0f), qp.max_level);
        *code = (unsigned short)level;
        return __fmul_rn(s, __fsub_rn(level, z));
    }
}

// One wavefront step. Arguments:
//   w (m × n), v (m × n, column feedback so far), ut (n × m, row feedback so far, transposed),
//   a_in (n × n), a_out (m × m, null for LDLQ), w_hat (m × n, out), codes (m × n, out);
//   step: the anti-diagonal index from the bottom-right; tr × tc the tile; chunk: push lines per block.
// Dynamic shared memory: 2 · tr · tc floats (the tile's E and P).
extern "C" __global__ void round_wavefront_step(
    const float* __restrict__ w, float* __restrict__ v, float* __restrict__ ut,
    const float* __restrict__ a_in, const float* __restrict__ a_out, float* __restrict__ w_hat,
    unsigned short* __restrict__ codes, long long m, long long n, int tr, int tc, int step,
    int chunk, int kind, float max_level, float scale, const float* __restrict__ scales,
    const unsigned short* __restrict__ zeros, long long group_size, long long groups) {
    extern __shared__ float smem[];
    float* e_tile = smem;            // tr × tc
    float* p_tile = smem + tr * tc;  // tr × tc

    const int mt = (int)(m / tr), nt = (int)(n / tc);
    // Tiles of this step: (mt−1−a) + (nt−1−b) = step. Enumerate by a (distance from the bottom), the
    // smallest valid a first.
    const int a_min = step - (nt - 1) > 0 ? step - (nt - 1) : 0;
    const int a = a_min + (int)blockIdx.x;
    const int bb = step - a;
    if (a > mt - 1 || bb < 0 || bb > nt - 1) return;
    const int ti = mt - 1 - a, tj = nt - 1 - bb;
    const long long r0 = (long long)ti * tr, c0 = (long long)tj * tc;

    QuantParams qp;
    qp.kind = kind;
    qp.max_level = max_level;
    qp.scale = scale;
    qp.scales = scales;
    qp.zeros = zeros;
    qp.group_size = group_size;
    qp.groups = groups;

    // Round the tile: every element is independent for a scalar grid.
    for (int e = threadIdx.x; e < tr * tc; e += blockDim.x) {
        const int r = e / tc, c = e % tc;
        const long long row = r0 + r, col = c0 + c;
        const float u = ut[col * m + row];
        const float x = __fadd_rn(__fadd_rn(w[row * n + col], u), v[row * n + col]);
        unsigned short code;
        const float q = quantize_value(x, row, col, qp, &code);
        const float err = __fsub_rn(w[row * n + col], q);
        e_tile[e] = err;
        p_tile[e] = __fadd_rn(err, u);
        if (blockIdx.y == 0) {
            w_hat[row * n + col] = q;
            codes[row * n + col] = code;
        }
    }
    __syncthreads();

    // Push work: lines 0 .. r0−1 are rows above (U, only with a_out), then c0 columns to the left (V).
    const long long rows_above = a_out != nullptr ? r0 : 0;
    const long long lines = rows_above + c0;
    const long long first = (long long)blockIdx.y * chunk;
    const long long last = first + chunk < lines ? first + chunk : lines;
    if (first >= lines) return;

    // U pushes: ut[c0+c][r''] += Σ_k a_out[r0+k][r''] · E[k][c] for rows r'' above the tile.
    // Threads run along r'' (contiguous in a_out rows and in ut), looping over the tile's columns.
    if (first < rows_above) {
        const long long u_last = last < rows_above ? last : rows_above;
        for (long long idx = first + threadIdx.x; idx < u_last; idx += blockDim.x) {
            for (int c = 0; c < tc; ++c) {
                float s = 0.0f;
                for (int k = 0; k < tr; ++k) s = fmaf(a_out[(r0 + k) * m + idx], e_tile[k * tc + c], s);
                ut[(c0 + c) * m + idx] += s;
            }
        }
    }
    // V pushes: v[r0+r][q] += Σ_c P[r][c] · a_in[c0+c][q] for columns q left of the tile.
    const long long v_first = first > rows_above ? first - rows_above : 0;
    const long long v_last = last - rows_above;
    for (long long q = v_first + threadIdx.x; q < v_last; q += blockDim.x) {
        for (int r = 0; r < tr; ++r) {
            float s = 0.0f;
            for (int c = 0; c < tc; ++c) s = fmaf(p_tile[r * tc + c], a_in[(c0 + c) * n + q], s);
            v[(r0 + r) * n + q] += s;
        }
    }
}
