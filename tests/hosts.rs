//! The test hosts helper (`common/hosts.rs`): two network namespaces on a bridge reach each
//! other at their own addresses, a partition (the host's bridge port down) cuts one off
//! while its processes live on, healing joins it again, and nothing is left behind.
//! The traffic: a real etcd started inside host 0 on its address, and connections to it
//! from host 1.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Whether a TCP connection from host `from` to `addr:port` opens within 2 s.
fn connects(hosts: &common::hosts::TestHosts, from: usize, addr: &str, port: u16) -> bool {
    hosts
        .command(from, "timeout")
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

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_partitioned_host_is_cut_off_and_healed_and_nothing_is_left_behind() {
    let hosts = common::hosts::TestHosts::new(2);
    let names = hosts.namespaces();
    let addr = hosts.addr(0).to_string();
    let data = tempfile::tempdir().unwrap();
    let client = format!("http://{addr}:2379");
    let peer = format!("http://{addr}:2380");
    let etcd = Killed(
        hosts
            .command(0, "etcd")
            .arg("--name=h0")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=h0={peer}"))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connects(&hosts, 1, &addr, 2379) {
        assert!(
            Instant::now() < deadline,
            "etcd in host 0 is not reachable from host 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    hosts.partition(1);
    let cut = Instant::now();
    assert!(
        !connects(&hosts, 1, &addr, 2379),
        "a partitioned host still connects"
    );
    assert!(
        cut.elapsed() >= Duration::from_secs(1),
        "the attempt timed out, not refused"
    );
    // Host 0 itself still reaches its own service: only the link is down.
    assert!(connects(&hosts, 0, &addr, 2379));
    hosts.heal(1);
    let healed = Instant::now();
    while !connects(&hosts, 1, &addr, 2379) {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "healing does not reconnect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "reconnected {:.2} s after healing",
        healed.elapsed().as_secs_f64()
    );
    drop(etcd);
    drop(hosts);
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| names.contains(n))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
