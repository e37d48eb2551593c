//! The rendezvous-and-generation protocol on top of a [`Store`], under one run's keys
//! (`tessera_api::store_keys::RunKeys`).
//!
//! - **Generation.** `generation` holds the gang's generation as decimal text.
//!   [`RunStore::current_generation`] reads it, creating "1" (create-if-absent) when missing.
//!   [`RunStore::bump_generation`] is a compare-and-swap (value == g → g+1): of any number of
//!   racers exactly one wins, and the winner's reason is kept at `rendezvous/{g}/ended`
//!   ([`RunStore::end_reason`]), so every agent can name the failure that ended a generation,
//!   not only the one that saw it.
//! - **Joining.** [`RunStore::join`] puts the member's record at `rendezvous/{g}/members/{node}`
//!   and `members/{node}`, both under the member's lease, in one transaction that holds only
//!   while the generation is still g and its table is not fixed. It then waits (watching, and
//!   re-reading the whole state on every change, so a missed event cannot mislead it):
//!   - with `max_members` present the table is fixed at once (if more raced in, the earliest
//!     `max_members` by join revision);
//!   - with at least `min_members` present, once no one new has joined for `last_call` (or the
//!     timeout is reached);
//!   - with fewer than `min_members` at the timeout, the join fails with
//!     [`RendezvousError::NotEnoughMembers`] naming those present and how many are missing. The
//!     record stays (under its lease): joining again keeps waiting, revoking the lease leaves.
//!
//!   Any member may fix the table: a transaction writes `rendezvous/{g}/ranks` only if it is
//!   absent, the generation is still g, and every chosen member's record is unchanged (same mod
//!   revision). So a member whose lease expires during the rendezvous (its records deleted) is
//!   never in the table: the transaction fails and the next look no longer counts it; the others
//!   see it leave ([`RunStore::watch_departures`]) and wait for enough members, and its own join
//!   fails with [`RendezvousError::MembershipLost`].
//! - **Endings.** The table holds this node: [`JoinOutcome::Joined`]. It was fixed without this
//!   node: [`RendezvousError::FixedWithout`] (wait for, or bump to, the next generation). The
//!   generation moved on: [`JoinOutcome::Superseded`].
//! - **Fencing.** A write that decides anything after the rank table is fixed (a checkpoint's
//!   commit record, a node's "done" record, the newest checkpoint) goes through
//!   [`RunStore::put_if_current`]: one transaction that writes only while the generation key
//!   still holds the writer's generation. A writer paused or cut off while the gang moved on
//!   gets [`RendezvousError::StaleGeneration`], whatever it believes. etcd serves every read
//!   and transaction linearizably (Tessera never asks for serializable reads), so a refusal or
//!   a grant reflects the newest generation.
//! - **Store restarts.** Transient store errors during a join are logged and retried with
//!   backoff until the join's timeout; then the store error is returned.

mod error;
mod join;
mod records;
mod watch;

use std::sync::Arc;

use tessera_api::records::{CheckpointCommit, Record};
use tessera_api::store_keys::RunKeys;

use crate::kv::{Compare, LeaseId, Txn, TxnOp};
use crate::store::Store;
pub use error::{JoinOutcome, RendezvousError};
pub use records::{Member, MemberRecord, RankTable, RankedNode, RendezvousConfig};
pub use watch::Departures;

/// One run's live state in the store: its generation, rendezvous, progress and newest
/// checkpoint.
#[derive(Clone)]
pub struct RunStore {
    store: Arc<dyn Store>,
    keys: RunKeys,
}

impl RunStore {
    pub fn new(store: Arc<dyn Store>, keys: RunKeys) -> RunStore {
        RunStore { store, keys }
    }

    pub fn keys(&self) -> &RunKeys {
        &self.keys
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The gang's current generation, created as 1 when the run has none yet.
    pub async fn current_generation(&self) -> Result<u64, RendezvousError> {
        let key = self.keys.generation();
        for _ in 0..3 {
            if let Some(g) = self.read_generation().await? {
                return Ok(g);
            }
            let create = Txn::new()
                .when([Compare::absent(&key)])
                .and_then([TxnOp::put(&key, "1")]);
            if self.store.txn(create).await?.succeeded {
                return Ok(1);
            }
            // Someone else created it meanwhile: read theirs.
        }
        Err(RendezvousError::Corrupt {
            key,
            value: "nothing again and again".to_string(),
            expected: "a stable generation number (something keeps deleting it)",
        })
    }

    /// The generation, or `None` when the run has none yet.
    pub(crate) async fn read_generation(&self) -> Result<Option<u64>, RendezvousError> {
        let key = self.keys.generation();
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(kv) => parse_generation(&key, &kv.value).map(Some),
        }
    }

