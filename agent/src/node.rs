//! One node's agent, generation after generation: join the rendezvous, start the ranks, watch
//! them, and on a failure bump the generation so the whole gang restarts from the newest
//! committed checkpoint.
//!
//! ```text
//! loop:
//!   g = current generation; restarts = g - 1 > maxRestarts? ─▶ Failed
//!   join g (leased member record) ─▶ rank table (Superseded: g = newer; fixed without us: wait)
//!   verify the newest checkpoint ─▶ start the ranks of g ─▶ watch:
//!     all ranks exit 0 at the last step ─▶ Succeeded        a rank exits non-zero ─▶ failure
//!     a rank silent / no progress > heartbeatTimeout ─▶ failure
//!     a member of g leaves (lease expired) ─▶ failure        g bumped by a peer ─▶ next g
//!     a GPU given to a rank turns unhealthy ─▶ failure (the GPU is left out from then on;
//!       a node left with fewer healthy GPUs than ranks leaves the run)
//!     the store has not confirmed the lease for a TTL ─▶ failure (store-unreachable): the
//!       ranks stop first, then the bump waits for the store
//!     (rank 0's agent) a node waits to join a gang below its size ─▶ CHECKPOINT_NOW, and at
//!       the commit ─▶ grow
//!     SIGTERM / Stop RPC ─▶ directive STOP: ranks checkpoint and exit 0 ─▶ Stopped
//!   failure or grow: bump g (compare-and-swap; one agent wins), stop the ranks, back off
//!     (not to grow), next g
//! ```
//! Elastic runs: the rendezvous takes between `minNodes` and `nodes` members, so a gang that
//! lost a node continues on fewer ranks (the trainer reshards the checkpoint), and a run below
//! `minNodes` waits for a replacement. A node that comes back to a gang running below its size
//! finds the table fixed without it and records itself under `waiting/{node}`; the agent of
//! rank 0 sees it, has the ranks checkpoint, and bumps the generation at that commit, so the
//! gang grows back without losing steps. A waiting node whose gang finishes without it ends
//! too.
//!
//! Fencing: rank 0 commits a checkpoint only after this agent recorded the commit under the
//! still-current generation (`service.rs`, `ConfirmCommit`); done and newest-checkpoint
//! records are written the same way; a generation resumes only from a checkpoint the store
//! vouches for.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tessera_api::{
    ResolvedRun,
    clock::unix_ms_now,
    progress::RunProgress,
    proto::agent::{Directive, RankPhase},
    records::{
        AgentProgress, Failure, FailureKind, GenerationEnded, RankSummary, Record, RunPhase,
    },
    status::CheckpointRef,
    store_keys::RunKeys,
};
use tessera_checkpoint::{list_checkpoints, marker_sha256, verify_checkpoint};
use tessera_store::{
    JoinOutcome, LeaseKeeper, Member, RankTable, RankedNode, RendezvousConfig, RendezvousError,
    RunStore, Store, StoreError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    board::Board,
    gpu::GpuHealth,
    metrics::AgentMetrics,
    ranks::{RankExit, RankLaunch, Ranks},
    service::{AgentService, ServiceEvent, serve_on_socket},
    store_health::StoreHealth,
};

/// Everything one node's agent needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The run, resolved once by whoever read the manifest; the ranks are handed it too
    /// (`launch.run_file`).
    pub run: ResolvedRun,
    pub namespace: String,
    pub name: String,
    /// This node's name in the rendezvous (unique in the run).
    pub node: String,
    /// Ranks on this node.
    pub slots: u32,
    /// Where this agent can be reached (informational, in its member record).
    pub address: String,
    pub launch: RankLaunch,
    pub lease_ttl: Duration,
    pub rendezvous_timeout: Duration,
    /// An elastic rendezvous fixes the table this long after the last member joined.
    pub last_call: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// How long a graceful stop waits for the ranks' checkpoint and exit.
    pub stop_timeout: Duration,
    /// The node's unhealthy GPUs, as the sampler sees them; `launch.gpus` is the pool ranks
    /// take their GPUs from (empty: CPU ranks).
    pub gpu_health: GpuHealth,
}

/// How the agent's work ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum AgentEnd {
    /// The run reached its last step.
    Succeeded,
    /// Stopped on request after a checkpoint (resume by starting again).
    Stopped { checkpoint_step: u64 },
    /// Restarts exhausted, or a failure the agent cannot recover from.
    Failed { reason: String },
}

impl AgentEnd {
    /// The run's phase this end stands for.
    pub fn phase(&self) -> RunPhase {
        match self {
            AgentEnd::Succeeded => RunPhase::Succeeded,
            AgentEnd::Stopped { .. } => RunPhase::Stopped,
            AgentEnd::Failed { .. } => RunPhase::Failed,
        }
    }
}

/// What the agent reports when it ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub end: AgentEnd,
    pub node: String,
    pub generation: u64,
    pub failures: Vec<Failure>,
    /// The summary this node's first rank printed in the last generation.
    pub rank_summary: Option<RankSummary>,
    /// The GPUs this node's ranks used in the last generation, by local rank (empty: CPU).
    pub gpus: Vec<u32>,
}

