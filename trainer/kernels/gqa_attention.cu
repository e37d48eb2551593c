// gqa_attention.cu — causal grouped-query attention (the CPU reference is
// trainer/src/llama/attention.rs), flash-attention style: the T×T probabilities are never
// stored. q, out, dout, dq are (B, T, H, D); k, v, dk, dv are (B, T, KV, D); query head h reads
// key/value head h / (H/KV). Head size D ≤ MAX_D = 128, any value (the launcher refuses others);
// `scale` = 1/√D, computed by the launcher as the CPU reference computes it. Storage bf16,
// scores, softmax and every sum in fp32; lse and delta fp32.
//
// Layout of the work: one warp per row (a query row in the forward and dq, a key row in dkdv),
// WARPS = 8 rows of one (batch, head) per block. Tiles of TILE = 32 rows of the other operand
// are staged in shared memory (fp32, rows padded to 129 floats so that a lane per row reading
// one column is conflict-free); within a tile LANE j owns row j for the dot products, then the
// results are broadcast by shuffles (j ascending) into accumulators where lane l owns
// dimensions l, l+32, l+64, l+96 (registers, PER_LANE = 4).
//
// gqa_attention_forward   per query row i: online softmax over key tiles (running max m,
//                         running sum l, accumulator rescaled once per tile), out_i = Σ_j p_ij
//                         v_j / l and lse[b,h,i] = m + log l (B·H·T, the saved state).
//   grid (ceil(T / 8), B·H), block (256); shared memory: 8 q rows (8·128) + one key and one
//   value tile (2·32·129) fp32 = 36.3 KiB, static. Key tiles stop at the block's last row.
//
// Backward (OVERWRITES dq, dk, dv), recomputing p_ij = exp(q_i·k_j·scale - lse_i), with
// D_i = dout_i·out_i (= Σ_j p_ij dout_i·v_j) and ds_ij = p_ij (dout_i·v_j - D_i)·scale:
// gqa_attention_backward_preprocess   delta[b,h,i] = D_i (fp32, B·H·T; launcher scratch)
//   grid (ceil(B·T·H / 8)), block (256): one warp per (b, t, h), lanes strided over D.
// gqa_attention_backward_dq           dq_i = Σ_{j ≤ i} ds_ij k_j
//   grid (ceil(T / 8), B·H), block (256): one warp per query row, key tiles in order up to the
//   block's last row; shared memory: 8 q and 8 dout rows (2·8·128) + one k and one v tile
//   (2·32·129) fp32 = 40.3 KiB, static.
// gqa_attention_backward_dkdv         dk_j = Σ_{h in group(g)} Σ_{i ≥ j} ds_hij q_hi,
//                                     dv_j = Σ_{h in group(g)} Σ_{i ≥ j} p_hij dout_hi
//   grid (ceil(T / 8), B·KV), block (256): one warp per key row of kv head g; the block walks
//   the group's query heads in ascending order and, for each, the query tiles from its first
//   key row to T in order; shared memory: 8 k and 8 v rows (2·8·128) + one q and one dout
//   tile (2·32·129) + lse, delta (2·32) fp32 = 40.5 KiB, static.
// No atomics: every output element is written by one lane, with a fixed summation order, so
// results are bit-identical from run to run.
#include "common.cuh"

#define MAX_D 128
#define PER_LANE (MAX_D / WARP_SIZE)
#define WARPS 8     // rows per block (query rows: forward, dq; key rows: dkdv)
#define TILE 32     // rows per staged tile: one per lane
#define PITCH (MAX_D + 1)

// Rows first … first+TILE-1 of one head (D bf16 each, `stride` elements apart) into dst (fp32,
// row pitch PITCH), zero at rows ≥ limit. All threads of the block take part.
__device__ __forceinline__ void load_tile(float* dst, const bf16* src, long long stride,
                                          int first, int D, int limit) {
    for (int e = threadIdx.x; e < TILE * D; e += blockDim.x) {
        const int r = e / D, d = e - r * D;
        const int row = first + r;
        dst[r * PITCH + d] = row < limit ? to_f32(src[(long long)row * stride + d]) : 0.0f;
    }
}

// One row of D bf16 into dst (fp32), lane-strided: the calling warp's own row.
__device__ __forceinline__ void load_row(float* dst, const bf16* src, int D, bool valid, int lane) {
    for (int d = lane; d < D; d += WARP_SIZE) dst[d] = valid ? to_f32(src[d]) : 0.0f;
}

// Σ_d a[d]·b[d] in order of d, by one lane.
__device__ __forceinline__ float dot_row(const float* a, const float* b, int D) {
    float acc = 0.0f;
    for (int d = 0; d < D; d++) acc += a[d] * b[d];
    return acc;
}

