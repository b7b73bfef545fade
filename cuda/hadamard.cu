// hadamard.cu: the fast randomized Hadamard rotation R_n = (H_k ⊗ H_{2^p}) / √n (DESIGN.md §3.2).
//
// What it computes. Each row of a row-major rows × n matrix is one vector v of length n = k·2^p, viewed
// as k segments of 2^p contiguous entries (index i = a·2^p + b, as yaqa_core::hadamard). The forward
// rotation v ← R (s ⊙ v) is three kernels:
//   1. `scale_cols_*`      v ← d ⊙ v with d = s/√n (signs and normalisation folded together);
//   2. `fwht_segments_*`   unnormalised Walsh–Hadamard butterflies inside every segment;
//   3. `base_mix_*`        out[a·2^p + b] = Σ_c H_k[a][c] · in[c·2^p + b] (H_kᵀ for the inverse),
//                          skipped when k = 1.
// The inverse v ← s ⊙ (Rᵀ v) runs 2, 3 (transposed) and then 1. A rotation along the other side of W
// (its columns) transposes, rotates rows and transposes back (layout.cu's `transpose_*`); the
// symmetric factor rotation R diag(s) h diag(s) Rᵀ rotates the rows of the dense f64 factor, transposes
// and rotates rows again.
//
// Thread mapping. `fwht_segments`: one block per (row, segment) = (blockIdx.x, blockIdx.y), 2^p values in dynamic shared memory,
// log2(2^p) butterfly passes separated by __syncthreads. `base_mix`: one thread per output element, a
// loop of k multiply-adds by ±1 (exact). `scale_cols`: one thread per element.
//
// Precision and determinism. f32 for weights, f64 for factors; butterflies add and subtract in a
// fixed pattern and the mix multiplies by ±1 in a fixed order: bitwise reproducible, and in fact the
// same operations as the CPU backend's scalar path up to the placement of the 1/√n factor.

template <typename T>
__device__ void scale_cols(T* __restrict__ data, const T* __restrict__ d, long long rows, long long n) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < rows * n) data[idx] = data[idx] * d[idx % n];
}

template <typename T>
__device__ void fwht_segments(T* __restrict__ data, long long n, int log2_seg) {
    extern __shared__ unsigned char smem_raw[];
    T* buf = reinterpret_cast<T*>(smem_raw);
    const long long seg = 1LL << log2_seg;
    T* vec = data + (long long)blockIdx.x * n + (long long)blockIdx.y * seg;
    for (long long i = threadIdx.x; i < seg; i += blockDim.x) buf[i] = vec[i];
    __syncthreads();
    for (int pass = 0; pass < log2_seg; ++pass) {
        const long long half = 1LL << pass;
        // seg/2 butterflies per pass: pair (lo, lo + half) with lo's bit `pass` clear.
        for (long long t = threadIdx.x; t < seg / 2; t += blockDim.x) {
            const long long lo = ((t >> pass) << (pass + 1)) | (t & (half - 1));
            const T x = buf[lo], y = buf[lo + half];
            buf[lo] = x + y;
            buf[lo + half] = x - y;
        }
        __syncthreads();
    }
    for (long long i = threadIdx.x; i < seg; i += blockDim.x) vec[i] = buf[i];
}

template <typename T>
__device__ void base_mix(const T* __restrict__ src, T* __restrict__ dst, const signed char* __restrict__ h,
                         long long rows, long long n, int k, long long seg, int transpose) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * n) return;
    const long long row = idx / n, i = idx % n;
    const int a = (int)(i / seg);
    const long long b = i % seg;
    const T* vec = src + row * n;
    T s = T(0);
    for (int c = 0; c < k; ++c) {
        const signed char hv = transpose ? h[c * k + a] : h[a * k + c];
        const T x = vec[(long long)c * seg + b];
        s = hv > 0 ? s + x : s - x;
    }
    dst[idx] = s;
}

extern "C" __global__ void scale_cols_f32(float* data, const float* d, long long rows, long long n) {
    scale_cols<float>(data, d, rows, n);
}
extern "C" __global__ void scale_cols_f64(double* data, const double* d, long long rows, long long n) {
    scale_cols<double>(data, d, rows, n);
}
extern "C" __global__ void fwht_segments_f32(float* data, long long n, int log2_seg) {
    fwht_segments<float>(data, n, log2_seg);
}
extern "C" __global__ void fwht_segments_f64(double* data, long long n, int log2_seg) {
    fwht_segments<double>(data, n, log2_seg);
}
extern "C" __global__ void base_mix_f32(const float* src, float* dst, const signed char* h, long long rows,
                                        long long n, int k, long long seg, int transpose) {
    base_mix<float>(src, dst, h, rows, n, k, seg, transpose);
}
extern "C" __global__ void base_mix_f64(const double* src, double* dst, const signed char* h,
                                        long long rows, long long n, int k, long long seg, int transpose) {
    base_mix<double>(src, dst, h, rows, n, k, seg, transpose);
}
