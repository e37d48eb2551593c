//! Test hosts on one machine: each a Linux network namespace with its own address, joined to
//! the others by a veth pair on a bridge that lives in a namespace of its own (the machine's
//! own network is never touched). A partition takes a host's bridge port down: the host and
//! its processes live on, cut off from every other host, until it is healed.
//!
//! ```text
//!   <p>-h0 [eth0 10.77.0.1] ─veth─ [p0]┐
//!   <p>-h1 [eth0 10.77.0.2] ─veth─ [p1]┼ br0   (namespace <p>-sw)
//!   <p>-h2 [eth0 10.77.0.3] ─veth─ [p2]┘
//! ```
//!
//! [`TestHosts::start_etcd_cluster`] runs an etcd member in each of some hosts, so the store
//! is a cluster spread over hosts like a real one.
//!
//! Needs root, or a user + network + mount namespace of one's own (`unshare -rnm`), and
//! iproute2's `ip` (scripts/setup.sh installs it). Without them the helper fails saying so:
//! never a silent skip. Every namespace it made is deleted on drop, which also ends the
//! veth pairs and the bridge; processes started in a host are the test's to stop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Hosts made by one test.
pub struct TestHosts {
    prefix: String,
    count: usize,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args…`, panicking with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip {}`: {e} (install iproute2)", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This process's effective user id (`/proc/self/status`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl TestHosts {
    /// `n` hosts, 10.77.0.1 …, on one bridge.
    pub fn new(n: usize) -> TestHosts {
        assert_eq!(
            effective_uid(),
            Some(0),
            "test hosts need root (ip netns): run the tests as root, or inside `unshare -rnm`"
        );
        assert!(n < 250, "at most 249 hosts");
        let prefix = format!(
            "ts{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let hosts = TestHosts { prefix, count: 0 };
        let sw = hosts.switch();
        ip(&["netns", "add", &sw]);
        let mut hosts = hosts;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..n {
            let host = hosts.name(i);
            ip(&["netns", "add", &host]);
            hosts.count = i + 1;
            let port = format!("p{i}");
            ip(&[
                "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ]);
            let addr = format!("{}/24", hosts.addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &host, "link", "set", "eth0", "up"]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &port, "up"]);
        }
        hosts
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// Host `i`'s namespace name.
    pub fn name(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, i as u8 + 1)
    }

    /// `program` to run inside host `i` (`ip netns exec`); add its arguments.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(i)]).arg(program);
        cmd
    }

    /// Whether a TCP connection from host `from` to `addr:port` opens within 2 s.
    pub fn connects(&self, from: usize, addr: Ipv4Addr, port: u16) -> bool {
        self.command(from, "timeout")
            .args([
                "2",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{addr}/{port}"),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// A one-member etcd (Debian's etcd-server) inside host `i`, on its address (client port
    /// 2379), its data under `data`; returns once host `from` reaches it.
    pub fn start_etcd(&self, i: usize, data: &Path, from: usize) -> EtcdInHost {
        self.start_etcd_cluster(&[i], data, from).remove(0)
    }

    /// An etcd cluster of one member in each host of `members` (client port 2379 on each
    /// host's address), their data under `data`; returns once host `from` reaches every
    /// member's client port (the cluster elects its leader on its own).
    pub fn start_etcd_cluster(
        &self,
        members: &[usize],
        data: &Path,
        from: usize,
    ) -> Vec<EtcdInHost> {
        let peer = |i: usize| format!("http://{}:2380", self.addr(i));
        let cluster: Vec<String> = members
            .iter()
            .map(|&i| format!("h{i}={}", peer(i)))
            .collect();
        let started: Vec<EtcdInHost> = members
            .iter()
            .map(|&i| {
                let client = format!("http://{}:2379", self.addr(i));
                let child = self
                    .command(i, "etcd")
                    .arg(format!("--name=h{i}"))
                    .arg(format!(
                        "--data-dir={}",
                        data.join(format!("etcd-h{i}")).display()
                    ))
                    .arg(format!("--listen-client-urls={client}"))
                    .arg(format!("--advertise-client-urls={client}"))
                    .arg(format!("--listen-peer-urls={}", peer(i)))
                    .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
                    .arg(format!("--initial-cluster={}", cluster.join(",")))
                    .arg("--initial-cluster-state=new")
                    .arg("--log-level=error")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("etcd (Debian's etcd-server; bash scripts/setup.sh installs it)");
                EtcdInHost(child)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for &i in members {
            while !self.connects(from, self.addr(i), 2379) {
                assert!(
                    Instant::now() < deadline,
                    "etcd in host {i} is not reachable from host {from}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        started
    }

    /// `etcd://` with every member of a cluster in `members` (client port 2379).
    pub fn etcd_url(&self, members: &[usize]) -> String {
        let endpoints: Vec<String> = members
            .iter()
            .map(|&i| format!("{}:2379", self.addr(i)))
            .collect();
        format!("etcd://{}", endpoints.join(","))
    }

    /// Cuts host `i` off from every other host (its bridge port down).
    pub fn partition(&self, i: usize) {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("p{i}"),
            "down",
        ]);
    }

    /// Joins host `i` to the others again.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch(), "link", "set", &format!("p{i}"), "up"]);
    }

    /// The namespaces this helper made and has not deleted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.count).map(|i| self.name(i)).collect();
        names.push(self.switch());
        names
    }
}

/// An etcd started inside a test host; killed on drop.
pub struct EtcdInHost(Child);

impl Drop for EtcdInHost {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for name in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}
