//! The agent's gRPC service answers bad and out-of-order requests with an error status (or an
//! abort directive), never a crash: before any generation runs, from another generation, for
//! a local rank it does not run, with a malformed address, and a checkpoint notice without a
//! path. A good rendezvous gets the peer table. The commit fence grants rank 0's commit only
//! while the store's generation is the rank's, and records it.

use std::{sync::Arc, time::Duration};

use tessera_agent::{board::Board, service::AgentService};
use tessera_api::{
    proto::agent::{
        CheckpointNotice, CommitRequest, Directive, HeartbeatRequest, RankPhase, RendezvousRequest,
        agent_server::Agent,
    },
    store_keys::RunKeys,
};
use tessera_store::{EmbeddedStore, RankTable, RankedNode, RunStore, Store, StoreError};
use tonic::{Code, Request};

fn service() -> (AgentService, Arc<Board>) {
    let (service, board, _) = service_and_store();
    (service, board)
}

fn service_and_store() -> (AgentService, Arc<Board>, RunStore) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    let run = RunStore::new(store, RunKeys::new("ns", "run"));
    let board = Arc::new(Board::default());
    let (events, _) = tokio::sync::mpsc::channel(4);
    let service = AgentService::new(
        board.clone(),
        run.clone(),
        events,
        Duration::from_millis(300),
    );
    (service, board, run)
}

fn commit(generation: u64, rank: u32, step: u64, sha: &str) -> Request<CommitRequest> {
    Request::new(CommitRequest {
        generation,
        rank,
        step,
        manifest_sha256: sha.into(),
    })
}

fn table(generation: u64) -> RankTable {
    RankTable {
        generation,
        world_size: 1,
        nodes: vec![RankedNode {
            node: "a".into(),
            address: "127.0.0.1".into(),
            first_rank: 0,
            slots: 1,
        }],
    }
}

fn rendezvous(generation: u64, local_rank: u32, address: &str) -> Request<RendezvousRequest> {
    Request::new(RendezvousRequest {
        local_rank,
        generation,
        listen_address: address.into(),
        nccl_unique_id: Vec::new(),
    })
}

fn heartbeat(generation: u64, rank: u32) -> Request<HeartbeatRequest> {
    Request::new(HeartbeatRequest {
        generation,
        rank,
        step: 1,
        phase: RankPhase::Training as i32,
        loss: 1.0,
        val_loss: f64::NAN,
        tokens_per_second: 1.0,
        unix_ms: 0,
    })
}

#[tokio::test]
async fn bad_and_out_of_order_requests_get_error_statuses() {
    let (service, board) = service();
    // Nothing runs yet.
    let early = service.rendezvous(rendezvous(1, 0, "127.0.0.1:1")).await;
    assert_eq!(early.unwrap_err().code(), Code::Unavailable);

    board.begin_generation(table(2), 0, 1, String::new());
    let old = service.rendezvous(rendezvous(1, 0, "127.0.0.1:1")).await;
    let status = old.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("generation 1 refused"),
        "{status:?}"
    );

    let stranger = service.rendezvous(rendezvous(2, 5, "127.0.0.1:1")).await;
    assert_eq!(stranger.unwrap_err().code(), Code::InvalidArgument);
    let garbage = service.rendezvous(rendezvous(2, 0, "not an address")).await;
    assert_eq!(garbage.unwrap_err().code(), Code::InvalidArgument);

    // A heartbeat of an old generation, or of a rank this node does not run: abort.
    for (g, rank) in [(1, 0), (2, 9)] {
        let reply = service.heartbeat(heartbeat(g, rank)).await.unwrap();
        assert_eq!(reply.into_inner().directive(), Directive::Abort);
    }
    let reply = service.heartbeat(heartbeat(2, 0)).await.unwrap();
    assert_eq!(reply.into_inner().directive(), Directive::Continue);

    let pathless = service
        .checkpoint_committed(Request::new(CheckpointNotice {
            generation: 2,
            rank: 0,
            step: 10,
            path: String::new(),
            committed: true,
            bytes: 0,
            write_seconds: 0.0,
        }))
        .await;
    assert_eq!(pathless.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_rendezvous_answers_with_the_peer_table() {
    let (service, board) = service();
    board.begin_generation(table(3), 0, 1, "/ckpt/step-0000000010".into());
    let info = service
        .rendezvous(rendezvous(3, 0, "127.0.0.1:4242"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.rank, info.world_size, info.generation), (0, 1, 3));
    assert_eq!(info.peers.len(), 1);
    assert_eq!(info.peers[0].address, "127.0.0.1:4242");
    assert_eq!(info.resume_checkpoint, "/ckpt/step-0000000010");
}

#[tokio::test]
async fn the_commit_fence_grants_only_the_current_generation_and_records_the_commit() {
    let (service, board, run) = service_and_store();
    let sha = "ab".repeat(32);
    // Nothing runs yet: no commit.
    let early = service.confirm_commit(commit(1, 0, 10, &sha)).await;
    assert_eq!(early.unwrap_err().code(), Code::Unavailable);

    assert_eq!(run.current_generation().await.unwrap(), 1);
    board.begin_generation(table(1), 0, 1, String::new());
    let granted = service
        .confirm_commit(commit(1, 0, 10, &sha))
        .await
        .unwrap();
    assert!(granted.into_inner().revision > 0);
    let records = run.checkpoint_commits().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].step,
            records[0].generation,
            records[0].node.as_str()
        ),
        (10, 1, "a")
    );
    assert_eq!(records[0].manifest_sha256, sha);

    // Only rank 0 commits, with a real digest.
    let other = service.confirm_commit(commit(1, 1, 20, &sha)).await;
    assert_eq!(other.unwrap_err().code(), Code::InvalidArgument);
    let short = service.confirm_commit(commit(1, 0, 20, "abc")).await;
    assert_eq!(short.unwrap_err().code(), Code::InvalidArgument);

    // The gang moved on in the store while this agent still runs generation 1 (it was paused
    // or cut off and has not seen the bump): the store refuses, naming both generations.
    assert!(run.bump_generation(1, "peer-lost: drill").await.unwrap());
    let stale = service
        .confirm_commit(commit(1, 0, 20, &"cd".repeat(32)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("generation 1")
            && stale.message().contains("current generation is 2"),
        "{stale:?}"
    );
    let steps: Vec<u64> = run
        .checkpoint_commits()
        .await
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, [10], "the refused commit left no record");

    // A rank of an older generation than the agent's is refused before the store is asked.
    board.begin_generation(table(2), 0, 1, String::new());
    let old = service
        .confirm_commit(commit(1, 0, 20, &sha))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition);
    assert!(
        old.message().contains("this agent runs generation 2"),
        "{old:?}"
    );
}

