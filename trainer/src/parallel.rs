//! Data parallelism with ZeRO sharding: how the gradients of a step are combined across ranks
//! and the update applied, for each `parallelism.sharding` stage.
//!
//! ```text
//!            backward (last micro-step)          after backward                 update
//! none       ─                                  all-reduce every gradient      AdamW on all of it
//! optimizer  ─                                  reduce-scatter                 AdamW on own shard ─▶ all-gather params
//! gradients  bucket per layer → comm thread     wait for the buckets           AdamW on own shard ─▶ all-gather params
//!            (reduce-scatter overlaps backward)
//! ```
//!
//! Every stage uses the same shard plan and the same ring order, so each element's gradient
//! is summed in the same order in every stage: the stages reach bit-identical weights. The
//! gradient norm is Σ over ranks (in rank order) of each rank's Σg² over its shard, in every
//! stage; with one rank it is exactly the single-process norm.
//!
//! The exchanges go through the host ring, or, when the backend brings them, through device
//! collectives ([`DeviceCollective`]: NCCL on GPUs) on the backend's own buffers: the same
//! steps with `reduce_scatter_start`/`finish` and `all_gather` in place of download, ring and
//! upload, the ZeRO-2 buckets started from the backward as it goes.
//!
//! ZeRO-1 holds AdamW moments for 1/N of the flat space per rank ([`AdamW::sharded`]). ZeRO-2
//! additionally keeps only the rank's shard of the reduced gradient; on the CPU backend the
//! backward still writes a full-size local gradient buffer, so what ZeRO-2 adds there is the
//! overlap of communication with the backward. `full` (ZeRO-3) is refused with an error.

use crate::lm::LanguageModel;
use std::{
    ops::Range,
    sync::mpsc,
    time::{Duration, Instant},
};

use tessera_api::spec::Sharding;

use crate::{
    backend::Backend,
    collective::{Collective, CollectiveError, ShardPlan, device::DeviceCollective},
    model::ModelError,
    optimizer::{AdamW, OptimizerError, UpdateStats},
};

/// Why a data-parallel step failed.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error("collective: {0}")]
    Collective(#[from] CollectiveError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optimizer(#[from] OptimizerError),
    #[error(
        "parallelism.sharding: full (ZeRO-3) is not supported by this trainer yet; use \
         gradients or optimizer"
    )]
    FullShardingUnsupported,
}

/// One rank's part in a data-parallel gang.
pub struct DataParallel<B: Backend> {
    stage: Sharding,
    plan: ShardPlan,
    comm: Box<dyn Collective>,
    /// Host staging of the flat space (gradients, then parameters).
    host: Vec<f32>,
    /// ZeRO-2: the reduced gradient of this rank's shard, on the host and on the device.
    shard_host: Vec<f32>,
    shard_grads: Option<B::Buf>,
    /// Collectives on the backend's buffers, when it has them; the host ring otherwise.
    device: Option<Box<dyn DeviceCollective<B>>>,
    /// Time this step spent waiting on communication (not hidden behind compute).
    comm_wait: Duration,
}

impl<B: Backend> DataParallel<B> {
    /// A gang member for `model` with `comm`'s rank and world size.
    pub fn new(
        stage: Sharding,
        comm: Box<dyn Collective>,
        model: &dyn LanguageModel<B>,
    ) -> Result<Self, ParallelError> {
        if stage == Sharding::Full {
            return Err(ParallelError::FullShardingUnsupported);
        }
        let plan = ShardPlan::new(model.num_params(), comm.world_size());
        let own = plan.range(comm.rank());
        let sharded_grads = stage == Sharding::Gradients && comm.world_size() > 1;
        let shard_grads = if sharded_grads {
            Some(model.backend().alloc(own.len()).map_err(ModelError::from)?)
        } else {
            None
        };
        Ok(Self {
            stage,
            host: Vec::new(),
            shard_host: Vec::new(),
            shard_grads,
            device: None,
            comm_wait: Duration::ZERO,
            plan,
            comm,
        })
    }

    /// Moves the gradients and parameters through `device` (on the backend's buffers) from
    /// now on. With a device collective the exchanges run even for a world of one (so one
    /// GPU exercises NCCL), and ZeRO-2 keeps its reduced shard for any world size.
    pub fn set_device_collective(
        &mut self,
        device: Box<dyn DeviceCollective<B>>,
        model: &dyn LanguageModel<B>,
    ) -> Result<(), ParallelError> {
        if self.stage == Sharding::Gradients && self.shard_grads.is_none() {
            let own = self.plan.range(self.rank());
            self.shard_grads = Some(model.backend().alloc(own.len()).map_err(ModelError::from)?);
        }
        self.device = Some(device);
        Ok(())
    }

