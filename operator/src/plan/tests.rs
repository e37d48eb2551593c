//! Every transition of the planner, driven through a small simulated world: the tests apply
//! each plan's actions to in-memory pods (as the executor and the API server would), play the
//! scheduler and the kubelet by hand, and advance the clock.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tessera_api::status::{CheckpointRef, ConditionStatus, Phase};
use tessera_api::{RunProgress, TrainingRun};

use super::capacity::{Cluster, GangDemand, QueueState, QueuedRun};
use super::condition::*;
use super::{Action, Observed, Plan, plan};
use crate::config::OperatorConfig;
use crate::fixtures::{self, bind, disrupt, epoch, gpu_node, set_node_ready, set_phase};
use crate::names;

const GPU: &str = "nvidia.com/gpu";

// === the simulated world ===

struct World {
    run: TrainingRun,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    /// Pods of other workloads holding GPUs.
    foreign: Vec<Pod>,
    queue: Vec<QueuedRun>,
    priority: i32,
    progress: Option<RunProgress>,
    service_exists: bool,
    pod_group_min_member: Option<u32>,
    now: Timestamp,
    config: OperatorConfig,
    deleted: bool,
    keys_deleted: bool,
    /// Manifest ConfigMaps applied, in order.
    manifests: Vec<String>,
    last: Option<Plan>,
}

impl World {
    fn new(run: TrainingRun, nodes: Vec<Node>) -> World {
        World {
            run,
            pods: Vec::new(),
            nodes,
            foreign: Vec::new(),
            queue: Vec::new(),
            priority: 0,
            progress: None,
            service_exists: false,
            pod_group_min_member: None,
            now: epoch(),
            config: OperatorConfig::default(),
            deleted: false,
            keys_deleted: false,
            manifests: Vec::new(),
            last: None,
        }
    }

    /// `count` Ready nodes with `gpus` GPUs each, named node-0...
    fn with_nodes(run: TrainingRun, count: usize, gpus: u64) -> World {
        let nodes = (0..count)
            .map(|i| gpu_node(&format!("node-{i}"), GPU, gpus))
            .collect();
        World::new(run, nodes)
    }

