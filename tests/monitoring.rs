//! The chart's alerts and dashboard against real metrics: a Prometheus server (Debian's
//! package, on loopback) scrapes a local `tessera run` of a tiny model — its in-process agents
//! and each trainer rank — and an operator replica running in this process against the test
//! API server, and loads the chart's alerts as its rules. A trainer rank is killed once, so the
//! restart and recovery metrics exist. Then every PromQL expression of the alerts (their
//! signal, the part before the threshold) and of the dashboard is evaluated: each returns
//! data, except those over GPU metrics, which need a GPU node ([`NEEDS_A_GPU_NODE`]).

mod chart_support;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::Value;
use tessera::endpoints::MetricsRecord;
use tessera_api::TrainingRun;
use tessera_operator::controller::ControllerSettings;
use tessera_operator::leader::LeaseTimings;
use tessera_operator::metrics::Metrics;
use tessera_operator::progress::StoreProgress;
use tessera_operator::replica::{Health, LeaderElectionSettings, run_replica};
use tessera_operator::testing::ApiServer;
use tokio_util::sync::CancellationToken;

/// Alerts and dashboard panels over the agents' GPU metrics (`tessera_agent_gpu_*`). The agent
/// reads them from NVML, so a machine without NVIDIA GPUs (CI) has no series to return: these
/// are evaluated (they must parse and run) but return data only on a GPU node. The test fails
/// if one of them reads no GPU metric, so nothing else can hide here.
const NEEDS_A_GPU_NODE: &[&str] = &[
    "TesseraGPUUnhealthy",
    "GPU utilisation",
    "GPU memory used",
    "GPU temperature",
    "Unhealthy GPUs",
];

const RUN: &str = "monitored";

/// Long enough to outlast the test: it is stopped (SIGTERM) once every expression was seen.
const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: monitored
spec:
  model: {preset: tiny}
  data: {train: data/train-*.bin, validation: data/val-*.bin, tokenizer: bytes}
  optimizer: {lr: 0.003, warmupSteps: 5, globalBatchTokens: 1024, microBatch: 2}
  training: {steps: 5000, seed: 7, evalInterval: 10, evalBatches: 1}
  parallelism: {nodes: 2, gpusPerNode: 1}
  checkpoint: {path: checkpoints, everySteps: 10, keep: 2}
  faultTolerance: {backoffSeconds: 0, heartbeatTimeoutSeconds: 20, maxRestarts: 3}
"#;

/// A child process killed (its trainer ranks too) when the test ends, however it ends.
struct Guard {
    child: Child,
    /// Trainer processes whose command line names this directory are killed too.
    trainers_of: Option<PathBuf>,
}

