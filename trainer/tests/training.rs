//! Training behaviour: bitwise determinism, resume from saved optimizer state, gradient
//! accumulation equivalence, the tiny preset learning a repetitive sequence, and typed errors
//! for bad input.

use tessera_trainer::backend::cpu::CpuBackend;
use tessera_trainer::backend::{Backend, BackendError};
use tessera_trainer::config::ModelConfig;
use tessera_trainer::lm::LanguageModel;
use tessera_trainer::model::{Gpt, ModelError};
use tessera_trainer::optimizer::{AdamW, AdamWConfig, LrSchedule};
use tessera_trainer::train::{BatchError, TrainError, train_step};

type Cpu = CpuBackend<f32>;

/// Batches cut from a fixed byte text; batch `(step, micro)` starts at a position derived from
/// both, so it is a pure function of them.
fn text_batches(
    text: &'static [u8],
    seq_len: usize,
) -> impl FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError> {
    move |step, micro, x, y| {
        let rows = x.len() / seq_len;
        for r in 0..rows {
            let start = (step as usize * 131 + micro * 17 + r * 29) % (text.len() - seq_len - 1);
            for t in 0..seq_len {
                x[r * seq_len + t] = text[start + t] as u32;
                y[r * seq_len + t] = text[start + t + 1] as u32;
            }
        }
        Ok(())
    }
}

const TEXT: &[u8] =
    b"First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. \
First Citizen: You are all resolved rather to die than to famish? All: Resolved. resolved. \
First Citizen: First, you know Caius Marcius is chief enemy to the people. All: We know't.";

fn small_cfg() -> ModelConfig {
    ModelConfig::new(2, 4, 32, 32, 256).unwrap()
}

fn adam(total: u64) -> AdamWConfig {
    AdamWConfig {
        lr: 3e-3,
        warmup_steps: 2,
        total_steps: total,
        min_lr_ratio: 0.1,
        ..AdamWConfig::default()
    }
}

fn run(steps: u64, accum: usize) -> (Vec<f32>, Vec<f64>) {
    let mut model = Gpt::new(Cpu::new(), small_cfg(), 4, 32, 11).unwrap();
    let mut opt = AdamW::new(adam(steps), &model).unwrap();
    let mut batches = text_batches(TEXT, 32);
    let losses = (0..steps)
        .map(|s| {
            train_step(&mut model, &mut opt, s, accum, &mut batches)
                .unwrap()
                .loss
        })
        .collect();
    (model.params_to_host().unwrap(), losses)
}

#[test]
fn two_runs_are_bitwise_identical() {
    let (p1, l1) = run(6, 2);
    let (p2, l2) = run(6, 2);
    assert_eq!(l1, l2);
    assert!(p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()));
    // The run did change the parameters (so the comparison is not of two initial states).
    let init = Gpt::new(Cpu::new(), small_cfg(), 4, 32, 11)
        .unwrap()
        .params_to_host()
        .unwrap();
    assert!(p1.iter().zip(&init).any(|(a, b)| a != b));
}

#[test]
fn resuming_from_saved_state_continues_identically() {
    let steps = 6;
    let (want, _) = run(steps, 1);
    // Run 3 steps, save params + optimizer state, rebuild everything, run the last 3.
    let mut model = Gpt::new(Cpu::new(), small_cfg(), 4, 32, 11).unwrap();
    let mut opt = AdamW::new(adam(steps), &model).unwrap();
    let mut batches = text_batches(TEXT, 32);
    for s in 0..3 {
        train_step(&mut model, &mut opt, s, 1, &mut batches).unwrap();
    }
    let params = model.params_to_host().unwrap();
    let state = opt.state_to_host(&model).unwrap();
    assert_eq!(state.updates, 3);
    let mut model = Gpt::new(Cpu::new(), small_cfg(), 4, 32, 999).unwrap();
    model.load_params_from_host(&params).unwrap();
    let mut opt = AdamW::new(adam(steps), &model).unwrap();
    opt.load_state(&model, &state).unwrap();
    for s in 3..steps {
        train_step(&mut model, &mut opt, s, 1, &mut batches).unwrap();
    }
    let got = model.params_to_host().unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn accumulation_matches_one_big_batch() {
    // 2 micro-batches of 2 rows == 1 batch of 4 rows (same rows), up to f32 rounding.
    let cfg = small_cfg();
    let (mut x, mut y) = (vec![0u32; 4 * 32], vec![0u32; 4 * 32]);
    text_batches(TEXT, 32)(0, 0, &mut x, &mut y).unwrap();
    let mut big = Gpt::new(Cpu::new(), cfg, 4, 32, 5).unwrap();
    let mut big_opt = AdamW::new(adam(10), &big).unwrap();
    let mut one = |_: u64, _: usize, bx: &mut [u32], by: &mut [u32]| {
        bx.copy_from_slice(&x);
        by.copy_from_slice(&y);
        Ok(())
    };
    let s_big = train_step(&mut big, &mut big_opt, 0, 1, &mut one).unwrap();
    let mut small = Gpt::new(Cpu::new(), cfg, 2, 32, 5).unwrap();
    let mut small_opt = AdamW::new(adam(10), &small).unwrap();
    let mut halves = |_: u64, m: usize, bx: &mut [u32], by: &mut [u32]| {
        bx.copy_from_slice(&x[m * 64..(m + 1) * 64]);
        by.copy_from_slice(&y[m * 64..(m + 1) * 64]);
        Ok(())
    };
    let s_small = train_step(&mut small, &mut small_opt, 0, 2, &mut halves).unwrap();
    assert!((s_big.loss - s_small.loss).abs() < 1e-5 * s_big.loss);
    assert!((s_big.grad_norm - s_small.grad_norm).abs() < 1e-4 * s_big.grad_norm);
    let (pb, ps) = (
        big.params_to_host().unwrap(),
        small.params_to_host().unwrap(),
    );
    let max_diff = pb
        .iter()
        .zip(&ps)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-5, "max parameter difference {max_diff}");
}

