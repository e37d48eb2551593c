//! The CUDA backend against the CPU backend: every kernel family, one training step of a
//! whole model, run-to-run determinism, and bit-exact resume through the trainer binary.
//!
//! On a machine without an NVIDIA GPU every GPU test prints `SKIPPED (no NVIDIA GPU)` and
//! returns; with `TESSERA_REQUIRE_GPU=1` (the GPU benchmark machine) a missing GPU fails them
//! instead. What runs everywhere: the comparison harness itself, CPU against CPU (so a broken
//! harness cannot pass GPU runs), and the clear refusal of `--device cuda` without a GPU.
//!
//! Tolerances, per output precision (inputs are rounded to bf16 first, so both backends see
//! the same values):
//! - bf16 outputs: |gpu − cpu| ≤ 2⁻⁷·|cpu| + 2⁻⁸·max|cpu| elementwise (one bf16 rounding of
//!   the output, and of the accumulated-into value where the kernel adds, plus fp32 order);
//! - fp32 outputs (layernorm mean/rstd, RMSNorm rstd, losses, AdamW state):
//!   |gpu − cpu| ≤ 1e-4·|cpu| + 1e-5·max|cpu|;
//! - exact copies (the Llama embedding's forward, fill_zero): bit-equal;
//! - a whole model step: loss within 1e-2 relative, gradient norm within 5e-2 relative, and
//!   the gradient's cosine similarity with the CPU's at least 0.99 (bf16 activations through
//!   every layer).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use tessera_trainer::lm::LanguageModel;

use tessera_trainer::backend::{
    AdamWStep, AttentionShape, Backend, BackendError, GqaShape, MatmulShape, RopeShape,
    cpu::CpuBackend,
    cuda::{CudaBackend, gpu_count, memory::round_to_bf16},
};
use tessera_trainer::config::ModelConfig;
use tessera_trainer::model::Gpt;
use tessera_trainer::optimizer::{AdamW, AdamWConfig};

// === the harness ===

/// The GPU, or `None` after saying why the test is skipped.
fn gpu(test: &str) -> Option<CudaBackend> {
    if gpu_count() == 0 {
        assert!(
            std::env::var_os("TESSERA_REQUIRE_GPU").is_none(),
            "{test}: TESSERA_REQUIRE_GPU is set but the NVIDIA driver reports no GPU"
        );
        eprintln!("{test}: SKIPPED (no NVIDIA GPU on this machine)");
        return None;
    }
    Some(CudaBackend::new(0).unwrap_or_else(|e| panic!("{test}: the CUDA backend: {e}")))
}

/// How close a device's output must be to the CPU's.
#[derive(Clone, Copy, Debug)]
struct Tol {
    /// Elementwise, relative to the CPU value.
    rel: f64,
    /// Elementwise, relative to the largest CPU value.
    abs_of_max: f64,
}

const BF16: Tol = Tol {
    rel: 1.0 / 128.0,
    abs_of_max: 1.0 / 256.0,
};
const FP32: Tol = Tol {
    rel: 1e-4,
    abs_of_max: 1e-5,
};
/// CPU against itself: the harness must see identical results.
const SAME: Tol = Tol {
    rel: 0.0,
    abs_of_max: 0.0,
};

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let max = want.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    assert!(
        want.iter().all(|v| v.is_finite()),
        "{what}: the CPU reference is not finite"
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(g), f64::from(w));
        let limit = tol.rel * w.abs() + tol.abs_of_max * max;
        assert!(
            (g - w).abs() <= limit,
            "{what}[{i}]: device {g} vs cpu {w} (|Δ| {} > {limit}; max |cpu| {max})",
            (g - w).abs()
        );
    }
}

/// Values ~ N(0, std²), rounded to bf16.
fn randn(seed: u64, n: usize, std: f64) -> Vec<f32> {
    let mut v = common::to_f32(&common::randn(seed, n, std));
    round_to_bf16(&mut v);
    v
}

fn upload<B: Backend>(be: &B, host: &[f32]) -> B::Buf {
    let mut buf = be.alloc(host.len()).unwrap();
    be.upload(&mut buf, 0, host).unwrap();
    buf
}

fn upload_f32<B: Backend>(be: &B, host: &[f32]) -> B::Buf {
    let mut buf = be.alloc_f32(host.len()).unwrap();
    be.upload(&mut buf, 0, host).unwrap();
    buf
}

fn host<B: Backend>(be: &B, buf: &B::Buf) -> Vec<f32> {
    let mut out = vec![0.0; be.buf_len(buf)];
    be.download(buf, 0, &mut out).unwrap();
    out
}

fn all<B: Backend>(be: &B, buf: &B::Buf) -> std::ops::Range<usize> {
    0..be.buf_len(buf)
}

// === one function per kernel family: outputs of the family on backend B ===

fn embedding<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let (b, t, c, vp) = (3, 37, 64, 96);
    let tokens = common::tokens(11, b * t, 90);
    let wte = upload(be, &randn(12, vp * c, 1.0));
    let wpe = upload(be, &randn(13, t * c, 1.0));
    let dout = upload(be, &randn(14, b * t * c, 1.0));
    let mut toks = be.alloc_tokens(b * t).unwrap();
    be.upload_tokens(&mut toks, &tokens).unwrap();
    let mut out = be.alloc(b * t * c).unwrap();
    let r = all(be, &out);
    be.encoder_forward(
        be.view_mut(&mut out, r).unwrap(),
        &toks,
        be.view(&wte, 0..vp * c).unwrap(),
        be.view(&wpe, 0..t * c).unwrap(),
        b,
        t,
        c,
    )
    .unwrap();
    // Accumulates into existing gradients.
    let mut dwte = upload(be, &randn(15, vp * c, 0.1));
    let mut dwpe = upload(be, &randn(16, t * c, 0.1));
    let (rw, rp) = (all(be, &dwte), all(be, &dwpe));
    be.encoder_backward(
        be.view_mut(&mut dwte, rw).unwrap(),
        be.view_mut(&mut dwpe, rp).unwrap(),
        be.view(&dout, 0..b * t * c).unwrap(),
        &toks,
        b,
        t,
        c,
    )
    .unwrap();
    vec![
        ("encoder out", host(be, &out), BF16),
        ("dwte", host(be, &dwte), BF16),
        ("dwpe", host(be, &dwpe), BF16),
    ]
}