    /// Plans once and applies the plan as the executor and an obliging API server would.
    fn step(&mut self) -> Plan {
        let mut all_pods: Vec<&Pod> = self.pods.iter().collect();
        all_pods.extend(self.foreign.iter());
        let cluster = Cluster::observe(self.nodes.iter(), all_pods, GPU);
        let observed = Observed {
            pods: self.pods.iter().collect(),
            service_exists: self.service_exists,
            pod_group_min_member: self.pod_group_min_member,
            cluster: &cluster,
            queue: &self.queue,
            priority: self.priority,
            progress: self.progress.clone(),
            now: self.now,
        };
        let plan = plan(&self.run, &observed, &self.config);
        for action in &plan.actions {
            self.apply(action);
        }
        self.run.status = Some(plan.status.clone());
        self.last = Some(plan.clone());
        plan
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::AddFinalizer => self
                .run
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(names::FINALIZER.to_string()),
            Action::RemoveFinalizer => {
                self.run.metadata.finalizers = None;
                self.deleted = true;
            }
            Action::ApplyService(_) => self.service_exists = true,
            Action::ApplyManifest(map) => self.manifests.push(map.metadata.name.clone().unwrap()),
            Action::ApplyPodGroup { pod_group, .. } => {
                self.pod_group_min_member = pod_group.data["spec"]["minMember"]
                    .as_u64()
                    .map(|m| m as u32)
            }
            Action::CreatePod(pod) => {
                let name = pod.metadata.name.clone();
                if !self.pods.iter().any(|p| p.metadata.name == name) {
                    self.pods.push((**pod).clone());
                }
            }
            Action::DeletePod { name, .. } => {
                // A pod on a dead node cannot confirm: it stays Terminating.
                let now = self.now;
                let dead_nodes: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| !node_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                let mut keep = Vec::new();
                for mut pod in std::mem::take(&mut self.pods) {
                    if pod.metadata.name.as_deref() == Some(name) {
                        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                        if node.is_some_and(|n| dead_nodes.contains(&n)) {
                            pod.metadata.deletion_timestamp.get_or_insert(Time(now));
                            keep.push(pod);
                        }
                    } else {
                        keep.push(pod);
                    }
                }
                self.pods = keep;
            }
            Action::ForceDeletePod { name } => self
                .pods
                .retain(|p| p.metadata.name.as_deref() != Some(name)),
            Action::DeleteRunKeys => self.keys_deleted = true,
            Action::DeleteRun => self.deleted = true,
            Action::Emit(_) => {}
        }
    }

    fn advance(&mut self, seconds: i64) {
        self.now += SignedDuration::from_secs(seconds);
    }

    /// The scheduler: binds every unbound pod to a distinct ready node with room.
    fn schedule(&mut self) {
        let mut free: Vec<(String, u64)> = self
            .nodes
            .iter()
            .filter(|n| node_ready(n))
            .map(|n| (n.metadata.name.clone().unwrap(), gpus(n)))
            .collect();
        let all: Vec<Pod> = self
            .pods
            .iter()
            .chain(self.foreign.iter())
            .cloned()
            .collect();
        for pod in &all {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref())
                && let Some(entry) = free.iter_mut().find(|(n, _)| n == node)
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded")
            {
                entry.1 = entry.1.saturating_sub(super::capacity::pod_gpus(pod, GPU));
            }
        }
        let per_pod = u64::from(self.run.spec.parallelism.gpus_per_node);
        for i in 0..self.pods.len() {
            if self.pods[i]
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
            {
                continue;
            }
            let generation = label(&self.pods[i], names::LABEL_GENERATION);
            let taken: Vec<String> = self
                .pods
                .iter()
                .filter(|p| label(p, names::LABEL_GENERATION) == generation)
                .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                .collect();
            if let Some(entry) = free
                .iter_mut()
                .find(|(n, f)| *f >= per_pod && !taken.contains(n))
            {
                entry.1 -= per_pod;
                let node = entry.0.clone();
                bind(&mut self.pods[i], &node);
            }
        }
    }

    /// The kubelet: every bound pod is running.
    fn run_pods(&mut self) {
        for pod in &mut self.pods {
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
                && pod.metadata.deletion_timestamp.is_none()
            {
                set_phase(pod, "Running", 0);
            }
        }
    }

    /// Plans, schedules and runs until the gang is Running.
    fn start(&mut self) {
        for _ in 0..4 {
            self.step();
            self.schedule();
            self.run_pods();
        }
        self.step();
        assert_eq!(self.phase(), Some(Phase::Running), "{:#?}", self.run.status);
    }

    fn pod_mut(&mut self, rank: u32) -> &mut Pod {
        let generation = self.status().generation.unwrap();
        self.pods
            .iter_mut()
            .find(|p| {
                label(p, names::LABEL_GENERATION) == Some(generation.to_string())
                    && label(p, names::LABEL_NODE_RANK) == Some(rank.to_string())
            })
            .expect("the pod of that rank exists")
    }

    fn status(&self) -> tessera_api::TrainingRunStatus {
        self.run.status.clone().unwrap_or_default()
    }

    fn phase(&self) -> Option<Phase> {
        self.status().phase
    }

    fn condition(&self, type_: &str) -> (ConditionStatus, String, String) {
        let status = self.status();
        let c = status
            .condition(type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {:#?}", status.conditions));
        (c.status, c.reason.clone(), c.message.clone())
    }

    fn actions(&self) -> &[Action] {
        &self.last.as_ref().expect("stepped").actions
    }

    fn created(&self) -> Vec<String> {
        self.actions()
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => p.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<String> {
        self.actions()
            .iter()
            .filter_map(|a| match a {
                Action::Emit(e) => Some(e.reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn generation_pods(&self, generation: u64) -> usize {
        self.pods
            .iter()
            .filter(|p| label(p, names::LABEL_GENERATION) == Some(generation.to_string()))
            .count()
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn gpus(node: &Node) -> u64 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(GPU))
        .map_or(0, |q| q.0.parse().unwrap())
}

fn label(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(key).cloned()
}

fn foreign_pod(node: &str, gpus: u64) -> Pod {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("other-{node}"), "namespace": "default"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {GPU: gpus.to_string()}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    bind(&mut pod, node);
    pod
}

// === admission ===

#[test]
fn a_gang_that_fits_is_admitted_and_gets_a_service_and_one_pod_per_node() {
    let mut world = World::with_nodes(fixtures::run("gpt").nodes(2).gpus_per_node(8).build(), 3, 8);
    let plan = world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
    let (status, reason, message) = world.condition(ADMITTED);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::True, "GangFits")
    );
    assert!(message.contains("2 nodes × 8 nvidia.com/gpu"), "{message}");
    assert_eq!(world.status().generation, Some(1));
    assert_eq!(world.status().nodes, Some(2));
    assert!(world.status().start_time.is_some());
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::ApplyService(_)))
    );
    assert_eq!(world.created(), vec!["gpt-g1-0", "gpt-g1-1"]);
    let manifest_first = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::ApplyManifest(_)))
        .expect("the manifest is applied");
    let first_pod = plan
        .actions
        .iter()
        .position(|a| matches!(a, Action::CreatePod(_)))
        .unwrap();
    assert!(
        manifest_first < first_pod,
        "the manifest comes before the pods mounting it"
    );
    assert_eq!(world.manifests, vec!["gpt-manifest"]);
    assert!(world.events().contains(&"GangFits".to_string()));
    assert_eq!(plan.requeue_after, Some(world.config.progress_resync));

    // Planning again before the cache shows the pods asks for them again (server-side apply
    // makes that harmless), but never for a second service once it exists.
    world.step();
    assert!(world.created().is_empty());
    assert!(
        !world
            .actions()
            .iter()
            .any(|a| matches!(a, Action::ApplyService(_)))
    );
}

