//! Gradient checks in f64: for every kernel family and for the whole model, the analytic
//! backward equals central finite differences (eps 1e-6) to a relative error < 1e-6 (by norm
//! over the checked entries). The kernels are the same generic code the f32 trainer runs.

mod common;

use common::*;
use tessera_trainer::backend::cpu::{
    CpuBackend, attention, embedding, layernorm, matmul, pointwise, softmax_xent,
};
use tessera_trainer::backend::{AttentionShape, MatmulShape};
use tessera_trainer::config::ModelConfig;
use tessera_trainer::lm::LanguageModel;
use tessera_trainer::model::Gpt;

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn layernorm_gradients_match_finite_differences() {
    let (rows, c) = (5, 7);
    let x = randn(1, rows * c, 1.5);
    let w = randn(2, c, 1.0);
    let b = randn(3, c, 1.0);
    let r = randn(4, rows * c, 1.0);
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, x, w, b, rows, c).unwrap();
        (out, mean, rstd)
    };
    let (_, mean, rstd) = fwd(&x, &w, &b);
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(&mut dx, &mut dw, &mut db, &r, &x, &w, &mean, &rstd, rows, c)
        .unwrap();
    let nx = numeric_grad(&x, None, EPS, |x| dot(&fwd(x, &w, &b).0, &r));
    let nw = numeric_grad(&w, None, EPS, |w| dot(&fwd(&x, w, &b).0, &r));
    let nb = numeric_grad(&b, None, EPS, |b| dot(&fwd(&x, &w, b).0, &r));
    assert_grad_close("layernorm dinp", &dx, &nx, TOL);
    assert_grad_close("layernorm dweight", &dw, &nw, TOL);
    assert_grad_close("layernorm dbias", &db, &nb, TOL);
}

#[test]
fn linear_layer_gradients_match_finite_differences() {
    // out (N×OC) = x (N×C) · Wᵀ + b, backward as the model composes it.
    let (n, c, oc) = (6, 5, 4);
    let x = randn(10, n * c, 1.0);
    let w = randn(11, oc * c, 1.0);
    let b = randn(12, oc, 1.0);
    let r = randn(13, n * oc, 1.0);
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut out = vec![0.0; n * oc];
        let s = MatmulShape {
            m: n,
            n: oc,
            k: c,
            a_transposed: false,
            b_transposed: true,
        };
        matmul::matmul(&mut out, x, w, Some(b), s, false).unwrap();
        dot(&out, &r)
    };
    let mut dx = vec![0.0; n * c];
    let s = MatmulShape {
        m: n,
        n: c,
        k: oc,
        a_transposed: false,
        b_transposed: false,
    };
    matmul::matmul(&mut dx, &r, &w, None, s, false).unwrap();
    let mut dw = vec![0.0; oc * c];
    let s = MatmulShape {
        m: oc,
        n: c,
        k: n,
        a_transposed: true,
        b_transposed: false,
    };
    matmul::matmul(&mut dw, &r, &x, None, s, true).unwrap();
    let mut db = vec![0.0; oc];
    matmul::bias_backward(&mut db, &r, n, oc).unwrap();
    assert_grad_close(
        "linear dinp",
        &dx,
        &numeric_grad(&x, None, EPS, |x| fwd(x, &w, &b)),
        TOL,
    );
    assert_grad_close(
        "linear dweight",
        &dw,
        &numeric_grad(&w, None, EPS, |w| fwd(&x, w, &b)),
        TOL,
    );
    assert_grad_close(
        "linear dbias",
        &db,
        &numeric_grad(&b, None, EPS, |b| fwd(&x, &w, b)),
        TOL,
    );
}

