//! `tessera status [DIR]`: the state of a local run from its output directory, live or
//! finished. A run directory (`tessera run --out DIR`) holds:
//!
//! ```text
//! DIR/store.json      {"endpoint":"tessera://127.0.0.1:PORT","namespace":"local","name":RUN}
//!                     while the run is live: where its coordination store is served
//! DIR/summary.json    the run's summary, written when it ends
//! DIR/checkpoints/    step-NNNNNNNNNN/ checkpoint directories
//! DIR/history.jsonl   one line per step (see `history`)
//! ```
//!
//! In that order of preference: the live progress the agents publish in the store (if
//! `store.json` names a store that answers), else the finished summary, else the checkpoint
//! listing. This module owns finding and rendering that state ([`inspect`], [`render_text`],
//! [`render_json`]) and the `store.json` record ([`StoreRecord`]) that `tessera run` writes.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tessera_api::{
    records::{AgentProgress, Record},
    store_keys::RunKeys,
};
use tessera_trainer::checkpoint::CheckpointListing;

use crate::{
    checkpoints,
    history::{HISTORY_FILE, History},
    progress,
};

/// Where a live run's store is, relative to the run directory.
pub const STORE_FILE: &str = "store.json";
/// The finished run's summary.
pub const SUMMARY_FILE: &str = "summary.json";
/// The checkpoint root inside a run directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// How long `tessera status` waits for a live run's store.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

/// `DIR/store.json`: how to reach a live run's coordination store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// `tessera://host:port` (or `etcd://...`).
    pub endpoint: String,
    pub namespace: String,
    pub name: String,
}

impl StoreRecord {
    /// Reads `dir/store.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<StoreRecord>> {
        read_record(dir, STORE_FILE, "a store record")
    }

    /// Writes `dir/store.json` (replacing it whole, so a reader never sees half of it).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_record(dir, STORE_FILE, self)
    }
}

/// Reads the JSON record `dir/file` (`what` names it in errors); `Ok(None)` when there is none.
pub fn read_record<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    what: &str,
) -> Result<Option<T>> {
    let path = dir.join(file);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not {what}", path.display()))
}

