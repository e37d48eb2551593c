//! A real etcd for tests and benchmarks (this crate's and the agent's and CLI's end-to-end
//! tests): Debian's etcd-server started on free loopback ports with a
//! temporary data directory, waited for until healthy, restartable on the same ports and data,
//! and killed and reaped on drop; and [`EtcdCluster`], three (or more) such members forming
//! one cluster, for the loss of a leader or of quorum.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub struct EtcdServer {
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// The member's name and the whole cluster (`name=peer-url,...`).
    name: String,
    initial_cluster: String,
}

/// The etcd binary, or a failure saying how to install it (never a skip).
fn etcd_binary() -> PathBuf {
    let debian = Path::new("/usr/bin/etcd");
    if debian.exists() {
        return debian.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "etcd is not installed (no /usr/bin/etcd, no etcd on PATH), and the store's etcd tests need a real one: \
         install it with `apt-get install etcd-server` (scripts/setup.sh does this)"
    );
}

/// `n` distinct ports nothing listens on right now (held together while chosen, so they
/// differ).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound port").port())
        .collect()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers healthy.
    pub async fn start() -> EtcdServer {
        let mut server = EtcdServer::member("test", free_ports(2));
        server.initial_cluster = format!("test={}", server.peer_url());
        server.spawn();
        server.wait_healthy().await;
        server
    }

    /// A member named `name` on `ports` (client, peer), not started.
    fn member(name: &str, ports: Vec<u16>) -> EtcdServer {
        EtcdServer {
            child: None,
            binary: etcd_binary(),
            dir: tempfile::tempdir().expect("a temporary directory for etcd"),
            client_port: ports[0],
            peer_port: ports[1],
            name: name.to_string(),
            initial_cluster: String::new(),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// `host:port` of the client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = self.peer_url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening etcd's log file");
        let log_err = log.try_clone().expect("cloning etcd's log file");
        let child = Command::new(&self.binary)
            .arg(format!("--name={}", self.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-token=tessera-test")
            // Short raft timings: quick elections after a restart, and a minimum lease TTL of
            // 1 s (etcd's floor is 1.5 election timeouts, rounded up to a second).
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=250")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Polls etcd's /health until it says true (10 s at most).
    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.healthy().await {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("etcd exited with {status}; its log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd did not become healthy within 10 s; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> bool {
        let check = async {
            let mut stream =
                tokio::net::TcpStream::connect(("127.0.0.1", self.client_port)).await?;
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer.contains("\"health\":\"true\""))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(true))
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills etcd (SIGKILL, no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory, and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_healthy().await;
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of several members on loopback (each an [`EtcdServer`] with its own ports
/// and data directory), every member killed and reaped on drop.
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members together (a member alone has no quorum) and waits until each
    /// answers healthy.
    pub async fn start(n: usize) -> EtcdCluster {
        let ports = free_ports(2 * n);
        let mut members: Vec<EtcdServer> = (0..n)
            .map(|i| EtcdServer::member(&format!("m{i}"), ports[2 * i..2 * i + 2].to_vec()))
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for member in &mut members {
            member.initial_cluster = cluster.clone();
            member.spawn();
        }
        for member in &mut members {
            member.wait_healthy().await;
        }
        EtcdCluster { members }
    }

    /// Every member's `host:port`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// The store URL naming every member: `etcd://a,b,c`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The member that leads now, asked of the live members (5 s at most, through an
    /// election).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if member.child.is_none() {
                    continue;
                }
                let status = async {
                    let mut client =
                        etcd_client::Client::connect([member.endpoint()], None).await?;
                    client.status().await
                };
                if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), status).await
                    && status.header().map(|h| h.member_id()) == Some(status.leader())
                {
                    return i;
                }
            }
            if Instant::now() > deadline {
                panic!("no etcd member leads within 5 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its ports and data directory. It is not waited for: a
    /// member rejoining a cluster without quorum is not healthy until enough others are back.
    pub fn start_member(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
    }

    /// Waits until member `i` answers healthy (10 s at most).
    pub async fn wait_healthy(&mut self, i: usize) {
        self.members[i].wait_healthy().await;
    }
}
