//! Pure builders of the objects a run owns: its worker [`pod`]s, its headless [`service`],
//! the [`config_map`] with its manifest and, under a gang scheduler, its [`pod_group`]. Each returns the full desired object, ready
//! for server-side apply; none performs I/O.

pub mod config_map;
pub mod pod;
pub mod pod_group;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use tessera_api::TrainingRun;

use crate::names;

/// The controller owner reference to `run`: its children are garbage-collected with it and
/// trigger its reconcile. `None` for a run the API server has not stored yet (no uid).
pub fn owner_reference(run: &TrainingRun) -> Option<OwnerReference> {
    let mut owner = run.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// Labels shared by everything a run owns.
pub fn common_labels(run_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_NAME.to_string(), "tessera".to_string()),
        (names::LABEL_COMPONENT.to_string(), component.to_string()),
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::FIELD_MANAGER.to_string(),
        ),
        (names::LABEL_RUN.to_string(), names::run_label(run_name)),
    ])
}
