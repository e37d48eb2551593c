//! The progress display of a local run. It is fed the snapshots the node agents publish
//! ([`AgentProgress`]: step, losses, tokens/s, newest checkpoint, restarts, failures, phase) and
//! turns them into text; it never touches stdout itself, and time is passed in, so it is pure.
//!
//! - [`Progress`] keeps what was seen: [`Progress::observe`] returns the *event* lines a new
//!   snapshot brings (a restart with its reason, a newly committed checkpoint, a phase change),
//!   and [`Progress::bar`] / [`Progress::status_line`] render the current state, with the ETA
//!   from the step rate observed over the last minute. Unknown values show as `-`.
//! - [`Display`] decides what to print: on a terminal a bar redrawn in place (`\r`) with event
//!   lines printed above it; otherwise plain lines — events at once, and a status line every N
//!   steps or every 10 s.
//!
//! ```text
//! step 120/1200 [##..................] loss 2.31 val 2.40 1.2k tok/s ETA 3m10s
//! ```

use std::{
    collections::{BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use tessera_api::records::{AgentProgress, RunPhase};

/// Characters between the bar's brackets.
pub const BAR_WIDTH: usize = 20;
/// The step rate (for the ETA) is measured over this much recent time.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Plain mode prints a status line at least this often while the run advances.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// What has been seen of a run's progress.
#[derive(Clone, Debug)]
pub struct Progress {
    total_steps: u64,
    latest: Option<AgentProgress>,
    /// (when, step) of recent step changes in the current generation, oldest first.
    samples: VecDeque<(Instant, u64)>,
    phase: Option<RunPhase>,
    /// (step, path) of the newest checkpoint announced.
    checkpoint: Option<(u64, String)>,
    /// Generations whose failure has been announced.
    announced_failures: BTreeSet<u64>,
    /// The highest generation seen.
    generation: Option<u64>,
}

impl Progress {
    /// A display for a run of `total_steps` steps (0 when unknown).
    pub fn new(total_steps: u64) -> Progress {
        Progress {
            total_steps,
            latest: None,
            samples: VecDeque::new(),
            phase: None,
            checkpoint: None,
            announced_failures: BTreeSet::new(),
            generation: None,
        }
    }

    /// Takes a snapshot seen at `now`; returns the event lines it brings, oldest first.
    pub fn observe(&mut self, p: &AgentProgress, now: Instant) -> Vec<String> {
        let mut events = Vec::new();

        // Restarts: each failure once (by the generation that failed), and a line for a
        // generation change no failure explains.
        for f in &p.failures {
            if self.announced_failures.insert(f.generation) {
                let kind = &f.kind;
                let reason = if f.reason.is_empty() {
                    "no reason reported"
                } else {
                    &f.reason
                };
                events.push(format!(
                    "restart (gen {}): generation {} failed: {kind}: {reason}",
                    f.generation.saturating_add(1),
                    f.generation
                ));
            }
        }
        if let Some(seen) = self.generation {
            for g in seen..p.run.generation {
                if self.announced_failures.insert(g) {
                    events.push(format!(
                        "restart (gen {}): generation {g} ended; no reason reported",
                        g.saturating_add(1)
                    ));
                }
            }
        }

        // The step rate restarts with the generation, or when the step goes back.
        let restarted = self.generation.is_some_and(|g| g != p.run.generation)
            || self.samples.back().is_some_and(|&(_, s)| p.run.step < s);
        if restarted {
            self.samples.clear();
        }
        // Step 0 is "no rank has reported yet" (a new generation, or a resumed run, before its
        // first step): the rate starts at the first real step.
        if p.run.step > 0 && self.samples.back().is_none_or(|&(_, s)| s != p.run.step) {
            self.samples.push_back((now, p.run.step));
        }
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        self.generation = Some(
            self.generation
                .map_or(p.run.generation, |g| g.max(p.run.generation)),
        );

        if let Some(c) = &p.run.last_checkpoint {
            let key = (c.step, c.path.clone());
            if self.checkpoint.as_ref() != Some(&key) {
                events.push(format!("checkpoint step {} committed: {}", c.step, c.path));
                self.checkpoint = Some(key);
            }
        }

        // Phase changes; a restart line already says "Restarting".
        if let Some(phase) = p.phase
            && self.phase != Some(phase)
        {
            if phase != RunPhase::Restarting {
                let mut line = format!("phase: {phase}");
                if !p.message.is_empty() {
                    line += &format!(" ({})", p.message);
                }
                events.push(line);
            }
            self.phase = Some(phase);
        }

        self.latest = Some(p.clone());
        events
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Option<&AgentProgress> {
        self.latest.as_ref()
    }

    /// The last completed step, once a snapshot has come.
    pub fn step(&self) -> Option<u64> {
        self.latest.as_ref().map(|p| p.run.step)
    }

    /// Steps per second over the recent window, measured up to `now`.
    pub fn steps_per_second(&self, now: Instant) -> Option<f64> {
        let (&(t0, s0), &(_, s1)) = (self.samples.front()?, self.samples.back()?);
        let seconds = now.saturating_duration_since(t0).as_secs_f64();
        let rate = s1.checked_sub(s0)? as f64 / seconds;
        (rate.is_finite() && rate > 0.0).then_some(rate)
    }

    /// The time left at the observed rate: zero once the last step is done, `None` when
    /// unknown.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        let step = self.step()?;
        if self.total_steps == 0 {
            return None;
        }
        if step >= self.total_steps {
            return Some(Duration::ZERO);
        }
        let seconds = (self.total_steps - step) as f64 / self.steps_per_second(now)?;
        Duration::try_from_secs_f64(seconds).ok()
    }

    /// The one-line state with a bar:
    /// `step 120/1200 [##....] loss 2.31 val 2.40 1.2k tok/s ETA 3m10s`.
    pub fn bar(&self, now: Instant) -> String {
        self.render(now, true)
    }

    /// The same line without the bar, for plain logs.
    pub fn status_line(&self, now: Instant) -> String {
        self.render(now, false)
    }

    fn render(&self, now: Instant, with_bar: bool) -> String {
        let p = self.latest.as_ref();
        let step = p.map_or("-".to_string(), |p| p.run.step.to_string());
        let total = if self.total_steps == 0 {
            "-".to_string()
        } else {
            self.total_steps.to_string()
        };
        let mut line = format!("step {step}/{total}");
        if with_bar {
            let filled = match (p, self.total_steps) {
                (Some(p), total) if total > 0 => {
                    let fraction = (p.run.step as f64 / total as f64).clamp(0.0, 1.0);
                    ((fraction * BAR_WIDTH as f64).floor() as usize).min(BAR_WIDTH)
                }
                _ => 0,
            };
            line += &format!(
                " [{}{}]",
                "#".repeat(filled),
                ".".repeat(BAR_WIDTH - filled)
            );
        }
        line += &format!(
            " loss {} val {} {} tok/s ETA {}",
            loss(p.and_then(|p| p.run.loss)),
            loss(p.and_then(|p| p.run.val_loss)),
            rate(p.and_then(|p| p.run.tokens_per_second)),
            self.eta(now).map_or("-".to_string(), duration),
        );
        if let Some(p) = p
            && p.run.restarts > 0
        {
            line += &format!(" restarts {}", p.run.restarts);
        }
        line
    }
}

/// A loss with two decimals, `-` when unknown.
pub fn loss(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "-".to_string(),
    }
}

/// Tokens per second, short: `850`, `1.2k`, `3.4M`; `-` when unknown.
pub fn rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 0.0 => {
            if v < 999.5 {
                format!("{v:.0}")
            } else if v < 999_950.0 {
                format!("{:.1}k", v / 1e3)
            } else {
                format!("{:.1}M", v / 1e6)
            }
        }
        _ => "-".to_string(),
    }
}

