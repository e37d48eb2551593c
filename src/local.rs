//! `tessera run`: a whole TrainingRun on this machine. The manifest is validated with the
//! cluster's rules before anything starts; then the embedded coordination store (served on
//! loopback so `tessera status` can read it) or a given etcd, one in-process node agent per
//! local node, and the trainer ranks as child processes. Ctrl-C asks the ranks to checkpoint
//! and stop; running the same command again resumes.
//!
//! ```text
//! OUT/ store.json (while live)   history.jsonl (rank 0, per step)   logs/gen-G-rank-R.log
//!      metrics.json (while live, with --metrics-addr: the agents' and ranks' endpoints)
//!      checkpoints/step-…/      summary.json, loss.png, loss.svg (at the end)
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tessera_agent::{
    AgentConfig, AgentEnd, AgentReport, gpu::GpuHealth, metrics::AgentMetrics, ranks::RankLaunch,
    run_agent,
};
use tessera_api::{
    ResolvedRun, TrainingRun,
    manifest::{Override, parse_training_run_with},
    records::{AgentProgress, Failure, Record, RunPhase, finite},
    store_keys::RunKeys,
};
use tessera_store::{EmbeddedStore, RunStore, Store};

use crate::{
    endpoints::{self, MetricsRecord, RankEndpoint},
    history::History,
    plot,
    progress::Display,
    status::StoreRecord,
};
use tokio_util::sync::CancellationToken;

/// The namespace local runs live in, in the store.
pub const LOCAL_NAMESPACE: &str = "local";

/// What `tessera run` was asked.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalRun {
    /// The TrainingRun YAML file.
    pub file: PathBuf,
    /// Local nodes (agents) to run; default parallelism.nodes.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Override a spec field, e.g. --set training.steps=200 (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub overrides: Vec<String>,
    /// Output directory (checkpoints, logs, history, summary, loss curve); default
    /// ./runs/NAME.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this coordination store instead of the embedded one (etcd://host:port).
    #[arg(long)]
    pub store: Option<String>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Serve the agents' Prometheus metrics at http://ADDR/metrics, and each trainer rank's
    /// on a free loopback port; OUT/metrics.json names them all.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// The run's summary (printed, and written to `OUT/summary.json`).
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct LocalSummary {
    pub name: String,
    /// Succeeded, Stopped or Failed.
    pub phase: RunPhase,
    pub message: String,
    pub steps: Option<u64>,
    /// The checkpoint step the last generation resumed from (the agent's choice).
    pub resumed_from: Option<u64>,
    pub final_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub tokens_per_second: Option<f64>,
    /// Targets the loss counted over the run (rank 0's summary).
    #[serde(default)]
    pub trained_tokens: Option<u64>,
    /// Rank 0's trainable and total parameters and optimizer-state bytes.
    pub memory: Option<(u64, u64, u64)>,
    pub mfu: Option<f64>,
    pub wall_seconds: f64,
    pub restarts: usize,
    pub failures: Vec<Failure>,
    pub checkpoint_dir: PathBuf,
    pub weights_sha256: Option<String>,
    pub nodes: u32,
    pub ranks_per_node: u32,
    pub out: PathBuf,
    /// The loss curve (absent when no step ran).
    pub loss_svg: Option<PathBuf>,
    pub loss_png: Option<PathBuf>,
}

/// Runs the manifest to its end (or a clean stop); returns whether it succeeded or stopped.
pub async fn run_local(args: LocalRun) -> Result<LocalSummary> {
    let started = Instant::now();
    let prepared = prepare(&args)?;
    let Prepared {
        name,
        resolved,
        out,
        ..
    } = &prepared;
    let run = &resolved.run;
    let (nodes, slots) = (
        run.spec.parallelism.nodes,
        run.spec.parallelism.gpus_per_node,
    );
    let (store, _server, run_store) = start_store(&args, name, out).await?;

    // === the agents ===
    // Unix socket paths are short-lived and must be short: a private temp dir.
    let sockets = tempfile::Builder::new().prefix("tessera-").tempdir()?;
    let shutdown = CancellationToken::new();
    let rank_metrics = match args.metrics_addr {
        Some(_) => endpoints::free_rank_addrs(nodes, slots)?,
        None => vec![Vec::new(); nodes as usize],
    };
    let (agents, agent_metrics) =
        start_agents(&prepared, &store, sockets.path(), &rank_metrics, &shutdown)?;
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr, agent_metrics, &rank_metrics, out).await?;
    }
    stop_on_signals(shutdown.clone());

    // === progress ===
    let watching = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        run_store.clone(),
        run.spec.training.steps.unwrap_or(0),
        args.json,
        watching.clone(),
    ));
    let mut reports: Vec<AgentReport> = Vec::new();
    let mut errors = Vec::new();
    for agent in agents {
        match agent.await {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => {
                errors.push(e.to_string());
                shutdown.cancel();
            }
            Err(e) => errors.push(format!("an agent task failed: {e}")),
        }
    }
    watching.cancel();
    let _ = progress.await;
    let _ = std::fs::remove_file(out.join(crate::status::STORE_FILE));
    let _ = std::fs::remove_file(out.join(endpoints::METRICS_FILE));
    // The loss curve, restarts marked, next to the checkpoints.
    let history = History::read(&out.join("history.jsonl")).unwrap_or_default();
    let pictures = if history.points.is_empty() {
        None
    } else {
        Some(plot::write_files(&history, name, out)?)
    };

    let summary = summarize(
        name,
        &reports,
        &errors,
        started.elapsed().as_secs_f64(),
        resolved.checkpoint_root(),
        nodes,
        slots,
        out,
        pictures,
    );
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// A local run ready to start: resolved, its output directory made, its model and data
/// checked (and text tokenized into the cache).
struct Prepared {
    name: String,
    resolved: ResolvedRun,
    out: PathBuf,
}

