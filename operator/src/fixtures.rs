//! Builders of TrainingRuns, Nodes and pod states for tests and benchmarks, in the style of
//! `TrainingRun::test().nodes(2).suspended()` — small, explicit, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Node, NodeCondition, NodeSpec,
    NodeStatus, Pod, PodCondition, PodStatus, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tessera_api::spec::{
    CheckpointVolume, DataSpec, ModelPreset, ModelSpec, ParallelismSpec, TrainingSpec,
    WorkerTemplate,
};
use tessera_api::{TrainingRun, TrainingRunSpec};

use crate::names;

/// The instant fixtures are created at: 2026-01-01T00:00:00Z.
pub fn epoch() -> Timestamp {
    Timestamp::from_second(1_767_225_600).expect("a valid timestamp")
}

/// A TrainingRun under construction.
#[derive(Clone, Debug)]
pub struct RunBuilder {
    run: TrainingRun,
}

/// Starts a run fixture: `tiny`, 2 nodes × 1 GPU, namespace `ml`, stored (uid, generation 1,
/// created at [`epoch`]) and carrying the operator's finalizer.
pub fn run(name: &str) -> RunBuilder {
    let spec = TrainingRunSpec {
        model: ModelSpec {
            preset: Some(ModelPreset::Tiny),
            ..ModelSpec::default()
        },
        data: DataSpec {
            train: "/data/train".to_string(),
            ..DataSpec::default()
        },
        optimizer: Default::default(),
        training: TrainingSpec {
            steps: Some(100),
            epochs: None,
            seed: 1,
            eval_interval: 0,
            eval_batches: 1,
            init_from: None,
            lora: None,
        },
        parallelism: ParallelismSpec {
            nodes: 2,
            gpus_per_node: 1,
            ..ParallelismSpec::default()
        },
        checkpoint: Default::default(),
        fault_tolerance: Default::default(),
        scheduling: Default::default(),
        template: None,
    };
    let mut run = TrainingRun::new(name, spec);
    run.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some("ml".to_string()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        creation_timestamp: Some(Time(epoch())),
        finalizers: Some(vec![names::FINALIZER.to_string()]),
        ..ObjectMeta::default()
    };
    RunBuilder { run }
}

impl RunBuilder {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.run.metadata.namespace = Some(namespace.to_string());
        self
    }
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.run.spec.parallelism.nodes = nodes;
        self
    }
    pub fn gpus_per_node(mut self, gpus: u32) -> Self {
        self.run.spec.parallelism.gpus_per_node = gpus;
        self
    }
    pub fn min_nodes(mut self, min: u32) -> Self {
        self.run.spec.fault_tolerance.min_nodes = Some(min);
        self
    }
    pub fn max_restarts(mut self, max: u32) -> Self {
        self.run.spec.fault_tolerance.max_restarts = max;
        self
    }
    pub fn backoff_seconds(mut self, seconds: u32) -> Self {
        self.run.spec.fault_tolerance.backoff_seconds = seconds;
        self
    }
    pub fn suspended(mut self) -> Self {
        self.run.spec.scheduling.suspend = true;
        self
    }
    pub fn active_deadline_seconds(mut self, seconds: u64) -> Self {
        self.run.spec.scheduling.active_deadline_seconds = Some(seconds);
        self
    }
    pub fn ttl_seconds_after_finished(mut self, seconds: u64) -> Self {
        self.run.spec.scheduling.ttl_seconds_after_finished = Some(seconds);
        self
    }
    pub fn scheduler_name(mut self, scheduler: &str) -> Self {
        self.run.spec.scheduling.scheduler_name = Some(scheduler.to_string());
        self
    }
    pub fn priority_class(mut self, class: &str) -> Self {
        self.run.spec.scheduling.priority_class_name = Some(class.to_string());
        self
    }
    /// Puts the run in a Kueue LocalQueue (the `kueue.x-k8s.io/queue-name` label).
    pub fn kueue_queue(mut self, queue: &str) -> Self {
        self.run
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(names::KUEUE_QUEUE_LABEL.to_string(), queue.to_string());
        self
    }
    pub fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.template()
            .node_selector
            .insert(key.to_string(), value.to_string());
        self
    }
    pub fn toleration(mut self, key: &str) -> Self {
        self.template().tolerations.push(Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            ..Toleration::default()
        });
        self
    }
    pub fn checkpoint_claim(mut self, claim: &str, path: &str) -> Self {
        self.run.spec.checkpoint.volume = Some(CheckpointVolume {
            claim_name: claim.to_string(),
        });
        self.run.spec.checkpoint.path = path.to_string();
        self
    }
    pub fn created(mut self, at: Timestamp) -> Self {
        self.run.metadata.creation_timestamp = Some(Time(at));
        self
    }
    pub fn without_finalizer(mut self) -> Self {
        self.run.metadata.finalizers = None;
        self
    }
    pub fn deleting(mut self, at: Timestamp) -> Self {
        self.run.metadata.deletion_timestamp = Some(Time(at));
        self
    }
    /// Drops the API server's fields (uid, generation, creation time, finalizers): the run as
    /// a user would submit it.
    pub fn unstored(mut self) -> Self {
        self.run.metadata = ObjectMeta {
            name: self.run.metadata.name.clone(),
            namespace: self.run.metadata.namespace.clone(),
            labels: self.run.metadata.labels.clone(),
            ..ObjectMeta::default()
        };
        self
    }
    /// The run, with `globalBatchTokens` one micro-batch per rank so the spec stays valid
    /// whatever the gang's shape.
    pub fn build(mut self) -> TrainingRun {
        let spec = &mut self.run.spec;
        let context = u64::from(spec.model.effective_context().unwrap_or(128));
        spec.optimizer.global_batch_tokens =
            u64::from(spec.optimizer.micro_batch) * context * spec.parallelism.world_size();
        self.run
    }

    fn template(&mut self) -> &mut WorkerTemplate {
        self.run
            .spec
            .template
            .get_or_insert_with(WorkerTemplate::default)
    }
}

