// rope.cu — rotary position embedding (the CPU reference is rotate_by in
// trainer/src/llama/rope.rs), in place on bf16 x (B, T, H, D), angles from fp32 tables cos and
// sin of shape (≥T, D/2), fp32 arithmetic, one bf16 rounding per output.
//
// rope_rotate   Hugging Face's rotate_half layout: dimension i of each head pairs with i + D/2,
//                 lo' = lo·cos - hi·(sign·sin)      hi' = hi·cos + lo·(sign·sin)
//               at position t's angle i; sign = +1 rotates (forward), -1 rotates back (the
//               backward pass: the transpose of a rotation is its inverse).
//   grid (ceil(B·T·H·D/2 / 256)), block (256), no shared memory; one thread per pair, which
//   reads and writes only its own two elements (no ordering between threads matters).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) rope_rotate(
    bf16* __restrict__ x, const float* __restrict__ cos_table, const float* __restrict__ sin_table,
    int B, int T, int H, int half, float sign) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long pairs = (long long)B * T * H * half;
    if (idx >= pairs) return;
    const int i = (int)(idx % half);
    const long long head = idx / half;  // (b·T + t)·H + h
    const int t = (int)((head / H) % T);
    const long long lo_at = head * 2 * half + i, hi_at = lo_at + half;
    const float c = cos_table[(long long)t * half + i];
    const float s = sign * sin_table[(long long)t * half + i];
    const float lo = to_f32(x[lo_at]), hi = to_f32(x[hi_at]);
    x[lo_at] = to_bf16(lo * c - hi * s);
    x[hi_at] = to_bf16(hi * c + lo * s);
}
