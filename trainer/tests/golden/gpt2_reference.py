#!/usr/bin/env python3
"""Independent NumPy (float64) reference for Tessera's GPT-2: forward, hand-written backward,
and AdamW. Writes fixture.json next to this file; trainer/tests/golden.rs checks the Rust
trainer against it. Not run in CI; rerun with `python3 gpt2_reference.py` after changing it.

Conventions: Linear weights are (out_features, in_features) as in PyTorch; the output head is
tied to the token embedding; LayerNorm eps 1e-5; GELU tanh approximation.
"""
import json
import math
import os

import numpy as np

L, NH, C, T, V = 2, 2, 16, 8, 32
B = 2
SEED = 20240611
ADAM = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
            warmup_steps=2, total_steps=5, min_lr_ratio=0.1)
STEPS = 5
LN_EPS = 1e-5

rng = np.random.default_rng(SEED)


def normal(shape, std):
    return rng.normal(0.0, std, size=shape)


params = {
    "wte": normal((V, C), 0.1),
    "wpe": normal((T, C), 0.1),
    "ln1w": 1.0 + normal((L, C), 0.1),
    "ln1b": normal((L, C), 0.1),
    "qkvw": normal((L, 3 * C, C), 0.1),
    "qkvb": normal((L, 3 * C), 0.02),
    "attprojw": normal((L, C, C), 0.1),
    "attprojb": normal((L, C), 0.02),
    "ln2w": 1.0 + normal((L, C), 0.1),
    "ln2b": normal((L, C), 0.1),
    "fcw": normal((L, 4 * C, C), 0.1),
    "fcb": normal((L, 4 * C), 0.02),
    "fcprojw": normal((L, C, 4 * C), 0.1),
    "fcprojb": normal((L, C), 0.02),
    "lnfw": 1.0 + normal((C,), 0.1),
    "lnfb": normal((C,), 0.1),
}
inputs = rng.integers(0, V, size=(B, T))
targets = rng.integers(0, V, size=(B, T))
initial = {k: v.copy() for k, v in params.items()}


# --- building blocks, each returning what its backward needs ---

def layernorm(x, w, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + LN_EPS)
    xhat = (x - mu) * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_back(dy, cache):
    xhat, rstd, w = cache
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    dw = (dy * xhat).reshape(-1, dy.shape[-1]).sum(0)
    db = dy.reshape(-1, dy.shape[-1]).sum(0)
    return dx, dw, db


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_back(dy, x):
    s = math.sqrt(2.0 / math.pi)
    u = s * (x + 0.044715 * x ** 3)
    th = np.tanh(u)
    return dy * (0.5 * (1 + th) + 0.5 * x * (1 - th ** 2) * s * (1 + 3 * 0.044715 * x ** 2))


def heads(x):  # (B,T,C) -> (B,NH,T,hs)
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def unheads(x):  # (B,NH,T,hs) -> (B,T,C)
    return x.transpose(0, 2, 1, 3).reshape(B, T, C)


MASK = np.triu(np.ones((T, T), dtype=bool), k=1)


def attention(qkv):
    q, k, v = (heads(a) for a in np.split(qkv, 3, axis=-1))
    scale = 1.0 / math.sqrt(C // NH)
    s = q @ k.transpose(0, 1, 3, 2) * scale
    s = np.where(MASK, -np.inf, s)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return unheads(p @ v), (q, k, v, p, scale)


def attention_back(dy, cache):
    q, k, v, p, scale = cache
    dyh = heads(dy)
    dv = p.transpose(0, 1, 3, 2) @ dyh
    dp = dyh @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    return np.concatenate([unheads(dq), unheads(dk), unheads(dv)], axis=-1)


def forward_backward(P):
    g = {k: np.zeros_like(v) for k, v in P.items()}
    x = P["wte"][inputs] + P["wpe"][None, :T]
    caches = []
    for l in range(L):
        h1, c1 = layernorm(x, P["ln1w"][l], P["ln1b"][l])
        qkv = h1 @ P["qkvw"][l].T + P["qkvb"][l]
        y, ca = attention(qkv)
        x2 = x + y @ P["attprojw"][l].T + P["attprojb"][l]
        h2, c2 = layernorm(x2, P["ln2w"][l], P["ln2b"][l])
        f = h2 @ P["fcw"][l].T + P["fcb"][l]
        gf = gelu(f)
        x3 = x2 + gf @ P["fcprojw"][l].T + P["fcprojb"][l]
        caches.append((h1, c1, y, ca, h2, c2, f, gf))
        x = x3
    xf, cf = layernorm(x, P["lnfw"], P["lnfb"])
    logits = xf @ P["wte"].T
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    losses = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    loss = losses.mean()

    # backward
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None],
                      np.take_along_axis(dlogits, targets[..., None], -1) - 1.0, -1)
    dlogits /= B * T
    g["wte"] += dlogits.reshape(-1, V).T @ xf.reshape(-1, C)
    dxf = dlogits @ P["wte"]
    dx, g["lnfw"], g["lnfb"] = layernorm_back(dxf, cf)
    for l in reversed(range(L)):
        h1, c1, y, ca, h2, c2, f, gf = caches[l]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        # MLP
        g["fcprojw"][l] = flat(dx).T @ flat(gf)
        g["fcprojb"][l] = flat(dx).sum(0)
        dgf = dx @ P["fcprojw"][l]
        df = gelu_back(dgf, f)
        g["fcw"][l] = flat(df).T @ flat(h2)
        g["fcb"][l] = flat(df).sum(0)
        dh2 = df @ P["fcw"][l]
        dx2, g["ln2w"][l], g["ln2b"][l] = layernorm_back(dh2, c2)
        dx = dx + dx2
        # attention
        g["attprojw"][l] = flat(dx).T @ flat(y)
        g["attprojb"][l] = flat(dx).sum(0)
        dy = dx @ P["attprojw"][l]
        dqkv = attention_back(dy, ca)
        g["qkvw"][l] = flat(dqkv).T @ flat(h1)
        g["qkvb"][l] = flat(dqkv).sum(0)
        dh1 = dqkv @ P["qkvw"][l]
        dx1, g["ln1w"][l], g["ln1b"][l] = layernorm_back(dh1, c1)
        dx = dx + dx1
    np.add.at(g["wte"], inputs.reshape(-1), dx.reshape(-1, C))
    g["wpe"][:T] += dx.sum(0)
    return loss, g


