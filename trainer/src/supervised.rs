//! The link to the supervising agent, over the agent's unix socket (`api/proto/agent.proto`):
//! the rendezvous that gives this rank its place in the gang, heartbeats carrying step
//! progress (from a background task, so a rank busy in a long step still looks alive, and a
//! stopped one does not), the directives that come back, and checkpoint notices.
//!
//! ```text
//! connect(socket) ─▶ rendezvous(local rank, generation, listen addr) ─▶ rank, world, peers
//! start_heartbeats ─▶ every interval, and after every step: Heartbeat{step, phase, loss…}
//!                      ◀── directive (sticky: the strongest one seen wins until acted on)
//! step loop: RunHook::step_done reads the directive; checkpoint_committed sends a notice
//! rank 0, before each commit: ConfirmCommit(generation, step, marker SHA-256) ─▶ granted, or
//!                              refused (the generation ended, or the store cannot confirm it)
//! ```
//!
//! If the agent stops answering for longer than the orphan timeout, the link turns into an
//! abort directive: a rank never trains on unsupervised.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hyper_util::rt::TokioIo;
use tessera_api::proto::agent::{
    CheckpointNotice, CommitRequest, Directive as WireDirective, HeartbeatRequest, RankPhase,
    RendezvousInfo, RendezvousRequest, agent_client::AgentClient,
};
use tokio::{net::UnixStream, runtime::Runtime, sync::Notify};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    checkpoint::{CommitFence, CommittedCheckpoint},
    hook::{Directive, Phase, ResumeFrom, RunHook},
    metrics::StepReport,
};

/// Why the link to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error("cannot start the agent link's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "cannot reach the agent at {socket} within {seconds} s: {message}; is tessera-agent \
         running (--agent-socket)?"
    )]
    Connect {
        socket: PathBuf,
        seconds: u64,
        message: String,
    },
    #[error("the agent refused the rendezvous: {0}")]
    Rendezvous(String),
}

/// What the heartbeat task reports.
#[derive(Clone, Debug)]
struct Beat {
    generation: u64,
    rank: u32,
    step: u64,
    phase: Phase,
    loss: f64,
    val_loss: f64,
    tokens_per_second: f64,
}

/// This rank's connection to its agent.
pub struct AgentLink {
    runtime: Runtime,
    client: AgentClient<Channel>,
    beat: Arc<Mutex<Beat>>,
    wake: Arc<Notify>,
    directive: Arc<AtomicU8>,
    stopping: Arc<AtomicBool>,
    generation: u64,
    rank: u32,
    /// The committed checkpoint the agent verified for this generation (empty: none).
    resume_checkpoint: String,
}