// === nodes ===

/// A Ready node with `gpus` allocatable GPUs of `resource`.
pub fn gpu_node(name: &str, resource: &str, gpus: u64) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                (resource.to_string(), Quantity(gpus.to_string())),
                ("cpu".to_string(), Quantity("64".to_string())),
            ])),
            capacity: Some(BTreeMap::from([(
                resource.to_string(),
                Quantity(gpus.to_string()),
            )])),
            conditions: Some(vec![ready_condition(true, epoch())]),
            ..NodeStatus::default()
        }),
    }
}

/// The node's Ready condition set to `ready` since `since`.
pub fn set_node_ready(node: &mut Node, ready: bool, since: Timestamp) {
    let status = node.status.get_or_insert_with(NodeStatus::default);
    status.conditions = Some(vec![ready_condition(ready, since)]);
}

pub fn label_node(node: &mut Node, key: &str, value: &str) {
    node.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value.to_string());
}

pub fn taint_node(node: &mut Node, key: &str, effect: &str) {
    node.spec
        .get_or_insert_with(NodeSpec::default)
        .taints
        .get_or_insert_with(Vec::new)
        .push(Taint {
            key: key.to_string(),
            effect: effect.to_string(),
            value: None,
            time_added: None,
        });
}

fn ready_condition(ready: bool, since: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: "Ready".to_string(),
        status: if ready { "True" } else { "False" }.to_string(),
        last_transition_time: Some(Time(since)),
        reason: Some(
            if ready {
                "KubeletReady"
            } else {
                "NodeStatusUnknown"
            }
            .to_string(),
        ),
        ..NodeCondition::default()
    }
}

// === pods, as the kubelet would report them ===

/// Binds the pod to `node` (what the scheduler does).
pub fn bind(pod: &mut Pod, node: &str) {
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
}

/// Sets the pod's phase, with a terminated agent container for `Failed`/`Succeeded`.
pub fn set_phase(pod: &mut Pod, phase: &str, exit_code: i32) {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some(phase.to_string());
    if phase == "Failed" || phase == "Succeeded" {
        status.container_statuses = Some(vec![ContainerStatus {
            name: "agent".to_string(),
            image: String::new(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.to_string()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
    }
}

/// Marks the pod as the target of a disruption (`PreemptionByScheduler`,
/// `EvictionByEvictionAPI`...), as the scheduler or the eviction API do before deleting it.
pub fn disrupt(pod: &mut Pod, reason: &str) {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(PodCondition {
            type_: "DisruptionTarget".to_string(),
            status: "True".to_string(),
            reason: Some(reason.to_string()),
            ..PodCondition::default()
        });
}
