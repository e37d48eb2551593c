//! The `tessera-operator` binary: clear failures without a cluster or without the CRD, and
//! /healthz, /readyz, /metrics and a clean exit on SIGTERM against the test API server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::ApiServer;
use tessera_store::EmbeddedStore;

const BINARY: &str = env!("CARGO_BIN_EXE_tessera-operator");

fn kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         current-context: test\nusers:\n- name: test\n  user:\n    token: tessera-operator\n"
    );
    std::fs::write(&path, yaml).expect("write the kubeconfig");
    path
}

/// Runs the binary to completion (at most 60 s) and returns (exit code, stderr).
fn run_to_end(kubeconfig: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // Never reached: each of these fails before the store is dialled.
        .env("TESSERA_STORE", "etcd://127.0.0.1:9")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tessera-operator");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("piped")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            return (status.code(), stderr);
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().expect("kill");
            panic!("tessera-operator did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A minimal HTTP GET: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[test]
fn without_a_reachable_cluster_it_exits_non_zero_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let config = kubeconfig(dir.path(), &unreachable);
    let (code, stderr) = run_to_end(&config, &["--metrics-addr", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );
    assert!(stderr.contains(&unreachable), "{stderr}");
}

#[test]
fn without_a_kubeconfig_it_says_where_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_end(&dir.path().join("missing"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("KUBECONFIG"), "{stderr}");
}

#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), "http://127.0.0.1:1");
    let (code, stderr) = run_to_end(&config, &["--metrics-addr", "not-an-address"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--metrics-addr"), "{stderr}");
}

#[test]
fn without_a_store_it_says_which_flag_to_give() {
    let output = Command::new(BINARY)
        .env_remove("TESSERA_STORE")
        .output()
        .expect("start tessera-operator");
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--store"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crd_it_says_how_to_install_it() {
    let server = ApiServer::start_with(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &format!("http://{}", server.addr));
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        run_to_end(&config, &["--metrics-addr", "127.0.0.1:0"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("kubectl apply -f crds/trainingrun.yaml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_health_readiness_and_metrics_and_drains_on_sigterm() {
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &format!("http://{}", server.addr));
    let port = free_port();
    // The coordination store a local `tessera run` serves, standing in for etcd.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = tessera_store::serve(Arc::new(EmbeddedStore::new()), listener).unwrap();
    let mut child = Command::new(BINARY)
        .args([
            "--store",
            &store.endpoint(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--identity",
            "bin-test",
        ])
        .env("KUBECONFIG", &config)
        .env("POD_NAMESPACE", "default")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tessera-operator");
    let outcome = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let ready = loop {
            if let Some((200, body)) = http_get(port, "/readyz")
                && body.contains("ready")
                && !body.contains("standby")
            {
                break true;
            }
            if started.elapsed() > Duration::from_secs(30) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let health = http_get(port, "/healthz");
        let metrics = http_get(port, "/metrics");
        // SIGTERM: drain and exit 0.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().expect("poll") {
                break status.code();
            }
            if started.elapsed() > Duration::from_secs(30) {
                child.kill().expect("kill");
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (ready, health, metrics, code)
    })
    .await
    .unwrap();
    let (ready, health, metrics, code) = outcome;
    assert!(ready, "/readyz never said ready");
    assert_eq!(health.map(|h| h.0), Some(200));
    let (status, body) = metrics.expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(body.contains("tessera_operator_leader 1"), "{body}");
    assert!(body.contains("tessera_operator_runs"), "{body}");
    assert_eq!(code, Some(0), "exit after SIGTERM");
    let lease = server.get("coordination.k8s.io/leases", "default", "tessera-operator");
    assert!(lease.is_some(), "the binary elected itself through a Lease");
}
