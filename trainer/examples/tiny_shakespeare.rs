//! Trains the `tiny` preset byte-level on tinyshakespeare and reports tokens/s and validation
//! loss (nats/byte). The numeric core's throughput check; the real CLI lives in the root crate.
//!
//! `cargo run -p tessera-trainer --release --example tiny_shakespeare -- [PATH] [STEPS] [BATCH] [LR]`
//! Defaults (1800 steps, batch 8×128, lr 4e-3, 5% warm-up, cosine to 0.1×, wd 0.1) reached
//! val 1.75 nats/byte in 295 s on the 2-core dev machine.

use std::time::Instant;
use tessera_trainer::backend::cpu::CpuBackend;
use tessera_trainer::config::ModelConfig;
use tessera_trainer::model::Gpt;
use tessera_trainer::optimizer::{AdamW, AdamWConfig};
use tessera_trainer::rng::Rng;
use tessera_trainer::train::train_step;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map_or("/work/shared/data/tinyshakespeare.txt", |s| s.as_str());
    let steps: u64 = args.get(2).map_or(Ok(1800), |s| s.parse())?;
    let batch: usize = args.get(3).map_or(Ok(8), |s| s.parse())?;
    let lr: f32 = args.get(4).map_or(Ok(4e-3), |s| s.parse())?;
    let bytes = std::fs::read(path)?;
    let split = bytes.len() * 9 / 10;
    let (train, val) = (&bytes[..split], &bytes[split..]);
    let cfg = ModelConfig::preset("tiny")?;
    let t = cfg.context;
    let mut model = Gpt::new(CpuBackend::<f32>::new(), cfg, batch, t, 1337)?;
    let mut opt = AdamW::new(
        AdamWConfig {
            lr,
            warmup_steps: steps / 20,
            total_steps: steps,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
        &model,
    )?;
    let mut batches = |step: u64, micro: usize, x: &mut [u32], y: &mut [u32]| {
        let mut rng = Rng::new(step.wrapping_mul(0x9E37_79B9) ^ micro as u64);
        for r in 0..x.len() / t {
            let s = (rng.next_u64() % (train.len() - t - 1) as u64) as usize;
            for i in 0..t {
                x[r * t + i] = train[s + i] as u32;
                y[r * t + i] = train[s + i + 1] as u32;
            }
        }
        Ok(())
    };
    println!(
        "tiny: {} params, {:.2} MFLOP/token, batch {batch}x{t}, {steps} steps",
        model.num_params(),
        cfg.flops_per_token(t) / 1e6
    );
    let start = Instant::now();
    let mut timed = (0.0, 0u64);
    for step in 0..steps {
        let t0 = Instant::now();
        let stats = train_step(&mut model, &mut opt, step, 1, &mut batches)?;
        if step >= 3 {
            timed.0 += t0.elapsed().as_secs_f64();
            timed.1 += 1;
        }
        if step % 50 == 0 || step + 1 == steps {
            let tok_s = (timed.1 as usize * batch * t) as f64 / timed.0.max(1e-9);
            println!(
                "step {step:5} loss {:.4} norm {:.3} lr {:.2e} | {tok_s:.0} tok/s | {:.0}s",
                stats.loss,
                stats.grad_norm,
                stats.lr,
                start.elapsed().as_secs_f64()
            );
        }
    }
    // Validation: non-overlapping windows over the held-out 10%.
    let mut total = 0.0;
    let mut n = 0;
    let (mut x, mut y) = (vec![0u32; batch * t], vec![0u32; batch * t]);
    let windows = (val.len() - 1) / t;
    for w0 in (0..windows.saturating_sub(batch)).step_by(batch).take(20) {
        for r in 0..batch {
            let s = (w0 + r) * t;
            for i in 0..t {
                x[r * t + i] = val[s + i] as u32;
                y[r * t + i] = val[s + i + 1] as u32;
            }
        }
        total += model.forward(&x, &y)?;
        n += 1;
    }
    let tok_s = (timed.1 as usize * batch * t) as f64 / timed.0.max(1e-9);
    println!(
        "val loss {:.4} nats/byte over {n} batches | train {tok_s:.0} tok/s ({:.2} GFLOP/s) | {:.0}s total",
        total / n as f64,
        tok_s * cfg.flops_per_token(t) / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
