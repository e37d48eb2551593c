//! The Helm chart (charts/tessera), rendered by Helm's own template engine for the default
//! values and each value set in charts/tessera/ci/: `helm lint --strict` is clean, every object
//! parses as its Kubernetes type, the RBAC is exactly the operator's `rbac::RULES`, the
//! PodMonitor selects the pods the operator builds, `promtool check rules` accepts the alerts,
//! and the alerts and dashboard read only metrics the binaries export.

mod chart_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use chart_support::monitoring::{PodMonitor, PrometheusRule, ServiceMonitor};
use chart_support::{NAMESPACE, Rendered, of_kind};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use tessera_operator::rbac::{self, Scope};

/// Every value set, rendered once per test binary run.
fn rendered() -> BTreeMap<String, (Vec<Value>, Vec<String>, Value)> {
    let sets = chart_support::value_sets();
    assert!(
        sets.len() >= 3,
        "the defaults and at least two ci/ value sets"
    );
    chart_support::render_sets(&sets)
        .into_iter()
        .map(|(name, rendered)| match rendered {
            Rendered::Ok {
                manifests,
                crds,
                lint,
            } => (name, (chart_support::objects(&manifests), crds, lint)),
            Rendered::Refused(error) => panic!("value set {name} does not render:\n{error}"),
        })
        .collect()
}

/// Parses `object` as `T` and back: the JSON must survive unchanged, so no field is unknown to
/// the type, misplaced or of the wrong shape.
fn round_trips<T>(object: &Value) -> T
where
    T: k8s_openapi::Resource + serde::de::DeserializeOwned + serde::Serialize,
{
    assert_eq!(object["apiVersion"], T::API_VERSION, "{object}");
    let typed: T = serde_json::from_value(object.clone()).unwrap_or_else(|e| {
        panic!("not a {}: {e}\n{object:#}", T::KIND);
    });
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back,
        object,
        "{} {} changes when parsed as its type",
        T::KIND,
        object["metadata"]["name"]
    );
    typed
}

fn parses_as_its_type(object: &Value) {
    match object["kind"].as_str().unwrap_or_default() {
        "ServiceAccount" => {
            round_trips::<ServiceAccount>(object);
        }
        "ClusterRole" => {
            round_trips::<ClusterRole>(object);
        }
        "ClusterRoleBinding" => {
            round_trips::<ClusterRoleBinding>(object);
        }
        "Role" => {
            round_trips::<Role>(object);
        }
        "RoleBinding" => {
            round_trips::<RoleBinding>(object);
        }
        "Deployment" => {
            round_trips::<Deployment>(object);
        }
        "StatefulSet" => {
            round_trips::<StatefulSet>(object);
        }
        "Service" => {
            round_trips::<Service>(object);
        }
        "ConfigMap" => {
            round_trips::<ConfigMap>(object);
        }
        "PodDisruptionBudget" => {
            round_trips::<PodDisruptionBudget>(object);
        }
        "ServiceMonitor" => {
            serde_json::from_value::<ServiceMonitor>(object.clone()).unwrap();
        }
        "PodMonitor" => {
            serde_json::from_value::<PodMonitor>(object.clone()).unwrap();
        }
        "PrometheusRule" => {
            serde_json::from_value::<PrometheusRule>(object.clone()).unwrap();
        }
        other => panic!("the chart renders a {other} the tests do not know:\n{object:#}"),
    }
}

#[test]
fn every_value_set_renders_lints_clean_and_parses_as_kubernetes_types() {
    let generated =
        std::fs::read_to_string(chart_support::workspace().join("crds/trainingrun.yaml")).unwrap();
    for (name, (objects, crds, lint)) in rendered() {
        let problems: Vec<&Value> = lint["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            problems.is_empty() && lint["errors"].as_array().is_none_or(|e| e.is_empty()),
            "helm lint --strict with {name}: {lint:#}"
        );
        assert_eq!(crds, vec![generated.clone()], "{name}: the chart's CRDs");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&crds[0]).unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("trainingruns.tessera.dev")
        );
        for object in &objects {
            parses_as_its_type(object);
            if object["kind"] != "ClusterRole" && object["kind"] != "ClusterRoleBinding" {
                assert_eq!(
                    object["metadata"]["namespace"], NAMESPACE,
                    "{name}: {} {} is namespaced in the release namespace",
                    object["kind"], object["metadata"]["name"]
                );
            }
        }
        let names: BTreeSet<(String, String)> = objects
            .iter()
            .map(|o| (o["kind"].to_string(), o["metadata"]["name"].to_string()))
            .collect();
        assert_eq!(
            names.len(),
            objects.len(),
            "{name}: two objects share a name"
        );
    }
}

