//! Joining a generation: register under the member's lease, then look at the whole state on
//! every change until the rank table is fixed (by whichever member first sees it complete), the
//! generation moves on, or the timeout passes. The protocol is described in the parent module.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{JoinOutcome, RendezvousError};
use super::records::{Member, MemberRecord, RankTable, RendezvousConfig};
use super::watch::{Wakeups, retryable};
use super::{RunStore, parse_json};
use crate::backoff::Backoff;
use crate::kv::{Compare, KeyValue, LeaseId, Txn, TxnOp};

/// The first delay before a join retries a store call.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// What one look at the state decided.
enum Step {
    /// The join is over.
    Done(Result<JoinOutcome, RendezvousError>),
    /// Registered; look at the state now.
    Registered,
    /// The state changed under a transaction: look again now.
    Again,
    /// Nothing to do before this instant (or the next change).
    WaitUntil(Instant),
}

/// One member present in the generation, as last read.
struct Present {
    record: MemberRecord,
    key: String,
    create_revision: i64,
    mod_revision: i64,
}

/// The join of one member to one generation.
struct Join<'a> {
    run: &'a RunStore,
    generation: u64,
    record: MemberRecord,
    lease: LeaseId,
    config: &'a RendezvousConfig,
    started: Instant,
    deadline: Instant,
    /// The members seen at the last look, to notice arrivals and departures.
    seen: BTreeSet<String>,
    /// When the last new member was seen.
    last_arrival: Instant,
}

