//! An in-process Kubernetes API server for tests: enough of the real one for a controller and
//! a `kube::Client` talking HTTP to it.
//!
//! ```text
//!  GET    list (labelSelector, fieldSelector, limit/continue) · get · watch (from a
//!         resourceVersion; 410 Gone when history is compacted) · /version
//!  POST   create (uid, resourceVersion, generation, creationTimestamp; 409 AlreadyExists)
//!  PUT    replace (409 Conflict on a stale resourceVersion)
//!  PATCH  merge · JSON patch (with test) · server-side apply (one field manager: fields it
//!         applied before and omits now are removed)
//!  DELETE finalizers hold deletion; bound pods terminate gracefully until the kubelet (the
//!         test) confirms; owners' dependents are garbage-collected
//!  /status  the status subresource: the main resource ignores status and vice versa
//! ```
//!
//! Clients from [`ApiServer::operator_client`] carry the operator's identity: their requests
//! are authorized against [`rbac::RULES`] (403 Forbidden otherwise, as RBAC would answer) and
//! recorded ([`ApiServer::operator_calls`]). Clients from [`ApiServer::client`] are the
//! cluster admin (the test itself, playing users, kubelets and controllers).
//!
//! Every object written is parsed as its k8s-openapi type (TrainingRuns as the tessera-api
//! type and checked with `validate()`, the CRD's rules); a bad one gets 422 Invalid.

// Early returns carry the finished error response; one per request, so boxing saves nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::selector::Selector;
use crate::rbac;

/// The bearer token of the operator's identity.
const OPERATOR_TOKEN: &str = "tessera-operator";

/// History kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 20_000;

/// One kind the server serves.
#[derive(Clone, Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
    validate: fn(&Value) -> Result<(), String>,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

fn parse_as<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(object.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn validate_training_run(object: &Value) -> Result<(), String> {
    let run: tessera_api::TrainingRun =
        serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let violations = tessera_api::validate(&run.spec);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    }
}

fn validate_pod(object: &Value) -> Result<(), String> {
    let pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let spec = pod.spec.ok_or("spec: Required value")?;
    if spec.containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    if spec
        .containers
        .iter()
        .any(|c| c.image.as_deref().unwrap_or("").is_empty())
    {
        return Err("spec.containers[].image: Required value".into());
    }
    Ok(())
}

fn any_object(_: &Value) -> Result<(), String> {
    Ok(())
}

/// The kinds a default server serves.
fn default_kinds(with_training_runs: bool) -> Vec<Kind> {
    use k8s_openapi::api::{coordination, core, events, scheduling};
    let mut kinds = vec![
        Kind {
            group: "",
            version: "v1",
            plural: "pods",
            kind: "Pod",
            namespaced: true,
            status_subresource: true,
            validate: validate_pod,
        },
        Kind {
            group: "",
            version: "v1",
            plural: "services",
            kind: "Service",
            namespaced: true,
            status_subresource: true,
            validate: parse_as::<core::v1::Service>,
        },
        Kind {
            group: "",
            version: "v1",
            plural: "configmaps",
            kind: "ConfigMap",
            namespaced: true,
            status_subresource: false,
            validate: parse_as::<core::v1::ConfigMap>,
        },
        Kind {
            group: "",
            version: "v1",
            plural: "nodes",
            kind: "Node",
            namespaced: false,
            status_subresource: true,
            validate: parse_as::<core::v1::Node>,
        },
        Kind {
            group: "",
            version: "v1",
            plural: "events",
            kind: "Event",
            namespaced: true,
            status_subresource: false,
            validate: parse_as::<core::v1::Event>,
        },
        Kind {
            group: "events.k8s.io",
            version: "v1",
            plural: "events",
            kind: "Event",
            namespaced: true,
            status_subresource: false,
            validate: parse_as::<events::v1::Event>,
        },
        Kind {
            group: "coordination.k8s.io",
            version: "v1",
            plural: "leases",
            kind: "Lease",
            namespaced: true,
            status_subresource: false,
            validate: parse_as::<coordination::v1::Lease>,
        },
        Kind {
            group: "scheduling.k8s.io",
            version: "v1",
            plural: "priorityclasses",
            kind: "PriorityClass",
            namespaced: false,
            status_subresource: false,
            validate: parse_as::<scheduling::v1::PriorityClass>,
        },
        Kind {
            group: "scheduling.x-k8s.io",
            version: "v1alpha1",
            plural: "podgroups",
            kind: "PodGroup",
            namespaced: true,
            status_subresource: true,
            validate: any_object,
        },
    ];
    if with_training_runs {
        kinds.push(Kind {
            group: "tessera.dev",
            version: "v1alpha1",
            plural: "trainingruns",
            kind: "TrainingRun",
            namespaced: true,
            status_subresource: true,
            validate: validate_training_run,
        });
    }
    kinds
}

