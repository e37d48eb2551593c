//! The records Tessera's processes hand each other: one type per record, written by one side
//! and read by the other through the same type, so no reader looks a field up by name.
//!
//! | record | written by | where | read by |
//! |---|---|---|---|
//! | [`RankSummary`] | `tessera-trainer` at its end | one JSON line on stdout | the agent (into its report), `tessera run` (its summary) |
//! | [`StepRecord`] | rank 0 of the trainer, each step | a line of `history.jsonl` (`--history`) | `tessera run` / `tessera status` (the loss curve) |
//! | [`AgentProgress`] | the agent of rank 0 | the store's `progress` key | `tessera run` (progress display), `tessera status`; the operator reads its [`RunProgress`] part |
//! | [`GenerationEnded`] | the agent whose bump ended a generation | `rendezvous/{g}/ended` | every agent (the failure a peer saw) |
//! | [`CheckpointCommit`] | the agent of rank 0, before rank 0 commits, only while its generation is current | `checkpoints/commits/{step}` | every agent (which checkpoint directory is the committed one) |
//! | [`Failure`], [`FailureKind`], [`RunPhase`] | parts of the above | | |
//!
//! Keys come from [`crate::store_keys::RunKeys`]. Versioning: every record persisted to disk
//! or the store, or printed for another binary, carries `version` ([`Record::VERSION`]). A
//! record without it was written before the field existed and reads as version 1. Adding a
//! field that readers may miss (with a default) keeps the version; changing what a field
//! means raises it, and a reader refuses a version newer than its own ([`Record::from_json`])
//! rather than misreading it. Unknown fields are ignored.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use crate::progress::RunProgress;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{what} is not valid JSON of its shape: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what} is version {found}, newer than this build reads ({known}); upgrade this binary"
    )]
    NewerVersion {
        what: &'static str,
        found: u32,
        known: u32,
    },
}

/// A versioned record: one JSON document (or line) with a `version` field.
pub trait Record: Serialize + DeserializeOwned {
    /// The version this build writes, and the newest it reads.
    const VERSION: u32;
    /// What the record is, for errors ("a rank summary").
    const WHAT: &'static str;

    /// The version the record says it is.
    fn version(&self) -> u32;

    /// Parses one record, refusing a version newer than [`Record::VERSION`].
    fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(bytes).map_err(|source| RecordError::Json {
            what: Self::WHAT,
            source,
        })?;
        if record.version() > Self::VERSION {
            return Err(RecordError::NewerVersion {
                what: Self::WHAT,
                found: record.version(),
                known: Self::VERSION,
            });
        }
        Ok(record)
    }

    /// The record as one line of JSON (no newline).
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }
}

/// Implements [`Record`] for a struct whose `version` field holds its version.
macro_rules! impl_record {
    ($record:ty, $version:literal, $what:literal) => {
        impl Record for $record {
            const VERSION: u32 = $version;
            const WHAT: &'static str = $what;
            fn version(&self) -> u32 {
                self.version
            }
        }
    };
}

/// Records written before `version` existed are version 1.
fn version_1() -> u32 {
    1
}

