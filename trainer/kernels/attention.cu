// attention.cu — causal multi-head self-attention, flash-attention style: the T×T score matrix
// is never materialised. qkv is (B, T, 3C) with q | k | v and heads contiguous within each
// (head h of q at channels h·HS…), out (B, T, C), head size HS = 64 (every GPT-2 size; the
// launcher refuses others), scale = 1/√HS. Scores and softmax in fp32; storage bf16.
//
// attention_forward   per query row i: online softmax over key tiles (running max m, running
//                     sum l, output rescaled once per tile), out = Σ_j p_ij v_j / l, and
//                     lse[b,h,i] = m + log l (fp32, B·NH·T) saved for the backward.
//   grid (ceil(T / 64), B·NH), block (64): one thread per query row, q and the output
//   accumulator in registers; shared memory: one key tile and one value tile of 32 rows
//   (2·32·64 fp32 = 16 KiB, static). Key tiles stop at the block's last query row (causal).
//
// Backward (OVERWRITES dqkv), recomputing p_ij = exp(q_i·k_j·scale - lse_i) tile by tile,
// with D_i = Σ_d dout_i·out_i = Σ_j p_ij (dout_i·v_j) and ds_ij = p_ij (dout_i·v_j - D_i)·scale:
// attention_backward_preprocess   delta[b,h,i] = D_i (fp32, B·NH·T; the backward's scratch)
//   grid (ceil(B·T·NH / 8)), block (256): one warp per (b, t, h), 2 channels per lane.
// attention_backward_dkdv         dk_j = Σ_{i ≥ j} ds_ij q_i,  dv_j = Σ_{i ≥ j} p_ij dout_i
//   grid (ceil(T / 64), B·NH), block (128): the block OWNS a key tile of 64 rows, two threads
//   per key row (even / odd channels; k, v, dk, dv halves in registers, the pair's dot products
//   joined by one shuffle), walking query tiles of 16 rows from the diagonal to T in order;
//   shared memory: one q and dout tile (2·16·64 fp32) + lse, D (2·16) = 8.3 KiB, static.
//   No atomics.
// attention_backward_dq           dq_i = Σ_{j ≤ i} ds_ij k_j
//   grid (ceil(T / 64), B·NH), block (64): one thread per query row (q and dq in registers),
//   walking key tiles of 32 rows in order up to the diagonal; shared memory: own dout rows
//   padded to 65 floats (64·65 fp32) + one k and v tile (2·32·64 fp32) = 32.3 KiB, static.
// Every output element is written by one thread with a fixed summation order: deterministic.
#include "common.cuh"

#define HS 64
#define ROWS 64      // query rows per forward/dq block, key rows per dkdv block
#define KEY_TILE 32  // key rows per tile (forward, dq)
#define QUERY_TILE 16  // query rows per tile (dkdv)
#define PAD (HS + 1)   // per-thread rows in shared memory: conflict-free column reads

