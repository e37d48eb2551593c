// layernorm.cu — layer normalisation (eps 1e-5, as the CPU backend's layernorm.rs), bf16 storage,
// fp32 statistics and sums.
//
// layernorm_forward                 out = (x - mean)·rstd·weight + bias, per row of x (N, C);
//                                   saves mean and rstd (N, fp32) for the backward pass.
// fused_residual_layernorm_forward  residual = inp1 + inp2 (stored bf16), then the layernorm of
//                                   the STORED residual (so the backward sees the same x).
//   Both: grid (ceil(N / 8)), block (256) = 8 warps, one warp per row; no shared memory.
//   Two passes over the row (mean, then Σ(x - mean)²), as the CPU reference, each a strided
//   lane loop and a fixed shuffle tree.
//
// layernorm_backward          dinp += (dnorm - mean(dnorm) - xhat·mean(dnorm·xhat))·rstd,
//                             dnorm = weight·dout; and per block b of `rows_per_block` rows:
//                             dweight_partial[b,c] = Σ_rows dout·xhat,
//                             dbias_partial[b,c]   = Σ_rows dout   (rows in ascending order).
//   grid (ceil(N / rows_per_block)), block (256); shared memory 2·rows_per_block floats
//   (dynamic). Phase 1: one warp per row for dinp. Phase 2: one thread per channel (strided)
//   walks the block's rows in order for the partials. No atomics.
// layernorm_backward_reduce   dweight[c] += Σ_b dweight_partial[b,c], dbias[c] likewise,
//                             blocks b in ascending order.
//   grid (ceil(C / 256)), block (256), no shared memory; one thread per channel.
#include "common.cuh"

#define LN_EPS 1e-5f

// Normalises row `x` (C bf16, already the stored values) into `out`; lane-strided.
__device__ __forceinline__ void layernorm_row(
    bf16* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
    const bf16* x, const bf16* __restrict__ weight, const bf16* __restrict__ bias,
    long long row, int C, int lane) {
    float sum = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) sum += to_f32(x[c]);
    const float mu = warp_sum(sum) / (float)C;
    float sq = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) {
        const float d = to_f32(x[c]) - mu;
        sq += d * d;
    }
    const float var = warp_sum(sq) / (float)C;
    const float s = 1.0f / sqrtf(var + LN_EPS);
    for (int c = lane; c < C; c += WARP_SIZE)
        out[c] = to_bf16((to_f32(x[c]) - mu) * s * to_f32(weight[c]) + to_f32(bias[c]));
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = s;
    }
}

extern "C" __global__ void __launch_bounds__(256) layernorm_forward(
    bf16* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
    const bf16* __restrict__ inp, const bf16* __restrict__ weight, const bf16* __restrict__ bias,
    int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    layernorm_row(out + row * C, mean, rstd, inp + row * C, weight, bias, row, C, lane);
}

extern "C" __global__ void __launch_bounds__(256) fused_residual_layernorm_forward(
    bf16* __restrict__ residual, bf16* __restrict__ out, float* __restrict__ mean,
    float* __restrict__ rstd, const bf16* __restrict__ inp1, const bf16* __restrict__ inp2,
    const bf16* __restrict__ weight, const bf16* __restrict__ bias, int N, int C) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    bf16* r = residual + row * C;
    // Each lane later reads back exactly the elements it wrote here: no synchronisation needed.
    for (int c = lane; c < C; c += WARP_SIZE)
        r[c] = to_bf16(to_f32(inp1[row * C + c]) + to_f32(inp2[row * C + c]));
    layernorm_row(out + row * C, mean, rstd, r, weight, bias, row, C, lane);
}

extern "C" __global__ void __launch_bounds__(256) layernorm_backward(
    bf16* __restrict__ dinp, float* __restrict__ dweight_partial,
    float* __restrict__ dbias_partial, const bf16* __restrict__ dout,
    const bf16* __restrict__ inp, const bf16* __restrict__ weight,
    const float* __restrict__ mean, const float* __restrict__ rstd,
    int N, int C, int rows_per_block) {
    extern __shared__ float stats[];  // [rows_per_block] mean, then [rows_per_block] rstd
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    const long long first = (long long)blockIdx.x * rows_per_block;
    const int rows = (int)min((long long)rows_per_block, (long long)N - first);

    for (int i = threadIdx.x; i < rows; i += blockDim.x) {
        stats[i] = mean[first + i];
        stats[rows_per_block + i] = rstd[first + i];
    }
    __syncthreads();

    // Phase 1: input gradient, one warp per row.
    for (int i = warp; i < rows; i += warps) {
        const long long base = (first + i) * C;
        const float mu = stats[i], s = stats[rows_per_block + i];
        float dnorm_sum = 0.0f, dnorm_xhat_sum = 0.0f;
        for (int c = lane; c < C; c += WARP_SIZE) {
            const float xhat = (to_f32(inp[base + c]) - mu) * s;
            const float dnorm = to_f32(weight[c]) * to_f32(dout[base + c]);
            dnorm_sum += dnorm;
            dnorm_xhat_sum += dnorm * xhat;
        }
        const float dnorm_mean = warp_sum(dnorm_sum) / (float)C;
        const float dnorm_xhat_mean = warp_sum(dnorm_xhat_sum) / (float)C;
        for (int c = lane; c < C; c += WARP_SIZE) {
            const float xhat = (to_f32(inp[base + c]) - mu) * s;
            const float dnorm = to_f32(weight[c]) * to_f32(dout[base + c]);
            const float d = (dnorm - dnorm_mean - xhat * dnorm_xhat_mean) * s;
            dinp[base + c] = to_bf16(to_f32(dinp[base + c]) + d);
        }
    }

    // Phase 2: this block's parameter-gradient partials, one thread per channel, rows in order.
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float dw = 0.0f, db = 0.0f;
        for (int i = 0; i < rows; i++) {
            const long long at = (first + i) * C + c;
            const float g = to_f32(dout[at]);
            dw += (to_f32(inp[at]) - stats[i]) * stats[rows_per_block + i] * g;
            db += g;
        }
        dweight_partial[(long long)blockIdx.x * C + c] = dw;
        dbias_partial[(long long)blockIdx.x * C + c] = db;
    }
}

extern "C" __global__ void __launch_bounds__(256) layernorm_backward_reduce(
    bf16* __restrict__ dweight, bf16* __restrict__ dbias,
    const float* __restrict__ dweight_partial, const float* __restrict__ dbias_partial,
    int num_partials, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0.0f, db = 0.0f;
    for (int b = 0; b < num_partials; b++) {
        dw += dweight_partial[(long long)b * C + c];
        db += dbias_partial[(long long)b * C + c];
    }
    dweight[c] = to_bf16(to_f32(dweight[c]) + dw);
    dbias[c] = to_bf16(to_f32(dbias[c]) + db);
}
