//! What reconciles read, kept cheap at scale (thousands of runs and pods):
//!
//! - [`slim_pod`]: pods are stored without what no decision reads (env, volumes, affinity...),
//!   so the pod cache holds a fraction of each object;
//! - [`PodIndex`]: each run's pods by owner uid, kept in step with the pod watch, so a
//!   reconcile finds its pods without scanning every pod in the cluster;
//! - [`Snapshot`]: the cluster's GPU capacity and the pods bound per gang, computed from the
//!   caches at most every [`SNAPSHOT_MAX_AGE`] and shared by the reconciles in between.
//!
//! A snapshot may lag the caches by that much; admission stays safe because an admitted
//! gang's pods that the snapshot does not show bound are reserved as "placing" demand, from
//! the same snapshot.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::names;
use crate::plan::capacity::Cluster;

/// How stale a shared capacity snapshot may be.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(250);

/// Strips a pod to what the planner and the capacity count read: metadata (without managed
/// fields and annotations), the node, the containers' resources, and the status.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    resources: c.resources,
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        });
    }
}

/// Each owner's pods, as `(namespace, name)` keys into the pod cache.
#[derive(Clone, Default)]
pub struct PodIndex {
    state: Arc<RwLock<IndexState>>,
}

/// A pod in the cache: (namespace, name).
type PodKey = (String, String);

#[derive(Default)]
struct IndexState {
    by_owner: HashMap<String, BTreeSet<PodKey>>,
    /// Owner uids per pod.
    owners_of: HashMap<PodKey, Vec<String>>,
    /// Pods listed so far during a (re)list; replaces the index when the list is done.
    relisting: Option<Vec<(PodKey, Vec<String>)>>,
}

impl IndexState {
    fn insert(&mut self, key: PodKey, owners: Vec<String>) {
        self.remove(&key);
        for owner in &owners {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        if !owners.is_empty() {
            self.owners_of.insert(key, owners);
        }
    }

    fn remove(&mut self, key: &PodKey) {
        for owner in self.owners_of.remove(key).unwrap_or_default() {
            if let Some(keys) = self.by_owner.get_mut(&owner) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

fn key_and_owners(pod: &Pod) -> (PodKey, Vec<String>) {
    (
        (pod.namespace().unwrap_or_default(), pod.name_any()),
        pod.owner_references()
            .iter()
            .map(|o| o.uid.clone())
            .collect(),
    )
}

impl PodIndex {
    /// Applies one watch event, as the pod cache does.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(pod) => {
                let (key, owners) = key_and_owners(pod);
                state.insert(key, owners);
            }
            watcher::Event::Delete(pod) => {
                let (key, _) = key_and_owners(pod);
                state.remove(&key);
            }
            watcher::Event::Init => state.relisting = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(listed) = state.relisting.as_mut() {
                    listed.push(key_and_owners(pod));
                }
            }
            watcher::Event::InitDone => {
                let listed = state.relisting.take().unwrap_or_default();
                state.by_owner.clear();
                state.owners_of.clear();
                for (key, owners) in listed {
                    state.insert(key, owners);
                }
            }
        }
    }

    /// The pods owned by `uid`, from the pod cache.
    pub fn owned_by(&self, uid: &str, pods: &Store<Pod>) -> Vec<Arc<Pod>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(namespace, name)| pods.get(&ObjectRef::new(name).within(namespace)))
            .collect()
    }
}

/// Cluster capacity and gang placement, as of one instant.
#[derive(Debug)]
pub struct Snapshot {
    pub cluster: Cluster,
    /// Pods bound to a node, per (owner uid, generation label).
    pub bound: HashMap<(String, String), u32>,
    taken: Instant,
}

impl Snapshot {
    pub fn take(nodes: &Store<Node>, pods: &Store<Pod>, gpu_resource: &str) -> Snapshot {
        let pods = pods.state();
        let nodes = nodes.state();
        let mut bound: HashMap<(String, String), u32> = HashMap::new();
        for pod in &pods {
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                continue;
            }
            let Some(generation) = pod.labels().get(names::LABEL_GENERATION) else {
                continue;
            };
            for owner in pod.owner_references() {
                *bound
                    .entry((owner.uid.clone(), generation.clone()))
                    .or_default() += 1;
            }
        }
        Snapshot {
            cluster: Cluster::observe(
                nodes.iter().map(|n| n.as_ref()),
                pods.iter().map(|p| p.as_ref()),
                gpu_resource,
            ),
            bound,
            taken: Instant::now(),
        }
    }
}

/// The shared snapshot, retaken when older than [`SNAPSHOT_MAX_AGE`].
#[derive(Default)]
pub struct SnapshotCache {
    current: Mutex<Option<Arc<Snapshot>>>,
}

impl SnapshotCache {
    pub fn get(&self, nodes: &Store<Node>, pods: &Store<Pod>, gpu_resource: &str) -> Arc<Snapshot> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(snapshot) if snapshot.taken.elapsed() < SNAPSHOT_MAX_AGE => snapshot.clone(),
            _ => {
                let snapshot = Arc::new(Snapshot::take(nodes, pods, gpu_resource));
                *current = Some(snapshot.clone());
                snapshot
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::pod::{WorkerSlot, worker_pod};
    use crate::config::OperatorConfig;
    use crate::fixtures;

    fn pod(run: &str, rank: u32) -> Pod {
        let run = fixtures::run(run).build();
        let slot = WorkerSlot {
            generation: 1,
            node_rank: rank,
            nodes: 2,
        };
        worker_pod(&run, slot, &OperatorConfig::default())
    }

    #[test]
    fn a_slim_pod_keeps_what_decisions_read() {
        let mut full = pod("gpt", 0);
        fixtures::bind(&mut full, "node-1");
        fixtures::set_phase(&mut full, "Failed", 3);
        let mut slim = full.clone();
        slim_pod(&mut slim);
        assert!(
            serde_json::to_vec(&slim).unwrap().len() * 3 < serde_json::to_vec(&full).unwrap().len()
        );
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(
            slim.metadata.owner_references,
            full.metadata.owner_references
        );
        let gpu = crate::config::DEFAULT_GPU_RESOURCE;
        assert_eq!(
            crate::plan::capacity::pod_gpus(&slim, gpu),
            crate::plan::capacity::pod_gpus(&full, gpu)
        );
        assert_eq!(
            crate::plan::observed::Worker::observe(&slim),
            crate::plan::observed::Worker::observe(&full)
        );
    }

    #[test]
    fn the_index_follows_applies_deletes_and_relists() {
        let index = PodIndex::default();
        let (a0, a1, b0) = (pod("a", 0), pod("a", 1), pod("b", 0));
        index.apply(&watcher::Event::Apply(a0.clone()));
        index.apply(&watcher::Event::Apply(a1.clone()));
        index.apply(&watcher::Event::Apply(b0.clone()));
        let keys = |uid: &str| {
            let state = index.state.read().unwrap();
            state.by_owner.get(uid).cloned().unwrap_or_default()
        };
        assert_eq!(keys("uid-a").len(), 2);
        index.apply(&watcher::Event::Delete(a1.clone()));
        assert_eq!(keys("uid-a").len(), 1);
        // A relist that no longer shows a0 drops it.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(b0.clone()));
        assert_eq!(
            keys("uid-a").len(),
            1,
            "the old index serves until the list is done"
        );
        index.apply(&watcher::Event::InitDone);
        assert!(keys("uid-a").is_empty());
        assert_eq!(keys("uid-b").len(), 1);
    }
}