#[test]
fn matmul_all_transposes_and_accumulate_match_naive_product() {
    let (m, n, k) = (7, 9, 5);
    for a_t in [false, true] {
        for b_t in [false, true] {
            let a = randn(20, m * k, 1.0);
            let b = randn(21, k * n, 1.0);
            let init = randn(22, m * n, 1.0);
            let at = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if b_t { b[j * k + p] } else { b[p * n + j] };
            let mut want = init.clone();
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] += (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>();
                }
            }
            let mut got = init.clone();
            let s = MatmulShape {
                m,
                n,
                k,
                a_transposed: a_t,
                b_transposed: b_t,
            };
            matmul::matmul(&mut got, &a, &b, None, s, true).unwrap();
            assert!(max_rel(&got, &want) < 1e-13, "a_t={a_t} b_t={b_t}");
        }
    }
}

#[test]
fn gelu_gradient_matches_finite_differences() {
    let x = randn(30, 40, 2.0);
    let r = randn(31, 40, 1.0);
    let mut dx = vec![0.0; 40];
    pointwise::gelu_backward(&mut dx, &x, &r).unwrap();
    let n = numeric_grad(&x, None, EPS, |x| {
        let mut out = vec![0.0; 40];
        pointwise::gelu_forward(&mut out, x).unwrap();
        dot(&out, &r)
    });
    assert_grad_close("gelu", &dx, &n, TOL);
}

#[test]
fn attention_gradient_matches_finite_differences() {
    let s = AttentionShape {
        batch: 2,
        seq_len: 5,
        channels: 6,
        heads: 2,
    };
    let (b, t, c, nh) = (s.batch, s.seq_len, s.channels, s.heads);
    let qkv = randn(40, b * t * 3 * c, 1.0);
    let r = randn(41, b * t * c, 1.0);
    let fwd = |qkv: &[f64]| {
        let (mut out, mut probs) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
        attention::attention_forward(&mut out, &mut probs, qkv, s).unwrap();
        (out, probs)
    };
    let (_, probs) = fwd(&qkv);
    let (mut dqkv, mut scratch) = (vec![0.0; b * t * 3 * c], vec![0.0; b * nh * t * t]);
    attention::attention_backward(&mut dqkv, &mut scratch, &r, &qkv, &probs, s).unwrap();
    let n = numeric_grad(&qkv, None, EPS, |q| dot(&fwd(q).0, &r));
    assert_grad_close("attention dqkv", &dqkv, &n, TOL);
}

#[test]
fn attention_is_causal() {
    // Changing a later position must not change earlier outputs.
    let s = AttentionShape {
        batch: 1,
        seq_len: 4,
        channels: 4,
        heads: 2,
    };
    let mut qkv = randn(42, 4 * 12, 1.0);
    let run = |qkv: &[f64]| {
        let (mut out, mut probs) = (vec![0.0; 16], vec![0.0; 2 * 16]);
        attention::attention_forward(&mut out, &mut probs, qkv, s).unwrap();
        out
    };
    let before = run(&qkv);
    for v in &mut qkv[3 * 12..] {
        *v += 1.0;
    }
    let after = run(&qkv);
    assert_eq!(&before[..12], &after[..12]);
    assert_ne!(&before[12..], &after[12..]);
}

#[test]
fn embedding_gradients_match_finite_differences() {
    let (b, t, c, vp) = (2, 4, 3, 6);
    // Repeated tokens exercise accumulation into the same row.
    let toks = [1u32, 3, 1, 5, 0, 3, 3, 2];
    let wte = randn(50, vp * c, 1.0);
    let wpe = randn(51, t * c, 1.0);
    let r = randn(52, b * t * c, 1.0);
    let fwd = |wte: &[f64], wpe: &[f64]| {
        let mut out = vec![0.0; b * t * c];
        embedding::encoder_forward(&mut out, &toks, wte, wpe, b, t, c).unwrap();
        dot(&out, &r)
    };
    let (mut dwte, mut dwpe) = (vec![0.0; vp * c], vec![0.0; t * c]);
    embedding::encoder_backward(&mut dwte, &mut dwpe, &r, &toks, b, t, c).unwrap();
    assert_grad_close(
        "dwte",
        &dwte,
        &numeric_grad(&wte, None, EPS, |w| fwd(w, &wpe)),
        TOL,
    );
    assert_grad_close(
        "dwpe",
        &dwpe,
        &numeric_grad(&wpe, None, EPS, |w| fwd(&wte, w)),
        TOL,
    );
    // Row 4 is never selected: its gradient is exactly zero.
    assert!(dwte[4 * c..5 * c].iter().all(|&g| g == 0.0));
}

