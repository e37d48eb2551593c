//! The operator end to end: the real Controller and a real `kube::Client` over HTTP against
//! the in-process test API server, with the test playing the scheduler and the kubelet.
//! Every test is bounded by a deadline.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tessera_api::RunProgress;
use tessera_api::status::{ConditionStatus, Phase};
use tessera_api::store_keys::RunKeys;
use tessera_operator::fixtures;
use tessera_operator::names;
use tessera_operator::progress::StoreProgress;

use support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `body` with a deadline, so a stuck scenario fails instead of hanging CI.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("the scenario finishes within 90 s");
}

fn condition(run: &tessera_api::TrainingRun, type_: &str) -> (ConditionStatus, String, String) {
    let status = run.status.clone().unwrap_or_default();
    let c = status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:#?}", status.conditions))
        .clone();
    (c.status, c.reason, c.message)
}

async fn event_reasons(client: &kube::Client, namespace: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_admitted_runs_reports_progress_and_succeeds() {
    bounded(async {
        let (server, client, kubelet) = cluster(2, 8).await;
        let progress = StoreProgress::in_memory();
        let operator = Operator::start(
            server.operator_client(),
            progress.clone(),
            test_config(),
            None,
        );

        let run = fixtures::run("gpt")
            .nodes(2)
            .gpus_per_node(8)
            .unstored()
            .build();
        submit(&client, run).await;

        // Admitted, with a headless service and one pod per node, before any kubelet work.
        let admitted = wait_for("the run to be admitted", LIMIT, || async {
            let run = runs(&client, "ml").get("gpt").await.ok()?;
            run.status.as_ref()?.is_true("Admitted").then_some(run)
        })
        .await;
        assert_eq!(admitted.finalizers(), &[names::FINALIZER.to_string()]);
        let pods = wait_for("two pods", LIMIT, || async {
            let pods = kubelet.pods_of("ml", "gpt", 1).await;
            (pods.len() == 2).then_some(pods)
        })
        .await;
        assert_eq!(pods[0].name_any(), "gpt-g1-0");
        let service = Api::<Service>::namespaced(client.clone(), "ml")
            .get("gpt")
            .await
            .expect("the headless service");
        assert_eq!(service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        // The agents' manifest, mounted by every pod, reads back as the submitted run.
        let manifest = Api::<ConfigMap>::namespaced(client.clone(), "ml")
            .get("gpt-manifest")
            .await
            .expect("the manifest ConfigMap");
        let text = &manifest.data.unwrap()["run.yaml"];
        let parsed = tessera_api::parse_training_run(text).expect("a valid manifest");
        assert_eq!(parsed.spec, admitted.spec);
        assert!(health_ready(&operator).await);

        // The kubelet starts them; agents publish progress; the status shows it.
        wait_phase(&client, &kubelet, "ml", "gpt", Phase::Running, LIMIT).await;
        progress
            .publish(
                "ml",
                "gpt",
                &RunProgress {
                    generation: 1,
                    step: 17,
                    loss: Some(3.25),
                    tokens_per_second: Some(5000.0),
                    ..RunProgress::default()
                },
            )
            .await
            .expect("publish progress");
        let running = wait_for("progress in the status", LIMIT, || async {
            let run = runs(&client, "ml").get("gpt").await.ok()?;
            (run.status.as_ref()?.step == Some(17)).then_some(run)
        })
        .await;
        let status = running.status.clone().unwrap();
        assert_eq!(status.loss, Some(3.25));
        assert_eq!(status.tokens_per_second, Some(5000.0));
        assert_eq!(status.total_steps, Some(100));
        assert_eq!(condition(&running, "Running").0, ConditionStatus::True);

        // Agents exit 0 after the last step: the run succeeds.
        for pod in kubelet.pods_of("ml", "gpt", 1).await {
            kubelet
                .set_phase("ml", &pod.name_any(), "Succeeded", 0)
                .await;
        }
        let done = wait_phase(&client, &kubelet, "ml", "gpt", Phase::Succeeded, LIMIT).await;
        assert_eq!(condition(&done, "Succeeded").1, "Completed");
        assert!(done.status.unwrap().completion_time.is_some());
        // Events follow the status write that records each transition.
        wait_for("an event for every transition", LIMIT, || async {
            let reasons = event_reasons(&client, "ml").await;
            ["GangFits", "GangRunning", "Completed"]
                .iter()
                .all(|r| reasons.contains(&r.to_string()))
                .then_some(())
        })
        .await;
        let metrics = operator.metrics.render();
        assert!(
            metrics.contains("tessera_operator_reconcile_total{result=\"ok\"}"),
            "{metrics}"
        );
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

async fn health_ready(operator: &Operator) -> bool {
    tokio::time::timeout(LIMIT, operator.health.synced())
        .await
        .is_ok()
        && operator.health.is_ready()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pod_restarts_the_gang_at_generation_two_and_it_resumes() {
    bounded(async {
        let (server, client, kubelet) = cluster(2, 1).await;
        let operator = Operator::start_plain(&server);
        submit(
            &client,
            fixtures::run("flaky").backoff_seconds(1).unstored().build(),
        )
        .await;
        wait_phase(&client, &kubelet, "ml", "flaky", Phase::Running, LIMIT).await;

        kubelet.set_phase("ml", "flaky-g1-1", "Failed", 137).await;
        let restarting = wait_for("the restart", LIMIT, || async {
            let run = runs(&client, "ml").get("flaky").await.ok()?;
            (run.status.as_ref()?.generation == Some(2)).then_some(run)
        })
        .await;
        let status = restarting.status.clone().unwrap();
        assert_eq!(status.restarts, 1);
        let (_, reason, message) = condition(&restarting, "Restarting");
        assert_eq!(reason, "PodFailed");
        assert!(message.contains("exited with code 137"), "{message}");

        let resumed = wait_phase(&client, &kubelet, "ml", "flaky", Phase::Running, LIMIT).await;
        assert_eq!(condition(&resumed, "Restarting").0, ConditionStatus::False);
        let names: Vec<String> = kubelet
            .pods_of("ml", "flaky", 2)
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, vec!["flaky-g2-0", "flaky-g2-1"]);
        assert!(kubelet.pods_of("ml", "flaky", 1).await.is_empty());
        assert!(
            event_reasons(&client, "ml")
                .await
                .contains(&"PodFailed".to_string())
        );
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_shrinks_an_elastic_run() {
    bounded(async {
        let (server, client, kubelet) = cluster(3, 1).await;
        let operator = Operator::start_plain(&server);
        let run = fixtures::run("elastic")
            .nodes(3)
            .min_nodes(2)
            .backoff_seconds(0)
            .unstored();
        submit(&client, run.build()).await;
        wait_phase(&client, &kubelet, "ml", "elastic", Phase::Running, LIMIT).await;

        let victim = kubelet.pods_of("ml", "elastic", 1).await[2].clone();
        let node = victim.spec.unwrap().node_name.unwrap();
        fail_node(&client, &node).await;
        let shrunk = wait_for("the shrink", LIMIT, || async {
            kubelet.tick().await;
            let run = runs(&client, "ml").get("elastic").await.ok()?;
            let status = run.status.clone()?;
            (status.phase == Some(Phase::Running) && status.generation == Some(2)).then_some(run)
        })
        .await;
        let status = shrunk.status.clone().unwrap();
        assert_eq!(status.nodes, Some(2));
        assert!(
            condition(&shrunk, "Running")
                .2
                .contains("shrunk from 3 nodes")
        );
        let pods = kubelet.pods_of("ml", "elastic", 2).await;
        assert_eq!(pods.len(), 2);
        assert!(
            pods.iter()
                .all(|p| p.spec.as_ref().unwrap().node_name.as_ref() != Some(&node))
        );
        // The pod on the dead node was force-deleted after the timeout.
        assert!(kubelet.pods_of("ml", "elastic", 1).await.is_empty());
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_room_waits_until_gpus_are_freed() {
    bounded(async {
        let (server, client, kubelet) = cluster(1, 8).await;
        let operator = Operator::start_plain(&server);
        submit(
            &client,
            fixtures::run("first")
                .nodes(1)
                .gpus_per_node(8)
                .unstored()
                .build(),
        )
        .await;
        wait_phase(&client, &kubelet, "ml", "first", Phase::Running, LIMIT).await;

        submit(
            &client,
            fixtures::run("second")
                .nodes(1)
                .gpus_per_node(8)
                .unstored()
                .build(),
        )
        .await;
        // Refused with the numbers (once the capacity snapshot shows the first run's pod bound,
        // the message counts its GPUs as in use rather than as reserved by a run ahead).
        let expected = "needs 1 node with 8 free nvidia.com/gpu each; 0 of 1 eligible node have \
                        room (8 of 8 nvidia.com/gpu in use)";
        let waiting = wait_for("second to be refused with the numbers", LIMIT, || async {
            let run = runs(&client, "ml").get("second").await.ok()?;
            let admitted = run.status.as_ref()?.condition("Admitted")?.clone();
            (admitted.reason == "InsufficientResources" && admitted.message == expected)
                .then_some(run)
        })
        .await;
        assert_eq!(waiting.status.as_ref().unwrap().phase, Some(Phase::Pending));
        assert!(kubelet.pods_of("ml", "second", 1).await.is_empty());

        // The first run finishes: its GPUs are free, and the second is admitted.
        kubelet.set_phase("ml", "first-g1-0", "Succeeded", 0).await;
        wait_phase(&client, &kubelet, "ml", "first", Phase::Succeeded, LIMIT).await;
        wait_phase(&client, &kubelet, "ml", "second", Phase::Running, LIMIT).await;
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_the_gang_and_resume_starts_a_new_generation() {
    bounded(async {
        let (server, client, kubelet) = cluster(2, 1).await;
        let operator = Operator::start_plain(&server);
        submit(&client, fixtures::run("pausable").unstored().build()).await;
        wait_phase(&client, &kubelet, "ml", "pausable", Phase::Running, LIMIT).await;

        let suspend = |value: bool| json!({"spec": {"scheduling": {"suspend": value}}});
        runs(&client, "ml")
            .patch(
                "pausable",
                &PatchParams::default(),
                &Patch::Merge(&suspend(true)),
            )
            .await
            .expect("suspend");
        // The pods get the long grace period (time to checkpoint), then the kubelet removes them.
        let terminating = wait_for("graceful deletion", LIMIT, || async {
            let pods = kubelet.pods_of("ml", "pausable", 1).await;
            pods.iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(pods)
        })
        .await;
        assert_eq!(
            terminating[0].metadata.deletion_grace_period_seconds,
            Some(30)
        );
        let suspended =
            wait_phase(&client, &kubelet, "ml", "pausable", Phase::Suspended, LIMIT).await;
        assert_eq!(condition(&suspended, "Suspended").0, ConditionStatus::True);
        wait_for("the pods to go", LIMIT, || async {
            kubelet.tick().await;
            kubelet
                .pods_of("ml", "pausable", 1)
                .await
                .is_empty()
                .then_some(())
        })
        .await;

        runs(&client, "ml")
            .patch(
                "pausable",
                &PatchParams::default(),
                &Patch::Merge(&suspend(false)),
            )
            .await
            .expect("resume");
        let resumed = wait_phase(&client, &kubelet, "ml", "pausable", Phase::Running, LIMIT).await;
        let status = resumed.status.clone().unwrap();
        assert_eq!(status.generation, Some(2));
        assert_eq!(status.restarts, 0);
        assert_eq!(condition(&resumed, "Suspended").0, ConditionStatus::False);
        let reasons = event_reasons(&client, "ml").await;
        assert!(
            reasons.contains(&"Suspended".to_string()) && reasons.contains(&"Resumed".to_string())
        );
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_run_stops_its_pods_and_removes_its_store_keys_before_it_goes() {
    bounded(async {
        let (server, client, kubelet) = cluster(2, 1).await;
        let progress = StoreProgress::in_memory();
        let operator = Operator::start(
            server.operator_client(),
            progress.clone(),
            test_config(),
            None,
        );
        submit(&client, fixtures::run("tidy").unstored().build()).await;
        submit(
            &client,
            fixtures::run("neighbour").nodes(1).unstored().build(),
        )
        .await;
        wait_phase(&client, &kubelet, "ml", "tidy", Phase::Running, LIMIT).await;
        progress
            .publish(
                "ml",
                "tidy",
                &RunProgress {
                    generation: 1,
                    step: 5,
                    ..RunProgress::default()
                },
            )
            .await
            .expect("publish progress");
        progress
            .store()
            .put(
                &RunKeys::new("ml", "tidy").generation(),
                b"1".to_vec(),
                None,
            )
            .await
            .expect("put a generation key");
        progress
            .publish("ml", "neighbour", &RunProgress::default())
            .await
            .expect("publish progress");

        runs(&client, "ml")
            .delete("tidy", &DeleteParams::default())
            .await
            .expect("delete the run");
        // Held by the finalizer while the pods stop.
        let held = runs(&client, "ml").get("tidy").await.expect("still there");
        assert!(held.metadata.deletion_timestamp.is_some());
        wait_for("the run to be gone", LIMIT, || async {
            kubelet.tick().await;
            runs(&client, "ml")
                .get_opt("tidy")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        assert!(kubelet.pods_of("ml", "tidy", 1).await.is_empty());
        let left: Vec<String> = progress
            .store()
            .get_prefix(tessera_api::store_keys::ROOT)
            .await
            .expect("list the store")
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(left, vec![RunKeys::new("ml", "neighbour").progress()]);
        assert!(
            Api::<Service>::namespaced(client.clone(), "ml")
                .get_opt("tidy")
                .await
                .unwrap()
                .is_none()
        );
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_one_leads_and_the_other_takes_over_when_it_dies() {
    bounded(async {
        let (server, client, kubelet) = cluster(4, 1).await;
        let progress = StoreProgress::in_memory();
        let a = Operator::start(
            server.operator_client(),
            progress.clone(),
            test_config(),
            Some("replica-a"),
        );
        let b = Operator::start(
            server.operator_client(),
            progress.clone(),
            test_config(),
            Some("replica-b"),
        );
        let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
        let holder = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        let first = wait_for("a leader", LIMIT, || async {
            holder(&leases.get("tessera-operator").await.ok()?)
        })
        .await;
        let (leader, standby) = if first == "replica-a" { (a, b) } else { (b, a) };
        assert!(standby.health.is_standby() && standby.health.is_ready());

        submit(&client, fixtures::run("one").unstored().build()).await;
        wait_phase(&client, &kubelet, "ml", "one", Phase::Running, LIMIT).await;
        // The standby never wrote: every status write came from the leader's field manager,
        // and the standby never reconciled.
        assert!(
            !standby
                .metrics
                .render()
                .contains("tessera_operator_reconcile_total{")
        );

        // The leader dies without releasing the lease; the standby takes over once it expires.
        leader.task.abort();
        let second = wait_for("a new leader", LIMIT, || async {
            let lease = leases.get("tessera-operator").await.ok()?;
            holder(&lease).filter(|h| *h != first).map(|h| (h, lease))
        })
        .await;
        assert_eq!(second.1.spec.unwrap().lease_transitions, Some(1));
        submit(&client, fixtures::run("two").unstored().build()).await;
        wait_phase(&client, &kubelet, "ml", "two", Phase::Running, LIMIT).await;
        assert!(
            standby
                .metrics
                .render()
                .contains("tessera_operator_leader 1")
        );
        // A graceful stop releases the lease at once.
        standby.stop().await.expect("a clean stop");
        let released = leases.get("tessera-operator").await.unwrap();
        assert_eq!(holder(&released), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_created_with_server_side_apply_and_validated_by_the_server() {
    bounded(async {
        let server = ApiServer::start().await;
        let client = server.client();
        create_nodes(&client, 4, 1).await;
        let operator = Operator::start_plain(&server);
        submit(&client, fixtures::run("applied").unstored().build()).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "ml");
        let pod = wait_for("a pod", LIMIT, || async {
            pods.get_opt("applied-g1-0").await.ok()?
        })
        .await;
        let security = pod.spec.unwrap().containers[0]
            .security_context
            .clone()
            .unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert!(server.request_counts().get("patch").copied().unwrap_or(0) >= 3);
        // A rejected write (the server refuses pods) is retried, not fatal.
        server.fail_writes("/pods", Some(500));
        submit(&client, fixtures::run("refused").unstored().build()).await;
        wait_for("an error metric", LIMIT, || async {
            operator
                .metrics
                .render()
                .contains("tessera_operator_reconcile_errors_total{reason=\"api\"}")
                .then_some(())
        })
        .await;
        server.fail_writes("/pods", None);
        wait_for("the refused run's pods", LIMIT, || async {
            pods.get_opt("refused-g1-1").await.ok()?
        })
        .await;
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_racing_for_one_gang_of_gpus_are_never_both_admitted() {
    bounded(async {
        let server = ApiServer::start().await;
        let client = server.client();
        create_nodes(&client, 2, 8).await;
        let operator = Operator::start_plain(&server);
        // Submitted together: only one gang of 2 × 8 GPUs fits.
        let (a, b) = tokio::join!(
            submit(
                &client,
                fixtures::run("left")
                    .nodes(2)
                    .gpus_per_node(8)
                    .unstored()
                    .build()
            ),
            submit(
                &client,
                fixtures::run("right")
                    .nodes(2)
                    .gpus_per_node(8)
                    .unstored()
                    .build()
            ),
        );
        let _ = (a, b);
        let decided = wait_for("both runs decided", LIMIT, || async {
            let mut reasons = Vec::new();
            for name in ["left", "right"] {
                let run = runs(&client, "ml").get(name).await.ok()?;
                reasons.push(run.status?.condition("Admitted")?.reason.clone());
            }
            reasons.sort();
            (reasons.len() == 2 && !reasons.contains(&"WaitingForPodsToStop".to_string()))
                .then_some(reasons)
        })
        .await;
        assert_eq!(decided, vec!["GangFits", "InsufficientResources"]);
        // It stays that way while the first holds the GPUs.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pods = Api::<Pod>::namespaced(client.clone(), "ml")
            .list(&ListParams::default())
            .await
            .unwrap();
        assert_eq!(pods.items.len(), 2);
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_gpus_go_to_the_higher_priority_run_first() {
    bounded(async {
        use k8s_openapi::api::scheduling::v1::PriorityClass;
        let (server, client, kubelet) = cluster(1, 8).await;
        let classes: Api<PriorityClass> = Api::all(client.clone());
        let class: PriorityClass = serde_json::from_value(json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "urgent"}, "value": 1000
        }))
        .unwrap();
        classes.create(&Default::default(), &class).await.unwrap();
        let operator = Operator::start_plain(&server);
        let gang = |name: &str| fixtures::run(name).nodes(1).gpus_per_node(8).unstored();
        submit(&client, gang("holder").build()).await;
        wait_phase(&client, &kubelet, "ml", "holder", Phase::Running, LIMIT).await;
        // The older run has the default priority; the younger one is urgent.
        submit(&client, gang("older").build()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        submit(&client, gang("urgent").priority_class("urgent").build()).await;
        for name in ["older", "urgent"] {
            wait_for("the waiting runs to be refused", LIMIT, || async {
                let run = runs(&client, "ml").get(name).await.ok()?;
                (run.status?.condition("Admitted")?.reason == "InsufficientResources").then_some(())
            })
            .await;
        }
        kubelet.set_phase("ml", "holder-g1-0", "Succeeded", 0).await;
        wait_phase(&client, &kubelet, "ml", "urgent", Phase::Running, LIMIT).await;
        let older = runs(&client, "ml").get("older").await.unwrap();
        let (_, reason, message) = condition(&older, "Admitted");
        assert_eq!(reason, "InsufficientResources", "{message}");
        operator.stop().await.expect("a clean stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_scheduler_gets_a_pod_group_and_labelled_pods() {
    bounded(async {
        let (server, client, kubelet) = cluster(2, 1).await;
        let operator = Operator::start_plain(&server);
        let run = fixtures::run("coscheduled")
            .scheduler_name("scheduler-plugins-scheduler")
            .unstored()
            .build();
        submit(&client, run).await;
        wait_phase(
            &client,
            &kubelet,
            "ml",
            "coscheduled",
            Phase::Running,
            LIMIT,
        )
        .await;
        let group = server
            .get("scheduling.x-k8s.io/podgroups", "ml", "coscheduled")
            .expect("a PodGroup");
        assert_eq!(group["spec"]["minMember"], 2);
        assert_eq!(
            group["metadata"]["ownerReferences"][0]["kind"],
            "TrainingRun"
        );
        for pod in kubelet.pods_of("ml", "coscheduled", 1).await {
            assert_eq!(
                pod.labels()[names::COSCHEDULING_POD_GROUP_LABEL],
                "coscheduled"
            );
            assert_eq!(
                pod.spec.unwrap().scheduler_name.as_deref(),
                Some("scheduler-plugins-scheduler")
            );
        }
        operator.stop().await.expect("a clean stop");
    })
    .await;
}
