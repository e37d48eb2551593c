//! The embedded store's state machine: the key space with etcd's revision bookkeeping, leases,
//! the event history kept for replay, and the watchers. Synchronous; `EmbeddedStore` holds it
//! behind a mutex and drives lease expiry with timers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::{Duration, Instant};

use crate::error::StoreError;
use crate::kv::{Compare, EventKind, KeyValue, LeaseId, Range, Txn, TxnOp, TxnOutcome, WatchEvent};

/// One stored key's value and bookkeeping.
struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: Option<LeaseId>,
}

impl Entry {
    fn to_kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

struct Lease {
    ttl_secs: i64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    /// The first revision this watcher wants (a watch may start in the future).
    from: i64,
    tx: UnboundedSender<Result<WatchEvent, StoreError>>,
}

/// What a lease timer found when it fired.
pub(super) enum Expiry {
    /// The lease was refreshed; sleep until this new deadline.
    NotYet(Instant),
    /// The lease expired now (its keys are deleted) or was already gone: the timer can stop.
    Done,
}

pub(super) struct State {
    revision: i64,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    /// Events at this revision or earlier may have been dropped from the history.
    compacted: i64,
    watchers: Vec<Watcher>,
}

impl State {
    pub(super) fn new(history_limit: usize) -> State {
        State {
            // etcd starts at revision 1 with an empty key space.
            revision: 1,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).map(|e| e.to_kv(key))
    }

    pub(super) fn range(&self, prefix: &str) -> Range {
        Range {
            kvs: self.under(prefix).map(|(k, e)| e.to_kv(k)).collect(),
            revision: self.revision,
        }
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        self.kvs
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        self.check_lease(lease)?;
        let mut batch = Batch::new(self.revision + 1);
        self.apply_put(&mut batch, key, value, lease);
        self.commit(batch);
        Ok(self.revision)
    }

    pub(super) fn delete(&mut self, key: &str) -> (u64, i64) {
        let mut batch = Batch::new(self.revision + 1);
        let n = u64::from(self.apply_delete(&mut batch, key));
        self.commit(batch);
        (n, self.revision)
    }

    pub(super) fn delete_prefix(&mut self, prefix: &str) -> (u64, i64) {
        let mut batch = Batch::new(self.revision + 1);
        let n = self.apply_delete_prefix(&mut batch, prefix);
        self.commit(batch);
        (n, self.revision)
    }

    pub(super) fn txn(&mut self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        // Like etcd, only the branch taken must name live leases, and it fails as a whole.
        for op in &ops {
            if let TxnOp::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }
        let mut batch = Batch::new(self.revision + 1);
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => self.apply_put(&mut batch, &key, value, lease),
                TxnOp::Delete { key } => {
                    self.apply_delete(&mut batch, &key);
                }
                TxnOp::DeletePrefix { prefix } => {
                    self.apply_delete_prefix(&mut batch, &prefix);
                }
            }
        }
        self.commit(batch);
        Ok(TxnOutcome {
            succeeded,
            revision: self.revision,
        })
    }

    fn holds(&self, compare: &Compare) -> bool {
        let entry = self.kvs.get(compare.key());
        match compare {
            // etcd: a value compare on an absent key is false.
            Compare::ValueEquals { value, .. } => entry.is_some_and(|e| &e.value == value),
            Compare::ModRevisionEquals { revision, .. } => {
                entry.map_or(0, |e| e.mod_revision) == *revision
            }
            Compare::CreateRevisionEquals { revision, .. } => {
                entry.map_or(0, |e| e.create_revision) == *revision
            }
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), StoreError> {
        match lease {
            Some(id) if !self.leases.contains_key(&id.0) => Err(StoreError::LeaseExpired(id)),
            _ => Ok(()),
        }
    }

    pub(super) fn grant_lease(&mut self, ttl_secs: i64, now: Instant) -> (LeaseId, Instant) {
        let id = self.next_lease;
        self.next_lease += 1;
        let deadline = deadline_after(now, ttl_secs);
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        (LeaseId(id), deadline)
    }

    pub(super) fn keep_alive(&mut self, lease: LeaseId, now: Instant) -> Result<i64, StoreError> {
        let l = self
            .leases
            .get_mut(&lease.0)
            .ok_or(StoreError::LeaseExpired(lease))?;
        l.deadline = deadline_after(now, l.ttl_secs);
        Ok(l.ttl_secs)
    }

    pub(super) fn revoke_lease(&mut self, lease: LeaseId) -> Result<(), StoreError> {
        let l = self
            .leases
            .remove(&lease.0)
            .ok_or(StoreError::LeaseExpired(lease))?;
        // Every key of the lease goes in one revision, as in etcd.
        let mut batch = Batch::new(self.revision + 1);
        for key in l.keys {
            self.apply_delete(&mut batch, &key);
        }
        self.commit(batch);
        Ok(())
    }

    /// Called by the lease's timer: expires it if its deadline has passed.
    pub(super) fn expire_if_due(&mut self, lease: LeaseId, now: Instant) -> Expiry {
        match self.leases.get(&lease.0) {
            None => Expiry::Done,
            Some(l) if l.deadline > now => Expiry::NotYet(l.deadline),
            Some(_) => {
                // The lease exists, so revoking it cannot fail.
                let _ = self.revoke_lease(lease);
                Expiry::Done
            }
        }
    }

    pub(super) fn watch(
        &mut self,
        prefix: &str,
        start_revision: Option<i64>,
    ) -> Result<UnboundedReceiver<Result<WatchEvent, StoreError>>, StoreError> {
        let (tx, rx) = unbounded_channel();
        let from = match start_revision {
            None => self.revision + 1,
            Some(start) => {
                if start <= self.compacted {
                    return Err(StoreError::Compacted {
                        requested: start,
                        compacted: self.compacted,
                    });
                }
                for event in &self.history {
                    if event.revision >= start && event.kv.key.starts_with(prefix) {
                        // The receiver is still held here, so this cannot fail.
                        let _ = tx.send(Ok(event.clone()));
                    }
                }
                start
            }
        };
        self.watchers.push(Watcher {
            prefix: prefix.to_string(),
            from,
            tx,
        });
        Ok(rx)
    }

    fn apply_put(&mut self, batch: &mut Batch, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        let rev = batch.revision;
        let old_lease = match self.kvs.get_mut(key) {
            Some(e) => {
                let old = e.lease;
                e.value = value;
                e.mod_revision = rev;
                e.version += 1;
                e.lease = lease;
                old
            }
            None => {
                self.kvs.insert(
                    key.to_string(),
                    Entry {
                        value,
                        create_revision: rev,
                        mod_revision: rev,
                        version: 1,
                        lease,
                    },
                );
                None
            }
        };
        if old_lease != lease {
            self.detach(key, old_lease);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id.0)) {
            l.keys.insert(key.to_string());
        }
        let kv = self.kvs.get(key).map(|e| e.to_kv(key));
        if let Some(kv) = kv {
            batch.events.push(WatchEvent {
                kind: EventKind::Put,
                kv,
                revision: rev,
            });
        }
    }

    fn apply_delete(&mut self, batch: &mut Batch, key: &str) -> bool {
        let Some(entry) = self.kvs.remove(key) else {
            return false;
        };
        self.detach(key, entry.lease);
        batch.events.push(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: batch.revision,
                version: 0,
                lease: None,
            },
            revision: batch.revision,
        });
        true
    }

    fn apply_delete_prefix(&mut self, batch: &mut Batch, prefix: &str) -> u64 {
        let keys: Vec<String> = self.under(prefix).map(|(k, _)| k.clone()).collect();
        let mut n = 0;
        for key in keys {
            n += u64::from(self.apply_delete(batch, &key));
        }
        n
    }

    fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id.0)) {
            l.keys.remove(key);
        }
    }

    /// Makes a batch's changes visible: one new revision if it changed anything (as in etcd,
    /// a write that changes nothing does not advance the revision), its events recorded and sent.
    fn commit(&mut self, batch: Batch) {
        if batch.events.is_empty() {
            return;
        }
        self.revision = batch.revision;
        for event in batch.events {
            self.watchers.retain(|w| {
                if event.revision < w.from || !event.kv.key.starts_with(&w.prefix) {
                    return !w.tx.is_closed();
                }
                w.tx.send(Ok(event.clone())).is_ok()
            });
            self.history.push_back(event);
            while self.history.len() > self.history_limit {
                if let Some(old) = self.history.pop_front() {
                    self.compacted = self.compacted.max(old.revision);
                }
            }
        }
    }
}

