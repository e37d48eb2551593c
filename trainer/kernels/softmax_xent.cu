// softmax_xent.cu — fused softmax + cross-entropy + logits gradient (the CPU backend's
// softmax_xent.rs), one block per row of logits (rows, Vp) of which the first V columns count:
//   losses[r] = logsumexp(z[..V]) - z[target]                           (fp32)
//   z[c]      = dloss·(softmax(z[..V])[c] - [c == target]) for c < V,   0 for V ≤ c < Vp
// A row whose target is IGNORE_TARGET (0xFFFFFFFF: a prompt or padding token, see the loader)
// has loss 0 and a zero gradient row.
// One read pass (an online max/sum per thread over a strided slice of the row, then a fixed
// shuffle tree and warp-ordered combine) and one write pass that replaces the logits.
//   grid (rows), block (512), shared memory 2·(512 / 32) floats (static).
#include "common.cuh"

#define XENT_BLOCK 512
#define XENT_WARPS (XENT_BLOCK / WARP_SIZE)
#define IGNORE_TARGET 0xFFFFFFFFu

// Merges two (max, sum of exp(x - max)) pairs.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
    const float mx = fmaxf(m, m2);
    const float a = (m == NEG_INF) ? 0.0f : s * __expf(m - mx);
    const float b = (m2 == NEG_INF) ? 0.0f : s2 * __expf(m2 - mx);
    m = mx;
    s = a + b;
}

extern "C" __global__ void __launch_bounds__(XENT_BLOCK) softmax_cross_entropy(
    bf16* __restrict__ logits, float* __restrict__ losses,
    const unsigned int* __restrict__ targets, int V, int Vp, float dloss) {
    __shared__ float warp_max_s[XENT_WARPS];
    __shared__ float warp_sum_s[XENT_WARPS];
    const long long row = blockIdx.x;
    bf16* z = logits + row * Vp;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;

    // An ignored row: the whole block leaves together, before any barrier.
    if (targets[row] == IGNORE_TARGET) {
        if (threadIdx.x == 0) losses[row] = 0.0f;
        for (int c = threadIdx.x; c < Vp; c += blockDim.x) z[c] = to_bf16(0.0f);
        return;
    }

    // Read pass: online softmax statistics over this thread's columns.
    float m = NEG_INF, s = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        const float x = to_f32(z[c]);
        if (x > m) {
            s = (m == NEG_INF ? 0.0f : s * __expf(m - x)) + 1.0f;
            m = x;
        } else {
            s += __expf(x - m);
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_xor_sync(FULL_MASK, m, offset);
        const float s2 = __shfl_xor_sync(FULL_MASK, s, offset);
        softmax_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        warp_max_s[warp] = m;
        warp_sum_s[warp] = s;
    }
    __syncthreads();
    m = warp_max_s[0];
    s = warp_sum_s[0];
    for (int w = 1; w < XENT_WARPS; w++) softmax_merge(m, s, warp_max_s[w], warp_sum_s[w]);

    const unsigned int target = targets[row];
    // loss = log(sum) - (z_t - max) = -log p_t, from the shifted logit (accurate when p_t
    // underflows), as the CPU reference.
    const float z_target = to_f32(z[target]);
    __syncthreads();  // every thread has read z[target] before the write pass replaces it
    if (threadIdx.x == 0) losses[row] = logf(s) - (z_target - m);

    // Write pass: the logits gradient.
    const float inv = 1.0f / s;
    for (int c = threadIdx.x; c < Vp; c += blockDim.x) {
        float g = 0.0f;
        if (c < V) {
            g = __expf(to_f32(z[c]) - m) * inv * dloss;
            if (c == (int)target) g -= dloss;
        }
        z[c] = to_bf16(g);
    }
}
