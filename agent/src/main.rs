//! `tessera-agent`: one node's agent for one run (the entrypoint of a worker pod).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use tessera_agent::{
    AgentConfig, AgentEnd,
    gpu::{GpuHealth, GpuInventory, unhealthy_among},
    metrics::AgentMetrics,
    node::default_socket,
    ranks::RankLaunch,
    run_agent,
};
use tessera_api::{ResolvedRun, manifest::Override};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tessera-agent",
    version,
    about = "Run one node's part of a TrainingRun"
)]
struct Args {
    /// The TrainingRun YAML.
    #[arg(long)]
    config: PathBuf,
    /// Override a spec field, e.g. --set training.steps=200 (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<String>,
    /// This node's name in the run (unique; the pod or host name).
    #[arg(long, env = "TESSERA_NODE")]
    node: String,
    /// The coordination store: etcd://host:port[,host:port] or tessera://host:port.
    #[arg(long, env = "TESSERA_STORE")]
    store: String,
    /// The run's namespace (its name comes from the manifest).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Ranks on this node (default: one per healthy GPU, else parallelism.gpusPerNode CPU ranks).
    #[arg(long)]
    ranks: Option<u32>,
    /// The tessera-trainer binary (default: next to this one).
    #[arg(long)]
    trainer: Option<PathBuf>,
    /// Relative data and checkpoint paths are taken from here.
    #[arg(long, default_value = ".")]
    base_dir: PathBuf,
    /// Directory for the agent's unix socket.
    #[arg(long, default_value = "/tmp")]
    socket_dir: PathBuf,
    /// The address other nodes' ranks reach this node's ranks on.
    #[arg(long, default_value = "127.0.0.1")]
    listen_host: std::net::IpAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Local rank r serves its trainer metrics on 0.0.0.0:(PORT + r) (default: ranks serve none).
    #[arg(long, value_name = "PORT")]
    rank_metrics_port: Option<u16>,
    /// Seconds to wait for the store at start.
    #[arg(long, default_value_t = 60)]
    store_timeout: u64,
    /// Seconds the rendezvous waits for the gang.
    #[arg(long, default_value_t = 300)]
    rendezvous_timeout: u64,
    /// Seconds this agent's lease in the store lives without a refresh (how fast peers notice
    /// it is gone).
    #[arg(long, default_value_t = 5.0)]
    lease_ttl: f64,
    /// Elastic runs: seconds without a new member before the rank table is fixed.
    #[arg(long, default_value_t = 5.0)]
    last_call: f64,
    /// Write each rank's log to DIR/gen-G-rank-R.log instead of this process's stderr.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Rank 0 appends one JSON line per step to this file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Read the node's GPUs from this JSON file instead of NVML, re-read at every sample: a
    /// list of {"index": N, "healthy": true|false, "problem": "..."} (rigs without GPUs:
    /// tests and failure drills; the ranks still train on whatever device they find).
    #[arg(long, value_name = "FILE")]
    gpu_file: Option<PathBuf>,
    /// Seconds between samples of the GPUs (metrics and health).
    #[arg(long, default_value_t = 5.0)]
    gpu_sample_seconds: f64,
}

