//! The agent's gRPC service answers bad and out-of-order requests with an error status (or an
//! abort directive), never a crash: before any generation runs, from another generation, for
//! a local rank it does not run, with a malformed address, and a checkpoint notice without a
//! path. A good rendezvous gets the peer table.

use std::{sync::Arc, time::Duration};

use tessera_agent::{board::Board, service::AgentService};
use tessera_api::{
    proto::agent::{
        CheckpointNotice, Directive, HeartbeatRequest, RankPhase, RendezvousRequest,
        agent_server::Agent,
    },
    store_keys::RunKeys,
};
use tessera_store::{EmbeddedStore, RankTable, RankedNode, RunStore, Store};
use tonic::{Code, Request};

fn service() -> (AgentService, Arc<Board>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    let run = RunStore::new(store, RunKeys::new("ns", "run"));
    let board = Arc::new(Board::default());
    let (events, _) = tokio::sync::mpsc::channel(4);
    let service = AgentService::new(board.clone(), run, events, Duration::from_millis(300));
    (service, board)
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
