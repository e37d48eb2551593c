//! Gang admission: does the whole gang of a run fit in the cluster now, after the runs ahead
//! of it in the queue have taken their share?
//!
//! ```text
//! Cluster::observe(nodes, pods)   per node: ready? schedulable? labels, taints,
//!                                 allocatable GPUs − GPUs held by bound, unfinished pods
//! admit(run):
//!   1. admitted gangs whose pods are not bound yet take their GPUs first
//!   2. waiting runs ahead of this one (priority, then age) take theirs when they fit
//!      (best effort: one that does not fit does not block the ones behind it)
//!   3. the run fits when `nodes` eligible nodes each have `gpusPerNode` free GPUs
//! ```
//!
//! Every placement is best fit (the fullest node that still has room), one pod per node, as
//! the pods' anti-affinity requires.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;

/// Whether a node can run pods.
#[derive(Clone, Debug, PartialEq)]
pub enum Readiness {
    Ready,
    /// Not ready (or unknown) since the given time, when the node says.
    NotReady {
        since: Option<Timestamp>,
    },
}

/// One node of the cluster, reduced to what admission and failure detection need.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    pub readiness: Readiness,
    pub allocatable_gpus: u64,
    /// GPUs requested by pods bound to the node that have not finished.
    pub used_gpus: u64,
}

impl NodeState {
    pub fn free_gpus(&self) -> u64 {
        self.allocatable_gpus.saturating_sub(self.used_gpus)
    }

    pub fn is_ready(&self) -> bool {
        self.readiness == Readiness::Ready
    }
}

/// A snapshot of the cluster's nodes and the GPUs in use on them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cluster {
    nodes: BTreeMap<String, NodeState>,
}

impl Cluster {
    /// The snapshot from every Node and every Pod the operator sees. `pods` should include
    /// all pods that may hold GPUs, not only the operator's own.
    pub fn observe<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
        gpu_resource: &str,
    ) -> Cluster {
        let mut cluster = Cluster::default();
        for node in nodes {
            let state = node_state(node, gpu_resource);
            cluster.nodes.insert(state.name.clone(), state);
        }
        for pod in pods {
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if let Some(node) = cluster.nodes.get_mut(node_name) {
                node.used_gpus += pod_gpus(pod, gpu_resource);
            }
        }
        cluster
    }

    /// A snapshot from node states directly (tests, and callers that track nodes themselves).
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeState>) -> Cluster {
        Cluster {
            nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }
}

fn node_state(node: &Node, gpu_resource: &str) -> NodeState {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let readiness = match ready {
        Some(c) if c.status == "True" => Readiness::Ready,
        Some(c) => Readiness::NotReady {
            since: c.last_transition_time.as_ref().map(|t| t.0),
        },
        None => Readiness::NotReady { since: None },
    };
    let spec = node.spec.as_ref();
    NodeState {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        readiness,
        allocatable_gpus: status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(gpu_resource))
            .map_or(0, whole_units),
        used_gpus: 0,
    }
}

/// GPUs a pod holds: the sum over its containers (extended resources are requested whole;
/// the limit stands in for a missing request, as the API server defaults it).
pub fn pod_gpus(pod: &Pod, gpu_resource: &str) -> u64 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.containers
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .map(|r| {
            r.requests
                .as_ref()
                .and_then(|q| q.get(gpu_resource))
                .or_else(|| r.limits.as_ref().and_then(|q| q.get(gpu_resource)))
                .map_or(0, whole_units)
        })
        .sum()
}

/// A whole-number quantity (`8`, `8k` is not a GPU count); anything else counts as 0.
fn whole_units(quantity: &Quantity) -> u64 {
    quantity.0.trim().parse().unwrap_or(0)
}

// === gangs and the queue ===

