//! What a supervisor sees of a run, and how it steers it: the step loop reports its phase,
//! each step and each committed checkpoint to a [`RunHook`], and takes back a [`Directive`].
//! Standalone runs use [`Unsupervised`]; under an agent, `supervised::AgentLink` relays both
//! ways over the agent's socket.

use std::path::PathBuf;
use std::sync::Arc;

use crate::checkpoint::{CommitFence, CommittedCheckpoint};
use crate::metrics::StepReport;

/// What the loop is doing, for the supervisor's hang detection and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Initializing,
    Training,
    Evaluating,
    Checkpointing,
    Done,
}

/// What the supervisor wants after a step. Ordered: when ranks disagree the gang follows the
/// strongest (a stop beats a checkpoint request, an abort beats everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Directive {
    Continue = 0,
    /// Checkpoint at this step boundary, then go on.
    CheckpointNow = 1,
    /// Checkpoint at this step boundary, then end the run cleanly.
    Stop = 2,
    /// End at once without a checkpoint (the generation is over).
    Abort = 3,
}

impl Directive {
    pub fn from_code(code: u8) -> Directive {
        match code {
            0 => Directive::Continue,
            1 => Directive::CheckpointNow,
            2 => Directive::Stop,
            _ => Directive::Abort,
        }
    }
}

/// Where a run starts from: the decision belongs to whoever supervises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Standalone: rank 0 scans the checkpoint directory for the newest committed checkpoint
    /// that verifies.
    Newest,
    /// The supervisor found no checkpoint to resume: start from the initial weights.
    Fresh,
    /// The supervisor verified this committed checkpoint: load exactly it.
    Checkpoint(PathBuf),
}

/// Receives a run's progress and steers it.
pub trait RunHook {
    /// Where to start; asked once, before the first step.
    fn resume_from(&self) -> ResumeFrom {
        ResumeFrom::Newest
    }
    fn phase(&mut self, _phase: Phase) {}
    /// After every step (and its evaluation, if any); returns this rank's directive.
    fn step_done(&mut self, _report: &StepReport, _val_loss: Option<f64>) -> Directive {
        Directive::Continue
    }
    /// On the rank that committed a checkpoint.
    fn checkpoint_committed(&mut self, _done: &CommittedCheckpoint, _write_seconds: f64) {}
    /// What the committing rank asks before each commit; `None`: commit unasked.
    fn commit_fence(&self) -> Option<Arc<dyn CommitFence>> {
        None
    }
}

/// No supervisor: always go on.
#[derive(Debug, Default)]
pub struct Unsupervised;

impl RunHook for Unsupervised {}