pub(super) async fn join(
    run: &RunStore,
    generation: u64,
    member: &Member,
    lease: LeaseId,
    config: &RendezvousConfig,
) -> Result<JoinOutcome, RendezvousError> {
    config.check()?;
    member.check()?;
    let started = Instant::now();
    let mut join = Join {
        run,
        generation,
        record: MemberRecord::new(member, generation),
        lease,
        config,
        started,
        deadline: started + config.timeout,
        seen: BTreeSet::new(),
        last_arrival: started,
    };
    let keys = run.keys();
    let mut wakeups = Wakeups::new(
        run.store().clone(),
        vec![keys.rendezvous_prefix(generation), keys.generation()],
    );
    let mut registered = false;
    let mut backoff = Backoff::new(FIRST_RETRY, Duration::from_secs(1));
    let mut retries_in_a_row = 0;
    loop {
        // Watch before reading, so a change after the read always wakes us.
        wakeups.arm().await;
        let step = if registered {
            join.look().await
        } else {
            join.register().await
        };
        if !matches!(step, Ok(Step::Again)) {
            retries_in_a_row = 0;
        }
        match step {
            Ok(Step::Done(outcome)) => return outcome,
            Ok(Step::Registered) => registered = true,
            Ok(Step::Again) => {
                // The state moved under a transaction; look again at once, but never spin.
                retries_in_a_row += 1;
                if retries_in_a_row > 10 {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                continue;
            }
            Ok(Step::WaitUntil(until)) => {
                backoff.reset(Duration::from_millis(100));
                wakeups.wait(until).await;
            }
            Err(e) => {
                let Some(store_error) = retryable(&e) else {
                    return Err(e);
                };
                if Instant::now() >= join.deadline {
                    return Err(e);
                }
                let delay = backoff.next_delay();
                // Said once per outage; the repeats are debug lines.
                if delay == FIRST_RETRY {
                    tracing::warn!(
                        "{} joining generation {generation}: {store_error}; retrying with backoff",
                        join.record.node
                    );
                } else {
                    tracing::debug!(
                        "{} joining generation {generation}: {store_error}; retrying in {delay:?}",
                        join.record.node
                    );
                }
                tokio::time::sleep_until((Instant::now() + delay).min(join.deadline)).await;
            }
        }
    }
}

impl Join<'_> {
    /// Puts this member's records, if the generation is current and its table not yet fixed.
    async fn register(&mut self) -> Result<Step, RendezvousError> {
        let g = self.generation;
        let current = self.run.current_generation().await?;
        if current > g {
            return Ok(Step::Done(Ok(JoinOutcome::Superseded {
                generation: current,
            })));
        }
        if current < g {
            return Ok(Step::Done(Err(RendezvousError::NotCurrent {
                requested: g,
                current,
            })));
        }
        if let Some(table) = self.run.rank_table(g).await? {
            return Ok(Step::Done(self.decide(table)));
        }
        let keys = self.run.keys();
        let json = serde_json::to_vec(&self.record).map_err(|e| {
            RendezvousError::Invalid(format!("cannot encode the member record: {e}"))
        })?;
        let node = &self.record.node;
        let put = Txn::new()
            .when([
                Compare::value(keys.generation(), g.to_string()),
                Compare::absent(keys.rank_table(g)),
            ])
            .and_then([
                TxnOp::put_leased(keys.rendezvous_member(g, node), json.clone(), self.lease),
                TxnOp::put_leased(keys.member(node), json, self.lease),
            ]);
        if self.run.store().txn(put).await?.succeeded {
            tracing::info!("{node} joined generation {g}");
            Ok(Step::Registered)
        } else {
            // The generation moved or the table was fixed meanwhile: the next try says which.
            Ok(Step::Again)
        }
    }

    /// Reads the generation's state and acts on it.
    async fn look(&mut self) -> Result<Step, RendezvousError> {
        let g = self.generation;
        let keys = self.run.keys();
        let node = self.record.node.clone();
        match self.run.read_generation().await? {
            Some(current) if current == g => {}
            Some(current) if current > g => {
                return Ok(Step::Done(Ok(JoinOutcome::Superseded {
                    generation: current,
                })));
            }
            other => {
                return Err(RendezvousError::Corrupt {
                    key: keys.generation(),
                    value: other.map_or("nothing".to_string(), |c| c.to_string()),
                    expected: "the generation being joined or a later one",
                });
            }
        }
        let range = self.run.store().range(&keys.rendezvous_prefix(g)).await?;
        let table_key = keys.rank_table(g);
        if let Some(kv) = range.kvs.iter().find(|kv| kv.key == table_key) {
            let table: RankTable = parse_json(&kv.key, &kv.value, "a rank table (JSON)")?;
            return Ok(Step::Done(self.decide(table)));
        }
        let members_prefix = keys.rendezvous_members_prefix(g);
        let present = range
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with(&members_prefix))
            .map(present_member)
            .collect::<Result<Vec<_>, _>>()?;
        if !present.iter().any(|p| p.record.node == node) {
            return Ok(Step::Done(Err(RendezvousError::MembershipLost {
                generation: g,
                node,
            })));
        }
        self.note_changes(&present);

        let now = Instant::now();
        let (min, max) = (self.config.min_members, self.config.max_members);
        let quiet_since = self.last_arrival + self.config.last_call;
        let n = present.len();
        if n >= max || (n >= min && (now >= quiet_since || now >= self.deadline)) {
            return self.fix(present).await;
        }
        if now >= self.deadline {
            let present: Vec<String> = present.into_iter().map(|p| p.record.node).collect();
            return Ok(Step::Done(Err(RendezvousError::NotEnoughMembers {
                generation: g,
                missing: min - present.len(),
                present,
                min,
                waited: now - self.started,
            })));
        }
        let until = if n >= min {
            quiet_since.min(self.deadline)
        } else {
            self.deadline
        };
        Ok(Step::WaitUntil(until))
    }

    /// Logs who arrived and who left since the last look; restarts the last call on arrivals.
    fn note_changes(&mut self, present: &[Present]) {
        let now: BTreeSet<String> = present.iter().map(|p| p.record.node.clone()).collect();
        let me = &self.record.node;
        let g = self.generation;
        for left in self.seen.difference(&now) {
            tracing::info!("{me}: {left} left generation {g} before its rank table was fixed");
        }
        if now.difference(&self.seen).next().is_some() {
            self.last_arrival = Instant::now();
        }
        self.seen = now;
    }

    /// Writes the table for (the earliest `max_members` of) `present`, if nothing changed since
    /// they were read.
    async fn fix(&self, mut present: Vec<Present>) -> Result<Step, RendezvousError> {
        let g = self.generation;
        let keys = self.run.keys();
        present.sort_by_key(|p| (p.create_revision, p.record.node.clone()));
        present.truncate(self.config.max_members);
        let records: Vec<MemberRecord> = present.iter().map(|p| p.record.clone()).collect();
        let table = RankTable::build(g, &records)?;
        let json = serde_json::to_vec(&table)
            .map_err(|e| RendezvousError::Invalid(format!("cannot encode the rank table: {e}")))?;
        let mut compares = vec![
            Compare::absent(keys.rank_table(g)),
            Compare::value(keys.generation(), g.to_string()),
        ];
        compares.extend(
            present
                .iter()
                .map(|p| Compare::mod_revision(&p.key, p.mod_revision)),
        );
        let write = Txn::new()
            .when(compares)
            .and_then([TxnOp::put(keys.rank_table(g), json)]);
        if self.run.store().txn(write).await?.succeeded {
            tracing::info!(
                "{} fixed the rank table of generation {g}: {} (world size {})",
                self.record.node,
                table.node_names().join(", "),
                table.world_size
            );
            Ok(Step::Done(self.decide(table)))
        } else {
            Ok(Step::Again)
        }
    }

    /// The end of a join once the table is known.
    fn decide(&self, table: RankTable) -> Result<JoinOutcome, RendezvousError> {
        if table.node(&self.record.node).is_some() {
            Ok(JoinOutcome::Joined(table))
        } else {
            Err(RendezvousError::FixedWithout {
                generation: self.generation,
                node: self.record.node.clone(),
                members: table.node_names(),
            })
        }
    }
}

fn present_member(kv: &KeyValue) -> Result<Present, RendezvousError> {
    let record: MemberRecord = parse_json(&kv.key, &kv.value, "a member record (JSON)")?;
    Ok(Present {
        record,
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}
