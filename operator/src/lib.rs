//! The TrainingRun controller: gang admission, worker pods and the headless service, restarts
//! on pod or node loss, suspend, status, events, leader election and metrics.
//!
//! ```text
//!  watches (runs, pods, nodes, services) ─► observe ─► plan::plan (pure) ─► execute
//!                                                        ▲                    │ server-side
//!  progress from the coordination store ─────────────────┘                    ▼ apply, status
//! ```
//!
//! - [`plan`]: the pure planner and its transitions; [`build`]: the pods, service and pod
//!   group it asks for; [`names`], [`config`]: the names it gives things and its settings;
//! - [`execute`]: applies a plan; [`controller`]: watches and reconciles; [`observe`]: the
//!   caches it reads; [`progress`]: the coordination-store adapter;
//! - [`replica`], [`leader`], [`http`], [`metrics`]: one running replica of the operator;
//! - [`rbac`]: the permissions it needs; [`fixtures`]: builders for tests and benchmarks;
//!   [`testing`] (feature `testing`): a test API server and kubelet.
#![forbid(unsafe_code)]

pub mod build;
pub mod config;
pub mod controller;
pub mod error;
pub mod execute;
pub mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod plan;
pub mod progress;
pub mod rbac;
pub mod replica;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::OperatorConfig;
pub use error::Error;
