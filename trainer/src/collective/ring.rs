//! Ring collectives over TCP for CPU ranks: each rank sends to its right neighbour and
//! receives from its left, W-1 hops per collective, so every link carries (W-1)/W of the data.
//!
//! ```text
//! reduce-scatter, hop k (0-based): rank r sends chunk (r-k-1) mod W, receives chunk (r-k-2)
//!   mod W and adds it into its own copy. After W-1 hops rank r holds the full sum of chunk r,
//!   accumulated in the fixed order r+1, r+2, …, r (mod W): deterministic for a world size.
//! all-gather, hop k: rank r sends chunk (r-k) mod W, receives chunk (r-k-1) mod W in place.
//! ```
//!
//! A chunk is rank c's owned part of every segment, packed into one frame (u64 length, then
//! little-endian bytes). Sends run on a scoped thread while the receive proceeds, so a ring
//! of full socket buffers cannot deadlock. Reads time out after the collective timeout, and
//! an [`AbortHandle`] shuts the sockets down from outside.

use std::{
    io::{Read, Write},
    net::TcpStream,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{AbortHandle, Collective, CollectiveError, ShardPlan};

/// One rank's place in a TCP ring.
pub struct RingTcp {
    rank: u32,
    world: u32,
    /// Receives from rank (r-1) mod W.
    left: TcpStream,
    left_addr: String,
    /// Sends to rank (r+1) mod W.
    right: TcpStream,
    right_addr: String,
    timeout: Duration,
    aborted: Arc<AtomicBool>,
    abort: AbortHandle,
    send: Vec<u8>,
    recv: Vec<u8>,
}

impl RingTcp {
    /// A ring from connected neighbours (see [`super::rendezvous`]); world ≥ 2.
    pub(crate) fn new(
        rank: u32,
        world: u32,
        left: (TcpStream, String),
        right: (TcpStream, String),
        timeout: Duration,
    ) -> Result<RingTcp, CollectiveError> {
        let io = |peer, addr: &str, source| CollectiveError::Io {
            peer,
            addr: addr.to_string(),
            op: "socket setup",
            source,
        };
        let left_rank = (rank + world - 1) % world;
        let right_rank = (rank + 1) % world;
        for (stream, peer, addr) in [
            (&left.0, left_rank, &left.1),
            (&right.0, right_rank, &right.1),
        ] {
            stream.set_nodelay(true).map_err(|e| io(peer, addr, e))?;
        }
        left.0
            .set_read_timeout(Some(timeout))
            .map_err(|e| io(left_rank, &left.1, e))?;
        right
            .0
            .set_write_timeout(Some(timeout))
            .map_err(|e| io(right_rank, &right.1, e))?;
        let clones = [&left.0, &right.0]
            .iter()
            .filter_map(|s| s.try_clone().ok())
            .collect();
        let aborted = Arc::new(AtomicBool::new(false));
        Ok(RingTcp {
            rank,
            world,
            abort: AbortHandle::new(aborted.clone(), clones),
            left: left.0,
            left_addr: left.1,
            right: right.0,
            right_addr: right.1,
            timeout,
            aborted,
            send: Vec::new(),
            recv: Vec::new(),
        })
    }

    fn left_rank(&self) -> u32 {
        (self.rank + self.world - 1) % self.world
    }

    fn right_rank(&self) -> u32 {
        (self.rank + 1) % self.world
    }

    /// Sends `self.send` to the right while receiving one frame from the left into
    /// `self.recv`.
    fn exchange(&mut self, op: &'static str) -> Result<(), CollectiveError> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(CollectiveError::Aborted { op });
        }
        let (right_rank, left_rank) = (self.right_rank(), self.left_rank());
        let seconds = self.timeout.as_secs();
        let aborted = &self.aborted;
        let classify = |peer: u32, addr: &str, source: std::io::Error| {
            use std::io::ErrorKind::*;
            if aborted.load(Ordering::SeqCst) {
                CollectiveError::Aborted { op }
            } else {
                match source.kind() {
                    WouldBlock | TimedOut => CollectiveError::Timeout {
                        peer,
                        addr: addr.to_string(),
                        op,
                        seconds,
                    },
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                        CollectiveError::PeerClosed {
                            peer,
                            addr: addr.to_string(),
                            op,
                        }
                    }
                    _ => CollectiveError::Io {
                        peer,
                        addr: addr.to_string(),
                        op,
                        source,
                    },
                }
            }
        };
        let (right, send) = (&mut self.right, &self.send);
        let (left, recv) = (&mut self.left, &mut self.recv);
        let (sent, received) = std::thread::scope(|scope| {
            let sender = scope.spawn(move || -> std::io::Result<()> {
                right.write_all(&(send.len() as u64).to_le_bytes())?;
                right.write_all(send)?;
                right.flush()
            });
            let received = (|| -> std::io::Result<()> {
                let mut len = [0u8; 8];
                left.read_exact(&mut len)?;
                let len = u64::from_le_bytes(len) as usize;
                recv.clear();
                recv.resize(len, 0);
                left.read_exact(recv)
            })();
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            (sent, received)
        });
        received.map_err(|e| classify(left_rank, &self.left_addr, e))?;
        sent.map_err(|e| classify(right_rank, &self.right_addr, e))
    }

    /// Packs chunk `chunk` (its owned part of every segment) into the send buffer.
    fn pack(&mut self, data: &[f32], segments: &[Range<usize>], plan: &ShardPlan, chunk: u32) {
        self.send.clear();
        for segment in segments {
            for value in &data[plan.owned_part(segment, chunk)] {
                self.send.extend_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// Checks that the received frame has exactly chunk `chunk`'s size.
    fn expect_chunk(
        &self,
        segments: &[Range<usize>],
        plan: &ShardPlan,
        chunk: u32,
    ) -> Result<(), CollectiveError> {
        let want: usize = segments
            .iter()
            .map(|s| plan.owned_part(s, chunk).len() * 4)
            .sum();
        if self.recv.len() != want {
            return Err(CollectiveError::Protocol {
                peer: self.left_rank(),
                detail: format!(
                    "sent {} bytes for chunk {chunk}, expected {want}; are all ranks running \
                     the same model and sharding?",
                    self.recv.len()
                ),
            });
        }
        Ok(())
    }

    /// Checks that every segment lies inside `data`.
    fn check_segments(
        &self,
        data: &[f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        let bad = segments
            .iter()
            .find(|s| s.start > s.end || s.end > data.len() || s.end > plan.total());
        match bad {
            Some(s) => Err(CollectiveError::Protocol {
                peer: self.rank,
                detail: format!(
                    "segment {s:?} lies outside a buffer of {} (plan of {})",
                    data.len(),
                    plan.total()
                ),
            }),
            None => Ok(()),
        }
    }
}

impl RingTcp {
    /// W-1 hops; at hop k this rank sends chunk (r-k-lag) mod W and folds the chunk
    /// (r-k-lag-1) mod W it receives into `data` with `combine`.
    fn ring_pass(
        &mut self,
        data: &mut [f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
        lag: u32,
        op: &'static str,
        combine: fn(&mut f32, f32),
    ) -> Result<(), CollectiveError> {
        self.check_segments(data, segments, plan)?;
        let (r, w) = (self.rank, self.world);
        for k in 0..w - 1 {
            self.pack(data, segments, plan, back(r, k + lag, w));
            self.exchange(op)?;
            let chunk = back(r, k + lag + 1, w);
            self.expect_chunk(segments, plan, chunk)?;
            let mut incoming = self.recv.chunks_exact(4);
            for segment in segments {
                for value in &mut data[plan.owned_part(segment, chunk)] {
                    if let Some(b) = incoming.next() {
                        combine(value, f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `(r - k) mod w` for small k.
fn back(r: u32, k: u32, w: u32) -> u32 {
    (r + w * 2 - k % w) % w
}

impl Collective for RingTcp {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn world_size(&self) -> u32 {
        self.world
    }

    fn reduce_scatter(
        &mut self,
        data: &mut [f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        self.ring_pass(data, segments, plan, 1, "reduce-scatter", |v, x| *v += x)
    }

    fn all_gather(
        &mut self,
        data: &mut [f32],
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        self.ring_pass(data, segments, plan, 0, "all-gather", |v, x| *v = x)
    }

    fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let (r, w) = (self.rank, self.world);
        let mut items: Vec<Vec<u8>> = vec![Vec::new(); w as usize];
        items[r as usize] = bytes.to_vec();
        for k in 0..w - 1 {
            self.send.clear();
            self.send.extend_from_slice(&items[back(r, k, w) as usize]);
            self.exchange("all-gather")?;
            items[back(r, k + 1, w) as usize] = std::mem::take(&mut self.recv);
        }
        Ok(items)
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: u32) -> Result<(), CollectiveError> {
        // A chain root → root+1 → … → root-1, one frame per hop; ranks past their turn send an
        // empty frame so every rank does the same W-1 exchanges.
        let (r, w) = (self.rank, self.world);
        let position = (r + w - root % w) % w; // 0 for the root
        for k in 0..w - 1 {
            self.send.clear();
            if position == k {
                self.send.extend_from_slice(bytes);
            }
            self.exchange("broadcast")?;
            if position == k + 1 {
                *bytes = std::mem::take(&mut self.recv);
            }
        }
        Ok(())
    }

    fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }
}
