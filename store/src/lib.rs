//! The coordination store: a trait with get, put, compare-and-swap, leases and watch
//! ([`Store`]), its implementations ([`EmbeddedStore`] in memory, [`RemoteStore`] for an
//! embedded store served over gRPC by [`serve`], [`EtcdStore`]), a background lease refresher
//! ([`LeaseKeeper`]), and the rendezvous-and-generation protocol on top ([`rendezvous`]). It knows
//! nothing about training: members bring "slots", and the rank table hands out ranks.
//!
//! Used by the node agents, the operator and the CLI, never by the trainer. The key layout it
//! serves lives in `tessera_api::store_keys`. Reach a store with [`connect`]:
//! `etcd://host:port[,host:port...]` or `tessera://host:port`.
#![forbid(unsafe_code)]

mod backoff;
mod connect;
mod embedded;
mod error;
mod etcd;
mod kv;
mod lease_keeper;
mod remote;
pub mod rendezvous;
mod store;
pub mod testing;

pub use connect::{Endpoint, connect};
pub use embedded::{DEFAULT_HISTORY_LIMIT, EmbeddedStore};
pub use error::StoreError;
pub use etcd::EtcdStore;
pub use kv::{
    Compare, EventKind, KeyValue, LeaseId, Range, Txn, TxnOp, TxnOutcome, WatchEvent, WatchStream,
};
pub use lease_keeper::{LeaseKeeper, LeaseStatus};
pub use remote::{RemoteStore, ServerHandle, serve};
pub use rendezvous::{
    Departures, JoinOutcome, Member, MemberRecord, RankTable, RankedNode, RendezvousConfig,
    RendezvousError, RunStore,
};
pub use store::Store;
