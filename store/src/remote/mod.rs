//! The embedded store served over gRPC (proto/store.proto, package `tessera.store.v1`): the
//! server side ([`serve`], [`ServerHandle`]) and the client ([`RemoteStore`]), so another process
//! on the machine (`tessera status`, a separately started agent) reaches a local run's store.

mod client;
mod convert;
mod server;

pub use client::RemoteStore;
pub use server::{ServerHandle, serve};

/// The code generated from proto/store.proto.
#[allow(clippy::all)]
pub(crate) mod pb {
    tonic::include_proto!("tessera.store.v1");
}