fn layernorm<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let (rows, c) = (75, 192);
    let x = upload(be, &randn(21, rows * c, 2.0));
    let w = upload(be, &randn(22, c, 1.0));
    let bias = upload(be, &randn(23, c, 1.0));
    let dout = upload(be, &randn(24, rows * c, 1.0));
    let mut out = be.alloc(rows * c).unwrap();
    let mut mean = be.alloc_f32(rows).unwrap();
    let mut rstd = be.alloc_f32(rows).unwrap();
    be.layernorm_forward(
        be.view_mut(&mut out, 0..rows * c).unwrap(),
        be.view_mut(&mut mean, 0..rows).unwrap(),
        be.view_mut(&mut rstd, 0..rows).unwrap(),
        be.view(&x, 0..rows * c).unwrap(),
        be.view(&w, 0..c).unwrap(),
        be.view(&bias, 0..c).unwrap(),
        rows,
        c,
    )
    .unwrap();
    let mut dx = upload(be, &randn(25, rows * c, 0.1));
    let mut dw = upload(be, &randn(26, c, 0.1));
    let mut db = upload(be, &randn(27, c, 0.1));
    be.layernorm_backward(
        be.view_mut(&mut dx, 0..rows * c).unwrap(),
        be.view_mut(&mut dw, 0..c).unwrap(),
        be.view_mut(&mut db, 0..c).unwrap(),
        be.view(&dout, 0..rows * c).unwrap(),
        be.view(&x, 0..rows * c).unwrap(),
        be.view(&w, 0..c).unwrap(),
        be.view(&mean, 0..rows).unwrap(),
        be.view(&rstd, 0..rows).unwrap(),
        rows,
        c,
    )
    .unwrap();
    vec![
        ("layernorm out", host(be, &out), BF16),
        ("mean", host(be, &mean), FP32),
        ("rstd", host(be, &rstd), FP32),
        ("dinp", host(be, &dx), BF16),
        ("dweight", host(be, &dw), BF16),
        ("dbias", host(be, &db), BF16),
    ]
}

fn matmul<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let (m, n, k) = (70, 96, 136);
    let mut outs = Vec::new();
    let names = ["a·b", "a·bᵀ", "aᵀ·b", "aᵀ·bᵀ"];
    for (i, (at, bt)) in [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        let shape = MatmulShape {
            m,
            n,
            k,
            a_transposed: at,
            b_transposed: bt,
        };
        let a = upload(be, &randn(31 + i as u64, m * k, 1.0));
        let b = upload(be, &randn(41 + i as u64, k * n, 1.0));
        let bias = upload(be, &randn(51 + i as u64, n, 1.0));
        let mut out = be.alloc(m * n).unwrap();
        be.matmul(
            be.view_mut(&mut out, 0..m * n).unwrap(),
            be.view(&a, 0..m * k).unwrap(),
            be.view(&b, 0..k * n).unwrap(),
            Some(be.view(&bias, 0..n).unwrap()),
            shape,
            false,
        )
        .unwrap();
        outs.push((names[i], host(be, &out), BF16));
        // += without bias, into the result above.
        be.matmul(
            be.view_mut(&mut out, 0..m * n).unwrap(),
            be.view(&a, 0..m * k).unwrap(),
            be.view(&b, 0..k * n).unwrap(),
            None,
            shape,
            true,
        )
        .unwrap();
        outs.push(("accumulated", host(be, &out), BF16));
    }
    let (rows, cols) = (300, 72);
    let dout = upload(be, &randn(61, rows * cols, 1.0));
    let mut dbias = upload(be, &randn(62, cols, 1.0));
    be.bias_backward(
        be.view_mut(&mut dbias, 0..cols).unwrap(),
        be.view(&dout, 0..rows * cols).unwrap(),
        rows,
        cols,
    )
    .unwrap();
    outs.push(("dbias", host(be, &dbias), BF16));
    outs
}

fn attention<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    // T not a multiple of the 64-row tiles; two heads of 64.
    let s = AttentionShape {
        batch: 2,
        seq_len: 70,
        channels: 128,
        heads: 2,
    };
    let btc = s.batch * s.seq_len * s.channels;
    let qkv = upload(be, &randn(71, 3 * btc, 1.0));
    let dout = upload(be, &randn(72, btc, 1.0));
    let mut out = be.alloc(btc).unwrap();
    let mut state = be.alloc_f32(be.attention_state_len(s)).unwrap();
    let rs = all(be, &state);
    be.attention_forward(
        be.view_mut(&mut out, 0..btc).unwrap(),
        be.view_mut(&mut state, rs.clone()).unwrap(),
        be.view(&qkv, 0..3 * btc).unwrap(),
        s,
    )
    .unwrap();
    let mut scratch = be.alloc_f32(be.attention_scratch_len(s)).unwrap();
    let rsc = all(be, &scratch);
    let mut dqkv = be.alloc(3 * btc).unwrap();
    be.attention_backward(
        be.view_mut(&mut dqkv, 0..3 * btc).unwrap(),
        be.view_mut(&mut scratch, rsc).unwrap(),
        be.view(&dout, 0..btc).unwrap(),
        be.view(&qkv, 0..3 * btc).unwrap(),
        be.view(&out, 0..btc).unwrap(),
        be.view(&state, rs).unwrap(),
        s,
    )
    .unwrap();
    // The saved state differs by design (probabilities on the CPU, log-sum-exp on the GPU):
    // only outputs and gradients are compared.
    vec![
        ("attention out", host(be, &out), BF16),
        ("dqkv", host(be, &dqkv), BF16),
    ]
}