/// Writes `value` as the JSON record `dir/file`, replacing it whole (write, then rename), so a
/// reader never sees half of it.
pub fn write_record<T: Serialize>(dir: &Path, file: &str, value: &T) -> Result<()> {
    let path = dir.join(file);
    let partial = dir.join(format!("{file}.partial"));
    let json = serde_json::to_vec_pretty(value)?;
    std::fs::write(&partial, json)
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A JSON document as it was written, and parsed.
#[derive(Clone, Debug)]
pub struct RawJson {
    /// The text, byte for byte (what `--json` prints).
    pub text: String,
    pub value: serde_json::Value,
}

impl RawJson {
    pub fn parse(bytes: &[u8]) -> Result<RawJson, serde_json::Error> {
        let value = serde_json::from_slice(bytes)?;
        // It parsed as JSON, so it is UTF-8.
        let text = String::from_utf8_lossy(bytes).trim().to_string();
        Ok(RawJson { text, value })
    }
}

/// What a run directory says about its run.
#[derive(Clone, Debug)]
pub enum RunState {
    /// The store answered. `progress` is the published report (`None` before the first one).
    Live {
        record: StoreRecord,
        progress: Option<RawJson>,
    },
    /// The run ended and left its summary.
    Finished { path: PathBuf, summary: RawJson },
    /// Only checkpoints (an interrupted run, or one that has not finished).
    Checkpoints {
        root: PathBuf,
        listings: Vec<CheckpointListing>,
    },
}

/// The state, plus notes on what was passed over (a stale `store.json`, say) and the step
/// history when the directory has one.
#[derive(Clone, Debug)]
pub struct Status {
    pub dir: PathBuf,
    pub state: RunState,
    pub notes: Vec<String>,
    pub history: Option<History>,
}

/// Looks at a run directory: the live store first (waiting at most `timeout` for it), then
/// the summary, then the checkpoints. A directory with none of them is an error that says
/// what a run directory holds.
pub async fn inspect(dir: &Path, timeout: Duration) -> Result<Status> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; {}",
            dir.display(),
            WHAT_A_RUN_DIRECTORY_HOLDS
        );
    }
    let mut notes = Vec::new();
    let history = History::read(&dir.join(HISTORY_FILE)).ok();
    let status = |state, notes| Status {
        dir: dir.to_path_buf(),
        state,
        notes,
        history: history.clone(),
    };

    match StoreRecord::read(dir) {
        Ok(Some(record)) => match live_progress(&record, timeout).await {
            Ok(progress) => return Ok(status(RunState::Live { record, progress }, notes)),
            Err(e) => notes.push(format!(
                "{} names {}, which does not answer ({e:#}); the run is not live",
                dir.join(STORE_FILE).display(),
                record.endpoint
            )),
        },
        Ok(None) => {}
        Err(e) => notes.push(format!("{e:#}; ignored")),
    }

    let summary_path = dir.join(SUMMARY_FILE);
    match std::fs::read(&summary_path) {
        Ok(bytes) => match RawJson::parse(&bytes) {
            Ok(summary) => {
                return Ok(status(
                    RunState::Finished {
                        path: summary_path,
                        summary,
                    },
                    notes,
                ));
            }
            Err(e) => notes.push(format!(
                "{} is not JSON ({e}); ignored",
                summary_path.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => notes.push(format!("cannot read {}: {e}", summary_path.display())),
    }

    // DIR/checkpoints, or DIR itself when it is a checkpoint root.
    let nested = dir.join(CHECKPOINTS_DIR);
    for root in [nested.as_path(), dir] {
        if !root.is_dir() {
            continue;
        }
        let listings = checkpoints::list(root)?;
        if root == nested || !listings.is_empty() {
            return Ok(status(
                RunState::Checkpoints {
                    root: root.to_path_buf(),
                    listings,
                },
                notes,
            ));
        }
    }

    let mut message = format!(
        "{} is not a run directory: {WHAT_A_RUN_DIRECTORY_HOLDS}",
        dir.display()
    );
    for note in notes {
        message += &format!("\n  ({note})");
    }
    bail!(message)
}

const WHAT_A_RUN_DIRECTORY_HOLDS: &str = "a run directory (tessera run --out DIR) holds \
     store.json while the run is live, summary.json once it has finished, and checkpoints/ and \
     history.jsonl; name one (the default is the current directory)";

/// The progress JSON the run's store holds, within `timeout`.
async fn live_progress(record: &StoreRecord, timeout: Duration) -> Result<Option<RawJson>> {
    let ask = async {
        let store = tessera_store::connect(&record.endpoint, timeout).await?;
        let run =
            tessera_store::RunStore::new(store, RunKeys::new(&record.namespace, &record.name));
        anyhow::Ok(run.progress().await?)
    };
    // The connection attempt itself may outlast `timeout` by its connect timeout; cap it.
    let bytes = tokio::time::timeout(timeout + Duration::from_secs(1), ask)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
    match bytes {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            RawJson::parse(&bytes).context("the published progress is not JSON")?,
        )),
    }
}

/// `--json`: the raw JSON — the published progress as stored (`null` before the first
/// report), the summary file's text, or `{"checkpoints": [...]}`.
pub fn render_json(status: &Status) -> String {
    match &status.state {
        RunState::Live { progress, .. } => progress
            .as_ref()
            .map_or_else(|| "null".to_string(), |p| p.text.clone()),
        RunState::Finished { summary, .. } => summary.text.clone(),
        RunState::Checkpoints { listings, .. } => serde_json::json!({
            "checkpoints": listings.iter().map(checkpoints::json).collect::<Vec<_>>(),
        })
        .to_string(),
    }
}

