//! The transitions of a run, from creation to a finished run's deletion.
//!
//! ```text
//!            fits                 all pods running            all pods succeeded
//!  Pending ────────► Admitted ─────────────────────► Running ───────────────────► Succeeded
//!    ▲  │ no room: Admitted=False          │ pod failed, node lost past grace,
//!    │  └ InsufficientResources            │ pod deleted
//!    │                                     ▼
//!    │ evicted or preempted          Restarting (generation+1, backoff, fewer nodes when
//!    └─────────────────────────────  elastic) ──► maxRestarts exhausted ──► Failed
//!  suspend: any active phase ──► Suspended ──(suspend false)──► Pending ──► a new generation
//!  activeDeadlineSeconds past ──► Failed;  finished + ttlSecondsAfterFinished ──► deleted
//!  deletion: pods stopped, store keys removed, then the finalizer
//! ```

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use tessera_api::spec::bounds::MAX_BACKOFF_SECONDS;
use tessera_api::status::{Condition, ConditionStatus, Phase};
use tessera_api::{RunProgress, TrainingRun, TrainingRunStatus};

use crate::build::config_map::manifest_config_map;
use crate::build::pod::{WorkerSlot, worker_pod};
use crate::build::pod_group::{GangScheduler, pod_group};
use crate::build::service::headless_service;
use crate::config::OperatorConfig;
use crate::names;

use super::capacity::{GangDemand, QueueOrder, admit};
use super::condition::*;
use super::observed::{PodState, Worker};
use super::{Action, Observed, Plan, RunEvent};

/// Plans the next step of `run`.
pub fn plan(run: &TrainingRun, observed: &Observed, config: &OperatorConfig) -> Plan {
    let mut planner = Planner::new(run, observed, config);
    planner.plan();
    planner.finish()
}

// === the planner ===

struct Planner<'a> {
    run: &'a TrainingRun,
    observed: &'a Observed<'a>,
    config: &'a OperatorConfig,
    workers: Vec<Worker>,
    status: TrainingRunStatus,
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
}

impl<'a> Planner<'a> {
    fn new(run: &'a TrainingRun, observed: &'a Observed<'a>, config: &'a OperatorConfig) -> Self {
        let mut status = run.status.clone().unwrap_or_default();
        status.observed_generation = run.metadata.generation;
        status.total_steps = run.spec.training.steps;
        Planner {
            run,
            observed,
            config,
            workers: observed.pods.iter().map(|p| Worker::observe(p)).collect(),
            status,
            actions: Vec::new(),
            requeue_after: None,
        }
    }

    fn finish(self) -> Plan {
        Plan {
            actions: self.actions,
            status: self.status,
            requeue_after: self.requeue_after,
        }
    }

    fn plan(&mut self) {
        if self.run.metadata.deletion_timestamp.is_some() {
            return self.plan_deletion();
        }
        if !self.run.finalizers().iter().any(|f| f == names::FINALIZER) {
            self.actions.push(Action::AddFinalizer);
        }
        if let Some(phase) = self.status.phase
            && phase.is_terminal()
        {
            return self.plan_finished(phase);
        }
        self.copy_progress();
        if self.run.spec.scheduling.suspend {
            return self.plan_suspended();
        }
        if self.status.phase == Some(Phase::Suspended) {
            self.condition(SUSPENDED, false, "Resumed", "suspend was set to false");
            self.event(
                false,
                "Resumed",
                "resuming from the last checkpoint".into(),
                "Resume",
            );
            self.status.phase = Some(Phase::Pending);
        }
        if self.deadline_passed() {
            return;
        }
        if !self.status.is_true(ADMITTED) && !self.plan_admission() {
            return;
        }
        self.plan_gang();
    }

    // === deletion and the end of a run ===

    /// Stops the pods, then removes the store keys, then the finalizer.
    fn plan_deletion(&mut self) {
        if !self.run.finalizers().iter().any(|f| f == names::FINALIZER) {
            return;
        }
        self.stop_workers(|_| true, Some(self.config.stop_grace));
        if self.workers.is_empty() {
            self.actions.push(Action::DeleteRunKeys);
            self.actions.push(Action::RemoveFinalizer);
        } else {
            self.requeue(self.config.settle_retry);
        }
    }

