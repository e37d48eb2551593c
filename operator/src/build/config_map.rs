//! The run's manifest as a ConfigMap, mounted into every worker at `/etc/tessera/run.yaml`:
//! `tessera-agent --config` reads it, and so do the trainer ranks it starts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tessera_api::TrainingRun;

use crate::names;

use super::{common_labels, owner_reference};

/// The key of the manifest in the ConfigMap (and its file name in the mount).
pub const MANIFEST_KEY: &str = "run.yaml";

/// The ConfigMap holding the run's manifest (JSON, which is YAML): apiVersion, kind, name,
/// namespace and spec, nothing the API server added.
pub fn manifest_config_map(run: &TrainingRun) -> ConfigMap {
    let run_name = run.name_any();
    let manifest = json!({
        "apiVersion": TrainingRun::api_version(&()),
        "kind": TrainingRun::kind(&()),
        "metadata": {"name": run_name, "namespace": run.namespace()},
        "spec": run.spec,
    });
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names::manifest_config_map_name(&run_name)),
            namespace: run.namespace(),
            labels: Some(common_labels(&run_name, "manifest")),
            owner_references: owner_reference(run).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            MANIFEST_KEY.to_string(),
            serde_json::to_string_pretty(&manifest).expect("a manifest always serializes"),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_agent_reads_the_same_run_back() {
        let run = fixtures::run("gpt").nodes(4).build();
        let map = manifest_config_map(&run);
        assert_eq!(map.metadata.name.as_deref(), Some("gpt-manifest"));
        let text = &map.data.unwrap()[MANIFEST_KEY];
        let parsed = tessera_api::parse_training_run(text).expect("a valid manifest");
        assert_eq!(parsed.spec, run.spec);
        assert_eq!(parsed.metadata.name.as_deref(), Some("gpt"));
        assert!(!text.contains("uid-gpt"), "nothing the API server added");
    }
}