// === state ===

type Key = (String, String, String); // (resource "group/plural", namespace, name)

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Arc<Value>,
}

struct Inner {
    revision: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    /// The last object each field manager applied, per object and subresource.
    applied: HashMap<(Key, String, bool), Value>,
    history: VecDeque<WatchEvent>,
    /// Counts of requests by verb, for tests and the benchmark.
    requests: BTreeMap<String, u64>,
    /// What the operator's clients were granted: (group, resource, verb).
    operator_calls: BTreeSet<(String, String, String)>,
    /// When set, writes to the named resource ("group/plural") fail with this status.
    fail_writes: HashMap<String, u16>,
}

/// A running test API server.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<WatchEvent>,
    kinds: Arc<Vec<Kind>>,
    pub addr: SocketAddr,
}

impl ApiServer {
    /// Starts a server with the TrainingRun CRD installed.
    pub async fn start() -> ApiServer {
        ApiServer::start_with(true).await
    }

    /// Starts a server; without the CRD, TrainingRun requests get 404 as on a real cluster.
    pub async fn start_with(with_training_runs: bool) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (events, _) = broadcast::channel(65_536);
        let server = ApiServer {
            inner: Arc::new(Mutex::new(Inner {
                revision: 1,
                objects: BTreeMap::new(),
                applied: HashMap::new(),
                history: VecDeque::new(),
                requests: BTreeMap::new(),
                operator_calls: BTreeSet::new(),
                fail_writes: HashMap::new(),
            })),
            events,
            kinds: Arc::new(default_kinds(with_training_runs)),
            addr,
        };
        let app = Router::new().fallback(handle).with_state(server.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the test API server runs");
        });
        server
    }

    /// A `kube::Client` talking HTTP to this server.
    pub fn client(&self) -> kube::Client {
        self.client_with_headers(Vec::new())
    }

    fn client_with_headers(
        &self,
        headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    ) -> kube::Client {
        let url: axum::http::Uri = format!("http://{}", self.addr)
            .parse()
            .expect("a valid URL");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(300));
        config.headers = headers;
        kube::Client::try_from(config).expect("a client for the test server")
    }

    /// A `kube::Client` with the operator's identity: only what [`rbac::RULES`] grants.
    pub fn operator_client(&self) -> kube::Client {
        self.client_with_headers(vec![(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static(concat!("Bearer ", "tessera-operator")),
        )])
    }

    /// Every (group, resource, verb) the operator's clients were granted so far.
    pub fn operator_calls(&self) -> BTreeSet<(String, String, String)> {
        self.lock().operator_calls.clone()
    }

    /// Counts of requests by verb (`create`, `patch`, `watch`...).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    /// Makes every write to `resource` ("group/plural", "/pods" for core) fail with `status`.
    pub fn fail_writes(&self, resource: &str, status: Option<u16>) {
        let mut inner = self.lock();
        match status {
            Some(code) => inner.fail_writes.insert(resource.to_string(), code),
            None => inner.fail_writes.remove(resource),
        };
    }

    /// The stored object, for assertions.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.lock().objects.get(&key).map(|v| (**v).clone())
    }

    /// Every stored object of a resource, for assertions.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource)
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kind(&self, group: &str, version: &str, plural: &str) -> Option<Kind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }
}

