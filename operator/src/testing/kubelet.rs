//! The test's scheduler and kubelet: bind pending pods to nodes with room (one pod of a run
//! per node, GPUs counted), start them, confirm graceful deletions on live nodes, and report
//! pod outcomes — all through the API, as the real ones do.

use std::collections::{BTreeMap, HashMap};

use crate::names;
use crate::plan::capacity::pod_gpus;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

pub const GPU: &str = "nvidia.com/gpu";

#[derive(Clone)]
pub struct Kubelet {
    client: Client,
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Kubelet {
    pub fn new(client: Client) -> Kubelet {
        Kubelet { client }
    }

    fn pods(&self) -> Api<Pod> {
        Api::all(self.client.clone())
    }

    fn namespaced(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// One round of scheduler and kubelet work; returns how many pods it changed.
    pub async fn tick(&self) -> usize {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("list nodes")
            .items;
        let pods = self
            .pods()
            .list(&ListParams::default())
            .await
            .expect("list pods")
            .items;
        let ready: HashMap<String, &Node> = nodes
            .iter()
            .filter(|n| {
                node_ready(n)
                    && !n
                        .spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false)
            })
            .map(|n| (n.name_any(), n))
            .collect();
        let mut free: BTreeMap<String, u64> = ready
            .iter()
            .map(|(name, n)| {
                let gpus = n
                    .status
                    .as_ref()
                    .and_then(|s| s.allocatable.as_ref())
                    .and_then(|a| a.get(GPU))
                    .map_or(0, |q| q.0.parse().unwrap_or(0));
                (name.clone(), gpus)
            })
            .collect();
        // (run label, node) pairs already taken: the pods' anti-affinity.
        let mut taken: Vec<(String, String)> = Vec::new();
        for pod in &pods {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref())
                && !matches!(phase, Some("Succeeded" | "Failed"))
            {
                if let Some(f) = free.get_mut(node) {
                    *f = f.saturating_sub(pod_gpus(pod, GPU));
                }
                if let Some(run) = pod.labels().get(names::LABEL_RUN) {
                    taken.push((run.clone(), node.clone()));
                }
            }
        }
        let mut changed = 0;
        for pod in &pods {
            let namespace = pod.namespace().unwrap_or_default();
            let api = self.namespaced(&namespace);
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            match (bound, deleting) {
                (Some(node), true) => {
                    // The kubelet of a live node confirms the deletion; a dead one never does.
                    if ready.contains_key(&node) {
                        let _ = api
                            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                            .await;
                        changed += 1;
                    }
                }
                (None, true) => {}
                (None, false) => {
                    let want = pod_gpus(pod, GPU);
                    let run = pod
                        .labels()
                        .get(names::LABEL_RUN)
                        .cloned()
                        .unwrap_or_default();
                    let selector = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_selector.clone())
                        .unwrap_or_default();
                    let choice = free
                        .iter()
                        .filter(|(node, f)| {
                            **f >= want
                                && !taken.contains(&(run.clone(), (*node).clone()))
                                && selector
                                    .iter()
                                    .all(|(k, v)| ready[*node].labels().get(k) == Some(v))
                        })
                        .map(|(node, _)| node.clone())
                        .next();
                    if let Some(node) = choice {
                        *free.get_mut(&node).expect("a known node") -= want;
                        taken.push((run, node.clone()));
                        let bind = json!({"spec": {"nodeName": node}});
                        if api
                            .patch(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&bind),
                            )
                            .await
                            .is_ok()
                        {
                            self.set_phase(&namespace, &pod.name_any(), "Running", 0)
                                .await;
                            changed += 1;
                        }
                    }
                }
                (Some(node), false) => {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if phase.is_none_or(|p| p == "Pending") && ready.contains_key(&node) {
                        self.set_phase(&namespace, &pod.name_any(), "Running", 0)
                            .await;
                        changed += 1;
                    }
                }
            }
        }
        changed
    }

    /// Reports a pod's phase, with the agent container's exit code when it has finished.
    pub async fn set_phase(&self, namespace: &str, name: &str, phase: &str, exit_code: i32) {
        let mut status = json!({"phase": phase});
        if phase == "Succeeded" || phase == "Failed" {
            status["containerStatuses"] = json!([{
                "name": "agent", "image": "tessera", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code,
                    "reason": if exit_code == 0 { "Completed" } else { "Error" }}}
            }]);
        }
        let _ = self
            .namespaced(namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await;
    }

    /// Pods of a run's generation, sorted by name.
    pub async fn pods_of(&self, namespace: &str, run: &str, generation: u64) -> Vec<Pod> {
        let selector = format!(
            "{}={},{}={generation}",
            names::LABEL_RUN,
            names::run_label(run),
            names::LABEL_GENERATION
        );
        let mut pods = self
            .namespaced(namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("list pods")
            .items;
        pods.sort_by_key(|p| p.name_any());
        pods
    }
}