#[test]
fn softmax_cross_entropy_gradient_matches_finite_differences() {
    let (rows, v, vp) = (4, 5, 8);
    let logits = randn(60, rows * vp, 2.0);
    let targets = [0u32, 4, 2, 2];
    let dloss = 0.37;
    let run = |z: &[f64]| {
        let (mut z, mut losses) = (z.to_vec(), vec![0.0; rows]);
        softmax_xent::softmax_cross_entropy(&mut z, &mut losses, &targets, rows, v, vp, dloss)
            .unwrap();
        (z, losses)
    };
    let (grad, losses) = run(&logits);
    // Reference loss for row 0, computed directly.
    let row = &logits[..v];
    let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
    assert!((losses[0] - (lse - row[0])).abs() < 1e-12);
    let n = numeric_grad(&logits, None, EPS, |z| dloss * run(z).1.iter().sum::<f64>());
    assert_grad_close("softmax-xent dlogits", &grad, &n, TOL);
    for r in 0..rows {
        assert!(
            grad[r * vp + v..(r + 1) * vp].iter().all(|&g| g == 0.0),
            "padded columns"
        );
    }
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    let cfg = ModelConfig::new(2, 2, 8, 8, 20).unwrap();
    let (b, t) = (2, 6);
    let mut model = Gpt::new(CpuBackend::<f64>::new(), cfg, b, t, 7).unwrap();
    // Move every parameter off its initial value so biases and LayerNorm params matter too.
    let noise = randn(70, model.num_params(), 0.1);
    for (i, (p, n)) in model.params_mut().iter_mut().zip(&noise).enumerate() {
        // Padded wte rows stay zero (no token selects them).
        if !(cfg.vocab * cfg.width..cfg.padded_vocab * cfg.width).contains(&i) {
            *p += n;
        }
    }
    let inputs = tokens(71, b * t, cfg.vocab as u32);
    let targets = tokens(72, b * t, cfg.vocab as u32);
    model.zero_grad().unwrap();
    let loss = model.forward(&inputs, &targets).unwrap();
    assert!(loss.is_finite() && loss > 0.0);
    model.backward().unwrap();
    let analytic = model.grads().clone();
    let params = model.params().clone();
    let layout = model.layout().clone();
    for tensor in &layout.tensors {
        let range = tensor.range();
        // Every entry of small tensors, an evenly spaced sample of large ones.
        let stride = (range.len() / 64).max(1);
        let idx: Vec<usize> = range.clone().step_by(stride).collect();
        let numeric = numeric_grad(&params, Some(&idx), EPS, |p| {
            model.params_mut().copy_from_slice(p);
            model.forward(&inputs, &targets).unwrap()
        });
        let a: Vec<f64> = idx.iter().map(|&i| analytic[i]).collect();
        assert_grad_close(&format!("model {}", tensor.name), &a, &numeric, TOL);
    }
}

#[test]
fn gradients_accumulate_and_scale() {
    let cfg = ModelConfig::new(1, 2, 8, 4, 10).unwrap();
    let mut model = Gpt::new(CpuBackend::<f64>::new(), cfg, 1, 4, 3).unwrap();
    let (x, y) = ([1u32, 2, 3, 4], [2u32, 3, 4, 5]);
    model.zero_grad().unwrap();
    model.forward(&x, &y).unwrap();
    model.backward().unwrap();
    let once = model.grads().clone();
    model.forward_scaled(&x, &y, 0.5).unwrap();
    model.backward().unwrap();
    let twice = model.grads().clone();
    let scale = once.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (a, b) in once.iter().zip(&twice) {
        assert!((b - 1.5 * a).abs() <= 1e-12 * scale, "{a} {b}");
    }
    assert!(once.iter().any(|&g| g != 0.0));
}
