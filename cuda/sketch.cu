// sketch.cu: the products behind the Kronecker-factor sketches (DESIGN.md §2).
//
// What it computes. Every sketch is a sum over a "long" axis of outer products, so one kernel form
// serves all of them:
//     C[i][j] (+)= Σ_t A[t][i] · B[t][j]          (A is t × p, B is t × q, C is p × q, all row-major)
// - Σ x xᵀ                 : A = B = x (t × n), lower triangle only;
// - Sketch B, G = gᵀ x     : A = g (t × m), B = x (t × n), full rectangle;
// - Sketch B, h_in += GᵀG  : A = B = G (m × n), lower triangle only;
// - Sketch B, h_out += GGᵀ : A = B = Gᵀ (n × m, from layout.cu's `transpose_f32`), lower triangle only;
// - Sketch A               : A = diag(w) v, B = v with per-token weights w from `row_quadratic_f32`.
// With `lower_only` set, thread blocks whose 64 × 64 tile lies strictly above the diagonal return at
// once, so symmetric products cost about half (DESIGN.md §2: "compute and store one triangle"). The
// diagonal tiles are computed whole; the host reads only their lower part.
//
// Precision. TF32 alone keeps 10 mantissa bits, which the paper's authors found too coarse for the
// sketches. `gram_tf32x3` uses the error-compensated split: a = a_hi + a_lo with a_hi = tf32(a) and
// a_lo = tf32(a − a_hi); the product is a_hi·b_hi + a_hi·b_lo + a_lo·b_hi (the a_lo·b_lo term is below
// f32 resolution), three `mma.sync.m16n8k8` tensor-core operations, accumulated in f32 registers. The
// result has f32-level accuracy (about 2^-22 relative per product). `gram_f32` is the plain f32 SIMT
// version of the same contract, kept as a cross-check and for devices below sm_80.
//
// Thread mapping (`gram_tf32x3`). One block of 128 threads (4 warps) per 64 × 64 tile of C; warp w
// owns the 32 × 32 quarter (w / 2, w % 2), i.e. 2 × 4 mma tiles of 16 × 8. The t axis is walked in
// chunks of 16 tokens staged in shared memory (A and B tiles of 16 × 64, padded against bank
// conflicts). `gram_f32`: one block of 256 threads per 64 × 64 tile, each thread a 4 × 4 micro-tile.
//
// Determinism. Each output element is owned by one thread and summed in a fixed order over t: the
// result is bitwise reproducible run to run on the same device and launch configuration. It differs
// from the CPU's and the reference's summation order, so they are compared normwise.

#define GRAM_TILE 64
#define GRAM_K 16
#define GRAM_PAD 4