/// The human-readable state.
pub fn render_text(status: &Status) -> String {
    let mut out = String::new();
    match &status.state {
        RunState::Live { record, progress } => {
            let _ = writeln!(
                out,
                "run {}/{}: live (store {})",
                record.namespace, record.name, record.endpoint
            );
            match progress {
                None => out += "no progress published yet: the run is starting\n",
                Some(json) => match AgentProgress::from_json(json.text.as_bytes()) {
                    Ok(p) => out += &live_text(&p),
                    Err(_) => {
                        // A report from another version: show what it says.
                        out += &generic_text(&json.value, 0);
                    }
                },
            }
        }
        RunState::Finished { path, summary } => {
            let _ = writeln!(out, "run finished ({})", path.display());
            out += &generic_text(&summary.value, 0);
        }
        RunState::Checkpoints { root, listings } => {
            if listings.is_empty() {
                let _ = writeln!(out, "no checkpoints yet in {}", root.display());
            } else {
                let _ = writeln!(
                    out,
                    "not running and no summary: {} checkpoint(s) in {}",
                    listings.len(),
                    root.display()
                );
                for c in listings {
                    out += &checkpoints::line(c);
                    out.push('\n');
                }
            }
        }
    }
    if !matches!(status.state, RunState::Live { .. })
        && let Some(h) = &status.history
        && let Some(last) = h.last()
    {
        let _ = write!(
            out,
            "history: {} steps, last step {} loss {}",
            h.points.len(),
            last.step,
            progress::loss(Some(last.loss))
        );
        if let Some((step, v)) = h.validation().last() {
            let _ = write!(
                out,
                ", validation {} at step {step}",
                progress::loss(Some(v))
            );
        }
        if !h.restarts.is_empty() {
            let at: Vec<String> = h
                .restarts
                .iter()
                .map(|r| format!("gen {} from step {}", r.generation, r.step))
                .collect();
            let _ = write!(out, "; restarts: {}", at.join(", "));
        }
        out.push('\n');
    }
    out
}

fn live_text(p: &AgentProgress) -> String {
    let mut out = String::new();
    let r = &p.run;
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<12}{value}");
    };
    row(
        "phase",
        p.phase
            .map_or_else(|| "-".into(), |phase| phase.to_string()),
    );
    row(
        "generation",
        format!(
            "{} ({} restart{})",
            r.generation,
            r.restarts,
            if r.restarts == 1 { "" } else { "s" }
        ),
    );
    row("step", r.step.to_string());
    row(
        "loss",
        format!(
            "{} (validation {})",
            progress::loss(r.loss),
            progress::loss(r.val_loss)
        ),
    );
    row("tokens/s", progress::rate(r.tokens_per_second));
    let ranks: Vec<String> = p
        .ranks
        .iter()
        .map(|(rank, state)| format!("{rank} {state}"))
        .collect();
    row(
        "ranks",
        format!(
            "{} of {}{}{}",
            p.ranks.len(),
            p.world_size,
            if ranks.is_empty() { "" } else { ": " },
            ranks.join(", ")
        ),
    );
    row(
        "checkpoint",
        r.last_checkpoint.as_ref().map_or("-".to_string(), |c| {
            format!("step {} at {} ({})", c.step, c.path, c.time)
        }),
    );
    if !p.message.is_empty() {
        row("message", p.message.clone());
    }
    for f in &p.failures {
        let recovered = f
            .recovery_seconds
            .filter(|s| s.is_finite())
            .map_or(String::new(), |s| format!("; recovered in {s:.1} s"));
        row(
            "restart",
            format!(
                "generation {} failed ({}): {}{recovered}",
                f.generation, f.kind, f.reason
            ),
        );
    }
    out
}

/// A JSON value as indented `key  value` lines.
fn generic_text(value: &serde_json::Value, indent: usize) -> String {
    use serde_json::Value;
    let pad = " ".repeat(indent + 2);
    // Values line up whatever the nesting.
    let width = 24usize.saturating_sub(indent).max(1);
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        Value::Number(n) => number(n),
        other => other.to_string(),
    };
    let mut out = String::new();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{key}");
                        out += &generic_text(v, indent + 2);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                        let _ = writeln!(out, "{pad}{key}");
                        for item in items {
                            let _ = writeln!(out, "{pad}  - {}", compact(item));
                        }
                    }
                    Value::Array(items) => {
                        let items: Vec<String> = items.iter().map(scalar).collect();
                        let _ = writeln!(out, "{pad}{key:<width$}{}", items.join(", "));
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key:<width$}{}", scalar(v));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let _ = writeln!(out, "{pad}- {}", compact(item));
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
    out
}

