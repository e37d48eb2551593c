//! The test hosts helper (`common/hosts.rs`): two network namespaces on a bridge reach each
//! other at their own addresses, a partition (the host's bridge port down) cuts one off
//! while its processes live on, healing joins it again, and nothing is left behind.
//! The traffic: a real etcd started inside host 0 on its address, and connections to it
//! from host 1.

use std::time::{Duration, Instant};

mod common;

#[test]
fn a_partitioned_host_is_cut_off_and_healed_and_nothing_is_left_behind() {
    let hosts = common::hosts::TestHosts::new(2);
    let names = hosts.namespaces();
    let addr = hosts.addr(0);
    let data = tempfile::tempdir().unwrap();
    let etcd = hosts.start_etcd(0, data.path(), 1);
    hosts.partition(1);
    let cut = Instant::now();
    assert!(
        !hosts.connects(1, addr, 2379),
        "a partitioned host still connects"
    );
    assert!(
        cut.elapsed() >= Duration::from_secs(1),
        "the attempt timed out, not refused"
    );
    // Host 0 itself still reaches its own service: only the link is down.
    assert!(hosts.connects(0, addr, 2379));
    hosts.heal(1);
    let healed = Instant::now();
    while !hosts.connects(1, addr, 2379) {
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
