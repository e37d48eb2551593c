//! Helpers shared by the trainer's integration tests: seeded random tensors, central finite
//! differences, and error measures.
#![allow(dead_code)] // each test binary uses a different subset

use tessera_trainer::rng::Rng;

/// `n` values ~ N(0, std²) from `seed`.
pub fn randn(seed: u64, n: usize, std: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() * std).collect()
}

/// `n` token ids below `limit`.
pub fn tokens(seed: u64, n: usize, limit: u32) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % limit as u64) as u32)
        .collect()
}

/// Rounds f64 values to f32-representable ones (so f32 and f64 kernels see identical inputs).
pub fn f32_exact(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v as f32 as f64).collect()
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// ‖a − b‖ / max(‖a‖, ‖b‖) (0 when both are zero).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    let denom = na.max(nb);
    if denom == 0.0 { 0.0 } else { diff / denom }
}

/// Central finite differences of `f` at `x` for the indices in `which` (all when `None`).
pub fn numeric_grad(
    x: &[f64],
    which: Option<&[usize]>,
    eps: f64,
    mut f: impl FnMut(&[f64]) -> f64,
) -> Vec<f64> {
    let mut xp = x.to_vec();
    let all: Vec<usize> = (0..x.len()).collect();
    let idx = which.unwrap_or(&all);
    idx.iter()
        .map(|&i| {
            let orig = xp[i];
            xp[i] = orig + eps;
            let fp = f(&xp);
            xp[i] = orig - eps;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * eps)
        })
        .collect()
}

/// Asserts the analytic gradient matches finite differences to `tol` (relative, by norm),
/// and that the gradient is not trivially zero.
pub fn assert_grad_close(name: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
    let err = rel_err(analytic, numeric);
    let norm: f64 = numeric.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(
        norm > 1e-8,
        "{name}: numeric gradient is ~0 ({norm}); the check would be vacuous"
    );
    assert!(
        err < tol,
        "{name}: relative error {err:e} >= {tol:e} (analytic {:?}.. vs numeric {:?}..)",
        &analytic[..analytic.len().min(4)],
        &numeric[..numeric.len().min(4)]
    );
}

/// max |a − b| / max(max |b|, 1e-30).
pub fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let s = b.iter().map(|x| x.abs()).fold(0.0, f64::max).max(1e-30);
    m / s
}

/// A temporary run directory holding `manifest` as `run.yaml` and byte-level train and
/// validation shards (`data/`) of a generated, repetitive text that a small model learns fast.
pub fn run_dir_with(manifest: &str) -> tempfile::TempDir {
    use tessera_api::spec::Tokenizer;
    use tessera_trainer::data::prepare::{PrepareOptions, prepare};
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "tessera", "trains", "models", "on", "many", "nodes", "and", "keeps", "going", "after",
        "failures",
    ];
    let mut state = 12345u64;
    let mut text = String::new();
    while text.len() < 60_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if (state >> 20).is_multiple_of(9) {
            '\n'
        } else {
            ' '
        });
    }
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, text).unwrap();
    prepare(&PrepareOptions::new(
        Tokenizer::Bytes,
        dir.path().join("data"),
        vec![input],
    ))
    .unwrap();
    std::fs::write(dir.path().join("run.yaml"), manifest).unwrap();
    dir
}

/// Stops the run (after a checkpoint) once `0` steps are done, as a supervisor would.
pub struct StopAfter(pub u64);

impl tessera_trainer::hook::RunHook for StopAfter {
    fn step_done(
        &mut self,
        report: &tessera_trainer::metrics::StepReport,
        _val_loss: Option<f64>,
    ) -> tessera_trainer::hook::Directive {
        // `report.step` is the number of steps completed.
        if report.step >= self.0 {
            tessera_trainer::hook::Directive::Stop
        } else {
            tessera_trainer::hook::Directive::Continue
        }
    }
}

