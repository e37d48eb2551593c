//! Data parallelism across ranks: every sharding stage on 4 ranks against 1 rank with the
//! whole batch, ZeRO-1's memory accounting, resharding resume from 4 ranks onto 2 and 3, and
//! the trainer binary's static rendezvous (a whole gang, and a rank that never arrives).
//!
//! Ranks run as threads of this test (each with its own model and TCP ring on loopback), except
//! where the binary itself is under test.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use tessera_trainer::{
    checkpoint::{load_checkpoint, verify_checkpoint},
    run::RunSummary,
};

mod common;

const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: dp-test
spec:
  model: {layers: 2, heads: 2, width: 32, context: 32}
  data: {train: data/train-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 3, globalBatchTokens: 256, microBatch: 8}
  training: {steps: 20, seed: 11}
  checkpoint: {path: checkpoints, everySteps: 20, keep: 30, async: false}
"#;

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Runs the manifest in `dir` with `overrides` on `world` ranks (threads); returns each rank's
/// summary in rank order.
fn gang(dir: &Path, world: u32, overrides: &[&str]) -> Vec<RunSummary> {
    common::gang(dir, world, overrides, u64::MAX)
}

/// The parameters of the committed checkpoint of `step` under `root`, by tensor name.
fn params_at(root: &Path, step: u64) -> Vec<f32> {
    let dir = root.join(format!("step-{step:010}"));
    let loaded = load_checkpoint(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    loaded.model.iter().flat_map(|t| t.values.clone()).collect()
}

fn loss_at(root: &Path, step: u64) -> f64 {
    let dir = root.join(format!("step-{step:010}"));
    load_checkpoint(&dir).unwrap().manifest.loss.unwrap()
}

/// max |a − b| / max |b|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max(f64::from(x - y).abs()));
    diff / scale
}

