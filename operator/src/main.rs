//! `tessera-operator`: the TrainingRun controller as a process.
//!
//! Checks that the cluster is reachable and has the CRD (each failure says how to fix it),
//! then serves `/healthz`, `/readyz` and `/metrics` and runs the replica: leader election,
//! then the controller. The first SIGTERM (or Ctrl-C) drains; a second one aborts.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use kube::api::{Api, ListParams};
use kube::{Client, Config};
use tessera_api::TrainingRun;
use tessera_operator::config::{
    DEFAULT_AGENT_IMAGE, DEFAULT_GPU_RESOURCE, DEFAULT_MASTER_PORT, OperatorConfig,
};
use tessera_operator::controller::ControllerSettings;
use tessera_operator::leader::LeaseTimings;
use tessera_operator::metrics::Metrics;
use tessera_operator::replica::{Health, LeaderElectionSettings, run_replica};
use tokio_util::sync::CancellationToken;

/// How long the checks at start wait for the API server.
const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "tessera-operator",
    version,
    about = "The TrainingRun controller"
)]
struct Flags {
    /// Watch TrainingRuns in this namespace only (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// The coordination store, handed to every agent and read for progress:
    /// etcd://host:port[,host:port...] (or tessera://host:port, a store `tessera run` serves).
    #[arg(long, env = "TESSERA_STORE")]
    store: String,
    /// The extended resource workers request GPUs as.
    #[arg(long, default_value = DEFAULT_GPU_RESOURCE)]
    gpu_resource: String,
    /// The worker image for runs whose template names none.
    #[arg(long, default_value = DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// The rendezvous port of rank 0 (MASTER_PORT).
    #[arg(long, default_value_t = DEFAULT_MASTER_PORT)]
    master_port: u16,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect one leader among replicas with a Lease (turn off only with a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The namespace of the leader Lease (default: $POD_NAMESPACE, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "tessera-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: $HOSTNAME).
    #[arg(long)]
    identity: Option<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Termination grace period of workers: time for agents to checkpoint on SIGTERM.
    #[arg(long, default_value_t = 300)]
    stop_grace_seconds: u64,
    /// A worker whose node is NotReady this long counts as lost.
    #[arg(long, default_value_t = 60)]
    node_lost_grace_seconds: u64,
    /// A worker Terminating this long past its deadline on a dead node is force-deleted.
    #[arg(long, default_value_t = 300)]
    terminating_timeout_seconds: u64,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    tessera_api::report::exit_code(
        runtime
            .block_on(run(flags))
            .map_err(anyhow::Error::into_boxed_dyn_error),
    )
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let client = connect().await?;
    check_crd(&client).await?;

    let config = OperatorConfig {
        gpu_resource: flags.gpu_resource,
        agent_image: flags.agent_image,
        store: flags.store.clone(),
        master_port: flags.master_port,
        stop_grace: Duration::from_secs(flags.stop_grace_seconds),
        node_lost_grace: Duration::from_secs(flags.node_lost_grace_seconds),
        terminating_timeout: Duration::from_secs(flags.terminating_timeout_seconds),
        ..OperatorConfig::default()
    };
    let progress = tessera_operator::progress::StoreProgress::connect(&flags.store)
        .await
        .with_context(|| {
            format!(
                "cannot use the coordination store {} (--store)",
                flags.store
            )
        })?;
    let identity = flags
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tessera-operator-{}", std::process::id()));
    let election = flags.leader_election.then(|| LeaderElectionSettings {
        lease_namespace: flags
            .lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_string()),
        lease_name: flags.lease_name,
        identity: identity.clone(),
        timings: LeaseTimings::default(),
    });
    let settings = ControllerSettings {
        config,
        namespace: flags.namespace,
        concurrency: flags.concurrency.max(1),
        instance: identity,
    };

    let metrics = Metrics::new();
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let listener = tessera_operator::http::bind(flags.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "cannot serve metrics on {} (--metrics-addr)",
                flags.metrics_addr
            )
        })?;
    tokio::spawn(on_signals(shutdown.clone()));
    let server = tokio::spawn(tessera_operator::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let result = run_replica(
        client,
        settings,
        election,
        progress,
        metrics,
        health,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = server.await;
    result.map_err(Into::into)
}

/// A client from the kubeconfig or the in-cluster service account, checked by asking the API
/// server its version.
async fn connect() -> anyhow::Result<Client> {
    let config = Config::infer().await.map_err(|e| {
        anyhow!(
            "cannot find a Kubernetes cluster to talk to ({e}).\n---> HINT: run the operator \
             inside the cluster, or point KUBECONFIG at a kubeconfig file"
        )
    })?;
    let url = config.cluster_url.clone();
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    match tokio::time::timeout(API_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(version)) => {
            tracing::info!(%url, version = %version.git_version, "connected to the API server");
            Ok(client)
        }
        Ok(Err(e)) => bail!(
            "cannot reach the Kubernetes API server at {url}: {e}\n---> HINT: check that the \
             cluster is up and that KUBECONFIG (or the in-cluster service account) points at it"
        ),
        Err(_) => bail!(
            "the Kubernetes API server at {url} did not answer within {}s\n---> HINT: check \
             that the cluster is up and reachable from here",
            API_TIMEOUT.as_secs()
        ),
    }
}

/// Fails with how to install the CRD when the cluster does not know TrainingRuns.
async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let runs: Api<TrainingRun> = Api::all(client.clone());
    match tokio::time::timeout(API_TIMEOUT, runs.list(&ListParams::default().limit(1))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => bail!(
            "the TrainingRun CRD (trainingruns.tessera.dev) is not installed in this cluster\n\
             ---> HINT: kubectl apply -f crds/trainingrun.yaml   (or: tessera crd | kubectl apply -f -)"
        ),
        Ok(Err(e)) => Err(e).context("cannot list TrainingRuns (check the operator's RBAC)"),
        Err(_) => bail!(
            "listing TrainingRuns timed out after {}s",
            API_TIMEOUT.as_secs()
        ),
    }
}

/// First SIGTERM or Ctrl-C: drain. Second: abort.
async fn on_signals(shutdown: CancellationToken) {
    signal().await;
    tracing::info!("shutting down: finishing reconciles in flight (signal again to abort)");
    shutdown.cancel();
    signal().await;
    eprintln!("error: aborted by a second signal");
    std::process::exit(130);
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