fn pointwise<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let n = 5000;
    let x = upload(be, &randn(81, n, 2.0));
    let y = upload(be, &randn(82, n, 1.0));
    let mut g = be.alloc(n).unwrap();
    be.gelu_forward(
        be.view_mut(&mut g, 0..n).unwrap(),
        be.view(&x, 0..n).unwrap(),
    )
    .unwrap();
    let mut dg = be.alloc(n).unwrap();
    be.gelu_backward(
        be.view_mut(&mut dg, 0..n).unwrap(),
        be.view(&x, 0..n).unwrap(),
        be.view(&y, 0..n).unwrap(),
    )
    .unwrap();
    let mut r = be.alloc(n).unwrap();
    be.residual_forward(
        be.view_mut(&mut r, 0..n).unwrap(),
        be.view(&x, 0..n).unwrap(),
        be.view(&y, 0..n).unwrap(),
    )
    .unwrap();
    let mut scaled = upload(be, &randn(83, n, 1.0));
    be.scale(be.view_mut(&mut scaled, 0..n).unwrap(), 0.37)
        .unwrap();
    let mut stats = upload_f32(be, &randn(84, n, 1.0));
    be.scale(be.view_mut(&mut stats, 0..n).unwrap(), -1.5)
        .unwrap();
    let mut zeroed = upload(be, &randn(85, n, 1.0));
    be.fill_zero(be.view_mut(&mut zeroed, 10..n - 10).unwrap())
        .unwrap();
    // LoRA dropout: the same mask from the same key and offset on both backends, added onto y.
    let mut dropped = upload(be, &randn(86, n, 1.0));
    be.dropout(
        be.view_mut(&mut dropped, 0..n).unwrap(),
        be.view(&x, 0..n).unwrap(),
        0.3,
        0x5eed,
        12_345,
        true,
    )
    .unwrap();
    vec![
        ("dropout", host(be, &dropped), BF16),
        ("gelu", host(be, &g), BF16),
        ("gelu backward", host(be, &dg), BF16),
        ("residual", host(be, &r), BF16),
        ("scale bf16", host(be, &scaled), BF16),
        ("scale fp32", host(be, &stats), FP32),
        ("fill_zero", host(be, &zeroed), SAME),
    ]
}

fn softmax_xent<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let (rows, v, vp) = (40, 1000, 1024);
    let mut logits = upload(be, &randn(91, rows * vp, 3.0));
    let mut targets = be.alloc_tokens(rows).unwrap();
    be.upload_tokens(&mut targets, &common::tokens(92, rows, v as u32))
        .unwrap();
    let mut losses = be.alloc_f32(rows).unwrap();
    be.softmax_cross_entropy(
        be.view_mut(&mut logits, 0..rows * vp).unwrap(),
        be.view_mut(&mut losses, 0..rows).unwrap(),
        &targets,
        rows,
        v,
        vp,
        1.0 / rows as f64,
    )
    .unwrap();
    vec![
        ("losses", host(be, &losses), FP32),
        ("dlogits", host(be, &logits), BF16),
    ]
}

fn reduce<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let n = 300_001;
    let x = upload(be, &randn(101, n, 1.0));
    let f = upload_f32(be, &randn(102, n, 1.0));
    let sums = vec![
        be.sum(be.view(&x, 0..n).unwrap()).unwrap() as f32,
        be.sum_squares(be.view(&x, 0..n).unwrap()).unwrap() as f32,
        be.sum(be.view(&f, 0..n).unwrap()).unwrap() as f32,
        be.sum_squares(be.view(&f, 17..n).unwrap()).unwrap() as f32,
    ];
    // Sums of 3·10⁵ terms in fp32 in two different orders: relative to the sum of |x|.
    vec![(
        "sums",
        sums,
        Tol {
            rel: 1e-4,
            abs_of_max: 1e-4,
        },
    )]
}

fn adamw<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let n = 4099;
    let mut params = upload(be, &randn(111, n, 1.0));
    let grads = upload(be, &randn(112, n, 0.5));
    let owned = 3..n - 5;
    let mut state = be.alloc_opt_state(&params, owned.clone()).unwrap();
    for t in 1..=3 {
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: if t == 2 { 0.0 } else { 0.1 },
            grad_scale: 0.8,
            bias_correction1: 1.0 - 0.9f32.powi(t),
            bias_correction2: 1.0 - 0.95f32.powi(t),
        };
        // Two ranges, as the optimizer's decay segments.
        for range in [owned.start..1000, 1000..owned.end] {
            let g = be.view(&grads, range.clone()).unwrap();
            be.adamw_update(&mut params, g, &mut state, range, &step)
                .unwrap();
        }
    }
    let (mut m, mut v) = (vec![0.0; owned.len()], vec![0.0; owned.len()]);
    be.download_opt_state(&state, &mut m, &mut v).unwrap();
    let mut master = vec![0.0; owned.len()];
    let params_host = host(be, &params);
    if !be.download_master_weights(&state, &mut master).unwrap() {
        master.copy_from_slice(&params_host[owned.clone()]);
    }
    vec![
        ("params", params_host, BF16),
        ("m", m, FP32),
        ("v", v, FP32),
        ("master weights", master, FP32),
    ]
}

// === the Llama family ===

