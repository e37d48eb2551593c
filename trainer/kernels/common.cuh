// common.cuh — what every kernel family shares: the bf16 storage type, conversions, and
// deterministic warp/block reductions (a fixed shuffle tree, then warp 0 sums the warp
// partials in warp order), so a reduction's result depends only on the launch shape, never
// on scheduling. Given to NVRTC as an in-memory header by trainer/src/cuda/kernels.rs.
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu
// -inf without <math.h> (NVRTC has no INFINITY macro).
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 to_bf16(float x) { return __float2bfloat16_rn(x); }

// Sum over the 32 lanes; every lane gets the same value (xor butterfly: fixed order).
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    return x;
}

// Sum over the block; every thread gets the result. `scratch` holds blockDim.x / 32 floats.
// blockDim.x must be a multiple of 32. Every thread adds the warp partials in warp order.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    x = warp_sum(x);
    __syncthreads();  // a previous call's readers are done with scratch
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; w++) total += scratch[w];
    return total;
}
