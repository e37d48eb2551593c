// swiglu.cu — SwiGLU, the gate of the Llama MLP (the CPU reference is
// trainer/src/llama/swiglu.rs), elementwise over N values, bf16 storage, fp32 arithmetic:
//   σ(g) = 1 / (1 + e^-g)          silu(g) = g·σ(g)
//   forward:   out = silu(gate)·up
//   backward:  dgate = dout·up·σ(g)·(1 + g·(1 - σ(g)))      dup = dout·silu(g)   (OVERWRITE)
// Both: grid (ceil(N / 256)), block (256), no shared memory; one thread per element. expf (not
// __expf) so the tails of σ are accurate; for g → -∞, e^-g = inf gives σ = 0 as it should.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

extern "C" __global__ void __launch_bounds__(256) swiglu_forward(
    bf16* __restrict__ out, const bf16* __restrict__ gate, const bf16* __restrict__ up,
    long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float g = to_f32(gate[i]);
    out[i] = to_bf16(g * sigmoid(g) * to_f32(up[i]));
}

extern "C" __global__ void __launch_bounds__(256) swiglu_backward(
    bf16* __restrict__ dgate, bf16* __restrict__ dup, const bf16* __restrict__ dout,
    const bf16* __restrict__ gate, const bf16* __restrict__ up, long long N) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const float d = to_f32(dout[i]), g = to_f32(gate[i]), u = to_f32(up[i]);
    const float s = sigmoid(g);
    dgate[i] = to_bf16(d * u * s * (1.0f + g * (1.0f - s)));
    dup[i] = to_bf16(d * g * s);
}