#[test]
fn a_gang_that_does_not_fit_stays_pending_with_the_numbers() {
    let mut world = World::with_nodes(fixtures::run("big").nodes(3).gpus_per_node(8).build(), 3, 8);
    world.foreign.push(foreign_pod("node-2", 4));
    let plan = world.step();
    assert_eq!(world.phase(), Some(Phase::Pending));
    let (status, reason, message) = world.condition(ADMITTED);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "InsufficientResources")
    );
    assert_eq!(
        message,
        "needs 3 nodes with 8 free nvidia.com/gpu each; 2 of 3 eligible nodes have room \
         (4 of 24 nvidia.com/gpu in use)"
    );
    assert!(world.created().is_empty());
    assert_eq!(world.events(), vec!["InsufficientResources"]);
    assert_eq!(plan.requeue_after, Some(world.config.pending_retry));

    // No second event while nothing changes; admitted once the foreign pod is gone.
    world.step();
    assert!(world.events().is_empty());
    world.foreign.clear();
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
    assert_eq!(world.created().len(), 3);
}

#[test]
fn only_ready_schedulable_matching_tolerated_nodes_count() {
    let run = fixtures::run("picky")
        .nodes(3)
        .gpus_per_node(4)
        .node_selector("gpu", "h100")
        .toleration("dedicated")
        .build();
    let mut nodes: Vec<Node> = (0..5).map(|i| gpu_node(&format!("n{i}"), GPU, 4)).collect();
    for node in &mut nodes {
        fixtures::label_node(node, "gpu", "h100");
    }
    set_node_ready(&mut nodes[0], false, epoch());
    nodes[1].spec.as_mut().unwrap().unschedulable = Some(true);
    fixtures::taint_node(&mut nodes[2], "maintenance", "NoSchedule");
    fixtures::taint_node(&mut nodes[3], "dedicated", "NoSchedule"); // tolerated
    let mut world = World::new(run, nodes);
    world.step();
    let (_, reason, message) = world.condition(ADMITTED);
    assert_eq!(reason, "InsufficientResources");
    assert!(
        message.contains("2 of 2 eligible nodes have room"),
        "{message}"
    );
    // n4 loses its label: one eligible node is not enough.
    world.nodes[4]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("gpu");
    world.step();
    let (_, _, message) = world.condition(ADMITTED);
    assert!(
        message.contains("1 of 1 eligible node has room"),
        "{message}"
    );
    world.nodes[4]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("gpu".into(), "h100".into());
    world.nodes[1].spec.as_mut().unwrap().unschedulable = Some(false);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
}

fn waiting(name: &str, priority: i32, age_seconds: i64, pods: u32) -> QueuedRun {
    QueuedRun {
        namespace: "ml".into(),
        name: name.into(),
        priority,
        created: Some(epoch() - SignedDuration::from_secs(age_seconds)),
        demand: GangDemand {
            pods,
            gpus_per_pod: 8,
            ..GangDemand::default()
        },
        state: QueueState::Waiting,
    }
}

