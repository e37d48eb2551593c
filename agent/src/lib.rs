//! The node agent (owned by the agent work): one per node of a run. It discovers GPUs,
//! spawns and watches trainer ranks, rendezvous through the coordination store, and restarts
//! the gang from the newest committed checkpoint on failure.
//!
//! It speaks `tessera_api::proto::agent` to its ranks.
#![forbid(unsafe_code)]