#[test]
fn the_chart_crd_is_the_generated_crd_file() {
    let chart = std::fs::read(chart_support::chart_dir().join("crds/trainingrun.yaml")).unwrap();
    let generated =
        std::fs::read(chart_support::workspace().join("crds/trainingrun.yaml")).unwrap();
    assert!(
        chart == generated,
        "charts/tessera/crds/trainingrun.yaml differs from crds/trainingrun.yaml; copy it: \
         cp crds/trainingrun.yaml charts/tessera/crds/"
    );
}

/// (group, resource, verb) granted by a list of RBAC rules.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut all = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    all.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    all
}

fn operator_grants(scope: Scope) -> BTreeSet<(String, String, String)> {
    rbac::grants()
        .into_iter()
        .filter(|(.., s)| *s == scope)
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

#[test]
fn rbac_is_exactly_the_operators_rules() {
    for (name, (objects, ..)) in rendered() {
        let cluster_roles = of_kind(&objects, "ClusterRole");
        let roles = of_kind(&objects, "Role");
        assert_eq!((cluster_roles.len(), roles.len()), (1, 1), "{name}");
        let cluster: ClusterRole = round_trips(cluster_roles[0]);
        let role: Role = round_trips(roles[0]);
        assert_eq!(
            grants(cluster.rules.as_deref().unwrap_or_default()),
            operator_grants(Scope::Cluster),
            "{name}: the ClusterRole differs from tessera_operator::rbac::RULES (Cluster scope)"
        );
        assert_eq!(
            grants(role.rules.as_deref().unwrap_or_default()),
            operator_grants(Scope::OperatorNamespace),
            "{name}: the Role differs from tessera_operator::rbac::RULES (operator namespace)"
        );

        // Both bound to the operator's ServiceAccount, which the Deployment runs as.
        let deployment: Deployment = round_trips(of_kind(&objects, "Deployment")[0]);
        let account = deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .unwrap();
        let cluster_binding: ClusterRoleBinding =
            round_trips(of_kind(&objects, "ClusterRoleBinding")[0]);
        let binding: RoleBinding = round_trips(of_kind(&objects, "RoleBinding")[0]);
        for (role_ref, subjects) in [
            (&cluster_binding.role_ref, cluster_binding.subjects.unwrap()),
            (&binding.role_ref, binding.subjects.unwrap()),
        ] {
            assert_eq!(Some(&role_ref.name), cluster.metadata.name.as_ref());
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0].kind, "ServiceAccount");
            assert_eq!(subjects[0].name, account);
            assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        }
    }
}

/// `tessera-operator`, next to `tessera`; built when this test run did not build it.
fn operator_binary() -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_BIN_EXE_tessera")).with_file_name("tessera-operator");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "tessera-operator",
                "--bin",
                "tessera-operator",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p tessera-operator failed");
    }
    path
}