#[test]
fn tiny_preset_learns_a_repetitive_sequence() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let (b, t) = (4, 64);
    let mut model = Gpt::new(Cpu::new(), cfg, b, t, 1).unwrap();
    let steps = 40;
    let config = AdamWConfig {
        lr: 3e-3,
        warmup_steps: 4,
        total_steps: steps,
        schedule: LrSchedule::Cosine,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(config, &model).unwrap();
    let pattern: &'static [u8] = b"abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh \
abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh abcdefgh ";
    let mut batches = text_batches(pattern, t);
    let first = train_step(&mut model, &mut opt, 0, 1, &mut batches)
        .unwrap()
        .loss;
    // Uniform over 256 bytes is ln 256 = 5.55 nats; a fresh GPT-2 init starts there.
    assert!((first - 256f64.ln()).abs() < 0.3, "initial loss {first}");
    let mut last = first;
    for s in 1..steps {
        last = train_step(&mut model, &mut opt, s, 1, &mut batches)
            .unwrap()
            .loss;
    }
    assert!(last < 0.5, "loss only fell from {first} to {last}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let cfg = ModelConfig::new(1, 2, 8, 8, 16).unwrap();
    let mut model = Gpt::new(Cpu::new(), cfg, 1, 4, 0).unwrap();
    assert!(matches!(
        model.backward(),
        Err(ModelError::BackwardBeforeForward)
    ));
    assert!(matches!(
        model.forward(&[1, 2, 3], &[1, 2, 3, 4]),
        Err(ModelError::BatchShape {
            what: "inputs",
            want: 4,
            got: 3
        })
    ));
    assert!(matches!(
        model.forward(&[1, 2, 3, 4], &[1, 2, 16, 4]),
        Err(ModelError::TokenOutOfRange {
            what: "targets",
            token: 16,
            position: 2,
            ..
        })
    ));
    assert!(matches!(
        Gpt::new(Cpu::new(), cfg, 1, 9, 0),
        Err(ModelError::SeqLenTooLong {
            seq_len: 9,
            context: 8
        })
    ));
    assert!(matches!(
        Gpt::new(Cpu::new(), cfg, 0, 4, 0),
        Err(ModelError::ZeroDimension { what: "batch" })
    ));
    assert!(matches!(
        model.load_params_from_host(&[0.0; 3]),
        Err(ModelError::ParamCount { .. })
    ));
    let be = Cpu::new();
    let mut buf = be.alloc(10).unwrap();
    assert!(matches!(
        be.views_mut(&mut buf, [0..5, 4..6]),
        Err(BackendError::OverlappingRanges { .. })
    ));
    assert!(matches!(
        be.view(&buf, 5..11),
        Err(BackendError::OutOfBounds { .. })
    ));
    let [a, b] = be.views_mut(&mut buf, [6..10, 0..2]).unwrap();
    assert_eq!((a.len(), b.len()), (4, 2));
    let mut opt = AdamW::new(AdamWConfig::default(), &model).unwrap();
    let mut failing = |_: u64, _: usize, _: &mut [u32], _: &mut [u32]| -> Result<(), BatchError> {
        Err("shard missing".into())
    };
    assert!(matches!(
        train_step(&mut model, &mut opt, 0, 1, &mut failing),
        Err(TrainError::Batch {
            step: 0,
            micro: 0,
            ..
        })
    ));
    assert!(matches!(
        train_step(&mut model, &mut opt, 0, 0, &mut failing),
        Err(TrainError::ZeroAccumulation)
    ));
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // The same 3 steps in a 1-thread pool and a 3-thread pool give bitwise equal parameters:
    // every reduction has a fixed order, whatever the scheduling.
    let in_pool = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run(3, 2))
    };
    let (p1, l1) = in_pool(1);
    let (p3, l3) = in_pool(3);
    assert_eq!(l1, l3);
    assert!(p1.iter().zip(&p3).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn inference_logits_agree_with_the_training_loss() {
    let cfg = small_cfg();
    let mut model = Gpt::new(Cpu::new(), cfg, 2, 8, 21).unwrap();
    let (mut x, mut y) = (vec![0u32; 16], vec![0u32; 16]);
    text_batches(TEXT, 8)(0, 0, &mut x, &mut y).unwrap();
    let loss = model.forward(&x, &y).unwrap();
    model.forward_logits(&x).unwrap();
    let mut total = 0.0;
    for r in 0..2 {
        for t in 0..8 {
            let z = model.logits_at(r, t).unwrap();
            assert_eq!(z.len(), cfg.vocab);
            let max = z.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
            let lse = z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            total += lse - z[y[r * 8 + t] as usize] as f64;
        }
    }
    assert!(
        (total / 16.0 - loss).abs() < 1e-5 * loss,
        "{} vs {loss}",
        total / 16.0
    );
    assert!(matches!(
        model.backward(),
        Err(ModelError::BackwardBeforeForward)
    ));
    assert!(matches!(
        model.logits_at(2, 0),
        Err(ModelError::PositionOutOfRange { .. })
    ));
}