#[test]
fn every_stage_on_four_ranks_matches_one_rank_with_four_times_the_micro_batch() {
    let dir = common::run_dir_with(MANIFEST);
    let one = gang(dir.path(), 1, &["checkpoint.path=ck-1"]);
    let reference = params_at(&dir.path().join("ck-1"), 20);

    let mut per_stage: Vec<(String, Vec<f32>, Vec<RunSummary>)> = Vec::new();
    for stage in ["none", "optimizer", "gradients"] {
        let path = format!("checkpoint.path=ck-{stage}");
        let sharding = format!("parallelism.sharding={stage}");
        let ranks = gang(dir.path(), 4, &[&path, &sharding, "optimizer.microBatch=2"]);
        // Every rank ends with the same weights.
        assert!(
            ranks
                .windows(2)
                .all(|w| w[0].weights_sha256 == w[1].weights_sha256),
            "{stage}: ranks disagree"
        );
        let params = params_at(&dir.path().join(format!("ck-{stage}")), 20);
        per_stage.push((stage.to_string(), params, ranks));
    }

    // The stages sum every gradient element in the same ring order: bit-identical weights.
    for (stage, params, ranks) in &per_stage[1..] {
        assert_eq!(
            ranks[0].weights_sha256, per_stage[0].2[0].weights_sha256,
            "{stage} differs from none"
        );
        assert_eq!(params, &per_stage[0].1);
    }
    // Against one rank holding the whole batch, only the association of the f32 sums differs
    // (four partial gradients added in ring order vs one product over all rows): a relative
    // rounding difference of ~1e-7 per step that AdamW's normalisation carries into the
    // weights. Measured after 20 steps at lr 3e-3: 3.6e-6 of the largest weight magnitude;
    // 5e-5 leaves room and still fails on any real error (a dropped or double-counted
    // micro-batch moves the weights by ~1e-2).
    let diff = max_rel_diff(&per_stage[0].1, &reference);
    assert!(diff < 5e-5, "4 ranks vs 1 rank: max relative diff {diff:e}");
    let loss_gap = (per_stage[0].2[0].final_loss.unwrap() - one[0].final_loss.unwrap()).abs();
    assert!(loss_gap < 1e-4, "final loss differs by {loss_gap}");

    // ZeRO-1's memory: each of 4 ranks holds a quarter of the unsharded optimizer state
    // (the even split may give a rank one element more of m and v: 8 bytes).
    let unsharded = one[0].optimizer_state_bytes;
    let (_, _, zero1) = &per_stage[1];
    let total: usize = zero1.iter().map(|r| r.optimizer_state_bytes).sum();
    assert_eq!(total, unsharded);
    for rank in zero1 {
        let quarter = unsharded as f64 / 4.0;
        assert!(
            (rank.optimizer_state_bytes as f64 - quarter).abs() <= 8.0,
            "rank {} holds {} bytes, a quarter is {quarter}",
            rank.rank,
            rank.optimizer_state_bytes
        );
    }
    // Without sharding every rank holds it all.
    assert!(
        per_stage[0]
            .2
            .iter()
            .all(|r| r.optimizer_state_bytes == unsharded)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_checkpoint_from_four_ranks_resumes_on_two_and_three() {
    let dir = common::run_dir_with(MANIFEST);
    // 12 sequences a step: 4 ranks × 3, 3 × 4 or 2 × 6 micro-batches of one.
    let shape = [
        "optimizer.microBatch=1",
        "optimizer.globalBatchTokens=384",
        "training.steps=8",
        "checkpoint.everySteps=1",
        "parallelism.sharding=optimizer",
    ];
    let with = |path: &str| {
        let mut all: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
        all.push(format!("checkpoint.path={path}"));
        all
    };
    let args = with("ck-4");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    gang(dir.path(), 4, &refs);
    let uninterrupted = dir.path().join("ck-4");

    for world in [2u32, 3] {
        let root = format!("ck-resumed-{world}");
        copy_dir(
            &uninterrupted.join("step-0000000004"),
            &dir.path().join(&root).join("step-0000000004"),
        );
        let args = with(&root);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let ranks = gang(dir.path(), world, &refs);
        assert!(ranks.iter().all(|r| r.resumed_from == Some(4)));
        let resumed = dir.path().join(&root);
        // The first step after the resume sees the same weights, optimizer state and batch.
        let (a, b) = (loss_at(&resumed, 5), loss_at(&uninterrupted, 5));
        assert!(
            (a - b).abs() < 1e-6,
            "{world} ranks: step 5 loss {a} vs {b}"
        );
        // And the run goes on learning the same way.
        let diff = max_rel_diff(&params_at(&resumed, 8), &params_at(&uninterrupted, 8));
        assert!(
            diff < 1e-4,
            "{world} ranks: weights at step 8 differ by {diff:e}"
        );
        // The resumed run wrote its own shards: one per rank of the new world.
        let manifest = load_checkpoint(&resumed.join("step-0000000008"))
            .unwrap()
            .manifest;
        assert_eq!(manifest.world_size, world);
        let shards = manifest.files.iter().filter(|f| f.rank.is_some()).count();
        assert_eq!(shards, world as usize);
    }
}

#[test]
fn a_gang_writes_its_checkpoints_in_the_background_with_the_same_contents() {
    // 3 ranks (an uneven split), a checkpoint every 3 steps: written by the ranks' threads
    // while training goes on, committed by rank 0 at a later step once all shards are durable.
    let dir = common::run_dir_with(MANIFEST);
    let shape = [
        "optimizer.microBatch=1",
        "optimizer.globalBatchTokens=384",
        "training.steps=10",
        "checkpoint.everySteps=3",
        "checkpoint.keep=10",
        "parallelism.sharding=optimizer",
    ];
    let run = |path: &str, write_async: bool| {
        let mut all: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
        all.push(format!("checkpoint.path={path}"));
        all.push(format!("checkpoint.async={write_async}"));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        gang(dir.path(), 3, &refs)
    };
    let sync = run("ck-sync", false);
    let background = run("ck-async", true);
    assert_eq!(background[0].weights_sha256, sync[0].weights_sha256);
    let (a, b) = (dir.path().join("ck-async"), dir.path().join("ck-sync"));
    for step in [3u64, 6, 9, 10] {
        let dir_of = |root: &Path| root.join(format!("step-{step:010}"));
        let report = verify_checkpoint(&dir_of(&a));
        assert!(report.is_valid(), "step {step}: {report:?}");
        let (x, y) = (
            load_checkpoint(&dir_of(&a)).unwrap(),
            load_checkpoint(&dir_of(&b)).unwrap(),
        );
        assert_eq!(x.manifest.world_size, 3);
        let shards = x.manifest.files.iter().filter(|f| f.rank.is_some()).count();
        assert_eq!(shards, 3, "step {step}");
        // Byte for byte the same files as the synchronous writes.
        let hashes = |m: &tessera_api::checkpoint::CheckpointManifest| {
            let mut h: Vec<(String, String)> = m
                .files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect();
            h.sort();
            h
        };
        assert_eq!(hashes(&x.manifest), hashes(&y.manifest), "step {step}");
    }
    // Nothing half-written is left behind.
    let partials: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
    // And the run resumes from a background checkpoint: 4 ranks this time.
    let resumed_root = dir.path().join("ck-resume");
    copy_dir(
        &a.join("step-0000000006"),
        &resumed_root.join("step-0000000006"),
    );
    let mut all: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    all.push("checkpoint.path=ck-resume".into());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let ranks = gang(dir.path(), 4, &refs);
    assert!(ranks.iter().all(|r| r.resumed_from == Some(6)));
    let gap = (loss_at(&resumed_root, 9) - loss_at(&a, 9)).abs();
    assert!(gap < 1e-6, "step 9 loss after resuming differs by {gap}");
}

fn trainer(dir: &Path, rank: u32, world: u32, master: &str, timeout_s: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera-trainer"));
    cmd.arg("--config")
        .arg(dir.join("run.yaml"))
        .arg("--base-dir")
        .arg(dir)
        .args(["--rank", &rank.to_string()])
        .args(["--world-size", &world.to_string()])
        .args(["--master-addr", master])
        .args(["--rendezvous-timeout", &timeout_s.to_string()])
        .args([
            "--set",
            "training.steps=4",
            "--set",
            "optimizer.microBatch=4",
        ]);
    cmd
}

#[test]
fn the_binary_trains_as_a_gang_of_two_processes() {
    let dir = common::run_dir_with(MANIFEST);
    let master = free_addr();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            trainer(dir.path(), rank, 2, &master, 30)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let summaries: Vec<serde_json::Value> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{log}");
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    assert_eq!(summaries[0]["worldSize"], 2);
    assert_eq!(summaries[1]["rank"], 1);
    assert_eq!(summaries[0]["weightsSha256"], summaries[1]["weightsSha256"]);
    let ckpt: PathBuf = dir.path().join("checkpoints/step-0000000004");
    assert!(load_checkpoint(&ckpt).is_ok());
}

#[test]
fn a_rank_that_never_arrives_fails_the_rendezvous_naming_it() {
    let dir = common::run_dir_with(MANIFEST);
    let master = free_addr();
    let out = trainer(dir.path(), 0, 3, &master, 1)
        .args(["--set", "optimizer.globalBatchTokens=384"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("rank(s) [1, 2] of 3 did not reach rank 0"),
        "{log}"
    );
    assert!(!dir.path().join("checkpoints").exists());
}
