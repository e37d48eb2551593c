//! The agent's Prometheus metrics (names from `tessera_api::metrics`): per-GPU utilisation,
//! memory, temperature and health; restarts by reason; rank states; heartbeat age; the
//! generation; time to recover; the newest checkpoint's step. Served at `/metrics`, alone or
//! merged with other agents of the same process (local mode runs one agent per node).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tessera_api::{metrics as names, records::FailureKind};

use crate::{board::RankBeat, gpu::GpuStatus};

/// The agent's metrics, labelled with the run and node.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    ranks: IntGaugeVec,
    restarts: IntCounterVec,
    generation: IntGaugeVec,
    heartbeat_age: GaugeVec,
    gpu_util: GaugeVec,
    gpu_mem: GaugeVec,
    gpu_temp: GaugeVec,
    gpu_healthy: IntGaugeVec,
    recovery: HistogramVec,
    checkpoint_step: IntGaugeVec,
    store_reachable: IntGaugeVec,
    store_outages: IntCounterVec,
    labels: [String; 3],
}

impl AgentMetrics {
    pub fn new(namespace: &str, run: &str, node: &str) -> prometheus::Result<AgentMetrics> {
        let registry = Registry::new();
        let base = ["namespace", "run", "node"];
        let with = |extra: &'static str| {
            let mut l = base.to_vec();
            l.push(extra);
            l
        };
        let ranks = IntGaugeVec::new(
            Opts::new(names::AGENT_RANKS, "This node's ranks by state"),
            &with("state"),
        )?;
        let restarts = IntCounterVec::new(
            Opts::new(
                names::AGENT_RESTARTS_TOTAL,
                "Gang restarts this agent started, by reason",
            ),
            &with("reason"),
        )?;
        let generation = IntGaugeVec::new(
            Opts::new(
                names::AGENT_GENERATION,
                "The gang generation this agent runs",
            ),
            &base,
        )?;
        let heartbeat_age = GaugeVec::new(
            Opts::new(
                names::AGENT_HEARTBEAT_AGE_SECONDS,
                "Seconds since each rank's last heartbeat",
            ),
            &with("rank"),
        )?;
        let gpu_util = GaugeVec::new(
            Opts::new(names::AGENT_GPU_UTILIZATION, "GPU utilisation (0..1)"),
            &with("gpu"),
        )?;
        let gpu_mem = GaugeVec::new(
            Opts::new(names::AGENT_GPU_MEMORY_USED_BYTES, "GPU memory in use"),
            &with("gpu"),
        )?;
        let gpu_temp = GaugeVec::new(
            Opts::new(names::AGENT_GPU_TEMPERATURE_CELSIUS, "GPU temperature"),
            &with("gpu"),
        )?;
        let gpu_healthy = IntGaugeVec::new(
            Opts::new(names::AGENT_GPU_HEALTHY, "1 when the GPU is healthy"),
            &with("gpu"),
        )?;
        let recovery = HistogramVec::new(
            HistogramOpts::new(
                names::AGENT_RECOVERY_SECONDS,
                "Seconds from a detected failure to the first step of the resumed generation",
            )
            .buckets(vec![0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &base,
        )?;
        let checkpoint_step = IntGaugeVec::new(
            Opts::new(
                names::AGENT_CHECKPOINT_STEP,
                "The step of the newest committed checkpoint (0 before the first)",
            ),
            &base,
        )?;
        let store_reachable = IntGaugeVec::new(
            Opts::new(
                names::AGENT_STORE_REACHABLE,
                "1 while the coordination store answers this agent, 0 while no endpoint does",
            ),
            &base,
        )?;
        let store_outages = IntCounterVec::new(
            Opts::new(
                names::AGENT_STORE_OUTAGES_TOTAL,
                "Times this agent lost the coordination store (once per outage)",
            ),
            &base,
        )?;
        for c in [
            Box::new(ranks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(store_reachable.clone()),
            Box::new(store_outages.clone()),
            Box::new(restarts.clone()),
            Box::new(generation.clone()),
            Box::new(heartbeat_age.clone()),
            Box::new(gpu_util.clone()),
            Box::new(gpu_mem.clone()),
            Box::new(gpu_temp.clone()),
            Box::new(gpu_healthy.clone()),
            Box::new(recovery.clone()),
            Box::new(checkpoint_step.clone()),
        ] {
            registry.register(c)?;
        }
        let labels = [namespace.to_string(), run.to_string(), node.to_string()];
        // Why a generation ended is the `reason` label: every kind an agent detects starts at 0.
        for reason in FailureKind::DETECTED {
            restarts.with_label_values(&[
                labels[0].as_str(),
                &labels[1],
                &labels[2],
                reason.as_str(),
            ]);
        }
        let [a, b, c] = &labels;
        store_reachable
            .with_label_values(&[a.as_str(), b, c])
            .set(1);
        store_outages.with_label_values(&[a.as_str(), b, c]);
        Ok(AgentMetrics {
            registry,
            store_reachable,
            store_outages,
            ranks,
            restarts,
            generation,
            heartbeat_age,
            gpu_util,
            gpu_mem,
            gpu_temp,
            gpu_healthy,
            recovery,
            checkpoint_step,
            labels,
        })
    }

    fn l<'a>(&'a self, extra: &'a str) -> [&'a str; 4] {
        [&self.labels[0], &self.labels[1], &self.labels[2], extra]
    }

    pub fn generation(&self, g: u64) {
        let [a, b, c, _] = self.l("");
        self.generation.with_label_values(&[a, b, c]).set(g as i64);
    }

    pub fn restart(&self, reason: &FailureKind) {
        self.restarts
            .with_label_values(&self.l(reason.as_str()))
            .inc();
    }

    /// The store answered again (`true`) or stopped answering (`false`; counts an outage).
    pub fn store_reachable(&self, reachable: bool) {
        let [a, b, c, _] = self.l("");
        self.store_reachable
            .with_label_values(&[a, b, c])
            .set(i64::from(reachable));
        if !reachable {
            self.store_outages.with_label_values(&[a, b, c]).inc();
        }
    }

    pub fn recovered(&self, seconds: f64) {
        let [a, b, c, _] = self.l("");
        self.recovery.with_label_values(&[a, b, c]).observe(seconds);
    }

    /// The newest committed checkpoint: the one a generation resumes from, then each commit.
    pub fn checkpoint_step(&self, step: u64) {
        let [a, b, c, _] = self.l("");
        self.checkpoint_step
            .with_label_values(&[a, b, c])
            .set(i64::try_from(step).unwrap_or(i64::MAX));
    }

    /// Rank states and heartbeat ages from the board.
    pub fn ranks(&self, ranks: &std::collections::BTreeMap<u32, RankBeat>) {
        self.ranks.reset();
        self.heartbeat_age.reset();
        let now = std::time::Instant::now();
        for (rank, beat) in ranks {
            let state = format!("{:?}", beat.phase).to_lowercase();
            self.ranks.with_label_values(&self.l(&state)).inc();
            if let Some(last) = beat.last_beat {
                let r = rank.to_string();
                self.heartbeat_age
                    .with_label_values(&self.l(&r))
                    .set((now - last).as_secs_f64());
            }
        }
    }

    pub fn gpus(&self, gpus: &[GpuStatus]) {
        for g in gpus {
            let i = g.index.to_string();
            self.gpu_util
                .with_label_values(&self.l(&i))
                .set(g.utilization);
            self.gpu_mem
                .with_label_values(&self.l(&i))
                .set(g.memory_used_bytes as f64);
            self.gpu_temp
                .with_label_values(&self.l(&i))
                .set(f64::from(g.temperature_celsius));
            self.gpu_healthy
                .with_label_values(&self.l(&i))
                .set(i64::from(g.healthy));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        render_all(std::slice::from_ref(self))
    }

    /// Serves `/metrics` on `addr` until the process ends; returns the bound address.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        serve_all(vec![self], addr).await
    }
}

/// The text exposition of several agents' metrics, families of one name merged (their series
/// differ in the `node` label).
pub fn render_all(agents: &[AgentMetrics]) -> String {
    let mut families: BTreeMap<String, prometheus::proto::MetricFamily> = BTreeMap::new();
    for agent in agents {
        for mut family in agent.registry.gather() {
            match families.get_mut(family.name()) {
                Some(merged) => merged.mut_metric().extend(family.take_metric()),
                None => {
                    families.insert(family.name().to_string(), family);
                }
            }
        }
    }
    let families: Vec<_> = families.into_values().collect();
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Serves the merged `/metrics` of `agents` on `addr` until the process ends; returns the
/// bound address.
pub async fn serve_all(agents: Vec<AgentMetrics>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let agents = Arc::new(agents);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let agents = agents.clone();
            async move { render_all(&agents) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the agent's metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_of_one_process_merge_into_one_family_per_metric() {
        let a = AgentMetrics::new("local", "run", "local-0").unwrap();
        let b = AgentMetrics::new("local", "run", "local-1").unwrap();
        a.generation(2);
        b.generation(2);
        a.checkpoint_step(40);
        let text = render_all(&[a, b]);
        assert_eq!(
            text.matches("# TYPE tessera_agent_generation gauge")
                .count(),
            1,
            "{text}"
        );
        for node in ["local-0", "local-1"] {
            assert!(
                text.contains(&format!(
                    "tessera_agent_generation{{namespace=\"local\",node=\"{node}\",run=\"run\"}} 2"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains(
                "tessera_agent_checkpoint_step{namespace=\"local\",node=\"local-0\",run=\"run\"} 40"
            ),
            "{text}"
        );
    }
}