/// Trains `dir/run.yaml` (with `overrides`) on `world` ranks as threads of this test, each
/// with its own model and a TCP ring on loopback, stopped by the supervisor after
/// `stop_after` steps; returns each rank's summary in rank order.
pub fn gang(
    dir: &std::path::Path,
    world: u32,
    overrides: &[&str],
    stop_after: u64,
) -> Vec<tessera_trainer::run::RunSummary> {
    use tessera_trainer::collective::rendezvous::{StaticRendezvous, rendezvous};
    let yaml = std::fs::read_to_string(dir.join("run.yaml")).unwrap();
    let overrides: Vec<tessera_api::manifest::Override> =
        overrides.iter().map(|o| o.parse().unwrap()).collect();
    let run = tessera_api::manifest::parse_training_run_with(&yaml, &overrides).unwrap();
    let master = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (run, master) = (&run, &master);
                s.spawn(move || {
                    let comm = rendezvous(&StaticRendezvous {
                        master_addr: master.clone(),
                        rank,
                        world_size: world,
                        generation: 0,
                        timeout: std::time::Duration::from_secs(30),
                        collective_timeout: std::time::Duration::from_secs(60),
                    })
                    .unwrap();
                    let options = tessera_trainer::run::RunOptions::new(dir, "gang-test");
                    tessera_trainer::run::train_ranked(
                        tessera_trainer::backend::cpu::CpuBackend::<f32>::new(),
                        run,
                        &options,
                        comm,
                        &mut StopAfter(stop_after),
                    )
                    .unwrap_or_else(|e| panic!("rank {rank}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The `tessera-trainer` binary on `dir/run.yaml` (its summary JSON on stdout, its log at
/// info level on stderr, a line per step).
pub fn trainer(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-trainer"));
    cmd.arg("--config")
        .arg(dir.join("run.yaml"))
        .arg("--base-dir")
        .arg(dir)
        .arg("--log-every")
        .arg("1")
        .env("RUST_LOG", "info");
    cmd
}

/// Runs the trainer on `dir` to completion; returns its JSON summary and its log.
pub fn train(dir: &std::path::Path) -> (serde_json::Value, String) {
    let out = trainer(dir).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "trainer failed:\n{log}");
    let summary =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("summary: {e}\n{log}"));
    (summary, log)
}

/// Starts the trainer on `dir` and SIGKILLs it (nothing written on the way out) once it has
/// committed the checkpoint of `step`; panics if that takes over 120 s or the run finished
/// first.
pub fn kill_after_checkpoint(dir: &std::path::Path, step: u64) {
    use std::io::{BufRead, BufReader};
    let mut child = trainer(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let wanted = format!("step={step}");
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("checkpoint committed") && line.contains(&wanted) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint at step {step} within 120 s"
        );
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `resumed` (a trainer summary) resumed from a checkpoint at or after `killed_at` and before
/// its last step `steps`, and ended with `uninterrupted`'s weights.
pub fn assert_resumed_to(
    resumed: &serde_json::Value,
    uninterrupted: &serde_json::Value,
    killed_at: u64,
    steps: u64,
) {
    let from = resumed["resumedFrom"]
        .as_u64()
        .expect("the second start resumed");
    assert!((killed_at..steps).contains(&from), "resumed from {from}");
    assert_eq!(
        resumed["weightsSha256"], uninterrupted["weightsSha256"],
        "a killed and resumed run must end bit-identical to the uninterrupted one"
    );
}

/// A synthetic chat set: `n` questions with fixed answers.
pub fn chat_jsonl(n: usize) -> String {
    let words = [
        "king", "house", "lord", "night", "speak", "come", "good", "thee",
    ];
    let mut out = String::new();
    for i in 0..n {
        let q = format!("What is {} {}?", words[i % 8], i);
        let a = format!("The {} of {}.", words[(i * 3 + 1) % 8], i);
        out.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{q}\"}}, {{\"role\": \"assistant\", \"content\": \"{a}\"}}]}}\n"
        ));
    }
    out
}