#[test]
fn waiting_runs_are_admitted_by_priority_then_age() {
    let run = || fixtures::run("me").nodes(2).gpus_per_node(8).build();
    // An older run of the same priority goes first and takes 2 of the 3 nodes.
    let mut world = World::with_nodes(run(), 3, 8);
    world.queue = vec![waiting("older", 0, 60, 2)];
    world.step();
    let (_, reason, message) = world.condition(ADMITTED);
    assert_eq!(reason, "InsufficientResources");
    assert!(
        message.contains("1 run ahead in the queue leaves 1 with room"),
        "{message}"
    );

    // A younger run of the same priority waits behind this one.
    let mut world = World::with_nodes(run(), 3, 8);
    world.queue = vec![waiting("younger", 0, -60, 2)];
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));

    // A higher priority beats age; a lower one does not.
    let mut world = World::with_nodes(run(), 3, 8);
    world.queue = vec![waiting("urgent", 10, -60, 2)];
    world.step();
    assert_eq!(world.phase(), Some(Phase::Pending));
    let mut world = World::with_nodes(run(), 3, 8);
    world.priority = 10;
    world.queue = vec![waiting("older-but-low", 0, 60, 2)];
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));

    // A run ahead that cannot fit anyway does not block this one (best effort).
    let mut world = World::with_nodes(run(), 3, 8);
    world.queue = vec![waiting("huge", 0, 60, 5)];
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
}

#[test]
fn admitted_gangs_not_yet_placed_reserve_their_gpus() {
    let mut world = World::with_nodes(
        fixtures::run("late").nodes(2).gpus_per_node(8).build(),
        3,
        8,
    );
    let mut placing = waiting("admitted-first", -5, -60, 2);
    placing.state = QueueState::Placing;
    world.queue = vec![placing];
    world.step();
    let (_, reason, _) = world.condition(ADMITTED);
    assert_eq!(reason, "InsufficientResources");
}

#[test]
fn a_kueue_run_created_suspended_is_left_to_kueue_until_unsuspended() {
    let run = fixtures::run("queued")
        .kueue_queue("team-a")
        .suspended()
        .build();
    let mut world = World::with_nodes(run, 0, 0);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Pending));
    let (status, reason, message) = world.condition(ADMITTED);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "WaitingForKueue")
    );
    assert!(message.contains("team-a"));
    assert!(world.created().is_empty());
    assert!(
        world
            .run
            .status
            .as_ref()
            .unwrap()
            .condition(SUSPENDED)
            .is_none()
    );

    // Kueue unsuspends it: admitted without the operator's own capacity check.
    world.run.spec.scheduling.suspend = false;
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
    assert_eq!(world.condition(ADMITTED).1, "AdmittedByKueue");
    assert_eq!(world.created().len(), 2);
}

// === the gang ===

#[test]
fn a_gang_becomes_running_copies_progress_and_succeeds() {
    let mut world = World::with_nodes(fixtures::run("ok").build(), 2, 1);
    world.step();
    world.schedule();
    world.step();
    assert_eq!(
        world.phase(),
        Some(Phase::Admitted),
        "bound but not running yet"
    );
    world.run_pods();
    world.progress = Some(RunProgress {
        generation: 1,
        step: 42,
        loss: Some(2.5),
        val_loss: Some(f64::NAN),
        tokens_per_second: Some(1234.0),
        last_checkpoint: Some(CheckpointRef {
            step: 40,
            path: "/ckpt/step-0000000040".into(),
            time: epoch().to_string(),
        }),
        restarts: 1,
    });
    world.step();
    assert_eq!(world.phase(), Some(Phase::Running));
    let (status, reason, message) = world.condition(RUNNING);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::True, "GangRunning")
    );
    assert!(
        message.contains("1 in-place restarts by agents"),
        "{message}"
    );
    assert_eq!(world.events(), vec!["GangRunning"]);
    let status = world.status();
    assert_eq!(status.step, Some(42));
    assert_eq!(status.total_steps, Some(100));
    assert_eq!(status.loss, Some(2.5));
    assert_eq!(status.val_loss, None, "a NaN is not reported");
    assert_eq!(status.tokens_per_second, Some(1234.0));
    assert_eq!(status.last_checkpoint.as_ref().map(|c| c.step), Some(40));
    assert_eq!(status.observed_generation, Some(1));

    world.step();
    assert!(world.events().is_empty(), "no event without a transition");

    for rank in 0..2 {
        set_phase(world.pod_mut(rank), "Succeeded", 0);
    }
    world.step();
    assert_eq!(world.phase(), Some(Phase::Succeeded));
    assert_eq!(world.condition(SUCCEEDED).0, ConditionStatus::True);
    assert_eq!(world.condition(RUNNING).0, ConditionStatus::False);
    assert!(world.status().completion_time.is_some());
    assert_eq!(world.events(), vec!["Completed"]);
    // Finished pods are kept (their logs), and nothing more happens.
    world.step();
    assert!(world.actions().is_empty(), "{:?}", world.actions());
    assert_eq!(world.pods.len(), 2);
}

