//! `tessera`: the command line. Each subcommand is a thin shell over a library crate.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tessera::local;
use tessera_api::spec::{DataFormat, Overlong, Tokenizer, TrainOn};
use tessera_trainer::{
    backend::cpu::CpuBackend,
    checkpoint::verify_checkpoint,
    data::prepare::{PrepareOptions, prepare},
    sample::{SampleOptions, evaluate, load_model, open_checkpoint, sample},
};

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
    /// Run a TrainingRun on this machine: the embedded store, one agent per local node and
    /// the trainer ranks as child processes. Ctrl-C checkpoints and stops; run it again to
    /// resume.
    Run(local::LocalRun),
    /// Show a local run's state from its output directory: live from its coordination store,
    /// else its final summary, else its checkpoints.
    Status {
        /// The run's output directory (`tessera run --out DIR`).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the raw JSON (the published progress, or the summary).
        #[arg(long)]
        json: bool,
    },
    /// Print the TrainingRun CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Check a TrainingRun manifest against every rule the cluster enforces.
    Validate {
        /// The TrainingRun YAML file.
        file: PathBuf,
    },
    /// Prepare training data.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Inspect, verify and export checkpoints.
    Ckpt {
        #[command(subcommand)]
        command: CkptCommand,
    },
    /// Generate text from a checkpoint or a Hugging Face model directory.
    Sample {
        /// A checkpoint directory, a checkpoint root (its newest valid checkpoint is used), or
        /// a Hugging Face model directory (config.json, safetensors, tokenizer.json).
        model: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// 0 always picks the most likely token.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample among the k most likely tokens; 0 for all.
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the prompt's and the continuation's token ids and text as JSON.
        #[arg(long)]
        json: bool,
        /// Treat the prompt as a user's message: render it with the model's chat template and
        /// its generation prompt, and stop at the end of the assistant's turn.
        #[arg(long)]
        chat: bool,
    },
    /// Score a checkpoint or a Hugging Face model directory on token shards: the mean
    /// next-token loss and perplexity over consecutive non-overlapping windows.
    Eval {
        /// A checkpoint directory or root, or a Hugging Face model directory.
        model: PathBuf,
        /// Token shards (a file, a directory of *.bin, or a glob), read from the start in order.
        #[arg(long)]
        data: String,
        /// Predictions per window; default the model's context, capped by the data.
        #[arg(long)]
        context: Option<usize>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenize text, JSONL, instruction or chat files into train and validation token shards.
    Prepare {
        /// gpt2 (GPT-2 BPE, 50257 tokens), bytes (256 tokens), or a Hugging Face tokenizer: a
        /// model directory holding tokenizer.json, or the file (a path has a '/' or ends in
        /// .json, e.g. ./llama).
        #[arg(long, value_parser = parse_tokenizer)]
        tokenizer: Tokenizer,
        /// Output directory for train-*.bin, val-*.bin and dataset.json.
        #[arg(long)]
        out: PathBuf,
        /// Fraction of each input (its end) kept for validation, in [0, 1).
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// text, jsonl (a `text` field), instruction (`prompt` + `completion`) or chat
        /// (`messages`); detected from the files when not given.
        #[arg(long, value_parser = parse_format)]
        format: Option<DataFormat>,
        /// Instruction and chat data: the training context the examples are packed for
        /// (rows of context + 1 tokens).
        #[arg(long)]
        context: Option<u32>,
        /// Chat data: a Jinja chat template file, in place of the tokenizer directory's.
        #[arg(long)]
        chat_template: Option<PathBuf>,
        /// Instruction and chat data: the loss counts `completions` (default) or `all` tokens.
        #[arg(long, value_parser = parse_train_on, default_value = "completions")]
        train_on: TrainOn,
        /// Instruction and chat data: an example longer than the context is `truncate`d
        /// (default) or `drop`ped.
        #[arg(long, value_parser = parse_overlong, default_value = "truncate")]
        overlong: Overlong,
        /// Text or JSONL files, or directories (read recursively).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

/// A manifest enum spelt as in YAML (`chat`, `completions`, `drop`).
fn parse_named<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}
fn parse_format(s: &str) -> Result<DataFormat, String> {
    parse_named(s)
}
fn parse_train_on(s: &str) -> Result<TrainOn, String> {
    parse_named(s)
}
fn parse_overlong(s: &str) -> Result<Overlong, String> {
    parse_named(s)
}

#[derive(Subcommand)]
enum CkptCommand {
    /// List the checkpoints under a checkpoint root.
    Ls { root: PathBuf },
    /// Verify a checkpoint directory: commit marker, sizes and checksums.
    Verify { dir: PathBuf },
    /// Export a checkpoint's weights.
    Export {
        /// A checkpoint directory, or a root (its newest valid checkpoint).
        checkpoint: PathBuf,
        /// Write a Hugging Face model directory (config.json, safetensors, tokenizer files,
        /// generation_config.json) that transformers and vLLM load.
        #[arg(long, required_unless_present = "peft", conflicts_with = "peft")]
        hf: bool,
        /// With --hf, for a LoRA checkpoint: the base model with the adapters merged in.
        #[arg(long, requires = "hf")]
        merged: bool,
        /// Write a LoRA checkpoint's adapters as a PEFT adapter directory
        /// (adapter_config.json, adapter_model.safetensors) that
        /// `PeftModel.from_pretrained(base, DIR)` loads.
        #[arg(long)]
        peft: bool,
        /// The output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The weights' dtype: f32 or bf16 (Llama-family models; GPT-2 exports f32).
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: tessera_api::llama_config::WeightDtype,
        /// Split the weights into shards of at most this many bytes (with
        /// model.safetensors.index.json) when they are larger; transformers' default, 5 GB.
        #[arg(long, default_value_t = tessera_trainer::llama::weights::DEFAULT_MAX_SHARD_BYTES)]
        max_shard_bytes: u64,
    },
}

/// The manifest's rule for `spec.data.tokenizer` (a name, or a path with a `/` or a `.json`
/// ending); whether the path holds a tokenizer is checked when `prepare` loads it.
fn parse_tokenizer(name: &str) -> Result<Tokenizer, String> {
    let tokenizer = Tokenizer::from(name);
    match tokenizer.problem() {
        None => Ok(tokenizer),
        Some(problem) => Err(problem),
    }
}

fn print_summary(s: &local::LocalSummary) {
    let num =
        |x: Option<f64>, digits: usize| x.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{} {}: {}",
        s.name,
        s.phase.as_str().to_lowercase(),
        s.message
    );
    println!(
        "  steps {}  loss {}  val loss {}  {} tokens/s  MFU {}  wall {:.1} s",
        s.steps.map_or("-".into(), |n| n.to_string()),
        num(s.final_loss, 4),
        num(s.final_val_loss, 4),
        num(s.tokens_per_second, 0),
        num(s.mfu, 3),
        s.wall_seconds
    );
    if let Some(trained) = s.trained_tokens {
        println!("  trained on {trained} tokens (targets the loss counted)");
    }
    if let Some((trainable, total, optimizer)) = s.memory {
        println!(
            "  parameters {trainable} trained of {total} ({:.2}%)  optimizer state {:.1} MiB on rank 0",
            100.0 * trainable as f64 / total.max(1) as f64,
            optimizer as f64 / (1024.0 * 1024.0)
        );
    }
    println!("  restarts {}", s.restarts);
    for f in &s.failures {
        let recovered = f
            .recovery_seconds
            .map_or(String::new(), |r| format!(", back to training in {r:.2} s"));
        println!(
            "    generation {}: {} ({}){recovered}",
            f.generation, f.reason, f.kind
        );
    }
    println!("  checkpoints {}", s.checkpoint_dir.display());
    println!("  output {}", s.out.display());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tessera_api::report::exit_code(run(cli))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_target(false)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            let json = args.json;
            let summary = runtime.block_on(local::run_local(args))?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print_summary(&summary);
            }
            if summary.phase == tessera_api::records::RunPhase::Failed {
                anyhow::bail!("the run failed: {}", summary.message);
            }
            Ok(())
        }
        Command::Status { dir, json } => tessera::status::print_status(&dir, json),
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
        Command::Data {
            command:
                DataCommand::Prepare {
                    tokenizer,
                    out,
                    val_fraction,
                    format,
                    context,
                    chat_template,
                    train_on,
                    overlong,
                    inputs,
                },
        } => {
            let mut options = PrepareOptions::new(tokenizer.clone(), out, inputs);
            options.val_fraction = val_fraction;
            options.format = format;
            options.context = context;
            options.chat_template = chat_template;
            options.train_on = train_on;
            options.overlong = overlong;
            let report = prepare(&options)?;
            let d = &report.description;
            println!(
                "{}: {} train tokens in {} shard(s), {} validation tokens in {} shard(s) ({})",
                report.out_dir.display(),
                d.train_tokens,
                report.train_shards.len(),
                d.val_tokens,
                report.val_shards.len(),
                tokenizer.name()
            );
            if let Some(p) = &d.packing {
                println!(
                    "  {} examples in rows of {} tokens ({} truncated, {} dropped); the loss counts {} train + {} validation targets",
                    p.examples, p.row_len, p.truncated, p.dropped, p.train_counted, p.val_counted
                );
            }
            Ok(())
        }
        Command::Ckpt { command } => ckpt(command),
        Command::Sample {
            model,
            prompt,
            tokens,
            temperature,
            top_k,
            seed,
            json,
            chat,
        } => {
            let loaded = load_model(&model)?;
            let sampled = sample(
                CpuBackend::<f32>::new(),
                &loaded,
                &SampleOptions {
                    prompt,
                    tokens,
                    temperature,
                    top_k,
                    seed,
                    chat,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sampled)?);
            } else {
                println!("{}{}", sampled.prompt, sampled.continuation);
            }
            Ok(())
        }
        Command::Eval {
            model,
            data,
            context,
            json,
        } => {
            let loaded = load_model(&model)?;
            let e = evaluate(CpuBackend::<f32>::new(), &loaded, &data, context)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "{}: loss {:.4}  perplexity {:.2}  over {} tokens ({} windows of {})",
                    loaded.source, e.loss, e.perplexity, e.tokens, e.windows, e.context
                );
            }
            Ok(())
        }
    }
}

