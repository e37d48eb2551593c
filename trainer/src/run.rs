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

use crate::family::{Family, FamilyError};
use crate::lm::LanguageModel;
use crate::lora::DropoutPlan;
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};
use tessera_api::{
    TrainingRun, TrainingRunSpec,
    checkpoint::{
        BaseModelRef, CheckpointManifest, DataCursor, FORMAT_VERSION, RngState, checkpoint_dir_name,
    },
    records::{RankSummary, Record, StepRecord, finite},
    spec::{LrSchedule as SpecSchedule, ResolvedModel},
};
use tracing::{info, warn};

use crate::{
    backend::Backend,
    checkpoint::{
        BackgroundWriter, CheckpointError, CheckpointSnapshot, CheckpointTensors, CommitFence,
        GangWriter, LoadedCheckpoint, NamedTensor, ShardSnapshot, find_latest_valid,
        flat_optimizer_state, load_checkpoint, write_checkpoint_fenced,
    },
    collective::{Collective, Solo, device::CollectiveChoice},
    data::{
        cache::resolve_run_data,
        loader::{BatchLayout, EvalBatches, LoaderError, TokenStream, TrainBatches},
    },
    hook::{Directive, Phase, ResumeFrom, RunHook, Unsupervised},
    metrics::{MetricsError, StepReport, TrainerMetrics},
    model::ModelError,
    optimizer::{AdamW, AdamWConfig, LrSchedule, OptimizerError, OptimizerState},
    parallel::{DataParallel, ParallelError},
    train::{TrainError, train_step_parallel, train_step_parallel_counted},
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
    #[error(transparent)]
    Family(#[from] FamilyError),
    #[error("spec.data: {0}")]
    Data(#[from] LoaderError),
    #[error(transparent)]
    DataCache(#[from] crate::data::cache::CacheError),
    #[error(
        "{vocab_source} is {model}, but the data in {data} was tokenized with {data_vocab} \
         tokens; use data made with the model's tokenizer (or a model with a vocabulary of at \
         least {data_vocab})"
    )]
    VocabTooSmall {
        vocab_source: String,
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
        "spec.optimizer.warmupSteps: {warmup} warm-up steps exceed the {steps} steps that \
         training.epochs {epochs} make of {examples} examples; lower warmupSteps"
    )]
    WarmupBeyondEpochs {
        warmup: u64,
        steps: u64,
        epochs: u32,
        examples: u64,
    },
    #[error(
        "the checkpoint in {dir} holds LoRA adapters trained on the base {found}, but \
         {want_path} has other weights (SHA-256 {want_sha256}); restore that base model, or \
         point checkpoint.path elsewhere to start a new run"
    )]
    CheckpointBase {
        dir: PathBuf,
        found: String,
        want_path: String,
        want_sha256: String,
    },
    #[error(
        "the checkpoint in {dir} lacks tensor {name}; it is not a Tessera checkpoint of this model"
    )]
    CheckpointTensor { dir: PathBuf, name: String },
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
    /// Targets the loss counted over all the run's steps (every token of text data; the
    /// completion / assistant tokens of instruction and chat data).
    pub trained_tokens: u64,
    /// Parameters the optimizer trained (LoRA: the adapters), and all the model's.
    pub trainable_parameters: u64,
    pub total_parameters: u64,
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
            trained_tokens: self.trained_tokens,
            trainable_parameters: self.trainable_parameters,
            total_parameters: self.total_parameters,
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
    let mut trainer = Trainer::new(backend, run, options, comm, hook)?;
    trainer.resume()?;
    trainer.hook.phase(Phase::Training);
    let mut stopped_at = None;
    for step in trainer.start..trainer.total_steps {
        let report = trainer.step(step)?;
        let evaluated = trainer.evaluate_if_due(report.step)?;
        trainer.append_history(&report, evaluated);
        // The gang follows the strongest directive any rank got.
        let directive = trainer.agree_directive(&report)?;
        if trainer.checkpoint_due(report.step, directive) {
            trainer.checkpoint(report.step)?;
        }
        trainer.poll_checkpoints()?;
        if directive == Directive::Stop {
            info!(
                step = report.step,
                "stopping as the supervisor asked, after a checkpoint"
            );
            stopped_at = Some(report.step);
            break;
        }
    }
    trainer.finish(stopped_at)
}

