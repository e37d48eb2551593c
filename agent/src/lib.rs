//! The node agent: one per node of a run. It discovers GPUs ([`gpu`]), joins the run's
//! rendezvous in the coordination store, spawns and watches the trainer ranks ([`ranks`]),
//! serves them the agent protocol on a unix socket ([`service`], state on the [`board`]), and
//! restarts the gang from the newest committed checkpoint when something fails ([`node`]).
//! [`metrics`] exports what it sees to Prometheus.
//!
//! The same library runs as the `tessera-agent` binary (a worker pod's entrypoint) and
//! in-process in `tessera run`.
#![forbid(unsafe_code)]

pub mod board;
pub mod gpu;
pub mod metrics;
pub mod node;
pub mod ranks;
pub mod service;
pub mod store_health;

pub use node::{AgentConfig, AgentEnd, AgentError, AgentReport, run_agent};