/// What a gang needs: `pods` nodes each with `gpus_per_pod` free GPUs that match its
/// selector and tolerate its taints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GangDemand {
    pub pods: u32,
    pub gpus_per_pod: u64,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl GangDemand {
    /// The demand of `nodes` workers of `run`.
    pub fn of_run(run: &tessera_api::TrainingRun, nodes: u32) -> GangDemand {
        let template = run.spec.template.as_ref();
        GangDemand {
            pods: nodes,
            gpus_per_pod: u64::from(run.spec.parallelism.gpus_per_node),
            node_selector: template
                .map(|t| t.node_selector.clone())
                .unwrap_or_default(),
            tolerations: template.map(|t| t.tolerations.clone()).unwrap_or_default(),
        }
    }

    /// Whether a pod of this gang may run on `node` at all (capacity aside).
    pub fn may_use(&self, node: &NodeState) -> bool {
        node.is_ready()
            && !node.unschedulable
            && self
                .node_selector
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
            && node
                .taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| self.tolerations.iter().any(|tol| tolerates(tol, t)))
    }
}

/// The Kubernetes toleration rule: an empty key with `Exists` tolerates everything; an empty
/// effect matches every effect; `Exists` ignores the value, `Equal` (the default) compares it.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let exists = toleration.operator.as_deref() == Some("Exists");
    match toleration.key.as_deref() {
        None | Some("") => exists,
        Some(key) if key != taint.key => false,
        Some(_) => {
            exists
                || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Where another run stands in the competition for GPUs.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueState {
    /// Not admitted yet: competes by priority and age.
    Waiting,
    /// Admitted; `demand.pods` of its pods are not bound to nodes yet and will take GPUs.
    Placing,
}

/// Another run, as admission sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRun {
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    pub created: Option<Timestamp>,
    pub demand: GangDemand,
    pub state: QueueState,
}

/// The place of a run in the admission order: higher priority first, then older, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueOrder {
    neg_priority: i64,
    created: Option<Timestamp>,
    namespace: String,
    name: String,
}

