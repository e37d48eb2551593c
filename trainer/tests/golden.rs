//! Golden test against the independent NumPy reference (tests/golden/gpt2_reference.py,
//! float64): same weights and batch → the f32 CPU trainer matches the loss, per-tensor gradient
//! norms, full gradients of several tensors, and 5 AdamW steps (warm-up + cosine, weight
//! decay, clipping). Tolerances (f32 vs f64): loss 1e-5 relative; gradient norms and tensors
//! 1e-4 relative; per-step losses and grad norms 1e-4 relative.

use serde_json::Value;
use tessera_trainer::backend::cpu::CpuBackend;
use tessera_trainer::config::ModelConfig;
use tessera_trainer::lm::LanguageModel;
use tessera_trainer::model::Gpt;
use tessera_trainer::optimizer::{AdamW, AdamWConfig, LrSchedule};
use tessera_trainer::train::train_step;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/fixture.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture parses")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap() as usize
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn rel_norm(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    d / n.max(1e-12)
}

struct Golden {
    fx: Value,
    model: Gpt<CpuBackend<f32>>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

fn load() -> Golden {
    let fx = fixture();
    let c = &fx["config"];
    let cfg = ModelConfig::new(
        usize_of(c, "layers"),
        usize_of(c, "heads"),
        usize_of(c, "width"),
        usize_of(c, "context"),
        usize_of(c, "vocab"),
    )
    .unwrap();
    let mut model = Gpt::new(
        CpuBackend::<f32>::new(),
        cfg,
        usize_of(c, "batch"),
        usize_of(c, "seq_len"),
        0,
    )
    .unwrap();
    // Flat parameters in the trainer's layout; wte's padded rows stay zero.
    let mut flat = vec![0f32; model.num_params()];
    for tensor in &model.layout().tensors {
        let values = floats(&fx["params"][tensor.name]);
        assert!(values.len() <= tensor.len, "{}", tensor.name);
        for (d, s) in flat[tensor.offset..].iter_mut().zip(&values) {
            *d = *s as f32;
        }
    }
    model.load_params_from_host(&flat).unwrap();
    let toks = |k: &str| -> Vec<u32> {
        fx[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (inputs, targets) = (toks("inputs"), toks("targets"));
    Golden {
        fx,
        model,
        inputs,
        targets,
    }
}

#[test]
fn loss_and_gradients_match_numpy_reference() {
    let Golden {
        fx,
        mut model,
        inputs,
        targets,
    } = load();
    model.zero_grad().unwrap();
    let loss = model.forward(&inputs, &targets).unwrap();
    let want = fx["loss"].as_f64().unwrap();
    assert!(rel(loss, want) < 1e-5, "loss {loss} vs reference {want}");
    model.backward().unwrap();
    let grads: Vec<f64> = model
        .grads_to_host()
        .unwrap()
        .iter()
        .map(|&g| g as f64)
        .collect();
    for tensor in &model.layout().tensors {
        let got = grads[tensor.range()]
            .iter()
            .map(|g| g * g)
            .sum::<f64>()
            .sqrt();
        let want = fx["grad_norms"][tensor.name].as_f64().unwrap();
        assert!(
            rel(got, want) < 1e-4,
            "{} grad norm {got} vs {want}",
            tensor.name
        );
    }
    for (name, reference) in fx["grads"].as_object().unwrap() {
        let tensor = model.layout().by_name(name).unwrap();
        let reference = floats(reference);
        let got = &grads[tensor.offset..tensor.offset + reference.len()];
        let err = rel_norm(got, &reference);
        assert!(err < 1e-4, "{name} gradient relative error {err:e}");
        // Anything past the reference (wte's padded rows) has no gradient.
        assert!(
            grads[tensor.offset + reference.len()..tensor.range().end]
                .iter()
                .all(|&g| g == 0.0)
        );
    }
}

#[test]
fn five_adamw_steps_match_numpy_reference() {
    let Golden {
        fx,
        mut model,
        inputs,
        targets,
    } = load();
    let a = &fx["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap() as f32;
    let config = AdamWConfig {
        lr: f("lr"),
        beta1: f("beta1"),
        beta2: f("beta2"),
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        decay_embeddings: false,
        grad_clip: f("grad_clip"),
        warmup_steps: a["warmup_steps"].as_u64().unwrap(),
        total_steps: a["total_steps"].as_u64().unwrap(),
        min_lr_ratio: f("min_lr_ratio"),
        schedule: LrSchedule::Cosine,
    };
    let mut opt = AdamW::new(config, &model).unwrap();
    let want_losses = floats(&fx["step_losses"]);
    let want_norms = floats(&fx["step_grad_norms"]);
    let want_lrs = floats(&fx["step_lrs"]);
    for step in 0..want_losses.len() {
        let mut batches = |_s: u64, _m: usize, x: &mut [u32], y: &mut [u32]| {
            x.copy_from_slice(&inputs);
            y.copy_from_slice(&targets);
            Ok(())
        };
        let stats = train_step(&mut model, &mut opt, step as u64, 1, &mut batches).unwrap();
        assert!(
            rel(stats.loss, want_losses[step]) < 1e-4,
            "step {step} loss {} vs {}",
            stats.loss,
            want_losses[step]
        );
        assert!(
            rel(stats.grad_norm, want_norms[step]) < 1e-4,
            "step {step} norm {} vs {}",
            stats.grad_norm,
            want_norms[step]
        );
        assert!(
            rel(stats.lr as f64, want_lrs[step]) < 1e-6,
            "step {step} lr"
        );
    }
    let final_loss = model.forward(&inputs, &targets).unwrap();
    let want = fx["final_loss"].as_f64().unwrap();
    assert!(
        rel(final_loss, want) < 1e-4,
        "final loss {final_loss} vs {want}"
    );
}
