// adamw.cu — multi-tensor AdamW over a rank's owned range of the flat parameter space.
//
// State: fp32 master weights, fp32 first/second moments (m, v), each the length of the owned
// range; the bf16 parameters are a copy of the master weights rounded to nearest-even
// (__float2bfloat16_rn). The update is the CPU backend's adamw.rs, elementwise in fp32:
//   g = grad·grad_scale                    (global-norm clipping folds into grad_scale)
//   m = β1·m + (1 - β1)·g,   v = β2·v + (1 - β2)·g²
//   m̂ = m / (1 - β1^t),      v̂ = v / (1 - β2^t)   (bias_correction1/2, from the host, t 1-based)
//   p = p - lr·(m̂ / (√v̂ + eps) + wd·p)      decoupled weight decay, scaled by lr (AdamW);
//                                          wd is per tensor: optimizer.rs decays matmul weights
//                                          (and embeddings with decay_embeddings), never biases
//                                          or LayerNorm parameters — the launcher passes 0 there.
// Multi-tensor: one launch updates every tensor of the owned range. Tensor i covers local
// indices [tensor_start[i], tensor_start[i] + tensor_len[i]) of every buffer (params and grads
// pointers are offset by the launcher to the owned range's start) with decay tensor_decay[i].
//   grid (blocks_per_tensor, num_tensors), block (256), no shared memory; blockIdx.y picks the
//   tensor and blocks stride over it. Every element is updated by exactly one thread.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) adamw_update(
    bf16* __restrict__ params, const bf16* __restrict__ grads, float* __restrict__ master,
    float* __restrict__ m, float* __restrict__ v,
    const unsigned long long* __restrict__ tensor_start,
    const unsigned long long* __restrict__ tensor_len, const float* __restrict__ tensor_decay,
    float lr, float beta1, float beta2, float eps, float grad_scale,
    float bias_correction1, float bias_correction2) {
    const unsigned long long start = tensor_start[blockIdx.y];
    const unsigned long long len = tensor_len[blockIdx.y];
    const float wd = tensor_decay[blockIdx.y];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < len; j += stride) {
        const unsigned long long i = start + j;
        const float g = to_f32(grads[i]) * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        const float m_hat = mi / bias_correction1;
        const float v_hat = vi / bias_correction2;
        float p = master[i];
        p -= lr * (m_hat / (sqrtf(v_hat) + eps) + wd * p);
        m[i] = mi;
        v[i] = vi;
        master[i] = p;
        params[i] = __float2bfloat16_rn(p);
    }
}
