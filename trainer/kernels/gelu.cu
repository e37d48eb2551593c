// gelu.cu — GELU, tanh approximation (GPT-2; the CPU backend's pointwise.rs formula):
//   gelu(x)  = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
//   gelu'(x) = 0.5·(1 + th) + 0.5·x·(1 - th²)·√(2/π)·(1 + 3·0.044715·x²),  th = tanh(…)
// Both: grid (ceil(N / 256)), block (256), no shared memory; one thread per element,
// computed in fp32, stored as bf16.
#include "common.cuh"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

// out = gelu(inp)
extern "C" __global__ void __launch_bounds__(256) gelu_forward(
    bf16* __restrict__ out, const bf16* __restrict__ inp, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float x = to_f32(inp[i]);
    const float th = tanhf(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x));
    out[i] = to_bf16(0.5f * x * (1.0f + th));
}

// dinp = gelu'(inp) · dout  (overwrites dinp; dinp may alias dout)
extern "C" __global__ void __launch_bounds__(256) gelu_backward(
    bf16* dinp, const bf16* __restrict__ inp, const bf16* dout, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float x = to_f32(inp[i]);
    const float th = tanhf(GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x));
    const float sech2 = 1.0f - th * th;
    const float local = 0.5f * (1.0f + th)
        + 0.5f * x * sech2 * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x * x);
    dinp[i] = to_bf16(local * to_f32(dout[i]));
}