/// Where checkpoints go: written whole inside the loop, whole in the background
/// (`checkpoint.async` in one process), or one shard per rank, committed by rank 0 when all
/// are durable (a gang; a synchronous gang checkpoint is submit-then-wait).
enum CheckpointSink {
    /// With the supervisor's commit fence, if any.
    Inline(Option<Arc<dyn CommitFence>>),
    Background(BackgroundWriter),
    Gang(Box<GangWriter>),
}

/// Sums over the steps this process ran, for the summary's means.
#[derive(Default)]
struct Totals {
    tokens_per_second: f64,
    mfu: f64,
    step_seconds: f64,
    comm_seconds: f64,
}

/// One rank's training: the model, its optimizer shard, the gang, the data, the metrics and
/// checkpoint sink, and what the loop has seen so far. [`train_ranked`] drives it a step at a
/// time: [`Trainer::resume`], then per step [`Trainer::step`], [`Trainer::evaluate_if_due`],
/// [`Trainer::agree_directive`], [`Trainer::checkpoint`], and [`Trainer::finish`].
struct Trainer<'h, B: Backend> {
    spec: TrainingRunSpec,
    options: RunOptions,
    hook: &'h mut dyn RunHook,
    family: Family,
    resolved: ResolvedModel,
    /// The frozen base of a LoRA run, which its checkpoints name.
    base: Option<BaseModelRef>,
    /// Optimizer steps of the run: `training.steps`, or what `training.epochs` make.
    total_steps: u64,
    checkpoint_root: PathBuf,
    model: Box<dyn LanguageModel<B>>,
    optimizer: AdamW<B>,
    dp: DataParallel<B>,
    batches: TrainBatches,
    eval: Option<EvalBatches>,
    grad_accum: u32,
    metrics: TrainerMetrics,
    history: Option<std::fs::File>,
    sink: CheckpointSink,
    /// When the checkpoint being written was started.
    write_started: Option<Instant>,
    peak_flops: f64,
    flops_per_step: f64,
    started: Instant,
    /// The step this process started from (0, or the checkpoint it resumed).
    start: u64,
    last_loss: Option<f64>,
    last_val_loss: Option<f64>,
    totals: Totals,
}

