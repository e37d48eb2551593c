//! The step history of a local run: reading `OUT/history.jsonl`, which rank 0 of the trainer
//! appends one JSON line to after every step (`tessera-trainer --history FILE`):
//!
//! ```text
//! {"version":1,"generation":1,"step":120,"loss":2.31,"gradNorm":0.9,"valLoss":null,
//!  "tokensPerSecond":6900.0,"unixMs":...}
//! ```
//!
//! (`tessera_api::records::StepRecord`; lines from before `version` read the same.)
//!
//! After a failure the gang resumes from an older checkpoint, so steps repeat, written by the
//! next generation. This module owns turning that file into one value per step and the
//! restart markers the loss curve draws ([`History`]):
//!
//! - Lines that are not a complete record (a process killed mid-write leaves half a line, and
//!   the next writer may append to it) are skipped and counted; a record that follows a broken
//!   fragment on the same line is recovered.
//! - The file is read as *segments*: a segment is a run of consecutive records of one
//!   generation whose steps increase. Every segment after the first is a restart, marked at the
//!   step it resumed from (its first step − 1) with its generation. For a step written by more
//!   than one segment, the newest segment's value is kept — the latest generation's, and also
//!   the rerun's when a stopped run is started again with the same generation number.

use std::{io, path::Path};

use tessera_api::records::{Record, StepRecord};

/// The file name rank 0 writes in the run's output directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// Records longer than this are not looked for inside a broken line (a record is ~150 bytes).
const MAX_RECORD_BYTES: usize = 4096;

/// One step of the loss curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The completed optimizer step (1-based).
    pub step: u64,
    /// The training loss of that step (finite).
    pub loss: f64,
    /// The validation loss, on steps that evaluated.
    pub val_loss: Option<f64>,
    /// The gang generation whose value this is.
    pub generation: u64,
}

/// Where a new generation (or a rerun) took over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The step it resumed from: its first step − 1 (0 when it started from scratch).
    pub step: u64,
    /// The generation that resumed.
    pub generation: u64,
}

/// A run's step history: one point per step, sorted by step, and the restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub points: Vec<Point>,
    /// In file order.
    pub restarts: Vec<Restart>,
    /// Lines (or broken fragments of lines) that held no usable record.
    pub skipped_lines: usize,
}

impl History {
    /// Reads a history file. A missing file is an error (`io::ErrorKind::NotFound`); a damaged
    /// one is not.
    pub fn read(path: &Path) -> io::Result<History> {
        Ok(History::parse(&std::fs::read(path)?))
    }

    /// Parses the contents of a history file. Never fails: what cannot be read is counted in
    /// `skipped_lines`.
    pub fn parse(bytes: &[u8]) -> History {
        let mut skipped_lines = 0;
        // (generation, step, loss, val_loss) in file order.
        let mut records: Vec<(u64, u64, f64, Option<f64>)> = Vec::new();
        for line in bytes.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let (record, fragments) = parse_line(line);
            skipped_lines += fragments;
            match record {
                // A line whose loss was not finite has `null` there: it is skipped.
                Some(StepRecord {
                    generation,
                    step,
                    loss: Some(loss),
                    val_loss,
                    ..
                }) if loss.is_finite() && step > 0 => {
                    records.push((generation, step, loss, val_loss.filter(|v| v.is_finite())));
                }
                Some(_) => skipped_lines += 1,
                None => {}
            }
        }

        // Segments: a new one begins when the generation changes or the step does not grow.
        let mut restarts = Vec::new();
        let mut by_step: std::collections::BTreeMap<u64, Point> = Default::default();
        let mut previous: Option<(u64, u64)> = None;
        for &(generation, step, loss, val_loss) in &records {
            let new_segment = previous.is_some_and(|(g, s)| g != generation || step <= s);
            if new_segment {
                restarts.push(Restart {
                    step: step - 1,
                    generation,
                });
            }
            previous = Some((generation, step));
            // Later segments overwrite earlier ones; within a segment steps are unique.
            by_step.insert(
                step,
                Point {
                    step,
                    loss,
                    val_loss,
                    generation,
                },
            );
        }
        History {
            points: by_step.into_values().collect(),
            restarts,
            skipped_lines,
        }
    }

    /// The newest point, if any.
    pub fn last(&self) -> Option<&Point> {
        self.points.last()
    }

    /// The points that carry a validation loss, as (step, validation loss).
    pub fn validation(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.points
            .iter()
            .filter_map(|p| p.val_loss.map(|v| (p.step, v)))
    }
}

