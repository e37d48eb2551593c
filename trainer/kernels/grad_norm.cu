// grad_norm.cu — Σx² over a bf16 buffer (the global gradient norm is its square root, after the
// cross-rank sum), in fp32, as a two-stage fixed-order reduction with no atomics:
//
// sum_squares_partial   partial[b] = Σ x[i]² over i ≡ thread (mod grid·block), block b's threads
//   grid (G), block (512), shared memory 512 / 32 floats (static). G is a constant of the
//   launcher (e.g. 1024), never derived from the device's SM count, so the result is the same
//   on every GPU; each thread strides over the buffer, then block_sum combines in a fixed order.
// reduce_partials       out[0] = Σ_b partial[b]
//   grid (1), block (512), shared memory 512 / 32 floats (static); each thread sums a strided
//   slice in order, then block_sum.
#include "common.cuh"

#define NORM_BLOCK 512

extern "C" __global__ void __launch_bounds__(NORM_BLOCK) sum_squares_partial(
    float* __restrict__ partial, const bf16* __restrict__ x, unsigned long long n) {
    __shared__ float scratch[NORM_BLOCK / WARP_SIZE];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    float acc = 0.0f;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float g = to_f32(x[i]);
        acc += g * g;
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

extern "C" __global__ void __launch_bounds__(NORM_BLOCK) reduce_partials(
    float* __restrict__ out, const float* __restrict__ partial, int n) {
    __shared__ float scratch[NORM_BLOCK / WARP_SIZE];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = total;
}
