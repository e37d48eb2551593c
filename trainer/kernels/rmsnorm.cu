// rmsnorm.cu — RMSNorm (Llama's LlamaRMSNorm; the CPU reference is trainer/src/llama/rmsnorm.rs),
// bf16 storage for x, weight, out and the gradients, fp32 rstd and sums. eps is the model's
// rms_norm_eps, passed as fp32 (the CPU backend adds it in f32 as well).
//
// rmsnorm_forward           rstd = 1/sqrt(Σx²/C + eps), out = weight·(x·rstd), per row of x (N, C);
//                           saves rstd (N, fp32) for the backward pass.
//   grid (ceil(N / 8)), block (256) = 8 warps, one warp per row; no shared memory. One strided
//   lane loop for Σx², a fixed shuffle tree, a second loop writing the row.
//
// rmsnorm_backward          dinp += rstd·weight·dout - x·rstd³·(Σ weight·dout·x)/C   (ACCUMULATES),
//                           and per block b of `rows_per_block` rows:
//                           dweight_partial[b,c] = Σ_rows dout·x·rstd   (rows ascending).
//   grid (ceil(N / rows_per_block)), block (256); shared memory rows_per_block floats (dynamic,
//   the rows' rstd). Phase 1: one warp per row for dinp. Phase 2: one thread per channel
//   (strided) walks the block's rows in order. No atomics.
// rmsnorm_backward_reduce   dweight[c] += Σ_b dweight_partial[b,c], blocks b ascending
//                           (ACCUMULATES).
//   grid (ceil(C / 256)), block (256), no shared memory; one thread per channel.
// The partial count depends only on N and rows_per_block, so every sum has a fixed order and
// the results are bit-identical from run to run.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) rmsnorm_forward(
    bf16* __restrict__ out, float* __restrict__ rstd, const bf16* __restrict__ inp,
    const bf16* __restrict__ weight, int N, int C, float eps) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const bf16* x = inp + row * C;
    float sq = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        const float v = to_f32(x[c]);
        sq += v * v;
    }
    const float r = 1.0f / sqrtf(warp_sum(sq) / (float)C + eps);
    bf16* o = out + row * C;
    for (int c = lane; c < C; c += WARP_SIZE) o[c] = to_bf16(to_f32(weight[c]) * (to_f32(x[c]) * r));
    if (lane == 0) rstd[row] = r;
}

extern "C" __global__ void __launch_bounds__(256) rmsnorm_backward(
    bf16* __restrict__ dinp, float* __restrict__ dweight_partial, const bf16* __restrict__ dout,
    const bf16* __restrict__ inp, const bf16* __restrict__ weight,
    const float* __restrict__ rstd, int N, int C, int rows_per_block) {
    extern __shared__ float rstd_s[];  // [rows_per_block]
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    const long long first = (long long)blockIdx.x * rows_per_block;
    const int rows = (int)min((long long)rows_per_block, (long long)N - first);

    for (int i = threadIdx.x; i < rows; i += blockDim.x) rstd_s[i] = rstd[first + i];
    __syncthreads();

    // Phase 1: input gradient, one warp per row.
    for (int i = warp; i < rows; i += warps) {
        const long long base = (first + i) * C;
        const float r = rstd_s[i];
        float gx = 0.0f;
        for (int c = lane; c < C; c += WARP_SIZE)
            gx += to_f32(weight[c]) * to_f32(dout[base + c]) * to_f32(inp[base + c]);
        const float k = r * r * r * warp_sum(gx) / (float)C;
        for (int c = lane; c < C; c += WARP_SIZE) {
            const float d = r * to_f32(weight[c]) * to_f32(dout[base + c]) - to_f32(inp[base + c]) * k;
            dinp[base + c] = to_bf16(to_f32(dinp[base + c]) + d);
        }
    }

    // Phase 2: this block's weight-gradient partial, one thread per channel, rows in order.
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float dw = 0.0f;
        for (int i = 0; i < rows; i++) {
            const long long at = (first + i) * C + c;
            dw += to_f32(dout[at]) * to_f32(inp[at]) * rstd_s[i];
        }
        dweight_partial[(long long)blockIdx.x * C + c] = dw;
    }
}

extern "C" __global__ void __launch_bounds__(256) rmsnorm_backward_reduce(
    bf16* __restrict__ dweight, const float* __restrict__ dweight_partial, int num_partials,
    int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0.0f;
    for (int b = 0; b < num_partials; b++) dw += dweight_partial[(long long)b * C + c];
    dweight[c] = to_bf16(to_f32(dweight[c]) + dw);
}
