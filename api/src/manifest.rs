//! Reading a TrainingRun manifest from YAML the way the API server would: type errors and
//! unknown fields name their path, then `validate()` runs every rule.

use serde::Deserialize;
use thiserror::Error;

use crate::{
    spec::{TrainingRun, TrainingRunSpec},
    validate::{Violation, validate},
};

/// `apiVersion` of every TrainingRun.
pub const API_VERSION: &str = "tessera.dev/v1alpha1";
pub const KIND: &str = "TrainingRun";

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("the manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("the TrainingRun is invalid:\n{}", list(.0))]
    Invalid(Vec<Violation>),
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("  - {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ManifestError {
    /// Every violation this error stands for, with field paths.
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            ManifestError::Yaml(message) => vec![Violation {
                field: "(document)".into(),
                message: message.clone(),
            }],
            ManifestError::Field { field, message } => vec![Violation {
                field: field.clone(),
                message: message.clone(),
            }],
            ManifestError::Invalid(v) => v.clone(),
        }
    }
}

/// The parts of a manifest read before the spec itself.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: serde_yaml::Value,
    spec: Option<serde_yaml::Value>,
}

/// Parses and validates a TrainingRun manifest. Every rule the CRD enforces is checked.
pub fn parse_training_run(yaml: &str) -> Result<TrainingRun, ManifestError> {
    parse_training_run_with(yaml, &[])
}

/// One `--set path=value` override: a dotted path under `spec` (a leading `spec.` is
/// allowed) and a YAML value.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: serde_yaml::Value,
}

impl std::str::FromStr for Override {
    type Err = ManifestError;

    fn from_str(text: &str) -> Result<Override, ManifestError> {
        let bad = |why: &str| ManifestError::Field {
            field: format!("--set {text}"),
            message: format!("{why}; write it as path=value, e.g. --set training.steps=200"),
        };
        let (path, value) = text.split_once('=').ok_or_else(|| bad("has no `=`"))?;
        let path = path.trim();
        let path = path.strip_prefix("spec.").unwrap_or(path);
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("has an empty path segment"));
        }
        let value = serde_yaml::from_str(value).map_err(|_| bad("has a value that is not YAML"))?;
        Ok(Override { path: parts, value })
    }
}

/// Parses a manifest, applies `--set` overrides to its spec, then validates it.
pub fn parse_training_run_with(
    yaml: &str,
    overrides: &[Override],
) -> Result<TrainingRun, ManifestError> {
    let mut envelope: Envelope =
        serde_yaml::from_str(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    if let Some(spec) = envelope.spec.as_mut() {
        for o in overrides {
            apply_override(spec, o)?;
        }
    }
    let field = |field: &str, message: String| ManifestError::Field {
        field: field.into(),
        message,
    };
    match envelope.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(field(
                "apiVersion",
                format!("is {other:?}; a TrainingRun has apiVersion {API_VERSION}"),
            ));
        }
        None => {
            return Err(field(
                "apiVersion",
                format!("is missing; set it to {API_VERSION}"),
            ));
        }
    }
    match envelope.kind.as_deref() {
        Some(KIND) => {}
        Some(other) => return Err(field("kind", format!("is {other:?}; expected {KIND}"))),
        None => return Err(field("kind", format!("is missing; set it to {KIND}"))),
    }
    let metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_path_to_error::deserialize(envelope.metadata).map_err(|e| {
            field(
                &join("metadata", &e.path().to_string()),
                e.inner().to_string(),
            )
        })?;
    let spec_value = envelope
        .spec
        .ok_or_else(|| field("spec", "is missing".to_string()))?;
    let spec = parse_spec_value(spec_value)?;
    let violations = validate(&spec);
    if !violations.is_empty() {
        return Err(ManifestError::Invalid(violations));
    }
    let mut run = TrainingRun::new(metadata.name.as_deref().unwrap_or(""), spec);
    run.metadata = metadata;
    Ok(run)
}

/// A path from the spec (data, checkpoints, `initFrom`) resolved against `base`, the
/// directory relative paths are taken from; an absolute path stays as it is.
pub fn resolve_path(base: &std::path::Path, path: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Deserializes a spec, naming the path of the first field that does not fit.
pub fn parse_spec_value(value: serde_yaml::Value) -> Result<TrainingRunSpec, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        let mut field = join("spec", &e.path().to_string());
        // serde reports a missing field on its parent; name the field itself.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = format!("{field}.{name}");
        }
        ManifestError::Field { field, message }
    })
}

fn apply_override(spec: &mut serde_yaml::Value, o: &Override) -> Result<(), ManifestError> {
    let mut target = spec;
    for (i, part) in o.path.iter().enumerate() {
        if target.is_null() {
            *target = serde_yaml::Value::Mapping(Default::default());
        }
        let mapping = target
            .as_mapping_mut()
            .ok_or_else(|| ManifestError::Field {
                field: format!("spec.{}", o.path[..i].join(".")),
                message: "is not a mapping, so --set cannot reach inside it".into(),
            })?;
        let key = serde_yaml::Value::String(part.clone());
        if i + 1 == o.path.len() {
            mapping.insert(key, o.value.clone());
            return Ok(());
        }
        target = mapping.entry(key).or_insert(serde_yaml::Value::Null);
    }
    Ok(())
}

fn join(prefix: &str, path: &str) -> String {
    if path == "." || path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}
