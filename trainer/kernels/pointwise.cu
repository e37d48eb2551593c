// pointwise.cu — elementwise kernels (the CPU backend's pointwise.rs, less GELU: gelu.cu).
//
// residual_forward  out[i] = a[i] + b[i]      bf16, the sum in fp32 rounded once
// scale_bf16        x[i] = x[i]·factor        bf16, the product in fp32 rounded once
// dropout           out[i] (+)= inp[i]·keep/(1 - p)  bf16; keep: the top 24 bits of SplitMix64 at
//                   key + (offset + i)·γ are at least `threshold` (the CPU backend's mask)
// scale_f32         x[i] = x[i]·factor        fp32
// widen_bf16        out[i] = x[i]             bf16 → fp32 (exact); NCCL sums gradients in fp32
// narrow_f32        out[i] = x[i]             fp32 → bf16, rounded to nearest even
//   grid (ceil(N / 256)), block (256), no shared memory; one thread per element.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) residual_forward(
    bf16* __restrict__ out, const bf16* __restrict__ a, const bf16* __restrict__ b, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    out[i] = to_bf16(to_f32(a[i]) + to_f32(b[i]));
}

extern "C" __global__ void __launch_bounds__(256) scale_bf16(
    bf16* __restrict__ x, float factor, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    x[i] = to_bf16(to_f32(x[i]) * factor);
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

extern "C" __global__ void __launch_bounds__(256) dropout(
    bf16* __restrict__ out, const bf16* __restrict__ inp, unsigned int threshold, float scale,
    unsigned long long key, unsigned long long offset, int accumulate, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const unsigned long long j = offset + (unsigned long long)i;
    const unsigned int draw = (unsigned int)(splitmix64(key + j * 0x9E3779B97F4A7C15ULL) >> 40);
    const float v = draw >= threshold ? to_f32(inp[i]) * scale : 0.0f;
    out[i] = to_bf16(accumulate ? to_f32(out[i]) + v : v);
}

extern "C" __global__ void __launch_bounds__(256) scale_f32(
    float* __restrict__ x, float factor, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    x[i] *= factor;
}

extern "C" __global__ void __launch_bounds__(256) widen_bf16(
    float* __restrict__ out, const bf16* __restrict__ x, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    out[i] = to_f32(x[i]);
}

extern "C" __global__ void __launch_bounds__(256) narrow_f32(
    bf16* __restrict__ out, const float* __restrict__ x, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    out[i] = to_bf16(x[i]);
}
