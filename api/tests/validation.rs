//! One table of invalid TrainingRuns, checked three ways:
//!
//! - `parse_training_run` (serde types + `validate()`), what `tessera run` uses;
//! - the CRD's OpenAPI schema, with a JSON-schema validator (types, enums, bounds, lengths);
//! - the CRD's `x-kubernetes-validations`, with a CEL interpreter, on the object after the
//!   schema's defaults are applied, as the API server evaluates them.
//!
//! Each case says which layer of the API server rejects it (`Schema` or `Cel`), and the test
//! checks that layer rejects it, naming the same field as `validate()`. Not covered without an
//! API server: unknown fields (the server rejects them with strict field validation; serde's
//! `deny_unknown_fields` rejects them locally, tested below) and CEL cost limits.

use std::collections::HashMap;

use serde_json::{Value as Json, json};
use tessera_api::{
    crd::trainingrun_crd,
    parse_training_run,
    validate::{CrossFieldRule, cross_field_rules},
};

mod cases;
use cases::{BASE, Layer, apply, base_document, invalid_cases};

// === helpers ===

fn crd_schema() -> Json {
    let crd = serde_json::to_value(trainingrun_crd()).expect("the CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The fields (dotted, like `spec.parallelism.nodes`) the OpenAPI schema rejects.
fn schema_rejections(schema: &Json, document: &Json) -> Vec<String> {
    let validator =
        jsonschema::validator_for(schema).expect("the CRD schema is a valid JSON schema");
    validator
        .iter_errors(document)
        .map(|e| {
            let pointer = e.instance_path().as_str().to_string();
            let mut field = pointer.trim_start_matches('/').replace('/', ".");
            // A missing required property is reported on its parent; name the property.
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                let name = property.as_str().unwrap_or_default();
                field = if field.is_empty() {
                    name.to_string()
                } else {
                    format!("{field}.{name}")
                };
            }
            field
        })
        .collect()
}

/// JSON as the API server hands it to CEL: integers are `int`, other numbers `double`.
fn to_cel(value: &Json) -> cel::Value {
    match value {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().expect("JSON numbers are f64")),
        },
        Json::String(s) => cel::Value::String(s.clone().into()),
        Json::Array(items) => cel::Value::List(items.iter().map(to_cel).collect::<Vec<_>>().into()),
        Json::Object(fields) => {
            let map: HashMap<String, cel::Value> =
                fields.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            map.into()
        }
    }
}