fn resource_id(kind: &Kind) -> String {
    format!("{}/{}", kind.group, kind.plural)
}

// === routing ===

/// What a request path names.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(server: &ApiServer, path: &str) -> Result<Target, Response> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found(&format!("the server could not find {path}"))),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(name.to_string()), false),
        [plural, name, "status"] => (*plural, Some(name.to_string()), true),
        _ => return Err(not_found(&format!("the server could not find {path}"))),
    };
    let kind = server.kind(group, version, plural).ok_or_else(|| {
        not_found(&format!(
            "the server could not find the requested resource ({group}/{version} {plural})"
        ))
    })?;
    if status && !kind.status_subresource {
        return Err(not_found("no status subresource"));
    }
    if kind.namespaced && name.is_some() && namespace.is_none() {
        return Err(not_found("a namespaced object needs a namespace"));
    }
    Ok(Target {
        kind,
        namespace,
        name,
        status,
    })
}

async fn handle(
    State(server): State<ApiServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-tessera-test",
                    "platform": "linux/amd64"}),
        );
    }
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let target = match route(&server, &path) {
        Ok(t) => t,
        Err(response) => return response,
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, target.name.is_some(), watching) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => {
            return status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed",
            );
        }
    };
    let operator = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {OPERATOR_TOKEN}"));
    {
        let mut inner = server.lock();
        if operator {
            let resource = if target.status {
                format!("{}/status", target.kind.plural)
            } else {
                target.kind.plural.to_string()
            };
            // Server-side apply of an object that does not exist creates it.
            let creates = verb == "patch"
                && content_type.starts_with("application/apply-patch")
                && target
                    .name
                    .as_ref()
                    .is_some_and(|name| !inner.objects.contains_key(&key_of(&target, name)));
            let needed: &[&str] = if creates { &[verb, "create"] } else { &[verb] };
            for verb in needed {
                if !rbac::allows(target.kind.group, &resource, verb) {
                    let group = target.kind.group;
                    return status_response(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        &format!(
                            "tessera-operator cannot {verb} resource \"{resource}\" in API group \"{group}\" (not in rbac::RULES)"
                        ),
                    );
                }
                inner.operator_calls.insert((
                    target.kind.group.to_string(),
                    resource.clone(),
                    verb.to_string(),
                ));
            }
        }
        *inner.requests.entry(verb.to_string()).or_default() += 1;
        if verb != "get"
            && verb != "list"
            && verb != "watch"
            && let Some(code) = inner.fail_writes.get(&resource_id(&target.kind))
        {
            let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status_response(code, "InternalError", "injected failure");
        }
    }
    match verb {
        "watch" => watch(&server, &target, &query),
        "get" => get(&server, &target),
        "list" => list(&server, &target, &query),
        "create" => parse_body(&body).map_or_else(|r| r, |b| create(&server, &target, b)),
        "update" => parse_body(&body).map_or_else(|r| r, |b| update(&server, &target, b)),
        "patch" => patch(&server, &target, &content_type, &query, &body),
        "delete" => delete(&server, &target, &query, &body),
        _ => unreachable!("every verb is matched above"),
    }
}

/// A query string's pairs, percent- and `+`-decoded (application/x-www-form-urlencoded).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid JSON body: {e}"),
        )
    })
}

// === responses ===

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::to_vec(body).expect("JSON serializes"),
        ))
        .expect("a valid response")
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn not_found(message: &str) -> Response {
    status_response(StatusCode::NOT_FOUND, "NotFound", message)
}

fn conflict(message: &str) -> Response {
    status_response(StatusCode::CONFLICT, "Conflict", message)
}