impl AgentLink {
    /// Connects to the agent's socket, retrying until `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<AgentLink, SupervisedError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agent-link")
            .enable_all()
            .build()
            .map_err(SupervisedError::Runtime)?;
        let deadline = Instant::now() + timeout;
        let client = runtime.block_on(async {
            loop {
                let path = socket.to_path_buf();
                let attempt = Endpoint::from_static("http://agent.sock")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await;
                match attempt {
                    Ok(channel) => break Ok(AgentClient::new(channel)),
                    Err(e) if Instant::now() >= deadline => {
                        break Err(SupervisedError::Connect {
                            socket: socket.to_path_buf(),
                            seconds: timeout.as_secs(),
                            message: format!("{e:?}"),
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })?;
        Ok(AgentLink {
            runtime,
            client,
            beat: Arc::new(Mutex::new(Beat {
                generation: 0,
                rank: 0,
                step: 0,
                phase: Phase::Initializing,
                loss: f64::NAN,
                val_loss: f64::NAN,
                tokens_per_second: 0.0,
            })),
            wake: Arc::new(Notify::new()),
            directive: Arc::new(AtomicU8::new(Directive::Continue as u8)),
            stopping: Arc::new(AtomicBool::new(false)),
            generation: 0,
            rank: 0,
            resume_checkpoint: String::new(),
        })
    }

    /// Asks the agent for this rank's place in the gang; blocks until every rank of the
    /// generation has arrived.
    pub fn rendezvous(
        &mut self,
        local_rank: u32,
        generation: u64,
        listen_address: String,
    ) -> Result<RendezvousInfo, SupervisedError> {
        let request = RendezvousRequest {
            local_rank,
            generation,
            listen_address,
            nccl_unique_id: Vec::new(),
        };
        let mut client = self.client.clone();
        let info = self
            .runtime
            .block_on(client.rendezvous(request))
            .map_err(|status| SupervisedError::Rendezvous(status.message().to_string()))?
            .into_inner();
        self.generation = info.generation;
        self.rank = info.rank;
        self.resume_checkpoint = info.resume_checkpoint.clone();
        Ok(info)
    }

    /// Starts the heartbeat task: one heartbeat every `interval` and one after every step.
    /// After `orphan_timeout` without an answer the directive turns to abort.
    pub fn start_heartbeats(&mut self, interval: Duration, orphan_timeout: Duration) {
        if let Ok(mut beat) = self.beat.lock() {
            beat.generation = self.generation;
            beat.rank = self.rank;
        }
        let (beat, wake, directive, stopping) = (
            self.beat.clone(),
            self.wake.clone(),
            self.directive.clone(),
            self.stopping.clone(),
        );
        let mut client = self.client.clone();
        self.runtime.spawn(async move {
            let mut last_answer = Instant::now();
            while !stopping.load(Ordering::SeqCst) {
                let request = match beat.lock() {
                    Ok(b) => heartbeat_request(&b),
                    Err(_) => break,
                };
                let answer = tokio::time::timeout(
                    interval.max(Duration::from_secs(1)),
                    client.heartbeat(request),
                )
                .await;
                match answer {
                    Ok(Ok(reply)) => {
                        last_answer = Instant::now();
                        let wanted = match reply.into_inner().directive() {
                            WireDirective::CheckpointNow => Directive::CheckpointNow,
                            WireDirective::Stop => Directive::Stop,
                            WireDirective::Abort => Directive::Abort,
                            WireDirective::Continue | WireDirective::Unspecified => {
                                Directive::Continue
                            }
                        };
                        directive.fetch_max(wanted as u8, Ordering::SeqCst);
                    }
                    _ if last_answer.elapsed() > orphan_timeout => {
                        tracing::error!(
                            seconds = orphan_timeout.as_secs(),
                            "the agent stopped answering heartbeats; aborting this rank"
                        );
                        directive.fetch_max(Directive::Abort as u8, Ordering::SeqCst);
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }

    fn set_phase(&self, phase: Phase) {
        if let Ok(mut beat) = self.beat.lock() {
            beat.phase = phase;
        }
        self.wake.notify_one();
    }
}

impl Drop for AgentLink {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

fn heartbeat_request(beat: &Beat) -> HeartbeatRequest {
    let phase = match beat.phase {
        Phase::Initializing => RankPhase::Initializing,
        Phase::Training => RankPhase::Training,
        Phase::Evaluating => RankPhase::Evaluating,
        Phase::Checkpointing => RankPhase::Checkpointing,
        Phase::Done => RankPhase::Done,
    };
    HeartbeatRequest {
        generation: beat.generation,
        rank: beat.rank,
        step: beat.step,
        phase: phase as i32,
        loss: beat.loss,
        val_loss: beat.val_loss,
        tokens_per_second: beat.tokens_per_second,
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// The agent's commit fence: the store records rank 0's commit only while its generation is
/// current ([`CommitFence`]).
struct AgentFence {
    runtime: tokio::runtime::Handle,
    client: AgentClient<Channel>,
    generation: u64,
    rank: u32,
}

/// Fault drills only: `STEP:FILE` makes rank 0, about to ask for the commit of step STEP,
/// write its process id to `FILE.held` and wait until FILE exists, so a test can pause or cut
/// off its node at exactly that moment; `FILE.asking` then says it goes on to ask.
pub const HOLD_COMMIT_ENV: &str = "TESSERA_DRILL_HOLD_COMMIT";

fn drill_hold(step: u64) {
    let Ok(setting) = std::env::var(HOLD_COMMIT_ENV) else {
        return;
    };
    let Some((at, file)) = setting.split_once(':') else {
        return;
    };
    if at.parse::<u64>().ok() != Some(step) {
        return;
    }
    let release = PathBuf::from(file);
    let _ = std::fs::write(format!("{file}.held"), std::process::id().to_string());
    tracing::warn!(
        step,
        file,
        "drill: holding the commit until the file exists"
    );
    while !release.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::write(format!("{file}.asking"), step.to_string());
}

impl CommitFence for AgentFence {
    fn confirm(&self, step: u64, marker_sha256: &str) -> Result<(), String> {
        drill_hold(step);
        let request = CommitRequest {
            generation: self.generation,
            rank: self.rank,
            step,
            manifest_sha256: marker_sha256.to_string(),
        };
        let mut client = self.client.clone();
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.confirm_commit(request)).await
        });
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(format!("the agent refused it: {}", status.message())),
            Err(_) => Err("the agent did not answer within 10 s".to_string()),
        }
    }
}

impl RunHook for AgentLink {
    fn commit_fence(&self) -> Option<Arc<dyn CommitFence>> {
        Some(Arc::new(AgentFence {
            runtime: self.runtime.handle().clone(),
            client: self.client.clone(),
            generation: self.generation,
            rank: self.rank,
        }))
    }

    /// The agent picks and verifies the checkpoint; the rank loads exactly that one.
    fn resume_from(&self) -> ResumeFrom {
        if self.resume_checkpoint.is_empty() {
            ResumeFrom::Fresh
        } else {
            ResumeFrom::Checkpoint(PathBuf::from(&self.resume_checkpoint))
        }
    }

    fn phase(&mut self, phase: Phase) {
        self.set_phase(phase);
    }

    fn step_done(&mut self, report: &StepReport, val_loss: Option<f64>) -> Directive {
        if let Ok(mut beat) = self.beat.lock() {
            beat.step = report.step;
            beat.loss = report.loss;
            beat.val_loss = val_loss.unwrap_or(f64::NAN);
            beat.tokens_per_second = report.tokens_per_second;
        }
        self.wake.notify_one();
        // Acting on a checkpoint request or a stop consumes it; an abort stays.
        let code = self
            .directive
            .swap(Directive::Continue as u8, Ordering::SeqCst);
        let directive = Directive::from_code(code);
        if directive == Directive::Abort {
            self.directive.fetch_max(code, Ordering::SeqCst);
        }
        directive
    }

    fn checkpoint_committed(&mut self, done: &CommittedCheckpoint, write_seconds: f64) {
        let notice = CheckpointNotice {
            generation: self.generation,
            rank: self.rank,
            step: done.manifest.step,
            path: done.dir.to_string_lossy().into_owned(),
            committed: true,
            bytes: done.bytes,
            write_seconds,
        };
        let mut client = self.client.clone();
        let sent = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.checkpoint_committed(notice)).await
        });
        if !matches!(sent, Ok(Ok(_))) {
            // The checkpoint is committed on disk either way; the agent rescans on restart.
            tracing::warn!(
                step = done.manifest.step,
                "the agent did not acknowledge the checkpoint notice"
            );
        }
    }
}