/// Parses, validates and resolves the manifest (checkpoints under OUT unless absolute), then
/// refuses, before anything starts, what would fail every rank the same way: starting weights
/// that do not fit the model, missing data, data tokenized with a larger vocabulary than the
/// model's. Text is tokenized here, once, into the cache beside the checkpoints.
fn prepare(args: &LocalRun) -> Result<Prepared> {
    let yaml = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read the manifest {}", args.file.display()))?;
    let rejected = || format!("{} is rejected", args.file.display());
    let mut overrides = args.overrides.clone();
    if let Some(n) = args.nodes {
        overrides.push(format!("parallelism.nodes={n}"));
    }
    let parsed: Vec<Override> = overrides
        .iter()
        .map(|o| o.parse())
        .collect::<Result<_, _>>()?;
    // The same rules as the CRD, before anything starts.
    let mut run: TrainingRun = parse_training_run_with(&yaml, &parsed).with_context(rejected)?;
    let name = run
        .metadata
        .name
        .clone()
        .context("metadata.name is missing; give the run a name")?;
    // Relative paths in the manifest are taken from the current directory, as
    // `tessera-trainer` takes them from its --base-dir (default: here).
    let base_dir = std::env::current_dir()?;
    let out = absolute(
        &args
            .out
            .clone()
            .unwrap_or_else(|| base_dir.join("runs").join(&name)),
    )?;
    std::fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    // Checkpoints go to OUT unless the manifest gives an absolute path.
    if !Path::new(&run.spec.checkpoint.path).is_absolute() {
        run.spec.checkpoint.path = out.join("checkpoints").to_string_lossy().into_owned();
    }
    // Resolved once, here: the agents and their ranks are handed this, not the manifest.
    let resolved = ResolvedRun::resolve(run, &base_dir).with_context(rejected)?;
    let run = &resolved.run;
    // Checked from the safetensors headers.
    let (family, _) = tessera_trainer::family::Family::of(run, &base_dir).with_context(rejected)?;
    family.check_weights().with_context(rejected)?;
    let data = tessera_trainer::data::cache::resolve_run_data(
        &run.spec.data,
        &base_dir,
        &resolved.checkpoint_root(),
        resolved.model.context,
    )
    .with_context(|| {
        format!(
            "{}: spec.data names no usable data (paths are taken from {})",
            args.file.display(),
            base_dir.display()
        )
    })?;
    for shards in std::iter::once(&data.train).chain(&data.validation) {
        tessera_trainer::run::open_for(&family, shards).with_context(rejected)?;
    }
    for entry in &data.tokenized {
        let r = &entry.record;
        let what = if entry.reused { "cached" } else { "tokenized" };
        let files = match r.inputs.len() {
            1 => "1 file".to_string(),
            n => format!("{n} files"),
        };
        eprintln!(
            "data: {files} {what} with {}: {} training + {} validation tokens in {}",
            r.tokenizer.name(),
            r.train_tokens,
            r.val_tokens,
            entry.dir.display()
        );
        if let Some(x) = &r.examples {
            eprintln!(
                "data: {} examples packed into {} + {} rows of {} tokens ({} truncated, {} dropped as longer than the context); the loss counts {} training + {} validation targets",
                x.examples,
                x.train_rows,
                x.val_rows,
                x.row_len,
                x.truncated,
                x.dropped,
                x.train_counted,
                x.val_counted
            );
        }
    }
    for (field, spec) in [
        ("spec.data.train", Some(&data.train)),
        ("spec.data.validation", data.validation.as_ref()),
    ] {
        if let Some(spec) = spec {
            tessera_trainer::data::loader::resolve_shard_spec(spec).with_context(|| {
                format!("{field}: {spec} has no shards; prepare them with `tessera data prepare`, or name text files")
            })?;
        }
    }
    Ok(Prepared {
        name,
        resolved,
        out,
    })
}