impl<'h, B: Backend> Trainer<'h, B> {
    /// Opens the data, builds the model, its optimizer shard and the gang's gradient path,
    /// and starts the metrics, history and checkpoint sink. Nothing is loaded yet.
    fn new(
        backend: B,
        run: &TrainingRun,
        options: &RunOptions,
        comm: Box<dyn Collective>,
        hook: &'h mut dyn RunHook,
    ) -> Result<Self, RunError> {
        let mut spec = run.spec.clone();
        spec.data.tokenizer = spec.run_tokenizer(&options.base_dir);
        let spec = &spec;
        let started = Instant::now();
        let (rank, world) = (comm.rank(), comm.world_size());
        let (family, resolved) = Family::of(run, &options.base_dir)?;
        let checkpoint_root = resolve_path(&options.base_dir, &spec.checkpoint.path);
        let (batches, eval, grad_accum) = open_data(
            spec,
            options,
            &family,
            &resolved,
            &checkpoint_root,
            rank,
            world,
        )?;

        let base = family.base_ref()?;
        let model = family.build(
            backend,
            spec.optimizer.micro_batch as usize,
            resolved.context as usize,
            spec.training.seed,
        )?;
        let mut dp = DataParallel::new(spec.parallelism.sharding, comm, model.as_ref())?;
        if let Some(device) = model
            .backend()
            .device_collective(dp.comm(), options.collectives)
            .map_err(ParallelError::from)?
        {
            dp.set_device_collective(device, model.as_ref())?;
        }
        let total_steps = batches.total_steps(spec.training.steps);
        if spec.optimizer.warmup_steps > total_steps {
            return Err(RunError::WarmupBeyondEpochs {
                warmup: spec.optimizer.warmup_steps,
                steps: total_steps,
                epochs: spec.training.epochs.unwrap_or(0),
                examples: batches.examples(),
            });
        }
        let optimizer = AdamW::sharded(
            adamw_config(run, total_steps),
            model.as_ref(),
            dp.optimizer_range(),
        )?;
        let peak_flops = model.backend().peak_flops();
        let flops_per_step = model.flops_per_token() * spec.optimizer.global_batch_tokens as f64;

        let metrics = TrainerMetrics::new(&options.run_name, rank)?;
        metrics.record_memory(
            model.num_params(),
            model.state().placement.family.total,
            optimizer.state_bytes(model.as_ref()),
        );
        let history = match (&options.history, rank) {
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
        let keep = spec.checkpoint.keep;
        let fence = hook.commit_fence();
        let sink = if world > 1 {
            let gang = GangWriter::new(&checkpoint_root, keep)?.with_fence(fence);
            CheckpointSink::Gang(Box::new(gang))
        } else if spec.checkpoint.async_write {
            let writer = BackgroundWriter::new(&checkpoint_root, keep)?.with_fence(fence);
            CheckpointSink::Background(writer)
        } else {
            CheckpointSink::Inline(fence)
        };
        Ok(Trainer {
            spec: spec.clone(),
            options: options.clone(),
            hook,
            family,
            resolved,
            base,
            total_steps,
            checkpoint_root,
            model,
            optimizer,
            dp,
            batches,
            eval,
            grad_accum,
            metrics,
            history,
            sink,
            write_started: None,
            peak_flops,
            flops_per_step,
            started,
            start: 0,
            last_loss: None,
            last_val_loss: None,
            totals: Totals::default(),
        })
    }

    /// Loads the checkpoint the run resumes from (see [`choose_checkpoint`]), or the
    /// `training.initFrom` weights when there is none.
    fn resume(&mut self) -> Result<(), RunError> {
        let from = self.hook.resume_from();
        match choose_checkpoint(from, &self.checkpoint_root, self.dp.comm())? {
            Some(loaded) => self.restore(loaded),
            None => {
                if let Some((weights, from)) = self.family.initial_weights(&self.family.layout())? {
                    self.model.load_weights(&weights)?;
                    match self.family.lora() {
                        Some(_) => info!(from = %from.display(), "LoRA on a frozen base"),
                        None => {
                            info!(from = %from.display(), "initialised from Hugging Face weights")
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Puts a checkpoint's parameters and this rank's part of its optimizer state in place.
    fn restore(&mut self, loaded: LoadedCheckpoint) -> Result<(), RunError> {
        if loaded.manifest.model != self.resolved {
            return Err(RunError::CheckpointModel {
                dir: loaded.dir,
                found: loaded.manifest.model,
                want: self.resolved,
            });
        }
        if let Some(base) = &self.base {
            // The adapters only mean something on the weights they were trained on.
            if loaded.manifest.base.as_ref().map(|b| &b.sha256) != Some(&base.sha256) {
                return Err(RunError::CheckpointBase {
                    dir: loaded.dir,
                    found: loaded.manifest.base.as_ref().map_or_else(
                        || "(none: it is not a LoRA checkpoint)".to_string(),
                        |b| format!("{} (SHA-256 {})", b.path, b.sha256),
                    ),
                    want_path: base.path.clone(),
                    want_sha256: base.sha256.clone(),
                });
            }
            if let Some((weights, _)) = self.family.initial_weights(&self.family.layout())? {
                self.model.load_weights(&weights)?;
            }
        }
        let layout = self.model.layout().clone();
        let mut params = vec![0.0f32; self.model.num_params()];
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
        let flat =
            flat_optimizer_state(&loaded, &names, self.model.num_params()).map_err(|name| {
                RunError::CheckpointTensor {
                    dir: loaded.dir.clone(),
                    name,
                }
            })?;
        self.model.load_params_from_host(&params)?;
        let owned = self.optimizer.owned();
        self.optimizer.load_state(
            self.model.as_ref(),
            &OptimizerState {
                updates: loaded.optimizer_step,
                m: flat.m[owned.clone()].to_vec(),
                v: flat.v[owned.clone()].to_vec(),
                master: flat.master.map(|all| all[owned].to_vec()),
            },
        )?;
        self.start = loaded.manifest.step;
        self.last_loss = loaded.manifest.loss;
        self.last_val_loss = loaded.manifest.val_loss;
        if self.dp.rank() == 0 {
            info!(
                step = self.start,
                dir = %loaded.dir.display(),
                written_by_ranks = loaded.manifest.world_size,
                ranks = self.dp.world_size(),
                "resumed from checkpoint"
            );
        }
        Ok(())
    }

    /// One optimizer step over the gang's global batch; returns what it measured.
    fn step(&mut self, step: u64) -> Result<StepReport, RunError> {
        let t0 = Instant::now();
        let batches = &self.batches;
        let mut fill = |s: u64, micro: usize, inputs: &mut [u32], targets: &mut [u32]| {
            let batch = batches.batch(s, micro as u32)?;
            inputs.copy_from_slice(&batch.inputs);
            targets.copy_from_slice(&batch.targets);
            Ok(())
        };
        let (model, accum) = (self.model.as_mut(), self.grad_accum as usize);
        let layout = batches.layout();
        model.set_dropout_plan(Some(DropoutPlan::new(
            self.spec.training.seed,
            step,
            (0..layout.grad_accum)
                .map(|m| layout.global_row(m, 0))
                .collect(),
        )));
        let stats = if batches.stream().is_masked() {
            let counted = batches.counted_targets(step);
            train_step_parallel_counted(
                model,
                &mut self.optimizer,
                &mut self.dp,
                step,
                accum,
                counted,
                &mut fill,
            )?
        } else {
            train_step_parallel(
                model,
                &mut self.optimizer,
                &mut self.dp,
                step,
                accum,
                &mut fill,
            )?
        };
        let seconds = t0.elapsed().as_secs_f64();
        let comm_seconds = self.dp.take_comm_wait().as_secs_f64();
        let world = f64::from(self.dp.world_size());
        let report = StepReport {
            step: step + 1,
            loss: stats.loss,
            lr: f64::from(stats.lr),
            grad_norm: stats.grad_norm,
            tokens_per_second: self.spec.optimizer.global_batch_tokens as f64 / seconds,
            step_seconds: seconds,
            mfu: self.flops_per_step / seconds / (self.peak_flops * world),
        };
        self.metrics.record_step(&report);
        self.totals.tokens_per_second += report.tokens_per_second;
        self.totals.mfu += report.mfu;
        self.totals.step_seconds += seconds;
        self.totals.comm_seconds += comm_seconds;
        self.last_loss = Some(stats.loss);
        let completed = report.step;
        let log_now = completed == self.start + 1
            || completed.is_multiple_of(self.options.log_every.max(1))
            || completed == self.total_steps;
        if self.dp.rank() == 0 && log_now {
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
        Ok(report)
    }

    /// The validation loss after `completed` steps, when one is due (every
    /// `training.evalInterval` steps and at the last); returns whether it ran.
    fn evaluate_if_due(&mut self, completed: u64) -> Result<bool, RunError> {
        let interval = self.spec.training.eval_interval;
        let Some(eval) = &self.eval else {
            return Ok(false);
        };
        if interval == 0 || (!completed.is_multiple_of(interval) && completed != self.total_steps) {
            return Ok(false);
        }
        self.hook.phase(Phase::Evaluating);
        let val_loss = evaluate_ranked(self.model.as_mut(), eval, self.dp.comm())?;
        self.hook.phase(Phase::Training);
        self.metrics.record_val_loss(val_loss);
        self.last_val_loss = Some(val_loss);
        if self.dp.rank() == 0 {
            info!(
                step = completed,
                val_loss = format_args!("{:.4}", val_loss),
                "eval"
            );
        }
        Ok(true)
    }

    /// Appends the step's line to the history (rank 0, when asked for one).
    fn append_history(&mut self, report: &StepReport, evaluated: bool) {
        let Some(file) = self.history.as_mut() else {
            return;
        };
        let line = StepRecord {
            version: StepRecord::VERSION,
            generation: self.options.generation,
            step: report.step,
            loss: finite(report.loss),
            grad_norm: finite(report.grad_norm),
            val_loss: if evaluated { self.last_val_loss } else { None },
            tokens_per_second: finite(report.tokens_per_second),
            unix_ms: unix_ms(),
        };
        use std::io::Write;
        if let Err(e) = writeln!(file, "{}", line.to_json()) {
            warn!("cannot append to the step history: {e}");
        }
    }

    /// Tells the hook about the step and agrees the gang's directive (the strongest any rank
    /// got); an abort ends the run here.
    fn agree_directive(&mut self, report: &StepReport) -> Result<Directive, RunError> {
        let wanted = self.hook.step_done(report, self.last_val_loss);
        let directive = agree(self.dp.comm(), wanted)?;
        if directive == Directive::Abort {
            return Err(RunError::Aborted { step: report.step });
        }
        Ok(directive)
    }

    /// Every `checkpoint.everySteps`, at the last step, and when the supervisor asks.
    fn checkpoint_due(&self, completed: u64, directive: Directive) -> bool {
        completed.is_multiple_of(self.spec.checkpoint.every_steps)
            || completed == self.total_steps
            || directive >= Directive::CheckpointNow
    }

    /// Checkpoints the state after `completed` steps into the sink.
    fn checkpoint(&mut self, completed: u64) -> Result<(), RunError> {
        self.hook.phase(Phase::Checkpointing);
        let spec = &self.spec;
        let manifest = CheckpointManifest {
            format_version: FORMAT_VERSION,
            step: completed,
            generation: self.options.generation,
            world_size: self.dp.world_size(),
            sharding: spec.parallelism.sharding,
            config: spec.clone(),
            model: self.resolved,
            parameter_count: self.model.num_params() as u64,
            data_cursor: DataCursor {
                seed: spec.training.seed,
                next_step: completed,
                tokens_seen: completed * spec.optimizer.global_batch_tokens,
            },
            rng: vec![RngState {
                name: "init".into(),
                words: vec![self.model.rng_state_after_init()],
            }],
            files: Vec::new(),
            loss: self.last_loss,
            val_loss: self.last_val_loss,
            created_unix_ms: unix_ms(),
            base: self.base.clone(),
        };
        let t_stall = Instant::now();
        let params = self.model.params_to_host()?;
        let state = self.optimizer.state_to_host(self.model.as_ref())?;
        let (metrics, hook, started) = (&self.metrics, &mut *self.hook, &mut self.write_started);
        match &mut self.sink {
            CheckpointSink::Gang(gang) => {
                let snapshot = shard_snapshot(
                    &self.dp,
                    self.model.as_ref(),
                    &params,
                    &self.optimizer,
                    &state,
                );
                let done = gang.submit(self.dp.comm(), manifest, snapshot)?;
                committed(metrics, hook, started, done);
                *started = Some(t_stall);
                if !spec.checkpoint.async_write {
                    let done = gang.wait(self.dp.comm())?;
                    committed(metrics, hook, started, done);
                }
            }
            CheckpointSink::Background(writer) => {
                let names = optimizer_names(self.model.as_ref());
                let tensors = checkpoint_tensors(self.model.as_ref(), &params, &state, &names);
                let done = writer.submit(manifest, CheckpointSnapshot::capture(&tensors))?;
                committed(metrics, hook, started, done);
                *started = Some(t_stall);
            }
            CheckpointSink::Inline(fence) => {
                let names = optimizer_names(self.model.as_ref());
                let tensors = checkpoint_tensors(self.model.as_ref(), &params, &state, &names);
                let done = write_checkpoint_fenced(
                    &self.checkpoint_root,
                    manifest,
                    &tensors,
                    spec.checkpoint.keep,
                    fence.as_deref(),
                )?;
                *started = Some(t_stall);
                committed(metrics, hook, started, Some(done));
            }
        }
        self.metrics
            .record_checkpoint_stall(t_stall.elapsed().as_secs_f64());
        self.hook.phase(Phase::Training);
        Ok(())
    }

    /// Reports a checkpoint the background or gang writer finished since the last look.
    fn poll_checkpoints(&mut self) -> Result<(), RunError> {
        let done = match &mut self.sink {
            CheckpointSink::Inline(_) => None,
            CheckpointSink::Background(writer) => writer.poll()?,
            CheckpointSink::Gang(gang) => gang.poll(self.dp.comm())?,
        };
        committed(&self.metrics, self.hook, &mut self.write_started, done);
        Ok(())
    }

    /// Waits for the last checkpoint and sums the run up.
    fn finish(mut self, stopped_at: Option<u64>) -> Result<RunSummary, RunError> {
        let done = match &mut self.sink {
            CheckpointSink::Inline(_) => None,
            CheckpointSink::Background(writer) => writer.wait()?,
            CheckpointSink::Gang(gang) => gang.wait(self.dp.comm())?,
        };
        committed(&self.metrics, self.hook, &mut self.write_started, done);
        self.hook.phase(Phase::Done);

        let steps = stopped_at.unwrap_or(self.total_steps);
        let ran = steps.saturating_sub(self.start).max(1) as f64;
        let params = self.model.params_to_host()?;
        Ok(RunSummary {
            steps,
            stopped_early: stopped_at.is_some(),
            resumed_from: (self.start > 0).then_some(self.start),
            final_loss: self.last_loss,
            final_val_loss: self.last_val_loss,
            tokens_per_second: self.totals.tokens_per_second / ran,
            mfu: self.totals.mfu / ran,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            checkpoint_dir: self.checkpoint_root.clone(),
            weights_sha256: weights_sha256(&params),
            rank: self.dp.rank(),
            world_size: self.dp.world_size(),
            step_seconds: self.totals.step_seconds / ran,
            comm_seconds_per_step: self.totals.comm_seconds / ran,
            optimizer_state_bytes: self.optimizer.state_bytes(self.model.as_ref()),
            backend: self.model.backend().name().to_string(),
            peak_device_memory_bytes: self.model.backend().peak_memory_bytes(),
            collectives: self.dp.transport(),
            trained_tokens: (0..steps).map(|s| self.batches.counted_targets(s)).sum(),
            trainable_parameters: self.model.num_params() as u64,
            total_parameters: self.model.state().placement.family.total as u64,
        })
    }
}

/// Opens token shards for `family`'s model, refusing data tokenized with a larger
/// vocabulary than the model's embedding covers.
pub fn open_for(family: &Family, path: &str) -> Result<TokenStream, RunError> {
    let stream = TokenStream::open(path)?;
    if (stream.vocab_size() as usize) > family.vocab() {
        return Err(RunError::VocabTooSmall {
            vocab_source: family.vocab_source(),
            model: family.vocab(),
            data_vocab: stream.vocab_size(),
            data: path.to_string(),
        });
    }
    Ok(stream)
}

/// Opens the training data (tokenizing text into the cache beside the checkpoints, once: a
/// later start, and every other rank, finds the entry) and the validation set, checks them
/// against the model's vocabulary and the batch shape, and returns this rank's batches and
/// its gradient-accumulation count.
fn open_data(
    spec: &TrainingRunSpec,
    options: &RunOptions,
    family: &Family,
    resolved: &ResolvedModel,
    checkpoint_root: &std::path::Path,
    rank: u32,
    world: u32,
) -> Result<(TrainBatches, Option<EvalBatches>, u32), RunError> {
    let data = resolve_run_data(
        &spec.data,
        &options.base_dir,
        checkpoint_root,
        resolved.context,
    )?;
    let open = |path: &String| open_for(family, path);
    let train_stream = open(&data.train)?;
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
    let batches = match spec.training.epochs {
        Some(epochs) => batches.with_epochs(epochs),
        None => batches,
    };
    let eval = match &data.validation {
        Some(val) => Some(EvalBatches::new(
            open(val)?,
            micro_batch,
            context,
            spec.training.eval_batches,
        )?),
        None => None,
    };
    Ok((batches, eval, grad_accum))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This rank's part of a gang checkpoint, copied out of training: its shard of the AdamW
/// state (the plan's range, cut from what the optimizer owns) and, on rank 0, the parameters.
fn shard_snapshot<B: Backend>(
    dp: &DataParallel<B>,
    model: &dyn LanguageModel<B>,
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
pub fn evaluate<B: Backend>(
    model: &mut dyn LanguageModel<B>,
    eval: &EvalBatches,
) -> Result<f64, RunError> {
    evaluate_ranked(model, eval, &mut Solo)
}

/// Mean loss over the fixed validation set, the batches dealt round-robin across the gang
/// and the partial sums added in rank order.
pub fn evaluate_ranked<B: Backend>(
    model: &mut dyn LanguageModel<B>,
    eval: &EvalBatches,
    comm: &mut dyn Collective,
) -> Result<f64, RunError> {
    let ranks = (comm.rank()..eval.len()).step_by(comm.world_size() as usize);
    model.set_dropout_plan(None);
    if eval.stream().is_masked() {
        // The mean over the counted targets of the whole validation set.
        let (mut sum, mut counted) = (0.0, 0.0);
        for i in ranks {
            let batch = eval.batch(i)?;
            sum += model.forward_sum(&batch.inputs, &batch.targets, 0.0)?;
            counted += batch.counted as f64;
        }
        let totals = comm.sum_f64(&[sum, counted]).map_err(ParallelError::from)?;
        return Ok(totals[0] / totals[1].max(1.0));
    }
    let mut total = 0.0;
    for i in ranks {
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

fn adamw_config(run: &TrainingRun, total_steps: u64) -> AdamWConfig {
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
        total_steps,
        min_lr_ratio: o.min_lr_ratio as f32,
        schedule: match o.schedule {
            SpecSchedule::Cosine => LrSchedule::Cosine,
            SpecSchedule::Linear => LrSchedule::Linear,
            SpecSchedule::Constant => LrSchedule::Constant,
        },
    }
}

/// `m.<tensor>`, `v.<tensor>` and `master.<tensor>` names, in layout order.
fn optimizer_names<B: Backend>(model: &dyn LanguageModel<B>) -> Vec<[String; 3]> {
    model
        .layout()
        .tensors
        .iter()
        .map(|t| ["m", "v", "master"].map(|prefix| format!("{prefix}.{}", t.name)))
        .collect()
}

/// Views of the flat host buffers as named tensors, for the checkpoint writer.
fn checkpoint_tensors<'a, B: Backend>(
    model: &'a dyn LanguageModel<B>,
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
fn model_tensors<'a, B: Backend>(
    model: &'a dyn LanguageModel<B>,
    params: &'a [f32],
) -> Vec<NamedTensor<'a>> {
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