fn llama_embedding<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    // 300 positions over 50 distinct token ids of a 64-row table: repeats, and untouched rows.
    let (rows, c, vocab) = (300, 72, 64);
    let tokens = common::tokens(121, rows, 50);
    let wte = upload(be, &randn(122, vocab * c, 1.0));
    let dout = upload(be, &randn(123, rows * c, 1.0));
    let mut toks = be.alloc_tokens(rows).unwrap();
    be.upload_tokens(&mut toks, &tokens).unwrap();
    let mut out = be.alloc(rows * c).unwrap();
    be.embedding_forward(
        be.view_mut(&mut out, 0..rows * c).unwrap(),
        &toks,
        be.view(&wte, 0..vocab * c).unwrap(),
        rows,
        c,
    )
    .unwrap();
    // Accumulates into existing gradients.
    let mut dwte = upload(be, &randn(124, vocab * c, 0.1));
    be.embedding_backward(
        be.view_mut(&mut dwte, 0..vocab * c).unwrap(),
        be.view(&dout, 0..rows * c).unwrap(),
        &toks,
        rows,
        c,
    )
    .unwrap();
    vec![
        ("embedding out", host(be, &out), SAME),
        ("dwte", host(be, &dwte), BF16),
    ]
}

fn rmsnorm<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    // Rows not a multiple of the backward's 32-row blocks; channels not of the 32 lanes.
    let (rows, c) = (75, 200);
    let x = upload(be, &randn(131, rows * c, 2.0));
    let w = upload(be, &randn(132, c, 1.0));
    let dout = upload(be, &randn(133, rows * c, 1.0));
    let mut out = be.alloc(rows * c).unwrap();
    let mut rstd = be.alloc_f32(rows).unwrap();
    be.rmsnorm_forward(
        be.view_mut(&mut out, 0..rows * c).unwrap(),
        be.view_mut(&mut rstd, 0..rows).unwrap(),
        be.view(&x, 0..rows * c).unwrap(),
        be.view(&w, 0..c).unwrap(),
        rows,
        c,
        1e-5,
    )
    .unwrap();
    // Accumulates into existing gradients.
    let mut dx = upload(be, &randn(134, rows * c, 0.1));
    let mut dw = upload(be, &randn(135, c, 0.1));
    be.rmsnorm_backward(
        be.view_mut(&mut dx, 0..rows * c).unwrap(),
        be.view_mut(&mut dw, 0..c).unwrap(),
        be.view(&dout, 0..rows * c).unwrap(),
        be.view(&x, 0..rows * c).unwrap(),
        be.view(&w, 0..c).unwrap(),
        be.view(&rstd, 0..rows).unwrap(),
        rows,
        c,
    )
    .unwrap();
    vec![
        ("rmsnorm out", host(be, &out), BF16),
        ("rstd", host(be, &rstd), FP32),
        ("dinp", host(be, &dx), BF16),
        ("dweight", host(be, &dw), BF16),
    ]
}

/// cos and sin of t·θ^(−2i/D) for t < positions, i < D/2 (fp32), (positions, D/2) each.
fn rope_tables(positions: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let angle = |t: usize, i: usize| t as f32 * 10_000f32.powf(-((2 * i) as f32) / head_dim as f32);
    let all = |f: fn(f32) -> f32| -> Vec<f32> {
        (0..positions * half)
            .map(|e| f(angle(e / half, e % half)))
            .collect()
    };
    (all(f32::cos), all(f32::sin))
}

fn rope<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    // The table longer than the sequence, as the model's (context-long) table is.
    let s = RopeShape {
        batch: 2,
        seq_len: 37,
        heads: 3,
        head_dim: 64,
    };
    let n = s.batch * s.seq_len * s.heads * s.head_dim;
    let (cos, sin) = rope_tables(50, s.head_dim);
    let (cos, sin) = (upload_f32(be, &cos), upload_f32(be, &sin));
    let table = 0..50 * s.head_dim / 2;
    let mut outs = Vec::new();
    for (what, inverse) in [("rope", false), ("rope inverse", true)] {
        let mut x = upload(be, &randn(141 + u64::from(inverse), n, 1.0));
        be.rope(
            be.view_mut(&mut x, 0..n).unwrap(),
            be.view(&cos, table.clone()).unwrap(),
            be.view(&sin, table.clone()).unwrap(),
            s,
            inverse,
        )
        .unwrap();
        outs.push((what, host(be, &x), BF16));
    }
    outs
}

fn swiglu<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let n = 5000;
    // Wide enough to reach both tails of the sigmoid.
    let gate = upload(be, &randn(151, n, 3.0));
    let up = upload(be, &randn(152, n, 1.0));
    let dout = upload(be, &randn(153, n, 1.0));
    let mut out = be.alloc(n).unwrap();
    be.swiglu_forward(
        be.view_mut(&mut out, 0..n).unwrap(),
        be.view(&gate, 0..n).unwrap(),
        be.view(&up, 0..n).unwrap(),
    )
    .unwrap();
    // Overwrites whatever the gradients held.
    let mut dgate = upload(be, &randn(154, n, 1.0));
    let mut dup = upload(be, &randn(155, n, 1.0));
    be.swiglu_backward(
        be.view_mut(&mut dgate, 0..n).unwrap(),
        be.view_mut(&mut dup, 0..n).unwrap(),
        be.view(&dout, 0..n).unwrap(),
        be.view(&gate, 0..n).unwrap(),
        be.view(&up, 0..n).unwrap(),
    )
    .unwrap();
    vec![
        ("swiglu", host(be, &out), BF16),
        ("dgate", host(be, &dgate), BF16),
        ("dup", host(be, &dup), BF16),
    ]
}