impl Guard {
    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop(Duration::from_secs(10));
        }
        if let Some(dir) = &self.trainers_of {
            for pid in common::trainers_of(dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An operator replica in this process, leading, against the test API server holding one
/// waiting run; serves its /metrics on a loopback port.
async fn start_operator(shutdown: CancellationToken) -> SocketAddr {
    let api = ApiServer::start().await;
    // The test cluster has no GPU nodes: the run waits (Pending), counted by phase.
    let run = tessera_operator::fixtures::run("waiting").build();
    let runs: Api<TrainingRun> = Api::namespaced(api.client(), "ml");
    runs.create(&PostParams::default(), &run)
        .await
        .expect("create a TrainingRun");
    let metrics = Metrics::new();
    let health = Health::new();
    let listener = tessera_operator::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tessera_operator::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(run_replica(
        api.operator_client(),
        ControllerSettings {
            config: tessera_operator::OperatorConfig::default(),
            namespace: None,
            concurrency: 4,
            instance: "monitoring-test".into(),
        },
        Some(LeaderElectionSettings {
            lease_namespace: "default".into(),
            lease_name: "tessera-operator".into(),
            identity: "monitoring-test".into(),
            timings: LeaseTimings::default(),
        }),
        StoreProgress::in_memory(),
        metrics,
        health,
        shutdown,
    ));
    addr
}

/// One HTTP/1.0 GET on loopback: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `expr` now: the number of series it returns, or Prometheus's error.
fn query(prometheus: SocketAddr, expr: &str) -> Result<usize, String> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(expr)),
    )
    .map_err(|e| e.to_string())?;
    let answer: Value =
        serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if answer["status"] != "success" {
        return Err(format!("{status}: {}", answer["error"]));
    }
    Ok(answer["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The Prometheus configuration: 1 s scrapes of the agents, the ranks and the operator, and
/// the chart's alerts as rules. The ranks get the `namespace` label a PodMonitor gives them
/// from their pod.
fn prometheus_config(record: &MetricsRecord, operator: SocketAddr, rules: &Path) -> String {
    let ranks: Vec<String> = record
        .ranks
        .iter()
        .map(|r| format!("\"{}\"", r.addr))
        .collect();
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: tessera-agents
    honor_labels: true
    static_configs:
      - targets: ["{agents}"]
  - job_name: tessera-trainers
    static_configs:
      - targets: [{ranks}]
        labels: {{namespace: local}}
  - job_name: tessera-operator
    static_configs:
      - targets: ["{operator}"]
"#,
        rules = rules.display(),
        agents = record.agents,
        ranks = ranks.join(", "),
    )
}

/// The dashboard's expressions as Grafana sends them for this run: its variables replaced.
fn as_grafana_sends_it(expr: &str) -> String {
    let expr = expr
        .replace("$namespace", "local")
        .replace("$run", RUN)
        .replace("$__rate_interval", "1m");
    assert!(
        !expr.contains('$'),
        "an unknown dashboard variable in {expr}"
    );
    expr
}

fn wait_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_alert_and_dashboard_expression_returns_data_from_a_live_run() {
    // === what the chart asks Prometheus ===
    let values_file = chart_support::chart_dir().join("ci/external-etcd-values.yaml");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&values_file).unwrap()).unwrap();
    let objects = chart_support::objects(&chart_support::render(values));
    let rule = chart_support::of_kind(&objects, "PrometheusRule")[0].clone();
    let alerts = chart_support::alerts(&objects);
    let mut expressions: Vec<(String, String)> = alerts
        .iter()
        .map(|a| (a.name.clone(), a.signal().to_string()))
        .collect();
    expressions.extend(
        chart_support::dashboard_queries(&chart_support::dashboard(&objects))
            .into_iter()
            .map(|(title, expr)| (title, as_grafana_sends_it(&expr))),
    );
    for listed in NEEDS_A_GPU_NODE {
        let exprs: Vec<&String> = expressions
            .iter()
            .filter(|(what, _)| what == listed)
            .map(|(_, e)| e)
            .collect();
        assert!(!exprs.is_empty(), "{listed} is listed but not in the chart");
        for expr in exprs {
            assert!(
                chart_support::metric_names(expr)
                    .iter()
                    .any(|m| m.starts_with("tessera_agent_gpu_")),
                "{listed} is listed as needing a GPU node but reads no GPU metric: {expr}"
            );
        }
    }

    // === the operator, in this process ===
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let operator = runtime.block_on(start_operator(shutdown.clone()));

    // === the run ===
    let dir = common::run_dir(MANIFEST);
    common::bin("tessera-trainer");
    let out = dir.path().join("out");
    let mut run = Guard {
        child: Command::new(common::bin("tessera"))
            .arg("run")
            .arg(dir.path().join("run.yaml"))
            .arg("--out")
            .arg(&out)
            .args(["--json", "--metrics-addr", "127.0.0.1:0"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        trainers_of: Some(dir.path().to_path_buf()),
    };
    let record = wait_until(
        "tessera run writes metrics.json",
        Duration::from_secs(60),
        || MetricsRecord::read(&out).ok().flatten(),
    );
    assert_eq!(record.ranks.len(), 2, "{record:?}");

    // === Prometheus ===
    let rules = chart_support::write(
        dir.path(),
        "rules.yaml",
        &serde_yaml::to_string(&rule["spec"]).unwrap(),
    );
    let config = chart_support::write(
        dir.path(),
        "prometheus.yml",
        &prometheus_config(&record, operator, &rules),
    );
    let prometheus = free_port();
    let _prometheus = Guard {
        child: Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package; bash scripts/setup.sh installs it)"),
        trainers_of: None,
    };
    wait_until("Prometheus is ready", Duration::from_secs(60), || {
        http_get(prometheus, "/-/ready")
            .ok()
            .filter(|(status, _)| *status == 200)
    });

    // === one restart: a killed rank, so that restarts and recovery time have data ===
    let history = out.join("history.jsonl");
    common::wait_for_step(&history, 12, Duration::from_secs(180));
    let victims = common::trainers_of(dir.path());
    assert_eq!(victims.len(), 2, "two trainer ranks run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victims[1]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // === every expression, until each has data ===
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        missing.clear();
        for (what, expr) in &expressions {
            match query(prometheus, expr) {
                Ok(0) if NEEDS_A_GPU_NODE.contains(&what.as_str()) => {}
                Ok(0) => missing.push(format!("{what}: {expr}")),
                Ok(_) => {}
                Err(error) => panic!("{what}: Prometheus cannot evaluate {expr}: {error}"),
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        missing.is_empty(),
        "these return no data from a live run:\n{}",
        missing.join("\n")
    );

    // Prometheus loaded the alerts and evaluates each without error.
    let rules: Value = wait_until("every rule evaluated", Duration::from_secs(30), || {
        let (_, body) = http_get(prometheus, "/api/v1/rules").ok()?;
        let rules: Value = serde_json::from_str(&body).ok()?;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = all.len() == alerts.len()
            && all.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        evaluated.then_some(rules)
    });
    for group in rules["data"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r:#}");
        }
    }
    // The run's own signals hold no alarm: it steps, checkpoints, reaches its store, and an
    // operator leads.
    for quiet in [
        "TesseraNoStepProgress",
        "TesseraCheckpointStale",
        "TesseraStoreUnreachable",
        "TesseraOperatorNotLeading",
        "TesseraRunFailed",
    ] {
        let alert = alerts.iter().find(|a| a.name == quiet).unwrap();
        let firing = format!("ALERTS{{alertname=\"{quiet}\", alertstate=\"firing\"}}");
        assert_eq!(query(prometheus, &firing), Ok(0), "{quiet} is firing");
        // A rank's step series that has only just appeared (a restarted rank, the first
        // scrape) shows no change yet; the rule's `for: 2m` is what keeps that quiet, so
        // its bare expression is not checked here.
        if quiet == "TesseraNoStepProgress" {
            continue;
        }
        assert_eq!(
            query(prometheus, &alert.expr),
            Ok(0),
            "{quiet} fires: {}",
            alert.expr
        );
    }

    // A clean stop: the ranks checkpoint and exit.
    let status = run.stop(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "tessera run did not stop cleanly: {status:?}"
    );
    shutdown.cancel();
}
