//! The coordination-store key layout: where live run state lives.
//!
//! ```text
//! /tessera/v1/runs/{namespace}/{name}/
//!   generation                      the gang's generation (u64 as decimal text, created as "1",
//!                                   bumped by compare-and-swap)
//!   members/{node}                  one per live agent, held by its lease (JSON member record:
//!                                   node, slots, address, the generation it last joined)
//!   rendezvous/{generation}/members/{node}
//!                                   the node joined that generation; held by the same lease
//!                                   (the same JSON member record)
//!   rendezvous/{generation}/ranks   the rank table fixed for that generation (JSON: generation,
//!                                   world size, nodes in name order with first rank and slots);
//!                                   written once, by create-if-absent, not leased
//!   rendezvous/{generation}/nccl-id the NCCL unique id made by rank 0
//!   rendezvous/{generation}/peers/{rank}  a rank's TCP address (CPU transport)
//!   rendezvous/{generation}/done/{node}   the node's ranks ended cleanly (it leaves on purpose)
//!   rendezvous/{generation}/ended   why that generation ended, written with the bump
//!                                   (`records::GenerationEnded`, JSON)
//!   waiting/{node}                  a node the rank table of an elastic gang was fixed without,
//!                                   waiting to join (leased JSON member record): the gang
//!                                   grows at its next checkpoint
//!   progress                        the newest progress report (`records::AgentProgress`)
//!   checkpoints/latest              the newest committed checkpoint (`status::CheckpointRef`)
//!   checkpoints/commits/{step}      the commit of that step (`records::CheckpointCommit`),
//!                                   written only while its writer's generation is current
//! ```
//!
//! Every key is built here; no other code joins key text.
//!
//! Names and namespaces are Kubernetes names (DNS labels), so they never contain `/`.

/// The root of every key Tessera writes.
pub const ROOT: &str = "/tessera/v1/runs";

/// The keys of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunKeys {
    prefix: String,
}

impl RunKeys {
    pub fn new(namespace: &str, name: &str) -> RunKeys {
        RunKeys {
            prefix: format!("{ROOT}/{namespace}/{name}/"),
        }
    }

    /// Every key of the run starts with this (ends in `/`), for watches and deletes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn generation(&self) -> String {
        format!("{}generation", self.prefix)
    }

    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix)
    }

    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    pub fn rendezvous_prefix(&self, generation: u64) -> String {
        format!("{}rendezvous/{generation}/", self.prefix)
    }

    /// Every join record of a generation (ends in `/`).
    pub fn rendezvous_members_prefix(&self, generation: u64) -> String {
        format!("{}members/", self.rendezvous_prefix(generation))
    }

    /// One node's join record for a generation.
    pub fn rendezvous_member(&self, generation: u64, node: &str) -> String {
        format!("{}{node}", self.rendezvous_members_prefix(generation))
    }

    /// Every generation's rendezvous keys (ends in `/`).
    pub fn rendezvous_root(&self) -> String {
        format!("{}rendezvous/", self.prefix)
    }

    pub fn rank_table(&self, generation: u64) -> String {
        format!("{}ranks", self.rendezvous_prefix(generation))
    }

    pub fn nccl_unique_id(&self, generation: u64) -> String {
        format!("{}nccl-id", self.rendezvous_prefix(generation))
    }

    /// Why `generation` ended, written by the agent whose bump ended it.
    pub fn generation_end(&self, generation: u64) -> String {
        format!("{}ended", self.rendezvous_prefix(generation))
    }

    /// Every rank's address of a generation (ends in `/`).
    pub fn peers_prefix(&self, generation: u64) -> String {
        format!("{}peers/", self.rendezvous_prefix(generation))
    }

    pub fn peer(&self, generation: u64, rank: u32) -> String {
        format!("{}{rank}", self.peers_prefix(generation))
    }

    /// Written by a node whose ranks ended cleanly, before it leaves `generation`, so its
    /// peers do not take its departure for a failure.
    pub fn node_done(&self, generation: u64, node: &str) -> String {
        format!("{}done/{node}", self.rendezvous_prefix(generation))
    }

    /// Every waiting node (ends in `/`).
    pub fn waiting_prefix(&self) -> String {
        format!("{}waiting/", self.prefix)
    }

    /// A node waiting to join an elastic gang that runs without it.
    pub fn waiting(&self, node: &str) -> String {
        format!("{}{node}", self.waiting_prefix())
    }

    pub fn progress(&self) -> String {
        format!("{}progress", self.prefix)
    }

    pub fn latest_checkpoint(&self) -> String {
        format!("{}checkpoints/latest", self.prefix)
    }

    /// Every checkpoint commit record (ends in `/`).
    pub fn checkpoint_commits_prefix(&self) -> String {
        format!("{}checkpoints/commits/", self.prefix)
    }

    /// The commit record of `step` (zero-padded, so the keys sort by step).
    pub fn checkpoint_commit(&self, step: u64) -> String {
        format!("{}{step:010}", self.checkpoint_commits_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = RunKeys::new("ml", "gpt2-small");
        assert_eq!(keys.prefix(), "/tessera/v1/runs/ml/gpt2-small/");
        assert_eq!(
            keys.generation(),
            "/tessera/v1/runs/ml/gpt2-small/generation"
        );
        assert_eq!(
            keys.member("node-a"),
            "/tessera/v1/runs/ml/gpt2-small/members/node-a"
        );
        assert_eq!(
            keys.rendezvous_member(3, "node-a"),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/members/node-a"
        );
        assert!(
            keys.rendezvous_member(3, "node-a")
                .starts_with(&keys.rendezvous_members_prefix(3))
        );
        assert!(
            keys.rendezvous_prefix(3)
                .starts_with(&keys.rendezvous_root())
        );
        assert_eq!(
            keys.rank_table(3),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/ranks"
        );
        assert_eq!(
            keys.nccl_unique_id(3),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/nccl-id"
        );
        assert_eq!(
            keys.peer(3, 7),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/peers/7"
        );
        assert!(keys.peer(3, 7).starts_with(&keys.peers_prefix(3)));
        assert_eq!(
            keys.node_done(3, "node-a"),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/done/node-a"
        );
        assert_eq!(
            keys.generation_end(3),
            "/tessera/v1/runs/ml/gpt2-small/rendezvous/3/ended"
        );
        assert_eq!(keys.progress(), "/tessera/v1/runs/ml/gpt2-small/progress");
        assert_eq!(
            keys.latest_checkpoint(),
            "/tessera/v1/runs/ml/gpt2-small/checkpoints/latest"
        );
        assert_eq!(
            keys.checkpoint_commit(120),
            "/tessera/v1/runs/ml/gpt2-small/checkpoints/commits/0000000120"
        );
        assert!(
            keys.checkpoint_commit(120)
                .starts_with(&keys.checkpoint_commits_prefix())
        );
        // Every key lives under the run's prefix, so one prefix watch sees them all.
        for key in [
            keys.generation(),
            keys.members_prefix(),
            keys.rendezvous_prefix(1),
        ] {
            assert!(key.starts_with(keys.prefix()));
        }
        // Runs whose names share a prefix do not share keys.
        assert!(
            !RunKeys::new("ml", "a")
                .generation()
                .starts_with(RunKeys::new("ml", "ab").prefix())
        );
    }
}
