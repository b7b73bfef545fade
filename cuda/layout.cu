// layout.cu: data-movement kernels shared by every operation family: transposes, packed-triangle
// (yaqa_core::SymMat layout) unpacking and packing, widening f32 to f64 and element-wise differences.
//
// What it computes. `transpose_*`: dst (cols × rows) = srcᵀ. `unpack_sym_*`: the dense n × n matrix from
// a packed lower triangle (entry (i, j), j ≤ i, at i(i+1)/2 + j). `pack_lower_*`: the packed lower
// triangle of a dense n × n matrix (what the sketches and the factor rotation download: half the bytes).
// `diff_widen`: d = f64(a) − f64(b); with b = null, d = f64(a).
//
// Thread mapping. Transposes: 32 × 8 threads per 32 × 32 tile through a padded shared tile, so reads and
// writes are both coalesced. Everything else: one thread per output element, grid-stride free.
//
// Precision and determinism: exact data movement (the f32 → f64 widening and the f64 difference of two
// widened f32 values are exact); deterministic.

template <typename T>
__device__ void transpose_tile(const T* __restrict__ src, T* __restrict__ dst, long long rows,
                               long long cols) {
    __shared__ T tile[32][33];
    const long long c0 = (long long)blockIdx.x * 32;
    const long long r0 = (long long)blockIdx.y * 32;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const long long r = r0 + dy, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[dy][threadIdx.x] = src[r * cols + c];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const long long c = c0 + dy, r = r0 + threadIdx.x;
        if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][dy];
    }
}

extern "C" __global__ void transpose_f32(const float* src, float* dst, long long rows, long long cols) {
    transpose_tile<float>(src, dst, rows, cols);
}

extern "C" __global__ void transpose_f64(const double* src, double* dst, long long rows, long long cols) {
    transpose_tile<double>(src, dst, rows, cols);
}

__device__ __forceinline__ long long packed_index(long long i, long long j) {
    const long long hi = i > j ? i : j, lo = i > j ? j : i;
    return hi * (hi + 1) / 2 + lo;
}

extern "C" __global__ void unpack_sym_f64(const double* __restrict__ packed, double* __restrict__ dense,
                                          long long n) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n * n) dense[idx] = packed[packed_index(idx / n, idx % n)];
}

extern "C" __global__ void unpack_sym_f32(const double* __restrict__ packed, float* __restrict__ dense,
                                          long long n) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n * n) dense[idx] = (float)packed[packed_index(idx / n, idx % n)];
}

// One thread per packed entry; the row of entry `idx` is found by inverting i(i+1)/2 ≤ idx in double
// and correcting by one step either way (exact for every n below 2^26).
template <typename T>
__device__ void pack_lower(const T* __restrict__ dense, T* __restrict__ packed, long long n) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * (n + 1) / 2) return;
    long long i = (long long)((sqrt(8.0 * (double)idx + 1.0) - 1.0) / 2.0);
    while (i * (i + 1) / 2 > idx) --i;
    while ((i + 1) * (i + 2) / 2 <= idx) ++i;
    const long long j = idx - i * (i + 1) / 2;
    packed[idx] = dense[i * n + j];
}

extern "C" __global__ void pack_lower_f32(const float* dense, float* packed, long long n) {
    pack_lower<float>(dense, packed, n);
}

extern "C" __global__ void pack_lower_f64(const double* dense, double* packed, long long n) {
    pack_lower<double>(dense, packed, n);
}

extern "C" __global__ void diff_widen(const float* __restrict__ a, const float* __restrict__ b,
                                      double* __restrict__ d, long long len) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= len) return;
    d[idx] = b != nullptr ? (double)a[idx] - (double)b[idx] : (double)a[idx];
}
