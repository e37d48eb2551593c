//! The headless Service of a run: stable DNS names `{run}-{rank}.{run}.{namespace}.svc` for
//! every worker, so rank 0's address (MASTER_ADDR) survives restarts.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use tessera_api::TrainingRun;

use crate::config::OperatorConfig;
use crate::names;

use super::{common_labels, owner_reference};

/// The headless Service selecting every worker of `run`, ready or not (peers must resolve
/// each other before any of them is ready).
pub fn headless_service(run: &TrainingRun, config: &OperatorConfig) -> Service {
    let run_name = run.name_any();
    let labels = common_labels(&run_name, "rendezvous");
    let selector = [(names::LABEL_RUN.to_string(), names::run_label(&run_name))].into();
    Service {
        metadata: ObjectMeta {
            name: Some(names::service_name(&run_name)),
            namespace: run.namespace(),
            labels: Some(labels),
            owner_references: owner_reference(run).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".to_string()),
                port: i32::from(config.master_port),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_service_is_headless_and_publishes_unready_workers() {
        let service = headless_service(&fixtures::run("gpt").build(), &OperatorConfig::default());
        let spec = service.spec.unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("gpt"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()[names::LABEL_RUN], "gpt");
        assert_eq!(spec.ports.unwrap()[0].port, 29_500);
        assert!(service.metadata.owner_references.is_some());
    }
}