    /// Succeeded or Failed: nothing left to run; the run is deleted after its TTL.
    fn plan_finished(&mut self, phase: Phase) {
        if phase == Phase::Failed {
            // Pods that finished stay for their logs; live ones give their GPUs back.
            self.stop_workers(|w| w.state.holds_node(), None);
        }
        let Some(ttl) = self.run.spec.scheduling.ttl_seconds_after_finished else {
            return;
        };
        let finished = self
            .status
            .completion_time
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(self.observed.now);
        let remaining = remaining(finished, Duration::from_secs(ttl), self.observed.now);
        if remaining.is_zero() {
            self.actions.push(Action::DeleteRun);
        } else {
            self.requeue(remaining);
        }
    }

    fn finish_run(&mut self, phase: Phase, reason: &str, message: String) {
        let (kind, warning) = match phase {
            Phase::Succeeded => (SUCCEEDED, false),
            _ => (FAILED, true),
        };
        self.status.phase = Some(phase);
        self.status.completion_time = Some(self.now_string());
        self.condition(kind, true, reason, &message);
        self.condition(RUNNING, false, reason, &message);
        if self.status.is_true(RESTARTING) {
            self.condition(RESTARTING, false, reason, &message);
        }
        self.event(warning, reason, message, "Finish");
        self.plan_finished(phase);
    }

    /// `activeDeadlineSeconds`: fails the run once it has been admitted that long.
    fn deadline_passed(&mut self) -> bool {
        let (Some(limit), Some(start)) = (
            self.run.spec.scheduling.active_deadline_seconds,
            self.status.start_time.as_deref().and_then(parse_time),
        ) else {
            return false;
        };
        let remaining = remaining(start, Duration::from_secs(limit), self.observed.now);
        if !remaining.is_zero() {
            self.requeue(remaining);
            return false;
        }
        self.finish_run(
            Phase::Failed,
            "DeadlineExceeded",
            format!("the run was active longer than activeDeadlineSeconds ({limit}s)"),
        );
        true
    }

    // === suspend ===

    fn plan_suspended(&mut self) {
        let kueue_queue = self.kueue_queue();
        if let Some(queue) = kueue_queue
            && self.status.start_time.is_none()
        {
            // Created suspended under Kueue: Kueue admits it by unsuspending it.
            self.status.phase = Some(Phase::Pending);
            let message =
                format!("queued in Kueue LocalQueue {queue}; Kueue unsuspends it when it fits");
            if self.condition(ADMITTED, false, "WaitingForKueue", &message) {
                self.event(false, "WaitingForKueue", message, "Queue");
            }
            return;
        }
        let live = self.workers.iter().filter(|w| w.state.is_live()).count();
        self.stop_workers(|_| true, Some(self.config.stop_grace));
        let message = if live > 0 {
            format!("stopping {live} workers after a checkpoint")
        } else {
            "set spec.scheduling.suspend to false to resume from the last checkpoint".to_string()
        };
        self.status.phase = Some(Phase::Suspended);
        if self.condition(SUSPENDED, true, "Suspended", &message) {
            self.event(false, "Suspended", message.clone(), "Suspend");
        }
        self.condition(ADMITTED, false, "Suspended", "suspended runs hold no GPUs");
        self.condition(RUNNING, false, "Suspended", &message);
        if self.status.is_true(RESTARTING) {
            self.condition(RESTARTING, false, "Suspended", &message);
        }
        if !self.workers.is_empty() {
            self.requeue(self.config.settle_retry);
        }
    }

    fn kueue_queue(&self) -> Option<String> {
        self.run
            .labels()
            .get(names::KUEUE_QUEUE_LABEL)
            .cloned()
            .filter(|q| !q.is_empty())
    }

    // === admission ===

