//! Node agents end to end: `tessera-agent` processes against a real etcd (Debian's
//! etcd-server, started here on free loopback ports, as a 3-member cluster, or inside test
//! hosts), each supervising real `tessera-trainer` ranks (CPU, the `tiny` model). Failures — a
//! rank killed, a rank stopped, a whole agent killed with its ranks, restarts exhausted, etcd
//! unreachable — and what the gang does. The faults across hosts of README's table: a worker
//! and rank 0's node partitioned (on test hosts, `common/hosts.rs`), the etcd leader killed,
//! etcd without quorum, and a stale rank 0 woken in an ended generation; each compares the
//! final weights with the same spec run without faults and prints its recovery time.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::hosts::{EtcdInHost, TestHosts};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value as Json;
use tessera_store::testing::{EtcdCluster, EtcdServer};

mod common;

/// 2 nodes × 2 ranks of `tiny`; 8 sequences of 64 bytes a step.
fn manifest(extra_fault_tolerance: &str) -> String {
    format!(
        r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata:
  name: agents
spec:
  model: {{preset: tiny}}
  data: {{train: data/train-*.bin, tokenizer: bytes}}
  optimizer: {{lr: 0.003, warmupSteps: 5, globalBatchTokens: 1024, microBatch: 2}}
  training: {{steps: 40, seed: 3}}
  parallelism: {{nodes: 2, gpusPerNode: 2}}
  checkpoint: {{path: checkpoints, everySteps: 10, keep: 4}}
  faultTolerance: {{backoffSeconds: 0, {extra_fault_tolerance}}}
"#
    )
}

/// [`manifest`] with a Llama-architecture model: the recorded fixture `llama-gqa` (2 layers,
/// width 64, grouped-query attention, a 384-token vocabulary) as the starting point.
fn llama_manifest(extra_fault_tolerance: &str) -> String {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/hf/llama-gqa");
    manifest(extra_fault_tolerance)
        .replace(
            "model: {preset: tiny}",
            &format!("model: {{from: {}, context: 64}}", from.display()),
        )
        .replace(", tokenizer: bytes}", "}")
}

/// The test hosts of a gang across hosts that hold its etcd members.
const ETCD_HOSTS: [usize; 3] = [0, 1, 2];

/// One test's world: a run directory, etcd (one member, or a cluster), and the agents it
/// started.
struct Gang {
    dir: tempfile::TempDir,
    sockets: tempfile::TempDir,
    _etcd: Option<EtcdServer>,
    cluster: Option<EtcdCluster>,
    store_url: String,
    agents: Vec<(String, Child)>,
    /// Test hosts, when the gang runs across them: etcd members in hosts 0-2, agent k in host
    /// k + 3.
    /// Dropped after the agents (Drop) and the etcd inside (declared first).
    _etcd_in_host: Vec<EtcdInHost>,
    hosts: Option<TestHosts>,
}

impl Gang {
    fn new(manifest: &str) -> Gang {
        let etcd = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(EtcdServer::start());
        let url = format!("etcd://{}", etcd.endpoint());
        Gang::with_store(manifest, Some(etcd), None, url)
    }

    /// [`Gang::new`] on a three-member etcd cluster, the agents given every member.
    fn with_cluster(manifest: &str) -> Gang {
        let cluster = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(EtcdCluster::start(3));
        let url = cluster.url();
        Gang::with_store(manifest, None, Some(cluster), url)
    }

    fn with_store(
        manifest: &str,
        etcd: Option<EtcdServer>,
        cluster: Option<EtcdCluster>,
        store_url: String,
    ) -> Gang {
        common::bin("tessera-agent");
        common::bin("tessera-trainer");
        Gang {
            dir: common::run_dir(manifest),
            sockets: tempfile::Builder::new().prefix("ta-").tempdir().unwrap(),
            _etcd: etcd,
            cluster,
            store_url,
            agents: Vec::new(),
            _etcd_in_host: Vec::new(),
            hosts: None,
        }
    }

    /// [`Gang::new`] across `nodes` + 3 test hosts: a 3-member etcd cluster on hosts 0, 1 and 2
    /// (the agents given every member), and each agent [`Gang::start_agent`] starts in a host of
    /// its own (`n{k}` in host k + 3), its ranks listening on that host's address, so the ring
    /// and the store traffic cross the bridge.
    fn across_hosts(manifest: &str, nodes: usize) -> Gang {
        let hosts = TestHosts::new(ETCD_HOSTS.len() + nodes);
        let mut gang = Gang::with_store(manifest, None, None, String::new());
        let etcd = hosts.start_etcd_cluster(&ETCD_HOSTS, gang.dir.path(), ETCD_HOSTS.len());
        gang.store_url = hosts.etcd_url(&ETCD_HOSTS);
        gang._etcd_in_host = etcd;
        gang.hosts = Some(hosts);
        gang
    }

