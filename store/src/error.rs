//! `StoreError`: every way a store call fails, each message saying what failed and what fixes it.

use std::time::Duration;

use crate::kv::LeaseId;

/// A store call's failure. Cheap to clone, so one error can be handed to several waiters (a
/// [`crate::LeaseKeeper`]'s status, a watch stream).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached within the connect timeout.
    #[error("cannot reach {target} after {waited:.1?}: {hint} (last error: {last_error})")]
    Unreachable {
        /// What was being reached, e.g. "etcd at 127.0.0.1:2379".
        target: String,
        waited: Duration,
        /// What to check, e.g. "is etcd running? (--store etcd://host:port)".
        hint: String,
        last_error: String,
    },
    /// A call failed because the store is (for now) unavailable; it may be retried.
    #[error(
        "{operation} on {target} failed: {message} (the store may be restarting; retry the call)"
    )]
    Unavailable {
        target: String,
        operation: &'static str,
        message: String,
    },
    /// A call got no answer in time; it may be retried.
    #[error(
        "{operation} on {target} got no answer within {after:.1?} (the store may be overloaded or restarting; retry the call)"
    )]
    Timeout {
        target: String,
        operation: &'static str,
        after: Duration,
    },
    /// The lease does not exist (any more): it expired or was revoked.
    #[error("lease {0} has expired or was revoked: grant a new lease and put its keys again")]
    LeaseExpired(LeaseId),
    /// A watch asked for history the store no longer keeps.
    #[error(
        "cannot watch from revision {requested}: history up to revision {compacted} was compacted; read the current state and watch from the revision that read returned"
    )]
    Compacted { requested: i64, compacted: i64 },
    /// The request itself is malformed (empty key, zero TTL, a key written twice in one
    /// transaction); retrying it unchanged fails again.
    #[error("invalid store request: {0}")]
    InvalidRequest(String),
    /// An endpoint string could not be understood.
    #[error(
        "bad store endpoint {endpoint:?}: {reason}; use etcd://host:port[,host:port...] (etcd) or tessera://host:port (a local run's embedded store)"
    )]
    BadEndpoint { endpoint: String, reason: String },
    /// The store answered something this client does not understand (a version mismatch or a
    /// different server on that port).
    #[error(
        "{target} answered {operation} with something unexpected: {message} (is that address really a {expected}?)"
    )]
    Protocol {
        target: String,
        operation: &'static str,
        expected: &'static str,
        message: String,
    },
    /// The store refused the call for a reason of its own (permissions, quota, ...).
    #[error("{operation} on {target} was refused: {message}")]
    Refused {
        target: String,
        operation: &'static str,
        message: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed if retried later (the store was unreachable, slow or
    /// restarting), as opposed to failing the same way again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Timeout { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_says_where_and_how_to_fix_it() {
        let e = StoreError::Unreachable {
            target: "etcd at 127.0.0.1:2379".into(),
            waited: Duration::from_secs(30),
            hint: "is etcd running? (--store etcd://host:port)".into(),
            last_error: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach etcd at 127.0.0.1:2379 after 30.0s: is etcd running? (--store etcd://host:port) (last error: connection refused)"
        );
        assert!(e.is_transient());
        assert!(!StoreError::LeaseExpired(LeaseId(7)).is_transient());
    }
}
