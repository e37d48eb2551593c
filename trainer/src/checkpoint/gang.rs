//! Gang checkpoints, written in the background: every rank writes its files on a thread of
//! its own, and the file entries meet at rank 0 over the host collective at the following step
//! boundaries; rank 0 writes the commit marker once every shard is durable.
//!
//! ```text
//! step N:        wait for the previous write ─▶ rank 0 begins step-N.partial ─▶ barrier
//!                ─▶ every rank: snapshot of its shard (rank 0: and the model) ─▶ writer thread
//! steps N+1 …:   poll: each rank sends pending | done(file entry) | failed(why) to all
//!                all done ─▶ rank 0 asks the fence, commits (manifest, rename, prune);
//!                any failed ─▶ every rank errs
//! end, stop, the next checkpoint: wait (join the own thread, one exchange, commit)
//! ```
//!
//! Every rank reaches the same decisions from the same exchanged statuses, so the gang never
//! disagrees on whether a write is in flight. A synchronous checkpoint is `submit` then `wait`.
//! A crash before the commit leaves a `.partial` directory, which is never loaded.

use std::{ops::Range, path::PathBuf, sync::Arc, thread::JoinHandle};

use tessera_api::checkpoint::{CheckpointFile, CheckpointManifest};

use super::{
    CheckpointError, CommitFence, CommittedCheckpoint, MODEL_FILE, OwnedTensor, PartialCheckpoint,
    remove_stale_partials,
};
use crate::collective::Collective;

/// What one rank writes of a gang checkpoint, copied out of training (the only stall).
#[derive(Debug)]
pub struct ShardSnapshot {
    /// The parameters by name: rank 0 only.
    pub model: Option<Vec<OwnedTensor>>,
    pub rank: u32,
    /// This rank's range of the flat parameter space.
    pub flat_range: Range<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub master: Option<Vec<f32>>,
    pub optimizer_step: u64,
}

type Written = Result<(PartialCheckpoint, CheckpointFile), CheckpointError>;

struct InFlight {
    step: u64,
    /// Rank 0's manifest, committed when every shard is durable.
    manifest: Option<CheckpointManifest>,
    thread: Option<JoinHandle<Written>>,
    /// The thread's outcome once joined.
    written: Option<Result<(PartialCheckpoint, CheckpointFile), String>>,
}

/// One rank's side of the gang's checkpoint writes; at most one in flight.
pub struct GangWriter {
    root: PathBuf,
    keep: u32,
    /// Asked by rank 0 before it commits.
    fence: Option<Arc<dyn CommitFence>>,
    in_flight: Option<InFlight>,
}

const PENDING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

fn gang_error(step: u64, detail: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Manifest(format!("gang checkpoint of step {step}: {detail}"))
}

impl GangWriter {
    pub fn new(root: impl Into<PathBuf>, keep: u32) -> Result<GangWriter, CheckpointError> {
        if keep == 0 {
            return Err(CheckpointError::KeepZero);
        }
        Ok(GangWriter {
            root: root.into(),
            keep,
            fence: None,
            in_flight: None,
        })
    }

    /// Rank 0 commits only what `fence` confirms ([`CommitFence`]).
    pub fn with_fence(mut self, fence: Option<Arc<dyn CommitFence>>) -> GangWriter {
        self.fence = fence;
        self
    }