def lr_at(step):
    a = ADAM
    if step < a["warmup_steps"]:
        return a["lr"] * (step + 1) / a["warmup_steps"]
    progress = min(1.0, (step - a["warmup_steps"]) / max(1, a["total_steps"] - a["warmup_steps"]))
    min_lr = a["lr"] * a["min_lr_ratio"]
    return min_lr + (a["lr"] - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


DECAYED = {"qkvw", "attprojw", "fcw", "fcprojw"}  # matmul weights; not embeddings/biases/LN


def finite_difference_spot_check(P, g):
    """Guards the reference itself: a few entries of its gradient against central differences."""
    for name in ["qkvw", "ln1w", "wte", "fcb"]:
        flat = P[name].reshape(-1)
        for i in [0, flat.size // 3, flat.size - 1]:
            orig = flat[i]
            flat[i] = orig + 1e-6
            lp, _ = forward_backward(P)
            flat[i] = orig - 1e-6
            lm, _ = forward_backward(P)
            flat[i] = orig
            num = (lp - lm) / 2e-6
            ana = g[name].reshape(-1)[i]
            assert abs(num - ana) <= 1e-7 + 1e-5 * abs(num), (name, i, num, ana)


loss0, grads0 = forward_backward(params)
finite_difference_spot_check(params, grads0)

a = ADAM
m = {k: np.zeros_like(v) for k, v in params.items()}
vv = {k: np.zeros_like(v) for k, v in params.items()}
step_losses, grad_norms, lrs = [], [], []
for step in range(STEPS):
    loss, g = forward_backward(params)
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    scale = a["grad_clip"] / norm if a["grad_clip"] > 0 and norm > a["grad_clip"] else 1.0
    lr = lr_at(step)
    t = step + 1
    for k in params:
        gk = g[k] * scale
        m[k] = a["beta1"] * m[k] + (1 - a["beta1"]) * gk
        vv[k] = a["beta2"] * vv[k] + (1 - a["beta2"]) * gk ** 2
        mhat = m[k] / (1 - a["beta1"] ** t)
        vhat = vv[k] / (1 - a["beta2"] ** t)
        wd = a["weight_decay"] if k in DECAYED else 0.0
        params[k] = params[k] - lr * (mhat / (np.sqrt(vhat) + a["eps"]) + wd * params[k])
    step_losses.append(float(loss))
    grad_norms.append(norm)
    lrs.append(lr)
final_loss, _ = forward_backward(params)


def tolist(x):
    return [float(f"{v:.9g}") for v in np.asarray(x).reshape(-1)]


fixture = {
    "version": 1,
    "note": "Generated by gpt2_reference.py (NumPy float64). Weights flattened row-major.",
    "config": dict(layers=L, heads=NH, width=C, context=T, vocab=V, batch=B, seq_len=T),
    "adamw": ADAM,
    "inputs": inputs.reshape(-1).tolist(),
    "targets": targets.reshape(-1).tolist(),
    "params": {k: tolist(v) for k, v in initial.items()},
    "loss": float(loss0),
    "grad_norms": {k: float(np.sqrt((v ** 2).sum())) for k, v in grads0.items()},
    "grads": {k: tolist(grads0[k]) for k in ["wte", "wpe", "qkvw", "ln1w", "fcprojb", "lnfb"]},
    "step_losses": step_losses,
    "step_grad_norms": grad_norms,
    "step_lrs": lrs,
    "final_loss": float(final_loss),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixture.json")
with open(out, "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
print(f"loss {loss0:.6f}; step losses {[round(x, 6) for x in step_losses]}; "
      f"grad norms {[round(x, 4) for x in grad_norms]}; final {final_loss:.6f}; wrote {out}")