fn ckpt(command: CkptCommand) -> Result<()> {
    match command {
        CkptCommand::Ls { root } => {
            for c in tessera::checkpoints::list(&root)? {
                println!("{}", tessera::checkpoints::line(&c));
            }
            Ok(())
        }
        CkptCommand::Verify { dir } => {
            let report = verify_checkpoint(&dir);
            for file in &report.files {
                let verdict = file
                    .problem
                    .as_ref()
                    .map_or_else(|| "ok".to_string(), ToString::to_string);
                println!("{:<24} {verdict}", file.entry.path);
            }
            if report.is_valid() {
                println!(
                    "{}: valid, step {}",
                    dir.display(),
                    report.step.unwrap_or(0)
                );
                Ok(())
            } else {
                let problems: Vec<String> =
                    report.problems.iter().map(ToString::to_string).collect();
                bail!(
                    "{} is not a valid checkpoint: {}",
                    dir.display(),
                    problems.join("; ")
                )
            }
        }
        CkptCommand::Export {
            checkpoint,
            hf: _,
            merged,
            peft,
            out,
            dtype,
            max_shard_bytes,
        } => export(
            &checkpoint,
            &out,
            peft,
            tessera_trainer::export::ExportOptions {
                dtype,
                max_shard_bytes,
                merged,
            },
        ),
    }
}

