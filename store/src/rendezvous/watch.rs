//! Watching a run's state: members leaving a generation ([`Departures`]), the generation moving
//! on ([`RunStore::wait_for_generation_past`]), and the wake-ups a waiting join sleeps on. Each
//! re-opens its watch after a store restart, from the revision after the last event it saw.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_stream::StreamExt;

use super::error::RendezvousError;
use super::{RunStore, parse_generation};
use crate::backoff::Backoff;
use crate::error::StoreError;
use crate::kv::{EventKind, WatchStream};
use crate::store::Store;

/// Reports members that leave a generation: their join record is deleted because their lease
/// expired or was revoked.
pub struct Departures {
    store: Arc<dyn Store>,
    prefix: String,
    stream: Option<WatchStream>,
    /// The revision after the last event seen.
    next: i64,
    /// Expected members already absent when the watch started, reported first.
    absent: Vec<String>,
}

impl RunStore {
    /// Watches the members of `generation`. `expected` (e.g. the rank table's nodes) are the
    /// members that should be there: any of them already gone is reported first, so a departure
    /// just before the watch started is not missed.
    pub async fn watch_departures(
        &self,
        generation: u64,
        expected: &[String],
    ) -> Result<Departures, RendezvousError> {
        let prefix = self.keys.rendezvous_members_prefix(generation);
        let range = self.store.range(&prefix).await?;
        let present: BTreeSet<&str> = range
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_str()))
            .collect();
        let absent = expected
            .iter()
            .filter(|n| !present.contains(n.as_str()))
            .rev()
            .cloned()
            .collect();
        let next = range.revision + 1;
        let stream = self.store.watch_prefix(&prefix, Some(next)).await?;
        Ok(Departures {
            store: self.store.clone(),
            prefix,
            stream: Some(stream),
            next,
            absent,
        })
    }

    /// Waits until the generation is past `generation`; returns the new one. Rides out store
    /// restarts (logging them); fails only on a non-transient store error or a corrupt key.
    pub async fn wait_for_generation_past(&self, generation: u64) -> Result<u64, RendezvousError> {
        let key = self.keys.generation();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut quiet = false;
        loop {
            // Watch first, then read: a bump after the read is then always seen.
            let outcome = async {
                let mut events = self.store.watch_prefix(&key, None).await?;
                if let Some(g) = self.read_generation().await?
                    && g > generation
                {
                    return Ok(Some(g));
                }
                while let Some(event) = events.next().await {
                    let event = event?;
                    if event.kind == EventKind::Put && event.kv.key == key {
                        let g = parse_generation(&key, &event.kv.value)?;
                        if g > generation {
                            return Ok(Some(g));
                        }
                    }
                }
                Ok::<_, RendezvousError>(None)
            }
            .await;
            match outcome {
                Ok(Some(g)) => return Ok(g),
                Ok(None) => {}
                Err(e) if e.is_transient() => {
                    // Said once per outage; the repeats are debug lines.
                    if std::mem::replace(&mut quiet, true) {
                        tracing::debug!(
                            "waiting for generation {generation} to end: {e}; retrying"
                        );
                    } else {
                        tracing::warn!(
                            "waiting for generation {generation} to end: {e}; retrying with backoff"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl Departures {
    /// The next member to leave (its node name). Rides out store restarts; fails only when the
    /// store refuses the watch (e.g. its history was compacted).
    pub async fn next(&mut self) -> Result<String, RendezvousError> {
        if let Some(node) = self.absent.pop() {
            return Ok(node);
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let Some(stream) = &mut self.stream else {
                match self.store.watch_prefix(&self.prefix, Some(self.next)).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) if e.is_transient() => {
                        tracing::warn!("cannot re-open the watch of {}: {e}", self.prefix);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => return Err(e.into()),
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    self.next = event.revision + 1;
                    backoff.reset(Duration::from_millis(100));
                    if event.kind == EventKind::Delete
                        && let Some(node) = event.kv.key.strip_prefix(self.prefix.as_str())
                    {
                        return Ok(node.to_string());
                    }
                }
                Some(Err(e)) if !e.is_transient() => return Err(e.into()),
                Some(Err(_)) | None => self.stream = None,
            }
        }
    }
}

/// What a waiting join sleeps on: a watch of the keys that decide it, with polling as a safety
/// net while the watch is broken.
pub(super) struct Wakeups {
    store: Arc<dyn Store>,
    prefixes: Vec<String>,
    stream: Option<WatchStream>,
}

/// How often a join re-reads the state when its watch is broken.
const POLL: Duration = Duration::from_millis(500);
/// How often it re-reads anyway, in case a watch stalls without saying so.
const SAFETY_POLL: Duration = Duration::from_secs(2);

impl Wakeups {
    pub(super) fn new(store: Arc<dyn Store>, prefixes: Vec<String>) -> Wakeups {
        Wakeups {
            store,
            prefixes,
            stream: None,
        }
    }

    /// Opens the watch if it is not open; on failure the join polls instead.
    pub(super) async fn arm(&mut self) {
        if self.stream.is_some() {
            return;
        }
        let mut merged: Option<WatchStream> = None;
        for prefix in &self.prefixes {
            match self.store.watch_prefix(prefix, None).await {
                Ok(s) => {
                    merged = Some(match merged {
                        None => s,
                        Some(m) => Box::pin(m.merge(s)),
                    });
                }
                Err(e) => {
                    tracing::debug!("cannot watch {prefix} ({e}); polling instead");
                    return;
                }
            }
        }
        self.stream = merged;
    }

    /// Sleeps until `until` or the next change, whichever comes first.
    pub(super) async fn wait(&mut self, until: Instant) {
        let Some(stream) = &mut self.stream else {
            tokio::time::sleep_until(until.min(Instant::now() + POLL)).await;
            return;
        };
        tokio::select! {
            item = stream.next() => {
                if !matches!(item, Some(Ok(_))) {
                    // Broken or closed: re-armed before the next wait.
                    self.stream = None;
                }
            }
            _ = tokio::time::sleep_until(until.min(Instant::now() + SAFETY_POLL)) => {}
        }
    }
}

/// Whether an error from a store call during a wait should be retried.
pub(super) fn retryable(e: &RendezvousError) -> Option<&StoreError> {
    match e {
        RendezvousError::Store(s) if s.is_transient() => Some(s),
        _ => None,
    }
}