fn invalid(message: &str) -> Response {
    status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

// === reads ===

fn key_of(target: &Target, name: &str) -> Key {
    (
        resource_id(&target.kind),
        target.namespace.clone().unwrap_or_default(),
        name.to_string(),
    )
}

fn get(server: &ApiServer, target: &Target) -> Response {
    let name = target.name.as_deref().unwrap_or_default();
    match server.lock().objects.get(&key_of(target, name)) {
        Some(object) => json_response(StatusCode::OK, object),
        None => not_found(&format!("{} \"{name}\" not found", target.kind.plural)),
    }
}

fn selectors(query: &HashMap<String, String>) -> Result<(Selector, Selector), Response> {
    let parse = |key: &str| {
        Selector::parse(query.get(key).map(String::as_str).unwrap_or(""))
            .map_err(|e| status_response(StatusCode::BAD_REQUEST, "BadRequest", &e))
    };
    Ok((parse("labelSelector")?, parse("fieldSelector")?))
}

fn selected(object: &Value, labels: &Selector, fields: &Selector) -> bool {
    labels.matches_labels(&object["metadata"]["labels"]) && fields.matches_fields(object)
}

fn list(server: &ApiServer, target: &Target, query: &HashMap<String, String>) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let offset: usize = query
        .get("continue")
        .and_then(|c| c.split_once(':'))
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or(0);
    let inner = server.lock();
    let resource = resource_id(&target.kind);
    let items: Vec<&Arc<Value>> = inner
        .objects
        .iter()
        .filter(|(k, _)| k.0 == resource && target.namespace.as_ref().is_none_or(|ns| &k.1 == ns))
        .map(|(_, v)| v)
        .filter(|v| selected(v, &labels, &fields))
        .collect();
    let page: Vec<Value> = items
        .iter()
        .skip(offset)
        .take(limit)
        .map(|v| (***v).clone())
        .collect();
    let mut metadata = json!({"resourceVersion": inner.revision.to_string()});
    if offset.saturating_add(limit) < items.len() {
        metadata["continue"] = json!(format!("{}:{}", inner.revision, offset + limit));
    }
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": target.kind.api_version(), "kind": format!("{}List", target.kind.kind),
                "metadata": metadata, "items": page}),
    )
}

