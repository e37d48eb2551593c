//! The store's test suite: every case in `cases.rs` runs against the embedded store in process,
//! the embedded store served on loopback (through `RemoteStore`), and a real etcd started by the
//! harness (`tessera_store::testing`). etcd-only cases restart etcd. Each test is bounded in time.

mod cases;
mod harness;

use std::sync::Arc;
use std::time::Duration;

use tessera_store::{EmbeddedStore, Store, StoreError, connect, serve};
use tokio_stream::StreamExt;

/// One test per case, per backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        suite!(@backend embedded, Embedded, $($case),*);
        suite!(@backend served, Served, $($case),*);
        suite!(@backend etcd, Etcd, $($case),*);
    };
    (@backend $module:ident, $backend:ident, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = crate::harness::Harness::start(crate::harness::Backend::$backend).await;
                    crate::harness::bounded(crate::cases::$case(&h)).await;
                }
            )*
        }
    };
}

suite!(
    kv_basics,
    compare_and_swap,
    lease_expiry_deletes_keys,
    keep_alive_outlives_the_ttl,
    watch_sees_a_prefix_in_order,
    rendezvous_of_four,
    member_never_arrives,
    member_lease_expires_during_rendezvous,
    elastic_rendezvous_and_a_latecomer,
    racing_generation_bumps,
    superseded_while_waiting,
    progress_checkpoints_and_pruning,
);

mod etcd_only {
    use crate::harness::{Backend, Harness, bounded};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_restart_mid_rendezvous() {
        let h = Harness::start(Backend::Etcd).await;
        bounded(crate::cases::etcd_restart_mid_rendezvous(&h)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_watch_survives_restart() {
        let h = Harness::start(Backend::Etcd).await;
        bounded(crate::cases::etcd_watch_survives_restart(&h)).await;
    }
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn connect_gives_up_with_a_clear_message() {
    for (scheme, says) in [
        ("etcd", "is etcd running? (--store etcd://host:port)"),
        ("tessera", "(--store tessera://host:port)"),
    ] {
        let port = dead_port();
        let started = std::time::Instant::now();
        let e = connect(
            &format!("{scheme}://127.0.0.1:{port}"),
            Duration::from_secs(1),
        )
        .await
        .err()
        .expect("nothing listens there");
        let waited = started.elapsed();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
        let message = e.to_string();
        assert!(
            message.contains(&format!("127.0.0.1:{port} after")) && message.contains(says),
            "{message}"
        );
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
            "retried for about the timeout, not {waited:?}"
        );
    }
}

#[tokio::test]
async fn connect_reaches_a_served_store_and_etcd() {
    let embedded = EmbeddedStore::new();
    embedded.put("/k", b"v".to_vec(), None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = serve(Arc::new(embedded.clone()), listener).unwrap();
    let remote = connect(&handle.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(remote.get("/k").await.unwrap().unwrap().value, b"v");

    let etcd = tessera_store::testing::EtcdServer::start().await;
    let store = connect(
        &format!("etcd://{}", etcd.endpoint()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    store.put("/k", b"e".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"e");
}

#[tokio::test]
async fn a_stopped_server_ends_its_watches() {
    let embedded = EmbeddedStore::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = serve(Arc::new(embedded.clone()), listener).unwrap();
    let remote = connect(&handle.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut events = remote.watch_prefix("/", None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("the server stops promptly despite an open watch");
    let end = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the watch ends when the server stops");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    let after = remote.get("/k").await;
    assert!(
        matches!(&after, Err(e) if e.is_transient()),
        "calls fail transiently once the server is gone: {after:?}"
    );

    // Dropping the handle stops a server too.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = serve(Arc::new(embedded), listener).unwrap();
    let addr = handle.local_addr();
    connect(&handle.endpoint(), Duration::from_secs(5))
        .await
        .unwrap();
    drop(handle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped server still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
