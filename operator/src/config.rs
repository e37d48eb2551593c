//! The operator's settings: what the binary's flags choose and what the planner and the pod
//! builder need to know about the cluster (GPU resource name, images, store endpoints, and
//! the timeouts that turn observations into decisions).

use std::time::Duration;

/// The GPU resource requested by default (the NVIDIA device plugin's).
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The worker image used when a run's template names none.
pub const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/tessera-ml/tessera:latest";
/// The port rank 0 serves the rendezvous on (the PyTorch default).
pub const DEFAULT_MASTER_PORT: u16 = 29_500;

/// Everything the planner and the builders need besides the run and what was observed.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// The extended resource a worker requests `gpusPerNode` of.
    pub gpu_resource: String,
    /// The worker image when `spec.template.image` is unset.
    pub agent_image: String,
    /// The coordination store handed to every agent (`tessera-agent --store`):
    /// `etcd://host:port[,host:port...]`; empty only in tests.
    pub store: String,
    /// The rendezvous port of rank 0 (MASTER_PORT).
    pub master_port: u16,
    /// Termination grace period of workers: long enough for agents to checkpoint on SIGTERM
    /// (suspend, preemption, deletion).
    pub stop_grace: Duration,
    /// A pod whose node has been NotReady this long counts as lost.
    pub node_lost_grace: Duration,
    /// A pod still Terminating this long past its deletion deadline, on a node that is
    /// NotReady or gone, is force-deleted.
    pub terminating_timeout: Duration,
    /// How often an active run is re-planned to copy the agents' progress into its status.
    pub progress_resync: Duration,
    /// How often a run waiting for capacity is re-planned (node and pod events also wake it).
    pub pending_retry: Duration,
    /// How often a run waiting for pods to stop is re-planned.
    pub settle_retry: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            gpu_resource: DEFAULT_GPU_RESOURCE.to_string(),
            agent_image: DEFAULT_AGENT_IMAGE.to_string(),
            store: String::new(),
            master_port: DEFAULT_MASTER_PORT,
            stop_grace: Duration::from_secs(300),
            node_lost_grace: Duration::from_secs(60),
            terminating_timeout: Duration::from_secs(300),
            progress_resync: Duration::from_secs(30),
            pending_retry: Duration::from_secs(15),
            settle_retry: Duration::from_secs(2),
        }
    }
}
