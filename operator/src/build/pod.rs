//! The worker pod of one node rank: runs `tessera-agent` for the run at a generation.
//!
//! ```text
//! pod {run}-g{generation}-{rank}   hostname {run}-{rank}, subdomain {run} (the headless service)
//!   agent container: tessera-agent --config /etc/tessera/run.yaml (the manifest ConfigMap)
//!     --node {run}-{rank} --namespace --store --listen-host $(POD_IP) --metrics-addr :9401
//!     --rank-metrics-port 9402 (ports trainer-0.. for the PodMonitor)
//!     env  MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/NODE_RANK, TESSERA_GENERATION...
//!     GPUs {gpusPerNode} × the configured resource; checkpoint and data volumes from the spec
//!     non-root, read-only root filesystem (writable /tmp and /dev/shm), no capabilities
//!   one pod of the run per node (required anti-affinity on the hostname)
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use tessera_api::TrainingRun;

use crate::config::OperatorConfig;
use crate::names;

use super::config_map::MANIFEST_KEY;
use super::pod_group::GangScheduler;
use super::{common_labels, owner_reference};

/// The unprivileged user the agent runs as (the distroless "nonroot" user).
const RUN_AS_USER: i64 = 65_532;
/// Where the agent's metrics are served.
const AGENT_METRICS_PORT: i32 = 9_401;
/// Local rank r's trainer serves its metrics on this port + r (`--rank-metrics-port`).
const TRAINER_METRICS_PORT: i32 = 9_402;
/// Where the manifest ConfigMap is mounted.
const MANIFEST_DIR: &str = "/etc/tessera";
/// The agent's writable base directory (relative data and checkpoint paths resolve here).
const WORK_DIR: &str = "/var/lib/tessera";

/// Which worker of which gang a pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSlot {
    pub generation: u64,
    pub node_rank: u32,
    /// Nodes in the gang (fewer than the spec's after an elastic shrink).
    pub nodes: u32,
}