/// A duration as `45s`, `3m10s` or `2h05m`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 100 * 24 * 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        ">100d".to_string()
    }
}

/// What to print as snapshots arrive: a bar redrawn in place on a terminal, plain lines
/// otherwise. Every method returns the exact text to write to stdout (possibly empty).
#[derive(Clone, Debug)]
pub struct Display {
    progress: Progress,
    terminal: bool,
    every_steps: u64,
    every: Duration,
    /// (when, step) of the last plain status line.
    last_line: Option<(Instant, u64)>,
    /// Whether a bar is on the current terminal line.
    bar_shown: bool,
}

/// Clears the terminal line the cursor is on.
const CLEAR_LINE: &str = "\r\x1b[K";

impl Display {
    /// `terminal`: stdout is a terminal. Plain lines come every `total_steps / 20` steps (at
    /// least 1) or every 10 s.
    pub fn new(total_steps: u64, terminal: bool) -> Display {
        Display {
            progress: Progress::new(total_steps),
            terminal,
            every_steps: (total_steps / 20).max(1),
            every: PLAIN_INTERVAL,
            last_line: None,
            bar_shown: false,
        }
    }

    /// Plain mode: a status line every `steps` steps (at least 1) or every `every`.
    pub fn with_interval(mut self, steps: u64, every: Duration) -> Display {
        self.every_steps = steps.max(1);
        self.every = every;
        self
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// A new snapshot: its events, then the bar (terminal) or a status line when one is due.
    pub fn update(&mut self, p: &AgentProgress, now: Instant) -> String {
        let events = self.progress.observe(p, now);
        let mut out = String::new();
        if self.terminal {
            if !events.is_empty() && self.bar_shown {
                out += CLEAR_LINE;
            }
            for e in &events {
                out += e;
                out.push('\n');
            }
            out += &self.redraw(now);
        } else {
            for e in &events {
                out += e;
                out.push('\n');
            }
            out += &self.plain_line(now, false);
        }
        out
    }

    /// Time passed without a snapshot: the bar with a fresh ETA (terminal), or a status line
    /// when 10 s have passed (plain).
    pub fn tick(&mut self, now: Instant) -> String {
        if self.terminal {
            if self.progress.latest().is_some() {
                self.redraw(now)
            } else {
                String::new()
            }
        } else {
            self.plain_line(now, false)
        }
    }

    /// The run ended: ends the bar's line (terminal), or prints the last state if it was not
    /// printed yet (plain).
    pub fn finish(&mut self, now: Instant) -> String {
        if self.terminal {
            let out = if self.bar_shown { "\n" } else { "" };
            self.bar_shown = false;
            out.to_string()
        } else {
            self.plain_line(now, true)
        }
    }

    fn redraw(&mut self, now: Instant) -> String {
        self.bar_shown = true;
        format!("{CLEAR_LINE}{}", self.progress.bar(now))
    }

    /// The plain status line if one is due (or `last` and the step moved since the last one).
    fn plain_line(&mut self, now: Instant, last: bool) -> String {
        let Some(step) = self.progress.step() else {
            return String::new();
        };
        let due = match self.last_line {
            None => true,
            Some((t, s)) if last => s != step || now.saturating_duration_since(t) >= self.every,
            Some((t, s)) => {
                step.abs_diff(s) >= self.every_steps
                    || now.saturating_duration_since(t) >= self.every
            }
        };
        if !due {
            return String::new();
        }
        self.last_line = Some((now, step));
        format!("{}\n", self.progress.status_line(now))
    }
}

#[cfg(test)]
mod tests {
    use tessera_api::{progress::RunProgress, records::Failure, status::CheckpointRef};

