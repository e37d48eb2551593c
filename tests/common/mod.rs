//! Helpers for the end-to-end tests: the workspace's binaries, a run directory with a small
//! byte-level corpus, finding and signalling the trainer processes a test started, and waiting
//! for a run's step history to reach a step.
#![allow(dead_code)] // each test binary uses a different subset

pub mod hosts;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// A binary of this workspace, built on demand when the test run did not build it (each
/// binary is named after its package).
pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_tessera"))
        .parent()
        .expect("the tessera binary lives in a directory")
        .to_path_buf();
    let path = dir.join(name);
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", name, "--bin", name])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    path
}

/// A temporary run directory: `run.yaml` (`manifest`) and byte-level shards in `data/` of
/// the first 200 kB of the shared test corpus.
pub fn run_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt");
    let text = std::fs::read(&corpus)
        .unwrap_or_else(|e| panic!("the test corpus {}: {e}", corpus.display()));
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text[..text.len().min(200_000)]).unwrap();
    let out = Command::new(bin("tessera"))
        .args(["data", "prepare", "--tokenizer", "bytes", "--out"])
        .arg(dir.path().join("data"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("run.yaml"), manifest).unwrap();
    dir
}

/// Trainer processes whose command line mentions `marker` (a test's own temporary path), so
/// a test only ever signals what it started.
pub fn trainers_of(marker: &Path) -> Vec<i32> {
    let marker = marker.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let program = cmdline.split('\0').next().unwrap_or("");
        if program.ends_with("tessera-trainer") && cmdline.contains(&marker) {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// The newest step `history` (a run's history.jsonl) has a line for (0 before the first).
pub fn last_step(history: &Path) -> u64 {
    std::fs::read_to_string(history)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Waits until `history` (a run's history.jsonl) has a line for `step`; panics after `limit`.
pub fn wait_for_step(history: &Path, step: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let reached = last_step(history);
        if reached >= step {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not reach step {step} within {limit:?} (at {reached})",
            history.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
