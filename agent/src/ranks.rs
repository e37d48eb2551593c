//! The trainer ranks of one generation on this node: spawning them (supervised mode, one GPU
//! each where there are GPUs), forwarding their logs with a rank prefix, reporting their exits,
//! and stopping them (SIGTERM, then SIGKILL after a grace period; stopped processes are
//! continued first so that they can die).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
    sync::mpsc,
};

/// How to start this node's ranks.
#[derive(Clone, Debug)]
pub struct RankLaunch {
    /// The `tessera-trainer` binary.
    pub trainer: PathBuf,
    /// The resolved run the ranks read (`tessera-trainer --run`); the agent writes it there
    /// when it starts.
    pub run_file: PathBuf,
    /// The agent's unix socket.
    pub socket: PathBuf,
    /// The address peers reach this node's ranks on.
    pub listen_host: IpAddr,
    pub heartbeat_interval: Duration,
    /// GPU index per local rank (`CUDA_VISIBLE_DEVICES`); empty for CPU ranks.
    pub gpus: Vec<u32>,
    /// Local rank r serves its Prometheus metrics on `metrics_addrs[r]` (`tessera-trainer
    /// --metrics-addr`); ranks past the end of the list serve none.
    pub metrics_addrs: Vec<SocketAddr>,
    /// Rank 0 appends its per-step history here (`tessera-trainer --history`).
    pub history: Option<PathBuf>,
    /// Write each rank's log to `{dir}/gen-{g}-rank-{r}.log` instead of this process's stderr.
    pub log_dir: Option<PathBuf>,
}

/// How a rank ended.
#[derive(Clone, Debug)]
pub struct RankExit {
    pub local_rank: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// What it printed on stdout (the trainer's JSON summary).
    pub stdout: String,
    /// The trainer's own account of why it failed: its last `error: …` line on stderr.
    pub error: Option<String>,
}

impl RankExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for RankExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => {
                write!(f, "local rank {} exited with code {code}", self.local_rank)?;
                match (&self.error, code) {
                    (Some(error), 1..) => write!(f, " ({error})"),
                    _ => Ok(()),
                }
            }
            (None, Some(signal)) => {
                let name = Signal::try_from(signal).map_or("?", |s| s.as_str());
                write!(
                    f,
                    "local rank {} was killed by signal {signal} ({name})",
                    self.local_rank
                )
            }
            (None, None) => write!(f, "local rank {} ended without a status", self.local_rank),
        }
    }
}

/// The running ranks of one generation.
pub struct Ranks {
    alive: BTreeMap<u32, Pid>,
    exits: mpsc::UnboundedReceiver<RankExit>,
}