fn operator_args(objects: &[Value]) -> Vec<String> {
    let deployment: Deployment = round_trips(of_kind(objects, "Deployment")[0]);
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    pod.containers[0].args.clone().unwrap()
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

#[test]
fn the_operator_deployment_matches_the_binary_and_the_store() {
    let help = Command::new(operator_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let rendered = rendered();
    for (name, (objects, ..)) in &rendered {
        let args = operator_args(objects);
        for a in &args {
            let flag = a.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} <")),
                "{name}: tessera-operator has no {flag}\n{help}"
            );
        }
        let deployment: Deployment = round_trips(of_kind(objects, "Deployment")[0]);
        let spec = deployment.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());
        assert!(container.resources.as_ref().unwrap().requests.is_some());
        let security = pod.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true), "{name}");
        let container_security = container.security_context.as_ref().unwrap();
        assert_eq!(container_security.read_only_root_filesystem, Some(true));
        assert_eq!(container_security.allow_privilege_escalation, Some(false));
        assert!(
            container
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "POD_NAMESPACE"),
            "the lease namespace comes from the pod's namespace"
        );

        let store = arg(&args, "--store").unwrap();
        let statefulsets = of_kind(objects, "StatefulSet");
        if name == "external-etcd-values" {
            assert!(
                statefulsets.is_empty(),
                "no bundled etcd with external endpoints"
            );
            assert_eq!(
                store,
                "etcd://etcd-0.etcd.infra.svc:2379,etcd-1.etcd.infra.svc:2379,etcd-2.etcd.infra.svc:2379"
            );
            assert_eq!(spec.replicas, Some(1));
            assert_eq!(arg(&args, "--namespace"), Some("training"));
        } else {
            // The bundled etcd: 3 members, each reachable by name through the headless Service.
            let etcd: StatefulSet = round_trips(statefulsets[0]);
            let etcd_name = etcd.metadata.name.clone().unwrap();
            let etcd_spec = etcd.spec.unwrap();
            assert_eq!(etcd_spec.replicas, Some(3), "{name}");
            let service = etcd_spec.service_name.unwrap();
            let members: Vec<String> = (0..3)
                .map(|i| format!("{etcd_name}-{i}.{service}.{NAMESPACE}.svc:2379"))
                .collect();
            assert_eq!(store, format!("etcd://{}", members.join(",")), "{name}");
            let headless: Service = of_kind(objects, "Service")
                .into_iter()
                .map(round_trips::<Service>)
                .find(|s| s.metadata.name.as_deref() == Some(service.as_str()))
                .expect("the etcd Service");
            assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
            let etcd_args = etcd_spec.template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap();
            let cluster = arg(&etcd_args, "--initial-cluster").unwrap();
            assert_eq!(cluster.split(',').count(), 3, "{cluster}");
            assert_eq!(spec.replicas, Some(2), "{name}: two operator replicas");
            assert_eq!(arg(&args, "--leader-election"), Some("true"));
        }
    }
}

#[test]
fn the_pod_monitor_selects_the_worker_pods_the_operator_builds() {
    use tessera_operator::build::pod::{WorkerSlot, worker_pod};
    let run = tessera_operator::fixtures::run("gpt").build();
    let pod = worker_pod(
        &run,
        WorkerSlot {
            generation: 1,
            node_rank: 0,
            nodes: 1,
        },
        &tessera_operator::OperatorConfig::default(),
    );
    let labels = pod.metadata.labels.clone().unwrap();
    let ports: Vec<String> = pod.spec.unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    let mut checked = 0;
    for (name, (objects, ..)) in rendered() {
        for object in of_kind(&objects, "PodMonitor") {
            let monitor: PodMonitor = serde_json::from_value(object.clone()).unwrap();
            let selector = monitor.spec.selector;
            for (key, value) in selector.match_labels.iter().flatten() {
                assert_eq!(labels.get(key), Some(value), "{name}: label {key}");
            }
            for expression in selector.match_expressions.iter().flatten() {
                assert_eq!(expression.operator, "Exists");
                assert!(
                    labels.contains_key(&expression.key),
                    "{name}: {}",
                    expression.key
                );
            }
            let endpoint = &monitor.spec.pod_metrics_endpoints[0];
            assert_eq!(
                endpoint.honor_labels,
                Some(true),
                "keeps the agents' labels"
            );
            let keep = &endpoint.relabelings[0];
            assert_eq!(keep.action, "keep");
            let pattern = format!("^(?:{})$", keep.regex);
            let kept: Vec<&String> = ports
                .iter()
                .filter(|p| regex_lite_match(&pattern, p))
                .collect();
            // The fixture run has one GPU per node: one trainer rank beside the agent.
            assert_eq!(
                kept,
                vec!["metrics", "trainer-0"],
                "{name}: the agent's and the trainer rank's ports are scraped"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "at least two value sets enable the PodMonitor"
    );
}

/// Matches `text` against the PodMonitor's regex, which is `a|b-[0-9]+` shaped (anchored).
fn regex_lite_match(pattern: &str, text: &str) -> bool {
    let inner = pattern
        .strip_prefix("^(?:")
        .and_then(|p| p.strip_suffix(")$"))
        .unwrap();
    inner
        .split('|')
        .any(|alternative| match alternative.strip_suffix("[0-9]+") {
            Some(prefix) => text
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())),
            None => alternative == text,
        })
}

