//! A whole training run in one process: a TrainingRun spec in, committed checkpoints and a
//! summary out. Reads top to bottom: resolve the model, open the data, build the model and the
//! optimizer, resume from the newest committed checkpoint, then the step loop with evaluation,
//! checkpoints and metrics.
//!
//! ```text
//! spec ─► ModelConfig ─► Gpt + AdamW ─► resume? (find_latest_valid) ─┐
//!                                                                    ▼
//!   for step in start..steps: train_step ─► log/metrics ─► eval? ─► checkpoint?
//!                                                                    ▼
//!                                                         final checkpoint, summary
//! ```
//!
//! Determinism: the batch of step s is a pure function of (seed, s) and the global batch;
//! the checkpoint holds parameters, AdamW moments and the update count, so a run resumed from
//! a checkpoint takes exactly the steps an uninterrupted run takes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};
use tessera_api::{
    TrainingRun,
    checkpoint::{CheckpointManifest, DataCursor, FORMAT_VERSION, RngState, checkpoint_dir_name},
    records::{RankSummary, Record, StepRecord, finite},
    spec::{LrSchedule as SpecSchedule, ResolvedModel},
};
use tracing::{info, warn};

use crate::{
    backend::Backend,
    checkpoint::{
        BackgroundWriter, CheckpointError, CheckpointSnapshot, CheckpointTensors, GangWriter,
        LoadedCheckpoint, NamedTensor, ShardSnapshot, find_latest_valid, flat_optimizer_state,
        load_checkpoint, write_checkpoint,
    },
    collective::{Collective, Solo, device::CollectiveChoice},
    config::{ConfigError, ModelConfig},
    data::{
        cache::resolve_run_data,
        loader::{BatchLayout, EvalBatches, LoaderError, TokenStream, TrainBatches},
    },
    hf,
    hook::{Directive, Phase, ResumeFrom, RunHook, Unsupervised},
    metrics::{MetricsError, StepReport, TrainerMetrics},
    model::{Gpt, ModelError},
    optimizer::{AdamW, AdamWConfig, LrSchedule, OptimizerError, OptimizerState},
    parallel::{DataParallel, ParallelError},
    train::{TrainError, train_step_parallel},
};

/// How this process runs the spec.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Relative data and checkpoint paths are taken from here (the manifest's directory, or
    /// the run's output directory).
    pub base_dir: PathBuf,
    /// Labels the metrics.
    pub run_name: String,
    /// Serve Prometheus `/metrics` here.
    pub metrics_addr: Option<SocketAddr>,
    /// Log a step line every this many steps (and the first and last).
    pub log_every: u64,
    /// The gang generation this process belongs to (recorded in checkpoints).
    pub generation: u64,
    /// Rank 0 appends one JSON line per step here (step, loss, val loss, generation, time):
    /// the loss curve `tessera run` draws.
    pub history: Option<PathBuf>,
    /// What carries the gang's gradients and parameters (NCCL or the host ring).
    pub collectives: CollectiveChoice,
}