extern "C" __global__ void __launch_bounds__(WARPS * WARP_SIZE) gqa_attention_forward(
    bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
    const bf16* __restrict__ k, const bf16* __restrict__ v, int B, int T, int H, int KV, int D,
    float scale) {
    __shared__ float qs[WARPS * MAX_D];
    __shared__ float ks[TILE * PITCH];
    __shared__ float vs[TILE * PITCH];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int g = h / (H / KV);
    const int q0 = blockIdx.x * WARPS;
    const int qi = q0 + warp;
    const bool valid = qi < T;
    const long long q_stride = (long long)H * D, kv_stride = (long long)KV * D;
    const bf16* k_base = k + (long long)b * T * kv_stride + (long long)g * D;
    const bf16* v_base = v + (long long)b * T * kv_stride + (long long)g * D;
    float* my_q = qs + warp * MAX_D;
    load_row(my_q, q + ((long long)b * T + qi) * q_stride + (long long)h * D, D, valid, lane);

    float o[PER_LANE];
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) o[e] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    const int last_key = min(q0 + WARPS, T);  // exclusive
    for (int k0 = 0; k0 < last_key; k0 += TILE) {
        __syncthreads();  // the previous tile's readers are done (and, first, my_q is written)
        load_tile(ks, k_base, kv_stride, k0, D, T);
        load_tile(vs, v_base, kv_stride, k0, D, T);
        __syncthreads();
        // Lane j scores key k0 + j (keys after the query are masked: causal).
        float s = NEG_INF;
        if (valid && k0 + lane <= qi) s = dot_row(my_q, ks + lane * PITCH, D) * scale;
        const float tile_max = warp_max(s);
        if (tile_max == NEG_INF) continue;  // no visible key: warp-uniform, after the barriers
        const float m_new = fmaxf(m, tile_max);
        const float correction = __expf(m - m_new);  // 0 on the first tile (m = -inf)
        const float p = s == NEG_INF ? 0.0f : __expf(s - m_new);
        l = l * correction + warp_sum(p);
        // Visible keys of the tile. Warp-uniform already; broadcasting it from lane 0 says so
        // to ptxas, which otherwise spills in this kernel (NVRTC 13.0, sm_90).
        const int keys = __shfl_sync(FULL_MASK, min(TILE, qi - k0 + 1), 0);
#pragma unroll
        for (int e = 0; e < PER_LANE; e++) o[e] *= correction;
        for (int j = 0; j < keys; j++) {
            const float pj = __shfl_sync(FULL_MASK, p, j);
            const float* vr = vs + j * PITCH;
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) {
                const int d = lane + e * WARP_SIZE;
                if (d < D) o[e] += pj * vr[d];
            }
        }
        m = m_new;
    }
    if (!valid) return;
    const float inv = 1.0f / l;
    bf16* o_row = out + ((long long)b * T + qi) * q_stride + (long long)h * D;
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int d = lane + e * WARP_SIZE;
        if (d < D) o_row[d] = to_bf16(o[e] * inv);
    }
    if (lane == 0) lse[(long long)bh * T + qi] = m + logf(l);
}

extern "C" __global__ void __launch_bounds__(256) gqa_attention_backward_preprocess(
    float* __restrict__ delta, const bf16* __restrict__ dout, const bf16* __restrict__ out,
    int B, int T, int H, int D) {
    const int lane = threadIdx.x % WARP_SIZE;
    // w = (b·T + t)·H + h: the row of out and dout.
    const long long w = (long long)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (w >= (long long)B * T * H) return;
    const long long at = w * D;
    float acc = 0.0f;
    for (int d = lane; d < D; d += WARP_SIZE) acc += to_f32(dout[at + d]) * to_f32(out[at + d]);
    acc = warp_sum(acc);
    const long long bt = w / H, b = bt / T, t = bt % T;
    const int h = (int)(w % H);
    if (lane == 0) delta[(b * H + h) * T + t] = acc;
}

