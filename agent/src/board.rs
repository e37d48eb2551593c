//! The board: what this agent knows about its ranks in the current generation — their
//! heartbeats and step progress, the directive they get back, and the newest committed
//! checkpoint. Shared by the gRPC service (which writes it) and the generation loop (which
//! reads it to detect hangs and publish progress).

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_api::{
    proto::agent::{Directive, RankPhase},
    status::CheckpointRef,
};
use tessera_store::RankTable;

/// One local rank as its heartbeats describe it.
#[derive(Clone, Debug)]
pub struct RankBeat {
    pub local_rank: u32,
    /// When the rank was started (before its first heartbeat, hang detection waits).
    pub started: Instant,
    pub last_beat: Option<Instant>,
    /// When the step last moved.
    pub last_progress: Instant,
    pub step: u64,
    pub phase: RankPhase,
    pub loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub tokens_per_second: Option<f64>,
}

/// Why a rank looks hung.
#[derive(Clone, Debug, PartialEq)]
pub enum Stall {
    /// No heartbeat for this long.
    Silent { rank: u32, seconds: f64 },
    /// Heartbeats, but the step has not moved for this long while training.
    NoProgress { rank: u32, step: u64, seconds: f64 },
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::Silent { rank, seconds } => {
                write!(f, "rank {rank} sent no heartbeat for {seconds:.1} s")
            }
            Stall::NoProgress {
                rank,
                step,
                seconds,
            } => write!(
                f,
                "rank {rank} made no step progress past step {step} for {seconds:.1} s"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    table: Option<RankTable>,
    first_rank: u32,
    slots: u32,
    directive: Option<Directive>,
    ranks: BTreeMap<u32, RankBeat>,
    last_checkpoint: Option<CheckpointRef>,
    resume_checkpoint: String,
}

/// The agent's view of its ranks, behind one lock.
#[derive(Debug, Default)]
pub struct Board {
    state: Mutex<State>,
}

/// What a rendezvous request needs to know about the current generation.
#[derive(Clone, Debug)]
pub struct GenerationView {
    pub generation: u64,
    pub table: RankTable,
    pub first_rank: u32,
    pub slots: u32,
    pub resume_checkpoint: String,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new generation: its table, this node's ranks, and a clean slate of heartbeats.
    pub fn begin_generation(
        &self,
        table: RankTable,
        first_rank: u32,
        slots: u32,
        resume_checkpoint: String,
    ) {
        let mut s = self.lock();
        let now = Instant::now();
        s.generation = table.generation;
        s.ranks = (0..slots)
            .map(|local| {
                (
                    first_rank + local,
                    RankBeat {
                        local_rank: local,
                        started: now,
                        last_beat: None,
                        last_progress: now,
                        step: 0,
                        phase: RankPhase::Initializing,
                        loss: None,
                        val_loss: None,
                        tokens_per_second: None,
                    },
                )
            })
            .collect();
        s.table = Some(table);
        s.first_rank = first_rank;
        s.slots = slots;
        s.directive = None;
        s.resume_checkpoint = resume_checkpoint;
    }

    /// The current generation for a rendezvous, if one is running.
    pub fn generation_view(&self) -> Option<GenerationView> {
        let s = self.lock();
        s.table.as_ref().map(|table| GenerationView {
            generation: s.generation,
            table: table.clone(),
            first_rank: s.first_rank,
            slots: s.slots,
            resume_checkpoint: s.resume_checkpoint.clone(),
        })
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Sets what every rank is told from now on (the strongest wins until the generation ends).
    pub fn direct(&self, directive: Directive) {
        let mut s = self.lock();
        let stronger = match s.directive {
            None => true,
            Some(current) => (directive as i32) > (current as i32),
        };
        if stronger {
            s.directive = Some(directive);
        }
    }

    /// Records a heartbeat; returns the directive for the rank, or `None` when the rank does
    /// not belong to this generation on this node.
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &self,
        generation: u64,
        rank: u32,
        step: u64,
        phase: RankPhase,
        loss: f64,
        val_loss: f64,
        tokens_per_second: f64,
    ) -> Option<Directive> {
        let mut s = self.lock();
        if generation != s.generation {
            return None;
        }
        let directive = s.directive.unwrap_or(Directive::Continue);
        let beat = s.ranks.get_mut(&rank)?;
        let now = Instant::now();
        beat.last_beat = Some(now);
        if step > beat.step {
            beat.step = step;
            beat.last_progress = now;
        }
        if phase != beat.phase {
            // A phase change is progress too (evaluation and checkpoints take time).
            beat.last_progress = now;
        }
        beat.phase = phase;
        let finite = |x: f64| x.is_finite().then_some(x);
        beat.loss = finite(loss).or(beat.loss);
        beat.val_loss = finite(val_loss).or(beat.val_loss);
        beat.tokens_per_second = finite(tokens_per_second).or(beat.tokens_per_second);
        Some(directive)
    }

