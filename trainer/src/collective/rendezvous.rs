//! Static rendezvous: how standalone ranks find each other from rank 0's address alone
//! (`--master-addr host:port`, as MASTER_ADDR works in the PyTorch world), then connect the
//! TCP ring.
//!
//! ```text
//! every rank: bind a data listener (port 0) on the interface that reaches rank 0
//! rank r > 0 ──hello {rank, world, generation, data addr}──▶ rank 0 (listening on master-addr)
//! rank 0: all W-1 hellos within the timeout? ──▶ table {peers by rank} to everyone
//!         otherwise                            ──▶ error naming the missing ranks to everyone
//! every rank: connect to (r+1) mod W, accept (r-1) mod W, check its handshake ──▶ RingTcp
//! ```
//!
//! Under an agent, the peer table comes from the agent instead ([`connect_ring`] with the
//! table it hands out); the ring step is the same.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Collective, CollectiveError, Solo, ring::RingTcp};

/// Where and how to meet the other ranks.
#[derive(Clone, Debug)]
pub struct StaticRendezvous {
    /// Rank 0's `host:port`.
    pub master_addr: String,
    pub rank: u32,
    pub world_size: u32,
    /// Ranks of another generation are refused.
    pub generation: u64,
    /// How long to wait for every rank to arrive.
    pub timeout: Duration,
    /// How long a collective may wait for a peer before giving up.
    pub collective_timeout: Duration,
}

/// What ranks tell rank 0, and what rank 0 answers.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
enum Message {
    Hello {
        rank: u32,
        world_size: u32,
        generation: u64,
        data_addr: String,
    },
    Table {
        peers: Vec<String>,
    },
    Refused {
        reason: String,
    },
}

const HANDSHAKE_MAGIC: &[u8; 4] = b"TSR1";

fn rendezvous_error(message: impl Into<String>) -> CollectiveError {
    CollectiveError::Rendezvous(message.into())
}

/// Meets the other ranks and returns this rank's collectives ([`Solo`] for a world of 1).
pub fn rendezvous(config: &StaticRendezvous) -> Result<Box<dyn Collective>, CollectiveError> {
    if config.world_size == 0 || config.rank >= config.world_size {
        return Err(rendezvous_error(format!(
            "rank {} is outside a world of {} ranks; use --rank 0..{} with --world-size {}",
            config.rank,
            config.world_size,
            config.world_size.saturating_sub(1),
            config.world_size
        )));
    }
    if config.world_size == 1 {
        return Ok(Box::new(Solo));
    }
    let deadline = Instant::now() + config.timeout;
    let master = resolve(&config.master_addr)?;
    let (data_listener, peers) = if config.rank == 0 {
        gather_as_master(config, master, deadline)?
    } else {
        join_master(config, master, deadline)?
    };
    connect_ring(
        config.rank,
        &peers,
        data_listener,
        deadline,
        config.collective_timeout,
    )
    .map(|ring| Box::new(ring) as Box<dyn Collective>)
}

fn resolve(addr: &str) -> Result<SocketAddr, CollectiveError> {
    addr.to_socket_addrs()
        .map_err(|e| {
            rendezvous_error(format!(
                "--master-addr {addr:?} does not resolve ({e}); give host:port"
            ))
        })?
        .next()
        .ok_or_else(|| rendezvous_error(format!("--master-addr {addr:?} has no address")))
}