impl QueueOrder {
    pub fn new(priority: i32, created: Option<Timestamp>, namespace: &str, name: &str) -> Self {
        QueueOrder {
            neg_priority: -i64::from(priority),
            created,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// Why a gang does not fit, with the numbers for the condition message.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortfall {
    pub needed_nodes: u32,
    pub gpus_per_node: u64,
    /// Nodes the gang may use at all (ready, schedulable, matching, tolerated).
    pub eligible_nodes: usize,
    /// Eligible nodes with enough free GPUs before the queue ahead takes its share.
    pub nodes_with_room: usize,
    /// Of those, the ones left after the runs ahead are placed.
    pub nodes_left: usize,
    pub eligible_gpus: u64,
    pub used_gpus: u64,
    /// Runs ahead in the queue (or admitted and not yet placed) that took GPUs first.
    pub ahead: usize,
}

impl Shortfall {
    /// The condition message, e.g. "needs 2 nodes with 8 free nvidia.com/gpu each; 1 of 3
    /// eligible nodes has room (16 of 24 nvidia.com/gpu in use)".
    pub fn message(&self, gpu_resource: &str) -> String {
        let mut message = format!(
            "needs {} node{} with {} free {gpu_resource} each; {} of {} eligible node{} {} room \
             ({} of {} {gpu_resource} in use)",
            self.needed_nodes,
            plural(self.needed_nodes as usize),
            self.gpus_per_node,
            self.nodes_with_room,
            self.eligible_nodes,
            plural(self.eligible_nodes),
            if self.nodes_with_room == 1 {
                "has"
            } else {
                "have"
            },
            self.used_gpus,
            self.eligible_gpus,
        );
        if self.ahead > 0 {
            message.push_str(&format!(
                "; {} run{} ahead in the queue leave{} {} with room",
                self.ahead,
                plural(self.ahead),
                if self.ahead == 1 { "s" } else { "" },
                self.nodes_left,
            ));
        }
        message
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Decides whether the gang `demand` of the run at `order` fits now.
pub fn admit(
    cluster: &Cluster,
    queue: &[QueuedRun],
    order: &QueueOrder,
    demand: &GangDemand,
) -> Result<(), Shortfall> {
    let nodes: Vec<&NodeState> = cluster.nodes().collect();
    let mut free: Vec<u64> = nodes.iter().map(|n| n.free_gpus()).collect();
    let mut eligibility = Eligibility::new(&nodes);
    let mine = eligibility.of(demand).to_vec();
    let room = |free: &[u64]| {
        mine.iter()
            .filter(|i| free[**i] >= demand.gpus_per_pod)
            .count()
    };
    let nodes_with_room = room(&free);

    let mut ahead = 0;
    let mut placing: Vec<&QueuedRun> = queue
        .iter()
        .filter(|q| q.state == QueueState::Placing)
        .collect();
    let mut waiting: Vec<&QueuedRun> = queue
        .iter()
        .filter(|q| {
            q.state == QueueState::Waiting
                && QueueOrder::new(q.priority, q.created, &q.namespace, &q.name) < *order
        })
        .collect();
    placing.sort_by_key(|q| QueueOrder::new(q.priority, q.created, &q.namespace, &q.name));
    waiting.sort_by_key(|q| QueueOrder::new(q.priority, q.created, &q.namespace, &q.name));
    for run in placing {
        // Admitted gangs are placed as far as they go: their pods exist or are coming.
        place(eligibility.of(&run.demand), &mut free, &run.demand, true);
        ahead += 1;
    }
    for run in waiting {
        if place(eligibility.of(&run.demand), &mut free, &run.demand, false) {
            ahead += 1;
        }
    }
    if place(&mine, &mut free.clone(), demand, false) {
        return Ok(());
    }
    Err(Shortfall {
        needed_nodes: demand.pods,
        gpus_per_node: demand.gpus_per_pod,
        eligible_nodes: mine.len(),
        nodes_with_room,
        nodes_left: room(&free),
        eligible_gpus: mine.iter().map(|i| nodes[*i].allocatable_gpus).sum(),
        used_gpus: mine.iter().map(|i| nodes[*i].used_gpus).sum(),
        ahead,
    })
}

/// What decides which nodes a gang may use: its node selector and tolerations.
type Placement = (BTreeMap<String, String>, Vec<Toleration>);

/// The nodes each kind of gang may use, worked out once per kind (most gangs share one).
struct Eligibility<'a> {
    nodes: &'a [&'a NodeState],
    known: Vec<(Placement, Vec<usize>)>,
}

impl<'a> Eligibility<'a> {
    fn new(nodes: &'a [&'a NodeState]) -> Self {
        Eligibility {
            nodes,
            known: Vec::new(),
        }
    }

    /// Indices of the nodes `demand` may use.
    fn of(&mut self, demand: &GangDemand) -> &[usize] {
        let position = self.known.iter().position(|((selector, tolerations), _)| {
            *selector == demand.node_selector && *tolerations == demand.tolerations
        });
        let index = match position {
            Some(index) => index,
            None => {
                let eligible = (0..self.nodes.len())
                    .filter(|i| demand.may_use(self.nodes[*i]))
                    .collect();
                self.known.push((
                    (demand.node_selector.clone(), demand.tolerations.clone()),
                    eligible,
                ));
                self.known.len() - 1
            }
        };
        &self.known[index].1
    }
}

/// Places `demand` on the fullest eligible nodes with room; all or nothing unless `partial`.
fn place(eligible: &[usize], free: &mut [u64], demand: &GangDemand, partial: bool) -> bool {
    let mut candidates: Vec<(u64, usize)> = eligible
        .iter()
        .map(|i| (free[*i], *i))
        .filter(|(f, _)| *f >= demand.gpus_per_pod)
        .collect();
    let wanted = demand.pods as usize;
    if candidates.len() < wanted && !partial {
        return false;
    }
    if candidates.len() > wanted && wanted > 0 {
        // Only the `wanted` fullest matter: a partial selection instead of a full sort.
        candidates.select_nth_unstable(wanted - 1);
        candidates.truncate(wanted);
    }
    for (_, i) in candidates.into_iter().take(wanted) {
        free[i] -= demand.gpus_per_pod;
    }
    true
}