/// The shapes the GQA parity runs, with the names of their four outputs: grouped heads of 64
/// (T not a multiple of any tile), multi-query heads of 128 (the kernels' largest), and
/// multi-head heads of 16 (half the lanes idle).
const GQA_SHAPES: [(GqaShape, [&str; 4]); 3] = [
    (
        GqaShape {
            batch: 2,
            seq_len: 70,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
        },
        [
            "gqa out (4/2×64)",
            "dq (4/2×64)",
            "dk (4/2×64)",
            "dv (4/2×64)",
        ],
    ),
    (
        GqaShape {
            batch: 1,
            seq_len: 45,
            heads: 3,
            kv_heads: 1,
            head_dim: 128,
        },
        [
            "gqa out (3/1×128)",
            "dq (3/1×128)",
            "dk (3/1×128)",
            "dv (3/1×128)",
        ],
    ),
    (
        GqaShape {
            batch: 2,
            seq_len: 33,
            heads: 2,
            kv_heads: 2,
            head_dim: 16,
        },
        [
            "gqa out (2/2×16)",
            "dq (2/2×16)",
            "dk (2/2×16)",
            "dv (2/2×16)",
        ],
    ),
];

fn gqa_attention<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>, Tol)> {
    let mut outs = Vec::new();
    for (i, (s, names)) in GQA_SHAPES.into_iter().enumerate() {
        let seed = 160 + 10 * i as u64;
        let nq = s.batch * s.seq_len * s.heads * s.head_dim;
        let nkv = s.batch * s.seq_len * s.kv_heads * s.head_dim;
        let q = upload(be, &randn(seed, nq, 1.0));
        let k = upload(be, &randn(seed + 1, nkv, 1.0));
        let v = upload(be, &randn(seed + 2, nkv, 1.0));
        let dout = upload(be, &randn(seed + 3, nq, 1.0));
        let mut out = be.alloc(nq).unwrap();
        let mut state = be.alloc_f32(be.gqa_state_len(s)).unwrap();
        let rs = all(be, &state);
        be.gqa_attention_forward(
            be.view_mut(&mut out, 0..nq).unwrap(),
            be.view_mut(&mut state, rs.clone()).unwrap(),
            be.view(&q, 0..nq).unwrap(),
            be.view(&k, 0..nkv).unwrap(),
            be.view(&v, 0..nkv).unwrap(),
            s,
        )
        .unwrap();
        // Overwrites whatever the gradients held.
        let mut dq = upload(be, &randn(seed + 4, nq, 1.0));
        let mut dk = upload(be, &randn(seed + 5, nkv, 1.0));
        let mut dv = upload(be, &randn(seed + 6, nkv, 1.0));
        be.gqa_attention_backward(
            be.view_mut(&mut dq, 0..nq).unwrap(),
            be.view_mut(&mut dk, 0..nkv).unwrap(),
            be.view_mut(&mut dv, 0..nkv).unwrap(),
            be.view(&dout, 0..nq).unwrap(),
            be.view(&q, 0..nq).unwrap(),
            be.view(&k, 0..nkv).unwrap(),
            be.view(&v, 0..nkv).unwrap(),
            be.view(&out, 0..nq).unwrap(),
            be.view(&state, rs).unwrap(),
            s,
        )
        .unwrap();
        // The saved state differs by design (probabilities on the CPU, log-sum-exp on the
        // GPU): only outputs and gradients are compared.
        for (name, buf) in names.into_iter().zip([&out, &dq, &dk, &dv]) {
            outs.push((name, host(be, buf), BF16));
        }
    }
    outs
}

type Family<B> = fn(&B) -> Vec<(&'static str, Vec<f32>, Tol)>;

/// Runs `family` on `device` and on the CPU and compares every output.
fn parity<D: Backend>(name: &str, device: &D, on_device: Family<D>, on_cpu: Family<CpuBackend>) {
    let cpu = CpuBackend::<f32>::new();
    let want = on_cpu(&cpu);
    let got = on_device(device);
    assert_eq!(got.len(), want.len());
    for ((what, g, tol), (_, w, _)) in got.iter().zip(&want) {
        assert_close(&format!("{name}: {what}"), g, w, *tol);
    }
}

macro_rules! gpu_parity {
    ($test:ident, $family:ident) => {
        #[test]
        fn $test() {
            let Some(gpu) = gpu(stringify!($test)) else {
                return;
            };
            parity(stringify!($family), &gpu, $family, $family);
        }
    };
}

gpu_parity!(gpu_embedding_matches_cpu, embedding);
gpu_parity!(gpu_layernorm_matches_cpu, layernorm);
gpu_parity!(gpu_matmul_matches_cpu, matmul);
gpu_parity!(gpu_attention_matches_cpu, attention);
gpu_parity!(gpu_pointwise_matches_cpu, pointwise);
gpu_parity!(gpu_softmax_xent_matches_cpu, softmax_xent);
gpu_parity!(gpu_reduce_matches_cpu, reduce);
gpu_parity!(gpu_adamw_matches_cpu, adamw);
gpu_parity!(gpu_llama_embedding_matches_cpu, llama_embedding);
gpu_parity!(gpu_rmsnorm_matches_cpu, rmsnorm);
gpu_parity!(gpu_rope_matches_cpu, rope);
gpu_parity!(gpu_swiglu_matches_cpu, swiglu);
gpu_parity!(gpu_gqa_attention_matches_cpu, gqa_attention);

/// The Llama family's kernels, twice on the GPU: every output bit-identical (the backwards sum
/// in a fixed order, with no atomics).
#[test]
fn gpu_llama_kernels_are_bit_identical_run_to_run() {
    let Some(gpu) = gpu("gpu_llama_kernels_are_bit_identical_run_to_run") else {
        return;
    };
    let families: [(&str, Family<CudaBackend>); 5] = [
        ("llama_embedding", llama_embedding),
        ("rmsnorm", rmsnorm),
        ("rope", rope),
        ("swiglu", swiglu),
        ("gqa_attention", gqa_attention),
    ];
    for (name, family) in families {
        let (first, second) = (family(&gpu), family(&gpu));
        for ((what, a, _), (_, b, _)) in first.iter().zip(&second) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {what} differs between two runs"
            );
        }
    }
}