/// The embedded store, whose next `failures` transactions fail as if etcd were electing a
/// leader.
struct Blipping {
    inner: EmbeddedStore,
    failures: std::sync::atomic::AtomicU32,
}

#[tonic::async_trait]
impl Store for Blipping {
    fn target(&self) -> String {
        "a blipping store".into()
    }
    async fn get(&self, key: &str) -> Result<Option<tessera_store::KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<tessera_store::Range, StoreError> {
        self.inner.range(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<tessera_store::LeaseId>,
    ) -> Result<i64, StoreError> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: tessera_store::Txn) -> Result<tessera_store::TxnOutcome, StoreError> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(StoreError::Unavailable {
                target: self.target(),
                operation: "txn",
                message: "etcdserver: leader changed".into(),
            });
        }
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<tessera_store::LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: tessera_store::LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: tessera_store::LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<tessera_store::WatchStream, StoreError> {
        self.inner.watch_prefix(prefix, start_revision).await
    }
}

#[tokio::test]
async fn a_commit_rides_out_a_store_blip_but_not_an_outage() {
    let store = Arc::new(Blipping {
        inner: EmbeddedStore::new(),
        failures: std::sync::atomic::AtomicU32::new(0),
    });
    let run = RunStore::new(store.clone(), RunKeys::new("ns", "run"));
    assert_eq!(run.current_generation().await.unwrap(), 1);
    let board = Arc::new(Board::default());
    let (events, _) = tokio::sync::mpsc::channel(4);
    let service = AgentService::new(board.clone(), run.clone(), events, Duration::from_secs(1));
    board.begin_generation(table(1), 0, 1, String::new());
    let sha = "ef".repeat(32);

    // Two failed tries (a leader election): the third records the commit.
    store.failures.store(2, std::sync::atomic::Ordering::SeqCst);
    service
        .confirm_commit(commit(1, 0, 10, &sha))
        .await
        .unwrap();
    assert_eq!(run.checkpoint_commits().await.unwrap().len(), 1);

    // A store away for longer than the commit's patience: refused as unavailable, and the
    // rank must not commit.
    store
        .failures
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let away = service
        .confirm_commit(commit(1, 0, 20, &sha))
        .await
        .unwrap_err();
    assert_eq!(away.code(), Code::Unavailable, "{away:?}");
    assert!(away.message().contains("do not commit"), "{away:?}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the rank waits 10 s at most"
    );
    assert_eq!(run.checkpoint_commits().await.unwrap().len(), 1);
}
