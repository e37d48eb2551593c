//! The Helm chart (charts/tessera) as the tests see it: rendered by Helm's own template engine
//! (`render.py`, the helm-python-sdk wheel in `.venv-helm` or `$TESSERA_HELM_PYTHON`), split into
//! objects, and the PromQL its alerts and dashboard use.
#![allow(dead_code)] // each test binary uses a different subset

pub mod monitoring;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

/// The release and namespace every render uses.
pub const RELEASE: &str = "tessera";
pub const NAMESPACE: &str = "tessera-system";

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    workspace().join("charts/tessera")
}

/// The value sets the tests render: the defaults and each file in the chart's ci/ folder.
pub fn value_sets() -> Vec<(String, Value)> {
    let mut sets = vec![("default".to_string(), json!({}))];
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("charts/tessera/ci")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let values: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        sets.push((name, values));
    }
    sets
}

/// The Python that has the Helm SDK; panics saying how to install it.
pub fn helm_python() -> PathBuf {
    let python = std::env::var_os("TESSERA_HELM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-helm/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import helm_python"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "the Helm SDK is missing: {} cannot import helm_python. Run `bash scripts/setup.sh` \
         (it installs helm-python-sdk into .venv-helm), or point TESSERA_HELM_PYTHON at a Python \
         that has it",
        python.display()
    );
    python
}

/// What Helm made of one value set.
#[derive(Debug)]
pub enum Rendered {
    Ok {
        /// Template path → rendered text.
        manifests: BTreeMap<String, String>,
        /// The chart's crds/ files, as Helm loads them.
        crds: Vec<String>,
        /// `helm lint --strict` report.
        lint: Value,
    },
    /// Helm refused the values (schema) or a template failed.
    Refused(String),
}

/// Renders each (name, values) set with Helm.
pub fn render_sets(sets: &[(String, Value)]) -> BTreeMap<String, Rendered> {
    let request = json!({
        "chart": chart_dir(),
        "release": RELEASE,
        "namespace": NAMESPACE,
        "sets": sets.iter().map(|(name, values)| json!({"name": name, "values": values})).collect::<Vec<_>>(),
    });
    let mut child = Command::new(helm_python())
        .arg(workspace().join("tests/chart_support/render.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start render.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "render.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    answer
        .into_iter()
        .map(|(name, result)| {
            let rendered = match result.get("error") {
                Some(error) => Rendered::Refused(error.as_str().unwrap_or_default().to_string()),
                None => Rendered::Ok {
                    manifests: serde_json::from_value(result["manifests"].clone()).unwrap(),
                    crds: serde_json::from_value(result["crds"].clone()).unwrap(),
                    lint: result["lint"].clone(),
                },
            };
            (name, rendered)
        })
        .collect()
}

/// Renders one value set; panics if Helm refuses it.
pub fn render(values: Value) -> BTreeMap<String, String> {
    let mut all = render_sets(&[("one".to_string(), values)]);
    match all.remove("one") {
        Some(Rendered::Ok { manifests, .. }) => manifests,
        other => panic!("Helm did not render the chart: {other:?}"),
    }
}

/// Every Kubernetes object in the rendered manifests (NOTES.txt left out), as JSON.
pub fn objects(manifests: &BTreeMap<String, String>) -> Vec<Value> {
    let mut objects = Vec::new();
    for (template, text) in manifests {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{template} is not YAML: {e}\n{text}"));
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}

/// The objects of `kind`.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// One alert of the PrometheusRule: its name and expression.
#[derive(Clone, Debug)]
pub struct Alert {
    pub name: String,
    pub expr: String,
}

impl Alert {
    /// The expression is `SIGNAL OP THRESHOLD`: the signal, whose data is what the alert
    /// watches (the alert fires only when the threshold is crossed).
    pub fn signal(&self) -> &str {
        let expr = self.expr.trim();
        let threshold_at = expr
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .map_or(0, |i| i + 1);
        let rest = expr[..threshold_at].trim_end();
        let signal = ["==", "!=", ">=", "<=", ">", "<"]
            .iter()
            .find_map(|op| rest.strip_suffix(op))
            .unwrap_or_else(|| {
                panic!(
                    "alert {} is not SIGNAL OP THRESHOLD: {}",
                    self.name, self.expr
                )
            });
        signal.trim()
    }
}

/// The alerts of every PrometheusRule among `objects`.
pub fn alerts(objects: &[Value]) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for rule in of_kind(objects, "PrometheusRule") {
        for group in rule["spec"]["groups"].as_array().unwrap() {
            for r in group["rules"].as_array().unwrap() {
                alerts.push(Alert {
                    name: r["alert"].as_str().unwrap().to_string(),
                    expr: r["expr"].as_str().unwrap().to_string(),
                });
            }
        }
    }
    alerts
}

/// The dashboard JSON of the dashboard ConfigMap.
pub fn dashboard(objects: &[Value]) -> Value {
    let config_map = of_kind(objects, "ConfigMap")
        .into_iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-dashboard")
        })
        .expect("the dashboard ConfigMap");
    let text = config_map["data"]["tessera-training.json"]
        .as_str()
        .unwrap();
    serde_json::from_str(text).expect("the dashboard is JSON")
}

/// (panel title, expression) of every query of the dashboard, panels and variables.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    queries
}

/// The Tessera metric names an expression reads (histogram series named by their family).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("tessera_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &expr[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| tessera_api::metrics::ALL.contains(f))
                })
                .unwrap_or(name);
            names.push(family.to_string());
        }
        i = end;
    }
    names
}

/// Writes `text` to `dir/name`, returning the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