#[test]
fn gpu_llama_launchers_refuse_wrong_views_and_shapes() {
    let Some(be) = gpu("gpu_llama_launchers_refuse_wrong_views_and_shapes") else {
        return;
    };
    let s = RopeShape {
        batch: 1,
        seq_len: 4,
        heads: 2,
        head_dim: 8,
    };
    let mut x = be.alloc(64).unwrap();
    let bf16_table = be.alloc(16).unwrap();
    let table = be.alloc_f32(16).unwrap();
    let short = be.alloc_f32(12).unwrap();
    // The tables must be fp32 …
    assert!(matches!(
        be.rope(
            be.view_mut(&mut x, 0..64).unwrap(),
            be.view(&bf16_table, 0..16).unwrap(),
            be.view(&table, 0..16).unwrap(),
            s,
            false
        ),
        Err(BackendError::ElementType { name: "cos", .. })
    ));
    // … and cover every position.
    assert!(matches!(
        be.rope(
            be.view_mut(&mut x, 0..64).unwrap(),
            be.view(&short, 0..12).unwrap(),
            be.view(&short, 0..12).unwrap(),
            s,
            false
        ),
        Err(BackendError::BadDimensions { .. })
    ));
    // A head larger than the kernels hold, and kv heads that do not divide the heads.
    let g = GqaShape {
        batch: 1,
        seq_len: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 256,
    };
    let nq = g.batch * g.seq_len * g.heads * g.head_dim;
    let nkv = nq / 2;
    let (q, kv) = (be.alloc(nq).unwrap(), be.alloc(nkv).unwrap());
    let mut out = be.alloc(nq).unwrap();
    let mut state = be.alloc_f32(be.gqa_state_len(g)).unwrap();
    let rs = all(&be, &state);
    for shape in [g, GqaShape { kv_heads: 3, ..g }] {
        let refused = be.gqa_attention_forward(
            be.view_mut(&mut out, 0..nq).unwrap(),
            be.view_mut(&mut state, rs.clone()).unwrap(),
            be.view(&q, 0..nq).unwrap(),
            be.view(&kv, 0..nkv).unwrap(),
            be.view(&kv, 0..nkv).unwrap(),
            shape,
        );
        assert!(
            matches!(refused, Err(BackendError::BadDimensions { .. })),
            "{shape:?}: {refused:?}"
        );
    }
    // A state of the CPU's length (B·H·T·T) is not the GPU's (B·H·T).
    let small = GqaShape {
        head_dim: 64,
        seq_len: 8,
        ..g
    };
    let (nq, nkv) = (16 * 64, 8 * 64);
    let mut cpu_sized = be.alloc_f32(2 * 8 * 8).unwrap();
    assert!(matches!(
        be.gqa_attention_forward(
            be.view_mut(&mut out, 0..nq).unwrap(),
            be.view_mut(&mut cpu_sized, 0..128).unwrap(),
            be.view(&q, 0..nq).unwrap(),
            be.view(&kv, 0..nkv).unwrap(),
            be.view(&kv, 0..nkv).unwrap(),
            small,
        ),
        Err(BackendError::ShapeMismatch { name: "state", .. })
    ));
}

#[test]
fn the_cuda_backend_takes_llama_heads_up_to_128() {
    for head_dim in [8, 16, 64, 80, 128] {
        assert_eq!(CudaBackend::unsupported_llama(head_dim), None, "{head_dim}");
    }
    let why = CudaBackend::unsupported_llama(256).expect("a head of 256 is refused");
    assert!(why.contains("1 to 128") && why.contains("256"), "{why}");
}

#[test]
fn the_harness_sees_the_cpu_equal_to_itself() {
    let cpu = CpuBackend::<f32>::new();
    let families: [(&str, Family<CpuBackend>); 13] = [
        ("embedding", embedding),
        ("layernorm", layernorm),
        ("matmul", matmul),
        ("attention", attention),
        ("pointwise", pointwise),
        ("softmax_xent", softmax_xent),
        ("reduce", reduce),
        ("adamw", adamw),
        ("llama_embedding", llama_embedding),
        ("rmsnorm", rmsnorm),
        ("rope", rope),
        ("swiglu", swiglu),
        ("gqa_attention", gqa_attention),
    ];
    for (name, family) in families {
        let outputs = family(&cpu);
        assert!(!outputs.is_empty());
        for (what, values, _) in &outputs {
            assert!(
                values.iter().any(|v| *v != 0.0),
                "{name}: {what} is all zero: the comparison would be vacuous"
            );
        }
        parity(name, &cpu, family, family);
    }
    // And it notices a difference of one bf16 step where none is allowed.
    let a = [1.0f32, 2.0];
    let b = [1.0f32, 2.0 + 1.0 / 64.0];
    let caught = std::panic::catch_unwind(|| assert_close("x", &a, &b, SAME));
    assert!(caught.is_err());
}

// === whole model ===

/// A GPT the GPU kernels support (head size 64), small enough for the CPU reference.
fn tiny_config() -> ModelConfig {
    ModelConfig::new(2, 2, 128, 64, 300).unwrap()
}

/// `batch` windows of `t + 1` random tokens below the tiny model's vocabulary, as
/// (inputs, targets).
fn batch_of(seed: u64, batch: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    let tokens = common::tokens(seed, batch * (t + 1), 300);
    let window = |b: usize| &tokens[b * (t + 1)..(b + 1) * (t + 1)];
    (
        (0..batch).flat_map(|b| window(b)[..t].to_vec()).collect(),
        (0..batch).flat_map(|b| window(b)[1..].to_vec()).collect(),
    )
}

/// One forward + backward on `be` from bf16-representable weights; (loss, grads).
fn model_step<B: Backend>(be: B, weights: &[f32]) -> (f64, Vec<f32>) {
    let (batch, t) = (4, 64);
    let mut model = Gpt::new(be, tiny_config(), batch, t, 5).unwrap();
    model.load_params_from_host(weights).unwrap();
    let (inputs, targets) = batch_of(7, batch, t);
    model.zero_grad().unwrap();
    let loss = model.forward(&inputs, &targets).unwrap();
    model.backward().unwrap();
    (loss, model.grads_to_host().unwrap())
}