#[test]
fn a_failed_pod_restarts_the_whole_gang_at_the_next_generation_after_backoff() {
    let run = fixtures::run("flaky")
        .backoff_seconds(10)
        .max_restarts(3)
        .build();
    let mut world = World::with_nodes(run, 2, 1);
    world.start();
    set_phase(world.pod_mut(1), "Failed", 3);
    world.step();
    let status = world.status();
    assert_eq!(status.phase, Some(Phase::Restarting));
    assert_eq!(status.generation, Some(2));
    assert_eq!(status.restarts, 1);
    let (restarting, reason, message) = world.condition(RESTARTING);
    assert_eq!(
        (restarting, reason.as_str()),
        (ConditionStatus::True, "PodFailed")
    );
    assert!(
        message.contains("pod flaky-g1-1 (node rank 1) exited with code 3 (Error)"),
        "{message}"
    );
    assert!(
        message.contains("restart 1 of 3 at generation 2 in 10s"),
        "{message}"
    );
    assert_eq!(world.condition(RUNNING).0, ConditionStatus::False);
    assert_eq!(world.events(), vec!["PodFailed"]);
    assert_eq!(world.generation_pods(1), 0, "the old gang is deleted");
    assert_eq!(
        world.last.as_ref().unwrap().requeue_after,
        Some(Duration::from_secs(10))
    );

    // Inside the backoff nothing is created.
    world.advance(5);
    world.step();
    assert!(world.created().is_empty());
    assert_eq!(
        world.last.as_ref().unwrap().requeue_after,
        Some(Duration::from_secs(5))
    );
    world.advance(5);
    world.step();
    assert_eq!(world.created(), vec!["flaky-g2-0", "flaky-g2-1"]);
    world.schedule();
    world.run_pods();
    world.step();
    assert_eq!(world.phase(), Some(Phase::Running));
    assert_eq!(world.condition(RESTARTING).0, ConditionStatus::False);
    assert_eq!(world.condition(RESTARTING).1, "Resumed");

    // The second restart waits twice as long.
    set_phase(world.pod_mut(0), "Failed", 1);
    world.step();
    assert_eq!(world.status().restarts, 2);
    assert_eq!(
        world.last.as_ref().unwrap().requeue_after,
        Some(Duration::from_secs(20))
    );
    world.advance(19);
    world.step();
    assert!(world.created().is_empty());
    world.advance(1);
    world.step();
    assert_eq!(world.created(), vec!["flaky-g3-0", "flaky-g3-1"]);
}

#[test]
fn restarts_beyond_max_restarts_fail_the_run() {
    let run = fixtures::run("doomed")
        .backoff_seconds(0)
        .max_restarts(1)
        .build();
    let mut world = World::with_nodes(run, 2, 1);
    world.start();
    set_phase(world.pod_mut(0), "Failed", 1);
    world.step();
    assert_eq!(world.status().restarts, 1);
    world.start();
    set_phase(world.pod_mut(0), "Failed", 1);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Failed));
    let (failed, reason, message) = world.condition(FAILED);
    assert_eq!(
        (failed, reason.as_str()),
        (ConditionStatus::True, "RestartLimitExceeded")
    );
    assert!(
        message.contains("all 1 restarts (maxRestarts) are spent"),
        "{message}"
    );
    assert_eq!(world.events(), vec!["RestartLimitExceeded"]);
    assert_eq!(
        world.generation_pods(2),
        1,
        "the failed pod stays for its logs"
    );
    assert!(world.status().completion_time.is_some());
}