/// The pod for `slot` of `run`.
pub fn worker_pod(run: &TrainingRun, slot: WorkerSlot, config: &OperatorConfig) -> Pod {
    let run_name = run.name_any();
    let namespace = run.namespace().unwrap_or_else(|| "default".to_string());
    let spec = &run.spec;
    let template = spec.template.clone().unwrap_or_default();
    let gpus = spec.parallelism.gpus_per_node;
    let service = names::service_name(&run_name);

    let mut labels = common_labels(&run_name, "worker");
    labels.insert(
        names::LABEL_GENERATION.to_string(),
        slot.generation.to_string(),
    );
    labels.insert(
        names::LABEL_NODE_RANK.to_string(),
        slot.node_rank.to_string(),
    );
    let mut annotations = BTreeMap::new();
    match GangScheduler::for_run(run) {
        Some(GangScheduler::Coscheduling) => {
            labels.insert(
                names::COSCHEDULING_POD_GROUP_LABEL.to_string(),
                names::pod_group_name(&run_name),
            );
        }
        Some(GangScheduler::Volcano) => {
            annotations.insert(
                names::VOLCANO_GROUP_ANNOTATION.to_string(),
                names::pod_group_name(&run_name),
            );
        }
        None => {}
    }

    let master_addr = format!(
        "{}.{service}.{namespace}.svc",
        names::hostname(&run_name, 0)
    );
    let mut env = vec![
        env_value("MASTER_ADDR", master_addr),
        env_value("MASTER_PORT", config.master_port.to_string()),
        env_value(
            "WORLD_SIZE",
            (u64::from(slot.nodes) * u64::from(gpus)).to_string(),
        ),
        // The global rank of the node's first process; ranks on the node follow it.
        env_value(
            "RANK",
            (u64::from(slot.node_rank) * u64::from(gpus)).to_string(),
        ),
        env_value("NODE_RANK", slot.node_rank.to_string()),
        env_value("NNODES", slot.nodes.to_string()),
        env_value("NPROC_PER_NODE", gpus.to_string()),
        env_value("TESSERA_NAMESPACE", namespace.clone()),
        env_value("TESSERA_RUN", run_name.clone()),
        env_value("TESSERA_GENERATION", slot.generation.to_string()),
        // Kubernetes expands $(POD_IP) in the agent's arguments.
        env_field("POD_IP", "status.podIP"),
        env_field("TESSERA_NODE_NAME", "spec.nodeName"),
        env_field("TESSERA_POD_NAME", "metadata.name"),
    ];
    env.extend(template.env.iter().cloned());

    let mut args = vec![
        "--config".to_string(),
        format!("{MANIFEST_DIR}/{MANIFEST_KEY}"),
        // The node's name in the run: stable across generations, as its DNS name is.
        "--node".to_string(),
        names::hostname(&run_name, slot.node_rank),
        "--namespace".to_string(),
        namespace.clone(),
        "--listen-host".to_string(),
        "$(POD_IP)".to_string(),
        "--metrics-addr".to_string(),
        format!("0.0.0.0:{AGENT_METRICS_PORT}"),
        "--rank-metrics-port".to_string(),
        TRAINER_METRICS_PORT.to_string(),
        "--base-dir".to_string(),
        WORK_DIR.to_string(),
        "--socket-dir".to_string(),
        "/tmp".to_string(),
    ];
    if !config.store.is_empty() {
        args.push("--store".to_string());
        args.push(config.store.clone());
    }

    let (volumes, mounts) = volumes(run);
    let container = Container {
        name: "agent".to_string(),
        image: Some(template.image.unwrap_or_else(|| config.agent_image.clone())),
        command: Some(vec!["tessera-agent".to_string()]),
        args: Some(args),
        env: Some(env),
        ports: Some(
            vec![
                ContainerPort {
                    name: Some("rendezvous".to_string()),
                    container_port: i32::from(config.master_port),
                    protocol: Some("TCP".to_string()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("metrics".to_string()),
                    container_port: AGENT_METRICS_PORT,
                    protocol: Some("TCP".to_string()),
                    ..ContainerPort::default()
                },
            ]
            .into_iter()
            // The PodMonitor scrapes ports named trainer-N: one per local rank.
            .chain((0..gpus).map(|rank| ContainerPort {
                name: Some(format!("trainer-{rank}")),
                container_port: TRAINER_METRICS_PORT + rank as i32,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            }))
            .collect(),
        ),
        resources: Some(gpu_resources(
            template.resources,
            &config.gpu_resource,
            gpus,
        )),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let run_selector = LabelSelector {
        match_labels: Some([(names::LABEL_RUN.to_string(), names::run_label(&run_name))].into()),
        match_expressions: None,
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(names::pod_name(&run_name, slot.generation, slot.node_rank)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: owner_reference(run).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            hostname: Some(names::hostname(&run_name, slot.node_rank)),
            subdomain: Some(service),
            restart_policy: Some("Never".to_string()),
            termination_grace_period_seconds: Some(config.stop_grace.as_secs() as i64),
            scheduler_name: spec.scheduling.scheduler_name.clone(),
            priority_class_name: spec.scheduling.priority_class_name.clone(),
            node_selector: (!template.node_selector.is_empty()).then_some(template.node_selector),
            tolerations: (!template.tolerations.is_empty()).then_some(template.tolerations),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(run_selector),
                            topology_key: "kubernetes.io/hostname".to_string(),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The template's resources with `gpus` of the GPU resource as request and limit (extended
/// resources need both, equal).
fn gpu_resources(
    template: Option<ResourceRequirements>,
    gpu_resource: &str,
    gpus: u32,
) -> ResourceRequirements {
    let mut resources = template.unwrap_or_default();
    let quantity = Quantity(gpus.to_string());
    resources
        .limits
        .get_or_insert_with(BTreeMap::new)
        .insert(gpu_resource.to_string(), quantity.clone());
    resources
        .requests
        .get_or_insert_with(BTreeMap::new)
        .insert(gpu_resource.to_string(), quantity);
    resources
}

/// The pod's volumes and the agent's mounts: scratch space the read-only root filesystem
/// lacks, shared memory for the collectives, and the spec's checkpoint and data claims.
fn volumes(run: &TrainingRun) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "shm".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: None,
            }),
            ..Volume::default()
        },
    ];
    volumes.push(Volume {
        name: "work".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: "manifest".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::manifest_config_map_name(&run.name_any()),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    let mut mounts = vec![
        mount("tmp", "/tmp", false),
        mount("shm", "/dev/shm", false),
        mount("work", WORK_DIR, false),
        mount("manifest", MANIFEST_DIR, true),
    ];
    let checkpoint = &run.spec.checkpoint;
    if let Some(claim) = &checkpoint.volume {
        volumes.push(claim_volume("checkpoints", &claim.claim_name, false));
        mounts.push(mount("checkpoints", &checkpoint.path, false));
    }
    if let Some(data) = &run.spec.data.volume {
        volumes.push(claim_volume("data", &data.claim_name, true));
        mounts.push(mount("data", &data.mount_path, true));
    }
    (volumes, mounts)
}

fn claim_volume(name: &str, claim_name: &str, read_only: bool) -> Volume {
    Volume {
        name: name.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim_name.to_string(),
            read_only: Some(read_only),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn env(pod: &Pod, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn the_worker_runs_the_agent_with_its_identity_and_the_pytorch_environment() {
        let run = fixtures::run("gpt").nodes(4).gpus_per_node(8).build();
        let config = OperatorConfig {
            store: "etcd://etcd-0:2379,etcd-1:2379".into(),
            ..OperatorConfig::default()
        };
        let slot = WorkerSlot {
            generation: 3,
            node_rank: 2,
            nodes: 4,
        };
        let pod = worker_pod(&run, slot, &config);
        assert_eq!(pod.metadata.name.as_deref(), Some("gpt-g3-2"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ml"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::LABEL_RUN], "gpt");
        assert_eq!(labels[names::LABEL_GENERATION], "3");
        assert_eq!(labels[names::LABEL_NODE_RANK], "2");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("TrainingRun", "uid-gpt")
        );
        assert_eq!(owner.controller, Some(true));

        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("gpt-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("gpt"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let agent = &spec.containers[0];
        assert_eq!(agent.command.as_ref().unwrap(), &["tessera-agent"]);
        let args = agent.args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            "--config /etc/tessera/run.yaml --node gpt-2 --namespace ml --listen-host $(POD_IP) \
             --metrics-addr 0.0.0.0:9401 --rank-metrics-port 9402 --base-dir /var/lib/tessera --socket-dir /tmp \
             --store etcd://etcd-0:2379,etcd-1:2379"
        );
        assert_eq!(
            env(&pod, "MASTER_ADDR").as_deref(),
            Some("gpt-0.gpt.ml.svc")
        );
        assert_eq!(env(&pod, "MASTER_PORT").as_deref(), Some("29500"));
        assert_eq!(env(&pod, "WORLD_SIZE").as_deref(), Some("32"));
        assert_eq!(env(&pod, "RANK").as_deref(), Some("16"));
        assert_eq!(env(&pod, "NODE_RANK").as_deref(), Some("2"));
        assert_eq!(env(&pod, "TESSERA_GENERATION").as_deref(), Some("3"));
        let ports: Vec<(String, i32)> = agent
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(ports[1], ("metrics".to_string(), 9401));
        assert_eq!(ports[2], ("trainer-0".to_string(), 9402));
        assert_eq!(ports[9], ("trainer-7".to_string(), 9409));
        let manifest = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|v| v.config_map.as_ref())
            .expect("the manifest volume");
        assert_eq!(manifest.name, "gpt-manifest");

        let resources = agent.resources.as_ref().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "8");
        assert_eq!(
            resources.requests.as_ref().unwrap()["nvidia.com/gpu"].0,
            "8"
        );
    }

    #[test]
    fn the_worker_is_locked_down_and_alone_on_its_node() {
        let run = fixtures::run("safe").build();
        let config = OperatorConfig {
            gpu_resource: "amd.com/gpu".into(),
            ..OperatorConfig::default()
        };
        let pod = worker_pod(
            &run,
            WorkerSlot {
                generation: 1,
                node_rank: 0,
                nodes: 2,
            },
            &config,
        );
        let spec = pod.spec.as_ref().unwrap();
        let security = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security
                .capabilities
                .as_ref()
                .unwrap()
                .drop
                .as_ref()
                .unwrap(),
            &["ALL"]
        );
        assert_eq!(
            spec.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        let anti = spec
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        let term = &anti
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[names::LABEL_RUN],
            "safe"
        );
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits["amd.com/gpu"].0, "1");
        assert!(!limits.contains_key("nvidia.com/gpu"));
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(config.stop_grace.as_secs() as i64)
        );
    }

    #[test]
    fn volumes_come_from_the_spec_and_the_template_is_honoured() {
        let mut run = fixtures::run("vol")
            .checkpoint_claim("ckpt-claim", "/checkpoints")
            .node_selector("pool", "a100")
            .toleration("nvidia.com/gpu")
            .scheduler_name("scheduler-plugins-scheduler")
            .priority_class("high")
            .build();
        run.spec.data.volume = Some(tessera_api::spec::DataVolume {
            claim_name: "corpus".into(),
            mount_path: "/data".into(),
        });
        let template = run.spec.template.as_mut().unwrap();
        template.image = Some("registry.example/tessera:v1".into());
        template.env.push(EnvVar {
            name: "NCCL_DEBUG".into(),
            value: Some("INFO".into()),
            value_from: None,
        });
        let pod = worker_pod(
            &run,
            WorkerSlot {
                generation: 1,
                node_rank: 1,
                nodes: 2,
            },
            &OperatorConfig::default(),
        );
        let spec = pod.spec.as_ref().unwrap();
        let mounts: Vec<(String, String, Option<bool>)> = spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect();
        assert!(mounts.contains(&("checkpoints".into(), "/checkpoints".into(), Some(false))));
        assert!(mounts.contains(&("data".into(), "/data".into(), Some(true))));
        assert!(mounts.contains(&("tmp".into(), "/tmp".into(), Some(false))));
        let claims: Vec<String> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        assert_eq!(claims, vec!["ckpt-claim", "corpus"]);
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("registry.example/tessera:v1")
        );
        assert_eq!(env(&pod, "NCCL_DEBUG").as_deref(), Some("INFO"));
        assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "a100");
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(
            spec.scheduler_name.as_deref(),
            Some("scheduler-plugins-scheduler")
        );
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[names::COSCHEDULING_POD_GROUP_LABEL],
            "vol"
        );
    }
}
