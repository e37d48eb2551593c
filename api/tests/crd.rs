//! The checked-in CRD is the generated one, and its schema is structural.

use serde_json::Value as Json;
use tessera_api::crd::{trainingrun_crd, trainingrun_crd_yaml};

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/trainingrun.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/trainingrun.yaml exists");
    assert!(
        checked_in == trainingrun_crd_yaml(),
        "crds/trainingrun.yaml is stale: regenerate it with `cargo run -- crd > crds/trainingrun.yaml`"
    );
}

/// Every schema node states its type (or is one of Kubernetes' typed escapes), as a
/// structural schema must.
fn assert_structural(node: &Json, path: &str) {
    let typed = node.get("type").is_some()
        || node.get("x-kubernetes-int-or-string") == Some(&Json::Bool(true))
        || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Json::Bool(true));
    assert!(typed, "{path} has no type: {node}");
    for keyword in ["oneOf", "anyOf", "allOf", "not", "$ref"] {
        if let Some(sub) = node.get(keyword) {
            // Kubernetes allows these only without types or descriptions inside; we emit none.
            panic!("{path} uses {keyword}: {sub}");
        }
    }
    if let Some(props) = node.get("properties").and_then(Json::as_object) {
        for (name, child) in props {
            assert_structural(child, &format!("{path}.{name}"));
        }
    }
    if let Some(items) = node.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(Json::Object(_)) = node.get("additionalProperties") {
        assert_structural(&node["additionalProperties"], &format!("{path}{{}}"));
    }
}

#[test]
fn crd_schema_is_structural_and_names_the_resource() {
    let crd = serde_json::to_value(trainingrun_crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "trainingruns.tessera.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "tr");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Step", "Loss", "Tokens/s", "Restarts", "Age"]
    );
    assert_structural(&version["schema"]["openAPIV3Schema"], "openAPIV3Schema");
}
