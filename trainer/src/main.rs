//! `tessera-trainer`: trains one process from a TrainingRun manifest, standalone (no agent).
//! The agent's supervised mode is added by the agent work.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use tessera_api::manifest::{Override, parse_training_run_with};
use tessera_trainer::{
    backend::cpu::CpuBackend,
    run::{RunOptions, train},
};

#[derive(Parser)]
#[command(
    name = "tessera-trainer",
    version,
    about = "Train a GPT model from a TrainingRun manifest in one process"
)]
struct Args {
    /// The TrainingRun YAML.
    #[arg(long)]
    config: PathBuf,
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

fn run(args: Args) -> Result<()> {
    let yaml = std::fs::read_to_string(&args.config).with_context(|| {
        format!(
            "cannot read the manifest {}; check --config",
            args.config.display()
        )
    })?;
    let run = parse_training_run_with(&yaml, &args.overrides)
        .with_context(|| format!("{} is rejected", args.config.display()))?;
    let options = RunOptions {
        base_dir: args.base_dir,
        run_name: run.metadata.name.clone().unwrap_or_default(),
        metrics_addr: args.metrics_addr,
        log_every: args.log_every,
    };
    let summary = train(CpuBackend::<f32>::new(), &run, &options)?;
    println!("{}", serde_json::to_string(&summary_json(&summary))?);
    Ok(())
}

fn summary_json(s: &tessera_trainer::run::RunSummary) -> serde_json::Value {
    serde_json::json!({
        "steps": s.steps,
        "resumedFrom": s.resumed_from,
        "finalLoss": s.final_loss,
        "finalValLoss": s.final_val_loss,
        "tokensPerSecond": s.tokens_per_second,
        "mfu": s.mfu,
        "wallSeconds": s.wall_seconds,
        "checkpointDir": s.checkpoint_dir,
        "weightsSha256": s.weights_sha256,
    })
}