/// An object as `key: value, ...` on one line.
fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}: {s}"),
                serde_json::Value::Number(n) => format!("{k}: {}", number(n)),
                serde_json::Value::Null => format!("{k}: -"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A JSON number for people: integers as they are, other numbers with 4 decimals (trailing
/// zeros dropped), or 4 significant digits when very small or large.
fn number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let Some(v) = n.as_f64() else {
        return n.to_string();
    };
    if v == 0.0 || (1e-3..1e9).contains(&v.abs()) {
        let fixed = format!("{v:.4}");
        let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
        trimmed.to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// `tessera status [DIR] [--json]`: prints the state to stdout and notes to stderr.
pub fn print_status(dir: &Path, json: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(inspect(dir, STORE_TIMEOUT))?;
    for note in &status.notes {
        eprintln!("note: {note}");
    }
    if json {
        println!("{}", render_json(&status));
    } else {
        print!("{}", render_text(&status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener as StdListener, sync::Arc};

    use tessera_api::{
        progress::RunProgress,
        records::{Failure, RunPhase},
        status::CheckpointRef,
    };
    use tessera_store::{EmbeddedStore, RunStore, Store};

    use super::*;

    const QUICK: Duration = Duration::from_millis(300);

    fn progress_snapshot() -> AgentProgress {
        AgentProgress {
            version: AgentProgress::VERSION,
            run: RunProgress {
                generation: 2,
                step: 120,
                loss: Some(2.31),
                val_loss: Some(2.4),
                tokens_per_second: Some(6900.0),
                last_checkpoint: Some(CheckpointRef {
                    step: 100,
                    path: "out/checkpoints/step-0000000100".into(),
                    time: "2026-01-01T00:00:00Z".into(),
                }),
                restarts: 1,
            },
            phase: Some(RunPhase::Running),
            world_size: 2,
            ranks: [(0, "Training".to_string()), (1, "Training".to_string())].into(),
            failures: vec![Failure {
                generation: 1,
                kind: "rank-exit".into(),
                reason: "rank 1 exited with signal 9".into(),
                detected_unix_ms: 1_767_225_600_000,
                recovery_seconds: Some(3.25),
            }],
            message: String::new(),
        }
    }

    /// A port nothing listens on.
    fn dead_endpoint() -> String {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("tessera://{addr}")
    }

    fn write_history(dir: &Path) {
        let lines = [
            r#"{"generation":1,"step":1,"loss":3.5,"valLoss":null,"tokensPerSecond":1.0,"unixMs":1}"#,
            r#"{"generation":1,"step":2,"loss":3.0,"valLoss":3.2,"tokensPerSecond":1.0,"unixMs":2}"#,
            r#"{"generation":2,"step":2,"loss":2.9,"valLoss":3.1,"tokensPerSecond":1.0,"unixMs":3}"#,
            r#"{"generation":2,"step":3,"loss":2.5,"valLo"#,
        ];
        std::fs::write(dir.join(HISTORY_FILE), lines.join("\n")).unwrap();
    }

    #[tokio::test]
    async fn a_live_run_is_read_from_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = tessera_store::serve(store.clone(), listener).unwrap();
        let record = StoreRecord {
            endpoint: server.endpoint(),
            namespace: "local".into(),
            name: "tiny".into(),
        };
        record.write(dir.path()).unwrap();
        assert_eq!(StoreRecord::read(dir.path()).unwrap(), Some(record.clone()));
        // A summary from an earlier run does not hide the live one.
        std::fs::write(dir.path().join(SUMMARY_FILE), "{}").unwrap();

        // Before the first report.
        let status = inspect(dir.path(), Duration::from_secs(5)).await.unwrap();
        assert!(matches!(
            &status.state,
            RunState::Live { progress: None, .. }
        ));
        assert!(render_text(&status).contains("no progress published yet"));
        assert_eq!(render_json(&status), "null");

        let run = RunStore::new(store, RunKeys::new("local", "tiny"));
        let published = serde_json::to_vec(&progress_snapshot()).unwrap();
        run.publish_progress(&published).await.unwrap();
        let status = inspect(dir.path(), Duration::from_secs(5)).await.unwrap();
        assert!(status.notes.is_empty(), "{:?}", status.notes);
        let text = render_text(&status);
        for expected in [
            "run local/tiny: live (store tessera://",
            "phase       Running",
            "generation  2 (1 restart)",
            "step        120",
            "loss        2.31 (validation 2.40)",
            "tokens/s    6.9k",
            "ranks       2 of 2: 0 Training, 1 Training",
            "checkpoint  step 100 at out/checkpoints/step-0000000100 (2026-01-01T00:00:00Z)",
            "restart     generation 1 failed (rank-exit): rank 1 exited with signal 9; recovered in 3.2 s",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        assert_eq!(
            render_json(&status).as_bytes(),
            &published[..],
            "byte for byte"
        );

        // A report of another shape is shown as it is.
        run.publish_progress(br#"{"step":"seven","phase":"Odd"}"#)
            .await
            .unwrap();
        let text = render_text(&inspect(dir.path(), Duration::from_secs(5)).await.unwrap());
        assert!(text.contains("step") && text.contains("seven"), "{text}");
    }

    #[tokio::test]
    async fn a_stale_store_record_falls_back_to_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let record = StoreRecord {
            endpoint: dead_endpoint(),
            namespace: "local".into(),
            name: "tiny".into(),
        };
        record.write(dir.path()).unwrap();
        let summary = serde_json::json!({
            "finalLoss": 1.8125873388600246,
            "commSeconds": 3.1699e-6,
            "steps": 600,
            "finalValLoss": null,
            "restarts": [{"generation": 1, "reason": "rank 1 exited"}],
            "checkpoint": "out/checkpoints/step-0000001200",
            "tags": ["a", 2],
            "timing": {"wallSeconds": 274.5},
        });
        // Pretty, with a float that a parse-and-print round trip would change.
        let summary_text = serde_json::to_string_pretty(&summary).unwrap();
        std::fs::write(dir.path().join(SUMMARY_FILE), format!("{summary_text}\n")).unwrap();
        write_history(dir.path());
        let status = inspect(dir.path(), QUICK).await.unwrap();
        assert_eq!(status.notes.len(), 1, "{:?}", status.notes);
        assert!(
            status.notes[0].contains("does not answer"),
            "{:?}",
            status.notes
        );
        let text = render_text(&status);
        for expected in [
            "run finished (",
            "finalLoss               1.8126",
            "commSeconds             3.170e-6",
            "steps                   600",
            "finalValLoss            -",
            "  - generation: 1, reason: rank 1 exited",
            "checkpoint              out/checkpoints/step-0000001200",
            "tags                    a, 2",
            "timing\n    wallSeconds           274.5",
            "history: 2 steps, last step 2 loss 2.90, validation 3.10 at step 2; restarts: gen 2 from step 1",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        assert_eq!(render_json(&status), summary_text, "byte for byte");
    }

    #[tokio::test]
    async fn without_store_or_summary_the_checkpoints_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(root.join("step-0000000100")).unwrap();
        std::fs::create_dir_all(root.join("step-0000000200.partial")).unwrap();
        std::fs::write(dir.path().join(STORE_FILE), "{ half").unwrap();
        std::fs::write(dir.path().join(SUMMARY_FILE), "[1, 2").unwrap();
        let status = inspect(dir.path(), QUICK).await.unwrap();
        assert_eq!(status.notes.len(), 2, "{:?}", status.notes);
        let text = render_text(&status);
        assert!(text.contains("2 checkpoint(s) in"), "{text}");
        assert!(text.contains("uncommitted"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&status)).unwrap();
        let listed = json["checkpoints"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["step"], 200);

        // An empty checkpoints/ is still a run directory, just an early one.
        let early = tempfile::tempdir().unwrap();
        std::fs::create_dir(early.path().join(CHECKPOINTS_DIR)).unwrap();
        let text = render_text(&inspect(early.path(), QUICK).await.unwrap());
        assert!(text.starts_with("no checkpoints yet in"), "{text}");

        // A checkpoint root named directly works too.
        let status = inspect(&root, QUICK).await.unwrap();
        assert!(
            matches!(&status.state, RunState::Checkpoints { listings, .. } if listings.len() == 2)
        );
    }

    #[tokio::test]
    async fn a_directory_that_is_no_run_directory_is_refused_with_what_one_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = format!("{:#}", inspect(dir.path(), QUICK).await.unwrap_err());
        assert!(err.contains("is not a run directory"), "{err}");
        assert!(
            err.contains("store.json") && err.contains("summary.json"),
            "{err}"
        );
        let missing = dir.path().join("nope");
        let err = format!("{:#}", inspect(&missing, QUICK).await.unwrap_err());
        assert!(err.contains("is not a directory"), "{err}");
        // A stale store record is mentioned in the refusal.
        StoreRecord {
            endpoint: dead_endpoint(),
            namespace: "local".into(),
            name: "x".into(),
        }
        .write(dir.path())
        .unwrap();
        let err = format!("{:#}", inspect(dir.path(), QUICK).await.unwrap_err());
        assert!(err.contains("does not answer"), "{err}");
    }
}