fn bind_data(ip: IpAddr) -> Result<(TcpListener, String), CollectiveError> {
    let listener = TcpListener::bind((ip, 0))
        .map_err(|e| rendezvous_error(format!("cannot listen for peers on {ip}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| rendezvous_error(format!("data listener has no address: {e}")))?;
    Ok((listener, addr.to_string()))
}

fn send_line(stream: &mut TcpStream, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn read_line(stream: &TcpStream, limit: Duration) -> std::io::Result<Message> {
    stream.set_read_timeout(Some(limit.max(Duration::from_millis(10))))?;
    let mut line = String::new();
    BufReader::new(stream.take(1 << 20)).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Rank 0: collect every hello, hand out the table (or the error) to everyone.
fn gather_as_master(
    config: &StaticRendezvous,
    master: SocketAddr,
    deadline: Instant,
) -> Result<(TcpListener, Vec<String>), CollectiveError> {
    let listener = TcpListener::bind(master).map_err(|e| {
        rendezvous_error(format!(
            "rank 0 cannot listen on --master-addr {master}: {e}"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| rendezvous_error(format!("master listener: {e}")))?;
    let (data_listener, data_addr) = bind_data(master.ip())?;
    let world = config.world_size as usize;
    let mut peers: Vec<Option<String>> = vec![None; world];
    peers[0] = Some(data_addr);
    let mut arrived: Vec<(u32, TcpStream)> = Vec::new();
    while arrived.len() + 1 < world && Instant::now() < deadline {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(rendezvous_error(format!("accepting ranks: {e}"))),
        };
        // Accepted sockets may inherit non-blocking mode on some platforms.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let refusal = match read_line(&stream, remaining) {
            Ok(Message::Hello {
                rank,
                world_size,
                generation,
                data_addr,
            }) => {
                if world_size != config.world_size {
                    Some(format!(
                        "rank {rank} says the world has {world_size} ranks, rank 0 says {}; \
                         start every rank with the same --world-size",
                        config.world_size
                    ))
                } else if generation != config.generation {
                    Some(format!(
                        "rank {rank} belongs to generation {generation}, this rendezvous is \
                         generation {}; ranks of an old generation are refused",
                        config.generation
                    ))
                } else if rank == 0 || rank >= config.world_size {
                    Some(format!(
                        "rank {rank} is not a valid non-zero rank of a world of {}",
                        config.world_size
                    ))
                } else if peers[rank as usize].is_some() {
                    Some(format!(
                        "rank {rank} arrived twice; give every rank its own --rank"
                    ))
                } else {
                    peers[rank as usize] = Some(data_addr);
                    arrived.push((
                        rank,
                        stream
                            .try_clone()
                            .map_err(|e| rendezvous_error(format!("rank {rank}'s socket: {e}")))?,
                    ));
                    None
                }
            }
            Ok(other) => Some(format!("expected a hello, got {other:?}")),
            Err(e) => Some(format!("unreadable hello: {e}")),
        };
        if let Some(reason) = refusal {
            tracing::warn!(%reason, "refused a rank at rendezvous");
            let _ = send_line(&mut stream, &Message::Refused { reason });
        }
    }
    let missing: Vec<u32> = (0..config.world_size)
        .filter(|&r| peers[r as usize].is_none())
        .collect();
    if !missing.is_empty() {
        let reason = format!(
            "rank(s) {missing:?} of {} did not reach rank 0 at {master} within {} s",
            config.world_size,
            config.timeout.as_secs_f64()
        );
        for (_, stream) in &mut arrived {
            let _ = send_line(
                stream,
                &Message::Refused {
                    reason: reason.clone(),
                },
            );
        }
        return Err(rendezvous_error(reason));
    }
    let peers: Vec<String> = peers.into_iter().flatten().collect();
    for (rank, stream) in &mut arrived {
        send_line(
            stream,
            &Message::Table {
                peers: peers.clone(),
            },
        )
        .map_err(|e| rendezvous_error(format!("sending the table to rank {rank}: {e}")))?;
    }
    Ok((data_listener, peers))
}

/// Rank r > 0: reach rank 0 (retrying until the deadline), say hello, wait for the table.
fn join_master(
    config: &StaticRendezvous,
    master: SocketAddr,
    deadline: Instant,
) -> Result<(TcpListener, Vec<String>), CollectiveError> {
    let mut stream = loop {
        match TcpStream::connect_timeout(&master, Duration::from_millis(500)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(rendezvous_error(format!(
                    "rank {} could not reach rank 0 at {master} within {} s ({e}); is rank 0 \
                     running with the same --master-addr?",
                    config.rank,
                    config.timeout.as_secs_f64()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let local_ip = stream
        .local_addr()
        .map_err(|e| rendezvous_error(format!("connection to rank 0: {e}")))?
        .ip();
    let (data_listener, data_addr) = bind_data(local_ip)?;
    send_line(
        &mut stream,
        &Message::Hello {
            rank: config.rank,
            world_size: config.world_size,
            generation: config.generation,
            data_addr,
        },
    )
    .map_err(|e| rendezvous_error(format!("sending hello to rank 0 at {master}: {e}")))?;
    // Rank 0 answers when everyone is in or its timeout passes; allow it a little longer.
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    match read_line(&stream, remaining) {
        Ok(Message::Table { peers }) if peers.len() == config.world_size as usize => {
            Ok((data_listener, peers))
        }
        Ok(Message::Refused { reason }) => Err(rendezvous_error(reason)),
        Ok(other) => Err(rendezvous_error(format!(
            "rank 0 answered with {other:?}, expected a table of {} peers",
            config.world_size
        ))),
        Err(e) => Err(rendezvous_error(format!(
            "no table from rank 0 at {master}: {e}"
        ))),
    }
}

/// Connects this rank into the ring given every rank's data address: connect to the right
/// neighbour, accept the left one and check that it is who it should be.
pub fn connect_ring(
    rank: u32,
    peers: &[String],
    listener: TcpListener,
    deadline: Instant,
    collective_timeout: Duration,
) -> Result<RingTcp, CollectiveError> {
    let world = peers.len() as u32;
    let right_rank = (rank + 1) % world;
    let left_rank = (rank + world - 1) % world;
    let right_addr = peers[right_rank as usize].clone();
    let target = resolve(&right_addr)?;
    let mut right = loop {
        match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(rendezvous_error(format!(
                    "rank {rank} cannot connect to rank {right_rank} at {right_addr}: {e}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut hello = HANDSHAKE_MAGIC.to_vec();
    hello.extend_from_slice(&rank.to_le_bytes());
    right.write_all(&hello).map_err(|e| {
        rendezvous_error(format!(
            "handshake to rank {right_rank} at {right_addr}: {e}"
        ))
    })?;

    listener
        .set_nonblocking(true)
        .map_err(|e| rendezvous_error(format!("data listener: {e}")))?;
    let left = loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| rendezvous_error(format!("peer socket: {e}")))?;
                let remaining = deadline.saturating_duration_since(Instant::now());
                stream
                    .set_read_timeout(Some(remaining.max(Duration::from_millis(100))))
                    .map_err(|e| rendezvous_error(format!("peer socket: {e}")))?;
                let mut got = [0u8; 8];
                let ok = (&stream).read_exact(&mut got).is_ok()
                    && &got[..4] == HANDSHAKE_MAGIC
                    && u32::from_le_bytes([got[4], got[5], got[6], got[7]]) == left_rank;
                if ok {
                    break stream;
                }
                tracing::warn!(rank, "dropped a connection that is not rank {left_rank}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(rendezvous_error(format!(
                        "rank {left_rank} never connected to rank {rank}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(rendezvous_error(format!("accepting rank {left_rank}: {e}"))),
        }
    };
    RingTcp::new(
        rank,
        world,
        (left, peers[left_rank as usize].clone()),
        (right, right_addr),
        collective_timeout,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::ShardPlan;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn config(master: &str, rank: u32, world: u32, timeout_ms: u64) -> StaticRendezvous {
        StaticRendezvous {
            master_addr: master.to_string(),
            rank,
            world_size: world,
            generation: 0,
            timeout: Duration::from_millis(timeout_ms),
            collective_timeout: Duration::from_secs(10),
        }
    }

    /// Runs `body` on `world` ranks that met at a fresh master address.
    fn gang<T: Send>(world: u32, body: impl Fn(&mut dyn Collective) -> T + Sync) -> Vec<T> {
        let master = free_addr();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let (master, body) = (&master, &body);
                    s.spawn(move || {
                        let mut c = rendezvous(&config(master, rank, world, 10_000)).unwrap();
                        body(c.as_mut())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn rank_data(rank: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + rank as usize * 13) % 17) as f32 * 0.37 - 2.0)
            .collect()
    }

    #[test]
    fn all_reduce_sums_on_every_rank_for_several_world_sizes() {
        for world in [2u32, 3, 4] {
            let n = 1003;
            let results = gang(world, |c| {
                let mut data = rank_data(c.rank(), n);
                c.all_reduce(&mut data).unwrap();
                data
            });
            for i in 0..n {
                let want: f32 = (0..world).map(|r| rank_data(r, n)[i]).sum();
                for got in &results {
                    assert!((got[i] - want).abs() < 1e-4, "world {world} element {i}");
                }
            }
            // Every rank holds the same bits.
            assert!(results.windows(2).all(|w| w[0] == w[1]));
        }
    }

    #[test]
    fn segmented_reduce_scatter_matches_the_whole_one_bit_for_bit() {
        let n = 500;
        let plan = ShardPlan::new(n, 4);
        let segments = [0..37, 37..200, 200..201, 201..500];
        let results = gang(4, |c| {
            let mut whole = rank_data(c.rank(), n);
            c.reduce_scatter(&mut whole, std::slice::from_ref(&(0..n)), &plan)
                .unwrap();
            let mut split = rank_data(c.rank(), n);
            for s in &segments {
                c.reduce_scatter(&mut split, std::slice::from_ref(s), &plan)
                    .unwrap();
            }
            let own = plan.range(c.rank());
            (whole[own.clone()].to_vec(), split[own].to_vec())
        });
        for (whole, split) in results {
            assert_eq!(whole, split);
        }
    }

    #[test]
    fn bytes_gather_broadcast_and_sums_agree() {
        let results = gang(3, |c| {
            let all = c.all_gather_bytes(&[c.rank() as u8; 3]).unwrap();
            let mut b = if c.rank() == 1 {
                b"hello".to_vec()
            } else {
                Vec::new()
            };
            c.broadcast_bytes(&mut b, 1).unwrap();
            let sums = c.sum_f64(&[c.rank() as f64, 1.0]).unwrap();
            c.barrier().unwrap();
            (all, b, sums)
        });
        for (all, b, sums) in results {
            assert_eq!(all, vec![vec![0u8; 3], vec![1u8; 3], vec![2u8; 3]]);
            assert_eq!(b, b"hello");
            assert_eq!(sums, vec![3.0, 3.0]);
        }
    }

    #[test]
    fn a_missing_rank_fails_the_rendezvous_for_everyone_naming_it() {
        let master = free_addr();
        let results: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = [0u32, 1]
                .into_iter()
                .map(|rank| {
                    let master = &master;
                    s.spawn(move || match rendezvous(&config(master, rank, 3, 800)) {
                        Ok(_) => "joined".to_string(),
                        Err(e) => e.to_string(),
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for message in results {
            assert!(message.contains("[2]"), "{message}");
            assert!(message.contains("did not reach rank 0"), "{message}");
        }
    }

    #[test]
    fn mismatched_world_and_old_generation_are_refused() {
        let master = free_addr();
        let outcome: Vec<String> = std::thread::scope(|s| {
            let m = &master;
            let zero = s.spawn(move || {
                rendezvous(&config(m, 0, 2, 1500))
                    .err()
                    .map(|e| e.to_string())
            });
            std::thread::sleep(Duration::from_millis(100));
            let mut old = config(m, 1, 2, 1500);
            old.generation = 7;
            let one = s.spawn(move || rendezvous(&old).err().map(|e| e.to_string()));
            vec![
                zero.join().unwrap().unwrap_or_default(),
                one.join().unwrap().unwrap_or_default(),
            ]
        });
        assert!(outcome[1].contains("old generation"), "{}", outcome[1]);
        assert!(outcome[0].contains("[1]"), "{}", outcome[0]);
    }

    #[test]
    fn abort_unblocks_a_rank_waiting_for_a_silent_peer() {
        let master = free_addr();
        std::thread::scope(|s| {
            let m = &master;
            let (tx, rx) = std::sync::mpsc::channel();
            let waiting = s.spawn(move || {
                let mut c = rendezvous(&config(m, 0, 2, 5000)).unwrap();
                tx.send(c.abort_handle()).unwrap();
                c.barrier().map(|_| ()).unwrap_err().to_string()
            });
            let silent = s.spawn(move || {
                let c = rendezvous(&config(m, 1, 2, 5000)).unwrap();
                std::thread::sleep(Duration::from_millis(1500));
                drop(c);
            });
            let handle = rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            handle.abort();
            let message = waiting.join().unwrap();
            assert!(message.contains("aborted"), "{message}");
            silent.join().unwrap();
        });
    }

    #[test]
    fn a_dead_peer_is_reported_not_waited_for() {
        let master = free_addr();
        std::thread::scope(|s| {
            let m = &master;
            let survivor = s.spawn(move || {
                let mut c = rendezvous(&config(m, 0, 2, 5000)).unwrap();
                c.barrier().map(|_| ()).unwrap_err().to_string()
            });
            s.spawn(move || drop(rendezvous(&config(m, 1, 2, 5000)).unwrap()));
            let message = survivor.join().unwrap();
            assert!(message.contains("closed the connection"), "{message}");
        });
    }
}