__device__ __forceinline__ unsigned int to_tf32(float x) {
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// d += a · b for one m16n8k8 TF32 tile: a holds 4 registers, b 2, d 4 (PTX ISA fragment layouts).
__device__ __forceinline__ void mma_tf32(float d[4], const unsigned int a[4], const unsigned int b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Loads a GRAM_K × GRAM_TILE chunk (rows t0.., columns c0..) of a row-major t_len × cols matrix into
// shared memory, zero-filling outside the matrix, optionally scaling row t by weight[t].
__device__ __forceinline__ void load_chunk(float (*dst)[GRAM_TILE + GRAM_PAD], const float* src,
                                           const float* weight, long long t0, long long t_len,
                                           long long c0, long long cols) {
    for (int e = threadIdx.x; e < GRAM_K * GRAM_TILE; e += blockDim.x) {
        int r = e / GRAM_TILE;
        int c = e % GRAM_TILE;
        long long t = t0 + r;
        long long col = c0 + c;
        float v = 0.0f;
        if (t < t_len && col < cols) {
            v = src[t * cols + col];
            if (weight != nullptr) v = v * weight[t];
        }
        dst[r][c] = v;
    }
}

// C = alpha · Aᵀ B (+ C if accumulate). A: t_len × p, B: t_len × q, C: p × q (row-major, ld q).
// `weight` (length t_len, may be null) scales the rows of A.
extern "C" __global__ void __launch_bounds__(128)
gram_tf32x3(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ weight,
            float* __restrict__ c, long long t_len, long long p, long long q, float alpha,
            int accumulate, int lower_only) {
    const long long row0 = (long long)blockIdx.y * GRAM_TILE;
    const long long col0 = (long long)blockIdx.x * GRAM_TILE;
    if (lower_only && col0 > row0) return;

    __shared__ float sa[GRAM_K][GRAM_TILE + GRAM_PAD];
    __shared__ float sb[GRAM_K][GRAM_TILE + GRAM_PAD];

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int group = lane / 4;  // "groupID" of the PTX fragment tables
    const int quad = lane % 4;   // "threadID_in_group"
    const int wr = (warp / 2) * 32;
    const int wc = (warp % 2) * 32;

    float acc[2][4][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.0f;

    for (long long t0 = 0; t0 < t_len; t0 += GRAM_K) {
        load_chunk(sa, a, weight, t0, t_len, row0, p);
        load_chunk(sb, b, nullptr, t0, t_len, col0, q);
        __syncthreads();
        for (int k0 = 0; k0 < GRAM_K; k0 += 8) {
            // A operand (16 × 8, row-major in M × K): element (r, k) of the mma tile is Aᵀ[row][t] = sa[t][row].
            unsigned int a_hi[2][4], a_lo[2][4];
            for (int i = 0; i < 2; ++i) {
                const int r = wr + i * 16 + group;
                const float v[4] = {sa[k0 + quad][r], sa[k0 + quad][r + 8], sa[k0 + quad + 4][r],
                                    sa[k0 + quad + 4][r + 8]};
                for (int s = 0; s < 4; ++s) {
                    a_hi[i][s] = to_tf32(v[s]);
                    a_lo[i][s] = to_tf32(v[s] - __uint_as_float(a_hi[i][s]));
                }
            }
            for (int j = 0; j < 4; ++j) {
                // B operand (8 × 8, column-major in K × N): element (k, n) is sb[t][col].
                const int col = wc + j * 8 + group;
                const float v[2] = {sb[k0 + quad][col], sb[k0 + quad + 4][col]};
                unsigned int b_hi[2], b_lo[2];
                for (int s = 0; s < 2; ++s) {
                    b_hi[s] = to_tf32(v[s]);
                    b_lo[s] = to_tf32(v[s] - __uint_as_float(b_hi[s]));
                }
                for (int i = 0; i < 2; ++i) {
                    // Small terms first, so they are not absorbed before the large one arrives.
                    mma_tf32(acc[i][j], a_lo[i], b_hi);
                    mma_tf32(acc[i][j], a_hi[i], b_lo);
                    mma_tf32(acc[i][j], a_hi[i], b_hi);
                }
            }
        }
        __syncthreads();
    }

    // Accumulator layout (16 × 8 f32): d0 (group, 2·quad), d1 (group, 2·quad+1), d2/d3 the same 8 rows below.
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 4; ++j) {
            for (int s = 0; s < 4; ++s) {
                const long long r = row0 + wr + i * 16 + group + (s >= 2 ? 8 : 0);
                const long long col = col0 + wc + j * 8 + 2 * quad + (s % 2);
                if (r < p && col < q) {
                    const float v = alpha * acc[i][j][s];
                    float* dst = c + r * q + col;
                    *dst = accumulate ? *dst + v : v;
                }
            }
        }
    }
}

// The same contract as `gram_tf32x3` in plain f32 FMA on the SIMT cores (256 threads, 4 × 4 per thread).
extern "C" __global__ void __launch_bounds__(256)
gram_f32(const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ weight,
         float* __restrict__ c, long long t_len, long long p, long long q, float alpha, int accumulate,
         int lower_only) {
    const long long row0 = (long long)blockIdx.y * GRAM_TILE;
    const long long col0 = (long long)blockIdx.x * GRAM_TILE;
    if (lower_only && col0 > row0) return;

    __shared__ float sa[GRAM_K][GRAM_TILE + GRAM_PAD];
    __shared__ float sb[GRAM_K][GRAM_TILE + GRAM_PAD];
    const int tr = (threadIdx.x / 16) * 4;
    const int tc = (threadIdx.x % 16) * 4;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (long long t0 = 0; t0 < t_len; t0 += GRAM_K) {
        load_chunk(sa, a, weight, t0, t_len, row0, p);
        load_chunk(sb, b, nullptr, t0, t_len, col0, q);
        __syncthreads();
        for (int k = 0; k < GRAM_K; ++k) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = sa[k][tr + i];
            for (int j = 0; j < 4; ++j) bv[j] = sb[k][tc + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
            const long long r = row0 + tr + i;
            const long long col = col0 + tc + j;
            if (r < p && col < q) {
                const float v = alpha * acc[i][j];
                float* dst = c + r * q + col;
                *dst = accumulate ? *dst + v : v;
            }
        }
    }
}

// weight[t] = scale · Σ_k uh[t][k] · u[t][k]: the per-token quadratic form uᵀ h u of Sketch A, from
// uh = u·h (a cuBLAS product). One warp per token, summed in double in a fixed lane order
// (deterministic), then rounded to f32 once.
extern "C" __global__ void row_quadratic_f32(const float* __restrict__ uh, const float* __restrict__ u,
                                             float* __restrict__ weight, long long t_len, long long k,
                                             double scale) {
    const long long t = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (t >= t_len) return;
    double s = 0.0;
    for (long long j = lane; j < k; j += 32) s += (double)uh[t * k + j] * (double)u[t * k + j];
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) weight[t] = (float)(s * scale);
}
