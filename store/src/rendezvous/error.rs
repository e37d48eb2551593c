//! How a rendezvous ends: [`JoinOutcome`] for the two normal ends, [`RendezvousError`] for the
//! rest, each message saying what happened and what to do.

use std::time::Duration;

use super::records::RankTable;
use crate::error::StoreError;

/// How a join ends when nothing went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The rank table of the generation, which holds this node.
    Joined(RankTable),
    /// The generation was bumped to `generation` before (or while) this node joined: join that
    /// one instead.
    Superseded { generation: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The timeout passed with fewer than the minimum number of members present.
    #[error(
        "the rendezvous for generation {generation} timed out after {waited:.1?} with {} of the {min} members needed: present: {}; {missing} missing. Start the missing node agents, or lower the run's minimum node count",
        present.len(),
        names(present)
    )]
    NotEnoughMembers {
        generation: u64,
        present: Vec<String>,
        min: usize,
        missing: usize,
        waited: Duration,
    },
    /// The generation's rank table was fixed without this node.
    #[error(
        "the rank table of generation {generation} was fixed without {node} (it holds {}): wait for the next generation, or bump it to join",
        names(members)
    )]
    FixedWithout {
        generation: u64,
        node: String,
        members: Vec<String>,
    },
    /// This node's own join record vanished before the table was fixed.
    #[error(
        "{node}'s join record for generation {generation} disappeared before the rank table was fixed (its lease expired or was revoked): grant a new lease and join again"
    )]
    MembershipLost { generation: u64, node: String },
    /// The generation asked for does not exist yet.
    #[error(
        "cannot join generation {requested}: the run's current generation is {current}; join the current generation"
    )]
    NotCurrent { requested: u64, current: u64 },
    /// A write fenced by generation was refused: the writer's generation is no longer the
    /// current one (a paused or partitioned writer woke up after the gang moved on).
    #[error(
        "refused {what}: it was written by generation {writer}, but the run's current generation is {current}; a writer of an ended generation must stop"
    )]
    StaleGeneration {
        what: String,
        writer: u64,
        current: String,
    },
    /// A key holds something the protocol never writes.
    #[error("{key} holds {value}, which is not {expected}: fix or delete the key")]
    Corrupt {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// The request is malformed (bad node name, impossible configuration).
    #[error("invalid rendezvous request: {0}")]
    Invalid(String),
}

impl RendezvousError {
    /// Whether retrying later may succeed (the store was unreachable or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, RendezvousError::Store(e) if e.is_transient())
    }
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_who_is_present_and_how_many_are_missing() {
        let e = RendezvousError::NotEnoughMembers {
            generation: 2,
            present: vec!["a".into(), "b".into(), "c".into()],
            min: 4,
            missing: 1,
            waited: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "the rendezvous for generation 2 timed out after 1.5s with 3 of the 4 members needed: present: a, b, c; 1 missing. Start the missing node agents, or lower the run's minimum node count"
        );
    }
}