fn bf16_weights() -> Vec<f32> {
    let cpu = Gpt::new(CpuBackend::<f32>::new(), tiny_config(), 1, 1, 5).unwrap();
    let mut w = cpu.params_to_host().unwrap();
    round_to_bf16(&mut w);
    w
}

/// The GPU's step against the CPU's: loss within 1%, gradient norm within 5%, gradient
/// cosine above 0.99.
fn assert_step_agrees(what: &str, cpu: (f64, Vec<f32>), gpu: (f64, Vec<f32>)) {
    let ((cpu_loss, cpu_grads), (gpu_loss, gpu_grads)) = (cpu, gpu);
    let norm = |g: &[f32]| g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let dot: f64 = cpu_grads
        .iter()
        .zip(&gpu_grads)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let (nc, ng) = (norm(&cpu_grads), norm(&gpu_grads));
    eprintln!("{what}: loss cpu {cpu_loss} gpu {gpu_loss}; grad norm cpu {nc} gpu {ng}");
    assert!(((gpu_loss - cpu_loss) / cpu_loss).abs() < 1e-2);
    assert!(((ng - nc) / nc).abs() < 5e-2);
    assert!(
        dot / (nc * ng) > 0.99,
        "gradient cosine {}",
        dot / (nc * ng)
    );
}

#[test]
fn gpu_model_step_matches_cpu() {
    let Some(gpu) = gpu("gpu_model_step_matches_cpu") else {
        return;
    };
    let weights = bf16_weights();
    assert_step_agrees(
        "GPT-2",
        model_step(CpuBackend::<f32>::new(), &weights),
        model_step(gpu, &weights),
    );
}

/// LoRA (c_attn, c_proj, c_fc, rank 8, dropout 0.1) on the tiny model's frozen bf16 base:
/// one forward + backward on `be` with a fixed dropout plan; (loss, adapter grads).
fn lora_spec() -> tessera_api::spec::LoraSpec {
    use tessera_api::spec::{LoraSpec, LoraTarget};
    LoraSpec {
        rank: 8,
        alpha: Some(16.0),
        dropout: 0.1,
        targets: vec![LoraTarget::CAttn, LoraTarget::CProj, LoraTarget::CFc],
        train_norms: false,
        train_embeddings: false,
    }
}

fn lora_step<B: Backend>(be: B, base: &[f32], adapters: &[f32]) -> (f64, Vec<f32>) {
    let (batch, t) = (4, 64);
    let spec = lora_spec();
    let mut model = Gpt::with_lora(be, tiny_config(), Some(&spec), batch, t, 5).unwrap();
    model.load_weights(base).unwrap();
    model.load_params_from_host(adapters).unwrap();
    model.set_dropout_plan(Some(tessera_trainer::lora::DropoutPlan::new(
        3,
        9,
        vec![40],
    )));
    model.set_micro_batch(0);
    let (inputs, targets) = batch_of(8, batch, t);
    model.zero_grad().unwrap();
    let loss = model.forward(&inputs, &targets).unwrap();
    model.backward().unwrap();
    (loss, model.grads_to_host().unwrap())
}

#[test]
fn gpu_lora_step_matches_cpu() {
    let Some(gpu) = gpu("gpu_lora_step_matches_cpu") else {
        return;
    };
    let base = bf16_weights();
    // Adapters with B ≠ 0 (a trained state), bf16-representable, in the trainable layout.
    let trainable = tessera_trainer::model::placement(&tiny_config(), Some(&lora_spec()))
        .unwrap()
        .trainable
        .total;
    let mut adapters = randn(77, trainable, 0.05);
    round_to_bf16(&mut adapters);
    assert_step_agrees(
        "LoRA",
        lora_step(CpuBackend::<f32>::new(), &base, &adapters),
        lora_step(gpu, &base, &adapters),
    );
}

/// Three AdamW steps on `be`; the final parameters' bits.
fn three_steps<B: Backend>(be: B, weights: &[f32]) -> Vec<u32> {
    let (batch, t) = (4, 64);
    let mut model = Gpt::new(be, tiny_config(), batch, t, 5).unwrap();
    model.load_params_from_host(weights).unwrap();
    let mut opt = AdamW::new(
        AdamWConfig {
            total_steps: 3,
            ..AdamWConfig::default()
        },
        &model,
    )
    .unwrap();
    for step in 0..3u64 {
        let (inputs, targets) = batch_of(100 + step, batch, t);
        model.zero_grad().unwrap();
        model.forward(&inputs, &targets).unwrap();
        model.backward().unwrap();
        opt.step(&mut model, step).unwrap();
    }
    model
        .params_to_host()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn gpu_training_is_bit_identical_run_to_run() {
    let Some(first) = gpu("gpu_training_is_bit_identical_run_to_run") else {
        return;
    };
    let weights = bf16_weights();
    let a = three_steps(first, &weights);
    let b = three_steps(CudaBackend::new(0).unwrap(), &weights);
    assert!(a == b, "two GPU runs of the same steps differ");
    assert!(a != weights.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
}

#[test]
fn gpu_bf16_fp32_conversions_match_the_host_rounding() {
    let Some(be) = gpu("gpu_bf16_fp32_conversions_match_the_host_rounding") else {
        return;
    };
    let n = 4099;
    let mut values = randn(91, n, 3.0);
    values[0] = 1.0 + 1.0 / 256.0; // a tie: rounds to even (1.0)
    values[1] = f32::MAX;
    values[2] = -0.0;
    let wide = upload_f32(&be, &values);
    let mut narrow = be.alloc(n).unwrap();
    be.convert_launch(
        be.view_mut(&mut narrow, 0..n).unwrap(),
        be.view(&wide, 0..n).unwrap(),
    )
    .unwrap();
    let mut want = values.clone();
    round_to_bf16(&mut want);
    let got = host(&be, &narrow);
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "fp32 -> bf16 differs from round-to-nearest-even"
    );
    let mut back = be.alloc_f32(n).unwrap();
    be.convert_launch(
        be.view_mut(&mut back, 0..n).unwrap(),
        be.view(&narrow, 0..n).unwrap(),
    )
    .unwrap();
    assert!(
        host(&be, &back)
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "bf16 -> fp32 is not exact"
    );
}

// === through the trainer binary ===

const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: cuda-resume-test
spec:
  model: {layers: 2, heads: 2, width: 128, context: 64}
  data: {train: data/train-*.bin, validation: data/val-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 5, globalBatchTokens: 512, microBatch: 4}
  training: {steps: 40, seed: 7, evalInterval: 20, evalBatches: 2}
  checkpoint: {path: checkpoints, everySteps: 10, keep: 3}
"#;

/// The trainer binary: cargo's, or `$TESSERA_TRAINER_BIN` where this test runs away from its
/// build (bench/gpu/device-check.sh on a GPU machine without Rust).
fn trainer(dir: &Path, device: &str) -> Command {
    let bin = std::env::var_os("TESSERA_TRAINER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tessera-trainer").into());
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(dir.join("run.yaml"))
        .arg("--base-dir")
        .arg(dir)
        .args(["--log-every", "1", "--device", device])
        .env("RUST_LOG", "info");
    cmd
}

