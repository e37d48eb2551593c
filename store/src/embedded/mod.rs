//! `EmbeddedStore`: the coordination store in process memory, for runs on one machine. etcd's
//! semantics exactly (revisions, compare-and-swap, leases deleting their keys when they expire,
//! prefix watches replaying history), so the same test suite passes against it and etcd.
//! [`crate::serve`] makes it reachable from other processes.

mod state;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::StoreError;
use crate::kv::{KeyValue, LeaseId, Range, Txn, TxnOutcome, WatchStream};
use crate::store::{Store, check_key, check_start_revision, check_txn, ttl_seconds};
use state::{Expiry, State};

/// How many events an embedded store keeps for watches that replay history, by default.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// An in-memory store. Clones share the same data. Lease timers run on the tokio runtime the
/// lease was granted on; they stop when the store is dropped. A watch buffers its events without
/// bound until they are read: drop a watch stream that is no longer read. Watch streams end when
/// the store is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<State>>,
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        EmbeddedStore::new()
    }
}

impl EmbeddedStore {
    pub fn new() -> EmbeddedStore {
        EmbeddedStore::with_history_limit(DEFAULT_HISTORY_LIMIT)
    }

    /// A store that keeps the newest `events` changes for replay; a watch from an older
    /// revision fails with [`StoreError::Compacted`].
    pub fn with_history_limit(events: usize) -> EmbeddedStore {
        EmbeddedStore {
            inner: Arc::new(Mutex::new(State::new(events))),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }
}

/// The state stays consistent even if a holder panicked (every change is applied under the lock
/// in one go), so a poisoned lock is simply taken over.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sleeps until the lease's deadline, expiring it then unless it was refreshed meanwhile.
async fn lease_timer(state: Weak<Mutex<State>>, lease: LeaseId, mut deadline: Instant) {
    loop {
        tokio::time::sleep_until(deadline).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let expiry = lock(&state).expire_if_due(lease, Instant::now());
        match expiry {
            Expiry::NotYet(next) => deadline = next,
            Expiry::Done => return,
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn target(&self) -> String {
        "the embedded store".to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        Ok(self.state().get(key))
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        Ok(self.state().range(prefix))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        check_key(key)?;
        self.state().put(key, value, lease)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        Ok(self.state().delete(key).0 > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        Ok(self.state().delete_prefix(prefix).0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        self.state().txn(txn)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl_seconds(ttl)?;
        let (lease, deadline) = self.state().grant_lease(secs, Instant::now());
        tokio::spawn(lease_timer(Arc::downgrade(&self.inner), lease, deadline));
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let secs = self.state().keep_alive(lease, Instant::now())?;
        Ok(Duration::from_secs(secs.unsigned_abs()))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.state().revoke_lease(lease)
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<WatchStream, StoreError> {
        check_start_revision(start_revision)?;
        let rx = self.state().watch(prefix, start_revision)?;
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }
}