fn nan() -> f64 {
    f64::NAN
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`, read back here as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// `Some(x)` when `x` is finite (what a JSON reader of the old form got for a number).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

// === the rank's summary ===

/// What one trainer rank did, printed by `tessera-trainer` as its last line on stdout.
/// Non-finite numbers are written as `null` and read back as NaN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RankSummary {
    #[serde(default = "version_1")]
    pub version: u32,
    /// Steps completed in total (including steps before a resume).
    pub steps: u64,
    /// The supervisor stopped the run (after a checkpoint) before its last step.
    #[serde(default)]
    pub stopped_early: bool,
    /// The step this process resumed from, if it did.
    #[serde(default)]
    pub resumed_from: Option<u64>,
    #[serde(default)]
    pub final_loss: Option<f64>,
    #[serde(default)]
    pub final_val_loss: Option<f64>,
    /// Mean over the steps this process ran.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub tokens_per_second: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub mfu: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
    #[serde(default)]
    pub checkpoint_dir: PathBuf,
    /// SHA-256 of the final parameters' bytes (little-endian f32).
    #[serde(default)]
    pub weights_sha256: String,
    #[serde(default)]
    pub rank: u32,
    #[serde(default)]
    pub world_size: u32,
    /// Mean wall time of a step, and of the part of it spent waiting on communication.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub step_seconds: f64,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub comm_seconds_per_step: f64,
    /// Bytes of optimizer state this rank held.
    #[serde(default)]
    pub optimizer_state_bytes: u64,
    /// The backend's name ("cpu-f32", "cuda-bf16").
    #[serde(default)]
    pub backend: String,
    /// The most device memory the backend's buffers held at once (GPU backends).
    #[serde(default)]
    pub peak_device_memory_bytes: Option<u64>,
    /// What carried the gradients and parameters ("nccl 2.32.3", "host ring (tcp)").
    #[serde(default)]
    pub collectives: String,
    /// Targets the loss counted over all the run's steps: every token of text data, the
    /// completion / assistant tokens of instruction and chat data.
    #[serde(default)]
    pub trained_tokens: u64,
    /// Parameters the optimizer trained (LoRA: the adapters), and all the model's.
    #[serde(default)]
    pub trainable_parameters: u64,
    #[serde(default)]
    pub total_parameters: u64,
}

impl_record!(RankSummary, 1, "a rank summary");

// === the step history ===

/// One line of `history.jsonl`: a completed step, as rank 0 saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    #[serde(default = "version_1")]
    pub version: u32,
    /// The gang generation that ran the step.
    pub generation: u64,
    /// The completed optimizer step (1-based).
    pub step: u64,
    /// `null` when the loss was not finite.
    pub loss: Option<f64>,
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// Present on steps that evaluated.
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
    /// When the step completed (milliseconds since the Unix epoch).
    #[serde(default)]
    pub unix_ms: u64,
}

impl_record!(StepRecord, 1, "a step record");

// === phases and failures ===

/// Where a run is, as its agents see it (published in [`AgentProgress`], and the outcome of
/// a local run). The operator's [`crate::status::Phase`] is the cluster's view, with its own
/// admission phases.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPhase {
    Running,
    /// A failure ended the generation; the gang resumes from its newest checkpoint.
    Restarting,
    /// The last step was reached.
    Succeeded,
    /// Stopped on request after a checkpoint (starting again resumes).
    Stopped,
    /// Restarts ran out, or a failure the agents cannot recover from.
    Failed,
}

impl RunPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Running => "Running",
            RunPhase::Restarting => "Restarting",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Stopped => "Stopped",
            RunPhase::Failed => "Failed",
        }
    }
}

impl fmt::Display for RunPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What ended a generation. Written as a kebab-case string (`"rank-exit"`), which is also the
/// `reason` label of the restart metric. A kind this build does not know reads as
/// [`FailureKind::Other`], so a newer agent's record still reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FailureKind {
    /// A rank exited non-zero.
    RankExit,
    /// A rank was silent, or made no step progress, past the heartbeat timeout.
    Hang,
    /// A member of the generation left (its agent's lease expired).
    PeerLost,
    /// This agent's own lease expired.
    LeaseLost,
    /// The coordination store did not confirm this agent's lease for a whole lease TTL: the
    /// generation can no longer be confirmed, so the node's ranks stop.
    StoreUnreachable,
    /// A GPU under a rank turned unhealthy.
    GpuUnhealthy,
    /// Not a failure: a node came back to an elastic gang running below its size; the gang
    /// checkpointed and restarts with it.
    Grow,
    /// A failure recorded without a kind (an empty kind, or an old free-text record).
    Unknown,
    /// A kind this build does not know.
    Other(String),
}

impl FailureKind {
    /// Every kind an agent detects, in the order the metrics list them.
    pub const DETECTED: [FailureKind; 7] = [
        FailureKind::RankExit,
        FailureKind::Hang,
        FailureKind::PeerLost,
        FailureKind::LeaseLost,
        FailureKind::StoreUnreachable,
        FailureKind::GpuUnhealthy,
        FailureKind::Grow,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            FailureKind::RankExit => "rank-exit",
            FailureKind::Hang => "hang",
            FailureKind::PeerLost => "peer-lost",
            FailureKind::LeaseLost => "lease-lost",
            FailureKind::StoreUnreachable => "store-unreachable",
            FailureKind::GpuUnhealthy => "gpu-unhealthy",
            FailureKind::Grow => "grow",
            FailureKind::Unknown => "failure",
            FailureKind::Other(kind) => kind,
        }
    }

    /// The kind named `name`, if this build detects it.
    pub fn detected(name: &str) -> Option<FailureKind> {
        FailureKind::DETECTED
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

impl From<String> for FailureKind {
    fn from(name: String) -> FailureKind {
        match name.as_str() {
            "" | "failure" => FailureKind::Unknown,
            _ => FailureKind::detected(&name).unwrap_or(FailureKind::Other(name)),
        }
    }
}

impl From<&str> for FailureKind {
    fn from(name: &str) -> FailureKind {
        FailureKind::from(name.to_string())
    }
}

impl From<FailureKind> for String {
    fn from(kind: FailureKind) -> String {
        kind.as_str().to_string()
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure that ended a generation (the gang recovered from it, or tried to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The generation it ended.
    pub generation: u64,
    pub kind: FailureKind,
    pub reason: String,
    /// When it was detected (milliseconds since the Unix epoch).
    #[serde(default)]
    pub detected_unix_ms: u64,
    /// Seconds from detection to the first step of the next generation (when measured).
    #[serde(default)]
    pub recovery_seconds: Option<f64>,
}

/// `rendezvous/{g}/ended`: why generation g ended, written by the agent whose bump ended it
/// (in the same transaction), so every agent names the same failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationEnded {
    #[serde(default = "version_1")]
    pub version: u32,
    #[serde(flatten)]
    pub failure: Failure,
}

impl_record!(GenerationEnded, 1, "a generation's end");

impl GenerationEnded {
    pub fn new(failure: Failure) -> GenerationEnded {
        GenerationEnded {
            version: Self::VERSION,
            failure,
        }
    }

    /// Reads the record stored for `generation`. Agents before this record wrote the text
    /// `kind: reason`; that reads too (a text without a known kind is all reason).
    pub fn read(generation: u64, bytes: &[u8]) -> Result<GenerationEnded, RecordError> {
        if bytes.trim_ascii_start().starts_with(b"{") {
            return GenerationEnded::from_json(bytes);
        }
        let text = String::from_utf8_lossy(bytes);
        let (kind, reason) = text
            .split_once(": ")
            .and_then(|(kind, reason)| Some((FailureKind::detected(kind)?, reason)))
            .unwrap_or((FailureKind::Unknown, &text));
        Ok(GenerationEnded::new(Failure {
            generation,
            kind,
            reason: reason.to_string(),
            detected_unix_ms: 0,
            recovery_seconds: None,
        }))
    }
}

impl fmt::Display for GenerationEnded {
    /// `kind: reason`, as logs and the agent's final message name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.failure.kind, self.failure.reason)
    }
}

// === checkpoint commits ===

/// `checkpoints/commits/{step}`: the commit of a checkpoint, recorded by the agent of rank 0 in
/// a transaction that holds only while the writer's generation is still current, before rank 0
/// renames the directory into place. The store, not the file system, says which bytes are the
/// committed checkpoint of a step: a directory whose commit marker does not hash to
/// `manifest_sha256` was left by a writer that lost its generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointCommit {
    #[serde(default = "version_1")]
    pub version: u32,
    pub step: u64,
    /// The generation whose rank 0 wrote it.
    pub generation: u64,
    /// The node of that rank 0.
    pub node: String,
    /// SHA-256 (hex) of the commit marker (`manifest.json`) as written.
    pub manifest_sha256: String,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl_record!(CheckpointCommit, 1, "a checkpoint commit record");

// === progress ===

/// The progress report the agent of rank 0 publishes under the run's `progress` key: the
/// operator's [`RunProgress`] (flattened, so the operator reads this same document) plus the
/// phase, the ranks' states and the failures so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentProgress {
    #[serde(default = "version_1")]
    pub version: u32,
    #[serde(flatten)]
    pub run: RunProgress,
    /// Absent in a report that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    #[serde(default)]
    pub world_size: u32,
    /// Each rank's state (the agent protocol's rank phase), by global rank.
    #[serde(default)]
    pub ranks: BTreeMap<u32, String>,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub message: String,
}

impl Default for AgentProgress {
    /// An empty report of this build's version.
    fn default() -> AgentProgress {
        AgentProgress {
            version: Self::VERSION,
            run: RunProgress::default(),
            phase: None,
            world_size: 0,
            ranks: BTreeMap::new(),
            failures: Vec::new(),
            message: String::new(),
        }
    }
}

impl_record!(AgentProgress, 1, "a progress report");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::CheckpointRef;

    fn failure(kind: FailureKind) -> Failure {
        Failure {
            generation: 2,
            kind,
            reason: "rank 1 exited with signal 9".into(),
            detected_unix_ms: 1_767_225_600_000,
            recovery_seconds: Some(1.5),
        }
    }

    fn summary() -> RankSummary {
        RankSummary {
            version: RankSummary::VERSION,
            steps: 40,
            stopped_early: false,
            resumed_from: Some(20),
            final_loss: Some(2.5),
            final_val_loss: None,
            tokens_per_second: 1234.5,
            mfu: 0.25,
            wall_seconds: 12.0,
            checkpoint_dir: "/out/checkpoints".into(),
            weights_sha256: "ab".repeat(32),
            rank: 0,
            world_size: 2,
            step_seconds: 0.3,
            comm_seconds_per_step: 0.01,
            optimizer_state_bytes: 4096,
            backend: "cpu-f32".into(),
            peak_device_memory_bytes: None,
            collectives: "host ring (tcp)".into(),
            trained_tokens: 1000,
            trainable_parameters: 40,
            total_parameters: 100,
        }
    }

    #[test]
    fn a_rank_summary_round_trips_and_reads_the_old_form() {
        let s = summary();
        let json = s.to_json();
        assert!(
            json.starts_with(r#"{"version":1,"steps":40,"stoppedEarly":false"#),
            "{json}"
        );
        assert_eq!(RankSummary::from_json(json.as_bytes()).unwrap(), s);
        // The form before `version` (the trainer's `json!`), with a non-finite MFU as null.
        let old = br#"{"steps":40,"stoppedEarly":true,"resumedFrom":null,"finalLoss":2.5,
            "finalValLoss":null,"tokensPerSecond":10.0,"mfu":null,"wallSeconds":1.0,
            "checkpointDir":"/c","weightsSha256":"x","rank":1,"worldSize":2,"stepSeconds":0.1,
            "commSecondsPerStep":0.0,"optimizerStateBytes":8,"backend":"cpu-f32",
            "peakDeviceMemoryBytes":null,"collectives":"solo","unknown":[1]}"#;
        let read = RankSummary::from_json(old).unwrap();
        assert_eq!(
            (read.version, read.steps, read.stopped_early),
            (1, 40, true)
        );
        assert!(read.mfu.is_nan() && finite(read.mfu).is_none());
        assert_eq!(finite(read.tokens_per_second), Some(10.0));
        // NaN goes out as null and comes back as NaN.
        let nan = RankSummary {
            mfu: f64::NAN,
            ..summary()
        };
        assert!(nan.to_json().contains(r#""mfu":null"#));
        assert!(
            RankSummary::from_json(nan.to_json().as_bytes())
                .unwrap()
                .mfu
                .is_nan()
        );
        // Not a summary, or a summary from the future.
        assert!(RankSummary::from_json(b"{}").is_err());
        assert!(RankSummary::from_json(b"training done").is_err());
        let newer = br#"{"version":2,"steps":1}"#;
        assert!(matches!(
            RankSummary::from_json(newer),
            Err(RecordError::NewerVersion { found: 2, .. })
        ));
    }

    #[test]
    fn a_step_record_round_trips_and_reads_the_old_form() {
        let r = StepRecord {
            version: StepRecord::VERSION,
            generation: 2,
            step: 120,
            loss: Some(2.31),
            grad_norm: Some(0.9),
            val_loss: None,
            tokens_per_second: Some(6900.0),
            unix_ms: 1_700_000_000_000,
        };
        assert_eq!(StepRecord::from_json(r.to_json().as_bytes()).unwrap(), r);
        let old = br#"{"generation":1,"step":1,"loss":3.5,"valLoss":null,"tokensPerSecond":1.0,"unixMs":1}"#;
        let read = StepRecord::from_json(old).unwrap();
        assert_eq!((read.version, read.step, read.loss), (1, 1, Some(3.5)));
        assert_eq!(read.grad_norm, None);
        // A non-finite loss is written as null.
        let nan = StepRecord {
            loss: Some(f64::NAN),
            ..r
        };
        assert_eq!(
            StepRecord::from_json(nan.to_json().as_bytes())
                .unwrap()
                .loss,
            None
        );
    }

    #[test]
    fn phases_are_written_by_name() {
        for phase in [
            RunPhase::Running,
            RunPhase::Restarting,
            RunPhase::Succeeded,
            RunPhase::Stopped,
            RunPhase::Failed,
        ] {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<RunPhase>(&json).unwrap(), phase);
        }
        assert!(serde_json::from_str::<RunPhase>("\"Odd\"").is_err());
    }

    #[test]
    fn failure_kinds_are_kebab_case_and_unknown_ones_survive() {
        for kind in FailureKind::DETECTED {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<FailureKind>(&json).unwrap(), kind);
        }
        assert_eq!(
            serde_json::to_string(&FailureKind::GpuUnhealthy).unwrap(),
            "\"gpu-unhealthy\""
        );
        let newer: FailureKind = serde_json::from_str("\"disk-full\"").unwrap();
        assert_eq!(newer, FailureKind::Other("disk-full".into()));
        assert_eq!(serde_json::to_string(&newer).unwrap(), "\"disk-full\"");
        assert_eq!(FailureKind::from(String::new()), FailureKind::Unknown);
        assert_eq!(FailureKind::Unknown.to_string(), "failure");

        let f = failure(FailureKind::RankExit);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["kind"], "rank-exit");
        assert_eq!(json["detectedUnixMs"], 1_767_225_600_000u64);
        assert_eq!(serde_json::from_value::<Failure>(json).unwrap(), f);
    }

    #[test]
    fn a_generation_end_round_trips_and_reads_the_old_text() {
        let ended = GenerationEnded::new(failure(FailureKind::Hang));
        let json = ended.to_json();
        assert!(
            json.starts_with(r#"{"version":1,"generation":2,"kind":"hang""#),
            "{json}"
        );
        assert_eq!(GenerationEnded::read(2, json.as_bytes()).unwrap(), ended);
        assert_eq!(ended.to_string(), "hang: rank 1 exited with signal 9");

        // Before the record: `kind: reason` text.
        let old = GenerationEnded::read(3, b"hang: rank 2 sent no heartbeat for 10 s").unwrap();
        assert_eq!(
            (
                old.failure.generation,
                &old.failure.kind,
                old.failure.reason.as_str()
            ),
            (3, &FailureKind::Hang, "rank 2 sent no heartbeat for 10 s")
        );
        let odd = GenerationEnded::read(4, b"something: else entirely").unwrap();
        assert_eq!(
            (&odd.failure.kind, odd.failure.reason.as_str()),
            (&FailureKind::Unknown, "something: else entirely")
        );
        assert!(GenerationEnded::read(4, b"{not json").is_err());
    }

    #[test]
    fn agent_progress_round_trips_reads_the_old_form_and_feeds_the_operator() {
        let p = AgentProgress {
            version: AgentProgress::VERSION,
            run: RunProgress {
                generation: 2,
                step: 120,
                loss: Some(2.31),
                val_loss: None,
                tokens_per_second: Some(6900.0),
                last_checkpoint: Some(CheckpointRef {
                    step: 100,
                    path: "/ckpt/step-0000000100".into(),
                    time: "2026-01-01T00:00:00Z".into(),
                }),
                restarts: 1,
            },
            phase: Some(RunPhase::Running),
            world_size: 2,
            ranks: [(0, "Training".to_string()), (1, "Training".to_string())].into(),
            failures: vec![failure(FailureKind::RankExit)],
            message: String::new(),
        };
        let json = p.to_json();
        assert_eq!(AgentProgress::from_json(json.as_bytes()).unwrap(), p);
        // The operator reads the same document as its RunProgress.
        assert_eq!(RunProgress::from_json(json.as_bytes()).unwrap(), p.run);

        // Before `version` and typed phases: the same JSON, less the version.
        let old = br#"{"generation":1,"step":5,"restarts":0,"phase":"Restarting","worldSize":1,
            "ranks":{"0":"Training"},"failures":[{"generation":1,"kind":"heartbeat",
            "reason":"rank 0 silent","detectedUnixMs":0,"recoverySeconds":null}],"message":"m"}"#;
        let read = AgentProgress::from_json(old).unwrap();
        assert_eq!((read.version, read.phase), (1, Some(RunPhase::Restarting)));
        assert_eq!(
            read.failures[0].kind,
            FailureKind::Other("heartbeat".into())
        );
        assert_eq!(read.ranks[&0], "Training");
        let bare = AgentProgress::from_json(br#"{"generation":1,"step":5}"#).unwrap();
        assert_eq!(bare.phase, None);
        assert!(AgentProgress::from_json(br#"{"step":"seven","phase":"Odd"}"#).is_err());
    }
}