/// Why the agent could not work at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("coordination store: {0}")]
    Store(#[from] StoreError),
    #[error("rendezvous: {0}")]
    Rendezvous(#[from] RendezvousError),
    #[error("agent socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting ranks: {0}")]
    Spawn(std::io::Error),
    #[error("handing the run to the ranks: {0}")]
    RunFile(#[from] tessera_api::resolved::ResolveError),
}

/// How one generation ended.
enum GenerationEnd {
    Succeeded(Option<RankSummary>),
    Stopped(u64, Option<RankSummary>),
    Failed {
        kind: FailureKind,
        reason: String,
    },
    Superseded(u64),
    /// A waiting node joins: the gang committed `step` and restarts with it.
    Grow {
        node: String,
        step: u64,
    },
}

/// Runs this node's part of the run until it succeeds, stops or fails: a generation at a
/// time, each joined, run and ended by [`Agent`]'s steps.
pub async fn run_agent(
    config: AgentConfig,
    store: Arc<dyn Store>,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> Result<AgentReport, AgentError> {
    let keys = RunKeys::new(&config.namespace, &config.name);
    let run = RunStore::new(store.clone(), keys);
    // The ranks read the run from here (`tessera-trainer --run`), not from the manifest.
    config.run.write_to(&config.launch.run_file)?;
    let board = Arc::new(Board::default());
    let (events_tx, events) = mpsc::channel(16);
    let service = AgentService::new(
        board.clone(),
        run.clone(),
        events_tx,
        config.rendezvous_timeout,
    );
    let serving = CancellationToken::new();
    let socket = config.launch.socket.clone();
    let server = serve_on_socket(service, &socket, serving.clone())
        .await
        .map_err(|source| AgentError::Socket {
            path: socket.clone(),
            source,
        })?;
    let ended = run_generations(&config, store, run, board, events, &metrics, &shutdown).await;
    // Answer what the ranks asked before the end (a commit request, a last heartbeat) rather
    // than drop it with the process.
    serving.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    ended
}

/// [`run_agent`]'s loop over generations, with the agent service serving the ranks.
async fn run_generations(
    config: &AgentConfig,
    store: Arc<dyn Store>,
    run: RunStore,
    board: Arc<Board>,
    events: mpsc::Receiver<ServiceEvent>,
    metrics: &AgentMetrics,
    shutdown: &CancellationToken,
) -> Result<AgentReport, AgentError> {
    let health = StoreHealth::new(store.target(), metrics.clone());
    let lease = start_lease(&health, &store, config.lease_ttl, shutdown).await?;
    let Some(generation) = health
        .retry(
            "reading the generation",
            shutdown,
            RendezvousError::is_transient,
            || run.current_generation(),
        )
        .await
    else {
        return Ok(stopped_before_start(config));
    };
    let mut generation = generation?;
    let mut agent = Agent {
        health: &health,
        gpu_health: config.gpu_health.clone(),
        config,
        store,
        run,
        board,
        metrics,
        shutdown,
        lease,
        events,
        failures: Vec::new(),
        ended_by_peers: Vec::new(),
        failed_at: None,
        gpus_used: Vec::new(),
        waiting: false,
    };
    loop {
        metrics.generation(generation);
        if let Some(report) = agent.give_up_if_exhausted(generation).await {
            return Ok(report);
        }
        if shutdown.is_cancelled() {
            let step = agent.board.last_checkpoint().map_or(0, |c| c.step);
            return Ok(agent.report(
                AgentEnd::Stopped {
                    checkpoint_step: step,
                },
                generation,
                None,
            ));
        }
        let pool = match agent.healthy_gpus() {
            Ok(pool) => pool,
            Err(reason) => return Ok(agent.leave(generation, reason).await),
        };
        let (table, me) = match agent.join(generation).await? {
            Joined::Table(table, me) => (table, me),
            Joined::Retry(next) => {
                generation = next;
                continue;
            }
            Joined::RunEnded(phase) => {
                let reason = format!(
                    "the run ended ({phase:?}) while {} waited to join it",
                    config.node
                );
                tracing::info!("{reason}");
                let end = match phase {
                    RunPhase::Failed => AgentEnd::Failed { reason },
                    RunPhase::Stopped => AgentEnd::Stopped { checkpoint_step: 0 },
                    _ => AgentEnd::Succeeded,
                };
                return Ok(agent.leave_quietly(end, generation).await);
            }
        };
        let (mut ranks, end) = agent.run_generation(generation, &table, &me, &pool).await?;
        match end {
            GenerationEnd::Succeeded(summary) => {
                tracing::info!(generation, "the run finished");
                let phase = (RunPhase::Succeeded, AgentEnd::Succeeded);
                return Ok(agent.end(generation, &table, &me, phase, summary).await);
            }
            GenerationEnd::Stopped(step, summary) => {
                tracing::info!(
                    generation,
                    checkpoint_step = step,
                    "stopped after a checkpoint"
                );
                let end = AgentEnd::Stopped {
                    checkpoint_step: step,
                };
                let phase = (RunPhase::Stopped, end);
                return Ok(agent.end(generation, &table, &me, phase, summary).await);
            }
            GenerationEnd::Superseded(newer) => {
                tracing::warn!(
                    generation,
                    newer,
                    "a peer ended this generation; restarting"
                );
                agent.board.direct(Directive::Abort);
                ranks.stop(config.stop_grace).await;
                agent.failed_at.get_or_insert_with(Instant::now);
                let recorded = recorded_failure(&agent.run, generation).await;
                agent.ended_by_peers.extend(recorded);
                generation = newer;
            }
            GenerationEnd::Failed { kind, reason } => {
                generation = agent
                    .restart_after(generation, &table, &me, &mut ranks, kind, reason)
                    .await?;
            }
            GenerationEnd::Grow { node, step } => {
                let reason = format!(
                    "node {node} is back: the gang grows from the checkpoint of step {step}"
                );
                generation = agent
                    .restart_after(
                        generation,
                        &table,
                        &me,
                        &mut ranks,
                        FailureKind::Grow,
                        reason,
                    )
                    .await?;
            }
        }
    }
}

/// What a rendezvous attempt gave: this generation's rank table with this node's place in
/// it, or the generation to try next.
enum Joined {
    Table(RankTable, RankedNode),
    Retry(u64),
    /// The gang this node waited for ended without it.
    RunEnded(RunPhase),
}

/// One node agent's state across generations.
struct Agent<'a> {
    config: &'a AgentConfig,
    health: &'a StoreHealth,
    store: Arc<dyn Store>,
    run: RunStore,
    board: Arc<Board>,
    metrics: &'a AgentMetrics,
    shutdown: &'a CancellationToken,
    lease: LeaseKeeper,
    events: mpsc::Receiver<ServiceEvent>,
    gpu_health: GpuHealth,
    /// The failures this agent recorded (it won the generation bump).
    failures: Vec<Failure>,
    /// Failures that ended generations through a peer's bump, as recorded in the store: the
    /// progress this agent publishes explains every restart, not only its own.
    ended_by_peers: Vec<Failure>,
    /// When the failure that is being recovered from was detected.
    failed_at: Option<Instant>,
    /// GPU per local rank of the latest generation (empty: CPU ranks).
    gpus_used: Vec<u32>,
    /// Whether this node asked to join a gang running without it (`waiting/{node}`).
    waiting: bool,
}

impl Agent<'_> {
    fn report(&self, end: AgentEnd, generation: u64, summary: Option<RankSummary>) -> AgentReport {
        AgentReport {
            end,
            node: self.config.node.clone(),
            generation,
            failures: self.failures.clone(),
            rank_summary: summary,
            gpus: self.gpus_used.clone(),
        }
    }

    /// Ends the run as failed when `generation` would be one restart too many.
    async fn give_up_if_exhausted(&self, generation: u64) -> Option<AgentReport> {
        let resilience = &self.config.run.run.spec.fault_tolerance;
        let restarts = generation.saturating_sub(1);
        if restarts <= u64::from(resilience.max_restarts) {
            return None;
        }
        // The bump that ended the previous generation recorded why; this agent may only have
        // seen its ranks stopped by a peer.
        let recorded = generation_ended(&self.run, generation.saturating_sub(1)).await;
        let last = recorded
            .map(|ended| ended.to_string())
            .or_else(|| self.failures.last().map(|f| f.reason.clone()))
            .unwrap_or_else(|| "unknown".into());
        let reason = format!(
            "{restarts} restarts exceed faultTolerance.maxRestarts = {}; the last failure: {last}",
            resilience.max_restarts
        );
        tracing::error!("{reason}");
        publish(
            &self.run,
            &self.board,
            generation,
            RunPhase::Failed,
            &known(&self.failures, &self.ended_by_peers),
            &reason,
            0,
        )
        .await;
        Some(self.report(AgentEnd::Failed { reason }, generation, None))
    }

    /// The GPUs this node's ranks may take: the pool less those that turned unhealthy. A node
    /// left with fewer than its ranks need leaves the run (an elastic gang goes on without
    /// it; a fixed one waits for a replacement node): `Err` with why.
    fn healthy_gpus(&mut self) -> Result<Vec<u32>, String> {
        let config = self.config;
        let unhealthy = self.gpu_health.now();
        let pool: Vec<u32> = config
            .launch
            .gpus
            .iter()
            .copied()
            .filter(|g| !unhealthy.contains_key(g))
            .collect();
        if config.launch.gpus.is_empty() || pool.len() >= config.slots as usize {
            return Ok(pool);
        }
        let problems: Vec<String> = unhealthy
            .iter()
            .map(|(g, why)| format!("GPU {g}: {why}"))
            .collect();
        let reason = format!(
            "node {} has {} healthy GPU(s) of the {} its ranks need ({}); it leaves the run",
            config.node,
            pool.len(),
            config.slots,
            if problems.is_empty() {
                "too few GPUs in the pool".to_string()
            } else {
                problems.join("; ")
            }
        );
        tracing::error!("{reason}");
        Err(reason)
    }

    /// This node's part ends with `end` without it having run a generation's ranks (the run
    /// ended while it waited): its lease goes.
    async fn leave_quietly(self, end: AgentEnd, generation: u64) -> AgentReport {
        let report = self.report(end, generation, None);
        let _ = self.lease.revoke().await;
        report
    }

    /// This node leaves the run for `reason`: its lease goes, so the others see it gone.
    async fn leave(self, generation: u64, reason: String) -> AgentReport {
        let report = self.report(AgentEnd::Failed { reason }, generation, None);
        let _ = self.lease.revoke().await;
        report
    }

    /// A new lease in place of one that ran out (this node was cut off or paused).
    async fn renew_lease(&mut self) -> Result<(), AgentError> {
        self.lease = start_lease(
            self.health,
            &self.store,
            self.config.lease_ttl,
            self.shutdown,
        )
        .await?;
        Ok(())
    }

    /// Joins `generation`'s rendezvous with a leased member record.
    async fn join(&mut self, generation: u64) -> Result<Joined, AgentError> {
        let config = self.config;
        let nodes = config.run.run.spec.parallelism.nodes as usize;
        let min_nodes = config
            .run
            .run
            .spec
            .fault_tolerance
            .min_nodes
            .map_or(nodes, |m| m as usize)
            .max(1);
        let member = Member {
            node: config.node.clone(),
            slots: config.slots,
            address: config.address.clone(),
        };
        let rdzv = RendezvousConfig {
            min_members: min_nodes.min(nodes),
            max_members: nodes,
            timeout: config.rendezvous_timeout,
            last_call: if min_nodes < nodes {
                config.last_call
            } else {
                Duration::ZERO
            },
        };
        if matches!(
            *self.lease.status().borrow(),
            tessera_store::LeaseStatus::Lost(_)
        ) {
            self.renew_lease().await?;
        }
        let joined = tokio::select! {
            j = self.run.join(generation, &member, self.lease.lease(), &rdzv) => j,
            _ = self.shutdown.cancelled() => return Ok(Joined::Retry(generation)),
        };
        let table = match joined {
            Ok(JoinOutcome::Joined(table)) => table,
            Ok(JoinOutcome::Superseded { generation: newer }) => return Ok(Joined::Retry(newer)),
            Err(RendezvousError::NotCurrent { current, .. }) => return Ok(Joined::Retry(current)),
            Err(e @ RendezvousError::FixedWithout { .. }) => {
                tracing::warn!("{e}; waiting for the next generation");
                let below_size = matches!(&e, RendezvousError::FixedWithout { members, .. } if members.len() < nodes);
                if below_size && !self.waiting {
                    // An elastic gang running below its size takes this node back at its next
                    // checkpoint (the agent of rank 0 watches the waiting nodes).
                    let mut asked = self
                        .run
                        .wait_to_join(&member, generation, self.lease.lease())
                        .await;
                    if let Err(RendezvousError::Store(StoreError::LeaseExpired(_))) = asked {
                        // Cut off or paused long enough for the lease to run out: a new one.
                        self.renew_lease().await?;
                        asked = self
                            .run
                            .wait_to_join(&member, generation, self.lease.lease())
                            .await;
                    }
                    match asked {
                        Ok(()) => {
                            tracing::info!(
                                generation,
                                "waiting to join: the gang grows at its next checkpoint"
                            );
                            self.waiting = true;
                        }
                        Err(e) => tracing::warn!("cannot ask to join the running gang: {e}"),
                    }
                }
                let next = tokio::select! {
                    g = self.run.wait_for_generation_past(generation) => g?,
                    phase = run_ended(&self.run) => return Ok(Joined::RunEnded(phase)),
                    _ = self.shutdown.cancelled() => generation,
                };
                return Ok(Joined::Retry(next));
            }
            Err(e @ RendezvousError::NotEnoughMembers { .. }) => {
                tracing::warn!("{e}; still waiting");
                return Ok(Joined::Retry(generation));
            }
            Err(
                e @ (RendezvousError::MembershipLost { .. }
                | RendezvousError::Store(StoreError::LeaseExpired(_))),
            ) => {
                // The lease ran out (this node was cut off or paused): a new one, and again.
                tracing::warn!("{e}");
                self.renew_lease().await?;
                return Ok(Joined::Retry(generation));
            }
            Err(e) if e.is_transient() => {
                self.health.unreachable("joining the rendezvous", &e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(Joined::Retry(generation));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(me) = table.node(&config.node).cloned() else {
            return Ok(Joined::Retry(generation));
        };
        if self.waiting {
            self.waiting = false;
            if let Err(e) = self.run.stop_waiting(&config.node).await {
                tracing::warn!("cannot clear this node's waiting record: {e}");
            }
        }
        // The lease's last refresh may predate a store outage: confirm it before the ranks
        // start, so the generation begins confirmed (or is retried).
        if let Err(e) = self.lease.confirm().await {
            tracing::warn!(
                generation,
                "cannot confirm this node's lease after joining: {e}"
            );
            if matches!(e, StoreError::LeaseExpired(_)) {
                self.renew_lease().await?;
            }
            return Ok(Joined::Retry(generation));
        }
        self.health.answered();
        tracing::info!(
            generation,
            world = table.world_size,
            nodes = ?table.node_names(),
            first_rank = me.first_rank,
            "rank table fixed"
        );
        Ok(Joined::Table(table, me))
    }

    /// Verifies the checkpoint to resume from, starts this node's ranks of `generation` on
    /// GPUs from `pool`, and watches them until the generation ends.
    async fn run_generation(
        &mut self,
        generation: u64,
        table: &RankTable,
        me: &RankedNode,
        pool: &[u32],
    ) -> Result<(Ranks, GenerationEnd), AgentError> {
        let config = self.config;
        let (resume, resume_step) =
            newest_valid_checkpoint(&config.run.checkpoint_root(), &self.run).await;
        self.metrics.checkpoint_step(resume_step);
        if resume.is_empty() {
            tracing::info!(
                generation,
                "no committed checkpoint verifies: the ranks start fresh"
            );
        } else {
            tracing::info!(generation, checkpoint = %resume, "the ranks resume from this verified checkpoint");
        }
        self.board
            .begin_generation(table.clone(), me.first_rank, me.slots, resume);
        let mut launch = config.launch.clone();
        launch.gpus = pool.iter().copied().take(me.slots as usize).collect();
        self.gpus_used = launch.gpus.clone();
        if !self.gpus_used.is_empty() {
            tracing::info!(generation, gpus = ?self.gpus_used, "GPUs of this node's ranks, by local rank");
        }
        let mut ranks = Ranks::spawn(&launch, generation, me.slots).map_err(AgentError::Spawn)?;
        let end = watch_generation(
            Generation {
                config,
                health: self.health,
                run: &self.run,
                board: &self.board,
                metrics: self.metrics,
                lease: &self.lease,
                shutdown: self.shutdown,
                table,
                first_rank: me.first_rank,
                gpus: &self.gpus_used,
                ended_by_peers: &self.ended_by_peers,
            },
            Watched {
                ranks: &mut ranks,
                events: &mut self.events,
                gpu_health: &mut self.gpu_health,
                failed_at: &mut self.failed_at,
                failures: &mut self.failures,
            },
        )
        .await;
        Ok((ranks, end))
    }

    /// The run ended in `generation` (succeeded or stopped): record it, publish the phase from
    /// rank 0's node, give up the lease.
    async fn end(
        self,
        generation: u64,
        table: &RankTable,
        me: &RankedNode,
        (phase, end): (RunPhase, AgentEnd),
        summary: Option<RankSummary>,
    ) -> AgentReport {
        mark_done(&self.run, generation, &self.config.node).await;
        if me.first_rank == 0 {
            publish(
                &self.run,
                &self.board,
                generation,
                phase,
                &known(&self.failures, &self.ended_by_peers),
                "",
                table.world_size,
            )
            .await;
        }
        let report = self.report(end, generation, summary);
        let _ = self.lease.revoke().await;
        report
    }

    /// A failure ended `generation`: bump the generation (first, so peers stop their ranks
    /// while this agent stops its own), record the failure if this agent won the bump, stop
    /// the ranks, publish, and back off. Returns the generation to join next.
    async fn restart_after(
        &mut self,
        generation: u64,
        table: &RankTable,
        me: &RankedNode,
        ranks: &mut Ranks,
        kind: FailureKind,
        reason: String,
    ) -> Result<u64, AgentError> {
        if kind == FailureKind::Grow {
            tracing::info!(generation, %reason, "restarting the gang to grow");
        } else {
            tracing::warn!(generation, %reason, "failure detected; restarting the gang");
        }
        self.failed_at = Some(Instant::now());
        let detected_unix_ms = unix_ms_now();
        let store_away = kind == FailureKind::StoreUnreachable;
        let kind_is_grow = kind == FailureKind::Grow;
        let failure = Failure {
            generation,
            kind,
            reason: reason.clone(),
            detected_unix_ms,
            recovery_seconds: None,
        };
        let ended = GenerationEnded::new(failure.clone()).to_json();
        // Without the store, stop the ranks first: the bump waits for the store to answer.
        if store_away {
            self.board.direct(Directive::Abort);
            ranks.stop(self.config.stop_grace).await;
        }
        let won = match self
            .health
            .retry(
                "ending the generation",
                self.shutdown,
                RendezvousError::is_transient,
                || self.run.bump_generation(generation, &ended),
            )
            .await
        {
            Some(Ok(won)) => won,
            Some(Err(e)) => {
                tracing::warn!(generation, "cannot end the generation: {e}");
                false
            }
            None => false,
        };
        // One failure per ended generation: the bump's winner records it. A loser saw a
        // consequence (its ranks lost their peers) or the same failure a moment later.
        if won {
            self.metrics.restart(&failure.kind);
            self.failures.push(failure);
        } else {
            tracing::info!(
                generation,
                "a peer ended this generation first; its failure is the one recorded"
            );
            let recorded = recorded_failure(&self.run, generation).await;
            self.ended_by_peers.extend(recorded);
        }
        if !store_away {
            self.board.direct(Directive::Abort);
            ranks.stop(self.config.stop_grace).await;
        }
        if me.first_rank == 0 || won {
            publish(
                &self.run,
                &self.board,
                generation,
                RunPhase::Restarting,
                &known(&self.failures, &self.ended_by_peers),
                &reason,
                table.world_size,
            )
            .await;
        }
        let next = match self
            .health
            .retry(
                "reading the generation",
                self.shutdown,
                RendezvousError::is_transient,
                || self.run.current_generation(),
            )
            .await
        {
            Some(next) => next?.max(generation + 1),
            None => generation + 1,
        };
        // Growing is not a failure: no backoff.
        let backoff = if kind_is_grow {
            Duration::ZERO
        } else {
            backoff_delay(
                self.config.run.run.spec.fault_tolerance.backoff_seconds,
                next.saturating_sub(1),
            )
        };
        if !backoff.is_zero() {
            tracing::info!(
                seconds = backoff.as_secs_f64(),
                "backing off before the restart"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        Ok(next)
    }
}

/// A lease of `ttl`, asked for until the store answers; [`AgentError::Store`] only for a
/// lasting error, or when `shutdown` comes first.
async fn start_lease(
    health: &StoreHealth,
    store: &Arc<dyn Store>,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Result<LeaseKeeper, AgentError> {
    match health
        .retry(
            "granting a lease",
            shutdown,
            StoreError::is_transient,
            || LeaseKeeper::start(store.clone(), ttl),
        )
        .await
    {
        Some(lease) => Ok(lease?),
        None => Err(AgentError::Store(StoreError::Unavailable {
            operation: "granting a lease",
            target: store.target(),
            message: "the agent was shut down before the store answered".into(),
        })),
    }
}

/// The report of an agent shut down before its first generation.
fn stopped_before_start(config: &AgentConfig) -> AgentReport {
    AgentReport {
        end: AgentEnd::Stopped { checkpoint_step: 0 },
        node: config.node.clone(),
        generation: 0,
        failures: Vec::new(),
        rank_summary: None,
        gpus: Vec::new(),
    }
}

/// `base × 2^(restarts-1)`, capped at ten minutes.
pub fn backoff_delay(base_seconds: u32, restarts: u64) -> Duration {
    if base_seconds == 0 || restarts == 0 {
        return Duration::ZERO;
    }
    let factor = 1u64 << (restarts - 1).min(16);
    Duration::from_secs((u64::from(base_seconds) * factor).min(600))
}

/// The newest committed checkpoint that verifies and that the store vouches for, and its
/// step; older ones are tried when a newer one is skipped (logged). Empty and 0 when none (the
/// trainer initialises).
///
/// The store's commit record of a step (written only while its writer's generation was
/// current) names the SHA-256 of the commit marker: a directory whose marker hashes otherwise
/// was renamed into place by a writer that had lost its generation, and is skipped. A step
/// without a record is taken on the files' word (checkpoints from before fencing, or a local
/// run resumed with a fresh store).
async fn newest_valid_checkpoint(root: &std::path::Path, run: &RunStore) -> (String, u64) {
    let Ok(listing) = list_checkpoints(root) else {
        return (String::new(), 0);
    };
    let records = match run.checkpoint_commits().await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(
                "cannot read the checkpoint commit records ({e}); trusting the files alone"
            );
            Vec::new()
        }
    };
    let mut committed: Vec<_> = listing.into_iter().filter(|c| c.committed).collect();
    committed.sort_by_key(|c| std::cmp::Reverse(c.step));
    for c in committed {
        if let Some(record) = records.iter().find(|r| r.step == c.step) {
            let on_disk = marker_sha256(&c.dir).unwrap_or_default();
            if !on_disk.eq_ignore_ascii_case(&record.manifest_sha256) {
                tracing::warn!(
                    dir = %c.dir.display(),
                    recorded_generation = record.generation,
                    "this checkpoint is not the one the store recorded as committed (its writer had lost its generation); falling back to an older one"
                );
                continue;
            }
        }
        let report = verify_checkpoint(&c.dir);
        if report.is_valid() {
            return (c.dir.to_string_lossy().into_owned(), c.step);
        }
        tracing::warn!(dir = %c.dir.display(), "the newest checkpoint does not verify; falling back to an older one");
    }
    (String::new(), 0)
}

/// One generation as this node's agent sees it: the rank table, this node's first rank and
/// GPUs, and what the agent reads from and reports to while its ranks run.
#[derive(Clone, Copy)]
struct Generation<'a> {
    config: &'a AgentConfig,
    health: &'a StoreHealth,
    run: &'a RunStore,
    board: &'a Board,
    metrics: &'a AgentMetrics,
    lease: &'a LeaseKeeper,
    shutdown: &'a CancellationToken,
    table: &'a RankTable,
    first_rank: u32,
    /// GPU per local rank (empty: CPU ranks).
    gpus: &'a [u32],
    /// Failures that ended earlier generations through a peer's bump.
    ended_by_peers: &'a [Failure],
}

/// What a generation's watch updates in the agent's state across generations.
struct Watched<'a> {
    ranks: &'a mut Ranks,
    events: &'a mut mpsc::Receiver<ServiceEvent>,
    gpu_health: &'a mut GpuHealth,
    /// When the failure that is being recovered from was detected.
    failed_at: &'a mut Option<Instant>,
    failures: &'a mut [Failure],
}

/// Watches the generation's ranks, heartbeats, peers and GPUs until it ends; returns how.
async fn watch_generation(generation: Generation<'_>, watched: Watched<'_>) -> GenerationEnd {
    let Generation {
        config,
        health,
        run,
        board,
        metrics,
        lease,
        shutdown,
        table,
        first_rank,
        gpus: given,
        ended_by_peers,
    } = generation;
    let Watched {
        ranks,
        events,
        gpu_health,
        failed_at,
        failures,
    } = watched;
    let generation = table.generation;
    let timeout = Duration::from_secs(u64::from(
        config
            .run
            .run
            .spec
            .fault_tolerance
            .heartbeat_timeout_seconds,
    ));
    // Before a rank's first heartbeat it may be loading data or waiting for slower nodes.
    let startup = config.rendezvous_timeout + timeout;
    let mut departures = match run.watch_departures(generation, &table.node_names()).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("cannot watch the members of generation {generation}: {e}");
            None
        }
    };
    let superseded = run.wait_for_generation_past(generation);
    tokio::pin!(superseded);
    // Set once the generation watch failed for good (never poll a finished future again).
    let mut superseded_failed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_publish = Instant::now() - Duration::from_secs(10);
    let mut exited: Vec<RankExit> = Vec::new();
    let mut stopping: Option<(Instant, Option<tokio::sync::oneshot::Sender<u64>>)> = None;
    let lost = lease.lost();
    tokio::pin!(lost);
    // A node waiting to join this gang (rank 0's agent only): the gang grows at the next commit.
    let mut grow: Option<String> = None;

    loop {
        tokio::select! {
            exit = ranks.next_exit() => {
                let Some(exit) = exit else { continue };
                if !exit.success() {
                    if stopping.is_some() {
                        tracing::warn!("{exit} while stopping");
                    }
                    return GenerationEnd::Failed { kind: FailureKind::RankExit, reason: exit.to_string() };
                }
                exited.push(exit);
                if ranks.running() == 0 {
                    let reply = stopping.take().map(|(_, reply)| reply);
                    return all_exited(&exited, board, reply);
                }
            }
            _ = tick.tick() => {
                if let Some((since, _)) = &stopping
                    && since.elapsed() > config.stop_timeout
                {
                    return GenerationEnd::Failed {
                        kind: FailureKind::Hang,
                        reason: format!(
                            "the ranks did not checkpoint and exit within {} s of the stop request",
                            config.stop_timeout.as_secs()
                        ),
                    };
                }
                if stopping.is_none()
                    && let Some(stall) = board.stalled(timeout, startup)
                {
                    return GenerationEnd::Failed { kind: FailureKind::Hang, reason: stall.to_string() };
                }
                if let Some(end) = unconfirmed_generation(lease, health, generation, &config.node) {
                    return end;
                }
                let beats = board.ranks();
                metrics.ranks(&beats);
                note_recovery(&beats, failed_at, failures, metrics);
                if first_rank == 0 && last_publish.elapsed() > Duration::from_secs(1) {
                    last_publish = Instant::now();
                    // Progress is best effort: a store that does not answer must not hold up
                    // the watch.
                    let failures = known(failures, ended_by_peers);
                    let report = publish(run, board, generation, RunPhase::Running, &failures, "", table.world_size);
                    let _ = tokio::time::timeout(Duration::from_millis(500), report).await;
                    if grow.is_none() && stopping.is_none() {
                        grow = waiting_to_join(run, table, config).await;
                        if let Some(node) = &grow {
                            tracing::info!(node, "a node waits to join: the gang checkpoints, then grows");
                            board.direct(Directive::CheckpointNow);
                        }
                    }
                }
            }
            node = next_departure(&mut departures) => {
                // A node whose ranks finished (or stopped cleanly) leaves on purpose.
                if node != config.node && !is_done(run, generation, &node).await {
                    return GenerationEnd::Failed {
                        kind: FailureKind::PeerLost,
                        reason: format!("node {node} left generation {generation} (its agent's lease expired)"),
                    };
                }
            }
            _ = gpu_health.changed() => {
                if let Some(end) = unhealthy_rank_gpu(given, gpu_health, &config.node) {
                    return end;
                }
            }
            newer = &mut superseded, if !superseded_failed => match newer {
                Ok(newer) => return GenerationEnd::Superseded(newer),
                Err(e) => {
                    tracing::warn!("cannot watch the generation any longer: {e}");
                    superseded_failed = true;
                }
            },
            _ = &mut lost => {
                return GenerationEnd::Failed {
                    kind: FailureKind::LeaseLost,
                    reason: format!("{}'s lease in the coordination store expired", config.node),
                };
            }
            event = events.recv() => match event {
                Some(ServiceEvent::Committed(checkpoint)) => {
                    metrics.checkpoint_step(checkpoint.step);
                    publish_checkpoint(run, generation, &checkpoint).await;
                    if let Some(node) = grow.take() {
                        return GenerationEnd::Grow { node, step: checkpoint.step };
                    }
                }
                Some(ServiceEvent::Stop { reason, checkpoint, reply }) => {
                    tracing::info!(%reason, checkpoint, "stop requested");
                    if checkpoint {
                        board.direct(Directive::Stop);
                        stopping = Some((Instant::now(), Some(reply)));
                    } else {
                        board.direct(Directive::Abort);
                        ranks.stop(config.stop_grace).await;
                        let _ = reply.send(0);
                        return GenerationEnd::Stopped(board.last_checkpoint().map_or(0, |c| c.step), None);
                    }
                }
                None => {}
            },
            _ = shutdown.cancelled(), if stopping.is_none() => {
                tracing::info!("shutting down: asking the ranks to checkpoint and stop");
                board.direct(Directive::Stop);
                stopping = Some((Instant::now(), None));
            }
        }
    }
}

/// Every rank exited 0: the run succeeded, or (a rank stopped early on request, or the
/// agent asked the ranks to stop) it stopped after a checkpoint; `reply` answers a Stop RPC.
fn all_exited(
    exited: &[RankExit],
    board: &Board,
    reply: Option<Option<tokio::sync::oneshot::Sender<u64>>>,
) -> GenerationEnd {
    let summary = exited
        .iter()
        .min_by_key(|e| e.local_rank)
        .and_then(rank_summary);
    let early = summary.as_ref().is_some_and(|s| s.stopped_early);
    if !(early || reply.is_some()) {
        return GenerationEnd::Succeeded(summary);
    }
    let step = board.last_checkpoint().map_or(0, |c| c.step);
    let step = summary.as_ref().map_or(step, |s| s.steps);
    if let Some(Some(reply)) = reply {
        let _ = reply.send(step);
    }
    GenerationEnd::Stopped(step, summary)
}

/// Recovered: the first step of this generation after a failure. Records how long the
/// recovery took on the failure being recovered from.
fn note_recovery(
    beats: &std::collections::BTreeMap<u32, crate::board::RankBeat>,
    failed_at: &mut Option<Instant>,
    failures: &mut [Failure],
    metrics: &AgentMetrics,
) {
    let Some(at) = *failed_at else { return };
    let stepping = beats.values().any(|b| {
        b.phase == RankPhase::Training
            && b.last_beat.is_some()
            && b.step > 0
            && b.last_progress > at
    });
    if !stepping {
        return;
    }
    let seconds = at.elapsed().as_secs_f64();
    tracing::info!(
        seconds = format_args!("{seconds:.2}"),
        "recovered: the gang is stepping again"
    );
    metrics.recovered(seconds);
    if let Some(f) = failures.last_mut() {
        f.recovery_seconds.get_or_insert(seconds);
    }
    *failed_at = None;
}

/// Resolves once the run's published progress says it ended (succeeded, stopped or failed),
/// looking every second: how a node waiting to join learns the gang finished without it.
async fn run_ended(run: &RunStore) -> RunPhase {
    loop {
        if let Ok(Some(bytes)) = run.progress().await
            && let Ok(progress) = AgentProgress::from_json(&bytes)
            && let Some(phase @ (RunPhase::Succeeded | RunPhase::Stopped | RunPhase::Failed)) =
                progress.phase
        {
            return phase;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A node waiting to join `table`'s gang, when the gang runs below its size (elastic runs
/// after a node was lost): the store's `waiting/` records, read with a short timeout (a store
/// that does not answer must not hold up the watch).
async fn waiting_to_join(
    run: &RunStore,
    table: &RankTable,
    config: &AgentConfig,
) -> Option<String> {
    let size = config.run.run.spec.parallelism.nodes as usize;
    if table.nodes.len() >= size {
        return None;
    }
    let waiting = tokio::time::timeout(Duration::from_millis(500), run.waiting_members())
        .await
        .ok()?
        .ok()?;
    waiting
        .into_iter()
        .find(|w| table.node(&w.node).is_none())
        .map(|w| w.node)
}

/// Whether the store still vouches for this node: its lease refreshes are reported to
/// `health`, and once the store has not confirmed the lease for a whole TTL (it may have
/// expired there, and the gang may have moved on) the generation ends, so the ranks stop
/// before their next step rather than train on in a generation nobody can confirm.
fn unconfirmed_generation(
    lease: &LeaseKeeper,
    health: &StoreHealth,
    generation: u64,
    node: &str,
) -> Option<GenerationEnd> {
    match &*lease.status().borrow() {
        tessera_store::LeaseStatus::Alive => health.answered(),
        tessera_store::LeaseStatus::Unconfirmed(e) => health.unreachable("refreshing the lease", e),
        tessera_store::LeaseStatus::Lost(_) => {}
    }
    let silent = lease.unconfirmed_for();
    (silent > lease.ttl()).then(|| GenerationEnd::Failed {
        kind: FailureKind::StoreUnreachable,
        reason: format!(
            "{node} cannot confirm generation {generation}: the coordination store has not confirmed its lease for {:.1} s (TTL {} s)",
            silent.as_secs_f64(),
            lease.ttl().as_secs()
        ),
    })
}

/// A GPU given to one of this node's ranks that turned unhealthy ends the generation.
fn unhealthy_rank_gpu(given: &[u32], gpu_health: &GpuHealth, node: &str) -> Option<GenerationEnd> {
    let unhealthy = gpu_health.now();
    let (local, gpu, why) = given
        .iter()
        .enumerate()
        .find_map(|(local, g)| unhealthy.get(g).map(|why| (local, g, why)))?;
    Some(GenerationEnd::Failed {
        kind: FailureKind::GpuUnhealthy,
        reason: format!("GPU {gpu} of node {node} (local rank {local}) turned unhealthy: {why}"),
    })
}

/// The summary a rank printed as its last line, if it printed one this build reads.
fn rank_summary(exit: &RankExit) -> Option<RankSummary> {
    let last = exit.stdout.trim().lines().last()?;
    match RankSummary::from_json(last.as_bytes()) {
        Ok(summary) => Some(summary),
        Err(e) => {
            tracing::warn!(local_rank = exit.local_rank, "no rank summary: {e}");
            None
        }
    }
}

/// Marks this node's ranks as ended cleanly, before it leaves the generation; only while
/// `generation` is current (a node that lost its generation has nothing to say about it).
async fn mark_done(run: &RunStore, generation: u64, node: &str) {
    let key = run.keys().node_done(generation, node);
    let what = format!("{node}'s done record");
    if let Err(e) = run
        .put_if_current(generation, &what, &key, b"1".to_vec())
        .await
    {
        tracing::warn!("cannot mark {node} done in generation {generation}: {e}");
    }
}

async fn is_done(run: &RunStore, generation: u64, node: &str) -> bool {
    matches!(
        run.store()
            .get(&run.keys().node_done(generation, node))
            .await,
        Ok(Some(_))
    )
}

async fn next_departure(departures: &mut Option<tessera_store::Departures>) -> String {
    match departures {
        Some(d) => match d.next().await {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!("lost the membership watch: {e}");
                *departures = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Publishes the newest committed checkpoint, only while `generation` is current.
async fn publish_checkpoint(run: &RunStore, generation: u64, checkpoint: &CheckpointRef) {
    if let Ok(json) = serde_json::to_vec(checkpoint)
        && let Err(e) = run.publish_latest_checkpoint(generation, &json).await
    {
        tracing::warn!("cannot publish the newest checkpoint: {e}");
    }
}

/// Why `generation` ended, as the agent whose bump ended it recorded it.
async fn generation_ended(run: &RunStore, generation: u64) -> Option<GenerationEnded> {
    let bytes = run.end_reason(generation).await.ok().flatten()?;
    match GenerationEnded::read(generation, bytes.as_bytes()) {
        Ok(ended) => Some(ended),
        Err(e) => {
            tracing::warn!(generation, "cannot read why the generation ended: {e}");
            None
        }
    }
}

/// The failure recorded with the end of `generation` (by whichever agent's bump ended it).
/// A record without its detection time (an older agent's) is dated now.
async fn recorded_failure(run: &RunStore, generation: u64) -> Option<Failure> {
    let mut failure = generation_ended(run, generation).await?.failure;
    if failure.detected_unix_ms == 0 {
        failure.detected_unix_ms = unix_ms_now();
    }
    Some(failure)
}

/// This agent's failures and those its peers ended generations with, one per generation (its
/// own first), oldest first.
fn known(own: &[Failure], ended_by_peers: &[Failure]) -> Vec<Failure> {
    let mut all: Vec<Failure> = own.to_vec();
    for f in ended_by_peers {
        if !all.iter().any(|o| o.generation == f.generation) {
            all.push(f.clone());
        }
    }
    all.sort_by_key(|f| f.generation);
    all
}

/// Publishes the run's progress as this agent sees it (logged, not fatal, when the store is
/// away).
async fn publish(
    run: &RunStore,
    board: &Board,
    generation: u64,
    phase: RunPhase,
    failures: &[Failure],
    message: &str,
    world_size: u32,
) {
    let beats = board.ranks();
    let lead = beats.values().next();
    let progress = AgentProgress {
        version: AgentProgress::VERSION,
        run: RunProgress {
            generation,
            step: lead.map_or(0, |b| b.step),
            loss: lead.and_then(|b| b.loss),
            val_loss: lead.and_then(|b| b.val_loss),
            tokens_per_second: lead.and_then(|b| b.tokens_per_second),
            last_checkpoint: board.last_checkpoint(),
            restarts: generation.saturating_sub(1) as u32,
        },
        phase: Some(phase),
        world_size,
        ranks: beats
            .iter()
            .map(|(r, b)| (*r, format!("{:?}", b.phase)))
            .collect(),
        failures: failures.to_vec(),
        message: message.to_string(),
    };
    if let Err(e) = run.publish_progress(progress.to_json().as_bytes()).await {
        tracing::warn!("cannot publish progress: {e}");
    }
}

/// Where rank logs and the socket live by default for a node.
pub fn default_socket(dir: &std::path::Path, node: &str) -> PathBuf {
    dir.join(format!("agent-{node}.sock"))
}

/// The host address ranks listen on when none is given.
pub fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generation_a_peer_ended_is_explained_with_its_recorded_failure() {
        let run = RunStore::new(
            Arc::new(tessera_store::EmbeddedStore::new()),
            RunKeys::new("test", "run"),
        );
        let first = run.current_generation().await.unwrap();
        let hang = "hang: rank 2 sent no heartbeat for 10 s";
        assert!(run.bump_generation(first, hang).await.unwrap());
        let odd = "something else entirely";
        assert!(run.bump_generation(first + 1, odd).await.unwrap());
        let peer = recorded_failure(&run, first).await.unwrap();
        assert_eq!((peer.kind.as_str(), peer.generation), ("hang", first));
        assert_eq!(peer.reason, "rank 2 sent no heartbeat for 10 s");
        // A record without a known kind keeps its whole text.
        let other = recorded_failure(&run, first + 1).await.unwrap();
        assert_eq!(
            (other.kind.as_str(), other.reason.as_str()),
            ("failure", odd)
        );
        assert!(
            recorded_failure(&run, first + 2).await.is_none(),
            "the current generation has not ended"
        );

        // Published: this agent's own failures first, a peer's only for other generations.
        let own = Failure {
            generation: first + 1,
            kind: "rank-exit".into(),
            reason: "rank 0 exited with code 1".into(),
            detected_unix_ms: 0,
            recovery_seconds: Some(1.5),
        };
        let known = known(std::slice::from_ref(&own), &[other, peer]);
        assert_eq!(known.len(), 2);
        assert_eq!(
            (known[0].generation, known[0].kind.as_str()),
            (first, "hang")
        );
        assert_eq!(known[1], own);
    }

    #[tokio::test]
    async fn a_checkpoint_the_store_did_not_record_as_committed_is_skipped() {
        use tessera_api::records::{CheckpointCommit, Record};
        use tessera_checkpoint::testing::committed;

        let root = tempfile::tempdir().unwrap();
        let run = RunStore::new(
            Arc::new(tessera_store::EmbeddedStore::new()),
            RunKeys::new("test", "run"),
        );
        let generation = run.current_generation().await.unwrap();
        let ten = committed(root.path(), 10, b"ten");
        let twenty = committed(root.path(), 20, b"twenty");
        // No records (a run from before fencing, or a fresh store): the files decide.
        let (dir, step) = newest_valid_checkpoint(root.path(), &run).await;
        assert_eq!((dir, step), (twenty.to_string_lossy().into_owned(), 20));

        let record = |step: u64, sha: String| CheckpointCommit {
            version: CheckpointCommit::VERSION,
            step,
            generation,
            node: "a".into(),
            manifest_sha256: sha,
            unix_ms: 0,
        };
        run.record_commit(&record(10, marker_sha256(&ten).unwrap()))
            .await
            .unwrap();
        // The store recorded other bytes for step 20: the directory there was renamed into
        // place by a writer that had lost its generation. Step 10 is the newest vouched for.
        run.record_commit(&record(20, "00".repeat(32)))
            .await
            .unwrap();
        let (dir, step) = newest_valid_checkpoint(root.path(), &run).await;
        assert_eq!((dir, step), (ten.to_string_lossy().into_owned(), 10));
        run.record_commit(&record(20, marker_sha256(&twenty).unwrap()))
            .await
            .unwrap();
        assert_eq!(newest_valid_checkpoint(root.path(), &run).await.1, 20);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_delay(0, 5), Duration::ZERO);
        assert_eq!(backoff_delay(2, 0), Duration::ZERO);
        assert_eq!(backoff_delay(2, 1), Duration::from_secs(2));
        assert_eq!(backoff_delay(2, 3), Duration::from_secs(8));
        assert_eq!(backoff_delay(10, 30), Duration::from_secs(600));
    }
}
