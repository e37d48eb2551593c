//! Where the operator reads the progress agents publish, and removes a deleted run's keys.
//!
//! ```text
//!  agents ──put──► coordination store: /tessera/v1/runs/{ns}/{name}/progress (JSON)
//!                        │
//!  operator ◄──get── ProgressSource ──delete_run_keys──► (the finalizer, on deletion)
//! ```
//!
//! [`ProgressSource`] is the adapter point to the coordination store: [`StoreProgress`] reads
//! the keys through `tessera_store::Store` (etcd, or a local run's store), [`MemoryProgress`]
//! keeps them in memory (tests, the benchmark, an operator started without `--store`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tessera_api::RunProgress;
use tessera_api::store_keys::RunKeys;
use tessera_store::Store;

/// Why progress could not be read or keys not removed.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("the coordination store failed: {0}")]
    Store(String),
    #[error("the progress of {namespace}/{name} is not a valid progress report: {source}")]
    Malformed {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The run state the operator needs from the coordination store.
pub trait ProgressSource: Send + Sync + 'static {
    /// The newest progress published for the run; `None` before its agents publish any.
    fn progress<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunProgress>, ProgressError>>;

    /// Removes every key of the run (its whole prefix).
    fn delete_run_keys<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), ProgressError>>;
}

/// Parses the bytes stored under a run's `progress` key.
pub fn parse_progress(
    namespace: &str,
    name: &str,
    bytes: Option<&[u8]>,
) -> Result<Option<RunProgress>, ProgressError> {
    bytes
        .map(|b| {
            RunProgress::from_json(b).map_err(|source| ProgressError::Malformed {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })
        })
        .transpose()
}

/// How long connecting to the store may take before the operator gives up.
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The coordination store behind `tessera_store::Store`.
pub struct StoreProgress {
    store: Arc<dyn Store>,
}

impl StoreProgress {
    pub fn new(store: Arc<dyn Store>) -> StoreProgress {
        StoreProgress { store }
    }
}

/// Connects to the store `endpoint` names (`etcd://host:port[,...]`, `tessera://host:port`).
pub async fn connect_store(endpoint: &str) -> Result<Arc<dyn ProgressSource>, ProgressError> {
    let store = tessera_store::connect(endpoint, STORE_CONNECT_TIMEOUT)
        .await
        .map_err(|e| ProgressError::Store(e.to_string()))?;
    Ok(Arc::new(StoreProgress::new(store)))
}

impl ProgressSource for StoreProgress {
    fn progress<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunProgress>, ProgressError>> {
        Box::pin(async move {
            let value = self
                .store
                .get(&RunKeys::new(namespace, name).progress())
                .await
                .map_err(|e| ProgressError::Store(e.to_string()))?;
            parse_progress(
                namespace,
                name,
                value.as_ref().map(|kv| kv.value.as_slice()),
            )
        })
    }

    fn delete_run_keys<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), ProgressError>> {
        Box::pin(async move {
            self.store
                .delete_prefix(RunKeys::new(namespace, name).prefix())
                .await
                .map_err(|e| ProgressError::Store(e.to_string()))?;
            Ok(())
        })
    }
}

/// An in-memory key-value map with the store's key layout.
#[derive(Debug, Default)]
pub struct MemoryProgress {
    keys: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryProgress {
    pub fn new() -> MemoryProgress {
        MemoryProgress::default()
    }

    /// Stores raw bytes under a key, as an agent's `put` would.
    pub fn put(&self, key: &str, value: &[u8]) {
        self.lock().insert(key.to_string(), value.to_vec());
    }

    /// Publishes a run's progress, as its agents would.
    pub fn publish(&self, namespace: &str, name: &str, progress: &RunProgress) {
        self.put(
            &RunKeys::new(namespace, name).progress(),
            &progress.to_json(),
        );
    }

    /// Every key currently stored, for tests.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock leaves the map usable: recover it.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ProgressSource for MemoryProgress {
    fn progress<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunProgress>, ProgressError>> {
        let bytes = self
            .lock()
            .get(&RunKeys::new(namespace, name).progress())
            .cloned();
        Box::pin(async move { parse_progress(namespace, name, bytes.as_deref()) })
    }

    fn delete_run_keys<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), ProgressError>> {
        let prefix = RunKeys::new(namespace, name).prefix().to_string();
        self.lock().retain(|key, _| !key.starts_with(&prefix));
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_progress_reads_published_progress_and_deletes_only_the_runs_keys() {
        let store = MemoryProgress::new();
        assert_eq!(store.progress("ml", "a").await.unwrap(), None);
        let progress = RunProgress {
            generation: 2,
            step: 7,
            ..RunProgress::default()
        };
        store.publish("ml", "a", &progress);
        store.publish("ml", "ab", &progress);
        store.put(&RunKeys::new("ml", "a").generation(), b"2");
        assert_eq!(store.progress("ml", "a").await.unwrap(), Some(progress));
        store.delete_run_keys("ml", "a").await.unwrap();
        assert_eq!(store.keys(), vec![RunKeys::new("ml", "ab").progress()]);
    }

    #[tokio::test]
    async fn store_progress_reads_and_deletes_through_the_store() {
        let store: Arc<dyn Store> = Arc::new(tessera_store::EmbeddedStore::new());
        let source = StoreProgress::new(store.clone());
        assert_eq!(source.progress("ml", "a").await.unwrap(), None);
        let progress = RunProgress {
            generation: 1,
            step: 3,
            loss: Some(4.0),
            ..RunProgress::default()
        };
        store
            .put(
                &RunKeys::new("ml", "a").progress(),
                progress.to_json(),
                None,
            )
            .await
            .unwrap();
        store
            .put(
                &RunKeys::new("ml", "b").progress(),
                progress.to_json(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(source.progress("ml", "a").await.unwrap(), Some(progress));
        source.delete_run_keys("ml", "a").await.unwrap();
        assert_eq!(source.progress("ml", "a").await.unwrap(), None);
        assert!(source.progress("ml", "b").await.unwrap().is_some());
        assert!(connect_store("nonsense").await.is_err());
    }

    #[tokio::test]
    async fn malformed_progress_is_an_error_naming_the_run() {
        let store = MemoryProgress::new();
        store.put(&RunKeys::new("ml", "bad").progress(), b"{\"step\": -1}");
        let error = store.progress("ml", "bad").await.unwrap_err();
        assert!(error.to_string().contains("ml/bad"), "{error}");
    }
}