#[test]
fn a_node_not_ready_past_the_grace_period_restarts_the_gang() {
    let mut world = World::with_nodes(fixtures::run("lost").backoff_seconds(0).build(), 3, 1);
    world.start();
    let node = world
        .pod_mut(1)
        .spec
        .as_ref()
        .unwrap()
        .node_name
        .clone()
        .unwrap();
    let index = world
        .nodes
        .iter()
        .position(|n| n.metadata.name.as_ref() == Some(&node))
        .unwrap();
    let since = world.now;
    set_node_ready(&mut world.nodes[index], false, since);
    world.advance(30);
    world.step();
    assert_eq!(
        world.phase(),
        Some(Phase::Running),
        "within the grace period"
    );
    world.advance(31);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Restarting));
    let (_, reason, message) = world.condition(RESTARTING);
    assert_eq!(reason, "NodeLost");
    assert!(message.contains(&format!("node {node} lost")), "{message}");
    assert_eq!(
        world.status().nodes,
        Some(2),
        "not elastic: the full gang again"
    );

    // The pod on the dead node stays Terminating; the new gang waits for it, and it is
    // force-deleted after the timeout.
    assert_eq!(world.generation_pods(1), 1);
    world.step();
    assert!(world.created().is_empty());
    assert_eq!(
        world.condition(RESTARTING).2,
        "waiting for 1 pods of the previous gang to stop"
    );
    world.advance(world.config.terminating_timeout.as_secs() as i64);
    world.step();
    assert!(
        world
            .actions()
            .iter()
            .any(|a| matches!(a, Action::ForceDeletePod { name } if name == "lost-g1-1")),
        "{:?}",
        world.actions()
    );
    world.step();
    assert_eq!(world.created(), vec!["lost-g2-0", "lost-g2-1"]);
    world.schedule();
    world.run_pods();
    world.step();
    assert_eq!(world.phase(), Some(Phase::Running));
    assert!(
        world
            .pods
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_ref() != Some(&node))
    );
}

#[test]
fn an_elastic_run_shrinks_to_its_healthy_pods_when_min_nodes_allows() {
    let run = fixtures::run("elastic")
        .nodes(3)
        .min_nodes(2)
        .backoff_seconds(0)
        .build();
    let mut world = World::with_nodes(run, 3, 1);
    world.start();
    world.nodes.remove(2);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Restarting));
    assert_eq!(world.status().nodes, Some(2));
    let message = world.condition(RESTARTING).2;
    assert!(
        message.contains("continuing on 2 of 3 nodes (minNodes 2)"),
        "{message}"
    );
    world.step();
    assert_eq!(world.created(), vec!["elastic-g2-0", "elastic-g2-1"]);
    world.schedule();
    world.run_pods();
    world.step();
    assert_eq!(world.phase(), Some(Phase::Running));
    assert!(world.condition(RUNNING).2.contains("shrunk from 3 nodes"));
    let world_size = world.pods.iter().find_map(|p| {
        p.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == "WORLD_SIZE")?
            .value
            .clone()
    });
    assert_eq!(world_size.as_deref(), Some("2"));

    // Below minNodes it does not shrink further: the full (shrunk) gang restarts.
    world.nodes.remove(1);
    world.step();
    assert_eq!(world.status().nodes, Some(2));
}

#[test]
fn an_evicted_or_preempted_gang_stops_gracefully_and_waits_for_admission_again() {
    for (reason, expected) in [
        ("PreemptionByScheduler", "Preempted"),
        ("EvictionByEvictionAPI", "Evicted"),
    ] {
        let mut world = World::with_nodes(fixtures::run("victim").build(), 2, 1);
        world.start();
        disrupt(world.pod_mut(0), reason);
        world.step();
        assert_eq!(world.phase(), Some(Phase::Pending), "{reason}");
        let (admitted, why, _) = world.condition(ADMITTED);
        assert_eq!((admitted, why.as_str()), (ConditionStatus::False, expected));
        assert_eq!(world.status().restarts, 0, "not the run's fault");
        assert!(world.actions().iter().all(|a| !matches!(
            a,
            Action::DeletePod { grace, .. } if *grace != Some(world.config.stop_grace)
        )));
        assert_eq!(world.pods.len(), 0);
        world.step();
        assert_eq!(world.phase(), Some(Phase::Admitted));
        assert_eq!(world.status().generation, Some(2));
        assert_eq!(world.created(), vec!["victim-g2-0", "victim-g2-1"]);
    }
}

