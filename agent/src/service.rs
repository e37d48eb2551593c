//! The agent's gRPC service to its ranks (`tessera.agent.v1.Agent`), served on a unix socket:
//! rendezvous (publish the rank's peer address in the store, wait for every rank of the
//! generation, answer with the rank table), heartbeats (recorded on the [`Board`], answered
//! with the directive), the commit fence (rank 0 may commit a checkpoint only once the store
//! has recorded the commit under its still-current generation), checkpoint notices, and Stop.
//!
//! Every request is checked: a rank of another generation, a local rank this node does not
//! run, or a malformed address gets an error status naming the problem — never a crash.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tessera_api::records::{CheckpointCommit, Record};
use tessera_api::{
    proto::agent::{
        CheckpointAck, CheckpointNotice, CommitGrant, CommitRequest, Directive, HeartbeatReply,
        HeartbeatRequest, Peer, RankPhase, RendezvousInfo, RendezvousRequest, StopReply,
        StopRequest,
        agent_server::{Agent, AgentServer},
    },
    status::CheckpointRef,
};
use tessera_store::{RendezvousError, RunStore};
use tokio::{net::UnixListener, sync::mpsc};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use tessera_api::clock::{rfc3339_now, unix_ms_now};

use crate::board::Board;

/// What the service asks of the generation loop.
#[derive(Debug)]
pub enum ServiceEvent {
    /// Stop RPC: checkpoint, stop the ranks, exit; the reply waits for the checkpoint step.
    Stop {
        reason: String,
        checkpoint: bool,
        reply: tokio::sync::oneshot::Sender<u64>,
    },
    /// Rank 0 committed a checkpoint.
    Committed(CheckpointRef),
}

/// The service's state.
pub struct AgentService {
    board: Arc<Board>,
    run: RunStore,
    events: mpsc::Sender<ServiceEvent>,
    /// How long a rendezvous waits for every rank's address.
    rendezvous_timeout: Duration,
}

impl AgentService {
    pub fn new(
        board: Arc<Board>,
        run: RunStore,
        events: mpsc::Sender<ServiceEvent>,
        rendezvous_timeout: Duration,
    ) -> AgentService {
        AgentService {
            board,
            run,
            events,
            rendezvous_timeout,
        }
    }
}

