//! The data-parallel step through a device collective (the path NCCL takes on GPUs), checked
//! on CPU ranks: a shared-memory collective for ranks that are threads of this test stands in
//! for NCCL behind the same [`DeviceCollective`] trait, so what is tested is the trainer's
//! side of the contract (which ranges are reduced when, where the sums land for each sharding
//! stage, the ZeRO-2 buckets started from inside the backward, the parameter all-gather).
//!
//! - every sharding stage reaches bit-identical weights through the device path (each
//!   element's sum is formed the same way in every stage);
//! - they match the host ring's weights to fp32 rounding (a different summation order);
//! - the device path really ran (every bucket and gather is counted).
//!
//! NCCL itself needs a GPU: trainer/tests/cuda.rs runs it on one.

use std::{
    net::TcpListener,
    ops::Range,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tessera_trainer::lm::LanguageModel;

use tessera_api::spec::Sharding;
use tessera_trainer::{
    backend::{Backend, cpu::CpuBackend},
    collective::{
        CollectiveError, ShardPlan,
        device::DeviceCollective,
        rendezvous::{StaticRendezvous, rendezvous},
    },
    config::ModelConfig,
    model::Gpt,
    optimizer::{AdamW, AdamWConfig},
    parallel::DataParallel,
    train::{BatchError, train_step_parallel},
};

type Cpu = CpuBackend<f32>;

const WORLD: u32 = 3;
const STEPS: u64 = 6;
const ACCUM: usize = 2;
const MICRO: usize = 2;
const SEQ: usize = 16;

/// A barrier that fails the test instead of hanging when a rank never arrives (it panicked).
struct TimedBarrier {
    ranks: usize,
    /// Arrived so far, and the number of times the barrier has opened.
    state: Mutex<(usize, u64)>,
    opened: Condvar,
}

impl TimedBarrier {
    fn new(ranks: usize) -> TimedBarrier {
        TimedBarrier {
            ranks,
            state: Mutex::new((0, 0)),
            opened: Condvar::new(),
        }
    }

    fn wait(&self) {
        let mut state = self.state.lock().unwrap();
        let round = state.1;
        state.0 += 1;
        if state.0 == self.ranks {
            *state = (0, round + 1);
            self.opened.notify_all();
            return;
        }
        let (_state, waited) = self
            .opened
            .wait_timeout_while(state, Duration::from_secs(60), |s| s.1 == round)
            .unwrap();
        assert!(!waited.timed_out(), "a rank never reached the collective");
    }
}

/// What the members of a thread gang share: one full-size slot per rank and a barrier.
struct Shared {
    slots: Vec<Mutex<Vec<f32>>>,
    barrier: TimedBarrier,
    reductions: AtomicUsize,
    gathers: AtomicUsize,
}

/// One rank's handle on the shared-memory collective.
struct ThreadMember {
    rank: u32,
    shared: Arc<Shared>,
    /// The sums of this rank's shard, formed in rank order.
    sums: Vec<f32>,
}

fn thread_gang(world: u32, total: usize) -> (Arc<Shared>, Vec<ThreadMember>) {
    let shared = Arc::new(Shared {
        slots: (0..world).map(|_| Mutex::new(vec![0.0; total])).collect(),
        barrier: TimedBarrier::new(world as usize),
        reductions: AtomicUsize::new(0),
        gathers: AtomicUsize::new(0),
    });
    let members = (0..world)
        .map(|rank| ThreadMember {
            rank,
            shared: shared.clone(),
            sums: Vec::new(),
        })
        .collect();
    (shared, members)
}

impl DeviceCollective<Cpu> for ThreadMember {
    fn describe(&self) -> String {
        "threads (test)".into()
    }

    fn reduce_scatter_start(
        &mut self,
        _: &Cpu,
        grads: &Vec<f32>,
        segments: &[Range<usize>],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        let own = plan.range(self.rank);
        self.sums.resize(own.len(), 0.0);
        {
            let mut slot = self.shared.slots[self.rank as usize].lock().unwrap();
            for s in segments {
                slot[s.clone()].copy_from_slice(&grads[s.clone()]);
            }
        }
        self.shared.barrier.wait();
        for s in segments {
            for i in plan.owned_part(s, self.rank) {
                let mut sum = 0.0f32;
                for slot in &self.shared.slots {
                    sum += slot.lock().unwrap()[i];
                }
                self.sums[i - own.start] = sum;
            }
        }
        self.shared.reductions.fetch_add(1, Ordering::Relaxed);
        self.shared.barrier.wait();
        Ok(())
    }

    fn reduce_scatter_finish(
        &mut self,
        _: &Cpu,
        out: &mut [f32],
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        assert_eq!(out.len(), plan.range(self.rank).len());
        out.copy_from_slice(&self.sums);
        Ok(())
    }

    fn all_gather(
        &mut self,
        _: &Cpu,
        buf: &mut Vec<f32>,
        plan: &ShardPlan,
    ) -> Result<(), CollectiveError> {
        let own = plan.range(self.rank);
        self.shared.slots[self.rank as usize].lock().unwrap()[own.clone()]
            .copy_from_slice(&buf[own]);
        self.shared.barrier.wait();
        for owner in 0..self.shared.slots.len() as u32 {
            let range = plan.range(owner);
            buf[range.clone()]
                .copy_from_slice(&self.shared.slots[owner as usize].lock().unwrap()[range]);
        }
        self.shared.gathers.fetch_add(1, Ordering::Relaxed);
        self.shared.barrier.wait();
        Ok(())
    }
}

fn config() -> ModelConfig {
    ModelConfig::new(2, 2, 32, SEQ, 96).unwrap()
}

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Tokens of (rank, step, micro): a pure function, so every variant sees the same data.
fn batches(rank: u32) -> impl FnMut(u64, usize, &mut [u32], &mut [u32]) -> Result<(), BatchError> {
    move |step, micro, inputs, targets| {
        let mut x = (u64::from(rank) * 1_000_003 + step * 7919 + micro as u64 * 104_729) | 1;
        for (i, t) in inputs.iter_mut().zip(targets.iter_mut()) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *i = (x % 96) as u32;
            *t = ((x >> 20) % 96) as u32;
        }
        Ok(())
    }
}

