//! The store on a three-member etcd cluster (Debian's etcd-server, three processes on
//! loopback): a client given every member's endpoint carries on when the leader is
//! SIGKILLed, and while quorum is lost (two of three members down) writes are refused, not
//! lost, and succeed again with every earlier write intact once quorum returns. Each test
//! prints its recovery time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_store::{Store, connect, testing::EtcdCluster};

/// Retries `put(key, value)` until it succeeds (each try bounded by 2 s); the time it took.
async fn put_until_it_succeeds(
    store: &Arc<dyn Store>,
    key: &str,
    value: &[u8],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), store.put(key, value.to_vec(), None))
                .await;
        if let Ok(Ok(_)) = attempt {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no write succeeded within {limit:?}: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `key`, retrying while a call lands on a dead member (a transient error, as
/// the store's callers retry) for 10 s at most.
async fn value(store: &Arc<dyn Store>, key: &str) -> Option<Vec<u8>> {
    let started = Instant::now();
    loop {
        match store.get(key).await {
            Ok(kv) => return kv.map(|kv| kv.value),
            Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("get {key}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_three_members_carries_on_when_the_leader_is_killed() {
    let mut cluster = EtcdCluster::start(3).await;
    let store = connect(&cluster.url(), Duration::from_secs(10))
        .await
        .unwrap();
    store.put("/t/before", b"1".to_vec(), None).await.unwrap();
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let killed = Instant::now();
    let took = put_until_it_succeeds(&store, "/t/after", b"2", Duration::from_secs(20)).await;
    eprintln!(
        "etcd leader m{leader} SIGKILLed: the next write succeeded after {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(value(&store, "/t/before").await.unwrap(), b"1");
    assert_eq!(value(&store, "/t/after").await.unwrap(), b"2");
    let next = cluster.leader().await;
    assert_ne!(next, leader, "a live member leads");
    assert!(killed.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_are_refused_and_with_it_back_nothing_is_lost() {
    let mut cluster = EtcdCluster::start(3).await;
    let store = connect(&cluster.url(), Duration::from_secs(10))
        .await
        .unwrap();
    for i in 0..10 {
        store
            .put(&format!("/t/{i}"), vec![i as u8], None)
            .await
            .unwrap();
    }
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // Two of three down: the survivor has no quorum.
    cluster.kill(leader);
    cluster.kill(others[0]);
    let refused = tokio::time::timeout(
        Duration::from_secs(3),
        store.put("/t/lost", b"x".to_vec(), None),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a write without quorum must not succeed: {refused:?}"
    );
    // Longer than an agent's heartbeat timeout in the tests (2 s), then quorum returns.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_member(leader);
    let returned = Instant::now();
    let took = put_until_it_succeeds(&store, "/t/back", b"y", Duration::from_secs(30)).await;
    eprintln!(
        "quorum lost for 3 s, then one member restarted: the next write succeeded after {:.2} s",
        took.as_secs_f64()
    );
    for i in 0..10 {
        assert_eq!(
            value(&store, &format!("/t/{i}")).await.unwrap(),
            vec![i as u8]
        );
    }
    assert_eq!(value(&store, "/t/back").await.unwrap(), b"y");
    // The refused write either never happened or was applied once quorum returned (etcd may
    // commit a proposal it accepted before losing quorum); it is never half-written.
    if let Some(lost) = value(&store, "/t/lost").await {
        assert_eq!(lost, b"x");
    }
    assert!(returned.elapsed() < Duration::from_secs(60));
    cluster.start_member(others[0]);
    cluster.wait_healthy(others[0]).await;
}