extern "C" __global__ void __launch_bounds__(WARPS * WARP_SIZE) gqa_attention_backward_dq(
    bf16* __restrict__ dq, const bf16* __restrict__ dout, const bf16* __restrict__ q,
    const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
    const float* __restrict__ delta, int B, int T, int H, int KV, int D, float scale) {
    __shared__ float qs[WARPS * MAX_D];
    __shared__ float dos[WARPS * MAX_D];
    __shared__ float ks[TILE * PITCH];
    __shared__ float vs[TILE * PITCH];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int g = h / (H / KV);
    const int q0 = blockIdx.x * WARPS;
    const int qi = q0 + warp;
    const bool valid = qi < T;
    const long long q_stride = (long long)H * D, kv_stride = (long long)KV * D;
    const long long row_at = ((long long)b * T + qi) * q_stride + (long long)h * D;
    const bf16* k_base = k + (long long)b * T * kv_stride + (long long)g * D;
    const bf16* v_base = v + (long long)b * T * kv_stride + (long long)g * D;
    float* my_q = qs + warp * MAX_D;
    float* my_do = dos + warp * MAX_D;
    load_row(my_q, q + row_at, D, valid, lane);
    load_row(my_do, dout + row_at, D, valid, lane);
    const float lse_i = valid ? lse[(long long)bh * T + qi] : 0.0f;
    const float delta_i = valid ? delta[(long long)bh * T + qi] : 0.0f;

    float acc[PER_LANE];
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) acc[e] = 0.0f;
    const int last_key = min(q0 + WARPS, T);  // exclusive
    for (int k0 = 0; k0 < last_key; k0 += TILE) {
        __syncthreads();
        load_tile(ks, k_base, kv_stride, k0, D, T);
        load_tile(vs, v_base, kv_stride, k0, D, T);
        __syncthreads();
        const int keys = min(TILE, qi - k0 + 1);  // visible keys of the tile, warp-uniform
        if (!valid || keys <= 0) continue;
        float ds = 0.0f;
        if (lane < keys) {
            const float s = dot_row(my_q, ks + lane * PITCH, D) * scale;
            const float dp = dot_row(my_do, vs + lane * PITCH, D);
            const float p = __expf(s - lse_i);
            ds = p * (dp - delta_i) * scale;
        }
        for (int j = 0; j < keys; j++) {
            const float dsj = __shfl_sync(FULL_MASK, ds, j);
            const float* kr = ks + j * PITCH;
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) {
                const int d = lane + e * WARP_SIZE;
                if (d < D) acc[e] += dsj * kr[d];
            }
        }
    }
    if (!valid) return;
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int d = lane + e * WARP_SIZE;
        if (d < D) dq[row_at + d] = to_bf16(acc[e]);
    }
}

extern "C" __global__ void __launch_bounds__(WARPS * WARP_SIZE) gqa_attention_backward_dkdv(
    bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
    const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, int B, int T, int H, int KV,
    int D, float scale) {
    __shared__ float krs[WARPS * MAX_D];
    __shared__ float vrs[WARPS * MAX_D];
    __shared__ float qs[TILE * PITCH];
    __shared__ float dos[TILE * PITCH];
    __shared__ float lse_s[TILE];
    __shared__ float delta_s[TILE];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int bg = blockIdx.y, b = bg / KV, g = bg % KV;
    const int group = H / KV;
    const int k0 = blockIdx.x * WARPS;
    const int kj = k0 + warp;
    const bool valid = kj < T;
    const long long q_stride = (long long)H * D, kv_stride = (long long)KV * D;
    const long long row_at = ((long long)b * T + kj) * kv_stride + (long long)g * D;
    float* my_k = krs + warp * MAX_D;
    float* my_v = vrs + warp * MAX_D;
    load_row(my_k, k + row_at, D, valid, lane);
    load_row(my_v, v + row_at, D, valid, lane);

    float dk_acc[PER_LANE], dv_acc[PER_LANE];
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) dk_acc[e] = dv_acc[e] = 0.0f;
    for (int hh = 0; hh < group; hh++) {
        const int h = g * group + hh;
        const long long bh = (long long)b * H + h;
        const bf16* q_base = q + (long long)b * T * q_stride + (long long)h * D;
        const bf16* do_base = dout + (long long)b * T * q_stride + (long long)h * D;
        for (int q0 = k0; q0 < T; q0 += TILE) {
            __syncthreads();
            load_tile(qs, q_base, q_stride, q0, D, T);
            load_tile(dos, do_base, q_stride, q0, D, T);
            for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
                const int row = q0 + i;
                lse_s[i] = row < T ? lse[bh * T + row] : 0.0f;
                delta_s[i] = row < T ? delta[bh * T + row] : 0.0f;
            }
            __syncthreads();
            if (!valid) continue;
            // Query rows q0 + j with j in [first, end) see this key (causal, inside T).
            const int first = max(0, kj - q0), end = min(TILE, T - q0);
            if (first >= end) continue;
            float p = 0.0f, ds = 0.0f;
            if (lane >= first && lane < end) {
                const float s = dot_row(qs + lane * PITCH, my_k, D) * scale;
                const float dp = dot_row(dos + lane * PITCH, my_v, D);
                p = __expf(s - lse_s[lane]);
                ds = p * (dp - delta_s[lane]) * scale;
            }
            for (int j = first; j < end; j++) {
                const float pj = __shfl_sync(FULL_MASK, p, j);
                const float dsj = __shfl_sync(FULL_MASK, ds, j);
                const float* qr = qs + j * PITCH;
                const float* gr = dos + j * PITCH;
#pragma unroll
                for (int e = 0; e < PER_LANE; e++) {
                    const int d = lane + e * WARP_SIZE;
                    if (d < D) {
                        dv_acc[e] += pj * gr[d];
                        dk_acc[e] += dsj * qr[d];
                    }
                }
            }
        }
    }
    if (!valid) return;
#pragma unroll
    for (int e = 0; e < PER_LANE; e++) {
        const int d = lane + e * WARP_SIZE;
        if (d < D) {
            dk[row_at + d] = to_bf16(dk_acc[e]);
            dv[row_at + d] = to_bf16(dv_acc[e]);
        }
    }
}