fn watch(server: &ApiServer, target: &Target, query: &HashMap<String, String>) -> Response {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let resource = resource_id(&target.kind);
    let namespace = target.namespace.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1024);

    // Subscribe and read the history under the lock: no event falls between the two.
    let (mut live, replay, expired) = {
        let inner = server.lock();
        let live = server.events.subscribe();
        let oldest = inner
            .history
            .front()
            .map_or(inner.revision + 1, |e| e.resource_version);
        let expired = since > 0 && since + 1 < oldest;
        let replay: Vec<WatchEvent> = if since == 0 {
            // "Start at the most recent": the current objects as ADDED, then changes.
            inner
                .objects
                .iter()
                .filter(|(k, _)| k.0 == resource)
                .map(|(k, v)| WatchEvent {
                    resource_version: inner.revision,
                    resource: k.0.clone(),
                    namespace: k.1.clone(),
                    kind: "ADDED",
                    object: v.clone(),
                })
                .collect()
        } else {
            inner
                .history
                .iter()
                .filter(|e| e.resource_version > since)
                .cloned()
                .collect()
        };
        (live, replay, expired)
    };
    let kind_name = target.kind.kind;
    tokio::spawn(async move {
        let encode = |event: &WatchEvent| -> Bytes {
            let mut line =
                serde_json::to_vec(&json!({"type": event.kind, "object": *event.object}))
                    .expect("JSON serializes");
            line.push(b'\n');
            Bytes::from(line)
        };
        if expired {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {since}")}});
            let mut line = serde_json::to_vec(&status).expect("JSON serializes");
            line.push(b'\n');
            let _ = tx.send(Ok(Bytes::from(line))).await;
            return;
        }
        let wanted = |event: &WatchEvent| {
            event.resource == resource
                && namespace.as_ref().is_none_or(|ns| &event.namespace == ns)
                && selected(&event.object, &labels, &fields)
        };
        let mut last = since;
        for event in replay.iter().filter(|e| wanted(e)) {
            last = last.max(event.resource_version);
            if tx.send(Ok(encode(event))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                event = live.recv() => match event {
                    Ok(event) => {
                        if event.resource_version <= last || !wanted(&event) {
                            continue;
                        }
                        if tx.send(Ok(encode(&event))).await.is_err() {
                            return;
                        }
                    }
                    // A slow watcher lost events: end the watch; the client resumes and, if
                    // its version is compacted, relists.
                    Err(_) => {
                        tracing::debug!(kind = kind_name, "watcher lagged");
                        return;
                    }
                },
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("a valid response")
}

// === writes ===

fn now() -> Timestamp {
    Timestamp::now()
}

impl Inner {
    fn record(&mut self, server: &ApiServer, key: &Key, kind: &'static str, object: Arc<Value>) {
        let event = WatchEvent {
            resource_version: self.revision,
            resource: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        };
        self.history.push_back(event.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let _ = server.events.send(event);
    }

    /// Stores `object` as the new version of `key`, bumping the revision.
    fn store(
        &mut self,
        server: &ApiServer,
        key: &Key,
        mut object: Value,
        kind: &'static str,
    ) -> Value {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let object = Arc::new(object);
        self.objects.insert(key.clone(), object.clone());
        self.record(server, key, kind, object.clone());
        (*object).clone()
    }

    /// Removes `key` for good, then garbage-collects what it owned.
    fn remove(&mut self, server: &ApiServer, key: &Key) -> Option<Value> {
        let object = self.objects.remove(key)?;
        self.revision += 1;
        let mut gone = (*object).clone();
        gone["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.record(server, key, "DELETED", Arc::new(gone.clone()));
        self.applied.retain(|(k, _, _), _| k != key);
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !uid.is_empty() {
            let dependents: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, v)| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|owners| owners.iter().any(|o| o["uid"] == json!(uid)))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for dependent in dependents {
                self.remove(server, &dependent);
            }
        }
        Some(gone)
    }
}

fn with_type(kind: &Kind, mut object: Value) -> Value {
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    object
}

fn create(server: &ApiServer, target: &Target, body: Value) -> Response {
    if target.status || target.name.is_some() {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "POST to a collection",
        );
    }
    let mut object = with_type(&target.kind, body);
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let mut inner = server.lock();
    let name = match object["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", inner.revision),
            None => return invalid("metadata.name: Required value"),
        },
    };
    if target.kind.namespaced {
        match (&target.namespace, object["metadata"]["namespace"].as_str()) {
            (Some(ns), Some(body_ns)) if ns != body_ns => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                );
            }
            (Some(ns), _) => object["metadata"]["namespace"] = json!(ns),
            (None, _) => return not_found("a namespaced create needs a namespace"),
        }
    }
    object["metadata"]["name"] = json!(name);
    let key = key_of(target, &name);
    if inner.objects.contains_key(&key) {
        return status_response(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", target.kind.plural),
        );
    }
    initialise_metadata(&mut object, inner.revision);
    if let Err(message) = (target.kind.validate)(&object) {
        return invalid(&format!(
            "{} \"{name}\" is invalid: {message}",
            target.kind.kind
        ));
    }
    let stored = inner.store(server, &key, object, "ADDED");
    json_response(StatusCode::CREATED, &stored)
}

fn initialise_metadata(object: &mut Value, revision: u64) {
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!(format!("uid-{revision:08}-{:08x}", rand_suffix()));
    metadata["creationTimestamp"] = json!(now().to_string());
    metadata["generation"] = json!(1);
    if let Some(map) = metadata.as_object_mut() {
        map.remove("resourceVersion");
        map.remove("deletionTimestamp");
        map.remove("managedFields");
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed)
}

