//! `tessera-trainer`: trains from a TrainingRun manifest, standalone (no agent): one process,
//! or one rank of a gang that meets at rank 0's `--master-addr`.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tessera_api::{ResolvedRun, manifest::Override, records::Record};
use tessera_trainer::{
    backend::{
        cpu::CpuBackend,
        cuda::{CudaBackend, gpu_count},
    },
    collective::{
        Collective, Solo,
        device::CollectiveChoice,
        rendezvous::{StaticRendezvous, connect_ring, rendezvous},
    },
    family::Family,
    hook::{RunHook, Unsupervised},
    run::{RunOptions, RunSummary, train_ranked},
    supervised::AgentLink,
};

#[derive(Parser)]
#[command(
    name = "tessera-trainer",
    version,
    about = "Train a GPT model from a TrainingRun manifest in one process"
)]
struct Args {
    /// The TrainingRun YAML.
    #[arg(long, required_unless_present = "run")]
    config: Option<PathBuf>,
    /// The run as an agent resolved it (JSON; overrides applied, paths absolute), instead of
    /// --config, --set and --base-dir.
    #[arg(long, conflicts_with_all = ["config", "overrides", "base_dir"])]
    run: Option<PathBuf>,
    /// Override a spec field, e.g. --set training.steps=200 (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    overrides: Vec<Override>,
    /// Relative data and checkpoint paths are taken from here.
    #[arg(long, default_value = ".")]
    base_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Log a step line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// This process's rank in a data-parallel gang (0-based).
    #[arg(long, default_value_t = 0)]
    rank: u32,
    /// Ranks in the gang; with more than 1, every rank meets rank 0 at --master-addr.
    #[arg(long, default_value_t = 1)]
    world_size: u32,
    /// host:port where rank 0 listens for the other ranks (needed with --world-size > 1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Seconds to wait for every rank to arrive.
    #[arg(long, default_value_t = 60)]
    rendezvous_timeout: u64,
    /// Seconds a collective waits for a silent peer before failing.
    #[arg(long, default_value_t = 300)]
    collective_timeout: u64,
    /// The gang generation (ranks of another generation are refused at rendezvous).
    #[arg(long, default_value_t = 0)]
    generation: u64,
    /// Where to train: `cuda` (a GPU; this rank's local index picks which), `cpu`, or `auto`
    /// (a GPU when the NVIDIA driver reports one, else the CPU).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// What carries the gradients and parameters between ranks: `auto` (NCCL for a gang of
    /// GPUs when every rank can load it, else the host ring), `nccl` (even for one rank; an
    /// error without it), or `host` (through host memory and the TCP ring).
    #[arg(long, value_enum, default_value_t = Collectives::Auto)]
    collectives: Collectives,
    /// Append one JSON line per step (rank 0) to this file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Supervised mode: the agent's unix socket; rank, world and peers come from the agent.
    #[arg(long, conflicts_with_all = ["master_addr", "rank", "world_size"])]
    agent_socket: Option<PathBuf>,
    /// Supervised mode: this rank's index among its agent's ranks.
    #[arg(long, default_value_t = 0, requires = "agent_socket")]
    local_rank: u32,
    /// Supervised mode: the address peers reach this rank on (the node's IP).
    #[arg(long, default_value = "127.0.0.1", requires = "agent_socket")]
    listen_host: std::net::IpAddr,
    /// Supervised mode: seconds between heartbeats to the agent.
    #[arg(long, default_value_t = 1.0, requires = "agent_socket")]
    heartbeat_interval: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Collectives {
    Auto,
    Nccl,
    Host,
}

impl From<Collectives> for CollectiveChoice {
    fn from(c: Collectives) -> CollectiveChoice {
        match c {
            Collectives::Auto => CollectiveChoice::Auto,
            Collectives::Nccl => CollectiveChoice::Device,
            Collectives::Host => CollectiveChoice::Host,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    Auto,
    Cuda,
    Cpu,
}

/// Trains on the device asked for; `index` (the rank on this machine) picks the GPU.
fn train_on(
    device: Device,
    index: u32,
    run: &tessera_api::TrainingRun,
    options: &RunOptions,
    comm: Box<dyn Collective>,
    hook: &mut dyn RunHook,
) -> Result<RunSummary> {
    let gpus = match device {
        Device::Cpu => 0,
        Device::Auto | Device::Cuda => gpu_count(),
    };
    let (family, _) = Family::of(run, &options.base_dir)?;
    let unsupported = family.cuda_unsupported();
    if let (Device::Cuda, Some(why)) = (device, &unsupported) {
        bail!("--device cuda: {why}; change spec.model or use --device cpu");
    }
    if device == Device::Cpu || (device == Device::Auto && (gpus == 0 || unsupported.is_some())) {
        if device == Device::Auto {
            match &unsupported {
                Some(why) if gpus > 0 => tracing::info!("{why}: training on the CPU"),
                _ => tracing::info!(
                    "no GPU found (no NVIDIA driver or no device): training on the CPU"
                ),
            }
        }
        return Ok(train_ranked(
            CpuBackend::<f32>::new(),
            run,
            options,
            comm,
            hook,
        )?);
    }
    let ordinal = index as usize % gpus.max(1);
    let backend = CudaBackend::new(ordinal).context("--device cuda")?;
    tracing::info!(
        gpu = ordinal,
        name = backend.device_name(),
        arch = backend.arch(),
        "training on the GPU (bf16, fp32 master weights)"
    );
    Ok(train_ranked(backend, run, options, comm, hook)?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    tessera_api::report::exit_code(run(Args::parse()))
}

/// The run this process trains: handed down resolved (`--run`), or read and resolved here.
fn resolved_run(args: &Args) -> Result<ResolvedRun> {
    if let Some(file) = &args.run {
        return Ok(ResolvedRun::read_from(file)?);
    }
    let config = args
        .config
        .as_ref()
        .context("--config or --run is needed")?;
    let yaml = std::fs::read_to_string(config).with_context(|| {
        format!(
            "cannot read the manifest {}; check --config",
            config.display()
        )
    })?;
    let base_dir = std::path::absolute(&args.base_dir)
        .with_context(|| format!("--base-dir {}", args.base_dir.display()))?;
    ResolvedRun::from_manifest(&yaml, &args.overrides, &base_dir)
        .with_context(|| format!("{} is rejected", config.display()))
}

fn run(args: Args) -> Result<()> {
    let resolved = resolved_run(&args)?;
    let run = &resolved.run;
    let mut options = RunOptions {
        base_dir: resolved.base_dir.clone(),
        run_name: resolved.name.clone(),
        metrics_addr: args.metrics_addr,
        log_every: args.log_every,
        generation: args.generation,
        history: args.history.clone(),
        collectives: args.collectives.into(),
    };
    let rendezvous_timeout = Duration::from_secs(args.rendezvous_timeout);
    let collective_timeout = Duration::from_secs(args.collective_timeout);
    let summary = match &args.agent_socket {
        Some(socket) => {
            let mut link = AgentLink::connect(socket, rendezvous_timeout)?;
            let listener = TcpListener::bind((args.listen_host, 0)).with_context(|| {
                format!(
                    "cannot listen for peers on --listen-host {}",
                    args.listen_host
                )
            })?;
            let listen_address = listener.local_addr()?.to_string();
            let info = link.rendezvous(args.local_rank, args.generation, listen_address)?;
            let deadline = Instant::now() + rendezvous_timeout;
            let comm: Box<dyn Collective> = if info.world_size <= 1 {
                Box::new(Solo)
            } else {
                let peers: Vec<String> = info.peers.iter().map(|p| p.address.clone()).collect();
                Box::new(connect_ring(
                    info.rank,
                    &peers,
                    listener,
                    deadline,
                    collective_timeout,
                )?)
            };
            let interval = Duration::from_secs_f64(args.heartbeat_interval.clamp(0.05, 60.0));
            link.start_heartbeats(interval, (interval * 10).max(Duration::from_secs(10)));
            options.generation = info.generation;
            train_on(args.device, args.local_rank, run, &options, comm, &mut link)?
        }
        None => {
            let master_addr = match (&args.master_addr, args.world_size) {
                (Some(addr), _) => addr.clone(),
                (None, 1) => String::new(),
                (None, n) => {
                    bail!("--world-size {n} needs --master-addr host:port (rank 0's address)")
                }
            };
            let comm = rendezvous(&StaticRendezvous {
                master_addr,
                rank: args.rank,
                world_size: args.world_size,
                generation: args.generation,
                timeout: rendezvous_timeout,
                collective_timeout,
            })?;
            train_on(
                args.device,
                args.rank,
                run,
                &options,
                comm,
                &mut Unsupervised,
            )?
        }
    };
    println!("{}", summary.record().to_json());
    Ok(())
}
