// proxy.cu: the reduction that finishes the proxy error tr(Δ h_in Δᵀ h_out) (DESIGN.md §4).
//
// What it computes. The host side forms T = Δ h_in and S = h_out Δ with two cuBLAS DGEMMs (f64: the
// conformance budget PROXY_REL = 1e-9 is out of reach of f32 products); tr(Δ h_in Δᵀ h_out) is then the
// elementwise dot Σ T ∘ S, which `dot_partial_f64` reduces to one partial sum per block. The host adds
// the partials in index order.
//
// Thread mapping. 256 threads per block; block b sums the contiguous range [b·chunk, (b+1)·chunk) with a
// thread-strided loop and a fixed shared-memory tree.
//
// Precision and determinism. f64 throughout; the partition and the tree are fixed by (len, chunk), so
// the result is bitwise reproducible for a given launch configuration.

#define DOT_THREADS 256

extern "C" __global__ void __launch_bounds__(DOT_THREADS)
dot_partial_f64(const double* __restrict__ a, const double* __restrict__ b, double* __restrict__ partial,
                long long len, long long chunk) {
    __shared__ double buf[DOT_THREADS];
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = start + chunk < len ? start + chunk : len;
    double s = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += DOT_THREADS) s += a[i] * b[i];
    buf[threadIdx.x] = s;
    __syncthreads();
    for (int half = DOT_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}