/// The coordination store: `--store`, or an embedded one served on loopback. Its endpoint is
/// recorded in OUT for `tessera status`, and what a previous run against it left is cleared.
async fn start_store(
    args: &LocalRun,
    name: &str,
    out: &Path,
) -> Result<(
    Arc<dyn Store>,
    Option<tessera_store::ServerHandle>,
    RunStore,
)> {
    let (store, server): (Arc<dyn Store>, Option<tessera_store::ServerHandle>) = match &args.store {
        Some(endpoint) => (
            tessera_store::connect(endpoint, Duration::from_secs(30)).await?,
            None,
        ),
        None => {
            let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = tessera_store::serve(embedded.clone(), listener)?;
            (embedded, Some(server))
        }
    };
    let endpoint = match (&args.store, &server) {
        (Some(e), _) => e.clone(),
        (None, Some(server)) => server.endpoint(),
        (None, None) => String::new(),
    };
    let record = StoreRecord {
        endpoint,
        namespace: LOCAL_NAMESPACE.into(),
        name: name.to_string(),
    };
    record.write(out)?;
    let keys = RunKeys::new(LOCAL_NAMESPACE, name);
    // A previous local run against the same etcd must not leave its generation behind.
    store.delete_prefix(keys.prefix()).await?;
    let run_store = RunStore::new(store.clone(), keys);
    Ok((store, server, run_store))
}

type AgentTask = tokio::task::JoinHandle<Result<AgentReport, tessera_agent::node::AgentError>>;

/// One in-process agent per local node, each handed the resolved run. An agent that fails
/// stops the others: they would wait for it at the rendezvous.
fn start_agents(
    prepared: &Prepared,
    store: &Arc<dyn Store>,
    sockets: &Path,
    rank_metrics: &[Vec<std::net::SocketAddr>],
    shutdown: &CancellationToken,
) -> Result<(Vec<AgentTask>, Vec<AgentMetrics>)> {
    let Prepared {
        name,
        resolved,
        out,
        ..
    } = prepared;
    let parallelism = &resolved.run.spec.parallelism;
    let trainer = sibling_binary("tessera-trainer")?;
    let mut agents = Vec::new();
    let mut agent_metrics = Vec::new();
    for (i, metrics_addrs) in (0..parallelism.nodes).zip(rank_metrics.iter().cloned()) {
        let node = local_node(i);
        let config = AgentConfig {
            run: resolved.clone(),
            namespace: LOCAL_NAMESPACE.into(),
            name: name.clone(),
            node: node.clone(),
            slots: parallelism.gpus_per_node,
            address: "127.0.0.1".into(),
            launch: RankLaunch {
                trainer: trainer.clone(),
                run_file: sockets.join(format!("{node}-run.json")),
                socket: sockets.join(format!("{node}.sock")),
                listen_host: tessera_agent::node::loopback(),
                heartbeat_interval: Duration::from_millis(500),
                gpus: Vec::new(),
                metrics_addrs,
                log_dir: Some(out.join("logs")),
                history: Some(out.join("history.jsonl")),
            },
            lease_ttl: Duration::from_secs(2),
            rendezvous_timeout: Duration::from_secs(60),
            last_call: Duration::from_secs(2),
            stop_grace: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(300),
            gpu_health: GpuHealth::quiet(),
        };
        let metrics = AgentMetrics::new(LOCAL_NAMESPACE, name, &node)?;
        agent_metrics.push(metrics.clone());
        let (store, shutdown) = (store.clone(), shutdown.clone());
        agents.push(tokio::spawn(async move {
            let report = run_agent(config, store, metrics, shutdown.clone()).await;
            if report.is_err() {
                shutdown.cancel();
            }
            report
        }));
    }
    Ok((agents, agent_metrics))
}

/// Ctrl-C or SIGTERM: the ranks checkpoint, then exit; a second Ctrl-C aborts.
fn stop_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return,
            };
        let asked = tokio::select! {
            c = tokio::signal::ctrl_c() => c.is_ok(),
            t = term.recv() => t.is_some(),
        };
        if asked {
            eprintln!("\nstopping: the ranks checkpoint, then exit (Ctrl-C again to abort)");
            shutdown.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}

