//! Asynchronous checkpoints: training copies its state into a [`CheckpointSnapshot`] (the
//! only stall), a writer thread writes and commits it, and the trainer polls or waits.
//!
//! ```text
//! trainer thread:  step … capture ─submit──▶ step … step … poll() ─▶ Ok(Some(committed))
//! writer thread:                   └─ write_checkpoint_fenced(root, manifest, snapshot, …) ┘
//! ```
//!
//! One write is in flight at a time: `submit` first waits for the previous one. A failed
//! write is returned by the next `poll`, `wait` or `submit`; one still unreported when the
//! writer is dropped is logged, so no error is lost silently.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use tessera_api::checkpoint::CheckpointManifest;

use super::{
    CheckpointError, CheckpointSnapshot, CommitFence, CommittedCheckpoint, write_checkpoint_fenced,
};

type WriteResult = Result<CommittedCheckpoint, CheckpointError>;

/// Writes checkpoints on a background thread, one at a time.
pub struct BackgroundWriter {
    root: PathBuf,
    keep: u32,
    fence: Option<Arc<dyn CommitFence>>,
    in_flight: Option<(u64, JoinHandle<WriteResult>)>,
}

impl BackgroundWriter {
    pub fn new(root: impl Into<PathBuf>, keep: u32) -> Result<BackgroundWriter, CheckpointError> {
        if keep == 0 {
            return Err(CheckpointError::KeepZero);
        }
        Ok(BackgroundWriter {
            root: root.into(),
            keep,
            fence: None,
            in_flight: None,
        })
    }

    /// Commits only what `fence` confirms ([`CommitFence`]).
    pub fn with_fence(mut self, fence: Option<Arc<dyn CommitFence>>) -> BackgroundWriter {
        self.fence = fence;
        self
    }

    /// The step of the write in flight, if any.
    pub fn in_flight_step(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|(step, _)| *step)
    }

    /// Starts writing `snapshot` as the checkpoint of `manifest.step`. Waits for the
    /// previous write first and returns its outcome (`Ok(None)` when there was none): a
    /// failed earlier write comes back here as `Err`, and the new write is then not started.
    pub fn submit(
        &mut self,
        manifest: CheckpointManifest,
        snapshot: CheckpointSnapshot,
    ) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        let previous = self.wait()?;
        let (root, keep, step) = (self.root.clone(), self.keep, manifest.step);
        let fence = self.fence.clone();
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-{step}"))
            .spawn(move || {
                let tensors = snapshot.as_tensors();
                write_checkpoint_fenced(&root, manifest, &tensors, keep, fence.as_deref())
            })
            .map_err(|e| {
                CheckpointError::WriterLost(format!("cannot start the writer thread: {e}"))
            })?;
        self.in_flight = Some((step, handle));
        Ok(previous)
    }

    /// The finished write, if the one in flight has finished: `Ok(None)` while it runs or
    /// when nothing was submitted.
    pub fn poll(&mut self) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        match &self.in_flight {
            Some((_, handle)) if handle.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Blocks until the write in flight (if any) finishes, and returns its outcome.
    pub fn wait(&mut self) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        let Some((step, handle)) = self.in_flight.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(result) => result.map(Some),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(CheckpointError::WriterLost(format!(
                    "writing the checkpoint of step {step} panicked: {message}"
                )))
            }
        }
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        if self.in_flight.is_some()
            && let Err(e) = self.wait()
        {
            tracing::error!("checkpoint write failed and was never collected: {e}");
        }
    }
}