impl RunOptions {
    /// Options for a quiet run in `base_dir`: no metrics endpoint or history, a log line every
    /// 1000 steps, generation 0, collectives chosen automatically.
    pub fn new(base_dir: impl Into<PathBuf>, run_name: &str) -> RunOptions {
        RunOptions {
            base_dir: base_dir.into(),
            run_name: run_name.to_string(),
            metrics_addr: None,
            log_every: 1000,
            generation: 0,
            history: None,
            collectives: CollectiveChoice::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("spec.model does not resolve to dimensions; run `tessera validate` on the manifest")]
    UnresolvedModel,
    #[error("spec.model: {0}")]
    Model(#[from] ConfigError),
    #[error("spec.data: {0}")]
    Data(#[from] LoaderError),
    #[error(transparent)]
    DataCache(#[from] crate::data::cache::CacheError),
    #[error(
        "spec.model.vocab is {model}, but the data in {data} was tokenized with {data_vocab} \
         tokens; raise model.vocab to at least {data_vocab} or use data made with the model's tokenizer"
    )]
    VocabTooSmall {
        model: usize,
        data_vocab: u32,
        data: String,
    },
    #[error(
        "spec.optimizer.globalBatchTokens ({global}) is not a multiple of microBatch × context \
         ({per_micro}) × ranks ({world}); change either"
    )]
    BatchShape {
        global: u64,
        per_micro: u64,
        world: u32,
    },
    #[error("spec.optimizer: {0}")]
    Optimizer(#[from] OptimizerError),
    #[error(transparent)]
    Build(#[from] ModelError),
    #[error(transparent)]
    Step(#[from] TrainError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the checkpoint in {dir} was made for a model of {found:?}, but the spec asks for \
         {want:?}; point checkpoint.path elsewhere or restore the spec's model section"
    )]
    CheckpointModel {
        dir: PathBuf,
        found: ResolvedModel,
        want: ResolvedModel,
    },
    #[error(
        "the checkpoint in {dir} lacks tensor {name}; it is not a Tessera checkpoint of this model"
    )]
    CheckpointTensor { dir: PathBuf, name: String },
    #[error("spec.training.initFrom: {0}")]
    InitFrom(#[from] hf::HfError),
    #[error("metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    #[error("aborted by the supervising agent after step {step}: this generation is over")]
    Aborted { step: u64 },
}

/// What a run did, for the CLI's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Steps completed in total (including steps before a resume).
    pub steps: u64,
    /// The supervisor stopped the run (after a checkpoint) before its last step.
    pub stopped_early: bool,
    /// The step this process resumed from, if it did.
    pub resumed_from: Option<u64>,
    pub final_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    /// Mean over the steps this process ran.
    pub tokens_per_second: f64,
    pub mfu: f64,
    pub wall_seconds: f64,
    pub checkpoint_dir: PathBuf,
    /// SHA-256 of the final parameters' bytes (little-endian f32): equal hashes mean
    /// bit-identical weights.
    pub weights_sha256: String,
    pub rank: u32,
    pub world_size: u32,
    /// Mean wall time of a step, and of the part of it spent waiting on communication.
    pub step_seconds: f64,
    pub comm_seconds_per_step: f64,
    /// Bytes of optimizer state this rank holds (ZeRO-1 divides it by the world size).
    pub optimizer_state_bytes: usize,
    /// The backend's name ("cpu-f32", "cuda-bf16").
    pub backend: String,
    /// The most device memory the backend's buffers held at once (GPU backends).
    pub peak_device_memory_bytes: Option<u64>,
    /// What carried the gradients and parameters ("nccl 2.32.3", "host ring (tcp)").
    pub collectives: String,
}

impl RunSummary {
    /// The record `tessera-trainer` prints at its end (`tessera_api::records::RankSummary`).
    pub fn record(&self) -> RankSummary {
        RankSummary {
            version: RankSummary::VERSION,
            steps: self.steps,
            stopped_early: self.stopped_early,
            resumed_from: self.resumed_from,
            final_loss: self.final_loss,
            final_val_loss: self.final_val_loss,
            tokens_per_second: self.tokens_per_second,
            mfu: self.mfu,
            wall_seconds: self.wall_seconds,
            checkpoint_dir: self.checkpoint_dir.clone(),
            weights_sha256: self.weights_sha256.clone(),
            rank: self.rank,
            world_size: self.world_size,
            step_seconds: self.step_seconds,
            comm_seconds_per_step: self.comm_seconds_per_step,
            optimizer_state_bytes: self.optimizer_state_bytes as u64,
            backend: self.backend.clone(),
            peak_device_memory_bytes: self.peak_device_memory_bytes,
            collectives: self.collectives.clone(),
        }
    }
}

/// Resolves a path from the spec against the base directory (one definition, in
/// `tessera_api`, shared with the agent and the CLI).
pub use tessera_api::manifest::resolve_path;