/// `0.0.0.0:(first + r)` for each local rank r, when rank metrics are asked for.
fn rank_metrics_addrs(first: Option<u16>, slots: u32) -> Result<Vec<SocketAddr>> {
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    (0..slots)
        .map(|r| {
            let port = u16::try_from(u32::from(first) + r).ok().with_context(|| {
                format!("--rank-metrics-port {first} leaves no port for local rank {r}")
            })?;
            Ok(SocketAddr::from(([0, 0, 0, 0], port)))
        })
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    tessera_api::report::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> Result<()> {
    let yaml = std::fs::read_to_string(&args.config).with_context(|| {
        format!(
            "cannot read the manifest {}; check --config",
            args.config.display()
        )
    })?;
    let parsed: Vec<Override> = args
        .overrides
        .iter()
        .map(|o| o.parse())
        .collect::<Result<_, _>>()?;
    // Read once here; the ranks are handed the resolved run, not the manifest.
    let base_dir = std::path::absolute(&args.base_dir)
        .with_context(|| format!("--base-dir {}", args.base_dir.display()))?;
    let resolved = ResolvedRun::from_manifest(&yaml, &parsed, &base_dir)
        .with_context(|| format!("{} is rejected", args.config.display()))?;
    let run = &resolved.run;
    let name = resolved.name.clone();
    let store =
        tessera_store::connect(&args.store, Duration::from_secs(args.store_timeout)).await?;
    let gpus = match &args.gpu_file {
        Some(file) => GpuInventory::from_file(file),
        None => GpuInventory::open(),
    };
    let healthy = gpus.healthy_indices();
    let slots = args.ranks.unwrap_or(if healthy.is_empty() {
        run.spec.parallelism.gpus_per_node
    } else {
        healthy.len() as u32
    });
    let trainer = match args.trainer {
        Some(t) => t,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("tessera-trainer"))
            .context("cannot locate tessera-trainer next to tessera-agent; pass --trainer")?,
    };
    let metrics = AgentMetrics::new(&args.namespace, &name, &args.node)?;
    metrics.gpus(&gpus.scan());
    // Every healthy GPU is in the pool: a spare replaces one that turns unhealthy.
    let (health_tx, gpu_health) = GpuHealth::channel();
    let every = Duration::from_secs_f64(args.gpu_sample_seconds.clamp(0.1, 3600.0));
    tokio::spawn(sample_gpus(
        gpus,
        metrics.clone(),
        healthy.clone(),
        every,
        health_tx,
    ));
    if let Some(addr) = args.metrics_addr {
        let bound = metrics.clone().serve(addr).await?;
        tracing::info!(addr = %bound, "serving /metrics");
    }
    let config = AgentConfig {
        namespace: args.namespace,
        name,
        node: args.node.clone(),
        slots,
        address: args.listen_host.to_string(),
        launch: RankLaunch {
            trainer,
            run_file: args
                .socket_dir
                .join(format!("tessera-{}-run.json", args.node)),
            socket: default_socket(&args.socket_dir, &args.node),
            listen_host: args.listen_host,
            heartbeat_interval: Duration::from_secs(1),
            gpus: healthy,
            metrics_addrs: rank_metrics_addrs(args.rank_metrics_port, slots)?,
            log_dir: args.log_dir.clone(),
            history: args.history.clone(),
        },
        lease_ttl: Duration::from_secs_f64(args.lease_ttl.clamp(1.0, 3600.0)),
        rendezvous_timeout: Duration::from_secs(args.rendezvous_timeout),
        last_call: Duration::from_secs_f64(args.last_call.clamp(0.0, 3600.0)),
        stop_grace: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(300),
        gpu_health,
        run: resolved,
    };
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        on_signal.cancel();
    });
    let report = run_agent(config, store, metrics, shutdown).await?;
    println!("{}", serde_json::to_string(&report)?);
    match report.end {
        AgentEnd::Succeeded | AgentEnd::Stopped { .. } => Ok(()),
        AgentEnd::Failed { reason } => anyhow::bail!("the run failed: {reason}"),
    }
}

/// Samples the node's GPUs into the metrics every `every` for the agent's life, and publishes
/// which GPUs of `pool` are unhealthy (or gone) to the agent, which fails the generation of a
/// rank whose GPU is among them and leaves that GPU out from then on.
async fn sample_gpus(
    gpus: GpuInventory,
    metrics: AgentMetrics,
    pool: Vec<u32>,
    every: Duration,
    health: tokio::sync::watch::Sender<std::collections::BTreeMap<u32, String>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let scan = gpus.scan();
        metrics.gpus(&scan);
        let unhealthy = unhealthy_among(&pool, &scan);
        health.send_if_modified(|seen| {
            // A GPU that was unhealthy stays out, even if it later reads healthy again.
            let mut changed = false;
            for (gpu, why) in &unhealthy {
                if !seen.contains_key(gpu) {
                    tracing::error!(gpu, problem = %why, "a GPU of this node is unhealthy");
                    seen.insert(*gpu, why.clone());
                    changed = true;
                }
            }
            changed
        });
    }
}
