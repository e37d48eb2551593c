//! `tessera run` end to end on this machine: two local nodes of one CPU rank each, the
//! embedded store, real trainer processes. A trainer killed mid-run costs a restart, not the
//! run: it resumes from the last checkpoint and ends with the weights of an undisturbed run.
//! Invalid manifests are refused before anything starts.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value as Json;

#[path = "../api/tests/cases/mod.rs"]
mod cases;
mod common;

const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: local-e2e
spec:
  model: {preset: tiny}
  data: {train: data/train-*.bin, validation: data/val-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 5, globalBatchTokens: 1024, microBatch: 2}
  training: {steps: 40, seed: 7, evalInterval: 20, evalBatches: 2}
  parallelism: {nodes: 2, gpusPerNode: 1}
  checkpoint: {path: checkpoints, everySteps: 10, keep: 3}
  faultTolerance: {backoffSeconds: 0, heartbeatTimeoutSeconds: 10, maxRestarts: 3}
"#;

fn tessera_run(dir: &Path, out: &str) -> Command {
    let mut cmd = Command::new(common::bin("tessera"));
    cmd.arg("run")
        .arg(dir.join("run.yaml"))
        .args(["--out", &dir.join(out).to_string_lossy(), "--json"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // `tessera run` starts tessera-trainer from its own directory.
    common::bin("tessera-trainer");
    cmd
}

fn summary_of(output: std::process::Output) -> (Json, String) {
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "tessera run failed:\n{log}");
    let summary = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("summary JSON: {e}\n{log}"));
    (summary, log)
}

