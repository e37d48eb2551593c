//! Shared harness of the operator's integration tests: an in-process operator replica, nodes,
//! runs and waiting with a deadline (the test API server and kubelet are
//! `tessera_operator::testing`).

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tessera_api::TrainingRun;
use tessera_api::status::Phase;
use tessera_operator::OperatorConfig;
use tessera_operator::controller::ControllerSettings;
use tessera_operator::fixtures;
use tessera_operator::leader::LeaseTimings;
use tessera_operator::metrics::Metrics;
use tessera_operator::progress::StoreProgress;
use tessera_operator::replica::{Health, LeaderElectionSettings, ReplicaError, run_replica};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use tessera_operator::testing::{ApiServer, GPU, Kubelet};

/// Timings short enough for tests, long enough not to flap on a loaded 2-core machine.
pub fn test_config() -> OperatorConfig {
    OperatorConfig {
        stop_grace: Duration::from_secs(30),
        node_lost_grace: Duration::from_secs(2),
        terminating_timeout: Duration::from_secs(2),
        progress_resync: Duration::from_millis(500),
        pending_retry: Duration::from_millis(300),
        settle_retry: Duration::from_millis(200),
        ..OperatorConfig::default()
    }
}

pub fn test_lease_timings() -> LeaseTimings {
    LeaseTimings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

/// One operator replica running in this process.
pub struct Operator {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ReplicaError>>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
}

impl Operator {
    /// Starts a replica; with `identity`, it takes part in leader election.
    pub fn start(
        client: Client,
        progress: StoreProgress,
        config: OperatorConfig,
        identity: Option<&str>,
    ) -> Operator {
        let settings = ControllerSettings {
            config,
            namespace: None,
            concurrency: 16,
            instance: identity.unwrap_or("test-operator").to_string(),
        };
        let election = identity.map(|id| LeaderElectionSettings {
            lease_namespace: "default".into(),
            lease_name: "tessera-operator".into(),
            identity: id.to_string(),
            timings: test_lease_timings(),
        });
        let metrics = Metrics::new();
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_replica(
            client,
            settings,
            election,
            progress,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        Operator {
            shutdown,
            task,
            health,
            metrics,
        }
    }

    /// A lone replica with the operator's identity, test timings and no progress source.
    pub fn start_plain(server: &ApiServer) -> Operator {
        Operator::start(
            server.operator_client(),
            StoreProgress::in_memory(),
            test_config(),
            None,
        )
    }

    /// Drains and stops; returns how the replica ended.
    pub async fn stop(self) -> Result<(), ReplicaError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the replica stops within 10 s")
            .expect("the replica task did not panic")
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `limit` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test API server with `nodes` Ready nodes of `gpus` GPUs, an admin client and a kubelet.
pub async fn cluster(nodes: usize, gpus: u64) -> (ApiServer, Client, Kubelet) {
    let server = ApiServer::start().await;
    let client = server.client();
    let kubelet = Kubelet::new(client.clone());
    create_nodes(&client, nodes, gpus).await;
    (server, client, kubelet)
}

/// Creates `count` Ready nodes `node-0`... with `gpus` GPUs each.
pub async fn create_nodes(client: &Client, count: usize, gpus: u64) {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..count {
        nodes
            .create(
                &PostParams::default(),
                &fixtures::gpu_node(&format!("node-{i}"), GPU, gpus),
            )
            .await
            .expect("create a node");
    }
}

/// Marks a node NotReady (as the node controller does when its kubelet stops reporting).
pub async fn fail_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown",
        "reason": "NodeStatusUnknown",
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("mark the node NotReady");
}

pub fn runs(client: &Client, namespace: &str) -> Api<TrainingRun> {
    Api::namespaced(client.clone(), namespace)
}

/// Submits a run as a user would (the API server fills in uid, generation...).
pub async fn submit(client: &Client, run: TrainingRun) -> TrainingRun {
    let namespace = run
        .metadata
        .namespace
        .clone()
        .expect("fixtures set a namespace");
    runs(client, &namespace)
        .create(&PostParams::default(), &run)
        .await
        .expect("create the TrainingRun")
}

pub async fn phase(client: &Client, namespace: &str, name: &str) -> Option<Phase> {
    runs(client, namespace).get(name).await.ok()?.status?.phase
}

/// Waits until the run reaches `phase`, while the kubelet keeps working.
pub async fn wait_phase(
    client: &Client,
    kubelet: &Kubelet,
    namespace: &str,
    name: &str,
    want: Phase,
    limit: Duration,
) -> TrainingRun {
    wait_for(
        &format!("{namespace}/{name} to be {want:?}"),
        limit,
        || async {
            kubelet.tick().await;
            let run = runs(client, namespace).get(name).await.ok()?;
            (run.status.as_ref()?.phase == Some(want)).then_some(run)
        },
    )
    .await
}
