//! Tessera's contracts, shared by every binary and kept free of runtimes:
//!
//! - [`spec`] and [`status`]: the TrainingRun custom resource (group `tessera.dev`,
//!   version `v1alpha1`, short name `tr`);
//! - [`validate`]: the rules a spec must satisfy, the same ones the CRD carries ([`crd`]);
//! - [`manifest`]: reading a TrainingRun from YAML with errors that name the field, and
//!   [`resolved`]: the run read once (overrides applied, paths absolute) that every hop is handed;
//! - [`proto`]: the agent's gRPC protocol (`proto/agent.proto`);
//! - [`checkpoint`]: the checkpoint manifest and directory layout;
//! - [`store_keys`]: the coordination-store key layout, and [`progress`]: the progress report
//!   agents publish there;
//! - [`records`]: every record that crosses a process or store boundary (the rank's summary,
//!   the step history line, the agent's progress, failures, a generation's end, run phases);
//! - [`token_cache`]: the record of text tokenized into the cache beside the checkpoints;
//! - [`metrics`]: every exported metric name.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod clock;
pub mod crd;
pub mod llama_config;
pub mod manifest;
pub mod metrics;
pub mod progress;
pub mod proto;
pub mod records;
pub mod report;
pub mod resolved;
pub mod spec;
pub mod status;
pub mod store_keys;
pub mod token_cache;
pub mod validate;

pub use manifest::{ManifestError, parse_training_run};
pub use progress::RunProgress;
pub use resolved::ResolvedRun;
pub use spec::{TrainingRun, TrainingRunSpec};
pub use status::TrainingRunStatus;
pub use validate::{Violation, validate};