#[test]
fn a_killed_trainer_costs_one_restart_and_the_weights_are_unchanged() {
    let dir = common::run_dir(MANIFEST);
    let (clean, clean_log) = summary_of(tessera_run(dir.path(), "clean").output().unwrap());
    assert_eq!(clean["phase"], "Succeeded");
    assert_eq!(clean["restarts"], 0);
    assert_eq!(clean["steps"], 40);
    // Not a terminal: progress comes as plain lines, never redrawn in place.
    assert!(!clean_log.contains('\r'), "{clean_log}");
    assert!(clean_log.contains("step "), "{clean_log}");

    let child = tessera_run(dir.path(), "killed").spawn().unwrap();
    common::wait_for_step(
        &dir.path().join("killed/history.jsonl"),
        15,
        Duration::from_secs(120),
    );
    let victims = common::trainers_of(dir.path());
    assert_eq!(victims.len(), 2, "two trainer ranks run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victims[1]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (killed, log) = summary_of(child.wait_with_output().unwrap());
    assert_eq!(killed["phase"], "Succeeded", "{log}");
    assert_eq!(killed["restarts"], 1, "{log}");
    let failures = killed["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{killed}");
    assert!(
        failures[0]["reason"].as_str().unwrap().contains("signal 9"),
        "{killed}"
    );
    assert_eq!(
        killed["weightsSha256"], clean["weightsSha256"],
        "the resumed run's weights differ from the undisturbed run's"
    );
    assert!(
        common::trainers_of(dir.path()).is_empty(),
        "no trainer is left behind"
    );

    // The loss curve is drawn next to the checkpoints, as a real PNG and an SVG.
    let png = std::fs::read(dir.path().join("killed/loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().expect("a decodable PNG");
    assert!(reader.info().width >= 320 && reader.info().height >= 200);
    let svg = std::fs::read_to_string(dir.path().join("killed/loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
    assert!(
        svg.contains("restart"),
        "the restart is marked on the curve"
    );
}

/// The manifest names raw text; `tessera run` tokenizes it into the cache beside the
/// checkpoints and holds out a validation split.
const TEXT_MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: local-text
spec:
  model: {preset: tiny}
  data: {train: corpus.txt, validationFraction: 0.1, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 2, globalBatchTokens: 512, microBatch: 2}
  training: {steps: 6, seed: 7, evalInterval: 3, evalBatches: 2}
  parallelism: {nodes: 2, gpusPerNode: 1}
  checkpoint: {path: checkpoints, everySteps: 3, keep: 2}
  faultTolerance: {backoffSeconds: 0, heartbeatTimeoutSeconds: 30, maxRestarts: 1}
"#;

#[test]
fn text_in_the_manifest_is_tokenized_once_into_the_cache() {
    let dir = common::run_dir(TEXT_MANIFEST);
    let (first, log) = summary_of(tessera_run(dir.path(), "text").output().unwrap());
    assert_eq!(first["phase"], "Succeeded", "{log}");
    assert_eq!(first["steps"], 6, "{log}");
    assert!(first["finalValLoss"].is_number(), "{first}");
    assert!(log.contains("data: 1 file tokenized with bytes"), "{log}");
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("text/checkpoints/tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "one cache entry: {entries:?}");
    let record: Json =
        serde_json::from_slice(&std::fs::read(entries[0].join("cache.json")).unwrap()).unwrap();
    assert_eq!(record["trainTokens"], 180_000, "{record}");
    assert_eq!(record["valTokens"], 20_000, "{record}");

    // The second start of the same run finds the entry: nothing is tokenized again.
    let (second, log) = summary_of(tessera_run(dir.path(), "text").output().unwrap());
    assert_eq!(second["phase"], "Succeeded", "{log}");
    assert!(log.contains("data: 1 file cached"), "{log}");
    assert!(!log.contains("tokenized with"), "{log}");
    assert_eq!(second["weightsSha256"], first["weightsSha256"]);
}

#[test]
fn invalid_manifests_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for case in cases::invalid_cases() {
        let mut document = cases::base_document();
        cases::apply(&mut document, &case.edits);
        let file = dir.path().join("run.yaml");
        std::fs::write(&file, serde_yaml::to_string(&document).unwrap()).unwrap();
        let out = Command::new(common::bin("tessera"))
            .arg("run")
            .arg(&file)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", case.name);
        assert!(err.contains(case.field), "{}: {err}", case.name);
        // The same words `tessera validate` (and so the CRD) uses.
        let validate = Command::new(common::bin("tessera"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let expected = String::from_utf8_lossy(&validate.stderr);
        let first_violation = expected
            .lines()
            .find(|l| l.contains(case.field))
            .unwrap_or_else(|| panic!("{}: validate names the field: {expected}", case.name));
        assert!(
            err.contains(first_violation.trim()),
            "{}: `tessera run` said {err}, `tessera validate` said {expected}",
            case.name
        );
        assert!(
            !dir.path().join("runs").exists(),
            "{}: nothing may start",
            case.name
        );
    }
}

#[test]
fn sigterm_checkpoints_and_stops_and_the_same_command_resumes() {
    let dir = common::run_dir(MANIFEST);
    let (clean, _) = summary_of(tessera_run(dir.path(), "clean").output().unwrap());

    let child = tessera_run(dir.path(), "stopped").spawn().unwrap();
    common::wait_for_step(
        &dir.path().join("stopped/history.jsonl"),
        15,
        Duration::from_secs(120),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (stopped, log) = summary_of(child.wait_with_output().unwrap());
    assert_eq!(stopped["phase"], "Stopped", "{log}");
    let at = stopped["steps"].as_u64().unwrap();
    assert!((15..40).contains(&at), "{stopped}");
    let checkpoint = dir
        .path()
        .join(format!("stopped/checkpoints/step-{at:010}/manifest.json"));
    assert!(checkpoint.is_file(), "a checkpoint at the stop step");

    let (resumed, log) = summary_of(
        tessera_run(dir.path(), "stopped")
            .env("RUST_LOG", "info")
            .output()
            .unwrap(),
    );
    assert_eq!(resumed["phase"], "Succeeded", "{log}");
    // The agents verified the checkpoint under OUT/checkpoints (where the ranks write) and
    // handed it down; the ranks loaded that one (under an agent they never scan).
    let handed = format!("stopped/checkpoints/step-{at:010}");
    assert!(
        log.lines()
            .any(|l| l.contains("resume from this verified checkpoint") && l.contains(&handed)),
        "no agent handed down {handed}:\n{log}"
    );
    assert_eq!(resumed["resumedFrom"], at, "{resumed}");
    assert_eq!(resumed["weightsSha256"], clean["weightsSha256"]);
}
