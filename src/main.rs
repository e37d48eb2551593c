//! `tessera`: the command line. Each subcommand is a thin shell over a library crate.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Train transformer language models on GPU clusters, or on one machine",
    long_about = "Train transformer language models on GPU clusters, or on one machine.\n\n\
                  A TrainingRun manifest describes the model, data, optimizer, parallelism, \
                  checkpoints and fault tolerance. On Kubernetes, `kubectl apply` it after \
                  installing the CRD (`tessera crd`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the TrainingRun CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Check a TrainingRun manifest against every rule the cluster enforces.
    Validate {
        /// The TrainingRun YAML file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", tessera_api::crd::trainingrun_crd_yaml());
            Ok(())
        }
        Command::Validate { file } => {
            let run = read_training_run(&file)?;
            println!(
                "{}: TrainingRun {:?} is valid",
                file.display(),
                run.metadata.name.as_deref().unwrap_or("")
            );
            Ok(())
        }
    }
}

/// Reads and validates a manifest, naming the file in every error.
fn read_training_run(file: &std::path::Path) -> Result<tessera_api::TrainingRun> {
    let yaml = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the manifest {}: check the path (it is relative to the current directory)",
            file.display()
        )
    })?;
    tessera_api::parse_training_run(&yaml)
        .with_context(|| format!("{} is rejected", file.display()))
}