impl Ranks {
    /// Starts `slots` ranks of `generation`.
    pub fn spawn(launch: &RankLaunch, generation: u64, slots: u32) -> std::io::Result<Ranks> {
        let (tx, exits) = mpsc::unbounded_channel();
        let mut alive = BTreeMap::new();
        for local in 0..slots {
            let mut cmd = Command::new(&launch.trainer);
            cmd.arg("--run")
                .arg(&launch.run_file)
                .arg("--agent-socket")
                .arg(&launch.socket)
                .args(["--local-rank", &local.to_string()])
                .args(["--generation", &generation.to_string()])
                .args(["--listen-host", &launch.listen_host.to_string()])
                .args([
                    "--heartbeat-interval",
                    &launch.heartbeat_interval.as_secs_f64().to_string(),
                ]);
            if let Some(history) = &launch.history {
                cmd.arg("--history").arg(history);
            }
            if let Some(addr) = launch.metrics_addrs.get(local as usize) {
                cmd.args(["--metrics-addr", &addr.to_string()]);
            }
            if let Some(gpu) = launch.gpus.get(local as usize) {
                cmd.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start the trainer {}: {e}; pass --trainer",
                        launch.trainer.display()
                    ),
                )
            })?;
            let pid = child
                .id()
                .map(|id| Pid::from_raw(id as i32))
                .ok_or_else(|| std::io::Error::other("the trainer exited at once"))?;
            alive.insert(local, pid);

            let stderr = child.stderr.take();
            let log_path = launch
                .log_dir
                .as_ref()
                .map(|d| d.join(format!("gen-{generation}-rank-{local}.log")));
            // Copies the rank's stderr to its log and keeps its last `error: …` line.
            let stderr_copy = tokio::spawn(async move {
                let mut error = None;
                let Some(stderr) = stderr else { return error };
                let mut lines = BufReader::new(stderr).lines();
                let mut file = match &log_path {
                    Some(path) => std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .ok(),
                    None => None,
                };
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(text) = line.strip_prefix("error: ") {
                        error = Some(text.to_string());
                    }
                    match file.as_mut() {
                        Some(f) => {
                            use std::io::Write;
                            let _ = writeln!(f, "{line}");
                        }
                        None => eprintln!("[g{generation} r{local}] {line}"),
                    }
                }
                error
            });
            let mut stdout = child.stdout.take();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut out = String::new();
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_string(&mut out).await;
                }
                let status = child.wait().await;
                // The pipe closes when the rank exits: its copy ends with its last words.
                let error = stderr_copy.await.ok().flatten();
                use std::os::unix::process::ExitStatusExt;
                let (code, signal) = match status {
                    Ok(s) => (s.code(), s.signal()),
                    Err(_) => (None, None),
                };
                let _ = tx.send(RankExit {
                    local_rank: local,
                    code,
                    signal,
                    stdout: out,
                    error,
                });
            });
        }
        Ok(Ranks { alive, exits })
    }

    /// Ranks still running.
    pub fn running(&self) -> usize {
        self.alive.len()
    }

    /// The next rank to end (`None` once all have).
    pub async fn next_exit(&mut self) -> Option<RankExit> {
        if self.alive.is_empty() {
            return None;
        }
        let exit = self.exits.recv().await?;
        self.alive.remove(&exit.local_rank);
        Some(exit)
    }

    /// Sends `signal` to every live rank.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.alive.values() {
            let _ = kill(*pid, signal);
        }
    }

    /// Stops every live rank: SIGTERM (after SIGCONT, in case one is stopped), then SIGKILL
    /// after `grace`. Returns the exits collected on the way.
    pub async fn stop(&mut self, grace: Duration) -> Vec<RankExit> {
        let mut exits = Vec::new();
        if self.alive.is_empty() {
            return exits;
        }
        self.signal_all(Signal::SIGCONT);
        self.signal_all(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.alive.is_empty() {
            match tokio::time::timeout_at(deadline, self.next_exit()).await {
                Ok(Some(exit)) => exits.push(exit),
                Ok(None) => break,
                Err(_) => {
                    self.signal_all(Signal::SIGKILL);
                    while let Some(exit) = self.next_exit().await {
                        exits.push(exit);
                    }
                }
            }
        }
        exits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_rank_is_described_with_its_own_error() {
        let exit = |code, error: Option<&str>| RankExit {
            local_rank: 1,
            code: Some(code),
            signal: None,
            stdout: String::new(),
            error: error.map(str::to_string),
        };
        assert_eq!(
            exit(1, Some("spec.data: no shards")).to_string(),
            "local rank 1 exited with code 1 (spec.data: no shards)"
        );
        assert_eq!(exit(1, None).to_string(), "local rank 1 exited with code 1");
        // A clean exit says nothing more, whatever was printed before.
        assert_eq!(
            exit(0, Some("old")).to_string(),
            "local rank 1 exited with code 0"
        );
    }

    #[tokio::test]
    async fn the_last_error_line_of_a_rank_reaches_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fails.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'starting' >&2\necho 'error: spec.model.from: no config.json' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let launch = RankLaunch {
            trainer: script,
            run_file: dir.path().join("run.json"),
            socket: dir.path().join("agent.sock"),
            listen_host: "127.0.0.1".parse().unwrap(),
            heartbeat_interval: Duration::from_millis(500),
            gpus: Vec::new(),
            metrics_addrs: Vec::new(),
            log_dir: Some(dir.path().to_path_buf()),
            history: None,
        };
        let mut ranks = Ranks::spawn(&launch, 1, 1).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(20), ranks.next_exit())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            exit.to_string(),
            "local rank 0 exited with code 1 (spec.model.from: no config.json)"
        );
        let log = std::fs::read_to_string(dir.path().join("gen-1-rank-0.log")).unwrap();
        assert!(log.contains("starting"), "{log}");
    }
}