/// Trains `STEPS` steps on `WORLD` thread ranks with `stage`, through the thread collective
/// when `device` is set (else the host ring); returns each rank's final parameters and how
/// many reductions and gathers the device path ran.
fn train(stage: Sharding, device: bool) -> (Vec<Vec<f32>>, usize, usize) {
    let master = free_addr();
    let total = Gpt::new(Cpu::new(), config(), MICRO, SEQ, 5)
        .unwrap()
        .num_params();
    let (shared, members) = thread_gang(WORLD, total);
    let params = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let master = master.clone();
                s.spawn(move || {
                    let rank = member.rank;
                    let ring = rendezvous(&StaticRendezvous {
                        master_addr: master,
                        rank,
                        world_size: WORLD,
                        generation: 0,
                        timeout: Duration::from_secs(20),
                        collective_timeout: Duration::from_secs(20),
                    })
                    .unwrap();
                    let mut model = Gpt::new(Cpu::new(), config(), MICRO, SEQ, 5).unwrap();
                    let mut dp = DataParallel::new(stage, ring, &model).unwrap();
                    if device {
                        dp.set_device_collective(Box::new(member), &model).unwrap();
                    }
                    let mut optimizer = AdamW::sharded(
                        AdamWConfig {
                            lr: 3e-3,
                            warmup_steps: 2,
                            total_steps: STEPS,
                            ..AdamWConfig::default()
                        },
                        &model,
                        dp.optimizer_range(),
                    )
                    .unwrap();
                    let mut data = batches(rank);
                    for step in 0..STEPS {
                        let stats = train_step_parallel(
                            &mut model,
                            &mut optimizer,
                            &mut dp,
                            step,
                            ACCUM,
                            &mut data,
                        )
                        .unwrap();
                        assert!(stats.loss.is_finite() && stats.grad_norm > 0.0);
                    }
                    let mut params = vec![0.0f32; model.num_params()];
                    model
                        .backend()
                        .download(model.params(), 0, &mut params)
                        .unwrap();
                    params
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (
        params,
        shared.reductions.load(Ordering::Relaxed),
        shared.gathers.load(Ordering::Relaxed),
    )
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs() / scale))
        .fold(0.0, f64::max)
}

#[test]
fn every_stage_through_a_device_collective_matches_the_host_ring() {
    let world = WORLD as usize;
    let steps = STEPS as usize;
    let (none, none_reductions, none_gathers) = train(Sharding::None, true);
    let (zero1, zero1_reductions, zero1_gathers) = train(Sharding::Optimizer, true);
    let (zero2, zero2_reductions, zero2_gathers) = train(Sharding::Gradients, true);

    // The device path carried the traffic: one whole-space reduction per step and rank for
    // none and ZeRO-1, one per bucket (more than one) for ZeRO-2; the gradient all-gather of
    // none, the parameter all-gather of the sharded stages.
    assert_eq!(none_reductions, steps * world);
    assert_eq!(zero1_reductions, steps * world);
    assert!(
        zero2_reductions > 2 * steps * world,
        "ZeRO-2 reduced {zero2_reductions} buckets in {steps} steps on {world} ranks"
    );
    assert_eq!(none_gathers, steps * world);
    assert_eq!(zero1_gathers, steps * world);
    assert_eq!(zero2_gathers, steps * world);

    for (name, ranks) in [
        ("none", &none),
        ("optimizer", &zero1),
        ("gradients", &zero2),
    ] {
        for (rank, p) in ranks.iter().enumerate() {
            assert!(
                p == &ranks[0],
                "{name}: rank {rank} holds other weights than rank 0"
            );
        }
    }
    assert!(
        zero1[0] == none[0],
        "ZeRO-1 and plain data parallel differ through the device path"
    );
    assert!(
        zero2[0] == none[0],
        "ZeRO-2 and plain data parallel differ through the device path"
    );

    // The host ring sums in its own order: equal to fp32 rounding, over 6 AdamW steps.
    let (host, _, _) = train(Sharding::Optimizer, false);
    let diff = max_rel(&host[0], &zero1[0]);
    assert!(
        diff < 1e-5,
        "device path vs host ring: max relative difference {diff:e}"
    );
    let init = Gpt::new(Cpu::new(), config(), MICRO, SEQ, 5).unwrap();
    let mut before = vec![0.0f32; init.num_params()];
    init.backend()
        .download(init.params(), 0, &mut before)
        .unwrap();
    assert!(
        max_rel(&before, &host[0]) > 1e-3,
        "training did not move the weights"
    );
}
