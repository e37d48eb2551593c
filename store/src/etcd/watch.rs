//! etcd watches that outlive an etcd restart: a task pumps events from etcd's watch stream to
//! the caller and, when the stream breaks, re-opens it from the revision after the last event
//! it delivered (so nothing is lost or repeated). It gives up, yielding the error, only when
//! etcd stays unreachable past the store's reconnect timeout or the history it needs was
//! compacted.

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream as EtcdWatchStream};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

use super::{EtcdStore, kv_from_etcd};
use crate::backoff::Backoff;
use crate::error::StoreError;
use crate::kv::{EventKind, KeyValue, WatchEvent, WatchStream};

type Sender = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// Opens a watch and starts the task that feeds (and, after a break, re-opens) it.
pub(super) async fn open(
    store: EtcdStore,
    prefix: String,
    start_revision: Option<i64>,
) -> Result<WatchStream, StoreError> {
    let (stream, next) = create(&store, &prefix, start_revision).await?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(pump(store, prefix, stream, next, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Creates an etcd watch and waits until etcd confirms it, so that any change made after this
/// returns is seen. Returns the stream and the first revision it will deliver.
async fn create(
    store: &EtcdStore,
    prefix: &str,
    start_revision: Option<i64>,
) -> Result<(EtcdWatchStream, i64), StoreError> {
    let mut options = WatchOptions::new().with_prefix();
    if let Some(start) = start_revision {
        options = options.with_start_revision(start);
    }
    let mut stream = store
        .call("watch", None, || {
            let mut client = store.client.watch_client();
            let options = options.clone();
            async move { client.watch(prefix, Some(options)).await }
        })
        .await?;
    // The first answer comes on the stream just opened: awaited once, never repeated.
    let first = {
        let mut once = Some(stream.message());
        store
            .call("watch", None, || {
                let next = once.take();
                async move {
                    match next {
                        Some(next) => next.await,
                        None => Err(etcd_client::Error::WatchError(
                            "the watch's first answer was already awaited".into(),
                        )),
                    }
                }
            })
            .await?
    };
    match first {
        Some(resp) if resp.canceled() => Err(canceled(store, &resp, start_revision.unwrap_or(0))),
        Some(resp) if resp.created() => {
            let now = resp.header().map_or(0, |h| h.revision());
            Ok((stream, start_revision.unwrap_or(now + 1)))
        }
        _ => Err(StoreError::Protocol {
            target: store.target.clone(),
            operation: "watch",
            expected: "etcd server",
            message: "the watch was not confirmed".to_string(),
        }),
    }
}

/// Why etcd cancelled a watch.
fn canceled(store: &EtcdStore, resp: &WatchResponse, requested: i64) -> StoreError {
    if resp.compact_revision() > 0 {
        StoreError::Compacted {
            requested,
            compacted: resp.compact_revision(),
        }
    } else {
        StoreError::Refused {
            target: store.target.clone(),
            operation: "watch",
            message: format!("etcd cancelled the watch: {}", resp.cancel_reason()),
        }
    }
}

fn event_from_etcd(event: &etcd_client::Event) -> Option<WatchEvent> {
    let kv: KeyValue = kv_from_etcd(event.kv()?);
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Some(WatchEvent {
        kind,
        revision: kv.mod_revision,
        kv,
    })
}

/// Feeds events to the caller until it drops the stream; re-opens the etcd watch after a break.
async fn pump(
    store: EtcdStore,
    prefix: String,
    mut stream: EtcdWatchStream,
    mut next: i64,
    tx: Sender,
) {
    loop {
        let message = tokio::select! {
            // Dropping the etcd stream cancels the watch on the server.
            _ = tx.closed() => return,
            message = stream.message() => message,
        };
        let broken = match message {
            Ok(Some(resp)) if resp.canceled() => {
                let _ = tx.send(Err(canceled(&store, &resp, next))).await;
                return;
            }
            Ok(Some(resp)) => {
                for event in resp.events().iter().filter_map(event_from_etcd) {
                    next = event.revision + 1;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(None) => "etcd closed the watch stream".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "the watch of {prefix:?} on {} broke ({broken}); re-opening it from revision {next}",
            store.target
        );
        match reopen(&store, &prefix, next, &tx).await {
            Some(s) => stream = s,
            None => return,
        }
    }
}

/// The first delay before a broken watch is re-opened.
const FIRST_REOPEN: Duration = Duration::from_millis(50);

/// Re-opens a broken watch from `next`, retrying with backoff; `None` when it gave up (the error
/// was sent to the caller) or the caller went away.
async fn reopen(
    store: &EtcdStore,
    prefix: &str,
    next: i64,
    tx: &Sender,
) -> Option<EtcdWatchStream> {
    let started = Instant::now();
    let mut backoff = Backoff::new(FIRST_REOPEN, Duration::from_secs(1));
    loop {
        let error = match create(store, prefix, Some(next)).await {
            Ok((stream, _)) => return Some(stream),
            Err(e) if !e.is_transient() => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if started.elapsed() + delay > store.reconnect_timeout {
            let _ = tx.send(Err(error)).await;
            return None;
        }
        // Said once per outage; the repeats are debug lines.
        if delay == FIRST_REOPEN {
            tracing::warn!(
                "cannot re-open the watch of {prefix:?} yet ({error}); retrying with backoff"
            );
        } else {
            tracing::debug!(
                "cannot re-open the watch of {prefix:?} yet ({error}); retrying in {delay:?}"
            );
        }
        tokio::select! {
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
