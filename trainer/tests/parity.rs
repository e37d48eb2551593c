//! f32 vs f64 parity: the same kernels on the same (f32-representable) inputs agree to within
//! stated tolerances (max |f32 − f64| / max |f64|), per family and for the whole model.

mod common;

use common::*;
use tessera_trainer::backend::cpu::{
    CpuBackend, attention, embedding, layernorm, matmul, pointwise, softmax_xent,
};
use tessera_trainer::backend::{AttentionShape, MatmulShape};
use tessera_trainer::config::ModelConfig;
use tessera_trainer::lm::LanguageModel;
use tessera_trainer::model::Gpt;

fn up(x: &[f64]) -> Vec<f32> {
    to_f32(x)
}
fn back(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn layernorm_f32_matches_f64() {
    let (rows, c) = (33, 96);
    let x = f32_exact(&randn(1, rows * c, 2.0));
    let w = f32_exact(&randn(2, c, 1.0));
    let b = f32_exact(&randn(3, c, 1.0));
    let g = f32_exact(&randn(4, rows * c, 1.0));
    let (mut o64, mut m64, mut r64) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    layernorm::layernorm_forward(&mut o64, &mut m64, &mut r64, &x, &w, &b, rows, c).unwrap();
    let (mut o32, mut m32, mut r32) = (vec![0f32; rows * c], vec![0f32; rows], vec![0f32; rows]);
    let (x32, w32, b32, g32) = (up(&x), up(&w), up(&b), up(&g));
    layernorm::layernorm_forward(&mut o32, &mut m32, &mut r32, &x32, &w32, &b32, rows, c).unwrap();
    assert!(max_rel(&back(&o32), &o64) < 1e-5);
    let (mut dx64, mut dw64, mut db64) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(
        &mut dx64, &mut dw64, &mut db64, &g, &x, &w, &m64, &r64, rows, c,
    )
    .unwrap();
    let (mut dx32, mut dw32, mut db32) = (vec![0f32; rows * c], vec![0f32; c], vec![0f32; c]);
    layernorm::layernorm_backward(
        &mut dx32, &mut dw32, &mut db32, &g32, &x32, &w32, &m32, &r32, rows, c,
    )
    .unwrap();
    assert!(max_rel(&back(&dx32), &dx64) < 1e-5);
    assert!(max_rel(&back(&dw32), &dw64) < 1e-5);
    assert!(max_rel(&back(&db32), &db64) < 1e-5);
}

#[test]
fn matmul_f32_matches_f64() {
    // Large enough to take gemm's parallel path.
    let (m, n, k) = (128, 96, 80);
    let a = f32_exact(&randn(5, m * k, 1.0));
    let b = f32_exact(&randn(6, n * k, 1.0));
    let bias = f32_exact(&randn(7, n, 1.0));
    let s = MatmulShape {
        m,
        n,
        k,
        a_transposed: false,
        b_transposed: true,
    };
    let mut o64 = vec![0.0; m * n];
    matmul::matmul(&mut o64, &a, &b, Some(&bias), s, false).unwrap();
    let mut o32 = vec![0f32; m * n];
    matmul::matmul(&mut o32, &up(&a), &up(&b), Some(&up(&bias)), s, false).unwrap();
    assert!(max_rel(&back(&o32), &o64) < 1e-5);
    let mut db64 = vec![0.0; n];
    matmul::bias_backward(&mut db64, &o64, m, n).unwrap();
    let mut db32 = vec![0f32; n];
    matmul::bias_backward(&mut db32, &o32, m, n).unwrap();
    assert!(max_rel(&back(&db32), &db64) < 1e-5);
}

#[test]
fn attention_f32_matches_f64() {
    let s = AttentionShape {
        batch: 2,
        seq_len: 16,
        channels: 32,
        heads: 4,
    };
    let (b, t, c, nh) = (2, 16, 32, 4);
    let qkv = f32_exact(&randn(8, b * t * 3 * c, 1.0));
    let dout = f32_exact(&randn(9, b * t * c, 1.0));
    let (mut o64, mut p64) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
    attention::attention_forward(&mut o64, &mut p64, &qkv, s).unwrap();
    let (mut o32, mut p32) = (vec![0f32; b * t * c], vec![0f32; b * nh * t * t]);
    attention::attention_forward(&mut o32, &mut p32, &up(&qkv), s).unwrap();
    assert!(max_rel(&back(&o32), &o64) < 1e-5);
    let (mut d64, mut s64) = (vec![0.0; b * t * 3 * c], vec![0.0; b * nh * t * t]);
    attention::attention_backward(&mut d64, &mut s64, &dout, &qkv, &p64, s).unwrap();
    let (mut d32, mut s32) = (vec![0f32; b * t * 3 * c], vec![0f32; b * nh * t * t]);
    attention::attention_backward(&mut d32, &mut s32, &up(&dout), &up(&qkv), &p32, s).unwrap();
    assert!(max_rel(&back(&d32), &d64) < 1e-5);
}

#[test]
fn pointwise_softmax_and_embedding_f32_match_f64() {
    let x = f32_exact(&randn(10, 1000, 3.0));
    let g = f32_exact(&randn(11, 1000, 1.0));
    let (mut o64, mut o32) = (vec![0.0; 1000], vec![0f32; 1000]);
    pointwise::gelu_forward(&mut o64, &x).unwrap();
    pointwise::gelu_forward(&mut o32, &up(&x)).unwrap();
    assert!(max_rel(&back(&o32), &o64) < 1e-6);
    pointwise::gelu_backward(&mut o64, &x, &g).unwrap();
    pointwise::gelu_backward(&mut o32, &up(&x), &up(&g)).unwrap();
    assert!(max_rel(&back(&o32), &o64) < 1e-6);

    let (rows, v, vp) = (10, 100, 128);
    let z = f32_exact(&randn(12, rows * vp, 3.0));
    let targets = tokens(13, rows, v as u32);
    let (mut z64, mut l64) = (z.clone(), vec![0.0; rows]);
    softmax_xent::softmax_cross_entropy(&mut z64, &mut l64, &targets, rows, v, vp, 0.1).unwrap();
    let (mut z32, mut l32) = (up(&z), vec![0f32; rows]);
    softmax_xent::softmax_cross_entropy(&mut z32, &mut l32, &targets, rows, v, vp, 0.1).unwrap();
    assert!(max_rel(&back(&l32), &l64) < 1e-6);
    assert!(max_rel(&back(&z32), &z64) < 1e-6);

    let (b, t, c) = (2, 3, 4);
    let toks = [0u32, 1, 2, 2, 1, 0];
    let wte = f32_exact(&randn(14, 3 * c, 1.0));
    let wpe = f32_exact(&randn(15, t * c, 1.0));
    let (mut e64, mut e32) = (vec![0.0; b * t * c], vec![0f32; b * t * c]);
    embedding::encoder_forward(&mut e64, &toks, &wte, &wpe, b, t, c).unwrap();
    embedding::encoder_forward(&mut e32, &toks, &up(&wte), &up(&wpe), b, t, c).unwrap();
    assert!(max_rel(&back(&e32), &e64) < 1e-7);
}

#[test]
fn whole_model_f32_matches_f64() {
    let cfg = ModelConfig::new(2, 4, 32, 16, 64).unwrap();
    let (b, t) = (2, 16);
    let mut m32 = Gpt::new(CpuBackend::<f32>::new(), cfg, b, t, 5).unwrap();
    let mut m64 = Gpt::new(CpuBackend::<f64>::new(), cfg, b, t, 5).unwrap();
    let inputs = tokens(16, b * t, 64);
    let targets = tokens(17, b * t, 64);
    let l32 = m32.forward(&inputs, &targets).unwrap();
    let l64 = m64.forward(&inputs, &targets).unwrap();
    assert!(((l32 - l64) / l64).abs() < 1e-6, "{l32} vs {l64}");
    m32.zero_grad().unwrap();
    m64.zero_grad().unwrap();
    m32.forward(&inputs, &targets).unwrap();
    m64.forward(&inputs, &targets).unwrap();
    m32.backward().unwrap();
    m64.backward().unwrap();
    let g32 = back(&m32.grads_to_host().unwrap());
    let g64 = m64.grads().clone();
    for tensor in &m32.layout().tensors {
        let r = tensor.range();
        let err = rel_err(&g32[r.clone()], &g64[r]);
        assert!(err < 1e-4, "{}: {err:e}", tensor.name);
    }
}
