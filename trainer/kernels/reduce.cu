// reduce.cu — Σx and Σx² over a bf16 or fp32 buffer (the loss sum; the global gradient norm is
// the square root of Σg², after the cross-rank sum), in fp32, as a two-stage fixed-order
// reduction with no atomics:
//
// sum_partial_{bf16,f32}, sum_squares_partial_{bf16,f32}
//                       partial[b] = Σ f(x[i]) over i ≡ thread (mod grid·block), block b's threads
//   grid (G), block (512), shared memory 512 / 32 floats (static). G is a constant of the
//   launcher (REDUCE_BLOCKS in backend/cuda/reduce.rs), never derived from the device's SM
//   count, so the result is the same on every GPU; each thread strides over the buffer, then
//   block_sum combines in a fixed order.
// reduce_partials       out[0] = Σ_b partial[b]
//   grid (1), block (512), shared memory 512 / 32 floats (static); each thread sums a strided
//   slice in order, then block_sum.
#include "common.cuh"

#define REDUCE_BLOCK 512

__device__ __forceinline__ float as_f32(bf16 x) { return to_f32(x); }
__device__ __forceinline__ float as_f32(float x) { return x; }

template <typename T, bool SQUARE>
__device__ __forceinline__ void partial_sum(float* partial, const T* x, unsigned long long n) {
    __shared__ float scratch[REDUCE_BLOCK / WARP_SIZE];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    float acc = 0.0f;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float g = as_f32(x[i]);
        acc += SQUARE ? g * g : g;
    }
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

extern "C" __global__ void __launch_bounds__(REDUCE_BLOCK) sum_partial_bf16(
    float* __restrict__ partial, const bf16* __restrict__ x, unsigned long long n) {
    partial_sum<bf16, false>(partial, x, n);
}

extern "C" __global__ void __launch_bounds__(REDUCE_BLOCK) sum_partial_f32(
    float* __restrict__ partial, const float* __restrict__ x, unsigned long long n) {
    partial_sum<float, false>(partial, x, n);
}

extern "C" __global__ void __launch_bounds__(REDUCE_BLOCK) sum_squares_partial_bf16(
    float* __restrict__ partial, const bf16* __restrict__ x, unsigned long long n) {
    partial_sum<bf16, true>(partial, x, n);
}

extern "C" __global__ void __launch_bounds__(REDUCE_BLOCK) sum_squares_partial_f32(
    float* __restrict__ partial, const float* __restrict__ x, unsigned long long n) {
    partial_sum<float, true>(partial, x, n);
}

extern "C" __global__ void __launch_bounds__(REDUCE_BLOCK) reduce_partials(
    float* __restrict__ out, const float* __restrict__ partial, int n) {
    __shared__ float scratch[REDUCE_BLOCK / WARP_SIZE];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    const float total = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[0] = total;
}
