//! Whether this agent can reach the coordination store, said once per outage: an error line
//! when it is lost, an info line with the outage's length when it answers again, and the
//! `tessera_agent_store_reachable` / `tessera_agent_store_outages_total` metrics. The retry
//! loops of the agent ([`StoreHealth::retry`]) back off while the store is away; none of them
//! advances a generation by itself: every generation change is the store's compare-and-swap.

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;

/// The first retry delay, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// How long one try may take before it is made again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// This agent's view of the store's reachability.
pub struct StoreHealth {
    target: String,
    metrics: AgentMetrics,
    /// Since when the store has not answered; `None` while it answers.
    lost_since: Mutex<Option<Instant>>,
}

impl StoreHealth {
    pub fn new(target: String, metrics: AgentMetrics) -> StoreHealth {
        StoreHealth {
            target,
            metrics,
            lost_since: Mutex::new(None),
        }
    }

    /// The store answered.
    pub fn answered(&self) {
        let Ok(mut lost) = self.lost_since.lock() else {
            return;
        };
        if let Some(since) = lost.take() {
            tracing::info!(
                store = %self.target,
                seconds = format_args!("{:.1}", since.elapsed().as_secs_f64()),
                "the coordination store answers again"
            );
            self.metrics.store_reachable(true);
        }
    }

    /// The store did not answer while doing `what`; said once per outage.
    pub fn unreachable(&self, what: &str, error: &dyn std::fmt::Display) {
        let Ok(mut lost) = self.lost_since.lock() else {
            return;
        };
        if lost.is_some() {
            tracing::debug!(store = %self.target, "still unreachable ({what}): {error}");
            return;
        }
        *lost = Some(Instant::now());
        tracing::error!(
            store = %self.target,
            "cannot reach the coordination store ({what}: {error}); retrying with backoff. \
             This node's ranks stop once their generation cannot be confirmed (one lease TTL), \
             and no generation changes until the store answers"
        );
        self.metrics.store_reachable(false);
    }

    /// Runs `attempt` until it succeeds or fails for a reason other than the store being
    /// away (`transient` says which), backing off between tries; `None` when `shutdown` is
    /// cancelled first. A try may be given up unanswered and made again: `attempt` must be
    /// safe to repeat (reads, and compare-and-swap transactions).
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        transient: impl Fn(&E) -> bool,
        mut attempt: F,
    ) -> Option<Result<T, E>>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = FIRST_RETRY;
        loop {
            // A try that hangs (sent into a partition) is given up after ATTEMPT_TIMEOUT and
            // made again, so the first try after the store returns is not minutes away.
            let why = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                Ok(Err(e)) if transient(&e) => e.to_string(),
                Ok(done) => {
                    if done.is_ok() {
                        self.answered();
                    }
                    return Some(done);
                }
            };
            self.unreachable(what, &why);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outage_is_counted_once_and_retried_until_the_store_answers() {
        let metrics = AgentMetrics::new("ns", "run", "n0").unwrap();
        let health = StoreHealth::new("etcd://test".into(), metrics.clone());
        let shutdown = CancellationToken::new();
        let mut tries = 0;
        let got = health
            .retry(
                "reading the generation",
                &shutdown,
                |e: &String| e.starts_with("unavailable"),
                || {
                    tries += 1;
                    let answer = if tries < 3 {
                        Err(format!("unavailable: try {tries}"))
                    } else {
                        Ok(7)
                    };
                    async move { answer }
                },
            )
            .await;
        assert_eq!(got, Some(Ok(7)));
        assert_eq!(tries, 3);
        let text = metrics.render();
        assert!(
            text.contains(
                "tessera_agent_store_outages_total{namespace=\"ns\",node=\"n0\",run=\"run\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tessera_agent_store_reachable{namespace=\"ns\",node=\"n0\",run=\"run\"} 1"
            ),
            "{text}"
        );

        // A lasting error is not retried; an outage shows as 0 until the store answers.
        let refused = health
            .retry(
                "bumping",
                &shutdown,
                |_: &String| false,
                || async { Err::<u32, _>("refused".to_string()) },
            )
            .await;
        assert_eq!(refused, Some(Err("refused".to_string())));
        health.unreachable("refreshing the lease", &"timeout");
        health.unreachable("refreshing the lease", &"timeout");
        let text = metrics.render();
        assert!(
            text.contains(
                "tessera_agent_store_reachable{namespace=\"ns\",node=\"n0\",run=\"run\"} 0"
            )
        );
        assert!(text.contains(
            "tessera_agent_store_outages_total{namespace=\"ns\",node=\"n0\",run=\"run\"} 2"
        ));

        // Cancelled while the store is away: no answer, no hang.
        shutdown.cancel();
        let cancelled = health
            .retry(
                "reading",
                &shutdown,
                |_: &String| true,
                || async { Err::<u32, _>("unavailable".to_string()) },
            )
            .await;
        assert_eq!(cancelled, None);
    }
}
