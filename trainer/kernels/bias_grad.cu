// bias_grad.cu — the bias gradient of a linear layer, dbias[j] += Σ_r dout[r, j] over `rows`
// rows of `cols` columns (the CPU backend's matmul.rs bias_backward), bf16 storage, fp32 sums,
// two stages with no atomics:
//
// bias_backward_partial  partial[b, j] = Σ dout[r, j] over the rows r of chunk b
//                        (rows b·rows_per_chunk … , ascending)
//   grid (ceil(cols / 256), chunks), block (256), no shared memory; one thread per (chunk,
//   column): neighbouring threads read neighbouring columns of a row (coalesced).
// bias_backward_reduce   dbias[j] += Σ_b partial[b, j]   (chunks b ascending)
//   grid (ceil(cols / 256)), block (256), no shared memory; one thread per column.
// The chunk count is a function of `rows` only (the launcher's), so the order is fixed.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) bias_backward_partial(
    float* __restrict__ partial, const bf16* __restrict__ dout, int rows, int cols,
    int rows_per_chunk) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    const long long first = (long long)blockIdx.y * rows_per_chunk;
    const long long last = min(first + rows_per_chunk, (long long)rows);
    float acc = 0.0f;
    for (long long r = first; r < last; r++) acc += to_f32(dout[r * cols + j]);
    partial[(long long)blockIdx.y * cols + j] = acc;
}

extern "C" __global__ void __launch_bounds__(256) bias_backward_reduce(
    bf16* __restrict__ dbias, const float* __restrict__ partial, int chunks, int cols) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float acc = 0.0f;
    for (int b = 0; b < chunks; b++) acc += partial[(long long)b * cols + j];
    dbias[j] = to_bf16(to_f32(dbias[j]) + acc);
}
