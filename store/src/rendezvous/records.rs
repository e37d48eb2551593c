//! What the rendezvous stores and takes: member records, the rank table and its construction,
//! and the rendezvous configuration, each checked before use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::RendezvousError;

/// What a node agent brings to a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's name (a Kubernetes node or pod name): non-empty, no `/`.
    pub node: String,
    /// How many ranks (GPUs, or CPU ranks) it runs: at least one.
    pub slots: u32,
    /// Where its agent can be reached (host:port).
    pub address: String,
}

impl Member {
    pub(super) fn check(&self) -> Result<(), RendezvousError> {
        if self.node.is_empty() || self.node.contains('/') {
            return Err(RendezvousError::Invalid(format!(
                "node name {:?}: give a non-empty name without '/'",
                self.node
            )));
        }
        if self.slots == 0 {
            return Err(RendezvousError::Invalid(format!(
                "node {} brings 0 slots; a member must run at least one rank",
                self.node
            )));
        }
        Ok(())
    }
}

/// A member's record in the store (`members/{node}` and `rendezvous/{g}/members/{node}`), as
/// JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub node: String,
    pub slots: u32,
    pub address: String,
    /// The generation this record joins.
    pub generation: u64,
}

impl MemberRecord {
    pub(super) fn new(member: &Member, generation: u64) -> MemberRecord {
        MemberRecord {
            node: member.node.clone(),
            slots: member.slots,
            address: member.address.clone(),
            generation,
        }
    }
}

/// One node's place in the rank table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedNode {
    pub node: String,
    pub address: String,
    /// The global rank of its first slot; its ranks are `first_rank..first_rank + slots`.
    pub first_rank: u32,
    pub slots: u32,
}

/// The ranks of one generation (`rendezvous/{g}/ranks`, JSON), fixed once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankTable {
    pub generation: u64,
    pub world_size: u32,
    /// In node-name order; ranks are assigned in this order.
    pub nodes: Vec<RankedNode>,
}

impl RankTable {
    /// The table for `members`: nodes ordered by name, ranks handed out in that order.
    pub fn build(generation: u64, members: &[MemberRecord]) -> Result<RankTable, RendezvousError> {
        let mut sorted: Vec<&MemberRecord> = members.iter().collect();
        sorted.sort_by(|a, b| a.node.cmp(&b.node));
        let mut nodes = Vec::with_capacity(sorted.len());
        let mut next: u32 = 0;
        for m in sorted {
            nodes.push(RankedNode {
                node: m.node.clone(),
                address: m.address.clone(),
                first_rank: next,
                slots: m.slots,
            });
            next = next.checked_add(m.slots).ok_or_else(|| {
                RendezvousError::Invalid(format!(
                    "the members' slots add up to more than {} ranks",
                    u32::MAX
                ))
            })?;
        }
        Ok(RankTable {
            generation,
            world_size: next,
            nodes,
        })
    }

    /// A node's entry, if the table holds it.
    pub fn node(&self, name: &str) -> Option<&RankedNode> {
        self.nodes.iter().find(|n| n.node == name)
    }

    /// The nodes' names, in rank order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node.clone()).collect()
    }
}

/// The longest timeout or last call a rendezvous accepts (a day).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// When a generation's rank table is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// The table is never fixed with fewer members.
    pub min_members: usize,
    /// The table is fixed as soon as this many have joined.
    pub max_members: usize,
    /// A join gives up after this long with fewer than `min_members` present.
    pub timeout: Duration,
    /// With at least `min_members` present, the table is fixed once no one new has joined for
    /// this long.
    pub last_call: Duration,
}

impl RendezvousConfig {
    /// A fixed-size gang: exactly `members`, waiting up to `timeout`.
    pub fn exactly(members: usize, timeout: Duration) -> RendezvousConfig {
        RendezvousConfig {
            min_members: members,
            max_members: members,
            timeout,
            last_call: Duration::ZERO,
        }
    }

    pub(super) fn check(&self) -> Result<(), RendezvousError> {
        if self.min_members == 0 || self.min_members > self.max_members {
            return Err(RendezvousError::Invalid(format!(
                "min_members {} and max_members {}: need 1 <= min_members <= max_members",
                self.min_members, self.max_members
            )));
        }
        if self.timeout.is_zero() {
            return Err(RendezvousError::Invalid(
                "a rendezvous timeout of zero; give the members time to arrive".into(),
            ));
        }
        for (what, d) in [("timeout", self.timeout), ("last call", self.last_call)] {
            if d > MAX_WAIT {
                return Err(RendezvousError::Invalid(format!(
                    "a rendezvous {what} of {d:?} is too long; give at most {MAX_WAIT:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, slots: u32) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            slots,
            address: format!("{node}:7000"),
            generation: 4,
        }
    }

    #[test]
    fn ranks_follow_node_names() {
        let table = RankTable::build(4, &[record("c", 1), record("a", 2), record("b", 3)]).unwrap();
        assert_eq!(table.world_size, 6);
        let ranks: Vec<(String, u32)> = table
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.first_rank))
            .collect();
        assert_eq!(ranks, [("a".into(), 0), ("b".into(), 2), ("c".into(), 5)]);
        assert_eq!(table.node("b").unwrap().slots, 3);
        assert!(table.node("d").is_none());
    }

    #[test]
    fn bad_members_and_configs_are_refused() {
        let too_many = RankTable::build(1, &[record("a", u32::MAX), record("b", 1)]);
        assert!(too_many.is_err());
        for bad in ["", "a/b"] {
            let m = Member {
                node: bad.into(),
                slots: 1,
                address: String::new(),
            };
            assert!(m.check().is_err());
        }
        let none = Member {
            node: "a".into(),
            slots: 0,
            address: String::new(),
        };
        assert!(none.check().unwrap_err().to_string().contains("0 slots"));
        let mut config = RendezvousConfig::exactly(2, Duration::from_secs(1));
        config.check().unwrap();
        config.min_members = 3;
        assert!(config.check().is_err());
        config.min_members = 0;
        assert!(config.check().is_err());
        let endless = RendezvousConfig::exactly(2, Duration::MAX);
        assert!(
            endless
                .check()
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
    }
}
