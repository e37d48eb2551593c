//! Test doubles of the cluster, for the operator's own tests, its benchmark and other crates'
//! end-to-end tests (feature `testing`): an in-process Kubernetes [`ApiServer`] that a real
//! `kube::Client` talks HTTP to, and a [`Kubelet`] that schedules and runs pods through it.
//!
//! The API server also plays RBAC: it refuses (403) every request that
//! [`crate::rbac::RULES`] does not grant, so any test of the operator against it shows the
//! rules are enough for every call the operator makes.

pub mod apiserver;
pub mod kubelet;
pub mod selector;

pub use apiserver::ApiServer;
pub use kubelet::{GPU, Kubelet};