    /// Moves the generation from `from` to `from + 1` if it is still `from`, recording `reason`
    /// as why `from` ended; returns whether this caller did it (of several racers exactly one
    /// does, and only its reason is kept).
    pub async fn bump_generation(&self, from: u64, reason: &str) -> Result<bool, RendezvousError> {
        let next = from.checked_add(1).ok_or_else(|| {
            RendezvousError::Invalid(format!("generation {from} cannot be bumped further"))
        })?;
        let key = self.keys.generation();
        let bump = Txn::new()
            .when([Compare::value(&key, from.to_string())])
            .and_then([
                TxnOp::put(&key, next.to_string()),
                TxnOp::put(self.keys.generation_end(from), reason),
            ]);
        Ok(self.store.txn(bump).await?.succeeded)
    }

    /// Puts `key` only if the run's generation is still `generation`, in one transaction;
    /// returns the revision written. [`RendezvousError::StaleGeneration`] (naming `what` and
    /// the current generation) when it is not.
    pub async fn put_if_current(
        &self,
        generation: u64,
        what: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<i64, RendezvousError> {
        let generation_key = self.keys.generation();
        let put = Txn::new()
            .when([Compare::value(&generation_key, generation.to_string())])
            .and_then([TxnOp::Put {
                key: key.to_string(),
                value,
                lease: None,
            }]);
        let outcome = self.store.txn(put).await?;
        if outcome.succeeded {
            return Ok(outcome.revision);
        }
        let current = match self.read_generation().await {
            Ok(Some(g)) => g.to_string(),
            Ok(None) => "unset".to_string(),
            Err(e) => format!("unreadable ({e})"),
        };
        Err(RendezvousError::StaleGeneration {
            what: what.to_string(),
            writer: generation,
            current,
        })
    }

    /// Records the commit of checkpoint `commit.step` while `commit.generation` is current
    /// ([`RunStore::put_if_current`]); returns the revision written.
    pub async fn record_commit(&self, commit: &CheckpointCommit) -> Result<i64, RendezvousError> {
        self.put_if_current(
            commit.generation,
            &format!("the commit of checkpoint step {}", commit.step),
            &self.keys.checkpoint_commit(commit.step),
            commit.to_json().into_bytes(),
        )
        .await
    }

    /// Every recorded checkpoint commit, by step (unreadable records are skipped with a
    /// warning: they cannot vouch for anything).
    pub async fn checkpoint_commits(&self) -> Result<Vec<CheckpointCommit>, RendezvousError> {
        let kvs = self
            .store
            .get_prefix(&self.keys.checkpoint_commits_prefix())
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| match CheckpointCommit::from_json(&kv.value) {
                Ok(commit) => Some(commit),
                Err(e) => {
                    tracing::warn!(key = %kv.key, "skipping a checkpoint commit record: {e}");
                    None
                }
            })
            .collect())
    }

    /// Why `generation` ended, as recorded by the bump that ended it; `None` while it has not
    /// ended (or once pruned).
    pub async fn end_reason(&self, generation: u64) -> Result<Option<String>, RendezvousError> {
        let key = self.keys.generation_end(generation);
        Ok(self
            .store
            .get(&key)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Joins generation `generation` as `member`, its records held by `lease`, and waits for the
    /// rank table (see the module documentation for the protocol).
    pub async fn join(
        &self,
        generation: u64,
        member: &Member,
        lease: LeaseId,
        config: &RendezvousConfig,
    ) -> Result<JoinOutcome, RendezvousError> {
        join::join(self, generation, member, lease, config).await
    }

    /// The members that joined `generation` and are still alive, in node-name order.
    pub async fn members(&self, generation: u64) -> Result<Vec<MemberRecord>, RendezvousError> {
        let prefix = self.keys.rendezvous_members_prefix(generation);
        let kvs = self.store.get_prefix(&prefix).await?;
        kvs.iter()
            .map(|kv| parse_json(&kv.key, &kv.value, "a member record (JSON)"))
            .collect()
    }

    /// Every live agent of the run (`members/{node}`), in node-name order.
    pub async fn live_members(&self) -> Result<Vec<MemberRecord>, RendezvousError> {
        let kvs = self.store.get_prefix(&self.keys.members_prefix()).await?;
        kvs.iter()
            .map(|kv| parse_json(&kv.key, &kv.value, "a member record (JSON)"))
            .collect()
    }

    /// Records `member` as waiting to join the gang (held by `lease`): the table of
    /// `generation` was fixed without it.
    pub async fn wait_to_join(
        &self,
        member: &Member,
        generation: u64,
        lease: LeaseId,
    ) -> Result<(), RendezvousError> {
        let record = MemberRecord::new(member, generation);
        let json = serde_json::to_vec(&record).map_err(|e| {
            RendezvousError::Invalid(format!("cannot encode the member record: {e}"))
        })?;
        self.store
            .put(&self.keys.waiting(&member.node), json, Some(lease))
            .await?;
        Ok(())
    }

    /// No longer waiting (it joined, or left).
    pub async fn stop_waiting(&self, node: &str) -> Result<(), RendezvousError> {
        self.store.delete(&self.keys.waiting(node)).await?;
        Ok(())
    }

    /// Every node waiting to join, in node-name order.
    pub async fn waiting_members(&self) -> Result<Vec<MemberRecord>, RendezvousError> {
        let kvs = self.store.get_prefix(&self.keys.waiting_prefix()).await?;
        kvs.iter()
            .map(|kv| parse_json(&kv.key, &kv.value, "a member record (JSON)"))
            .collect()
    }

    /// The rank table of `generation`, once fixed.
    pub async fn rank_table(&self, generation: u64) -> Result<Option<RankTable>, RendezvousError> {
        let key = self.keys.rank_table(generation);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(kv) => parse_json(&key, &kv.value, "a rank table (JSON)").map(Some),
        }
    }

    /// Deletes the rendezvous keys of every generation below `below`; returns how many keys went.
    pub async fn prune_generations(&self, below: u64) -> Result<u64, RendezvousError> {
        let root = self.keys.rendezvous_root();
        let kvs = self.store.get_prefix(&root).await?;
        let mut old: Vec<u64> = kvs
            .iter()
            .filter_map(|kv| {
                kv.key
                    .strip_prefix(root.as_str())?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .filter(|g| *g < below)
            .collect();
        old.dedup();
        let mut deleted = 0;
        for g in old {
            deleted += self
                .store
                .delete_prefix(&self.keys.rendezvous_prefix(g))
                .await?;
        }
        Ok(deleted)
    }

    /// Publishes the run's newest progress report (any JSON document).
    pub async fn publish_progress(&self, json: &[u8]) -> Result<(), RendezvousError> {
        self.put_json(&self.keys.progress(), json).await
    }

    /// The newest progress report, as published.
    pub async fn progress(&self) -> Result<Option<Vec<u8>>, RendezvousError> {
        Ok(self
            .store
            .get(&self.keys.progress())
            .await?
            .map(|kv| kv.value))
    }

    /// Publishes the run's newest committed checkpoint (any JSON document), only while
    /// `generation` is current ([`RunStore::put_if_current`]).
    pub async fn publish_latest_checkpoint(
        &self,
        generation: u64,
        json: &[u8],
    ) -> Result<(), RendezvousError> {
        let key = self.keys.latest_checkpoint();
        check_json(&key, json)?;
        self.put_if_current(generation, "the newest checkpoint", &key, json.to_vec())
            .await?;
        Ok(())
    }

    /// The newest committed checkpoint, as published.
    pub async fn latest_checkpoint(&self) -> Result<Option<Vec<u8>>, RendezvousError> {
        let key = self.keys.latest_checkpoint();
        Ok(self.store.get(&key).await?.map(|kv| kv.value))
    }

    async fn put_json(&self, key: &str, json: &[u8]) -> Result<(), RendezvousError> {
        check_json(key, json)?;
        self.store.put(key, json.to_vec(), None).await?;
        Ok(())
    }
}

/// A document published under `key` must be JSON.
fn check_json(key: &str, json: &[u8]) -> Result<(), RendezvousError> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
        Ok(_) => Ok(()),
        Err(e) => Err(RendezvousError::Invalid(format!(
            "the document for {key} is not JSON ({e}); publish a JSON document"
        ))),
    }
}

/// A generation number written as decimal text.
pub(crate) fn parse_generation(key: &str, value: &[u8]) -> Result<u64, RendezvousError> {
    // Only the canonical form: transactions compare the exact text ("1", never "01").
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok().filter(|g| g.to_string() == s))
        .ok_or_else(|| RendezvousError::Corrupt {
            key: key.to_string(),
            value: format!("{:?}", String::from_utf8_lossy(value)),
            expected: "a generation number (decimal text)",
        })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
    expected: &'static str,
) -> Result<T, RendezvousError> {
    serde_json::from_slice(value).map_err(|e| RendezvousError::Corrupt {
        key: key.to_string(),
        value: format!("{:?} ({e})", String::from_utf8_lossy(value)),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_decimal_text() {
        assert_eq!(parse_generation("g", b"12").unwrap(), 12);
        for bad in [&b""[..], b"-1", b"1.0", b" 1", b"x", b"01", b"+1"] {
            let e = parse_generation("g", bad).unwrap_err().to_string();
            assert!(e.contains("decimal text"), "{e}");
        }
    }
}
