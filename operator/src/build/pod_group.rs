//! The PodGroup that tells a gang scheduler to place all of a run's workers or none:
//! Volcano's (`scheduling.volcano.sh/v1beta1`) when the run's `schedulerName` is `volcano`,
//! otherwise scheduler-plugins coscheduling's (`scheduling.x-k8s.io/v1alpha1`).

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use tessera_api::TrainingRun;

use crate::names;

use super::{common_labels, owner_reference};

/// Which gang scheduler's PodGroup flavour a scheduler name selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GangScheduler {
    Volcano,
    Coscheduling,
}

impl GangScheduler {
    /// The flavour for a run's `schedulerName`; `None` when no gang scheduler is named.
    pub fn for_run(run: &TrainingRun) -> Option<GangScheduler> {
        match run.spec.scheduling.scheduler_name.as_deref()? {
            "" | "default-scheduler" => None,
            "volcano" => Some(GangScheduler::Volcano),
            _ => Some(GangScheduler::Coscheduling),
        }
    }

    /// The PodGroup kind this scheduler serves.
    pub fn api_resource(self) -> ApiResource {
        let gvk = match self {
            GangScheduler::Volcano => {
                GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup")
            }
            GangScheduler::Coscheduling => {
                GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup")
            }
        };
        ApiResource::from_gvk_with_plural(&gvk, "podgroups")
    }
}

/// The PodGroup of `run` with `min_member` = the gang's size.
pub fn pod_group(run: &TrainingRun, scheduler: GangScheduler, min_member: u32) -> DynamicObject {
    let resource = scheduler.api_resource();
    let run_name = run.name_any();
    let mut group = DynamicObject::new(&names::pod_group_name(&run_name), &resource);
    group.metadata.namespace = run.namespace();
    group.metadata.labels = Some(common_labels(&run_name, "pod-group"));
    group.metadata.owner_references = owner_reference(run).map(|o| vec![o]);
    let mut spec = json!({ "minMember": min_member });
    if let Some(class) = &run.spec.scheduling.priority_class_name {
        spec["priorityClassName"] = json!(class);
    }
    group.data = json!({ "spec": spec });
    group
}