/// A record from one line, and how many broken fragments the line held. A line that does not
/// parse whole is searched for a record that starts later in it (after a fragment a killed
/// writer left); the fragment before it counts as one skipped line.
fn parse_line(line: &[u8]) -> (Option<StepRecord>, usize) {
    if let Ok(record) = StepRecord::from_json(line) {
        return (Some(record), 0);
    }
    let earliest = line.len().saturating_sub(MAX_RECORD_BYTES);
    for start in (earliest.max(1)..line.len()).filter(|&i| line[i] == b'{') {
        if let Ok(record) = StepRecord::from_json(&line[start..]) {
            return (Some(record), 1);
        }
    }
    (None, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(generation: u64, step: u64, loss: f64, val: Option<f64>) -> String {
        let val = val.map_or("null".to_string(), |v| v.to_string());
        format!(
            "{{\"generation\":{generation},\"loss\":{loss},\"step\":{step},\"tokensPerSecond\":1000.0,\"unixMs\":1700000000000,\"valLoss\":{val}}}\n"
        )
    }

    #[test]
    fn one_generation_gives_one_point_per_step_and_no_restarts() {
        let mut text = String::new();
        for step in 1..=5 {
            let val = (step % 2 == 0).then_some(3.0 - step as f64 * 0.1);
            text += &line(1, step, 4.0 - step as f64 * 0.2, val);
        }
        let h = History::parse(text.as_bytes());
        assert_eq!(h.skipped_lines, 0);
        assert!(h.restarts.is_empty());
        assert_eq!(
            h.points.iter().map(|p| p.step).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(h.points[0].loss, 3.8);
        assert_eq!(h.points[0].val_loss, None);
        assert_eq!(h.points[1].val_loss, Some(2.8));
        assert_eq!(h.validation().collect::<Vec<_>>(), [(2, 2.8), (4, 2.6)]);
        assert_eq!(h.last().map(|p| p.step), Some(5));
    }

    #[test]
    fn a_restart_keeps_the_newer_generation_and_marks_the_resume_step() {
        let mut text = String::new();
        for step in 1..=7 {
            text += &line(1, step, 5.0, None);
        }
        // Generation 2 resumed from the checkpoint at step 4.
        for step in 5..=9 {
            text += &line(2, step, 2.0, None);
        }
        // Generation 3 resumed from step 8.
        for step in 9..=10 {
            text += &line(3, step, 1.0, Some(1.5));
        }
        let h = History::parse(text.as_bytes());
        assert_eq!(
            h.restarts,
            [
                Restart {
                    step: 4,
                    generation: 2
                },
                Restart {
                    step: 8,
                    generation: 3
                }
            ]
        );
        assert_eq!(h.points.len(), 10);
        let gens: Vec<u64> = h.points.iter().map(|p| p.generation).collect();
        assert_eq!(gens, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
        assert_eq!(h.points[4].loss, 2.0);
        assert_eq!(h.points[9].val_loss, Some(1.5));
    }

    #[test]
    fn a_rerun_with_the_same_generation_is_a_new_segment() {
        let mut text = String::new();
        for step in 1..=6 {
            text += &line(1, step, 3.0, None);
        }
        for step in 5..=8 {
            text += &line(1, step, 2.0, None);
        }
        let h = History::parse(text.as_bytes());
        assert_eq!(
            h.restarts,
            [Restart {
                step: 4,
                generation: 1
            }]
        );
        assert_eq!(h.points.len(), 8);
        assert_eq!(h.points[5].loss, 2.0, "the rerun's value of step 6 is kept");
    }

    #[test]
    fn a_restart_from_scratch_resumes_from_step_zero() {
        let text = line(1, 1, 3.0, None) + &line(1, 2, 3.0, None) + &line(2, 1, 2.5, None);
        let h = History::parse(text.as_bytes());
        assert_eq!(
            h.restarts,
            [Restart {
                step: 0,
                generation: 2
            }]
        );
        assert_eq!(h.points.len(), 2);
        assert_eq!(h.points[0].loss, 2.5);
    }

    #[test]
    fn broken_lines_are_skipped_and_counted() {
        let good = line(1, 1, 3.0, None);
        let half = &good[..good.len() / 2];
        let text = format!(
            "{good}not json\n{half}\n{{\"generation\":1}}\n[1,2]\n\n   \n{}{}\u{0}\u{ff}\n{half}",
            line(1, 2, 2.9, None),
            line(1, 3, f64::NAN, None).replace("NaN", "null"),
        );
        let h = History::parse(text.as_bytes());
        assert_eq!(h.points.len(), 2);
        // "not json", the half line, a record without loss/step, an array, the null loss,
        // the binary junk, and the trailing half line.
        assert_eq!(h.skipped_lines, 7);
    }

    #[test]
    fn a_record_appended_to_a_half_line_is_recovered() {
        let first = line(1, 1, 3.0, None);
        let killed = &first[..first.len() - 20];
        let text = format!("{first}{killed}{}", line(2, 1, 2.0, None));
        let h = History::parse(text.as_bytes());
        assert_eq!(h.skipped_lines, 1);
        assert_eq!(h.points.len(), 1);
        assert_eq!(h.points[0].generation, 2);
        assert_eq!(h.restarts.len(), 1);
    }

    #[test]
    fn non_utf8_and_huge_garbage_do_not_panic() {
        let mut bytes = vec![0xffu8, 0xfe, b'\n'];
        bytes.extend(std::iter::repeat_n(b'{', 100_000));
        bytes.push(b'\n');
        bytes.extend(
            line(1, 1, 1.0, Some(f64::INFINITY))
                .replace("inf", "1e999")
                .as_bytes(),
        );
        let h = History::parse(&bytes);
        assert_eq!(h.skipped_lines, 3, "1e999 does not parse as a finite f64");
        assert!(h.points.is_empty());
        assert_eq!(History::parse(b""), History::default());
    }

    #[test]
    fn read_names_a_missing_file_and_reads_a_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        let err = History::read(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::write(&path, line(4, 10, 1.25, Some(1.5))).unwrap();
        let h = History::read(&path).unwrap();
        assert_eq!(
            h.points,
            [Point {
                step: 10,
                loss: 1.25,
                val_loss: Some(1.5),
                generation: 4
            }]
        );
    }
}
