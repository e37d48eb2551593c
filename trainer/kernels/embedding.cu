// embedding.cu — token + position embedding (GPT-2) and token-only embedding (the Llama family,
// which rotates q and k instead of adding positions), forward and backward (bf16 storage, fp32
// sums).
//
// encoder_forward        out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
//   grid  (ceil(B*T*C / 256)), block (256), no shared memory; one thread per output element.
// encoder_backward_wpe   dwpe[t,c] += Σ_b dout[b,t,c]   (b in ascending order)
//   grid  (ceil(T*C / 256)), block (256), no shared memory; one thread per (t, c).
// encoder_backward_wte   dwte[v,c] += Σ_{p in bucket(v)} dout[p,c]   (p in ascending order)
//   grid  (U, ceil(C / 256)), block (256), no shared memory; block row u owns vocab row
//   bucket_token[u], so every dwte element is written by exactly one thread: no atomics.
//   The buckets are a CSR of the positions of each distinct token (bucket_start has U + 1
//   entries, positions ascending within a bucket), built by the launcher from the host copy
//   of the tokens it uploaded (a counting sort), so the sum order is fixed. It is also the
//   backward of embedding_forward (dwte[tokens[r],:] += dout[r,:]): the same sum.
// embedding_forward      out[r,:] = wte[tokens[r],:]   (an exact bf16 copy)
//   grid (ceil(N·C / 256)), block (256), no shared memory; one thread per output element.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) encoder_forward(
    bf16* __restrict__ out, const unsigned int* __restrict__ tokens,
    const bf16* __restrict__ wte, const bf16* __restrict__ wpe, int B, int T, int C) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)B * T * C;
    if (idx >= total) return;
    const long long bt = idx / C;
    const int c = (int)(idx % C);
    const int t = (int)(bt % T);
    const long long token = tokens[bt];
    out[idx] = to_bf16(to_f32(wte[token * C + c]) + to_f32(wpe[(long long)t * C + c]));
}

extern "C" __global__ void __launch_bounds__(256) encoder_backward_wpe(
    bf16* __restrict__ dwpe, const bf16* __restrict__ dout, int B, int T, int C) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)T * C) return;
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += to_f32(dout[(long long)b * T * C + idx]);
    dwpe[idx] = to_bf16(to_f32(dwpe[idx]) + acc);
}

extern "C" __global__ void __launch_bounds__(256) encoder_backward_wte(
    bf16* __restrict__ dwte, const bf16* __restrict__ dout,
    const unsigned int* __restrict__ bucket_token, const unsigned int* __restrict__ bucket_start,
    const unsigned int* __restrict__ bucket_position, int C) {
    const int u = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (unsigned int i = bucket_start[u]; i < bucket_start[u + 1]; i++)
        acc += to_f32(dout[(long long)bucket_position[i] * C + c]);
    const long long out = (long long)bucket_token[u] * C + c;
    dwte[out] = to_bf16(to_f32(dwte[out]) + acc);
}

extern "C" __global__ void __launch_bounds__(256) embedding_forward(
    bf16* __restrict__ out, const unsigned int* __restrict__ tokens,
    const bf16* __restrict__ wte, int N, int C) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * C) return;
    const long long token = tokens[idx / C];
    out[idx] = wte[token * C + idx % C];
}