#[test]
fn a_deleted_or_vanished_pod_of_a_running_gang_restarts_it() {
    let mut world = World::with_nodes(fixtures::run("gone").backoff_seconds(0).build(), 2, 1);
    world.start();
    world.pods.remove(0);
    world.step();
    assert_eq!(world.condition(RESTARTING).1, "PodDeleted");
    assert_eq!(world.status().generation, Some(2));
}

#[test]
fn a_pod_stuck_terminating_on_a_dead_node_is_force_deleted_after_the_timeout() {
    let mut world = World::with_nodes(fixtures::run("stuck").suspended().build(), 2, 1);
    world.run.spec.scheduling.suspend = false;
    world.start();
    let since = world.now;
    for node in &mut world.nodes {
        set_node_ready(node, false, since);
    }
    world.run.spec.scheduling.suspend = true;
    world.step();
    assert_eq!(world.pods.len(), 2, "Terminating on dead nodes");
    assert!(
        world
            .pods
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
    );
    let timeout = world.config.terminating_timeout.as_secs() as i64;
    world.advance(timeout - 1);
    world.step();
    assert!(
        !world
            .actions()
            .iter()
            .any(|a| matches!(a, Action::ForceDeletePod { .. }))
    );
    assert_eq!(
        world.last.as_ref().unwrap().requeue_after,
        Some(Duration::from_secs(1))
    );
    world.advance(1);
    world.step();
    let forced = world
        .actions()
        .iter()
        .filter(|a| matches!(a, Action::ForceDeletePod { .. }))
        .count();
    assert_eq!(forced, 2);
}

// === lifecycle ===

#[test]
fn suspend_stops_the_pods_with_a_grace_period_and_resume_starts_a_new_generation() {
    let mut world = World::with_nodes(fixtures::run("pausable").build(), 2, 1);
    world.start();
    world.run.spec.scheduling.suspend = true;
    world.step();
    assert_eq!(world.phase(), Some(Phase::Suspended));
    let grace = world.config.stop_grace;
    let deletes: Vec<_> = world
        .actions()
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { grace, .. } => Some(*grace),
            _ => None,
        })
        .collect();
    assert_eq!(deletes, vec![Some(grace), Some(grace)]);
    assert_eq!(world.condition(SUSPENDED).0, ConditionStatus::True);
    assert_eq!(world.condition(ADMITTED).0, ConditionStatus::False);
    assert_eq!(world.condition(RUNNING).0, ConditionStatus::False);
    assert_eq!(world.events(), vec!["Suspended"]);
    world.step();
    assert!(world.actions().is_empty());

    world.run.spec.scheduling.suspend = false;
    world.step();
    assert_eq!(world.phase(), Some(Phase::Admitted));
    assert_eq!(world.condition(SUSPENDED).0, ConditionStatus::False);
    assert_eq!(world.status().generation, Some(2));
    assert_eq!(world.status().restarts, 0);
    assert_eq!(world.created(), vec!["pausable-g2-0", "pausable-g2-1"]);
    assert!(world.events().contains(&"Resumed".to_string()));
}

#[test]
fn a_run_created_suspended_never_starts_until_resumed() {
    let mut world = World::with_nodes(fixtures::run("later").suspended().build(), 2, 1);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Suspended));
    assert!(world.created().is_empty());
    assert!(world.status().generation.is_none());
}

#[test]
fn active_deadline_fails_a_run_that_runs_too_long() {
    let mut world = World::with_nodes(
        fixtures::run("slow").active_deadline_seconds(600).build(),
        2,
        1,
    );
    world.start();
    let plan = world.step();
    assert!(plan.requeue_after.unwrap() <= Duration::from_secs(600));
    world.advance(600);
    world.step();
    assert_eq!(world.phase(), Some(Phase::Failed));
    assert_eq!(world.condition(FAILED).1, "DeadlineExceeded");
    assert_eq!(world.pods.len(), 0, "a failed run's pods are stopped");
}