#[test]
fn promtool_accepts_the_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (name, (objects, ..)) in rendered() {
        for rule in of_kind(&objects, "PrometheusRule") {
            let file = chart_support::write(
                dir.path(),
                &format!("{name}.yaml"),
                &serde_yaml::to_string(&rule["spec"]).unwrap(),
            );
            let out = Command::new("promtool")
                .args(["check", "rules"])
                .arg(&file)
                .output()
                .expect(
                    "promtool (Debian's prometheus package; bash scripts/setup.sh installs it)",
                );
            assert!(
                out.status.success(),
                "promtool check rules rejects {name}'s alerts:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "at least two value sets enable the alerts");
}

#[test]
fn alerts_and_dashboard_read_only_exported_metrics() {
    let exported: BTreeSet<&str> = tessera_api::metrics::ALL.iter().copied().collect();
    for (name, (objects, ..)) in rendered() {
        let mut expressions: Vec<(String, String)> = chart_support::alerts(&objects)
            .into_iter()
            .map(|a| (a.name, a.expr))
            .collect();
        if !of_kind(&objects, "ConfigMap").is_empty() {
            expressions.extend(chart_support::dashboard_queries(&chart_support::dashboard(
                &objects,
            )));
        }
        for (what, expr) in &expressions {
            let names = chart_support::metric_names(expr);
            assert!(
                !names.is_empty(),
                "{name}: {what} reads no Tessera metric: {expr}"
            );
            for metric in names {
                assert!(
                    exported.contains(metric.as_str()),
                    "{name}: {what} reads {metric}, which no binary exports (api/src/metrics.rs)"
                );
            }
        }
    }
    let alerts: BTreeSet<String> = rendered()["external-etcd-values"]
        .0
        .iter()
        .filter(|o| o["kind"] == "PrometheusRule")
        .flat_map(|o| chart_support::alerts(std::slice::from_ref(o)))
        .map(|a| a.name)
        .collect();
    for wanted in [
        "TesseraRunFailed",
        "TesseraRestartsClimbing",
        "TesseraNoStepProgress",
        "TesseraGPUUnhealthy",
        "TesseraCheckpointStale",
        "TesseraStoreUnreachable",
        "TesseraOperatorNotLeading",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
}

#[test]
fn values_outside_the_schema_or_contradicting_each_other_are_refused() {
    let cases = [
        (
            "both stores",
            json!({"store": {"etcd": {"endpoints": ["etcd:2379"]}}}),
            "oneOf",
        ),
        (
            "no store",
            json!({"store": {"bundled": {"enabled": false}}}),
            "oneOf",
        ),
        (
            "an endpoint without a port",
            json!({"store": {"etcd": {"endpoints": ["etcd"]}, "bundled": {"enabled": false}}}),
            "/store/etcd/endpoints/0",
        ),
        ("an unknown key", json!({"operater": {}}), "operater"),
        (
            "an even etcd",
            json!({"store": {"bundled": {"replicas": 2}}}),
            "/store/bundled/replicas",
        ),
        (
            "two leaders",
            json!({"operator": {"leaderElection": {"enabled": false}}}),
            "leaderElection",
        ),
    ];
    let sets: Vec<(String, Value)> = cases
        .iter()
        .map(|(name, values, _)| (name.to_string(), values.clone()))
        .collect();
    let rendered = chart_support::render_sets(&sets);
    for (name, _, says) in cases {
        match &rendered[name] {
            Rendered::Refused(error) => {
                assert!(error.contains(says), "{name}: {error}");
            }
            Rendered::Ok { .. } => panic!("{name}: Helm rendered values it should refuse"),
        }
    }
}