    /// The test host of `node` (`n{k}` → k + 3).
    fn host_of(node: &str) -> usize {
        node.trim_start_matches('n').parse::<usize>().unwrap() + ETCD_HOSTS.len()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the agent of `node` in its own process group (so a test can kill it with its
    /// ranks), its log in `agent-{node}.log`.
    fn start_agent(&mut self, node: &str, extra: &[&str]) {
        self.start_agent_with_env(node, extra, &[]);
    }

    /// [`Gang::start_agent`] with extra environment for the agent and its ranks.
    fn start_agent_with_env(&mut self, node: &str, extra: &[&str], env: &[(&str, String)]) {
        let log = std::fs::File::create(self.path(&format!("agent-{node}.log"))).unwrap();
        let mut command = match &self.hosts {
            Some(hosts) => {
                let host = Gang::host_of(node);
                let mut command = hosts.command(host, common::bin("tessera-agent"));
                command.args(["--listen-host", &hosts.addr(host).to_string()]);
                command
            }
            None => Command::new(common::bin("tessera-agent")),
        };
        let child = command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("--config")
            .arg(self.path("run.yaml"))
            .args(["--node", node, "--namespace", "e2e"])
            .args(["--store", &self.store_url])
            .arg("--trainer")
            .arg(common::bin("tessera-trainer"))
            .arg("--base-dir")
            .arg(self.dir.path())
            .arg("--socket-dir")
            .arg(self.sockets.path())
            .arg("--log-dir")
            .arg(self.dir.path())
            .arg("--history")
            .arg(self.path("history.jsonl"))
            .args([
                "--lease-ttl",
                "2",
                "--last-call",
                "1",
                "--rendezvous-timeout",
                "60",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.agents.push((node.to_string(), child));
    }

    /// Waits for every agent; returns each one's exit success and JSON report, by node.
    fn finish(&mut self, limit: Duration) -> Vec<(String, bool, Json)> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        for (node, mut child) in std::mem::take(&mut self.agents) {
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
                    let _ = child.wait();
                    let others: String = out
                        .iter()
                        .map(|(n, ..): &(String, bool, Json)| {
                            format!("\n--- {n}:\n{}", self.log(n))
                        })
                        .collect();
                    panic!(
                        "agent {node} did not finish within {limit:?}:\n{}{others}",
                        self.log(&node)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let mut stdout = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            let report = serde_json::from_str(stdout.trim()).unwrap_or(Json::Null);
            out.push((node, status.success(), report));
        }
        out
    }

    /// The test host `node`'s agent runs in.
    fn hosts(&self) -> &TestHosts {
        self.hosts.as_ref().expect("a gang across test hosts")
    }

    /// The ranks `node`'s agent runs now (trainers in its process group).
    fn ranks_of(&self, node: &str) -> Vec<i32> {
        let group = self.agent_pid(node);
        common::trainers_of(self.dir.path())
            .into_iter()
            .filter(|pid| process_group(*pid) == Some(group))
            .collect()
    }

    /// The process id of `node`'s agent (its process group holds its ranks).
    fn agent_pid(&self, node: &str) -> i32 {
        let (_, child) = self.agents.iter().find(|(n, _)| n == node).unwrap();
        child.id() as i32
    }

    /// Waits for the agents of `nodes` only; the others keep running.
    fn finish_nodes(&mut self, nodes: &[&str], limit: Duration) -> Vec<(String, bool, Json)> {
        let (wanted, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.agents)
            .into_iter()
            .partition(|(n, _)| nodes.contains(&n.as_str()));
        self.agents = wanted;
        let reports = self.finish(limit);
        self.agents = others;
        reports
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.path(&format!("agent-{node}.log"))).unwrap_or_default()
    }

    /// Kills an agent and every rank it started (its process group).
    fn kill_agent(&mut self, node: &str) {
        let index = self.agents.iter().position(|(n, _)| n == node).unwrap();
        let (_, mut child) = self.agents.remove(index);
        kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Gang {
    fn drop(&mut self) {
        for (_, child) in &mut self.agents {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
        for pid in common::trainers_of(self.dir.path()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn weights(reports: &[(String, bool, Json)]) -> String {
    let lead = reports.iter().find(|(n, ..)| n == "n0").unwrap();
    lead.2["rankSummary"]["weightsSha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no weights hash in {}", lead.2))
        .to_string()
}

fn all_failures(reports: &[(String, bool, Json)]) -> Vec<Json> {
    reports
        .iter()
        .flat_map(|(_, _, r)| r["failures"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn assert_succeeded(gang: &Gang, reports: &[(String, bool, Json)]) {
    for (node, ok, report) in reports {
        assert!(*ok, "agent {node} failed: {report}\n{}", gang.log(node));
        assert_eq!(report["end"]["phase"], "succeeded", "{node}: {report}");
    }
}

fn undisturbed_weights(manifest_text: &str) -> String {
    let mut gang = Gang::new(manifest_text);
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    assert!(all_failures(&reports).is_empty());
    weights(&reports)
}

/// Runs `text` undisturbed, then again with rank `victim` SIGKILLed after step 15: one
/// rank-exit failure, one restart (generation 2), and the undisturbed run's weights. Returns
/// the disturbed gang (its logs) for further checks.
fn killed_rank_resumes_with_identical_weights(text: &str, victim: usize) -> Gang {
    let clean = undisturbed_weights(text);

    let mut gang = Gang::new(text);
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    let ranks = common::trainers_of(gang.dir.path());
    assert_eq!(ranks.len(), 4);
    kill(Pid::from_raw(ranks[victim]), Signal::SIGKILL).unwrap();
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    let failures = all_failures(&reports);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["kind"], "rank-exit");
    assert!(reports.iter().all(|(_, _, r)| r["generation"] == 2));
    assert_eq!(weights(&reports), clean);
    gang
}

#[test]
fn a_killed_rank_resumes_from_the_checkpoint_with_identical_weights() {
    killed_rank_resumes_with_identical_weights(&manifest("heartbeatTimeoutSeconds: 10"), 2);
}

#[test]
fn a_killed_rank_of_a_llama_model_resumes_with_identical_weights() {
    let gang = killed_rank_resumes_with_identical_weights(
        &llama_manifest("heartbeatTimeoutSeconds: 10"),
        1,
    );
    assert!(
        gang.log("n0")
            .contains("initialised from Hugging Face weights")
            || std::fs::read_dir(gang.dir.path())
                .unwrap()
                .flatten()
                .any(|e| std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("initialised from Hugging Face weights"))),
        "the ranks did not start from the directory's weights"
    );
}

#[test]
fn a_killed_rank_of_a_lora_run_resumes_with_identical_adapters() {
    // LoRA on the llama-gqa directory with ZeRO-1: the gang shards only the adapters' state.
    let text = llama_manifest("heartbeatTimeoutSeconds: 10")
        .replace(
            "training: {steps: 40, seed: 3}",
            "training: {steps: 40, seed: 3, lora: {rank: 4, targets: [q_proj, v_proj, down_proj]}}",
        )
        .replace(
            "parallelism: {nodes: 2, gpusPerNode: 2}",
            "parallelism: {nodes: 2, gpusPerNode: 2, sharding: optimizer}",
        );
    assert!(text.contains("lora:") && text.contains("sharding: optimizer"));
    let gang = killed_rank_resumes_with_identical_weights(&text, 3);
    let manifest: Json = serde_json::from_slice(
        &std::fs::read(gang.path("checkpoints/step-0000000040/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["config"]["training"]["lora"]["rank"], 4);
    assert!(
        manifest["base"]["sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );
}

/// The first step the history records after `since` (ms since the Unix epoch), and when.
fn first_step_after(gang: &Gang, since: u128) -> (u64, u128) {
    std::fs::read_to_string(gang.path("history.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter_map(|r| Some((r["step"].as_u64()?, u128::from(r["unixMs"].as_u64()?))))
        .find(|&(_, ms)| ms > since)
        .expect("a step after the fault")
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// `text`'s fault-free weights; then the same run on 2 agents over a 3-member etcd cluster,
/// at step 15, with the cluster's leader.
fn on_a_cluster_at_step_15(text: &str) -> (String, tokio::runtime::Runtime, Gang, usize) {
    let clean = undisturbed_weights(text);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut gang = Gang::with_cluster(text);
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    let leader = runtime.block_on(gang.cluster.as_ref().unwrap().leader());
    (clean, runtime, gang, leader)
}

/// Scenario 3: the etcd leader SIGKILLed mid-run; the agents fail over to the other members.
#[test]
fn the_etcd_leader_killed_mid_run_leaves_the_weights_of_a_run_without_faults() {
    let (clean, _runtime, mut gang, leader) =
        on_a_cluster_at_step_15(&manifest("heartbeatTimeoutSeconds: 10"));
    let cluster = gang.cluster.as_mut().unwrap();
    cluster.kill(leader);
    let killed = now_ms();
    let reports = gang.finish(Duration::from_secs(120));
    assert_succeeded(&gang, &reports);
    let (step, at) = first_step_after(&gang, killed);
    println!(
        "scenario 3 (etcd leader m{leader} SIGKILLed): step {step} completed {:.2} s later; \
         {} failure(s)",
        (at - killed) as f64 / 1000.0,
        all_failures(&reports).len()
    );
    // The run carries on, or restarts once.
    let failures = all_failures(&reports);
    assert!(failures.len() <= 1, "{failures:?}");
    assert_eq!(weights(&reports), clean);
}

/// Scenario 4: etcd without quorum (2 of 3 members down) for longer than the heartbeat
/// timeout and the lease TTL. The ranks stop once their generation cannot be confirmed; when
/// quorum is back the gang restarts once from its checkpoint and ends with the weights of a
/// run without faults.
#[test]
fn etcd_without_quorum_for_longer_than_the_heartbeat_leaves_the_weights_of_a_run_without_faults() {
    let (clean, runtime, mut gang, leader) =
        on_a_cluster_at_step_15(&manifest("heartbeatTimeoutSeconds: 2"));
    let cluster = gang.cluster.as_mut().unwrap();
    let other = (leader + 1) % 3;
    cluster.kill(leader);
    cluster.kill(other);
    let lost = now_ms();
    // Quorum lost for longer than the heartbeat timeout (2 s) and the agents' lease TTL (2 s).
    std::thread::sleep(Duration::from_secs(5));
    let last_before = last_step(&gang);
    let cluster = gang.cluster.as_mut().unwrap();
    cluster.start_member(leader);
    let back = now_ms();
    runtime.block_on(cluster.wait_healthy(leader));
    let reports = gang.finish(Duration::from_secs(120));
    assert_succeeded(&gang, &reports);
    let (step, at) = first_step_after(&gang, back);
    let failures = all_failures(&reports);
    println!(
        "scenario 4 (etcd quorum lost for 5 s): the ranks stopped at step {last_before}; step \
         {step} completed {:.2} s after quorum returned; failures: {:?}",
        at.saturating_sub(back) as f64 / 1000.0,
        failures
            .iter()
            .map(|f| f["kind"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    );
    assert!(
        failures.iter().any(|f| f["kind"] == "store-unreachable"),
        "the agents did not notice the store was gone: {failures:?}"
    );
    assert!(lost > 0);
    // Said once per outage, not at every retry (the agents retried for seconds, every 0.2 to
    // 5 s, and refreshed their leases every 0.2 s): one outage, or two where the store
    // stumbled again while its members caught up.
    for node in ["n0", "n1"] {
        let log = gang.log(node);
        let said = log.matches("cannot reach the coordination store").count();
        let back = log.matches("the coordination store answers again").count();
        assert!(
            (1..=2).contains(&said) && back == said,
            "{node} said it {said} times, and {back} times that the store is back:\n{log}"
        );
    }
    assert_eq!(weights(&reports), clean);
    gang.cluster.as_mut().unwrap().start_member(other);
}

#[test]
fn a_stopped_rank_is_detected_within_the_heartbeat_timeout_and_recovered() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 2"));
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 12, Duration::from_secs(120));
    let ranks = common::trainers_of(gang.dir.path());
    let stopped_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    kill(Pid::from_raw(ranks[1]), Signal::SIGSTOP).unwrap();
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    let failures = all_failures(&reports);
    let first = failures
        .iter()
        .filter_map(|f| f["detectedUnixMs"].as_u64())
        .min()
        .unwrap_or_else(|| panic!("no failure recorded: {reports:?}"));
    let seconds = (first - stopped_at) as f64 / 1e3;
    // Within the heartbeat timeout + 1 s of the stop (the clock of "no progress" starts at
    // the rank's last step, just before the stop, so it may fire a little under 2 s after it).
    assert!(
        seconds > 0.0 && seconds <= 3.0,
        "detected after {seconds} s; the timeout is 2 s: {failures:?}"
    );
    assert!(failures.iter().any(|f| f["kind"] == "hang"), "{failures:?}");
}

#[test]
fn a_lost_agent_shrinks_an_elastic_run_onto_the_survivor() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 10, minNodes: 1"));
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    gang.kill_agent("n1");
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    let report = &reports[0].2;
    assert_eq!(report["generation"], 2, "{report}");
    // The survivor notices either its peers' ranks vanishing (its own ranks fail in their
    // collectives) or the lost node's lease expiring, whichever comes first.
    let failures = all_failures(&reports);
    assert!(
        failures
            .iter()
            .any(|f| f["kind"] == "peer-lost" || f["kind"] == "rank-exit"),
        "{failures:?}"
    );
    // The survivor finished alone, on its 2 ranks, from the checkpoint 4 ranks wrote.
    assert_eq!(report["rankSummary"]["worldSize"], 2, "{report}");
    assert_eq!(report["rankSummary"]["steps"], 40);
}

#[test]
fn a_lost_agent_of_a_fixed_size_run_is_waited_for_and_replaced() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 10"));
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    gang.kill_agent("n1");
    // The survivor cannot go on alone (minNodes = nodes = 2): it waits.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        gang.agents[0].1.try_wait().unwrap().is_none(),
        "n0 must wait, not end"
    );
    gang.start_agent("n2", &[]);
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    for (_, _, report) in &reports {
        assert_eq!(report["rankSummary"]["worldSize"], 4, "{report}");
    }
}

/// Writes a `--gpu-file` of GPUs 0..count, those in `bad` unhealthy with `problem`
/// (atomically: the agent re-reads it while it runs).
fn write_gpus(path: &Path, count: u32, bad: &[u32], problem: &str) {
    let gpus: Vec<Json> = (0..count)
        .map(|index| {
            let healthy = !bad.contains(&index);
            serde_json::json!({
                "index": index,
                "name": "drill GPU",
                "healthy": healthy,
                "problem": if healthy { Json::Null } else { Json::from(problem) },
            })
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&gpus).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

const ECC: &str = "3 uncorrected ECC errors since the driver loaded";

#[test]
fn an_unhealthy_gpu_fails_its_generation_and_a_spare_takes_its_place() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 10"));
    let (n0_gpus, n1_gpus) = (gang.path("gpus-n0.json"), gang.path("gpus-n1.json"));
    write_gpus(&n0_gpus, 3, &[], ECC);
    write_gpus(&n1_gpus, 2, &[], ECC);
    for (node, file) in [("n0", &n0_gpus), ("n1", &n1_gpus)] {
        let file = file.to_string_lossy().into_owned();
        gang.start_agent(
            node,
            &[
                "--ranks",
                "2",
                "--gpu-file",
                &file,
                "--gpu-sample-seconds",
                "0.2",
            ],
        );
    }
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    write_gpus(&n0_gpus, 3, &[1], ECC);
    let reports = gang.finish(Duration::from_secs(180));
    assert_succeeded(&gang, &reports);
    let failures = all_failures(&reports);
    let gpu = failures
        .iter()
        .find(|f| f["kind"] == "gpu-unhealthy")
        .unwrap_or_else(|| panic!("no GPU failure recorded: {failures:?}"));
    let reason = gpu["reason"].as_str().unwrap();
    assert!(
        reason.contains("GPU 1 of node n0 (local rank 1)") && reason.contains(ECC),
        "{reason}"
    );
    // The next generation gave n0's second rank the spare; n1 kept its GPUs.
    let gpus_of = |node: &str| reports.iter().find(|(n, ..)| n == node).unwrap().2["gpus"].clone();
    assert_eq!(gpus_of("n0"), serde_json::json!([0, 2]));
    assert_eq!(gpus_of("n1"), serde_json::json!([0, 1]));
    for (_, _, report) in &reports {
        assert_eq!(report["generation"], 2, "{report}");
        assert_eq!(report["rankSummary"]["steps"], 40, "{report}");
    }
}

#[test]
fn a_node_left_with_too_few_healthy_gpus_leaves_and_the_elastic_gang_goes_on() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 10, minNodes: 1"));
    for node in ["n0", "n1"] {
        let file = gang.path(&format!("gpus-{node}.json"));
        write_gpus(&file, 2, &[], ECC);
        let file = file.to_string_lossy().into_owned();
        gang.start_agent(node, &["--gpu-file", &file, "--gpu-sample-seconds", "0.2"]);
    }
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    write_gpus(
        &gang.path("gpus-n1.json"),
        2,
        &[0],
        "fell off the bus (GPU lost)",
    );
    let reports = gang.finish(Duration::from_secs(180));
    let (_, n1_ok, n1) = reports.iter().find(|(n, ..)| n == "n1").unwrap();
    assert!(!n1_ok, "n1 must exit non-zero: {n1}");
    let reason = n1["end"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("node n1 has 1 healthy GPU(s) of the 2 its ranks need")
            && reason.contains("GPU 0: fell off the bus"),
        "{n1}\n{}",
        gang.log("n1")
    );
    let (_, n0_ok, n0) = reports.iter().find(|(n, ..)| n == "n0").unwrap();
    assert!(n0_ok, "{n0}\n{}", gang.log("n0"));
    assert_eq!(n0["end"]["phase"], "succeeded", "{n0}");
    assert_eq!(n0["rankSummary"]["worldSize"], 2, "{n0}");
    assert_eq!(n0["rankSummary"]["steps"], 40, "{n0}");
    assert!(
        all_failures(&reports)
            .iter()
            .any(|f| f["kind"] == "gpu-unhealthy"),
        "{reports:?}"
    );
}

#[test]
fn exhausted_restarts_end_the_run_failed_with_the_reason() {
    let mut gang = Gang::new(&manifest("heartbeatTimeoutSeconds: 10, maxRestarts: 1"));
    // Every rank fails at start: its data does not exist.
    gang.start_agent("n0", &["--set", "data.train=missing/train-*.bin"]);
    gang.start_agent("n1", &["--set", "data.train=missing/train-*.bin"]);
    let reports = gang.finish(Duration::from_secs(120));
    for (node, ok, report) in &reports {
        assert!(!ok, "{node} should exit non-zero");
        assert_eq!(report["end"]["phase"], "failed", "{node}: {report}");
        let reason = report["end"]["reason"].as_str().unwrap();
        assert!(reason.contains("maxRestarts = 1"), "{reason}");
        assert!(reason.contains("exited with code"), "{reason}");
    }
    // Every agent names the same failure: the one recorded with the generation's end, even
    // where a peer saw it first and this agent only had its ranks stopped.
    let reasons: std::collections::BTreeSet<&str> = reports
        .iter()
        .map(|(_, _, report)| report["end"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
}

#[test]
fn an_unreachable_store_is_retried_then_refused_clearly() {
    let dir = common::run_dir(&manifest("heartbeatTimeoutSeconds: 10"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = Command::new(common::bin("tessera-agent"))
        .arg("--config")
        .arg(dir.path().join("run.yaml"))
        .args([
            "--node",
            "n0",
            "--store",
            &format!("etcd://127.0.0.1:{port}"),
        ])
        .args(["--store-timeout", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach etcd"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!Path::new(&dir.path().join("checkpoints")).exists());
}

/// Waits until `path` exists; panics after `limit`.
fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scenario 5, a stale rank: rank 0 (the committer, on n0) is held just before it asks to
/// commit step 20, and its whole node (agent and ranks) is paused there. The fixed-size gang
/// goes on in generation 2 with a replacement node n2 and finishes. When n0 wakes, rank 0's
/// commit of step 20 for generation 1 is refused by the store; the checkpoint directory holds
/// only commits the store recorded for their then-current generation, and the weights are the
/// undisturbed run's.
#[test]
fn a_stale_rank_zero_that_wakes_in_an_ended_generation_cannot_commit() {
    let text = manifest("heartbeatTimeoutSeconds: 10");
    let clean = undisturbed_weights(&text);

    let mut gang = Gang::new(&text);
    let release = gang.path("release-commit");
    let hold = format!("20:{}", release.display());
    gang.start_agent_with_env("n0", &[], &[("TESSERA_DRILL_HOLD_COMMIT", hold)]);
    gang.start_agent("n1", &[]);
    let held = release.with_extension("held");
    wait_for_file(&held, Duration::from_secs(120));
    let rank0: i32 = std::fs::read_to_string(&held)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let n0 = gang.agent_pid("n0");
    kill(Pid::from_raw(-n0), Signal::SIGSTOP).unwrap();
    let paused = Instant::now();
    let paused_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    gang.start_agent("n2", &[]);

    // The gang goes on with n1 and n2 and finishes in generation 2.
    let reports = gang.finish_nodes(&["n1", "n2"], Duration::from_secs(120));
    assert_succeeded(&gang, &reports);
    for (_, _, report) in &reports {
        assert_eq!(report["generation"], 2, "{report}");
    }
    let n1 = &reports.iter().find(|(n, ..)| n == "n1").unwrap().2;
    assert_eq!(n1["rankSummary"]["worldSize"], 4, "{n1}");
    assert_eq!(n1["rankSummary"]["weightsSha256"], clean.as_str(), "{n1}");
    let failures = all_failures(&reports);
    let failure = failures
        .iter()
        .find(|f| f["recoverySeconds"].as_f64().is_some())
        .unwrap_or_else(|| panic!("no recovery time: {failures:?}"));
    let detected = (failure["detectedUnixMs"].as_u64().unwrap() - paused_ms) as f64 / 1e3;
    let recovery = failure["recoverySeconds"].as_f64().unwrap();
    println!(
        "scenario 5 (stale rank): n0 paused; {} detected after {detected:.2} s; generation 2 \
         stepping {recovery:.2} s after that; the run finished {:.1} s after the pause",
        failure["kind"],
        paused.elapsed().as_secs_f64()
    );

    // Wake rank 0 first, let it ask its (still paused) agent, then wake the agent.
    std::fs::write(&release, "go").unwrap();
    kill(Pid::from_raw(rank0), Signal::SIGCONT).unwrap();
    wait_for_file(&release.with_extension("asking"), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(-n0), Signal::SIGCONT).unwrap();
    let refusal = "refused the commit of checkpoint step 20: it was written by generation 1, \
                   but the run's current generation is 2";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gang.log("n0").contains(refusal) {
        assert!(
            Instant::now() < deadline,
            "n0's agent did not refuse the stale commit:\n{}\nrank 0:\n{}",
            gang.log("n0"),
            std::fs::read_to_string(gang.path("gen-1-rank-0.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gang.kill_agent("n0");

    // Every committed checkpoint is the one the store recorded, by its then-current generation.
    let records = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tessera_store::connect(&gang.store_url, Duration::from_secs(10))
            .await
            .unwrap();
        tessera_store::RunStore::new(
            store,
            tessera_api::store_keys::RunKeys::new("e2e", "agents"),
        )
        .checkpoint_commits()
        .await
        .unwrap()
    });
    let listing = tessera_checkpoint::list_checkpoints(&gang.path("checkpoints")).unwrap();
    let committed: Vec<_> = listing.iter().filter(|c| c.committed).collect();
    assert!(!committed.is_empty());
    for c in committed {
        let record = records
            .iter()
            .find(|r| r.step == c.step)
            .unwrap_or_else(|| panic!("step {} has no commit record: {records:?}", c.step));
        assert_eq!(
            tessera_checkpoint::marker_sha256(&c.dir).unwrap(),
            record.manifest_sha256,
            "step {}",
            c.step
        );
        let manifest = tessera_checkpoint::read_manifest(&c.dir, Some(c.step)).unwrap();
        assert_eq!(manifest.generation, record.generation, "step {}", c.step);
        assert_eq!(
            manifest.generation,
            if c.step <= 10 { 1 } else { 2 },
            "step {}",
            c.step
        );
    }
    assert!(
        records.iter().all(|r| r.step <= 10 || r.generation == 2),
        "generation 1 recorded a commit after the pause: {records:?}"
    );
}

/// The process group of `pid` (`/proc/PID/stat`, the field after the state).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// The newest step in the run's history.
fn last_step(gang: &Gang) -> u64 {
    common::last_step(&gang.path("history.jsonl"))
}

/// Cuts `node`'s host off for `cut_for`, checking on the way that its ranks stop themselves
/// while cut off; heals it and lets the gang finish. Returns the reports and when the
/// partition was healed (ms since the Unix epoch).
fn partition_and_heal(
    gang: &mut Gang,
    node: &str,
    cut_for: Duration,
) -> (Vec<(String, bool, Json)>, u128) {
    partition_and_heal_when(gang, node, cut_for, |_| true)
}

/// [`partition_and_heal`], healing only once `ready` also holds (checked every 50 ms; at most
/// 60 s more).
fn partition_and_heal_when(
    gang: &mut Gang,
    node: &str,
    cut_for: Duration,
    ready: impl Fn(&Gang) -> bool,
) -> (Vec<(String, bool, Json)>, u128) {
    let host = Gang::host_of(node);
    gang.hosts().partition(host);
    let cut = Instant::now();
    let at_cut = last_step(gang);
    let mut stopped = None;
    while cut.elapsed() < cut_for || !ready(gang) {
        assert!(
            cut.elapsed() < cut_for + Duration::from_secs(60),
            "the gang was not ready to heal within a minute:\n{}",
            gang.log("n0")
        );
        if stopped.is_none() && gang.ranks_of(node).is_empty() {
            stopped = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = stopped.unwrap_or_else(|| {
        panic!(
            "{node}'s ranks still run after {cut_for:?} cut off:\n{}",
            gang.log(node)
        )
    });
    gang.hosts().heal(host);
    let healed = now_ms();
    let reports = gang.finish(Duration::from_secs(120));
    assert_succeeded(gang, &reports);
    let (step, at) = first_step_after(gang, healed);
    println!(
        "{node} cut off at step {at_cut} for {:.0} s: its ranks stopped {:.2} s into the \
         partition; step {step} completed {:.2} s after healing; generations: {:?}",
        cut_for.as_secs_f64(),
        stopped.as_secs_f64(),
        (at - healed) as f64 / 1000.0,
        reports
            .iter()
            .map(|(_, _, r)| r["generation"].clone())
            .collect::<Vec<_>>()
    );
    (reports, healed)
}

/// Scenario 1: a worker node (n1, ranks 2 and 3) partitioned from etcd and the other node for
/// longer than the heartbeat timeout, then healed. Its ranks stop themselves while it is cut
/// off (its agent cannot confirm the generation); the fixed-size gang waits for it and
/// restarts when it returns, ending with the weights of a run without faults.
#[test]
fn a_partitioned_worker_stops_its_ranks_and_the_fixed_gang_resumes_when_it_returns() {
    let text = manifest("heartbeatTimeoutSeconds: 3");
    let clean = undisturbed_weights(&text);
    let mut gang = Gang::across_hosts(&text, 2);
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 15, Duration::from_secs(120));
    let (reports, _) = partition_and_heal(&mut gang, "n1", Duration::from_secs(8));
    assert!(
        gang.log("n1").contains("n1 cannot confirm generation 1"),
        "n1 did not stop for want of the store:\n{}",
        gang.log("n1")
    );
    for (_, _, report) in &reports {
        assert_eq!(report["rankSummary"]["worldSize"], 4, "{report}");
    }
    assert_eq!(weights(&reports), clean);
}

/// Scenario 2: rank 0's node (n0) partitioned while a background checkpoint (step 20) is in
/// flight, held just before its commit. The commit cannot be recorded, so it never happens: no
/// torn, partial or doubled checkpoint; every committed checkpoint verifies and was written
/// by the generation current at the time; the gang resumes when n0 returns and ends with the
/// weights of a run without faults.
#[test]
fn rank_zero_partitioned_mid_checkpoint_commits_nothing_torn_and_the_run_ends_identical() {
    let text = manifest("heartbeatTimeoutSeconds: 3");
    assert!(
        !text.contains("async: false"),
        "the checkpoints are written in the background"
    );
    let clean = undisturbed_weights(&text);
    let mut gang = Gang::across_hosts(&text, 2);
    let release = gang.path("release-commit");
    let hold = format!("20:{}", release.display());
    gang.start_agent_with_env("n0", &[], &[("TESSERA_DRILL_HOLD_COMMIT", hold)]);
    gang.start_agent("n1", &[]);
    wait_for_file(&release.with_extension("held"), Duration::from_secs(120));
    // Let the commit go on once the partition is in place.
    let releaser = {
        let release = release.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(release, "go").unwrap();
        })
    };
    let (reports, _) = partition_and_heal(&mut gang, "n0", Duration::from_secs(8));
    releaser.join().unwrap();
    assert_eq!(weights(&reports), clean);

    let root = gang.path("checkpoints");
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains("partial"),
            "{name} is left in the checkpoint directory"
        );
        let Some(step) = tessera_api::checkpoint::parse_checkpoint_dir_name(&name) else {
            continue;
        };
        let report = tessera_checkpoint::verify_checkpoint(&entry.path());
        assert!(report.is_valid(), "{name} does not verify: {report:?}");
        let manifest = tessera_checkpoint::read_manifest(&entry.path(), Some(step)).unwrap();
        assert_eq!(
            manifest.generation,
            if step <= 10 { 1 } else { 2 },
            "{name} was committed by generation {}",
            manifest.generation
        );
        steps.push(step);
    }
    steps.sort();
    assert_eq!(steps, [10, 20, 30, 40], "one committed checkpoint per step");
}

/// Scenario 1, elastic: the same partition of n1 in a gang that may shrink to one node. n0
/// goes on alone (generation 2, 2 ranks) while n1's ranks stop themselves; when n1 is back it
/// asks to join, and the gang checkpoints and grows back to 4 ranks (generation 3). The sum
/// of gradients runs in another order on 2 ranks than on 4, so the weights cannot be the
/// fault-free run's bits: the run must end on 4 ranks at the last step, with a final loss
/// within 2% of the fault-free run's.
#[test]
fn a_partitioned_worker_of_an_elastic_gang_is_taken_back_at_a_checkpoint() {
    // Long enough that n0 is still training alone when n1 returns.
    let text = manifest("heartbeatTimeoutSeconds: 3, minNodes: 1")
        .replace("training: {steps: 40,", "training: {steps: 200,");
    assert!(text.contains("steps: 200"));
    let clean = {
        let mut gang = Gang::new(&text);
        gang.start_agent("n0", &[]);
        gang.start_agent("n1", &[]);
        let reports = gang.finish(Duration::from_secs(120));
        assert_succeeded(&gang, &reports);
        reports[0].2["rankSummary"]["finalLoss"].as_f64().unwrap()
    };
    let mut gang = Gang::across_hosts(&text, 2);
    gang.start_agent("n0", &[]);
    gang.start_agent("n1", &[]);
    common::wait_for_step(&gang.path("history.jsonl"), 12, Duration::from_secs(120));
    // Healed once n0 goes on alone, so n1 comes back to a gang fixed without it.
    let alone = "n0 fixed the rank table of generation 2: n0 (world size 2)";
    let (reports, _) = partition_and_heal_when(&mut gang, "n1", Duration::from_secs(5), |gang| {
        gang.log("n0").contains(alone)
    });
    let failures = all_failures(&reports);
    let grow = failures
        .iter()
        .find(|f| f["kind"] == "grow")
        .unwrap_or_else(|| {
            panic!(
                "the gang did not grow: {failures:?}\n--- n0:\n{}\n--- n1:\n{}",
                gang.log("n0"),
                gang.log("n1")
            )
        });
    println!("scenario 1, elastic: {}", grow["reason"]);
    for (node, _, report) in &reports {
        assert_eq!(report["rankSummary"]["worldSize"], 4, "{node}: {report}");
        assert_eq!(report["rankSummary"]["steps"], 200, "{node}: {report}");
        assert_eq!(report["generation"], 3, "{node}: {report}");
    }
    let loss = reports[0].2["rankSummary"]["finalLoss"].as_f64().unwrap();
    assert!(
        (loss - clean).abs() <= 0.02 * clean,
        "final loss {loss} against {clean} without faults"
    );
}