    use super::*;

    fn snapshot(generation: u64, step: u64) -> AgentProgress {
        AgentProgress {
            run: RunProgress {
                generation,
                step,
                loss: Some(2.3149),
                val_loss: None,
                tokens_per_second: Some(1234.0),
                last_checkpoint: None,
                restarts: generation.saturating_sub(1) as u32,
            },
            phase: Some(RunPhase::Running),
            world_size: 2,
            ..AgentProgress::default()
        }
    }

    fn checkpoint(step: u64) -> CheckpointRef {
        CheckpointRef {
            step,
            path: format!("out/checkpoints/step-{step:010}"),
            time: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn the_bar_shows_step_losses_rate_and_eta() {
        let t0 = Instant::now();
        let mut p = Progress::new(1200);
        assert_eq!(
            p.bar(t0),
            "step -/1200 [....................] loss - val - - tok/s ETA -"
        );
        p.observe(&snapshot(1, 100), t0);
        // One sample: no rate yet.
        assert_eq!(
            p.bar(t0),
            "step 100/1200 [#...................] loss 2.31 val - 1.2k tok/s ETA -"
        );
        let mut s = snapshot(1, 120);
        s.run.val_loss = Some(2.4);
        p.observe(&s, t0 + Duration::from_secs(10));
        // 20 steps in 10 s: 1080 steps left take 540 s.
        assert_eq!(p.steps_per_second(t0 + Duration::from_secs(10)), Some(2.0));
        assert_eq!(
            p.bar(t0 + Duration::from_secs(10)),
            "step 120/1200 [##..................] loss 2.31 val 2.40 1.2k tok/s ETA 9m00s"
        );
        assert_eq!(
            p.status_line(t0 + Duration::from_secs(10)),
            "step 120/1200 loss 2.31 val 2.40 1.2k tok/s ETA 9m00s"
        );
        // The rate is measured up to now: a stall makes the ETA grow.
        let later = p.eta(t0 + Duration::from_secs(20)).unwrap();
        assert!(later > Duration::from_secs(540), "{later:?}");
        // Done: ETA 0s and a full bar.
        p.observe(&snapshot(1, 1200), t0 + Duration::from_secs(30));
        assert_eq!(
            p.bar(t0 + Duration::from_secs(30)),
            "step 1200/1200 [####################] loss 2.31 val - 1.2k tok/s ETA 0s"
        );
    }

    #[test]
    fn unknown_and_degenerate_values_show_as_dashes() {
        let t = Instant::now();
        let mut p = Progress::new(0);
        let mut s = snapshot(1, 5);
        s.run.loss = Some(f64::NAN);
        s.run.tokens_per_second = Some(f64::INFINITY);
        p.observe(&s, t);
        p.observe(&snapshot(1, 6), t); // zero elapsed time: no rate, no division by zero
        assert_eq!(p.steps_per_second(t), None);
        assert_eq!(
            p.bar(t),
            "step 6/- [....................] loss 2.31 val - 1.2k tok/s ETA -"
        );
        let mut q = Progress::new(10);
        q.observe(&s, t);
        assert_eq!(q.status_line(t), "step 5/10 loss - val - - tok/s ETA -");
        // The same step again, much later: still no rate.
        q.observe(&s, t + Duration::from_secs(100));
        assert_eq!(q.eta(t + Duration::from_secs(100)), None);
        // A step beyond the total keeps the bar full, not overflowing.
        q.observe(&snapshot(1, 50), t + Duration::from_secs(101));
        assert!(q.bar(t).contains("[####################]"));
    }

    #[test]
    fn formats() {
        assert_eq!(rate(Some(850.4)), "850");
        assert_eq!(rate(Some(999.6)), "1.0k");
        assert_eq!(rate(Some(12_345.0)), "12.3k");
        assert_eq!(rate(Some(3_400_000.0)), "3.4M");
        assert_eq!(rate(Some(-1.0)), "-");
        assert_eq!(rate(None), "-");
        assert_eq!(loss(Some(1.816)), "1.82");
        assert_eq!(loss(Some(f64::NEG_INFINITY)), "-");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(190)), "3m10s");
        assert_eq!(duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(duration(Duration::from_secs(u64::MAX)), ">100d");
    }

    #[test]
    fn restarts_checkpoints_and_phases_are_events_once() {
        let t = Instant::now();
        let mut p = Progress::new(100);
        let mut s = snapshot(1, 10);
        s.run.last_checkpoint = Some(checkpoint(10));
        assert_eq!(
            p.observe(&s, t),
            [
                "checkpoint step 10 committed: out/checkpoints/step-0000000010",
                "phase: Running"
            ]
        );
        assert!(p.observe(&s, t).is_empty(), "nothing new");

        // Generation 1 fails: the failing agent publishes "Restarting" with the reason.
        let mut failing = s.clone();
        failing.phase = Some(RunPhase::Restarting);
        failing.message = "rank 1 exited with signal 9".into();
        failing.failures = vec![Failure {
            generation: 1,
            kind: "rank-exit".into(),
            reason: "rank 1 exited with signal 9".into(),
            detected_unix_ms: 1_767_225_600_000,
            recovery_seconds: None,
        }];
        assert_eq!(
            p.observe(&failing, t),
            ["restart (gen 2): generation 1 failed: rank-exit: rank 1 exited with signal 9"]
        );
        // Generation 2 runs from the checkpoint at step 10.
        let mut resumed = snapshot(2, 11);
        resumed.failures = failing.failures.clone();
        resumed.run.last_checkpoint = Some(checkpoint(10));
        assert_eq!(p.observe(&resumed, t), ["phase: Running"]);
        assert!(p.bar(t).ends_with(" restarts 1"));

        // A generation change nobody explained still gets a line.
        let mut unexplained = snapshot(3, 12);
        unexplained.run.last_checkpoint = Some(checkpoint(20));
        assert_eq!(
            p.observe(&unexplained, t),
            [
                "restart (gen 3): generation 2 ended; no reason reported",
                "checkpoint step 20 committed: out/checkpoints/step-0000000020"
            ]
        );
        // ...and its reason arriving later is not announced twice.
        let mut late = unexplained.clone();
        late.failures = vec![Failure {
            generation: 2,
            kind: "heartbeat".into(),
            reason: "rank 0 silent".into(),
            detected_unix_ms: 1_767_225_600_000,
            recovery_seconds: Some(2.0),
        }];
        assert!(p.observe(&late, t).is_empty());

        let mut failed = late.clone();
        failed.phase = Some(RunPhase::Failed);
        failed.message = "6 restarts exceed resilience.maxRestarts = 5".into();
        assert_eq!(
            p.observe(&failed, t),
            ["phase: Failed (6 restarts exceed resilience.maxRestarts = 5)"]
        );
    }

    #[test]
    fn a_restart_resets_the_rate() {
        let t0 = Instant::now();
        let mut p = Progress::new(1000);
        p.observe(&snapshot(1, 100), t0);
        p.observe(&snapshot(1, 200), t0 + Duration::from_secs(10));
        assert_eq!(p.steps_per_second(t0 + Duration::from_secs(10)), Some(10.0));
        // Generation 2 reports step 0 until its ranks resume, then step 150: one sample, the
        // rate unknown until it moves.
        p.observe(&snapshot(2, 0), t0 + Duration::from_secs(20));
        assert_eq!(p.steps_per_second(t0 + Duration::from_secs(20)), None);
        p.observe(&snapshot(2, 150), t0 + Duration::from_secs(30));
        assert_eq!(p.steps_per_second(t0 + Duration::from_secs(30)), None);
        p.observe(&snapshot(2, 160), t0 + Duration::from_secs(35));
        assert_eq!(p.steps_per_second(t0 + Duration::from_secs(35)), Some(2.0));
        // Old samples leave the window.
        for i in 1..=20u64 {
            p.observe(
                &snapshot(2, 160 + i * 10),
                t0 + Duration::from_secs(35 + i * 10),
            );
        }
        let now = t0 + Duration::from_secs(235);
        // 60 s window (plus the oldest kept sample): 1 step/s.
        let r = p.steps_per_second(now).unwrap();
        assert!((0.9..=1.1).contains(&r), "{r}");
    }

    #[test]
    fn a_terminal_redraws_one_line_and_prints_events_above_it() {
        let t = Instant::now();
        let mut d = Display::new(100, true);
        assert_eq!(d.tick(t), "", "nothing to draw before the first snapshot");
        let out = d.update(&snapshot(1, 1), t);
        assert_eq!(
            out,
            "phase: Running\n\r\x1b[Kstep 1/100 [....................] loss 2.31 val - 1.2k tok/s ETA -"
        );
        let out = d.update(&snapshot(1, 2), t + Duration::from_secs(1));
        assert!(out.starts_with("\r\x1b[Kstep 2/100 "), "{out:?}");
        assert!(!out.contains('\n'), "a redraw stays on one line");
        assert!(out.ends_with("ETA 1m38s"), "{out:?}");
        let mut s = snapshot(1, 3);
        s.run.last_checkpoint = Some(checkpoint(3));
        let out = d.update(&s, t + Duration::from_secs(2));
        assert!(
            out.starts_with("\r\x1b[Kcheckpoint step 3 committed: out/checkpoints/step-0000000003\n\r\x1b[Kstep 3/100"),
            "{out:?}"
        );
        assert!(
            d.tick(t + Duration::from_secs(3))
                .starts_with("\r\x1b[Kstep 3/100")
        );
        assert_eq!(d.finish(t), "\n");
        assert_eq!(d.finish(t), "");
    }

    #[test]
    fn plain_mode_prints_every_n_steps_or_ten_seconds_and_events_at_once() {
        let t = Instant::now();
        let mut d = Display::new(1000, false).with_interval(50, Duration::from_secs(10));
        let out = d.update(&snapshot(1, 1), t);
        assert_eq!(
            out,
            "phase: Running\nstep 1/1000 loss 2.31 val - 1.2k tok/s ETA -\n"
        );
        assert_eq!(d.update(&snapshot(1, 20), t + Duration::from_secs(1)), "");
        assert!(!d.update(&snapshot(1, 20), t).contains('\r'));
        // 50 steps after the last line.
        let out = d.update(&snapshot(1, 51), t + Duration::from_secs(2));
        assert!(out.starts_with("step 51/1000 loss"), "{out:?}");
        assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
        // 10 s without a line: one is printed even with little progress.
        assert_eq!(d.update(&snapshot(1, 52), t + Duration::from_secs(5)), "");
        assert!(
            d.tick(t + Duration::from_secs(12))
                .starts_with("step 52/1000")
        );
        assert_eq!(d.tick(t + Duration::from_secs(13)), "");
        // An event is printed at once, without a status line when none is due.
        let mut s = snapshot(1, 53);
        s.run.last_checkpoint = Some(checkpoint(53));
        assert_eq!(
            d.update(&s, t + Duration::from_secs(14)),
            "checkpoint step 53 committed: out/checkpoints/step-0000000053\n"
        );
        // The end prints the last state once.
        assert!(
            d.finish(t + Duration::from_secs(15))
                .starts_with("step 53/1000")
        );
        assert_eq!(d.finish(t + Duration::from_secs(15)), "");
        assert!(!Display::new(0, false).finish(t).contains("step"));
    }
}