// Loads `rows` rows of one head (HS bf16 each, row stride `stride` elements) starting at row
// `first` into dst (fp32, row pitch `pitch`), zero past `limit` rows. All threads take part.
__device__ __forceinline__ void load_rows(float* dst, int pitch, const bf16* src, long long stride,
                                          int first, int rows, int limit) {
    for (int e = threadIdx.x; e < rows * HS; e += blockDim.x) {
        const int r = e / HS, d = e % HS;
        const int row = first + r;
        dst[r * pitch + d] = row < limit ? to_f32(src[(long long)row * stride + d]) : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(ROWS) attention_forward(
    bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qkv,
    int B, int T, int NH) {
    __shared__ float ks[KEY_TILE * HS];
    __shared__ float vs[KEY_TILE * HS];
    const int C = NH * HS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = blockIdx.x * ROWS;
    const int qi = q0 + threadIdx.x;
    const bool valid = qi < T;
    const float scale = rsqrtf((float)HS);
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HS;

    float q[HS], o[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) {
        q[d] = valid ? to_f32(base[(long long)qi * stride + d]) : 0.0f;
        o[d] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    const int last_key = min(q0 + ROWS, T);  // exclusive
    for (int k0 = 0; k0 < last_key; k0 += KEY_TILE) {
        __syncthreads();
        load_rows(ks, HS, base + C, stride, k0, KEY_TILE, T);
        load_rows(vs, HS, base + 2 * C, stride, k0, KEY_TILE, T);
        __syncthreads();
        float s[KEY_TILE];
        float tile_max = m;
#pragma unroll
        for (int j = 0; j < KEY_TILE; j++) {
            s[j] = NEG_INF;
            if (valid && k0 + j <= qi) {
                float dot = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; d++) dot += q[d] * ks[j * HS + d];
                s[j] = dot * scale;
                tile_max = fmaxf(tile_max, s[j]);
            }
        }
        if (tile_max == NEG_INF) continue;  // no visible key in this tile for this row
        const float correction = __expf(m - tile_max);  // 0 on the first tile (m = -inf)
        l *= correction;
#pragma unroll
        for (int d = 0; d < HS; d++) o[d] *= correction;
#pragma unroll
        for (int j = 0; j < KEY_TILE; j++) {
            const float p = s[j] == NEG_INF ? 0.0f : __expf(s[j] - tile_max);
            l += p;
#pragma unroll
            for (int d = 0; d < HS; d++) o[d] += p * vs[j * HS + d];
        }
        m = tile_max;
    }
    if (!valid) return;
    const float inv = 1.0f / l;
    bf16* o_row = out + ((long long)b * T + qi) * C + h * HS;
#pragma unroll
    for (int d = 0; d < HS; d++) o_row[d] = to_bf16(o[d] * inv);
    lse[(long long)bh * T + qi] = m + logf(l);
}

extern "C" __global__ void __launch_bounds__(256) attention_backward_preprocess(
    float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
    int B, int T, int NH) {
    const int lane = threadIdx.x % WARP_SIZE;
    const long long w = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (w >= (long long)B * T * NH) return;
    const long long bt = w / NH;
    const int h = (int)(w % NH);
    const long long at = bt * NH * HS + h * HS;
    float acc = 0.0f;
    for (int d = lane; d < HS; d += WARP_SIZE) acc += to_f32(dout[at + d]) * to_f32(out[at + d]);
    acc = warp_sum(acc);
    const long long b = bt / T, t = bt % T;
    if (lane == 0) delta[(b * NH + h) * T + t] = acc;
}

extern "C" __global__ void __launch_bounds__(2 * ROWS) attention_backward_dkdv(
    bf16* __restrict__ dqkv, const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
    const float* __restrict__ lse, const float* __restrict__ delta, int B, int T, int NH) {
    __shared__ float qs[QUERY_TILE * HS];
    __shared__ float dos[QUERY_TILE * HS];
    __shared__ float lse_s[QUERY_TILE];
    __shared__ float delta_s[QUERY_TILE];
    const int C = NH * HS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int k0 = blockIdx.x * ROWS;
    // Two threads per key row (adjacent lanes); `half` takes the even or odd channels, so the
    // pair reads neighbouring shared-memory words (no bank conflict) and k, v, dk, dv of a row
    // fit in registers without spilling.
    const int kj = k0 + threadIdx.x / 2, half = threadIdx.x % 2;
    const bool valid = kj < T;
    const float scale = rsqrtf((float)HS);
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HS;
    const bf16* dout_base = dout + (long long)b * T * C + h * HS;

    float k[HS / 2], v[HS / 2], dk[HS / 2], dv[HS / 2];
#pragma unroll
    for (int e = 0; e < HS / 2; e++) {
        const long long at = (long long)kj * stride + 2 * e + half;
        k[e] = valid ? to_f32(base[C + at]) : 0.0f;
        v[e] = valid ? to_f32(base[2 * C + at]) : 0.0f;
        dk[e] = dv[e] = 0.0f;
    }

    for (int q0 = k0; q0 < T; q0 += QUERY_TILE) {
        __syncthreads();
        load_rows(qs, HS, base, stride, q0, QUERY_TILE, T);
        load_rows(dos, HS, dout_base, C, q0, QUERY_TILE, T);
        for (int i = threadIdx.x; i < QUERY_TILE; i += blockDim.x) {
            const int row = q0 + i;
            lse_s[i] = row < T ? lse[(long long)bh * T + row] : 0.0f;
            delta_s[i] = row < T ? delta[(long long)bh * T + row] : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < QUERY_TILE; i++) {
            const int qi = q0 + i;
            // Both threads of a pair take the same branch (same kj), so the pair's shuffle
            // below always has its partner.
            const bool visible = valid && qi < T && kj <= qi;
            const float* q = qs + i * HS + half;
            const float* g = dos + i * HS + half;
            float s = 0.0f, dp = 0.0f;
            if (visible) {
#pragma unroll
                for (int e = 0; e < HS / 2; e++) {
                    s += q[2 * e] * k[e];
                    dp += g[2 * e] * v[e];
                }
            }
            // a + b == b + a in IEEE arithmetic: both threads of the pair get identical sums.
            s += __shfl_xor_sync(FULL_MASK, s, 1);
            dp += __shfl_xor_sync(FULL_MASK, dp, 1);
            if (!visible) continue;
            const float p = __expf(s * scale - lse_s[i]);
            const float ds = p * (dp - delta_s[i]) * scale;
#pragma unroll
            for (int e = 0; e < HS / 2; e++) {
                dv[e] += p * g[2 * e];
                dk[e] += ds * q[2 * e];
            }
        }
    }
    if (!valid) return;
    bf16* row = dqkv + ((long long)b * T + kj) * stride + h * HS;
#pragma unroll
    for (int e = 0; e < HS / 2; e++) {
        row[C + 2 * e + half] = to_bf16(dk[e]);
        row[2 * C + 2 * e + half] = to_bf16(dv[e]);
    }
}

extern "C" __global__ void __launch_bounds__(ROWS) attention_backward_dq(
    bf16* __restrict__ dqkv, const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
    const float* __restrict__ lse, const float* __restrict__ delta, int B, int T, int NH) {
    __shared__ float dos[ROWS * PAD];
    __shared__ float ks[KEY_TILE * HS];
    __shared__ float vs[KEY_TILE * HS];
    const int C = NH * HS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = blockIdx.x * ROWS;
    const int qi = q0 + threadIdx.x;
    const bool valid = qi < T;
    const float scale = rsqrtf((float)HS);
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HS;

    load_rows(dos, PAD, dout + (long long)b * T * C + h * HS, C, q0, ROWS, T);
    const float* g = dos + threadIdx.x * PAD;
    float q[HS], dq[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) {
        q[d] = valid ? to_f32(base[(long long)qi * stride + d]) : 0.0f;
        dq[d] = 0.0f;
    }
    const float lse_i = valid ? lse[(long long)bh * T + qi] : 0.0f;
    const float delta_i = valid ? delta[(long long)bh * T + qi] : 0.0f;

    const int last_key = min(q0 + ROWS, T);  // exclusive
    for (int k0 = 0; k0 < last_key; k0 += KEY_TILE) {
        __syncthreads();
        load_rows(ks, HS, base + C, stride, k0, KEY_TILE, T);
        load_rows(vs, HS, base + 2 * C, stride, k0, KEY_TILE, T);
        __syncthreads();
        for (int j = 0; j < KEY_TILE; j++) {
            if (!valid || k0 + j > qi) continue;
            const float* k = ks + j * HS;
            const float* v = vs + j * HS;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < HS; d++) {
                s += q[d] * k[d];
                dp += g[d] * v[d];
            }
            const float p = __expf(s * scale - lse_i);
            const float ds = p * (dp - delta_i) * scale;
#pragma unroll
            for (int d = 0; d < HS; d++) dq[d] += ds * k[d];
        }
    }
    if (!valid) return;
    bf16* row = dqkv + ((long long)b * T + qi) * stride + h * HS;
#pragma unroll
    for (int d = 0; d < HS; d++) row[d] = to_bf16(dq[d]);
}
