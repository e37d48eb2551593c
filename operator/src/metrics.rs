//! The operator's Prometheus metrics (names from `tessera_api::metrics`): reconciles and
//! errors by reason, reconcile duration, runs by phase, admission wait, gang restarts, and
//! whether this replica leads.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tessera_api::TrainingRun;
use tessera_api::metrics as names;
use tessera_api::status::Phase;

/// Every metric the operator exports, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    runs: IntGaugeVec,
    admission_wait: Histogram,
    gang_restarts: IntCounterVec,
    leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                names::OPERATOR_RECONCILE_TOTAL,
                "Reconciles of TrainingRuns, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                names::OPERATOR_RECONCILE_ERRORS_TOTAL,
                "Failed reconciles, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                names::OPERATOR_RECONCILE_SECONDS,
                "Time to observe, plan and execute one reconcile.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let runs = IntGaugeVec::new(
            Opts::new(names::OPERATOR_RUNS, "TrainingRuns by phase."),
            &["phase"],
        )
        .expect("valid metric");
        let admission_wait = Histogram::with_opts(
            HistogramOpts::new(
                names::OPERATOR_ADMISSION_WAIT_SECONDS,
                "Seconds from a run's creation to its admission.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets")),
        )
        .expect("valid metric");
        let gang_restarts = IntCounterVec::new(
            Opts::new(
                names::OPERATOR_GANG_RESTARTS_TOTAL,
                "Gang restarts the operator performed, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(names::OPERATOR_LEADER, "1 while this replica leads.")
            .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(runs.clone()),
            Box::new(admission_wait.clone()),
            Box::new(gang_restarts.clone()),
            Box::new(leader.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            runs,
            admission_wait,
            gang_restarts,
            leader,
        }
    }

    pub fn reconciled(&self, elapsed: Duration) {
        self.reconciles.with_label_values(&["ok"]).inc();
        self.duration
            .with_label_values(&["ok"])
            .observe(elapsed.as_secs_f64());
    }

    pub fn failed(&self, reason: &str, elapsed: Duration) {
        self.reconciles.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[reason]).inc();
        self.duration
            .with_label_values(&["error"])
            .observe(elapsed.as_secs_f64());
    }

    pub fn admitted_after(&self, wait: Duration) {
        self.admission_wait.observe(wait.as_secs_f64());
    }

    pub fn gang_restarted(&self, reason: &str) {
        self.gang_restarts.with_label_values(&[reason]).inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Recounts the runs by phase (called before each scrape).
    pub fn count_runs<'a>(&self, runs: impl IntoIterator<Item = &'a TrainingRun>) {
        let mut counts = [0i64; Phase::ALL.len()];
        for run in runs {
            let phase = run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            if let Some(i) = Phase::ALL.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.runs.with_label_values(&[phase.name()]).set(count);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn every_operator_metric_is_exported_under_its_api_name() {
        let metrics = Metrics::new();
        metrics.reconciled(Duration::from_millis(3));
        metrics.failed("conflict", Duration::from_millis(1));
        metrics.admitted_after(Duration::from_secs(2));
        metrics.gang_restarted("PodFailed");
        metrics.set_leader(true);
        let mut running = fixtures::run("a").build();
        running.status = Some(tessera_api::TrainingRunStatus {
            phase: Some(Phase::Running),
            ..Default::default()
        });
        metrics.count_runs([&running, &fixtures::run("b").build()]);
        let text = metrics.render();
        for name in names::ALL
            .iter()
            .filter(|n| n.starts_with("tessera_operator_"))
        {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(
            text.contains("tessera_operator_runs{phase=\"Running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tessera_operator_runs{phase=\"Pending\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tessera_operator_reconcile_errors_total{reason=\"conflict\"} 1"),
            "{text}"
        );
    }
}
