//! The test API server itself, through a real `kube::Client`: the semantics the operator's
//! scenarios rely on (conflicts, the status subresource, server-side apply, selectors,
//! watches, finalizers, garbage collection, validation).

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tessera_api::TrainingRun;
use tessera_operator::fixtures;

use support::ApiServer;

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn stale_resource_versions_conflict() {
    let server = ApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    let created = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let mut first = created.clone();
    first.labels_mut().insert("x".into(), "1".into());
    pods.replace("a", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = created;
    stale.labels_mut().insert("x".into(), "2".into());
    let error = pods
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409),
        "{error}"
    );
    let again = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(again, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists")
    );
}

#[tokio::test]
async fn the_status_subresource_is_separate_from_the_object() {
    let server = ApiServer::start().await;
    let runs: Api<TrainingRun> = Api::namespaced(server.client(), "ml");
    let run = fixtures::run("r").unstored().build();
    let created = runs.create(&PostParams::default(), &run).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let status = json!({"status": {"phase": "Running", "restarts": 2}});
    runs.patch("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert!(
        runs.get("r").await.unwrap().status.is_none(),
        "the main resource ignores status"
    );
    runs.patch_status("r", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let stored = runs.get("r").await.unwrap();
    assert_eq!(stored.status.unwrap().restarts, 2);
    assert_eq!(
        stored.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );
    let spec = json!({"spec": {"training": {"steps": 5}}});
    let changed = runs
        .patch("r", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
}

#[tokio::test]
async fn invalid_objects_are_refused_with_422() {
    let server = ApiServer::start().await;
    let runs: Api<TrainingRun> = Api::namespaced(server.client(), "ml");
    let mut run = fixtures::run("bad").unstored().build();
    run.spec.parallelism.nodes = 0;
    let error = runs.create(&PostParams::default(), &run).await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("spec.parallelism.nodes")),
        "{error}"
    );
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    let mut no_image = pod("p", json!({}));
    no_image.spec.as_mut().unwrap().containers[0].image = None;
    let error = pods
        .create(&PostParams::default(), &no_image)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422),
        "{error}"
    );
    // A kind the server does not serve is a 404, as a missing CRD is.
    let secrets: Api<Secret> = Api::namespaced(server.client(), "ml");
    let error = secrets.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error}"
    );
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_drops_omitted_fields() {
    let server = ApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    let apply = PatchParams::apply("tessera-operator").force();
    let mut first = pod("s", json!({"a": "1", "b": "2"}));
    first.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
    pods.patch("s", &apply, &Patch::Apply(&first))
        .await
        .unwrap();
    let second = pod("s", json!({"a": "1"}));
    let stored = pods
        .patch("s", &apply, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(stored.labels().len(), 1, "{:?}", stored.labels());
    assert!(stored.annotations().is_empty());
    let version = stored.resource_version();
    let again = pods
        .patch("s", &apply, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        version,
        "a no-op apply changes nothing"
    );
    let missing_manager = pods
        .patch("s", &PatchParams::default(), &Patch::Apply(&second))
        .await
        .unwrap_err();
    assert!(matches!(missing_manager, kube::Error::Api(ref s) if s.code == 400));
}

#[tokio::test]
async fn json_patch_tests_guard_finalizer_changes() {
    let server = ApiServer::start().await;
    let runs: Api<TrainingRun> = Api::namespaced(server.client(), "ml");
    runs.create(
        &PostParams::default(),
        &fixtures::run("f").unstored().build(),
    )
    .await
    .unwrap();
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}
    ]))
    .unwrap();
    runs.patch(
        "f",
        &PatchParams::default(),
        &Patch::Json::<()>(add.clone()),
    )
    .await
    .unwrap();
    let error = runs
        .patch("f", &PatchParams::default(), &Patch::Json::<()>(add))
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422),
        "{error}"
    );
    // Deletion waits for the finalizer; removing it lets the object go.
    runs.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(
        runs.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    let remove: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers/0"}]))
            .unwrap();
    runs.patch("f", &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
        .unwrap();
    assert!(runs.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn lists_filter_by_selectors_and_page() {
    let server = ApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    for i in 0..7 {
        let labels = json!({"run": if i % 2 == 0 { "even" } else { "odd" }});
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), labels))
            .await
            .unwrap();
    }
    let even = pods
        .list(&ListParams::default().labels("run=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    let not_even = pods
        .list(&ListParams::default().labels("run!=even"))
        .await
        .unwrap();
    assert_eq!(not_even.items.len(), 3);
    let set = pods
        .list(&ListParams::default().labels("run in (odd,other)"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 3);
    let named = pods
        .list(&ListParams::default().fields("metadata.name=p3"))
        .await
        .unwrap();
    assert_eq!(named.items.len(), 1);
    let page = pods.list(&ListParams::default().limit(5)).await.unwrap();
    assert_eq!(page.items.len(), 5);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = pods
        .list(&ListParams::default().limit(5).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
}

#[tokio::test]
async fn watches_resume_from_a_resource_version_and_see_deletions_and_garbage_collection() {
    let server = ApiServer::start().await;
    let client = server.client();
    let runs: Api<TrainingRun> = Api::namespaced(client.clone(), "ml");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ml");
    let run = runs
        .create(
            &PostParams::default(),
            &fixtures::run("owner").unstored().build(),
        )
        .await
        .unwrap();
    let list = pods.list(&ListParams::default()).await.unwrap();
    let version = list.metadata.resource_version.unwrap();
    let mut child = pod("child", json!({}));
    child.metadata.owner_references = Some(vec![
        tessera_operator::build::owner_reference(&run).unwrap(),
    ]);
    pods.create(&PostParams::default(), &child).await.unwrap();
    let mut stream = pods
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, Some(WatchEvent::Added(ref p)) if p.name_any() == "child"));
    runs.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(second, Some(WatchEvent::Deleted(ref p)) if p.name_any() == "child"),
        "{second:?}"
    );
    // A version older than the kept history is gone: the client must list again.
    let mut old = pods
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    let first_event = tokio::time::timeout(Duration::from_secs(5), old.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first_event, Some(WatchEvent::Added(_))),
        "history is still complete: {first_event:?}"
    );
}
