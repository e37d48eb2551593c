//! One test body, three stores: the embedded store in process, the embedded store served on
//! loopback and reached through `RemoteStore`, and a real etcd.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_store::{EmbeddedStore, EtcdStore, RemoteStore, ServerHandle, Store, serve};

use tessera_store::testing::EtcdServer;

/// Every test body must finish within this.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// How long a test client may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Served,
    Etcd,
}

pub struct Harness {
    pub backend: Backend,
    store: Arc<dyn Store>,
    // Kept alive for the test's duration.
    served: Option<(EmbeddedStore, ServerHandle)>,
    etcd: Option<tokio::sync::Mutex<EtcdServer>>,
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        match backend {
            Backend::Embedded => Harness {
                backend,
                store: Arc::new(EmbeddedStore::new()),
                served: None,
                etcd: None,
            },
            Backend::Served => {
                let embedded = EmbeddedStore::new();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("binding a loopback port");
                let handle =
                    serve(Arc::new(embedded.clone()), listener).expect("serving the store");
                let addr = handle.local_addr().to_string();
                let client = RemoteStore::connect(&addr, CONNECT_TIMEOUT)
                    .await
                    .expect("connecting to the served store");
                Harness {
                    backend,
                    store: Arc::new(client),
                    served: Some((embedded, handle)),
                    etcd: None,
                }
            }
            Backend::Etcd => {
                let server = EtcdServer::start().await;
                let client = EtcdStore::connect(&[server.endpoint()], CONNECT_TIMEOUT)
                    .await
                    .expect("connecting to etcd");
                Harness {
                    backend,
                    store: Arc::new(client),
                    served: None,
                    etcd: Some(tokio::sync::Mutex::new(server)),
                }
            }
        }
    }

    /// The harness's own client.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// A client of its own, as a separate agent would have (the same store when embedded).
    pub async fn client(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Embedded => self.store.clone(),
            Backend::Served => {
                let (_, handle) = self.served.as_ref().expect("a served store");
                let addr = handle.local_addr().to_string();
                Arc::new(
                    RemoteStore::connect(&addr, CONNECT_TIMEOUT)
                        .await
                        .expect("connecting to the served store"),
                )
            }
            Backend::Etcd => {
                let endpoint = self.etcd().await.endpoint();
                Arc::new(
                    EtcdStore::connect(&[endpoint], CONNECT_TIMEOUT)
                        .await
                        .expect("connecting to etcd"),
                )
            }
        }
    }

    /// The etcd server, for tests that restart it.
    pub async fn etcd(&self) -> tokio::sync::MutexGuard<'_, EtcdServer> {
        self.etcd
            .as_ref()
            .expect("this test needs the etcd backend")
            .lock()
            .await
    }
}

/// Runs a test body with a time limit.
pub async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("the test did not finish within {TEST_LIMIT:?}");
    }
}
