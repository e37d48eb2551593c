//! The executor: applies a [`Plan`] to the cluster, in an order that survives a crash at any
//! point between two requests.
//!
//! ```text
//! 1. finalizer added (JSON patch with a test: never clobbers another writer's list)
//! 2. status written (server-side apply on the status subresource), so a new generation is
//!    recorded before any of its pods exist: after a crash the next plan sees the pods as
//!    belonging to the recorded generation, never as strays
//! 3. service, manifest config map, pod group, pods (server-side apply, field manager `tessera-operator`), deletes
//! 4. store keys removed, events published, finalizer removed or run deleted (last)
//! ```

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tessera_api::TrainingRun;

use crate::error::{Error, is_not_found};
use crate::names::{FIELD_MANAGER, FINALIZER};
use crate::plan::{Action, Plan, RunEvent};
use crate::progress::StoreProgress;

/// Applies plans with one client, one event recorder and one progress source.
#[derive(Clone)]
pub struct Executor {
    client: Client,
    recorder: Recorder,
    progress: StoreProgress,
}

impl Executor {
    pub fn new(client: Client, recorder: Recorder, progress: StoreProgress) -> Self {
        Executor {
            client,
            recorder,
            progress,
        }
    }

    /// Applies `plan` to `run`. Returns the run as the API server last returned it after
    /// writing to it (finalizer, status), for a cache that may not have seen the write yet.
    pub async fn execute(
        &self,
        run: &TrainingRun,
        plan: &Plan,
    ) -> Result<Option<TrainingRun>, Error> {
        let mut written = None;
        let name = run.name_any();
        let namespace = run
            .namespace()
            .ok_or_else(|| Error::NoNamespace(name.clone()))?;
        let runs: Api<TrainingRun> = Api::namespaced(self.client.clone(), &namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let apply = PatchParams::apply(FIELD_MANAGER).force();

        if plan.actions.contains(&Action::AddFinalizer) {
            written = Some(self.add_finalizer(&runs, run).await?);
        }
        if run.metadata.deletion_timestamp.is_none() && run.status.as_ref() != Some(&plan.status) {
            let body = json!({
                "apiVersion": TrainingRun::api_version(&()),
                "kind": TrainingRun::kind(&()),
                "status": plan.status,
            });
            written = Some(
                runs.patch_status(&name, &apply, &Patch::Apply(&body))
                    .await
                    .map_err(|e| {
                        Error::kube(format!("writing the status of {namespace}/{name}"), e)
                    })?,
            );
        }
        for action in &plan.actions {
            match action {
                Action::ApplyService(service) => {
                    let services: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
                    let service_name = service.name_any();
                    services
                        .patch(&service_name, &apply, &Patch::Apply(service.as_ref()))
                        .await
                        .map_err(|e| Error::kube(format!("applying service {service_name}"), e))?;
                }
                Action::ApplyManifest(config_map) => {
                    let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
                    let map_name = config_map.name_any();
                    maps.patch(&map_name, &apply, &Patch::Apply(config_map.as_ref()))
                        .await
                        .map_err(|e| Error::kube(format!("applying config map {map_name}"), e))?;
                }
                Action::ApplyPodGroup {
                    scheduler,
                    pod_group,
                } => {
                    let resource = scheduler.api_resource();
                    let groups: Api<DynamicObject> =
                        Api::namespaced_with(self.client.clone(), &namespace, &resource);
                    let group_name = pod_group.name_any();
                    groups
                        .patch(&group_name, &apply, &Patch::Apply(pod_group.as_ref()))
                        .await
                        .map_err(|e| {
                            Error::kube(
                                format!(
                                    "applying {} {group_name} (is the gang scheduler installed?)",
                                    resource.api_version
                                ),
                                e,
                            )
                        })?;
                }
                Action::CreatePod(pod) => {
                    let pod_name = pod.name_any();
                    pods.patch(&pod_name, &apply, &Patch::Apply(pod.as_ref()))
                        .await
                        .map_err(|e| Error::kube(format!("creating pod {pod_name}"), e))?;
                }
                Action::DeletePod {
                    name: pod_name,
                    grace,
                } => {
                    let params = DeleteParams {
                        grace_period_seconds: grace
                            .map(|g| g.as_secs().min(u64::from(u32::MAX)) as u32),
                        ..DeleteParams::default()
                    };
                    delete_pod(&pods, pod_name, &params).await?;
                }
                Action::ForceDeletePod { name: pod_name } => {
                    tracing::warn!(pod = %pod_name, "force-deleting a pod stuck Terminating on a dead node");
                    delete_pod(&pods, pod_name, &DeleteParams::default().grace_period(0)).await?;
                }
                Action::DeleteRunKeys => {
                    self.progress.delete_run_keys(&namespace, &name).await?;
                }
                Action::Emit(event) => self.publish(run, event).await,
                Action::AddFinalizer | Action::RemoveFinalizer | Action::DeleteRun => {}
            }
        }
        if plan.actions.contains(&Action::RemoveFinalizer) {
            self.remove_finalizer(&runs, run).await?;
            written = None;
        }
        if plan.actions.contains(&Action::DeleteRun) {
            match runs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(Error::kube(
                        format!("deleting finished run {namespace}/{name}"),
                        e,
                    ));
                }
            }
        }
        Ok(written)
    }

    async fn add_finalizer(
        &self,
        runs: &Api<TrainingRun>,
        run: &TrainingRun,
    ) -> Result<TrainingRun, Error> {
        let name = run.name_any();
        let patch: json_patch::Patch = match &run.metadata.finalizers {
            None => serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])),
            Some(existing) => serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": existing},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ])),
        }
        .expect("a well-formed JSON patch");
        runs.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(|e| Error::kube(format!("adding the finalizer to {name}"), e))
    }

    async fn remove_finalizer(
        &self,
        runs: &Api<TrainingRun>,
        run: &TrainingRun,
    ) -> Result<(), Error> {
        let name = run.name_any();
        let existing = run.metadata.finalizers.clone().unwrap_or_default();
        let Some(index) = existing.iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))
        .expect("a well-formed JSON patch");
        match runs
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Error::kube(format!("removing the finalizer of {name}"), e)),
        }
    }

    /// Publishes an Event; a failure is logged, not fatal (events are best effort).
    async fn publish(&self, run: &TrainingRun, event: &RunEvent) {
        let event = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: event.action.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &run.object_ref(&())).await {
            tracing::warn!(run = %run.name_any(), %error, "could not publish an event");
        }
    }
}

async fn delete_pod(pods: &Api<Pod>, name: &str, params: &DeleteParams) -> Result<(), Error> {
    match pods.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting pod {name}"), e)),
    }
}