/// Serves the agents' merged metrics on `addr` and writes `OUT/metrics.json` naming it and the
/// ranks' endpoints.
async fn serve_metrics(
    addr: SocketAddr,
    agents: Vec<AgentMetrics>,
    ranks: &[Vec<SocketAddr>],
    out: &Path,
) -> Result<()> {
    let bound = tessera_agent::metrics::serve_all(agents, addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics-addr)"))?;
    let ranks = ranks
        .iter()
        .enumerate()
        .flat_map(|(node, addrs)| {
            addrs
                .iter()
                .enumerate()
                .map(move |(local_rank, addr)| RankEndpoint {
                    node: local_node(node as u32),
                    local_rank: local_rank as u32,
                    addr: *addr,
                })
        })
        .collect();
    MetricsRecord {
        agents: bound,
        ranks,
    }
    .write(out)?;
    eprintln!(
        "metrics: http://{bound}/metrics (agents); the ranks' endpoints are in {}",
        out.join(endpoints::METRICS_FILE).display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    name: &str,
    reports: &[AgentReport],
    errors: &[String],
    wall_seconds: f64,
    checkpoint_dir: PathBuf,
    nodes: u32,
    ranks_per_node: u32,
    out: &Path,
    pictures: Option<(PathBuf, PathBuf)>,
) -> LocalSummary {
    let lead = reports
        .iter()
        .find(|r| r.node == "local-0")
        .or(reports.first());
    let rank0 = lead.and_then(|r| r.rank_summary.as_ref());
    let (phase, message) = if !errors.is_empty() {
        (RunPhase::Failed, errors.join("; "))
    } else if let Some(reason) = reports.iter().find_map(|r| match &r.end {
        AgentEnd::Failed { reason } => Some(reason),
        _ => None,
    }) {
        (RunPhase::Failed, reason.clone())
    } else if reports.iter().any(|r| r.end.phase() == RunPhase::Stopped) {
        (
            RunPhase::Stopped,
            "stopped after a checkpoint; run the same command again to resume".to_string(),
        )
    } else {
        (RunPhase::Succeeded, String::new())
    };
    // Each failure is recorded by the agent that detected it.
    let mut failures: Vec<Failure> = reports.iter().flat_map(|r| r.failures.clone()).collect();
    failures.sort_by_key(|f| f.generation);
    failures.dedup_by_key(|f| f.generation);
    LocalSummary {
        name: name.to_string(),
        phase,
        message,
        steps: rank0.map(|s| s.steps),
        resumed_from: rank0.and_then(|s| s.resumed_from),
        final_loss: rank0.and_then(|s| s.final_loss),
        final_val_loss: rank0.and_then(|s| s.final_val_loss),
        tokens_per_second: rank0.and_then(|s| finite(s.tokens_per_second)),
        trained_tokens: rank0.map(|s| s.trained_tokens),
        memory: rank0.map(|s| {
            (
                s.trainable_parameters,
                s.total_parameters,
                s.optimizer_state_bytes,
            )
        }),
        mfu: rank0.and_then(|s| finite(s.mfu)),
        wall_seconds,
        restarts: reports
            .iter()
            .map(|r| r.generation.saturating_sub(1) as usize)
            .max()
            .unwrap_or(0),
        failures,
        checkpoint_dir,
        weights_sha256: rank0
            .map(|s| s.weights_sha256.clone())
            .filter(|h| !h.is_empty()),
        nodes,
        ranks_per_node,
        out: out.to_path_buf(),
        loss_svg: pictures.as_ref().map(|p| p.0.clone()),
        loss_png: pictures.map(|p| p.1),
    }
}

/// Shows the run's progress from the store until `done`: a bar on a terminal, plain lines
/// otherwise; on stderr when stdout carries the JSON summary.
async fn show_progress(run: RunStore, total: u64, json: bool, done: CancellationToken) {
    use std::io::{IsTerminal, Write};
    let terminal = if json {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let mut display = Display::new(total, terminal);
    let emit = |text: String| {
        if text.is_empty() {
            return;
        }
        if json {
            let _ = std::io::stderr().write_all(text.as_bytes());
        } else {
            let mut out = std::io::stdout();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    };
    let mut last_seen: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            _ = done.cancelled() => {
                emit(display.finish(Instant::now()));
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let now = Instant::now();
        match run.progress().await {
            Ok(Some(bytes)) if last_seen.as_ref() != Some(&bytes) => {
                if let Ok(p) = AgentProgress::from_json(&bytes) {
                    emit(display.update(&p, now));
                }
                last_seen = Some(bytes);
            }
            _ => emit(display.tick(now)),
        }
    }
}

/// The name of local node `i` (its agent's `node` label).
fn local_node(i: u32) -> String {
    format!("local-{i}")
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

/// A binary installed next to this one.
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .context("cannot tell where the tessera binary lives")?;
    let candidate = dir.join(name);
    if !candidate.is_file() {
        bail!(
            "{name} is not installed next to {} (expected {}); build it with `cargo build --release -p tessera-trainer`",
            exe.display(),
            candidate.display()
        );
    }
    Ok(candidate)
}
