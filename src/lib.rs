//! The `tessera` command line's library: the pieces of local mode (`tessera run`) and of
//! `tessera status`, kept apart from argument parsing (`main.rs`) so they can be tested.
//!
//! - [`local`]: `tessera run` itself: store, agents, ranks, progress, summary.
//! - [`history`]: the step history a run writes (`history.jsonl`), with restarts.
//! - [`plot`]: the loss-curve picture (SVG and PNG) drawn from that history.
//! - [`progress`]: the progress bar and plain progress lines fed by the agents' reports.
//! - [`status`]: what a run directory says about its run, live or finished.
//! - [`checkpoints`]: listing a checkpoint root (`tessera ckpt ls`, `tessera status`).
//! - [`endpoints`]: where a local run serves Prometheus metrics (`tessera run --metrics-addr`).
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod endpoints;
pub mod history;
pub mod local;
pub mod plot;
pub mod progress;
pub mod status;
