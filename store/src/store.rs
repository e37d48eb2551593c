//! The `Store` trait every implementation serves, and the request checks they all share (so a
//! malformed request fails with the same words whatever the backend).

use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::kv::{KeyValue, LeaseId, Range, Txn, TxnOp, TxnOutcome, WatchStream};

/// A coordination store with etcd's semantics: a sorted key space with a global revision
/// counter, compare-and-swap transactions, leases that delete their keys when they expire, and
/// prefix watches that can replay history.
///
/// Used as `Arc<dyn Store>`. Implementations: [`crate::EmbeddedStore`] (in memory),
/// [`crate::RemoteStore`] (an embedded store served over gRPC by [`crate::serve`]) and
/// [`crate::EtcdStore`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What this store is, for messages: "etcd at 127.0.0.1:2379", "the embedded store", ...
    fn target(&self) -> String;

    /// One key, or `None` when it is absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key under `prefix` (all keys for ""), sorted by key, with the revision read at.
    async fn range(&self, prefix: &str) -> Result<Range, StoreError>;

    /// Every key under `prefix`, sorted by key.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self.range(prefix).await?.kvs)
    }

    /// Sets a key, attached to `lease` when given (and detached from any earlier lease).
    /// Returns the new revision. Fails with [`StoreError::LeaseExpired`] when the lease is gone.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError>;

    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Deletes every key under `prefix`; returns how many there were.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Applies `txn.success` if every compare holds, else `txn.failure`, atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// A new lease of `ttl`, rounded up to whole seconds (etcd's unit).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Refreshes a lease to its full TTL; returns that TTL. [`StoreError::LeaseExpired`] when
    /// the lease is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Ends a lease now, deleting its keys. [`StoreError::LeaseExpired`] when it is already gone.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The changes under `prefix`. With `start_revision`, every change at that revision or later
    /// is replayed first ([`StoreError::Compacted`] when that history is gone); without, changes
    /// from now on. The watch is in place when this returns: a change made after it returns is
    /// always seen.
    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<WatchStream, StoreError>;
}

/// A key must not be empty.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidRequest(
            "the key is empty; give a non-empty key".into(),
        ));
    }
    Ok(())
}

/// A lease TTL in whole seconds (rounded up), at least one.
pub(crate) fn ttl_seconds(ttl: Duration) -> Result<i64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::InvalidRequest(
            "a lease TTL of zero; give a TTL of at least 1 s".into(),
        ));
    }
    let whole = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    if whole > MAX_LEASE_TTL_SECS {
        return Err(StoreError::InvalidRequest(format!(
            "a lease TTL of {ttl:?} is too long; etcd allows at most {MAX_LEASE_TTL_SECS} s"
        )));
    }
    i64::try_from(whole)
        .map_err(|_| StoreError::InvalidRequest(format!("a lease TTL of {ttl:?} is too long")))
}

/// etcd's longest lease TTL, in seconds.
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// A start revision must be positive.
pub(crate) fn check_start_revision(start: Option<i64>) -> Result<(), StoreError> {
    match start {
        Some(r) if r <= 0 => Err(StoreError::InvalidRequest(format!(
            "watch start revision {r}; revisions start at 1 (give None to watch from now)"
        ))),
        _ => Ok(()),
    }
}

/// etcd's rules for a transaction: non-empty keys, and within one branch no key put twice nor
/// put and deleted.
pub(crate) fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    for c in &txn.compares {
        check_key(c.key())?;
    }
    for (branch, ops) in [("success", &txn.success), ("failure", &txn.failure)] {
        check_branch(branch, ops)?;
    }
    Ok(())
}

fn check_branch(branch: &str, ops: &[TxnOp]) -> Result<(), StoreError> {
    let mut puts: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, .. } => {
                check_key(key)?;
                if puts.contains(&key.as_str()) {
                    return Err(StoreError::InvalidRequest(format!(
                        "the transaction's {branch} branch puts {key:?} twice; put each key once"
                    )));
                }
                puts.push(key);
            }
            TxnOp::Delete { key } => check_key(key)?,
            TxnOp::DeletePrefix { .. } => {}
        }
    }
    for op in ops {
        let clash = match op {
            TxnOp::Put { .. } => None,
            TxnOp::Delete { key } => puts.iter().find(|p| **p == key.as_str()),
            TxnOp::DeletePrefix { prefix } => puts.iter().find(|p| p.starts_with(prefix.as_str())),
        };
        if let Some(key) = clash {
            return Err(StoreError::InvalidRequest(format!(
                "the transaction's {branch} branch both puts and deletes {key:?}; do one or the other"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)).unwrap(), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(2)).unwrap(), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2500)).unwrap(), 3);
        assert!(ttl_seconds(Duration::ZERO).is_err());
        assert!(ttl_seconds(Duration::MAX).is_err());
    }

    #[test]
    fn txn_rules_follow_etcd() {
        let ok = Txn::new()
            .and_then([TxnOp::put("a", "1"), TxnOp::delete("b")])
            .or_else([TxnOp::put("a", "2")]);
        check_txn(&ok).unwrap();
        let twice = Txn::new().and_then([TxnOp::put("a", "1"), TxnOp::put("a", "2")]);
        assert!(check_txn(&twice).unwrap_err().to_string().contains("twice"));
        let clash = Txn::new().or_else([TxnOp::put("p/a", "1"), TxnOp::delete_prefix("p/")]);
        assert!(
            check_txn(&clash)
                .unwrap_err()
                .to_string()
                .contains("both puts and deletes")
        );
        let empty = Txn::new().and_then([TxnOp::put("", "1")]);
        assert!(check_txn(&empty).is_err());
        assert!(check_start_revision(Some(0)).is_err());
        check_start_revision(Some(1)).unwrap();
    }
}
