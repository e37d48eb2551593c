//! Collectives across the ranks of a data-parallel gang, and the shard plan that splits the
//! flat parameter space among them.
//!
//! ```text
//! flat space 0 ──────────────────────────────────────────── N
//!            │ rank 0 owns │ rank 1 owns │ rank 2 │ rank 3 │   ShardPlan (even split)
//!
//! reduce_scatter(segments): each rank ends with Σ_ranks of the part of every segment it owns
//! all_gather(segments):     each rank ends with every owner's values of every segment
//! all_reduce = reduce_scatter + all_gather over the whole buffer (the same sums, bit for bit)
//! ```
//!
//! Implementations: [`Solo`] for a world of one, and [`ring::RingTcp`], rings over TCP for CPU
//! ranks. Both work on host `f32` slices; the trainer stages device buffers through the host,
//! unless the backend brings collectives on its own buffers ([`device::DeviceCollective`]:
//! NCCL on GPUs), which then carry the gradients and parameters. Every reduction runs in a fixed
//! order that depends only on the world size, so a run is bit-reproducible for a given rank
//! count, and the sharding stages reach identical weights.

pub mod device;
pub mod rendezvous;
pub mod ring;

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use thiserror::Error;

/// Why a collective (or the rendezvous before it) failed.
#[derive(Debug, Error)]
pub enum CollectiveError {
    #[error("rank {peer} at {addr}: {op} failed: {source}")]
    Io {
        peer: u32,
        addr: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rank {peer} at {addr} closed the connection during {op}; it exited or crashed (see its log)"
    )]
    PeerClosed {
        peer: u32,
        addr: String,
        op: &'static str,
    },
    #[error(
        "rank {peer} at {addr} sent nothing for {seconds} s during {op}; it is hung or stopped \
         (raise the collective timeout if steps are really this slow)"
    )]
    Timeout {
        peer: u32,
        addr: String,
        op: &'static str,
        seconds: u64,
    },
    #[error("the collective was aborted ({op})")]
    Aborted { op: &'static str },
    #[error("protocol error from rank {peer}: {detail}")]
    Protocol { peer: u32, detail: String },
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),
    #[error("device collective {op}: {detail}")]
    Device { op: &'static str, detail: String },
}

/// An even split of the flat space `0..total` into one contiguous range per rank (the first
/// `total % world` ranks get one element more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    total: usize,
    world: u32,
}

impl ShardPlan {
    /// A plan for `world` ranks (at least 1).
    pub fn new(total: usize, world: u32) -> ShardPlan {
        ShardPlan {
            total,
            world: world.max(1),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn world_size(&self) -> u32 {
        self.world
    }

    /// The range `rank` owns.
    pub fn range(&self, rank: u32) -> Range<usize> {
        let w = self.world as usize;
        let (base, extra) = (self.total / w, self.total % w);
        let r = rank as usize;
        let start = r * base + r.min(extra);
        start..start + base + usize::from(r < extra)
    }

    /// The part of `segment` that `rank` owns (empty when none).
    pub fn owned_part(&self, segment: &Range<usize>, rank: u32) -> Range<usize> {
        let own = self.range(rank);
        let start = segment.start.max(own.start);
        let end = segment.end.min(own.end).max(start);
        start..end
    }
}

/// Stops a gang's collectives from another thread: blocked sends and receives return
/// [`CollectiveError::Aborted`] at once, and so does every later call.
#[derive(Clone, Debug, Default)]
pub struct AbortHandle {
    flag: Arc<AtomicBool>,
    streams: Arc<Vec<std::net::TcpStream>>,
}

impl AbortHandle {
    pub(crate) fn new(flag: Arc<AtomicBool>, streams: Vec<std::net::TcpStream>) -> AbortHandle {
        AbortHandle {
            flag,
            streams: Arc::new(streams),
        }
    }

    pub fn abort(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for stream in self.streams.iter() {
            // Already-closed sockets are fine: the point is that nothing stays blocked.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The collectives data parallelism needs, over host `f32` buffers.
pub trait Collective: Send {
    fn rank(&self) -> u32;
    fn world_size(&self) -> u32;

    /// Sums `data` across ranks over `segments` (disjoint ranges of `data`): afterwards the
    /// part of each segment that `plan` gives this rank holds the sum over all ranks; the rest
    /// of `data` is unspecified. The summation order of an element depends only on which rank
    /// owns it, never on how the elements are grouped into segments or calls.
    fn reduce_scatter(
        &mut self,
        data: &mut [f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError>;

    /// Afterwards the part of each segment that `plan` gives rank r holds rank r's values, on
    /// every rank.
    fn all_gather(
        &mut self,
        data: &mut [f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError>;

    /// Every rank's `bytes`, in rank order, on every rank.
    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;

    /// `root`'s `bytes` on every rank.
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: u32) -> Result<(), CollectiveError>;

    /// Cancels this gang's collectives from another thread.
    fn abort_handle(&self) -> AbortHandle;

    /// Sums `data` across ranks, whole: reduce-scatter then all-gather with the even plan.
    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let plan = ShardPlan::new(data.len(), self.world_size());
        let whole = 0..data.len();
        self.reduce_scatter(data, std::slice::from_ref(&whole), &plan)?;
        self.all_gather(data, std::slice::from_ref(&whole), &plan)
    }

    /// Element-wise sums of small `f64` vectors, added in rank order (identical on every rank).
    fn sum_f64(&mut self, values: &[f64]) -> Result<Vec<f64>, CollectiveError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.all_gather_bytes(&bytes)?;
        let mut sums = vec![0.0f64; values.len()];
        for (peer, item) in all.iter().enumerate() {
            if item.len() != bytes.len() {
                return Err(CollectiveError::Protocol {
                    peer: peer as u32,
                    detail: format!(
                        "sent {} bytes of f64s, expected {}",
                        item.len(),
                        bytes.len()
                    ),
                });
            }
            for (sum, chunk) in sums.iter_mut().zip(item.chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                *sum += f64::from_le_bytes(word);
            }
        }
        Ok(sums)
    }

    /// Returns when every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.all_gather_bytes(&[]).map(|_| ())
    }
}

/// The world of one: every collective is the identity.
#[derive(Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> u32 {
        0
    }
    fn world_size(&self) -> u32 {
        1
    }
    fn reduce_scatter(
        &mut self,
        _: &mut [f32],
        _: &[Range<usize>],
        _: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_gather(
        &mut self,
        _: &mut [f32],
        _: &[Range<usize>],
        _: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![bytes.to_vec()])
    }
    fn broadcast_bytes(&mut self, _: &mut Vec<u8>, _: u32) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn abort_handle(&self) -> AbortHandle {
        AbortHandle::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_plan_covers_the_space_once_in_rank_order() {
        for total in [0usize, 1, 7, 8, 1001] {
            for world in 1..=5u32 {
                let plan = ShardPlan::new(total, world);
                let mut next = 0;
                for r in 0..world {
                    let range = plan.range(r);
                    assert_eq!(range.start, next, "total {total} world {world}");
                    next = range.end;
                    assert!(range.len() <= total.div_ceil(world as usize));
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn owned_part_clips_a_segment_to_the_owner() {
        let plan = ShardPlan::new(10, 3); // 0..4, 4..7, 7..10
        assert_eq!(plan.owned_part(&(2..8), 0), 2..4);
        assert_eq!(plan.owned_part(&(2..8), 1), 4..7);
        assert_eq!(plan.owned_part(&(2..8), 2), 7..8);
        assert!(plan.owned_part(&(0..3), 2).is_empty());
    }
}