    /// Starts the gang's checkpoint of `manifest.step` (every rank calls this at the same
    /// step; `manifest` matters on rank 0). Waits for the previous write first and returns its
    /// commit on rank 0.
    pub fn submit(
        &mut self,
        comm: &mut dyn Collective,
        manifest: CheckpointManifest,
        snapshot: ShardSnapshot,
    ) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        let previous = self.wait(comm)?;
        let (rank, step) = (comm.rank(), manifest.step);
        let begun = if rank == 0 {
            remove_stale_partials(&self.root)?;
            Some(PartialCheckpoint::begin(&self.root, step)?)
        } else {
            None
        };
        comm.barrier().map_err(|e| gang_error(step, e))?;
        let partial = match begun {
            Some(p) => p,
            None => PartialCheckpoint::join(&self.root, step)?,
        };
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint-{step}-rank-{rank}"))
            .spawn(move || write_shard(partial, snapshot))
            .map_err(|e| {
                CheckpointError::WriterLost(format!("cannot start the writer thread: {e}"))
            })?;
        self.in_flight = Some(InFlight {
            step,
            manifest: (rank == 0).then_some(manifest),
            thread: Some(thread),
            written: None,
        });
        Ok(previous)
    }

    /// One exchange of the gang's write status, if a write is in flight: returns the commit
    /// (rank 0) once every rank's files are durable; `Ok(None)` while any is still writing.
    pub fn poll(
        &mut self,
        comm: &mut dyn Collective,
    ) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        self.exchange(comm, false)
    }

    /// Waits for the write in flight on every rank and commits it (rank 0 returns the commit).
    pub fn wait(
        &mut self,
        comm: &mut dyn Collective,
    ) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        self.exchange(comm, true)
    }

    fn exchange(
        &mut self,
        comm: &mut dyn Collective,
        block: bool,
    ) -> Result<Option<CommittedCheckpoint>, CheckpointError> {
        let Some(flight) = self.in_flight.as_mut() else {
            return Ok(None);
        };
        let step = flight.step;
        if flight.written.is_none()
            && let Some(thread) = flight.thread.take_if(|t| block || t.is_finished())
        {
            flight.written = Some(match thread.join() {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("the writer thread panicked".to_string()),
            });
        }
        let status: Vec<u8> = match &flight.written {
            None => vec![PENDING],
            Some(Ok((_, file))) => {
                let mut bytes = vec![DONE];
                bytes.extend(serde_json::to_vec(file).map_err(|e| gang_error(step, e))?);
                bytes
            }
            Some(Err(why)) => [&[FAILED], why.as_bytes()].concat(),
        };
        let all = comm
            .all_gather_bytes(&status)
            .map_err(|e| gang_error(step, e))?;
        let mut files = Vec::new();
        let mut pending = false;
        for (peer, entry) in all.iter().enumerate() {
            match entry.split_first() {
                Some((&DONE, json)) => {
                    files.push(serde_json::from_slice::<CheckpointFile>(json).map_err(|e| {
                        gang_error(
                            step,
                            format!("rank {peer} sent an unreadable file entry: {e}"),
                        )
                    })?)
                }
                Some((&FAILED, why)) => {
                    self.in_flight = None;
                    return Err(gang_error(
                        step,
                        format!(
                            "rank {peer} could not write its files: {}",
                            String::from_utf8_lossy(why)
                        ),
                    ));
                }
                _ => pending = true,
            }
        }
        if pending {
            return Ok(None);
        }
        let flight = self
            .in_flight
            .take()
            .ok_or_else(|| gang_error(step, "no write in flight"))?;
        let (Some(manifest), Some(Ok((partial, _)))) = (flight.manifest, flight.written) else {
            // Not rank 0: its part is done; rank 0 commits.
            return Ok(None);
        };
        // Rank 0's own files are in `partial`; the others' entries follow.
        let others = files.into_iter().skip(1).collect();
        partial
            .commit_fenced(manifest, others, self.keep, self.fence.as_deref())
            .map(Some)
    }
}

impl Drop for GangWriter {
    fn drop(&mut self) {
        // Without the gang there is no commit; the thread's files stay in the .partial
        // directory, which the next write removes. Join so no write outlives the trainer.
        if let Some(thread) = self.in_flight.take().and_then(|f| f.thread) {
            let _ = thread.join();
        }
    }
}

fn write_shard(mut partial: PartialCheckpoint, snapshot: ShardSnapshot) -> Written {
    if let Some(model) = &snapshot.model {
        let tensors: Vec<_> = model.iter().map(OwnedTensor::view).collect();
        partial.write_tensor_file(MODEL_FILE, &tensors, Default::default())?;
    }
    let file = partial.write_optimizer_shard(
        snapshot.rank,
        snapshot.flat_range.clone(),
        &snapshot.m,
        &snapshot.v,
        snapshot.master.as_deref(),
        snapshot.optimizer_step,
    )?;
    Ok((partial, file))
}