    /// Admits the run when its whole gang fits; returns whether it is admitted.
    fn plan_admission(&mut self) -> bool {
        self.status.phase = Some(Phase::Pending);
        self.stop_workers(|_| true, None);
        if !self.workers.is_empty() {
            let message = format!(
                "waiting for {} pods of the previous gang to stop",
                self.workers.len()
            );
            self.condition(ADMITTED, false, "WaitingForPodsToStop", &message);
            self.requeue(self.config.settle_retry);
            return false;
        }
        let spec = &self.run.spec;
        let (reason, message) = if let Some(queue) = self.kueue_queue() {
            (
                "AdmittedByKueue",
                format!("Kueue LocalQueue {queue} admitted the gang"),
            )
        } else {
            let demand = self.demand(spec.parallelism.nodes);
            let order = QueueOrder::new(
                self.observed.priority,
                self.run.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &self.run.namespace().unwrap_or_default(),
                &self.run.name_any(),
            );
            match admit(self.observed.cluster, self.observed.queue, &order, &demand) {
                Ok(()) => (
                    "GangFits",
                    format!(
                        "{} nodes × {} {} are free",
                        demand.pods, demand.gpus_per_pod, self.config.gpu_resource
                    ),
                ),
                Err(shortfall) => {
                    let message = shortfall.message(&self.config.gpu_resource);
                    let reason_changed = self
                        .status
                        .condition(ADMITTED)
                        .is_none_or(|c| c.reason != "InsufficientResources");
                    self.condition(ADMITTED, false, "InsufficientResources", &message);
                    if reason_changed {
                        self.event(true, "InsufficientResources", message, "Admit");
                    }
                    self.requeue(self.config.pending_retry);
                    return false;
                }
            }
        };
        let generation = self.status.generation.unwrap_or(0) + 1;
        self.status.generation = Some(generation);
        self.status.nodes = Some(spec.parallelism.nodes);
        self.status.phase = Some(Phase::Admitted);
        if self.status.start_time.is_none() {
            self.status.start_time = Some(self.now_string());
        }
        self.condition(ADMITTED, true, reason, &message);
        self.event(
            false,
            reason,
            format!("{message}; starting generation {generation}"),
            "Admit",
        );
        true
    }

    fn demand(&self, nodes: u32) -> GangDemand {
        GangDemand::of_run(self.run, nodes)
    }

    // === the running gang ===

    fn plan_gang(&mut self) {
        let generation = self.status.generation.unwrap_or(1);
        let nodes = self.status.nodes.unwrap_or(self.run.spec.parallelism.nodes);
        // Pods of earlier gangs go first; the new gang waits until they are gone.
        self.stop_workers(|w| w.generation != Some(generation), None);
        let stale = self
            .workers
            .iter()
            .filter(|w| w.generation != Some(generation))
            .count();

        if self.status.phase == Some(Phase::Restarting) {
            let wait = self.backoff_remaining();
            if !wait.is_zero() {
                return self.requeue(wait.max(Duration::from_millis(100)));
            }
        }
        let current: Vec<Worker> = self
            .workers
            .iter()
            .filter(|w| w.generation == Some(generation))
            .cloned()
            .collect();
        if self.handle_failures(&current, generation, nodes) {
            return;
        }
        if stale > 0 {
            let message = format!("waiting for {stale} pods of the previous gang to stop");
            if self.status.phase == Some(Phase::Restarting) {
                self.condition(RESTARTING, true, self.restart_reason().as_str(), &message);
            }
            return self.requeue(self.config.settle_retry);
        }

        if current.len() as u32 >= nodes && current.iter().all(|w| w.state == PodState::Succeeded) {
            return self.finish_run(
                Phase::Succeeded,
                "Completed",
                format!("all {nodes} workers of generation {generation} finished"),
            );
        }

        self.ensure_gang_objects(nodes);
        let present: Vec<u32> = current.iter().filter_map(|w| w.node_rank).collect();
        if present.len() < nodes as usize {
            // New pods mount the manifest: apply it first (a no-op when unchanged).
            self.actions
                .push(Action::ApplyManifest(Box::new(manifest_config_map(
                    self.run,
                ))));
        }
        for rank in (0..nodes).filter(|r| !present.contains(r)) {
            let slot = WorkerSlot {
                generation,
                node_rank: rank,
                nodes,
            };
            self.actions.push(Action::CreatePod(Box::new(worker_pod(
                self.run,
                slot,
                self.config,
            ))));
        }
        if present.len() < nodes as usize && self.status.phase == Some(Phase::Admitted) {
            self.event(
                false,
                "CreatingPods",
                format!(
                    "creating {} workers of generation {generation}",
                    nodes as usize - present.len()
                ),
                "CreatePods",
            );
        }

        let running = current.len() as u32 >= nodes
            && current
                .iter()
                .all(|w| matches!(w.state, PodState::Running | PodState::Succeeded));
        if running {
            let message = self.running_message(generation, nodes);
            self.status.phase = Some(Phase::Running);
            if self.condition(RUNNING, true, "GangRunning", &message) {
                self.event(false, "GangRunning", message.clone(), "Run");
            } else {
                // Keep the message current (restarts by agents, gang size) without an event.
                self.condition(RUNNING, true, "GangRunning", &message);
            }
            if self.status.is_true(RESTARTING) {
                self.condition(RESTARTING, false, "Resumed", &message);
            }
        }
        self.requeue(self.config.progress_resync);
    }

