//! Where the operator reads the progress agents publish, and removes a deleted run's keys.
//!
//! ```text
//!  agents ──put──► coordination store: /tessera/v1/runs/{ns}/{name}/progress (JSON)
//!                        │
//!  operator ◄──get── StoreProgress ──delete_run_keys──► (the finalizer, on deletion)
//! ```
//!
//! [`StoreProgress`] reads the keys through `tessera_store::Store`: etcd on a cluster, a local
//! run's store, or an in-memory [`tessera_store::EmbeddedStore`] in tests and the benchmark.

use std::sync::Arc;
use std::time::Duration;

use tessera_api::RunProgress;
use tessera_api::store_keys::RunKeys;
use tessera_store::{EmbeddedStore, RunStore, Store};

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

/// How long connecting to the store may take before the operator gives up.
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The run state the operator needs from the coordination store.
#[derive(Clone)]
pub struct StoreProgress {
    store: Arc<dyn Store>,
}

impl StoreProgress {
    pub fn new(store: Arc<dyn Store>) -> StoreProgress {
        StoreProgress { store }
    }

    /// Over a fresh in-memory store (tests, the benchmark).
    pub fn in_memory() -> StoreProgress {
        StoreProgress::new(Arc::new(EmbeddedStore::new()))
    }

    /// Connects to the store `endpoint` names (`etcd://host:port[,...]`, `tessera://host:port`).
    pub async fn connect(endpoint: &str) -> Result<StoreProgress, ProgressError> {
        let store = tessera_store::connect(endpoint, STORE_CONNECT_TIMEOUT)
            .await
            .map_err(|e| ProgressError::Store(e.to_string()))?;
        Ok(StoreProgress::new(store))
    }

    /// The store itself (tests publish through it, as agents do).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The newest progress published for the run; `None` before its agents publish any.
    pub async fn progress(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<RunProgress>, ProgressError> {
        let bytes = self
            .run(namespace, name)
            .progress()
            .await
            .map_err(|e| ProgressError::Store(e.to_string()))?;
        bytes
            .map(|bytes| {
                RunProgress::from_json(&bytes).map_err(|source| ProgressError::Malformed {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source,
                })
            })
            .transpose()
    }

    /// Publishes a run's progress, as its agents do.
    pub async fn publish(
        &self,
        namespace: &str,
        name: &str,
        progress: &RunProgress,
    ) -> Result<(), ProgressError> {
        self.run(namespace, name)
            .publish_progress(&progress.to_json())
            .await
            .map_err(|e| ProgressError::Store(e.to_string()))
    }

    fn run(&self, namespace: &str, name: &str) -> RunStore {
        RunStore::new(self.store.clone(), RunKeys::new(namespace, name))
    }

    /// Removes every key of the run (its whole prefix).
    pub async fn delete_run_keys(&self, namespace: &str, name: &str) -> Result<(), ProgressError> {
        self.store
            .delete_prefix(RunKeys::new(namespace, name).prefix())
            .await
            .map(|_| ())
            .map_err(|e| ProgressError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_published_progress_and_deletes_only_the_runs_keys() {
        let source = StoreProgress::in_memory();
        assert_eq!(source.progress("ml", "a").await.unwrap(), None);
        let progress = RunProgress {
            generation: 1,
            step: 3,
            loss: Some(4.0),
            ..RunProgress::default()
        };
        source.publish("ml", "a", &progress).await.unwrap();
        // "ab" shares "a"'s name as a prefix of its own: its keys stay.
        source.publish("ml", "ab", &progress).await.unwrap();
        source
            .store()
            .put(&RunKeys::new("ml", "a").generation(), b"2".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(source.progress("ml", "a").await.unwrap(), Some(progress));
        source.delete_run_keys("ml", "a").await.unwrap();
        assert_eq!(source.progress("ml", "a").await.unwrap(), None);
        assert!(
            source
                .store()
                .get(&RunKeys::new("ml", "a").generation())
                .await
                .unwrap()
                .is_none()
        );
        assert!(source.progress("ml", "ab").await.unwrap().is_some());
        assert!(StoreProgress::connect("nonsense").await.is_err());
    }

    #[tokio::test]
    async fn malformed_progress_is_an_error_naming_the_run() {
        let source = StoreProgress::in_memory();
        source
            .store()
            .put(
                &RunKeys::new("ml", "bad").progress(),
                b"{\"step\": -1}".to_vec(),
                None,
            )
            .await
            .unwrap();
        let error = source.progress("ml", "bad").await.unwrap_err();
        assert!(error.to_string().contains("ml/bad"), "{error}");
    }
}