    /// A rank that looks hung: silent, or training without progress, for longer than
    /// `timeout` (ranks that have not sent their first heartbeat are given `startup`).
    pub fn stalled(&self, timeout: Duration, startup: Duration) -> Option<Stall> {
        let s = self.lock();
        let now = Instant::now();
        for (&rank, beat) in &s.ranks {
            if beat.phase == RankPhase::Done {
                continue;
            }
            match beat.last_beat {
                None if now - beat.started > startup => {
                    return Some(Stall::Silent {
                        rank,
                        seconds: (now - beat.started).as_secs_f64(),
                    });
                }
                None => {}
                Some(last) if now - last > timeout => {
                    return Some(Stall::Silent {
                        rank,
                        seconds: (now - last).as_secs_f64(),
                    });
                }
                Some(_)
                    if beat.phase == RankPhase::Training && now - beat.last_progress > timeout =>
                {
                    return Some(Stall::NoProgress {
                        rank,
                        step: beat.step,
                        seconds: (now - beat.last_progress).as_secs_f64(),
                    });
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Records a committed checkpoint.
    pub fn checkpoint_committed(&self, checkpoint: CheckpointRef) {
        let mut s = self.lock();
        let newer = s
            .last_checkpoint
            .as_ref()
            .is_none_or(|c| checkpoint.step >= c.step);
        if newer {
            s.last_checkpoint = Some(checkpoint);
        }
    }

    pub fn last_checkpoint(&self) -> Option<CheckpointRef> {
        self.lock().last_checkpoint.clone()
    }

    /// Every local rank's heartbeat state, by global rank.
    pub fn ranks(&self) -> BTreeMap<u32, RankBeat> {
        self.lock().ranks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(generation: u64) -> RankTable {
        RankTable {
            generation,
            world_size: 2,
            nodes: Vec::new(),
        }
    }

    #[test]
    fn heartbeats_of_other_generations_are_refused() {
        let board = Board::default();
        board.begin_generation(table(3), 0, 2, String::new());
        let beat = |g, rank| board.heartbeat(g, rank, 1, RankPhase::Training, 1.0, f64::NAN, 5.0);
        assert_eq!(beat(3, 1), Some(Directive::Continue));
        assert_eq!(beat(2, 1), None);
        assert_eq!(beat(3, 7), None);
    }

    #[test]
    fn silence_and_standstill_are_stalls_but_startup_gets_grace() {
        let board = Board::default();
        board.begin_generation(table(1), 0, 2, String::new());
        let short = Duration::from_millis(30);
        assert_eq!(board.stalled(short, Duration::from_secs(60)), None);
        board.heartbeat(1, 0, 1, RankPhase::Training, 1.0, f64::NAN, 1.0);
        board.heartbeat(1, 1, 1, RankPhase::Training, 1.0, f64::NAN, 1.0);
        std::thread::sleep(Duration::from_millis(50));
        // Rank 0 keeps beating without a new step; rank 1 is silent.
        board.heartbeat(1, 0, 1, RankPhase::Training, 1.0, f64::NAN, 1.0);
        match board.stalled(short, Duration::from_secs(60)) {
            Some(Stall::NoProgress { rank: 0, .. }) | Some(Stall::Silent { rank: 1, .. }) => {}
            other => panic!("expected a stall, got {other:?}"),
        }
        board.heartbeat(1, 0, 2, RankPhase::Training, 1.0, f64::NAN, 1.0);
        assert!(matches!(
            board.stalled(short, Duration::from_secs(60)),
            Some(Stall::Silent { rank: 1, .. })
        ));
    }

    #[test]
    fn the_strongest_directive_sticks() {
        let board = Board::default();
        board.begin_generation(table(1), 0, 1, String::new());
        board.direct(Directive::Stop);
        board.direct(Directive::CheckpointNow);
        let d = board.heartbeat(1, 0, 0, RankPhase::Training, 0.0, 0.0, 0.0);
        assert_eq!(d, Some(Directive::Stop));
    }
}
