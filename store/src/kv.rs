//! The store's data types: key-values with etcd's revisions, transactions, watch events.

use std::fmt;
use std::pin::Pin;

use tokio_stream::Stream;

use crate::error::StoreError;

/// A lease: keys put with it are deleted when it expires or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // etcd prints lease ids in hex.
        write!(f, "{:x}", self.0)
    }
}

/// One key and its value, with etcd's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (since it was last absent). 0 for a deleted key.
    pub create_revision: i64,
    /// The revision of the key's last change (for a delete event, the deletion's revision).
    pub mod_revision: i64,
    /// 1 on creation, +1 on each put since. 0 for a deleted key.
    pub version: i64,
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, and the store's revision when they were read (watch from
/// `revision + 1` to see every later change exactly once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    pub revision: i64,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists and holds exactly this value (false when the key is absent, as in etcd).
    ValueEquals { key: String, value: Vec<u8> },
    /// The key's mod revision equals this (0 when the key is absent).
    ModRevisionEquals { key: String, revision: i64 },
    /// The key's create revision equals this; 0 means "the key is absent".
    CreateRevisionEquals { key: String, revision: i64 },
}

impl Compare {
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Compare {
        Compare::ValueEquals {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn mod_revision(key: impl Into<String>, revision: i64) -> Compare {
        Compare::ModRevisionEquals {
            key: key.into(),
            revision,
        }
    }

    pub fn create_revision(key: impl Into<String>, revision: i64) -> Compare {
        Compare::CreateRevisionEquals {
            key: key.into(),
            revision,
        }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare::create_revision(key, 0)
    }

    pub fn key(&self) -> &str {
        match self {
            Compare::ValueEquals { key, .. }
            | Compare::ModRevisionEquals { key, .. }
            | Compare::CreateRevisionEquals { key, .. } => key,
        }
    }
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<String>) -> TxnOp {
        TxnOp::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> TxnOp {
        TxnOp::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// If every compare holds, apply `success`, else apply `failure`; atomically, in one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.failure.extend(ops);
        self
    }
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (so `success` was applied, else `failure`).
    pub succeeded: bool,
    /// The store's revision after the transaction (unchanged when it wrote nothing).
    pub revision: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a delete: the key, an empty value, zero create revision and version, and the
    /// deletion's revision as mod revision.
    pub kv: KeyValue,
    pub revision: i64,
}

/// The events of a watch, in revision order. An `Err` item says why the watch stopped (nothing
/// follows it); a stream that simply ends means the store closed it. Either way, watch again
/// from the revision after the last event seen.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Makes a stream of results end right after its first error, as [`WatchStream`] promises.
pub(crate) fn end_after_error<S>(inner: S) -> WatchStream
where
    S: Stream<Item = Result<WatchEvent, StoreError>> + Send + 'static,
{
    Box::pin(EndAfterError {
        inner: Box::pin(inner),
        done: false,
    })
}

struct EndAfterError<S> {
    inner: Pin<Box<S>>,
    done: bool,
}

impl<S> Stream for EndAfterError<S>
where
    S: Stream<Item = Result<WatchEvent, StoreError>>,
{
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        let item = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Err(_)) | None) = &item {
            self.done = true;
        }
        item
    }
}