#[test]
fn a_finished_run_is_deleted_after_its_ttl() {
    let mut world = World::with_nodes(
        fixtures::run("done").ttl_seconds_after_finished(60).build(),
        2,
        1,
    );
    world.start();
    for rank in 0..2 {
        set_phase(world.pod_mut(rank), "Succeeded", 0);
    }
    let plan = world.step();
    assert_eq!(world.phase(), Some(Phase::Succeeded));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));
    world.advance(59);
    world.step();
    assert!(!world.deleted);
    world.advance(1);
    world.step();
    assert!(world.actions().contains(&Action::DeleteRun));
}

#[test]
fn the_finalizer_is_added_first_and_removed_after_pods_and_store_keys() {
    let mut world = World::with_nodes(fixtures::run("tidy").without_finalizer().build(), 2, 1);
    world.step();
    assert_eq!(world.actions()[0], Action::AddFinalizer);
    world.start();
    let now = world.now;
    world.run.metadata.deletion_timestamp = Some(Time(now));
    world.step();
    let deletes = world
        .actions()
        .iter()
        .filter(|a| matches!(a, Action::DeletePod { .. }))
        .count();
    assert_eq!(deletes, 2);
    // The simulated kubelet removed them at once; the next plan cleans the store up.
    assert!(!world.actions().contains(&Action::RemoveFinalizer));
    world.step();
    assert_eq!(
        world.actions(),
        &[Action::DeleteRunKeys, Action::RemoveFinalizer]
    );
    assert!(world.deleted && world.keys_deleted);
}

#[test]
fn a_deleting_run_without_the_finalizer_is_left_to_the_garbage_collector() {
    let run = fixtures::run("bye")
        .without_finalizer()
        .deleting(epoch())
        .build();
    let mut world = World::with_nodes(run, 1, 1);
    world.step();
    assert!(world.actions().is_empty());
}

#[test]
fn a_gang_scheduler_gets_a_pod_group_with_the_gang_size() {
    let run = fixtures::run("gang")
        .nodes(2)
        .scheduler_name("volcano")
        .build();
    let mut world = World::with_nodes(run, 2, 1);
    world.step();
    let group = world
        .actions()
        .iter()
        .find_map(|a| match a {
            Action::ApplyPodGroup { pod_group, .. } => Some(pod_group.clone()),
            _ => None,
        })
        .expect("a pod group");
    assert_eq!(group.data["spec"]["minMember"], 2);
    assert_eq!(
        group.types.as_ref().unwrap().api_version,
        "scheduling.volcano.sh/v1beta1"
    );
    world.step();
    assert!(
        !world
            .actions()
            .iter()
            .any(|a| matches!(a, Action::ApplyPodGroup { .. }))
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    use super::lifecycle::backoff;
    assert_eq!(backoff(5, 1), Duration::from_secs(5));
    assert_eq!(backoff(5, 2), Duration::from_secs(10));
    assert_eq!(backoff(5, 4), Duration::from_secs(40));
    assert_eq!(backoff(0, 9), Duration::ZERO);
    assert_eq!(backoff(86_400, 10_000), Duration::from_secs(86_400));
}

#[test]
fn force_deletion_counts_from_the_delete_request_not_the_grace_period() {
    let mut world = World::with_nodes(fixtures::run("graceful").build(), 2, 1);
    world.start();
    let since = world.now;
    set_node_ready(&mut world.nodes[0], false, since);
    // The pod on the dead node was deleted with the long stop grace period: its deletion
    // timestamp (the deadline) is far off, but the request was made now.
    let grace = world.config.stop_grace.as_secs() as i64;
    let deadline = world.now + SignedDuration::from_secs(grace);
    let pod = world
        .pods
        .iter_mut()
        .find(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-0"))
        .expect("a pod on node-0");
    pod.metadata.deletion_timestamp = Some(Time(deadline));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    let name = pod.metadata.name.clone().unwrap();
    world.run.spec.scheduling.suspend = true;
    world.advance(world.config.terminating_timeout.as_secs() as i64);
    world.step();
    let forced: Vec<_> = world
        .actions()
        .iter()
        .filter_map(|a| match a {
            Action::ForceDeletePod { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        forced,
        vec![name],
        "only the pod on the dead node, after the timeout"
    );
}