/// Writes `updated` over `current`, keeping what the other endpoint owns (status for the main
/// resource, everything but status for /status) and the server-owned metadata.
fn commit(
    server: &ApiServer,
    inner: &mut Inner,
    target: &Target,
    key: &Key,
    current: &Value,
    updated: Value,
) -> Response {
    let mut object = with_type(&target.kind, updated);
    // Server-owned metadata cannot be changed by clients.
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "generation",
    ] {
        match current["metadata"].get(field) {
            Some(v) => object["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = object["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if target.kind.status_subresource {
        if target.status {
            let status = object.get("status").cloned();
            let mut merged = current.clone();
            match status {
                Some(s) => merged["status"] = s,
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            object = merged;
        } else {
            match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(m) = object.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    if object.get("spec") != current.get("spec") {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        object["metadata"]["generation"] = json!(generation + 1);
    }
    if let Err(message) = (target.kind.validate)(&object) {
        return invalid(&format!(
            "{} \"{}\" is invalid: {message}",
            target.kind.kind, key.2
        ));
    }
    // The last finalizer removed from a deleting object lets it go.
    let deleting = object["metadata"]["deletionTimestamp"].is_string();
    let finalizers_left = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if deleting && !finalizers_left {
        let gone = inner.remove(server, key).unwrap_or(object);
        return json_response(StatusCode::OK, &gone);
    }
    if &object == current {
        // A no-op write keeps the resourceVersion, as the real server does.
        return json_response(StatusCode::OK, current);
    }
    let stored = inner.store(server, key, object, "MODIFIED");
    json_response(StatusCode::OK, &stored)
}

fn update(server: &ApiServer, target: &Target, body: Value) -> Response {
    let Some(name) = target.name.clone() else {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "PUT needs a name",
        );
    };
    let key = key_of(target, &name);
    let mut inner = server.lock();
    let Some(current) = inner.objects.get(&key).map(|v| (**v).clone()) else {
        return not_found(&format!("{} \"{name}\" not found", target.kind.plural));
    };
    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return conflict(&format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            target.kind.plural
        ));
    }
    commit(server, &mut inner, target, &key, &current, body)
}

fn patch(
    server: &ApiServer,
    target: &Target,
    content_type: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let Some(name) = target.name.clone() else {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "PATCH needs a name",
        );
    };
    let key = key_of(target, &name);
    let mut inner = server.lock();
    let current = inner.objects.get(&key).map(|v| (**v).clone());
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/apply-patch+yaml" => {
            let applied: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("apply body: {e}"),
                    );
                }
            };
            if applied["apiVersion"].as_str() != Some(&target.kind.api_version())
                || applied["kind"].as_str() != Some(target.kind.kind)
            {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "apply needs the object's apiVersion and kind",
                );
            }
            let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()).cloned() else {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "fieldManager is required for apply patch",
                );
            };
            let applied_key = (key.clone(), manager, target.status);
            let previous = inner.applied.get(&applied_key).cloned();
            let response = match current {
                None if target.status => {
                    return not_found(&format!("{} \"{name}\" not found", target.kind.plural));
                }
                None => {
                    let mut object = with_type(&target.kind, applied.clone());
                    object["metadata"]["name"] = json!(name);
                    if let Some(ns) = &target.namespace {
                        object["metadata"]["namespace"] = json!(ns);
                    }
                    initialise_metadata(&mut object, inner.revision);
                    if let Err(message) = (target.kind.validate)(&object) {
                        return invalid(&format!(
                            "{} \"{name}\" is invalid: {message}",
                            target.kind.kind
                        ));
                    }
                    let stored = inner.store(server, &key, object, "ADDED");
                    json_response(StatusCode::CREATED, &stored)
                }
                Some(current) => {
                    let mut updated = current.clone();
                    if let Some(previous) = &previous {
                        remove_dropped(&mut updated, previous, &applied);
                    }
                    deep_merge(&mut updated, &applied);
                    commit(server, &mut inner, target, &key, &current, updated)
                }
            };
            if response.status().is_success() {
                inner.applied.insert(applied_key, applied);
            }
            response
        }
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let Some(current) = current else {
                return not_found(&format!("{} \"{name}\" not found", target.kind.plural));
            };
            let merge: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("patch body: {e}"),
                    );
                }
            };
            if let Some(rv) = merge["metadata"]["resourceVersion"].as_str()
                && Some(rv) != current["metadata"]["resourceVersion"].as_str()
            {
                return conflict(&format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                    target.kind.plural
                ));
            }
            let mut updated = current.clone();
            merge_patch(&mut updated, &merge);
            commit(server, &mut inner, target, &key, &current, updated)
        }
        "application/json-patch+json" => {
            let Some(current) = current else {
                return not_found(&format!("{} \"{name}\" not found", target.kind.plural));
            };
            let operations: json_patch::Patch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("JSON patch: {e}"),
                    );
                }
            };
            // As the real server's JSON patch does: testing for null passes on a missing path.
            let mut checked = Vec::new();
            for operation in operations.0 {
                match &operation {
                    json_patch::PatchOperation::Test(test) if test.value.is_null() => {
                        match current.pointer(test.path.as_str()) {
                            None | Some(Value::Null) => continue,
                            Some(_) => {
                                return invalid(&format!(
                                    "testing {} for null failed",
                                    test.path.as_str()
                                ));
                            }
                        }
                    }
                    _ => checked.push(operation),
                }
            }
            let operations = json_patch::Patch(checked);
            let mut updated = current.clone();
            if let Err(e) = json_patch::patch(&mut updated, &operations) {
                return invalid(&format!("the JSON patch does not apply: {e}"));
            }
            commit(server, &mut inner, target, &key, &current, updated)
        }
        other => status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format ({other})"),
        ),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(map) = target.as_object_mut() {
                        map.remove(key);
                    }
                } else {
                    merge_patch(&mut target[key.as_str()], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Merges maps recursively; anything else (lists included) is replaced.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(target), Some(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        deep_merge(existing, value)
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => *target = applied.clone(),
    }
}

/// Removes the fields the manager applied last time and omits now.
fn remove_dropped(target: &mut Value, previous: &Value, applied: &Value) {
    let (Some(target), Some(previous)) = (target.as_object_mut(), previous.as_object()) else {
        return;
    };
    for (key, old) in previous {
        match applied.get(key) {
            None => {
                target.remove(key);
            }
            Some(new) if old.is_object() && new.is_object() => {
                if let Some(t) = target.get_mut(key) {
                    remove_dropped(t, old, new);
                }
            }
            Some(_) => {}
        }
    }
}

fn delete(
    server: &ApiServer,
    target: &Target,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let Some(name) = target.name.clone() else {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "DELETE needs a name",
        );
    };
    let options: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let grace = options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let key = key_of(target, &name);
    let mut inner = server.lock();
    let Some(current) = inner.objects.get(&key).map(|v| (**v).clone()) else {
        return not_found(&format!("{} \"{name}\" not found", target.kind.plural));
    };
    let finalizers = current["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    // A bound, unfinished pod terminates gracefully: the kubelet confirms with a grace-0 delete.
    let graceful_pod = target.kind.kind == "Pod"
        && current["spec"]["nodeName"].is_string()
        && !matches!(
            current["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
    let grace = grace.unwrap_or_else(|| {
        current["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30)
    });
    if finalizers || (graceful_pod && grace > 0) {
        if current["metadata"]["deletionTimestamp"].is_string() {
            return json_response(StatusCode::ACCEPTED, &current);
        }
        let mut object = current.clone();
        let deadline = now() + SignedDuration::from_secs(if graceful_pod { grace } else { 0 });
        object["metadata"]["deletionTimestamp"] = json!(deadline.to_string());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        let stored = inner.store(server, &key, object, "MODIFIED");
        return json_response(StatusCode::ACCEPTED, &stored);
    }
    let gone = inner.remove(server, &key).unwrap_or(current);
    json_response(StatusCode::OK, &gone)
}