/// The checkpoint this rank resumes from. Rank 0 decides (its supervisor's verified choice,
/// or, standalone, the newest committed checkpoint that verifies) and broadcasts the step;
/// every other rank loads that step's directory, and refuses when its own supervisor handed
/// it a different one (agents of one gang must agree).
fn choose_checkpoint(
    from: ResumeFrom,
    checkpoint_root: &std::path::Path,
    comm: &mut dyn Collective,
) -> Result<Option<LoadedCheckpoint>, RunError> {
    let mut loaded = None;
    let mut chosen = Vec::new();
    if comm.rank() == 0 {
        loaded = match &from {
            ResumeFrom::Fresh => None,
            ResumeFrom::Checkpoint(dir) => Some(load_checkpoint(dir).map_err(|reason| {
                CheckpointError::Manifest(format!(
                    "the agent chose {} but it does not load: {reason}",
                    dir.display()
                ))
            })?),
            ResumeFrom::Newest => {
                let scan = find_latest_valid(checkpoint_root)?;
                for skipped in &scan.skipped {
                    warn!(dir = %skipped.dir.display(), reason = %skipped.reason, "skipping checkpoint");
                }
                scan.loaded
            }
        };
        if let Some(found) = &loaded {
            chosen = found.manifest.step.to_le_bytes().to_vec();
        }
    }
    comm.broadcast_bytes(&mut chosen, 0)
        .map_err(ParallelError::from)?;
    if comm.rank() == 0 {
        return Ok(loaded);
    }
    let step = match <[u8; 8]>::try_from(chosen.as_slice()) {
        Ok(word) => u64::from_le_bytes(word),
        Err(_) if from == ResumeFrom::Newest || from == ResumeFrom::Fresh => return Ok(None),
        Err(_) => {
            return Err(CheckpointError::Manifest(format!(
                "rank 0 starts fresh, but this rank's agent chose {from:?}; the agents of one \
                 gang disagree about checkpoint.path"
            ))
            .into());
        }
    };
    let dir = checkpoint_root.join(checkpoint_dir_name(step));
    if let ResumeFrom::Checkpoint(mine) = &from
        && mine != &dir
    {
        return Err(CheckpointError::Manifest(format!(
            "rank 0 resumes from {} but this rank's agent chose {}; the agents of one gang \
             disagree about checkpoint.path",
            dir.display(),
            mine.display()
        ))
        .into());
    }
    let found = load_checkpoint(&dir).map_err(|reason| {
        CheckpointError::Manifest(format!(
            "rank 0 chose {} but it does not load here: {reason}; is checkpoint.path a \
             volume every rank shares?",
            dir.display()
        ))
    })?;
    Ok(Some(found))
}

/// The model dimensions a spec asks for.
pub fn model_config(run: &TrainingRun) -> Result<(ModelConfig, ResolvedModel), RunError> {
    let resolved = run
        .spec
        .model
        .resolve(&run.spec.data.tokenizer)
        .ok_or(RunError::UnresolvedModel)?;
    let config = ModelConfig::new(
        resolved.layers as usize,
        resolved.heads as usize,
        resolved.width as usize,
        resolved.context as usize,
        resolved.vocab as usize,
    )?;
    Ok((config, resolved))
}

/// Trains `run` on `backend` to its last step in one process, resuming from the newest
/// committed checkpoint.
pub fn train<B: Backend>(
    backend: B,
    run: &TrainingRun,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    train_ranked(backend, run, options, Box::new(Solo), &mut Unsupervised)
}