    fn running_message(&self, generation: u64, nodes: u32) -> String {
        let mut message = format!(
            "{nodes} workers of generation {generation} running ({} ranks)",
            u64::from(nodes) * u64::from(self.run.spec.parallelism.gpus_per_node)
        );
        if nodes < self.run.spec.parallelism.nodes {
            message.push_str(&format!(
                "; shrunk from {} nodes",
                self.run.spec.parallelism.nodes
            ));
        }
        if let Some(progress) = &self.observed.progress
            && progress.restarts > 0
        {
            message.push_str(&format!(
                "; {} in-place restarts by agents",
                progress.restarts
            ));
        }
        message
    }

    /// The headless Service, and the PodGroup under a gang scheduler.
    fn ensure_gang_objects(&mut self, nodes: u32) {
        if !self.observed.service_exists {
            self.actions
                .push(Action::ApplyService(Box::new(headless_service(
                    self.run,
                    self.config,
                ))));
        }
        if let Some(scheduler) = GangScheduler::for_run(self.run)
            && self.observed.pod_group_min_member != Some(nodes)
        {
            self.actions.push(Action::ApplyPodGroup {
                scheduler,
                pod_group: Box::new(pod_group(self.run, scheduler, nodes)),
            });
        }
    }

    // === failures ===

    /// Reacts to the first failure of the current gang; returns whether there was one.
    fn handle_failures(&mut self, current: &[Worker], generation: u64, nodes: u32) -> bool {
        let lost: Vec<&Worker> = current.iter().filter(|w| self.node_lost(w)).collect();
        if !lost.is_empty() {
            let names: Vec<&str> = lost.iter().filter_map(|w| w.node.as_deref()).collect();
            let detail = format!("node {} lost (NotReady or gone)", names.join(", "));
            let healthy = current
                .iter()
                .filter(|w| w.state.is_live() && !self.node_lost(w))
                .count() as u32;
            let min_nodes = self.run.spec.fault_tolerance.min_nodes;
            let new_nodes = match min_nodes {
                Some(min) if healthy >= min && healthy < nodes => healthy,
                _ => nodes,
            };
            let detail = if new_nodes < nodes {
                format!(
                    "{detail}; continuing on {new_nodes} of {nodes} nodes (minNodes {})",
                    min_nodes.unwrap_or(nodes)
                )
            } else {
                detail
            };
            self.restart("NodeLost", detail, new_nodes);
            return true;
        }
        if let Some((worker, detail)) = current.iter().find_map(|w| match &w.state {
            PodState::Failed { detail } => Some((w, detail.clone())),
            _ => None,
        }) {
            let detail = format!(
                "pod {} (node rank {}) {detail}",
                worker.name,
                rank_text(worker)
            );
            self.restart("PodFailed", detail, nodes);
            return true;
        }
        if let Some((worker, reason)) = current.iter().find_map(|w| match &w.state {
            PodState::Disrupted { reason } => Some((w, reason.clone())),
            _ => None,
        }) {
            self.preempted(worker, &reason, generation);
            return true;
        }
        let was_running = self.status.phase == Some(Phase::Running);
        let deleted = current
            .iter()
            .find(|w| matches!(w.state, PodState::Terminating { .. }))
            .map(|w| format!("pod {} was deleted", w.name));
        let missing = (was_running && current.len() < nodes as usize).then(|| {
            format!(
                "{} of {nodes} pods of the running gang disappeared",
                nodes as usize - current.len()
            )
        });
        if let Some(detail) = deleted.or(missing) {
            self.restart("PodDeleted", detail, nodes);
            return true;
        }
        false
    }