/// The changes of one revision, collected before they are committed.
struct Batch {
    revision: i64,
    events: Vec<WatchEvent>,
}

impl Batch {
    fn new(revision: i64) -> Batch {
        Batch {
            revision,
            events: Vec::new(),
        }
    }
}

/// When a lease of `ttl_secs` refreshed at `now` expires (TTLs are checked to fit, so this only
/// saturates on a clock near its end).
fn deadline_after(now: Instant, ttl_secs: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(1));
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_follow_etcd() {
        let mut s = State::new(100);
        let r1 = s.put("a", b"1".to_vec(), None).unwrap();
        assert_eq!(r1, 2);
        let r2 = s.put("a", b"2".to_vec(), None).unwrap();
        let kv = s.get("a").unwrap();
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (r1, r2, 2)
        );
        // Deleting nothing changes nothing.
        assert_eq!(s.delete("missing"), (0, r2));
        assert_eq!(s.delete("a"), (1, r2 + 1));
        let r3 = s.put("a", b"3".to_vec(), None).unwrap();
        let kv = s.get("a").unwrap();
        assert_eq!((kv.create_revision, kv.version), (r3, 1));
    }

    #[test]
    fn a_short_history_is_compacted() {
        let mut s = State::new(2);
        for i in 0..5 {
            s.put("k", vec![i], None).unwrap();
        }
        // Revisions 2..=6 were written; only the last two events are kept.
        let err = s.watch("k", Some(2)).unwrap_err();
        assert_eq!(
            err,
            StoreError::Compacted {
                requested: 2,
                compacted: 4
            }
        );
        let mut rx = s.watch("k", Some(5)).unwrap();
        assert_eq!(rx.try_recv().unwrap().unwrap().revision, 5);
        assert_eq!(rx.try_recv().unwrap().unwrap().revision, 6);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_expired_lease_deletes_its_keys_in_one_revision() {
        let mut s = State::new(100);
        let now = Instant::now();
        let (lease, deadline) = s.grant_lease(1, now);
        s.put("a", vec![], Some(lease)).unwrap();
        s.put("b", vec![], Some(lease)).unwrap();
        s.put("c", vec![], Some(lease)).unwrap();
        // Overwriting without the lease detaches the key.
        s.put("c", vec![], None).unwrap();
        let before = s.range("").revision;
        assert!(matches!(s.expire_if_due(lease, now), Expiry::NotYet(_)));
        assert!(matches!(s.expire_if_due(lease, deadline), Expiry::Done));
        let after = s.range("");
        assert_eq!(after.revision, before + 1);
        assert_eq!(after.kvs.len(), 1);
        assert_eq!(after.kvs[0].key, "c");
        assert_eq!(
            s.put("d", vec![], Some(lease)).unwrap_err(),
            StoreError::LeaseExpired(lease)
        );
    }
}