/// Trains `run` as rank `comm.rank()` of a data-parallel gang of `comm.world_size()` ranks
/// (every rank calls this with the same spec): the global batch is split across ranks, the
/// gradients combined per `parallelism.sharding`, checkpoints written as one shard per rank
/// and committed by rank 0. A checkpoint written by any number of ranks resumes on any other.
/// `hook` sees every step and steers the run (see [`crate::hook`]).
pub fn train_ranked<B: Backend>(
    backend: B,
    run: &TrainingRun,
    options: &RunOptions,
    comm: Box<dyn Collective>,
    hook: &mut dyn RunHook,
) -> Result<RunSummary, RunError> {
    hook.phase(Phase::Initializing);
    let spec = &run.spec;
    let started = Instant::now();
    let (rank, world) = (comm.rank(), comm.world_size());

    // === model shape and data ===
    let (config, resolved) = model_config(run)?;
    let checkpoint_root = resolve_path(&options.base_dir, &spec.checkpoint.path);
    // Text the manifest names is tokenized into the cache beside the checkpoints (once: a
    // later start, and every other rank, finds the entry).
    let data = resolve_run_data(&spec.data, &options.base_dir, &checkpoint_root)?;
    let train_stream = TokenStream::open(&data.train)?;
    if (train_stream.vocab_size() as usize) > config.vocab {
        return Err(RunError::VocabTooSmall {
            model: config.vocab,
            data_vocab: train_stream.vocab_size(),
            data: spec.data.train.clone(),
        });
    }
    let micro_batch = spec.optimizer.micro_batch;
    let context = resolved.context;
    let per_micro = u64::from(micro_batch) * u64::from(context);
    let global = spec.optimizer.global_batch_tokens;
    let per_step = per_micro * u64::from(world);
    if !global.is_multiple_of(per_step) {
        return Err(RunError::BatchShape {
            global,
            per_micro,
            world,
        });
    }
    // Each rank accumulates its share of the global batch.
    let grad_accum = (global / per_step) as u32;
    let batches = TrainBatches::new(
        train_stream,
        spec.training.seed,
        BatchLayout {
            rank,
            world_size: world,
            micro_batch,
            grad_accum,
            context,
        },
    )?;
    let eval = match &data.validation {
        Some(val) => {
            let stream = TokenStream::open(val)?;
            if (stream.vocab_size() as usize) > config.vocab {
                return Err(RunError::VocabTooSmall {
                    model: config.vocab,
                    data_vocab: stream.vocab_size(),
                    data: val.clone(),
                });
            }
            Some(EvalBatches::new(
                stream,
                micro_batch,
                context,
                spec.training.eval_batches,
            )?)
        }
        None => None,
    };

    // === model and optimizer ===
    let mut model = Gpt::new(
        backend,
        config,
        micro_batch as usize,
        context as usize,
        spec.training.seed,
    )?;
    let mut dp = DataParallel::new(spec.parallelism.sharding, comm, &model)?;
    if let Some(device) = model
        .backend()
        .device_collective(dp.comm(), options.collectives)
        .map_err(ParallelError::from)?
    {
        dp.set_device_collective(device, &model)?;
    }
    let mut optimizer = AdamW::sharded(adamw_config(run), &model, dp.optimizer_range())?;
    let peak_flops = model.backend().peak_flops();
    let flops_per_step = config.flops_per_token(context as usize) * global as f64;

    // === resume ===
    let loaded = choose_checkpoint(hook.resume_from(), &checkpoint_root, dp.comm())?;
    let mut start = 0;
    let mut last_loss = None;
    let mut last_val_loss = None;
    if let Some(loaded) = loaded {
        if loaded.manifest.model != resolved {
            return Err(RunError::CheckpointModel {
                dir: loaded.dir,
                found: loaded.manifest.model,
                want: resolved,
            });
        }
        let layout = model.layout().clone();
        let mut params = vec![0.0f32; model.num_params()];
        for tensor in &layout.tensors {
            let p = loaded
                .model_tensor(tensor.name)
                .filter(|p| p.values.len() == tensor.len)
                .ok_or_else(|| RunError::CheckpointTensor {
                    dir: loaded.dir.clone(),
                    name: format!("{} with {} values", tensor.name, tensor.len),
                })?;
            params[tensor.range()].copy_from_slice(&p.values);
        }
        let names: Vec<(&str, std::ops::Range<usize>)> =
            layout.tensors.iter().map(|t| (t.name, t.range())).collect();
        let flat = flat_optimizer_state(&loaded, &names, model.num_params()).map_err(|name| {
            RunError::CheckpointTensor {
                dir: loaded.dir.clone(),
                name,
            }
        })?;
        model.load_params_from_host(&params)?;
        let owned = optimizer.owned();
        optimizer.load_state(
            &model,
            &OptimizerState {
                updates: loaded.optimizer_step,
                m: flat.m[owned.clone()].to_vec(),
                v: flat.v[owned.clone()].to_vec(),
                master: flat.master.map(|all| all[owned].to_vec()),
            },
        )?;
        start = loaded.manifest.step;
        last_loss = loaded.manifest.loss;
        last_val_loss = loaded.manifest.val_loss;
        if rank == 0 {
            info!(
                step = start,
                dir = %loaded.dir.display(),
                written_by_ranks = loaded.manifest.world_size,
                ranks = world,
                "resumed from checkpoint"
            );
        }
    } else if let Some(path) = &spec.training.init_from {
        let weights = hf::load_gpt2(
            &resolve_path(&options.base_dir, path),
            &config,
            model.layout(),
        )?;
        model.load_params_from_host(&weights)?;
        info!(path = %path, "initialised from Hugging Face GPT-2 weights");
    }
    let resumed_from = (start > 0).then_some(start);

    let metrics = TrainerMetrics::new(&options.run_name, rank)?;
    let mut history = match (&options.history, rank) {
        (Some(path), 0) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| CheckpointError::io(path, e))?,
        ),
        _ => None,
    };
    if let Some(addr) = options.metrics_addr {
        let bound = metrics.serve(addr)?;
        info!(addr = %bound, "serving /metrics");
    }
    // One process writes whole checkpoints (in the background with checkpoint.async); a gang
    // writes one shard per rank, committed by rank 0 when all are durable.
    let mut writer = (spec.checkpoint.async_write && world == 1)
        .then(|| BackgroundWriter::new(&checkpoint_root, spec.checkpoint.keep))
        .transpose()?;
    let mut gang_writer = (world > 1)
        .then(|| GangWriter::new(&checkpoint_root, spec.checkpoint.keep))
        .transpose()?;
    let optimizer_state_bytes = optimizer.state_bytes(&model);

    // === the step loop ===
    let steps = spec.training.steps;
    // When the checkpoint being written was started.
    let mut write_started: Option<Instant> = None;
    let mut tokens_per_second_sum = 0.0;
    let mut mfu_sum = 0.0;
    let (mut step_seconds_sum, mut comm_seconds_sum) = (0.0, 0.0);
    let mut stopped_at = None;
    hook.phase(Phase::Training);
    for step in start..steps {
        let t0 = Instant::now();
        let stats = train_step_parallel(
            &mut model,
            &mut optimizer,
            &mut dp,
            step,
            grad_accum as usize,
            &mut |s, micro, inputs, targets| {
                let batch = batches.batch(s, micro as u32)?;
                inputs.copy_from_slice(&batch.inputs);
                targets.copy_from_slice(&batch.targets);
                Ok(())
            },
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        let comm_seconds = dp.take_comm_wait().as_secs_f64();
        step_seconds_sum += seconds;
        comm_seconds_sum += comm_seconds;
        let completed = step + 1;
        let report = StepReport {
            step: completed,
            loss: stats.loss,
            lr: f64::from(stats.lr),
            grad_norm: stats.grad_norm,
            tokens_per_second: global as f64 / seconds,
            step_seconds: seconds,
            mfu: flops_per_step / seconds / (peak_flops * f64::from(world)),
        };
        metrics.record_step(&report);
        tokens_per_second_sum += report.tokens_per_second;
        mfu_sum += report.mfu;
        last_loss = Some(stats.loss);
        let log_now = completed == start + 1
            || completed % options.log_every.max(1) == 0
            || completed == steps;
        if rank == 0 && log_now {
            info!(
                step = completed,
                loss = format_args!("{:.4}", stats.loss),
                lr = format_args!("{:.3e}", stats.lr),
                grad_norm = format_args!("{:.3}", stats.grad_norm),
                tokens_per_second = format_args!("{:.0}", report.tokens_per_second),
                step_ms = format_args!("{:.1}", seconds * 1e3),
                comm_ms = format_args!("{:.1}", comm_seconds * 1e3),
                mfu = format_args!("{:.4}", report.mfu),
                "step"
            );
        }

        let interval = spec.training.eval_interval;
        if let Some(eval) = &eval
            && interval > 0
            && (completed % interval == 0 || completed == steps)
        {
            hook.phase(Phase::Evaluating);
            let val_loss = evaluate_ranked(&mut model, eval, dp.comm())?;
            hook.phase(Phase::Training);
            metrics.record_val_loss(val_loss);
            last_val_loss = Some(val_loss);
            if rank == 0 {
                info!(
                    step = completed,
                    val_loss = format_args!("{:.4}", val_loss),
                    "eval"
                );
            }
        }

        if let Some(file) = history.as_mut() {
            let evaluated = eval.is_some()
                && spec.training.eval_interval > 0
                && (completed % spec.training.eval_interval == 0 || completed == steps);
            let line = StepRecord {
                version: StepRecord::VERSION,
                generation: options.generation,
                step: completed,
                loss: finite(stats.loss),
                grad_norm: finite(stats.grad_norm),
                val_loss: if evaluated { last_val_loss } else { None },
                tokens_per_second: finite(report.tokens_per_second),
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            use std::io::Write;
            if let Err(e) = writeln!(file, "{}", line.to_json()) {
                warn!("cannot append to the step history: {e}");
            }
        }
        // The gang follows the strongest directive any rank got.
        let wanted = hook.step_done(&report, last_val_loss);
        let directive = agree(dp.comm(), wanted)?;
        if directive == Directive::Abort {
            return Err(RunError::Aborted { step: completed });
        }
        if completed % spec.checkpoint.every_steps == 0
            || completed == steps
            || directive >= Directive::CheckpointNow
        {
            hook.phase(Phase::Checkpointing);
            let manifest = CheckpointManifest {
                format_version: FORMAT_VERSION,
                step: completed,
                generation: options.generation,
                world_size: world,
                sharding: spec.parallelism.sharding,
                config: spec.clone(),
                model: resolved,
                parameter_count: model.num_params() as u64,
                data_cursor: DataCursor {
                    seed: spec.training.seed,
                    next_step: completed,
                    tokens_seen: completed * global,
                },
                rng: vec![RngState {
                    name: "init".into(),
                    words: vec![model.rng_state_after_init()],
                }],
                files: Vec::new(),
                loss: last_loss,
                val_loss: last_val_loss,
                created_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            let t_stall = Instant::now();
            let params = model.params_to_host()?;
            let state = optimizer.state_to_host(&model)?;
            if let Some(gang) = gang_writer.as_mut() {
                let snapshot = shard_snapshot(&dp, &model, &params, &optimizer, &state);
                let done = gang.submit(dp.comm(), manifest, snapshot)?;
                committed(&metrics, hook, &mut write_started, done);
                write_started = Some(t_stall);
                if !spec.checkpoint.async_write {
                    let done = gang.wait(dp.comm())?;
                    committed(&metrics, hook, &mut write_started, done);
                }
            } else {
                let names = optimizer_names(&model);
                let tensors = checkpoint_tensors(&model, &params, &state, &names);
                match writer.as_mut() {
                    Some(writer) => {
                        let snapshot = CheckpointSnapshot::capture(&tensors);
                        let done = writer.submit(manifest, snapshot)?;
                        committed(&metrics, hook, &mut write_started, done);
                        write_started = Some(t_stall);
                    }
                    None => {
                        let done = write_checkpoint(
                            &checkpoint_root,
                            manifest,
                            &tensors,
                            spec.checkpoint.keep,
                        )?;
                        write_started = Some(t_stall);
                        committed(&metrics, hook, &mut write_started, Some(done));
                    }
                }
            }
            metrics.record_checkpoint_stall(t_stall.elapsed().as_secs_f64());
            hook.phase(Phase::Training);
        }
        if let Some(writer) = writer.as_mut() {
            committed(&metrics, hook, &mut write_started, writer.poll()?);
        }
        if let Some(gang) = gang_writer.as_mut() {
            committed(&metrics, hook, &mut write_started, gang.poll(dp.comm())?);
        }
        if directive == Directive::Stop {
            info!(
                step = completed,
                "stopping as the supervisor asked, after a checkpoint"
            );
            stopped_at = Some(completed);
            break;
        }
    }
    if let Some(writer) = writer.as_mut() {
        committed(&metrics, hook, &mut write_started, writer.wait()?);
    }
    if let Some(gang) = gang_writer.as_mut() {
        committed(&metrics, hook, &mut write_started, gang.wait(dp.comm())?);
    }
    hook.phase(Phase::Done);

    let ran = stopped_at.unwrap_or(steps).saturating_sub(start).max(1) as f64;
    let params = model.params_to_host()?;
    Ok(RunSummary {
        steps: stopped_at.unwrap_or(steps),
        stopped_early: stopped_at.is_some(),
        resumed_from,
        final_loss: last_loss,
        final_val_loss: last_val_loss,
        tokens_per_second: tokens_per_second_sum / ran,
        mfu: mfu_sum / ran,
        wall_seconds: started.elapsed().as_secs_f64(),
        checkpoint_dir: checkpoint_root,
        weights_sha256: weights_sha256(&params),
        rank,
        world_size: world,
        step_seconds: step_seconds_sum / ran,
        comm_seconds_per_step: comm_seconds_sum / ran,
        optimizer_state_bytes,
        backend: model.backend().name().to_string(),
        peak_device_memory_bytes: model.backend().peak_memory_bytes(),
        collectives: dp.transport(),
    })
}

/// This rank's part of a gang checkpoint, copied out of training: its shard of the AdamW
/// state (the plan's range, cut from what the optimizer owns) and, on rank 0, the parameters.
fn shard_snapshot<B: Backend>(
    dp: &DataParallel<B>,
    model: &Gpt<B>,
    params: &[f32],
    optimizer: &AdamW<B>,
    state: &OptimizerState,
) -> ShardSnapshot {
    let rank = dp.rank();
    let shard = dp.plan().range(rank);
    let owned = optimizer.owned();
    let local = shard.start - owned.start..shard.end - owned.start;
    ShardSnapshot {
        model: (rank == 0).then(|| {
            model_tensors(model, params)
                .into_iter()
                .map(Into::into)
                .collect()
        }),
        rank,
        flat_range: shard,
        m: state.m[local.clone()].to_vec(),
        v: state.v[local.clone()].to_vec(),
        master: state.master.as_ref().map(|master| master[local].to_vec()),
        optimizer_step: state.updates,
    }
}

/// Logs a checkpoint commit, records how long it took since it was started, and tells the
/// hook.
fn committed(
    metrics: &TrainerMetrics,
    hook: &mut dyn RunHook,
    write_started: &mut Option<Instant>,
    done: Option<crate::checkpoint::CommittedCheckpoint>,
) {
    if let Some(done) = done {
        let seconds = write_started.take().map(|s| s.elapsed().as_secs_f64());
        if let Some(seconds) = seconds {
            metrics.record_checkpoint_written(seconds);
        }
        info!(step = done.manifest.step, dir = %done.dir.display(), bytes = done.bytes, "checkpoint committed");
        hook.checkpoint_committed(&done, seconds.unwrap_or(0.0));
    }
}

/// The strongest directive over the gang's ranks (each rank's own with one rank).
fn agree(comm: &mut dyn Collective, mine: Directive) -> Result<Directive, RunError> {
    if comm.world_size() == 1 {
        return Ok(mine);
    }
    let all = comm
        .all_gather_bytes(&[mine as u8])
        .map_err(ParallelError::from)?;
    Ok(all
        .iter()
        .map(|b| Directive::from_code(b.first().copied().unwrap_or(u8::MAX)))
        .max()
        .unwrap_or(mine))
}

/// Mean loss over the fixed validation set.
pub fn evaluate<B: Backend>(model: &mut Gpt<B>, eval: &EvalBatches) -> Result<f64, RunError> {
    evaluate_ranked(model, eval, &mut Solo)
}

/// Mean loss over the fixed validation set, the batches dealt round-robin across the gang
/// and the partial sums added in rank order.
pub fn evaluate_ranked<B: Backend>(
    model: &mut Gpt<B>,
    eval: &EvalBatches,
    comm: &mut dyn Collective,
) -> Result<f64, RunError> {
    let mut total = 0.0;
    for i in (comm.rank()..eval.len()).step_by(comm.world_size() as usize) {
        let batch = eval.batch(i)?;
        total += model.forward(&batch.inputs, &batch.targets)?;
    }
    let total = comm.sum_f64(&[total]).map_err(ParallelError::from)?[0];
    Ok(total / f64::from(eval.len()))
}

/// SHA-256 of parameters as little-endian f32 bytes.
pub fn weights_sha256(params: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for value in params {
        hasher.update(value.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

fn adamw_config(run: &TrainingRun) -> AdamWConfig {
    let o = &run.spec.optimizer;
    AdamWConfig {
        lr: o.lr as f32,
        beta1: o.beta1 as f32,
        beta2: o.beta2 as f32,
        eps: o.eps as f32,
        weight_decay: o.weight_decay as f32,
        decay_embeddings: o.decay_embeddings,
        grad_clip: o.grad_clip as f32,
        warmup_steps: o.warmup_steps,
        total_steps: run.spec.training.steps,
        min_lr_ratio: o.min_lr_ratio as f32,
        schedule: match o.schedule {
            SpecSchedule::Cosine => LrSchedule::Cosine,
            SpecSchedule::Linear => LrSchedule::Linear,
            SpecSchedule::Constant => LrSchedule::Constant,
        },
    }
}

/// `m.<tensor>`, `v.<tensor>` and `master.<tensor>` names, in layout order.
fn optimizer_names<B: Backend>(model: &Gpt<B>) -> Vec<[String; 3]> {
    model
        .layout()
        .tensors
        .iter()
        .map(|t| ["m", "v", "master"].map(|prefix| format!("{prefix}.{}", t.name)))
        .collect()
}

/// Views of the flat host buffers as named tensors, for the checkpoint writer.
fn checkpoint_tensors<'a, B: Backend>(
    model: &'a Gpt<B>,
    params: &'a [f32],
    state: &'a OptimizerState,
    names: &'a [[String; 3]],
) -> CheckpointTensors<'a> {
    let layout = &model.layout().tensors;
    let mut optimizer = Vec::with_capacity(3 * layout.len());
    for (tensor, [m_name, v_name, master_name]) in layout.iter().zip(names) {
        optimizer.push(NamedTensor {
            name: m_name,
            shape: &tensor.shape,
            values: &state.m[tensor.range()],
        });
        optimizer.push(NamedTensor {
            name: v_name,
            shape: &tensor.shape,
            values: &state.v[tensor.range()],
        });
        if let Some(master) = &state.master {
            optimizer.push(NamedTensor {
                name: master_name,
                shape: &tensor.shape,
                values: &master[tensor.range()],
            });
        }
    }
    CheckpointTensors {
        model: model_tensors(model, params),
        optimizer,
        optimizer_step: state.updates,
    }
}

/// Views of the flat parameters as named tensors.
fn model_tensors<'a, B: Backend>(model: &'a Gpt<B>, params: &'a [f32]) -> Vec<NamedTensor<'a>> {
    model
        .layout()
        .tensors
        .iter()
        .map(|t| NamedTensor {
            name: t.name,
            shape: &t.shape,
            values: &params[t.range()],
        })
        .collect()
}