    /// Whether the worker's node is gone, or NotReady for longer than the grace period.
    fn node_lost(&self, worker: &Worker) -> bool {
        let Some(node_name) = &worker.node else {
            return false;
        };
        if !worker.state.is_live() && !matches!(worker.state, PodState::Terminating { .. }) {
            return false;
        }
        match self.observed.cluster.node(node_name) {
            None => true,
            Some(node) => match &node.readiness {
                super::Readiness::Ready => false,
                super::Readiness::NotReady { since } => {
                    let since = since.unwrap_or(self.observed.now);
                    remaining(since, self.config.node_lost_grace, self.observed.now).is_zero()
                }
            },
        }
    }

    /// Starts a new generation of the gang after a failure, or fails the run when the
    /// restarts are spent.
    fn restart(&mut self, reason: &str, detail: String, nodes: u32) {
        let max = self.run.spec.fault_tolerance.max_restarts;
        if self.status.restarts >= max {
            return self.finish_run(
                Phase::Failed,
                "RestartLimitExceeded",
                format!("{detail}; all {max} restarts (maxRestarts) are spent"),
            );
        }
        let generation = self.status.generation.unwrap_or(0) + 1;
        self.status.restarts += 1;
        self.status.generation = Some(generation);
        self.status.nodes = Some(nodes);
        self.status.phase = Some(Phase::Restarting);
        let delay = backoff(
            self.run.spec.fault_tolerance.backoff_seconds,
            self.status.restarts,
        );
        let message = format!(
            "{detail}; restart {} of {max} at generation {generation} in {}s",
            self.status.restarts,
            delay.as_secs()
        );
        // A fresh condition, so its transition time is when the backoff starts.
        self.status.conditions.retain(|c| c.type_ != RESTARTING);
        self.condition(RESTARTING, true, reason, &message);
        self.condition(RUNNING, false, reason, &message);
        self.event(true, reason, message, "Restart");
        self.stop_workers(|w| w.generation != Some(generation), None);
        self.requeue(delay.max(Duration::from_millis(100)));
    }

    fn restart_reason(&self) -> String {
        self.status
            .condition(RESTARTING)
            .map_or_else(|| "Restarting".to_string(), |c| c.reason.clone())
    }

    /// What is left of the backoff before the restarting gang's pods are created.
    fn backoff_remaining(&self) -> Duration {
        let Some(since) = self
            .status
            .condition(RESTARTING)
            .filter(|c| c.status == ConditionStatus::True)
            .and_then(|c| parse_time(&c.last_transition_time))
        else {
            return Duration::ZERO;
        };
        let delay = backoff(
            self.run.spec.fault_tolerance.backoff_seconds,
            self.status.restarts,
        );
        remaining(since, delay, self.observed.now)
    }

    /// An evicted or preempted pod: the gang stops after a checkpoint (as for suspend) and
    /// waits for admission again. Not the run's fault, so no restart is counted.
    fn preempted(&mut self, worker: &Worker, reason: &str, generation: u64) {
        let condition_reason = if reason.contains("Preempt") {
            "Preempted"
        } else {
            "Evicted"
        };
        let message = format!(
            "pod {} of generation {generation} was disrupted ({reason}); the gang stops after a \
             checkpoint and waits to be admitted again",
            worker.name
        );
        self.stop_workers(|_| true, Some(self.config.stop_grace));
        self.status.phase = Some(Phase::Pending);
        self.condition(ADMITTED, false, condition_reason, &message);
        self.condition(RUNNING, false, condition_reason, &message);
        if self.status.is_true(RESTARTING) {
            self.condition(RESTARTING, false, condition_reason, &message);
        }
        self.event(true, condition_reason, message, "Preempt");
        self.requeue(self.config.settle_retry);
    }

