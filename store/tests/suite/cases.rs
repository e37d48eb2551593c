//! The test bodies, each run against every store (see `main.rs`), plus the etcd-only restarts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tessera_api::store_keys::RunKeys;
use tessera_store::{
    Compare, EventKind, JoinOutcome, LeaseId, LeaseKeeper, LeaseStatus, Member, RankTable,
    RendezvousConfig, RendezvousError, RunStore, Store, StoreError, Txn, TxnOp, WatchEvent,
    WatchStream,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::harness::Harness;

fn run_keys() -> RunKeys {
    RunKeys::new("test", "run")
}

fn run_store(store: Arc<dyn Store>) -> RunStore {
    RunStore::new(store, run_keys())
}

/// The next event of a watch, failing the test if none comes within `within`.
async fn next_event(stream: &mut WatchStream, within: Duration) -> WatchEvent {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// Polls until `check` holds (5 s at most).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn member_count(run: &RunStore, generation: u64) -> usize {
    run.members(generation).await.map_or(0, |m| m.len())
}

fn member(node: &str, slots: u32) -> Member {
    Member {
        node: node.to_string(),
        slots,
        address: format!("{node}:7000"),
    }
}

/// A member joining in a task of its own, with its own client and lease keeper (returned, so the
/// lease outlives the join).
fn spawn_join(
    store: Arc<dyn Store>,
    generation: u64,
    member: Member,
    config: RendezvousConfig,
) -> JoinHandle<(Result<JoinOutcome, RendezvousError>, LeaseKeeper)> {
    tokio::spawn(async move {
        let keeper = LeaseKeeper::start(store.clone(), Duration::from_secs(2))
            .await
            .expect("granting a lease");
        let run = run_store(store);
        let outcome = run.join(generation, &member, keeper.lease(), &config).await;
        (outcome, keeper)
    })
}

fn joined(outcome: Result<JoinOutcome, RendezvousError>) -> RankTable {
    match outcome {
        Ok(JoinOutcome::Joined(table)) => table,
        other => panic!("expected to join, got {other:?}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub async fn kv_basics(h: &Harness) {
    let s = h.store();
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    let r1 = s.put("/t/a", b"1".to_vec(), None).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(kv.value, b"1");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (r1, r1, 1, None)
    );
    let r2 = s.put("/t/a", b"2".to_vec(), None).await.unwrap();
    assert!(r2 > r1);
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    s.put("/t/c", b"c".to_vec(), None).await.unwrap();
    s.put("/u/x", b"x".to_vec(), None).await.unwrap();
    let last = s.put("/t/b", b"b".to_vec(), None).await.unwrap();
    let range = s.range("/t/").await.unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b", "/t/c"], "sorted by key, prefix only");
    assert_eq!(range.revision, last);
    assert!(s.delete("/t/b").await.unwrap());
    assert!(!s.delete("/t/b").await.unwrap());
    assert_eq!(s.delete_prefix("/t/").await.unwrap(), 2);
    assert!(s.get_prefix("/t/").await.unwrap().is_empty());
    assert_eq!(s.get("/u/x").await.unwrap().unwrap().value, b"x");
    // Bad input is an error, never a panic.
    assert!(matches!(
        s.put("", Vec::new(), None).await,
        Err(StoreError::InvalidRequest(_))
    ));
    let unknown = LeaseId(0x7777_7777);
    assert_eq!(
        s.put("/t/z", Vec::new(), Some(unknown)).await,
        Err(StoreError::LeaseExpired(unknown))
    );
    assert!(matches!(
        s.watch_prefix("/t/", Some(0)).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

pub async fn compare_and_swap(h: &Harness) {
    let s = h.store();
    let k = "/cas/k";
    let create = || {
        Txn::new()
            .when([Compare::absent(k)])
            .and_then([TxnOp::put(k, "v1")])
            .or_else([TxnOp::put("/cas/lost", "x")])
    };
    let first = s.txn(create()).await.unwrap();
    assert!(first.succeeded);
    let second = s.txn(create()).await.unwrap();
    assert!(!second.succeeded, "create-if-absent succeeds once");
    assert!(second.revision > first.revision, "the failure branch wrote");
    assert_eq!(s.get("/cas/lost").await.unwrap().unwrap().value, b"x");
    let kv = s.get(k).await.unwrap().unwrap();
    assert_eq!(kv.create_revision, first.revision);

    // A transaction that writes nothing leaves the revision alone.
    let miss = Txn::new()
        .when([Compare::value(k, "nope")])
        .and_then([TxnOp::put(k, "v2")]);
    let outcome = s.txn(miss).await.unwrap();
    assert!(!outcome.succeeded);
    assert_eq!(outcome.revision, second.revision);

    let swap = Txn::new()
        .when([
            Compare::value(k, "v1"),
            Compare::mod_revision(k, kv.mod_revision),
            Compare::create_revision(k, kv.create_revision),
        ])
        .and_then([TxnOp::put(k, "v2"), TxnOp::delete("/cas/lost")]);
    assert!(s.txn(swap).await.unwrap().succeeded);
    let swapped = s.get(k).await.unwrap().unwrap();
    assert_eq!((swapped.value.as_slice(), swapped.version), (&b"v2"[..], 2));
    assert_eq!(s.get("/cas/lost").await.unwrap(), None);

    // A stale mod revision loses.
    let stale = Txn::new()
        .when([Compare::mod_revision(k, kv.mod_revision)])
        .and_then([TxnOp::put(k, "v3")]);
    assert!(!s.txn(stale).await.unwrap().succeeded);
    // On an absent key, a value compare is false and a mod revision compare sees 0.
    let absent_value = Txn::new()
        .when([Compare::value("/cas/absent", "")])
        .and_then([TxnOp::put("/cas/absent", "a")]);
    assert!(!s.txn(absent_value).await.unwrap().succeeded);
    let absent_rev = Txn::new()
        .when([Compare::mod_revision("/cas/absent", 0)])
        .and_then([TxnOp::put("/cas/absent", "b")]);
    assert!(s.txn(absent_rev).await.unwrap().succeeded);
    // Prefix deletes inside a transaction.
    let wipe = Txn::new().and_then([TxnOp::delete_prefix("/cas/")]);
    assert!(s.txn(wipe).await.unwrap().succeeded);
    assert!(s.get_prefix("/cas/").await.unwrap().is_empty());
    // A key put twice in one branch is refused, whatever the backend.
    let twice = Txn::new().and_then([TxnOp::put(k, "a"), TxnOp::put(k, "b")]);
    assert!(matches!(
        s.txn(twice).await,
        Err(StoreError::InvalidRequest(_))
    ));
}

pub async fn lease_expiry_deletes_keys(h: &Harness) {
    let s = h.store();
    let granted = Instant::now();
    let lease = s.grant_lease(Duration::from_secs(1)).await.unwrap();
    s.put("/lease/a", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("/lease/b", b"2".to_vec(), Some(lease)).await.unwrap();
    s.put("/lease/keep", b"3".to_vec(), None).await.unwrap();
    assert_eq!(s.get("/lease/a").await.unwrap().unwrap().lease, Some(lease));
    let mut events = s.watch_prefix("/lease/", None).await.unwrap();
    let first = next_event(&mut events, Duration::from_secs(5)).await;
    let second = next_event(&mut events, Duration::from_secs(1)).await;
    assert!(
        granted.elapsed() >= Duration::from_millis(950),
        "expired early"
    );
    for e in [&first, &second] {
        assert_eq!(e.kind, EventKind::Delete);
        assert!(e.kv.value.is_empty());
    }
    let deleted: BTreeSet<&str> = [first.kv.key.as_str(), second.kv.key.as_str()].into();
    assert_eq!(deleted, ["/lease/a", "/lease/b"].into());
    assert_eq!(
        first.revision, second.revision,
        "one revision for the lease"
    );
    assert_eq!(s.get("/lease/a").await.unwrap(), None);
    assert!(s.get("/lease/keep").await.unwrap().is_some());
    assert_eq!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseExpired(lease))
    );
    assert_eq!(
        s.put("/lease/c", Vec::new(), Some(lease)).await,
        Err(StoreError::LeaseExpired(lease))
    );
    assert_eq!(
        s.revoke_lease(lease).await,
        Err(StoreError::LeaseExpired(lease))
    );
}

pub async fn keep_alive_outlives_the_ttl(h: &Harness) {
    let s = h.store();
    let keeper = LeaseKeeper::start(s.clone(), Duration::from_secs(1))
        .await
        .unwrap();
    let lease = keeper.lease();
    s.put("/ka/k", b"v".to_vec(), Some(lease)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        s.get("/ka/k").await.unwrap().is_some(),
        "the keeper kept the lease alive past its 1 s TTL"
    );
    assert_eq!(*keeper.status().borrow(), LeaseStatus::Alive);
    assert_eq!(s.keep_alive(lease).await.unwrap(), Duration::from_secs(1));

    // Revoked behind the keeper's back: it reports the loss.
    s.revoke_lease(lease).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(3), keeper.lost())
        .await
        .expect("the keeper notices within a refresh period");
    assert_eq!(lost, StoreError::LeaseExpired(lease));
    assert!(matches!(*keeper.status().borrow(), LeaseStatus::Lost(_)));
    assert_eq!(s.get("/ka/k").await.unwrap(), None);

    // Revoked by its owner: the keys go at once.
    let second = LeaseKeeper::start(s.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    s.put("/ka/k2", b"v".to_vec(), Some(second.lease()))
        .await
        .unwrap();
    second.revoke().await.unwrap();
    assert_eq!(s.get("/ka/k2").await.unwrap(), None);
}

pub async fn watch_sees_a_prefix_in_order(h: &Harness) {
    let s = h.store();
    let mut live = s.watch_prefix("/w/", None).await.unwrap();
    let r1 = s.put("/w/a", b"1".to_vec(), None).await.unwrap();
    s.put("/x/b", b"outside".to_vec(), None).await.unwrap();
    let r3 = s.put("/w/b", b"2".to_vec(), None).await.unwrap();
    assert!(s.delete("/w/a").await.unwrap());
    let last = Txn::new().and_then([TxnOp::put("/w/c", "3"), TxnOp::delete("/w/b")]);
    let r5 = s.txn(last).await.unwrap().revision;

    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_event(&mut live, Duration::from_secs(5)).await);
    }
    assert_eq!(seen[0].kind, EventKind::Put);
    assert_eq!(
        (seen[0].kv.key.as_str(), seen[0].kv.value.as_slice()),
        ("/w/a", &b"1"[..])
    );
    assert_eq!(
        (
            seen[0].revision,
            seen[0].kv.create_revision,
            seen[0].kv.version
        ),
        (r1, r1, 1)
    );
    assert_eq!(
        (seen[1].kind, seen[1].kv.key.as_str(), seen[1].revision),
        (EventKind::Put, "/w/b", r3)
    );
    assert_eq!(
        (seen[2].kind, seen[2].kv.key.as_str()),
        (EventKind::Delete, "/w/a")
    );
    let in_txn: BTreeSet<(String, bool)> = seen[3..]
        .iter()
        .map(|e| (e.kv.key.clone(), e.kind == EventKind::Put))
        .collect();
    assert_eq!(
        in_txn,
        [("/w/b".to_string(), false), ("/w/c".to_string(), true)].into()
    );
    assert!(seen[3..].iter().all(|e| e.revision == r5));
    let revisions: Vec<i64> = seen.iter().map(|e| e.revision).collect();
    assert!(revisions.is_sorted());

    // The same history, replayed from the first revision.
    let mut replay = s.watch_prefix("/w/", Some(r1)).await.unwrap();
    for expected in &seen {
        assert_eq!(
            &next_event(&mut replay, Duration::from_secs(5)).await,
            expected
        );
    }
    // Nothing else is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), replay.next())
            .await
            .is_err()
    );
}

pub async fn rendezvous_of_four(h: &Harness) {
    let config = RendezvousConfig {
        min_members: 4,
        max_members: 4,
        timeout: Duration::from_secs(10),
        last_call: Duration::from_secs(1),
    };
    let g = run_store(h.store()).current_generation().await.unwrap();
    assert_eq!(g, 1);
    let mut tasks = Vec::new();
    for (node, slots) in [("node-c", 1), ("node-a", 2), ("node-d", 3), ("node-b", 4)] {
        tasks.push(spawn_join(
            h.client().await,
            g,
            member(node, slots),
            config.clone(),
        ));
    }
    let mut tables = Vec::new();
    let mut keepers = Vec::new();
    for task in tasks {
        let (outcome, keeper) = task.await.unwrap();
        tables.push(joined(outcome));
        keepers.push(keeper);
    }
    let table = &tables[0];
    assert!(
        tables.iter().all(|t| t == table),
        "everyone got the same table"
    );
    assert_eq!(table.generation, 1);
    assert_eq!(table.world_size, 10);
    let layout: Vec<(&str, u32, u32)> = table
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.first_rank, n.slots))
        .collect();
    assert_eq!(
        layout,
        [
            ("node-a", 0, 2),
            ("node-b", 2, 4),
            ("node-c", 6, 1),
            ("node-d", 7, 3)
        ]
    );
    assert_eq!(table.node("node-b").unwrap().address, "node-b:7000");
    let run = run_store(h.store());
    assert_eq!(run.rank_table(1).await.unwrap().as_ref(), Some(table));
    assert_eq!(run.members(1).await.unwrap().len(), 4);
    assert_eq!(run.live_members().await.unwrap().len(), 4);
}