fn parse_dtype(s: &str) -> Result<tessera_api::llama_config::WeightDtype, String> {
    use tessera_api::llama_config::WeightDtype;
    match s {
        "f32" | "float32" => Ok(WeightDtype::F32),
        "bf16" | "bfloat16" => Ok(WeightDtype::BF16),
        other => Err(format!("{other} is not an export dtype; use f32 or bf16")),
    }
}

fn export(
    checkpoint: &Path,
    out: &Path,
    peft: bool,
    options: tessera_trainer::export::ExportOptions,
) -> Result<()> {
    let loaded = open_checkpoint(checkpoint)?;
    let (exported, kind) = if peft {
        (tessera_trainer::export::export_peft(&loaded, out)?, "")
    } else {
        let exported = tessera_trainer::export::export_hf(&loaded, out, options)?;
        (exported, "Hugging Face ")
    };
    println!(
        "{}: step {} exported as {kind}{} to {} ({})",
        loaded.dir.display(),
        loaded.manifest.step,
        exported.architecture,
        out.display(),
        exported.files.join(", ")
    );
    Ok(())
}

/// Reads and validates a manifest, naming the file in every error.
fn read_training_run(file: &Path) -> Result<tessera_api::TrainingRun> {
    let yaml = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the manifest {}: check the path (it is relative to the current directory)",
            file.display()
        )
    })?;
    tessera_api::parse_training_run(&yaml)
        .with_context(|| format!("{} is rejected", file.display()))
}
