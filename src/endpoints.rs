//! The Prometheus endpoints of a local run (`tessera run --metrics-addr ADDR`): the in-process
//! agents' metrics, merged, on ADDR, and each trainer rank's own on a free loopback port, the
//! same port in every generation. `OUT/metrics.json` (while the run is live) says where they
//! are, so that a Prometheus (or a test) can scrape them:
//!
//! ```text
//! {"agents": "127.0.0.1:9401",
//!  "ranks": [{"node": "local-0", "localRank": 0, "addr": "127.0.0.1:40123"}, ...]}
//! ```

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
};

use anyhow::{Context, Result};

use crate::status::{read_record, write_record};
use serde::{Deserialize, Serialize};

/// The file in the run directory naming the endpoints.
pub const METRICS_FILE: &str = "metrics.json";

/// Where a local run serves metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Every local agent's metrics (`tessera_agent_*`, one `node` label per agent).
    pub agents: SocketAddr,
    /// Each trainer rank's metrics (`tessera_trainer_*`).
    pub ranks: Vec<RankEndpoint>,
}

/// One trainer rank's metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RankEndpoint {
    pub node: String,
    pub local_rank: u32,
    pub addr: SocketAddr,
}

/// `slots` free loopback addresses for each of `nodes`, all distinct: every port is held until
/// all are chosen. A port freed here could in principle be taken by another process before
/// its rank binds it; the rank then fails to start, naming the address, and the run restarts.
pub fn free_rank_addrs(nodes: u32, slots: u32) -> Result<Vec<Vec<SocketAddr>>> {
    let mut held = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..nodes {
        let mut node = Vec::new();
        for _ in 0..slots {
            let listener = TcpListener::bind("127.0.0.1:0")
                .context("cannot find a free loopback port for a rank's metrics")?;
            node.push(listener.local_addr()?);
            held.push(listener);
        }
        addrs.push(node);
    }
    Ok(addrs)
}

impl MetricsRecord {
    /// Reads `dir/metrics.json`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<MetricsRecord>> {
        read_record(dir, METRICS_FILE, "a metrics record")
    }

    /// Writes `dir/metrics.json` whole (a reader never sees half of it).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_record(dir, METRICS_FILE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_ports_are_distinct_loopback_ports_and_the_record_round_trips() {
        let addrs = free_rank_addrs(2, 3).unwrap();
        let flat: Vec<SocketAddr> = addrs.iter().flatten().copied().collect();
        assert_eq!(flat.len(), 6);
        let distinct: std::collections::BTreeSet<u16> = flat.iter().map(|a| a.port()).collect();
        assert_eq!(distinct.len(), 6, "{flat:?}");
        assert!(flat.iter().all(|a| a.ip().is_loopback()));

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MetricsRecord::read(dir.path()).unwrap(), None);
        let record = MetricsRecord {
            agents: "127.0.0.1:9401".parse().unwrap(),
            ranks: vec![RankEndpoint {
                node: "local-0".into(),
                local_rank: 0,
                addr: flat[0],
            }],
        };
        record.write(dir.path()).unwrap();
        assert_eq!(MetricsRecord::read(dir.path()).unwrap(), Some(record));
        let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
        assert!(text.contains("\"localRank\": 0"), "{text}");
    }
}
