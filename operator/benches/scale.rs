//! Operator scale: time and peak memory to reconcile N TrainingRuns of P pods each to Running
//! against the test API server (run by `bench/operator-scale.sh`).
//!
//! ```text
//!  this process (measured) ── HTTP ──► child process: the test API server (`--serve`)
//!    operator replica (controller, stores)
//!    test kubelet: binds each pending pod to a node with room and marks it Running
//! ```
//!
//! The API server runs in a child process so that the peak RSS printed is the operator's
//! (plus the small test kubelet), not the server's copy of every object.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tessera_api::status::Phase;
use tessera_operator::fixtures;
use tessera_operator::names;
use tessera_operator::progress::StoreProgress;

use support::{ApiServer, GPU, Operator, test_config};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if args.iter().any(|a| a == "--serve") {
        runtime.block_on(serve());
        return;
    }
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = flag("--runs", 1000);
    let pods = flag("--pods", 8);
    let limit = Duration::from_secs(flag("--limit-seconds", 600) as u64);
    if let Err(message) = runtime.block_on(bench(runs, pods, limit)) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// Child mode: serve until stdin closes (the parent exits).
async fn serve() {
    let server = ApiServer::start().await;
    println!("listening on {}", server.addr);
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            line.clear();
        }
    })
    .await
    .expect("stdin reader");
}

async fn bench(runs: usize, pods_per_run: usize, limit: Duration) -> Result<(), String> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the API server process: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line from the server: {line:?}"))?
        .to_string();
    let client = client_for(&addr);

    // One node per pod slot: N nodes × P GPUs hold N runs of P single-GPU pods.
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..runs)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                nodes
                    .create(
                        &PostParams::default(),
                        &fixtures::gpu_node(&format!("node-{i:05}"), GPU, pods_per_run as u64),
                    )
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map_err(|e| format!("creating nodes: {e}"))?;

    let mut config = test_config();
    config.pending_retry = Duration::from_secs(2);
    config.progress_resync = Duration::from_secs(30);
    let operator = Operator::start(client.clone(), StoreProgress::in_memory(), config, None);
    tokio::time::timeout(Duration::from_secs(60), operator.health.synced())
        .await
        .map_err(|_| "the operator's watches did not sync within 60 s".to_string())?;
    let baseline = peak_rss_kib();

    let started = Instant::now();
    let run_api: Api<tessera_api::TrainingRun> = Api::namespaced(client.clone(), "ml");
    futures::stream::iter(0..runs)
        .map(|i| {
            let run_api = run_api.clone();
            async move {
                let run = fixtures::run(&format!("run-{i:05}"))
                    .nodes(pods_per_run as u32)
                    .gpus_per_node(1)
                    .unstored()
                    .build();
                run_api
                    .create(&PostParams::default(), &run)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map_err(|e| format!("creating runs: {e}"))?;
    let submitted = started.elapsed();

    let mut kubelet = ScaleKubelet::new(client.clone(), runs, pods_per_run as u64);
    let mut last_report = Instant::now();
    loop {
        kubelet.tick().await?;
        let list = run_api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing runs: {e}"))?;
        let running = list
            .items
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running))
            .count();
        if running == runs {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:>5.1}s: {running}/{runs} running, {} pods started",
                started.elapsed().as_secs_f64(),
                kubelet.started
            );
            last_report = Instant::now();
        }
        if started.elapsed() > limit {
            let stuck: Vec<String> = list
                .items
                .iter()
                .filter(|r| r.status.as_ref().and_then(|s| s.phase) != Some(Phase::Running))
                .take(5)
                .map(|r| {
                    let status = r.status.clone().unwrap_or_default();
                    let admitted = status.condition("Admitted").map(|c| c.message.clone());
                    format!("{} {:?} {:?}", r.name_any(), status.phase, admitted)
                })
                .collect();
            return Err(format!(
                "only {running} of {runs} runs were Running after {limit:?}; for example {stuck:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_kib();
    let metrics = operator.metrics.render();
    let reconciles: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_operator_reconcile_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let reconcile_seconds: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_operator_reconcile_duration_seconds_sum"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "operator scale: {runs} runs x {pods_per_run} pods Running in {:.1} s \
         (submitted in {:.1} s, {} reconciles taking {:.1} s in all); peak RSS {} MiB \
         (after sync, before runs: {} MiB); CPU: operator process {:.1} s, API server {:.1} s",
        elapsed.as_secs_f64(),
        submitted.as_secs_f64(),
        reconciles,
        reconcile_seconds,
        peak / 1024,
        baseline / 1024,
        cpu_seconds("self"),
        cpu_seconds(&child.id().to_string())
    );
    let _ = operator.stop().await;
    let _ = child.kill();
    Ok(())
}

fn client_for(addr: &str) -> Client {
    let url: axum::http::Uri = format!("http://{addr}").parse().expect("a valid URL");
    let mut config = kube::Config::new(url);
    config.read_timeout = Some(Duration::from_secs(300));
    Client::try_from(config).expect("a client")
}

/// User + system CPU seconds of a process (`self` or a pid), 0 where /proc is not available.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// VmHWM of this process, in KiB (0 where /proc is not available).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A scheduler and kubelet that keep their bookkeeping in memory and only list pending pods,
/// so that they cost little next to the operator.
struct ScaleKubelet {
    client: Client,
    free: BTreeMap<String, u64>,
    placed: HashMap<String, HashSet<String>>,
    started: usize,
}

impl ScaleKubelet {
    fn new(client: Client, nodes: usize, gpus: u64) -> ScaleKubelet {
        ScaleKubelet {
            client,
            free: (0..nodes).map(|i| (format!("node-{i:05}"), gpus)).collect(),
            placed: HashMap::new(),
            started: 0,
        }
    }

    async fn tick(&mut self) -> Result<(), String> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let pending = pods
            .list(&ListParams::default().fields("spec.nodeName="))
            .await
            .map_err(|e| format!("listing pending pods: {e}"))?;
        let mut bindings = Vec::new();
        for pod in pending.items {
            let run = pod
                .labels()
                .get(names::LABEL_RUN)
                .cloned()
                .unwrap_or_default();
            let taken = self.placed.entry(run).or_default();
            // Spread: the node with the most free GPUs, as the default scheduler's scoring
            // tends to; first-fit would strand single GPUs on too few nodes for the last gangs.
            let node = self
                .free
                .iter()
                .filter(|(node, free)| **free >= 1 && !taken.contains(*node))
                .max_by_key(|(node, free)| (**free, std::cmp::Reverse((*node).clone())))
                .map(|(node, _)| node.clone());
            let Some(node) = node else { continue };
            *self.free.get_mut(&node).expect("a known node") -= 1;
            taken.insert(node.clone());
            bindings.push((pod.namespace().unwrap_or_default(), pod.name_any(), node));
        }
        // Confirm graceful deletions, as a live node's kubelet does.
        let terminating = pods
            .list(&ListParams::default().fields("metadata.deletionTimestamp!="))
            .await
            .map_err(|e| format!("listing terminating pods: {e}"))?;
        for pod in terminating.items {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api
                .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await;
        }
        let client = self.client.clone();
        let results = futures::stream::iter(bindings)
            .map(|(namespace, name, node)| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                async move {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"nodeName": node}})),
                    )
                    .await?;
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for result in results {
            result.map_err(|e| format!("binding a pod: {e}"))?;
            self.started += 1;
        }
        Ok(())
    }
}
