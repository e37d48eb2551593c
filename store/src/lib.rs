//! The coordination store (owned by the distributed-training work): a trait with get, put,
//! compare-and-swap, leases and watch, its etcd and embedded implementations, and the
//! rendezvous-and-generation protocol on top. It knows nothing about training.
//!
//! The key layout it serves lives in `tessera_api::store_keys`.
#![forbid(unsafe_code)]