fn summary(out: std::process::Output) -> serde_json::Value {
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "trainer failed:\n{log}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("summary: {e}\n{log}"))
}

#[test]
fn gpu_run_killed_after_a_checkpoint_resumes_bit_identically() {
    if gpu("gpu_run_killed_after_a_checkpoint_resumes_bit_identically").is_none() {
        return;
    }
    let straight = common::run_dir_with(MANIFEST);
    let uninterrupted = summary(trainer(straight.path(), "cuda").output().unwrap());
    assert_eq!(uninterrupted["backend"], "cuda-bf16");

    let dir = common::run_dir_with(MANIFEST);
    let mut child = trainer(dir.path(), "cuda")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("checkpoint committed") && line.contains("step=20") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at step 20 in time"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = summary(trainer(dir.path(), "cuda").output().unwrap());
    let from = resumed["resumedFrom"].as_u64().expect("resumed");
    assert!((20..40).contains(&from), "resumed from {from}");
    assert_eq!(
        resumed["weightsSha256"], uninterrupted["weightsSha256"],
        "GPU weights differ after resume"
    );
}

#[test]
fn device_cuda_without_a_gpu_is_refused_naming_the_fix() {
    if gpu_count() > 0 {
        eprintln!("SKIPPED: this machine has a GPU, so --device cuda is not refused");
        return;
    }
    let dir = common::run_dir_with(MANIFEST);
    let out = trainer(dir.path(), "cuda").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "--device cuda must fail without a GPU"
    );
    assert!(
        log.contains("--device cpu") && (log.contains("libcuda") || log.contains("no usable GPU")),
        "{log}"
    );
    // And auto falls back to the CPU.
    let auto = summary(trainer(dir.path(), "auto").output().unwrap());
    assert_eq!(auto["backend"], "cpu-f32");
}

#[test]
fn device_cuda_refuses_a_head_size_other_than_64_before_training() {
    let dir = common::run_dir_with(&MANIFEST.replace("heads: 2", "heads: 4"));
    let out = trainer(dir.path(), "cuda").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("head size of 64")
            && log.contains("4 heads is 32")
            && log.contains("spec.model"),
        "{log}"
    );
    assert!(
        !dir.path().join("checkpoints").exists(),
        "nothing may have trained"
    );
}

#[test]
fn gpu_nccl_on_one_rank_matches_the_host_path_bitwise() {
    // One GPU: NCCL runs a world of one (NCCL refuses two ranks on one GPU), which still puts
    // every gradient through widen, ncclReduce, narrow and every parameter through
    // ncclBroadcast; the sums of one rank are exact, so the weights must equal the host path's.
    if gpu("gpu_nccl_on_one_rank_matches_the_host_path_bitwise").is_none() {
        return;
    }
    for stage in ["none", "optimizer", "gradients"] {
        let run = |collectives: &str| {
            let dir = common::run_dir_with(MANIFEST);
            summary(
                trainer(dir.path(), "cuda")
                    .args(["--collectives", collectives])
                    .args(["--set", "training.steps=12"])
                    .args(["--set", &format!("parallelism.sharding={stage}")])
                    .output()
                    .unwrap(),
            )
        };
        let (nccl, host) = (run("nccl"), run("host"));
        let carried = nccl["collectives"].as_str().unwrap_or_default().to_string();
        assert!(
            carried.starts_with("nccl 2."),
            "{stage}: collectives = {carried}"
        );
        assert_eq!(
            nccl["weightsSha256"], host["weightsSha256"],
            "{stage}: NCCL and the host path reach different weights"
        );
    }
}

#[test]
fn collectives_nccl_on_the_cpu_is_refused_naming_the_fix() {
    let dir = common::run_dir_with(MANIFEST);
    let out = trainer(dir.path(), "cpu")
        .args(["--collectives", "nccl"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("--collectives nccl needs the CUDA backend")
            && log.contains("cpu-f32")
            && log.contains("--collectives auto or host"),
        "{log}"
    );
    assert!(
        !dir.path().join("checkpoints").exists(),
        "nothing may have trained"
    );
    // The default on one rank moves nothing between ranks, and says so.
    let one = summary(
        trainer(dir.path(), "cpu")
            .args(["--set", "training.steps=6"])
            .output()
            .unwrap(),
    );
    assert_eq!(one["collectives"], "none (one rank)");
}