pub async fn member_never_arrives(h: &Harness) {
    let config = RendezvousConfig {
        min_members: 4,
        max_members: 4,
        timeout: Duration::from_millis(1500),
        last_call: Duration::ZERO,
    };
    let g = run_store(h.store()).current_generation().await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        tasks.push(spawn_join(
            h.client().await,
            g,
            member(node, 1),
            config.clone(),
        ));
    }
    for task in tasks {
        let (outcome, _keeper) = task.await.unwrap();
        match outcome {
            Err(e @ RendezvousError::NotEnoughMembers { .. }) => {
                let RendezvousError::NotEnoughMembers {
                    present,
                    missing,
                    min,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(present, &names(&["node-a", "node-b", "node-c"]));
                assert_eq!((*missing, *min), (1, 4));
                let message = e.to_string();
                assert!(
                    message.contains("present: node-a, node-b, node-c; 1 missing"),
                    "{message}"
                );
            }
            other => panic!("expected the rendezvous to time out, got {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(run_store(h.store()).rank_table(g).await.unwrap(), None);
}

pub async fn member_lease_expires_during_rendezvous(h: &Harness) {
    let config = RendezvousConfig {
        min_members: 4,
        max_members: 4,
        timeout: Duration::from_secs(15),
        last_call: Duration::ZERO,
    };
    let run = run_store(h.store());
    let g = run.current_generation().await.unwrap();
    // node-d joins with a lease no one refreshes: its agent died.
    let d_store = h.client().await;
    let d_lease = d_store.grant_lease(Duration::from_secs(1)).await.unwrap();
    let d_config = config.clone();
    let d_join = tokio::spawn(async move {
        run_store(d_store)
            .join(g, &member("node-d", 1), d_lease, &d_config)
            .await
    });
    eventually("node-d has joined", || async {
        member_count(&run, g).await == 1
    })
    .await;
    let mut departures = run.watch_departures(g, &names(&["node-d"])).await.unwrap();
    let a = spawn_join(h.client().await, g, member("node-a", 1), config.clone());
    let b = spawn_join(h.client().await, g, member("node-b", 1), config.clone());

    // The others see it leave; its own join notices too.
    let left = tokio::time::timeout(Duration::from_secs(5), departures.next())
        .await
        .expect("node-d's lease expires within a few seconds")
        .unwrap();
    assert_eq!(left, "node-d");
    let d_outcome = tokio::time::timeout(Duration::from_secs(5), d_join)
        .await
        .expect("node-d's join ends")
        .unwrap();
    assert_eq!(
        d_outcome,
        Err(RendezvousError::MembershipLost {
            generation: g,
            node: "node-d".into()
        })
    );
    assert_eq!(
        run.rank_table(g).await.unwrap(),
        None,
        "not fixed with node-d"
    );

    // Two more arrive: the table is fixed with the four live members.
    let c = spawn_join(h.client().await, g, member("node-c", 1), config.clone());
    let e = spawn_join(h.client().await, g, member("node-e", 1), config.clone());
    let mut tables = Vec::new();
    for task in [a, b, c, e] {
        let (outcome, _keeper) = task.await.unwrap();
        tables.push(joined(outcome));
    }
    assert!(tables.iter().all(|t| t == &tables[0]));
    assert_eq!(
        tables[0].node_names(),
        names(&["node-a", "node-b", "node-c", "node-e"])
    );
}

pub async fn elastic_rendezvous_and_a_latecomer(h: &Harness) {
    let config = RendezvousConfig {
        min_members: 2,
        max_members: 4,
        timeout: Duration::from_secs(10),
        last_call: Duration::from_millis(500),
    };
    let g = run_store(h.store()).current_generation().await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in ["node-b", "node-c", "node-a"] {
        tasks.push(spawn_join(
            h.client().await,
            g,
            member(node, 2),
            config.clone(),
        ));
    }
    let mut keepers = Vec::new();
    let mut tables = Vec::new();
    for task in tasks {
        let (outcome, keeper) = task.await.unwrap();
        tables.push(joined(outcome));
        keepers.push(keeper);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for the last call"
    );
    assert!(tables.iter().all(|t| t == &tables[0]));
    assert_eq!(
        tables[0].node_names(),
        names(&["node-a", "node-b", "node-c"])
    );
    assert_eq!(tables[0].world_size, 6);

    // A latecomer finds the table fixed without it.
    let (late, _keeper) = spawn_join(h.client().await, g, member("node-d", 2), config)
        .await
        .unwrap();
    match late {
        Err(RendezvousError::FixedWithout {
            generation,
            node,
            members,
        }) => {
            assert_eq!((generation, node.as_str()), (g, "node-d"));
            assert_eq!(members, names(&["node-a", "node-b", "node-c"]));
        }
        other => panic!("expected FixedWithout, got {other:?}"),
    }
}

pub async fn racing_generation_bumps(h: &Harness) {
    let run = run_store(h.store());
    assert_eq!(run.current_generation().await.unwrap(), 1);
    let racers = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let mut tasks = Vec::new();
    for _ in 0..racers {
        let racer = run_store(h.client().await);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            racer.bump_generation(1, "a racer").await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1, "exactly one racer bumps");
    assert_eq!(run.current_generation().await.unwrap(), 2);
    assert_eq!(
        run.end_reason(1).await.unwrap().as_deref(),
        Some("a racer"),
        "the winner's reason is kept"
    );
    assert!(!run.bump_generation(1, "too late").await.unwrap());
    assert_eq!(run.end_reason(1).await.unwrap().as_deref(), Some("a racer"));
    assert_eq!(run.end_reason(2).await.unwrap(), None, "2 has not ended");
    assert!(
        run.bump_generation(2, "rank 3 exited with code 1")
            .await
            .unwrap()
    );
    assert_eq!(run.current_generation().await.unwrap(), 3);
    assert_eq!(
        run.end_reason(2).await.unwrap().as_deref(),
        Some("rank 3 exited with code 1")
    );
}

pub async fn superseded_while_waiting(h: &Harness) {
    let config = RendezvousConfig::exactly(2, Duration::from_secs(10));
    let run = run_store(h.store());
    let g = run.current_generation().await.unwrap();
    let waiting = spawn_join(h.client().await, g, member("node-a", 1), config.clone());
    eventually("node-a has joined", || async {
        member_count(&run, g).await == 1
    })
    .await;
    let next = tokio::spawn({
        let run = run.clone();
        async move { run.wait_for_generation_past(g).await }
    });
    assert!(run.bump_generation(g, "a test").await.unwrap());
    let (outcome, _keeper) = waiting.await.unwrap();
    assert_eq!(outcome, Ok(JoinOutcome::Superseded { generation: g + 1 }));
    assert_eq!(next.await.unwrap(), Ok(g + 1));
    // Joining the old generation is superseded at once; a future one is refused.
    let (again, _keeper) = spawn_join(h.client().await, g, member("node-b", 1), config.clone())
        .await
        .unwrap();
    assert_eq!(again, Ok(JoinOutcome::Superseded { generation: g + 1 }));
    let (future, _keeper) = spawn_join(h.client().await, g + 5, member("node-b", 1), config)
        .await
        .unwrap();
    assert_eq!(
        future,
        Err(RendezvousError::NotCurrent {
            requested: g + 5,
            current: g + 1
        })
    );
}

pub async fn progress_checkpoints_and_pruning(h: &Harness) {
    let run = run_store(h.store());
    assert_eq!(run.progress().await.unwrap(), None);
    run.publish_progress(br#"{"step":10,"loss":2.5}"#)
        .await
        .unwrap();
    assert_eq!(
        run.progress().await.unwrap().as_deref(),
        Some(&br#"{"step":10,"loss":2.5}"#[..])
    );
    assert!(matches!(
        run.publish_progress(b"step 10").await,
        Err(RendezvousError::Invalid(_))
    ));
    assert_eq!(run.latest_checkpoint().await.unwrap(), None);
    let generation = run.current_generation().await.unwrap();
    run.publish_latest_checkpoint(generation, br#"{"step":10}"#)
        .await
        .unwrap();
    assert_eq!(
        run.latest_checkpoint().await.unwrap().as_deref(),
        Some(&br#"{"step":10}"#[..])
    );
    // Fenced: a writer of an ended generation is refused and changes nothing (on a run of
    // its own, so the pruning below counts only this run's generations).
    let fenced = RunStore::new(h.store(), RunKeys::new("test", "fenced"));
    let generation = fenced.current_generation().await.unwrap();
    fenced
        .publish_latest_checkpoint(generation, br#"{"step":10}"#)
        .await
        .unwrap();
    assert!(fenced.bump_generation(generation, "drill").await.unwrap());
    let stale = fenced
        .publish_latest_checkpoint(generation, br#"{"step":20}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, RendezvousError::StaleGeneration { .. }),
        "{stale}"
    );
    assert!(
        stale.to_string().contains("refused the newest checkpoint"),
        "{stale}"
    );
    assert_eq!(
        fenced.latest_checkpoint().await.unwrap().as_deref(),
        Some(&br#"{"step":10}"#[..])
    );
    assert!(matches!(
        fenced
            .publish_latest_checkpoint(generation + 1, b"step 20")
            .await,
        Err(RendezvousError::Invalid(_))
    ));

    let keys = run_keys();
    let s = h.store();
    for g in [1, 2, 3, 10] {
        let table = RankTable::build(g, &[]).unwrap();
        let json = serde_json::to_vec(&table).unwrap();
        s.put(&keys.rank_table(g), json, None).await.unwrap();
    }
    // A corrupt generation key is reported, not parsed into nonsense.
    s.put(&keys.generation(), b"three".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(
        run.current_generation().await,
        Err(RendezvousError::Corrupt { .. })
    ));
    assert_eq!(run.prune_generations(3).await.unwrap(), 2);
    assert_eq!(run.rank_table(2).await.unwrap(), None);
    assert!(run.rank_table(3).await.unwrap().is_some());
    assert!(run.rank_table(10).await.unwrap().is_some());
}

/// etcd only: etcd is killed and restarted in the middle of a rendezvous of four.
pub async fn etcd_restart_mid_rendezvous(h: &Harness) {
    let config = RendezvousConfig {
        min_members: 4,
        max_members: 4,
        timeout: Duration::from_secs(25),
        last_call: Duration::ZERO,
    };
    let run = run_store(h.store());
    let g = run.current_generation().await.unwrap();
    // Every member's client connects before the restart.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(h.client().await);
    }
    let c_store = clients.pop().unwrap();
    let d_store = clients.pop().unwrap();
    let a = spawn_join(clients[0].clone(), g, member("node-a", 1), config.clone());
    let b = spawn_join(clients[1].clone(), g, member("node-b", 1), config.clone());
    eventually("two members have joined", || async {
        member_count(&run, g).await == 2
    })
    .await;

    h.etcd().await.kill();
    // Longer than a keep-alive period: the keepers and the waiting joins see etcd gone.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let down = h.store().get("/anything").await;
    assert!(
        matches!(&down, Err(e) if e.is_transient()),
        "a call while etcd is down fails transiently: {down:?}"
    );
    h.etcd().await.restart().await;

    let c = spawn_join(c_store, g, member("node-c", 1), config.clone());
    let d = spawn_join(d_store, g, member("node-d", 1), config);
    let mut tables = Vec::new();
    let mut keepers = Vec::new();
    for task in [a, b, c, d] {
        let (outcome, keeper) = task.await.unwrap();
        tables.push(joined(outcome));
        keepers.push(keeper);
    }
    assert!(tables.iter().all(|t| t == &tables[0]));
    assert_eq!(
        tables[0].node_names(),
        names(&["node-a", "node-b", "node-c", "node-d"])
    );
    // The leases of the members that joined before the restart survived it.
    for keeper in &keepers[..2] {
        assert!(
            !matches!(*keeper.status().borrow(), LeaseStatus::Lost(_)),
            "lease {} lost across the restart",
            keeper.lease()
        );
    }
    assert_eq!(run.members(g).await.unwrap().len(), 4);
}

/// etcd only: a watch carries on across an etcd restart without losing an event.
pub async fn etcd_watch_survives_restart(h: &Harness) {
    let s = h.store();
    let mut events = s.watch_prefix("/r/", None).await.unwrap();
    s.put("/r/a", b"1".to_vec(), None).await.unwrap();
    h.etcd().await.restart().await;
    // The first calls after the restart may still meet the old connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.put("/r/b", b"2".to_vec(), None).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    }
    let first = next_event(&mut events, Duration::from_secs(10)).await;
    let second = next_event(&mut events, Duration::from_secs(10)).await;
    assert_eq!(
        (first.kv.key.as_str(), second.kv.key.as_str()),
        ("/r/a", "/r/b")
    );
    assert!(second.revision > first.revision);
}