/// Serves `service` on a unix socket at `path` (replacing a stale socket file) until
/// `shutdown` is cancelled.
pub async fn serve_on_socket(
    service: AgentService,
    path: &Path,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    let incoming = UnixListenerStream::new(listener);
    let path: PathBuf = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(AgentServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(socket = %path.display(), "the agent service stopped: {e}");
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// Records `commit`, trying again while the store is briefly away (a leader election takes a
/// second or two) for at most [`COMMIT_PATIENCE`]: repeating the fenced put is harmless, and a
/// commit lost to a blip costs the gang a restart. A stale generation is refused at once.
async fn record_commit_riding_out_blips(
    run: &RunStore,
    commit: &CheckpointCommit,
) -> Result<i64, RendezvousError> {
    let deadline = tokio::time::Instant::now() + COMMIT_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = tokio::time::timeout(left, run.record_commit(commit)).await;
        match outcome {
            Ok(Err(e))
                if e.is_transient() && tokio::time::Instant::now() + COMMIT_RETRY < deadline =>
            {
                tracing::debug!(
                    step = commit.step,
                    "recording the commit: {e}; trying again"
                );
                tokio::time::sleep(COMMIT_RETRY).await;
            }
            Ok(done) => return done,
            Err(_) => {
                return Err(RendezvousError::Store(tessera_store::StoreError::Timeout {
                    target: run.store().target(),
                    operation: "txn",
                    after: COMMIT_PATIENCE,
                }));
            }
        }
    }
}

/// How long a commit may wait for the store (the rank waits 10 s for the answer).
const COMMIT_PATIENCE: Duration = Duration::from_secs(6);
const COMMIT_RETRY: Duration = Duration::from_millis(250);

#[tonic::async_trait]
impl Agent for AgentService {
    async fn rendezvous(
        &self,
        request: Request<RendezvousRequest>,
    ) -> Result<Response<RendezvousInfo>, Status> {
        let req = request.into_inner();
        let view = self.board.generation_view().ok_or_else(|| {
            Status::unavailable("no generation is running on this agent yet; retry")
        })?;
        if req.generation != view.generation {
            return Err(Status::failed_precondition(format!(
                "rank started for generation {} refused: the current generation is {}",
                req.generation, view.generation
            )));
        }
        if req.local_rank >= view.slots {
            return Err(Status::invalid_argument(format!(
                "local_rank {} is not run by this agent (it runs local ranks 0..{})",
                req.local_rank, view.slots
            )));
        }
        if req.listen_address.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "listen_address {:?} is not host:port",
                req.listen_address
            )));
        }
        let rank = view.first_rank + req.local_rank;
        let store = self.run.store();
        store
            .put(
                &self.run.keys().peer(view.generation, rank),
                req.listen_address.into_bytes(),
                None,
            )
            .await
            .map_err(|e| Status::unavailable(format!("publishing the peer address: {e}")))?;

        // Wait for every rank's address (ranks of other nodes publish through their agents).
        let world = view.table.world_size;
        let prefix = self.run.keys().peers_prefix(view.generation);
        let deadline = tokio::time::Instant::now() + self.rendezvous_timeout;
        let peers = loop {
            let kvs = store
                .get_prefix(&prefix)
                .await
                .map_err(|e| Status::unavailable(format!("reading peer addresses: {e}")))?;
            let mut peers: Vec<Peer> = kvs
                .iter()
                .filter_map(|kv| {
                    let rank = kv.key[prefix.len()..].parse::<u32>().ok()?;
                    let address = String::from_utf8(kv.value.clone()).ok()?;
                    (rank < world).then_some(Peer { rank, address })
                })
                .collect();
            peers.sort_by_key(|p| p.rank);
            if peers.len() == world as usize {
                break peers;
            }
            if self.board.generation() != view.generation {
                return Err(Status::aborted(format!(
                    "generation {} ended during the rendezvous",
                    view.generation
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                let have: Vec<u32> = peers.iter().map(|p| p.rank).collect();
                let missing: Vec<u32> = (0..world).filter(|r| !have.contains(r)).collect();
                return Err(Status::deadline_exceeded(format!(
                    "ranks {missing:?} of generation {} did not arrive within {} s",
                    view.generation,
                    self.rendezvous_timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let node_rank = view
            .table
            .nodes
            .iter()
            .position(|n| n.first_rank == view.first_rank)
            .unwrap_or(0) as u32;
        Ok(Response::new(RendezvousInfo {
            generation: view.generation,
            rank,
            world_size: world,
            local_rank: req.local_rank,
            local_world_size: view.slots,
            node_rank,
            peers,
            nccl_unique_id: Vec::new(),
            resume_checkpoint: view.resume_checkpoint,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let hb = request.into_inner();
        let phase = RankPhase::try_from(hb.phase).unwrap_or(RankPhase::Unspecified);
        let directive = self
            .board
            .heartbeat(
                hb.generation,
                hb.rank,
                hb.step,
                phase,
                hb.loss,
                hb.val_loss,
                hb.tokens_per_second,
            )
            // A rank of an old generation (or not ours) must end now.
            .unwrap_or(Directive::Abort);
        Ok(Response::new(HeartbeatReply {
            directive: directive as i32,
        }))
    }

    async fn checkpoint_committed(
        &self,
        request: Request<CheckpointNotice>,
    ) -> Result<Response<CheckpointAck>, Status> {
        let notice = request.into_inner();
        if notice.generation != self.board.generation() {
            return Err(Status::failed_precondition(format!(
                "checkpoint notice from generation {}, the current one is {}",
                notice.generation,
                self.board.generation()
            )));
        }
        if notice.path.is_empty() {
            return Err(Status::invalid_argument("checkpoint notice without a path"));
        }
        if notice.committed {
            let checkpoint = CheckpointRef {
                step: notice.step,
                path: notice.path,
                time: rfc3339_now(),
            };
            self.board.checkpoint_committed(checkpoint.clone());
            let _ = self.events.send(ServiceEvent::Committed(checkpoint)).await;
        }
        Ok(Response::new(CheckpointAck {}))
    }

    async fn confirm_commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitGrant>, Status> {
        let req = request.into_inner();
        let view = self.board.generation_view().ok_or_else(|| {
            Status::unavailable("no generation is running on this agent; do not commit")
        })?;
        if req.generation != view.generation {
            tracing::warn!(
                step = req.step,
                rank_generation = req.generation,
                generation = view.generation,
                "refused a checkpoint commit from an ended generation"
            );
            return Err(Status::failed_precondition(format!(
                "the commit of step {} from generation {} is refused: this agent runs generation {}",
                req.step, req.generation, view.generation
            )));
        }
        if req.rank != 0 || view.first_rank != 0 {
            return Err(Status::invalid_argument(format!(
                "rank {} asked to commit step {}: only rank 0 commits, and this node's ranks start at {}",
                req.rank, req.step, view.first_rank
            )));
        }
        let digest_ok = req.manifest_sha256.len() == 64
            && req.manifest_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !digest_ok {
            return Err(Status::invalid_argument(format!(
                "manifest_sha256 {:?} is not a SHA-256 in hex (64 characters)",
                req.manifest_sha256
            )));
        }
        let node = view
            .table
            .nodes
            .iter()
            .find(|n| n.first_rank == view.first_rank)
            .map_or_else(String::new, |n| n.node.clone());
        let commit = CheckpointCommit {
            version: <CheckpointCommit as Record>::VERSION,
            step: req.step,
            generation: req.generation,
            node,
            manifest_sha256: req.manifest_sha256.to_ascii_lowercase(),
            unix_ms: unix_ms_now(),
        };
        match record_commit_riding_out_blips(&self.run, &commit).await {
            Ok(revision) => Ok(Response::new(CommitGrant { revision })),
            Err(e @ RendezvousError::StaleGeneration { .. }) => {
                tracing::warn!(step = req.step, "{e}");
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(step = req.step, "cannot record the checkpoint commit: {e}");
                Err(Status::unavailable(format!(
                    "the store cannot confirm generation {} now ({e}); do not commit",
                    req.generation
                )))
            }
        }
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopReply>, Status> {
        let req = request.into_inner();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.events
            .send(ServiceEvent::Stop {
                reason: req.reason,
                checkpoint: req.checkpoint,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("the agent is shutting down"))?;
        let step = answer
            .await
            .map_err(|_| Status::internal("the agent stopped without reporting a checkpoint"))?;
        Ok(Response::new(StopReply {
            checkpoint_step: step,
        }))
    }
}