    /// What carries the gradients: the device collective's name, or the host ring.
    pub fn transport(&self) -> String {
        match &self.device {
            Some(device) => device.describe(),
            None if self.world_size() > 1 => "host ring (tcp)".into(),
            None => "none (one rank)".into(),
        }
    }

    pub fn rank(&self) -> u32 {
        self.comm.rank()
    }

    pub fn world_size(&self) -> u32 {
        self.comm.world_size()
    }

    pub fn stage(&self) -> Sharding {
        self.stage
    }

    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The range of the flat space this rank's optimizer owns: all of it with `none`, its
    /// shard otherwise.
    pub fn optimizer_range(&self) -> Range<usize> {
        match self.stage {
            Sharding::None => 0..self.plan.total(),
            _ => self.plan.range(self.rank()),
        }
    }

    /// The collectives, for checkpoint barriers and small exchanges.
    pub fn comm(&mut self) -> &mut dyn Collective {
        self.comm.as_mut()
    }

    /// Time spent waiting on communication since the last call (and resets it).
    pub fn take_comm_wait(&mut self) -> Duration {
        std::mem::take(&mut self.comm_wait)
    }

    /// The backward of the step's last micro-batch. With `gradients` sharding, each layer's
    /// gradients are reduce-scattered on a communication thread as soon as they are final.
    pub fn backward_last(&mut self, model: &mut dyn LanguageModel<B>) -> Result<(), ParallelError> {
        if self.shard_grads.is_none() {
            model.backward()?;
            return Ok(());
        }
        if let Some(device) = self.device.as_mut() {
            // Each bucket's reduction is enqueued behind its gradients and runs while the
            // backward goes on; finish_step waits for them.
            let plan = &self.plan;
            let mut failed = None;
            let backward = model.backward_with(&mut |backend, grads, ranges| {
                device
                    .reduce_scatter_start(backend, grads, ranges, plan)
                    .map_err(|e| {
                        let detail = e.to_string();
                        failed = Some(e);
                        ModelError::GradientSync(detail)
                    })
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            backward?;
            return Ok(());
        }
        let n = model.num_params();
        self.host.resize(n, 0.0);
        let own = self.plan.range(self.rank());
        self.shard_host.resize(own.len(), 0.0);
        let (plan, comm) = (&self.plan, self.comm.as_mut());
        let (host, shard) = (&mut self.host, &mut self.shard_host);
        let (tx, rx) = mpsc::channel::<(Vec<Range<usize>>, Vec<f32>)>();
        let (backward, reduced, waited) = std::thread::scope(|scope| {
            let worker = scope.spawn(move || -> Result<(), CollectiveError> {
                for (segments, values) in rx {
                    let mut at = 0;
                    for s in &segments {
                        host[s.clone()].copy_from_slice(&values[at..at + s.len()]);
                        at += s.len();
                    }
                    comm.reduce_scatter(host, &segments, plan)?;
                    for s in &segments {
                        let mine = plan.owned_part(s, comm.rank());
                        if mine.is_empty() {
                            continue;
                        }
                        shard[mine.start - own.start..mine.end - own.start]
                            .copy_from_slice(&host[mine]);
                    }
                }
                Ok(())
            });
            let backward = model.backward_with(&mut |backend, grads, ranges| {
                let mut values = vec![0.0f32; ranges.iter().map(|r| r.len()).sum()];
                let mut at = 0;
                for r in ranges {
                    backend.download(grads, r.start, &mut values[at..at + r.len()])?;
                    at += r.len();
                }
                tx.send((ranges.to_vec(), values)).map_err(|_| {
                    ModelError::GradientSync("the communication thread stopped".into())
                })
            });
            drop(tx);
            let t = Instant::now();
            let reduced = worker.join().unwrap_or_else(|_| {
                Err(CollectiveError::Protocol {
                    peer: u32::MAX,
                    detail: "the gradient communication thread panicked".into(),
                })
            });
            (backward, reduced, t.elapsed())
        });
        self.comm_wait += waited;
        // The collective's error says why the backward's hand-off failed, so it goes first.
        reduced?;
        backward?;
        Ok(())
    }

    /// Combines the step's gradients, applies the update and brings every rank's parameters
    /// up to date. `local_loss` is this rank's mean loss; returns the update's stats and the
    /// loss averaged over ranks.
    pub fn finish_step(
        &mut self,
        model: &mut dyn LanguageModel<B>,
        optimizer: &mut AdamW<B>,
        step: u64,
        local_loss: f64,
    ) -> Result<(UpdateStats, f64), ParallelError> {
        let world = self.world_size();
        let rank = self.rank();
        let n = model.num_params();
        let own = self.plan.range(rank);
        let t = Instant::now();
        if let Some(device) = self.device.as_mut() {
            let (backend, grads) = model.grads_mut();
            match self.shard_grads.as_mut() {
                Some(shard) => {
                    let out = backend
                        .view_mut(shard, 0..own.len())
                        .map_err(ModelError::from)?;
                    device.reduce_scatter_finish(backend, out, &self.plan)?;
                }
                None => {
                    let whole = 0..n;
                    device.reduce_scatter_start(
                        backend,
                        grads,
                        std::slice::from_ref(&whole),
                        &self.plan,
                    )?;
                    let out = backend
                        .view_mut(grads, own.clone())
                        .map_err(ModelError::from)?;
                    device.reduce_scatter_finish(backend, out, &self.plan)?;
                    if self.stage == Sharding::None {
                        device.all_gather(backend, grads, &self.plan)?;
                    }
                }
            }
        } else if world > 1 && self.shard_grads.is_none() {
            // none and optimizer: reduce the whole gradient through the host.
            self.host.resize(n, 0.0);
            model
                .backend()
                .download(model.grads(), 0, &mut self.host)
                .map_err(ModelError::from)?;
            let whole = 0..n;
            let whole = std::slice::from_ref(&whole);
            self.comm
                .reduce_scatter(&mut self.host, whole, &self.plan)?;
            if self.stage == Sharding::None {
                self.comm.all_gather(&mut self.host, whole, &self.plan)?;
            }
            let (backend, grads) = model.grads_mut();
            let upload = if self.stage == Sharding::None {
                0..n
            } else {
                own.clone()
            };
            backend
                .upload(grads, upload.start, &self.host[upload])
                .map_err(ModelError::from)?;
        }
        if let (Some(shard), None) = (self.shard_grads.as_mut(), &self.device) {
            model
                .backend()
                .upload(shard, 0, &self.shard_host)
                .map_err(ModelError::from)?;
        }
        self.comm_wait += t.elapsed();

        // Σg² over this rank's shard, then across ranks in rank order (with the loss).
        let backend = model.backend();
        let partial = match &self.shard_grads {
            Some(shard) => backend.sum_squares(
                backend
                    .view(shard, 0..own.len())
                    .map_err(ModelError::from)?,
            ),
            None => backend.sum_squares(
                backend
                    .view(model.grads(), own.clone())
                    .map_err(ModelError::from)?,
            ),
        }
        .map_err(ModelError::from)?;
        let t = Instant::now();
        let sums = self.comm.sum_f64(&[local_loss, partial])?;
        self.comm_wait += t.elapsed();
        let (loss, grad_norm) = (sums[0] / f64::from(world), sums[1].sqrt());

        let (backend, params, grads, _) = model.update_parts();
        let update = match &self.shard_grads {
            Some(shard) => optimizer.apply(backend, params, shard, own.start, grad_norm, step)?,
            None => optimizer.apply(backend, params, grads, 0, grad_norm, step)?,
        };

        if let (Some(device), true) = (self.device.as_mut(), self.stage != Sharding::None) {
            let t = Instant::now();
            let (backend, params, _, _) = model.update_parts();
            device.all_gather(backend, params, &self.plan)?;
            self.comm_wait += t.elapsed();
        } else if world > 1 && self.stage != Sharding::None {
            let t = Instant::now();
            self.host.resize(n, 0.0);
            let (backend, params, _, _) = model.update_parts();
            backend
                .download(params, own.start, &mut self.host[own.clone()])
                .map_err(ModelError::from)?;
            self.comm
                .all_gather(&mut self.host, std::slice::from_ref(&(0..n)), &self.plan)?;
            backend
                .upload(params, 0, &self.host)
                .map_err(ModelError::from)?;
            self.comm_wait += t.elapsed();
        }
        Ok((update, loss))
    }
}