/// Every `x-kubernetes-validations` rule of the CRD: (scope path under the root, rule, fieldPath).
fn crd_cel_rules(schema: &Json) -> Vec<(Vec<String>, String, String)> {
    fn walk(node: &Json, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String, String)>) {
        if let Some(rules) = node
            .get("x-kubernetes-validations")
            .and_then(Json::as_array)
        {
            for rule in rules {
                out.push((
                    path.clone(),
                    rule["rule"].as_str().expect("rules have text").to_string(),
                    rule.get("fieldPath")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string(),
                ));
            }
        }
        if let Some(props) = node.get("properties").and_then(Json::as_object) {
            for (name, child) in props {
                path.push(name.clone());
                walk(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

/// Evaluates one CEL rule with `self` bound to `value`; a runtime error counts as a rejection,
/// as it does on the API server.
fn cel_holds(rule: &str, value: &Json) -> bool {
    let program = cel::Program::compile(rule)
        .unwrap_or_else(|e| panic!("rule {rule:?} does not parse: {e:?}"));
    let mut context = cel::Context::default();
    context.add_variable_from_value("self", to_cel(value));
    matches!(program.execute(&context), Ok(cel::Value::Bool(true)))
}

/// The document after the API server's defaulting, as Rust's serde defaults produce it.
fn defaulted(document: &Json) -> Json {
    let yaml = serde_yaml::to_string(document).expect("JSON converts to YAML");
    let spec = tessera_api::manifest::parse_spec_value(
        serde_yaml::from_str::<serde_yaml::Value>(&yaml).unwrap()["spec"].clone(),
    )
    .expect("CEL cases pass the schema, so they deserialize");
    let mut defaulted = document.clone();
    defaulted["spec"] = serde_json::to_value(spec).expect("a spec serializes");
    defaulted
}

/// The fields the CRD's CEL rules reject in a (defaulted) document.
fn cel_rejections(schema: &Json, document: &Json) -> Vec<String> {
    let mut fields = Vec::new();
    for (scope, rule, field_path) in crd_cel_rules(schema) {
        let mut value = document;
        for part in &scope {
            value = &value[part];
        }
        if value.is_null() {
            continue; // rules on absent optional objects do not run
        }
        if !cel_holds(&rule, value) {
            fields.push(format!("{}{}", scope.join("."), field_path));
        }
    }
    fields
}

// === tests ===

#[test]
fn the_table_is_large_enough_and_covers_both_layers() {
    let cases = invalid_cases();
    assert!(
        cases.len() >= 15,
        "the issue asks for at least 15 invalid specs"
    );
    assert!(cases.iter().filter(|c| c.layer == Layer::Cel).count() >= 8);
    assert!(cases.iter().filter(|c| c.layer == Layer::Schema).count() >= 8);
}

#[test]
fn the_base_manifest_passes_every_layer() {
    let document = base_document();
    parse_training_run(BASE).expect("the base manifest is valid");
    let schema = crd_schema();
    assert_eq!(schema_rejections(&schema, &document), Vec::<String>::new());
    assert_eq!(
        cel_rejections(&schema, &defaulted(&document)),
        Vec::<String>::new()
    );
}

#[test]
fn a_hugging_face_tokenizer_with_a_vocab_passes_every_layer() {
    let schema = crd_schema();
    for path in [
        "models/llama",
        "/models/qwen2/",
        "./gpt2",
        "tokenizer.json",
        "../tok/tokenizer.json",
    ] {
        let mut document = base_document();
        apply(
            &mut document,
            &[
                ("spec.data.tokenizer", Some(json!(path))),
                ("spec.model.vocab", Some(json!(384))),
            ],
        );
        let yaml = serde_yaml::to_string(&document).unwrap();
        let run = parse_training_run(&yaml).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            run.spec.data.tokenizer,
            tessera_api::spec::Tokenizer::HuggingFace(path.into())
        );
        assert_eq!(schema_rejections(&schema, &document), Vec::<String>::new());
        assert_eq!(
            cel_rejections(&schema, &defaulted(&document)),
            Vec::<String>::new(),
            "{path}"
        );
    }
}

#[test]
fn every_invalid_spec_is_rejected_by_validate_naming_the_field() {
    for case in invalid_cases() {
        let mut document = base_document();
        apply(&mut document, &case.edits);
        let yaml = serde_yaml::to_string(&document).unwrap();
        let error = parse_training_run(&yaml).expect_err(case.name);
        let fields: Vec<String> = error.violations().into_iter().map(|v| v.field).collect();
        assert!(
            fields.iter().any(|f| f == case.field),
            "{}: expected a violation of {}, got {error}",
            case.name,
            case.field
        );
        assert!(
            error.to_string().contains(case.field),
            "{}: the message names the field: {error}",
            case.name
        );
    }
}

#[test]
fn every_invalid_spec_is_rejected_by_the_crd_schema_or_its_cel_rules() {
    let schema = crd_schema();
    for case in invalid_cases() {
        let mut document = base_document();
        apply(&mut document, &case.edits);
        let by_schema = schema_rejections(&schema, &document);
        match case.layer {
            Layer::Schema => assert!(
                by_schema.iter().any(|f| f == case.field),
                "{}: the OpenAPI schema should reject {}; it rejected {by_schema:?}",
                case.name,
                case.field
            ),
            Layer::Cel => {
                assert!(
                    by_schema.is_empty(),
                    "{}: expected only CEL to reject, schema said {by_schema:?}",
                    case.name
                );
                let by_cel = cel_rejections(&schema, &defaulted(&document));
                assert!(
                    by_cel.iter().any(|f| f == case.field),
                    "{}: a CEL rule should reject {}; they rejected {by_cel:?}",
                    case.name,
                    case.field
                );
            }
        }
    }
}

#[test]
fn cel_rules_and_their_rust_twins_agree_on_every_case() {
    let rules: Vec<CrossFieldRule> = cross_field_rules();
    let mut documents = vec![base_document()];
    for case in invalid_cases()
        .into_iter()
        .filter(|c| c.layer == Layer::Cel)
    {
        let mut document = base_document();
        apply(&mut document, &case.edits);
        documents.push(document);
    }
    for document in documents {
        let document = defaulted(&document);
        let spec: tessera_api::TrainingRunSpec =
            serde_json::from_value(document["spec"].clone()).unwrap();
        for rule in &rules {
            let mut scope = &document["spec"];
            for part in rule.scope {
                scope = &scope[part];
            }
            assert_eq!(
                cel_holds(&rule.cel, scope),
                (rule.holds)(&spec),
                "CEL and Rust disagree on {:?} for {}",
                rule.message,
                serde_json::to_string(&document["spec"]).unwrap()
            );
        }
    }
}

#[test]
fn every_rust_rule_is_in_the_crd_with_its_message() {
    let crd = serde_json::to_string(&trainingrun_crd()).unwrap();
    let in_crd = crd_cel_rules(&crd_schema());
    for rule in cross_field_rules() {
        assert!(
            in_crd.iter().any(|(_, cel, _)| *cel == rule.cel),
            "{} missing from the CRD",
            rule.cel
        );
        assert!(
            crd.contains(&serde_json::to_string(rule.message).unwrap()),
            "message {:?} missing",
            rule.message
        );
    }
    assert_eq!(in_crd.len(), cross_field_rules().len());
}

#[test]
fn unknown_fields_are_refused_locally_with_their_path() {
    let yaml = BASE.replace(
        "    evalInterval: 50",
        "    evalInterval: 50\n    epochs: 3",
    );
    let error = parse_training_run(&yaml).unwrap_err().to_string();
    assert!(
        error.contains("spec.training") && error.contains("epochs"),
        "{error}"
    );
}

#[test]
fn wrong_api_version_and_kind_are_refused() {
    let error =
        parse_training_run(&BASE.replace("tessera.dev/v1alpha1", "tessera.dev/v2")).unwrap_err();
    assert!(error.to_string().starts_with("apiVersion"), "{error}");
    let error = parse_training_run(&BASE.replace("kind: TrainingRun", "kind: Job")).unwrap_err();
    assert!(error.to_string().starts_with("kind"), "{error}");
    let error = parse_training_run("spec: [unclosed").unwrap_err();
    assert!(error.to_string().contains("not valid YAML"), "{error}");
}

#[test]
fn every_violation_is_reported_not_just_the_first() {
    let mut document = base_document();
    apply(
        &mut document,
        &[
            ("spec.parallelism.nodes", Some(json!(0))),
            ("spec.checkpoint.keep", Some(json!(0))),
            ("spec.optimizer.lr", Some(json!(0.0))),
        ],
    );
    let error = parse_training_run(&serde_yaml::to_string(&document).unwrap()).unwrap_err();
    let fields: Vec<String> = error.violations().into_iter().map(|v| v.field).collect();
    for field in [
        "spec.parallelism.nodes",
        "spec.checkpoint.keep",
        "spec.optimizer.lr",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} missing from {fields:?}"
        );
    }
}

#[test]
fn overrides_apply_before_validation() {
    use tessera_api::manifest::{Override, parse_training_run_with};
    let set = |s: &str| s.parse::<Override>().unwrap();
    let run = parse_training_run_with(
        BASE,
        &[set("training.steps=300"), set("spec.optimizer.lr=0.01")],
    )
    .unwrap();
    assert_eq!(run.spec.training.steps, Some(300));
    assert_eq!(run.spec.optimizer.lr, 0.01);
    // An override is validated like the file: an unknown field and a bad value are refused.
    let error = parse_training_run_with(BASE, &[set("training.epochs=3")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("epochs"), "{error}");
    let error = parse_training_run_with(BASE, &[set("parallelism.nodes=0")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("spec.parallelism.nodes"), "{error}");
    let error = "training.steps"
        .parse::<Override>()
        .unwrap_err()
        .to_string();
    assert!(error.contains("path=value"), "{error}");
    let error = parse_training_run_with(BASE, &[set("model.preset.x=1")])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("spec.model.preset") && error.contains("not a mapping"),
        "{error}"
    );
}
