//! Collectives on a backend's own buffers: the bulk traffic of a step (the gradient
//! reduction and the parameter all-gather) without a trip through host memory. NCCL is the
//! implementation on GPUs (`backend::cuda::nccl`); the host [`Collective`] keeps the small
//! exchanges (losses, norms, barriers, the NCCL id itself).
//!
//! ```text
//! backward ─▶ reduce_scatter_start(segments)   enqueued after the gradients, may return early
//!          ─▶ reduce_scatter_start(...)         (ZeRO-2: one call per bucket, overlapping)
//! finish   ─▶ reduce_scatter_finish(out)        waits; out = Σ_ranks of this rank's shard
//! update   ─▶ all_gather(params)                every owner's values on every rank
//! ```
//!
//! The contract per element matches the host one: the sum of an element is formed in fp32,
//! in an order that depends only on the world size, so runs are reproducible; it is rounded
//! once into the buffer's element type.

use std::ops::Range;

use super::{Collective, CollectiveError, ShardPlan};
use crate::backend::Backend;

/// Which transport carries a gang's gradients and parameters (`--collectives`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CollectiveChoice {
    /// The device's own collectives (NCCL) for GPU gangs of two or more ranks when every rank
    /// can load them; otherwise the host ring.
    #[default]
    Auto,
    /// The device's collectives, even for one rank; an error where there are none.
    Device,
    /// Stage every exchange through the host and the TCP ring.
    Host,
}

/// Collectives on the buffers of backend `B`, for the members of one gang.
pub trait DeviceCollective<B: Backend>: Send {
    /// What carries the traffic, for logs ("nccl 2.32.3").
    fn describe(&self) -> String;

    /// Starts summing `grads[segments]` across ranks, accumulating in fp32. The work is
    /// ordered after everything already enqueued on `backend`, and may still be running when
    /// this returns: `grads[segments]` may be written again only after
    /// [`reduce_scatter_finish`](Self::reduce_scatter_finish).
    fn reduce_scatter_start(
        &mut self,
        backend: &B,
        grads: &B::Buf,
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError>;

    /// Waits for every started reduction and writes the sums of this rank's shard,
    /// `plan.range(rank)`, into `out` (that many elements, rounded once to `out`'s element
    /// type). Parts of the shard no started segment covered are unspecified.
    fn reduce_scatter_finish(
        &mut self,
        backend: &B,
        out: B::Mut<'_>,
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError>;

    /// Afterwards every rank's `buf` holds, in each rank's shard, that rank's values.
    fn all_gather(
        &mut self,
        backend: &B,
        buf: &mut B::Buf,
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError>;
}

/// What a backend offers for device collectives: `host` is the gang's connected ring (used to
/// agree and to exchange set-up, such as the NCCL id); `Ok(None)` means "use the host ring".
pub type DeviceCollectiveResult<B> = Result<Option<Box<dyn DeviceCollective<B>>>, CollectiveError>;

/// The answer of a backend that has no device collectives: the host ring, unless the run
/// asked for device collectives explicitly.
pub fn host_only<B: Backend>(
    backend: &B,
    _host: &mut dyn Collective,
    choice: CollectiveChoice,
) -> DeviceCollectiveResult<B> {
    match choice {
        CollectiveChoice::Device => Err(CollectiveError::Device {
            op: "set-up",
            detail: format!(
                "--collectives nccl needs the CUDA backend; this rank trains on {} (use \
                 --collectives auto or host, or --device cuda)",
                backend.name()
            ),
        }),
        CollectiveChoice::Auto | CollectiveChoice::Host => Ok(None),
    }
}