    // === helpers ===

    /// Deletes the live workers `select` picks, and force-deletes any stuck Terminating on a
    /// dead node longer than the timeout since its deletion was asked for. Removes nothing from `self.workers`: the planner waits for
    /// the API server to confirm each pod is gone.
    fn stop_workers(&mut self, select: impl Fn(&Worker) -> bool, grace: Option<Duration>) {
        let mut stuck_soonest: Option<Duration> = None;
        for worker in self.workers.iter().filter(|w| select(w)) {
            match &worker.state {
                PodState::Terminating { requested } => {
                    let node_dead = worker.node.as_deref().is_none_or(|n| {
                        self.observed
                            .cluster
                            .node(n)
                            .is_none_or(|node| !node.is_ready())
                    });
                    if !node_dead {
                        continue;
                    }
                    // The grace period is moot on a dead node: nothing will ever stop the pod.
                    let requested = requested.unwrap_or(self.observed.now);
                    let wait = remaining(
                        requested,
                        self.config.terminating_timeout,
                        self.observed.now,
                    );
                    if wait.is_zero() {
                        self.actions.push(Action::ForceDeletePod {
                            name: worker.name.clone(),
                        });
                    } else {
                        stuck_soonest = Some(stuck_soonest.map_or(wait, |s| s.min(wait)));
                    }
                }
                _ => self.actions.push(Action::DeletePod {
                    name: worker.name.clone(),
                    grace,
                }),
            }
        }
        if let Some(wait) = stuck_soonest {
            self.requeue(wait);
        }
    }

    fn copy_progress(&mut self) {
        let Some(progress) = &self.observed.progress else {
            return;
        };
        let RunProgress {
            step,
            loss,
            val_loss,
            tokens_per_second,
            last_checkpoint,
            ..
        } = progress.clone();
        self.status.step = Some(step);
        self.status.loss = loss.filter(|l| l.is_finite()).or(self.status.loss);
        self.status.val_loss = val_loss.filter(|l| l.is_finite()).or(self.status.val_loss);
        self.status.tokens_per_second = tokens_per_second.filter(|t| t.is_finite());
        if last_checkpoint.is_some() {
            self.status.last_checkpoint = last_checkpoint;
        }
    }

    /// Sets a condition; returns whether its status changed.
    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) -> bool {
        self.status.set_condition(Condition {
            type_: type_.to_string(),
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time: self.now_string(),
            observed_generation: self.run.metadata.generation,
        })
    }

    fn event(&mut self, warning: bool, reason: &str, note: String, action: &'static str) {
        self.actions.push(Action::Emit(RunEvent {
            warning,
            reason: reason.to_string(),
            note,
            action,
        }));
    }

    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |r| r.min(after)));
    }

    fn now_string(&self) -> String {
        self.observed.now.to_string()
    }
}

fn rank_text(worker: &Worker) -> String {
    worker
        .node_rank
        .map_or_else(|| "?".to_string(), |r| r.to_string())
}

/// The delay before restart number `restart` (1-based): `base` doubled per earlier restart,
/// at most a day.
pub fn backoff(base_seconds: u32, restart: u32) -> Duration {
    let doublings = restart.saturating_sub(1).min(31);
    let seconds = u64::from(base_seconds).saturating_mul(1u64 << doublings);
    Duration::from_secs(seconds.min(u64::from(MAX_BACKOFF_SECONDS)))
}

/// How long until `since + span`, zero when that moment has passed.
fn remaining(since: Timestamp, span: Duration, now: Timestamp) -> Duration {
    let span = SignedDuration::try_from(span).unwrap_or(SignedDuration::MAX);
    let Ok(until) = since.checked_add(span) else {
        return Duration::MAX;
    };
    let left = now.duration_until(until);
    if left.is_negative() || left.is_zero() {
        Duration::ZERO
    } else {
        Duration::try_from(left).unwrap_or(Duration::MAX)
    }
}

fn parse_time(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}
