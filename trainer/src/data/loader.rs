//! The batch loader: shards named by a spec, concatenated into one token stream, cut into
//! training windows drawn by a counter-based hash and a fixed validation set.
//!
//! ```text
//! stream:  [ shard 0 tokens | shard 1 tokens | ... ]            len tokens
//! window:  tokens[o .. o+T+1]  → inputs = [o .. o+T), targets = [o+1 .. o+T+1)
//!
//! global batch of step s: rows 0 .. R,  R = grad_accum * world_size * micro_batch
//!   offset(row) = uniform(hash(seed, s, row)) over [0, len - T - 1]
//!
//! rank r, micro-step m reads rows [ (m*world_size + r)*micro_batch, +micro_batch )
//!   world 2, accum 1, B 2:  rank 0 → rows 0,1   rank 1 → rows 2,3
//!   world 1, accum 2, B 2:  micro 0 → rows 0,1  micro 1 → rows 2,3   (same windows)
//! ```
//!
//! The batch is a pure function of (seed, step, micro_step, rank layout); a step's set of
//! windows depends only on (seed, step, R), so a run resumed on a different number of ranks
//! with the same global batch sees the same data. Validation windows sit at evenly spaced
//! offsets and are the same at every evaluation.
//!
//! Packed shards (instruction and chat examples, [`super::examples`]) hold rows of T+1 tokens:
//! a window is then a whole row, `offset = row · (T+1)` with the row drawn the same way. A
//! shard's loss mask turns every target the loss does not count into [`IGNORE_TARGET`]; a
//! step's count of counted targets over the whole global batch ([`TrainBatches::counted_targets`])
//! is what its loss is normalised by, on every rank alike.

use std::path::{Path, PathBuf};

use super::shard::{Shard, ShardError, read_shard};
use crate::rng::splitmix64;

/// A target the loss ignores (a prompt, a padding or a user token): its row of the loss is 0
/// and so is its gradient.
pub const IGNORE_TARGET: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "data spec is empty; name a shard file, a directory of *.bin shards, or a glob like data/train-*.bin"
    )]
    EmptySpec,
    #[error(
        "data spec {spec}: {path} does not exist; check the path or run `tessera data prepare`"
    )]
    NotFound { spec: String, path: PathBuf },
    #[error(
        "data spec {spec} matches no *.bin shard; check the path or run `tessera data prepare`"
    )]
    NoShards { spec: String },
    #[error("data spec {spec}: `*` is only allowed in the file name, not in directories")]
    GlobInDirectory { spec: String },
    #[error("data spec {spec}: {message}; write a glob such as data/train-*.bin")]
    BadPattern { spec: String, message: String },
    #[error(
        "data directory {path} holds both train-*.bin and val-*.bin shards; name one split with a glob such as {path}/train-*.bin"
    )]
    MixedSplits { path: PathBuf },
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "shards disagree on the vocabulary: {first} has {first_vocab} tokens, {path} has {vocab}; every shard of a stream must come from the same tokenizer"
    )]
    VocabMismatch {
        first: PathBuf,
        first_vocab: u32,
        path: PathBuf,
        vocab: u32,
    },
    #[error(
        "data {spec} holds {tokens} tokens but one window of context {context} needs {needed}; use more data or a shorter context (shards: {shards})"
    )]
    TooShort {
        spec: String,
        shards: String,
        tokens: u64,
        context: u32,
        needed: u64,
    },
    #[error(
        "data {spec} is packed in rows of {row_len} tokens (for a context of {packed_context}), but the run's context is {context}; tokenize it again for this context (a run does this itself when it names the JSONL) or set model.context to {packed_context}"
    )]
    RowMismatch {
        spec: String,
        row_len: u32,
        packed_context: u32,
        context: u32,
    },
    #[error(
        "shards disagree on their rows: {first} is packed in rows of {first_rows} tokens, {path} in rows of {rows} (0: not packed); name shards of one preparation"
    )]
    RowsDiffer {
        first: PathBuf,
        first_rows: u32,
        path: PathBuf,
        rows: u32,
    },
    #[error("batch layout: {0}")]
    Layout(String),
    #[error("micro-step {micro_step} is out of range: a step has {grad_accum} micro-steps")]
    MicroStep { micro_step: u32, grad_accum: u32 },
    #[error("eval batch {index} is out of range: the validation set has {batches} batches")]
    EvalIndex { index: u32, batches: u32 },
    #[error(transparent)]
    Shard(#[from] ShardError),
}

// === shard specs ===

/// The shard files a spec names, in order: a file; a directory's `*.bin` files; or a glob
/// with `*` in the file name (`data/train-*.bin`). Directory and glob matches are sorted by
/// name.
pub fn resolve_shard_spec(spec: &str) -> Result<Vec<PathBuf>, LoaderError> {
    if spec.is_empty() {
        return Err(LoaderError::EmptySpec);
    }
    let path = Path::new(spec);
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| p.to_string_lossy().contains('*')) {
        return Err(LoaderError::GlobInDirectory {
            spec: spec.to_string(),
        });
    }
    let (dir, pattern) = match file_name {
        Some(name) if name.contains('*') => (parent.unwrap_or(Path::new(".")).to_path_buf(), name),
        _ => {
            let meta = std::fs::metadata(path).map_err(|_| LoaderError::NotFound {
                spec: spec.to_string(),
                path: path.to_path_buf(),
            })?;
            if !meta.is_dir() {
                return Ok(vec![path.to_path_buf()]);
            }
            let shards = matching_files(path, "*.bin", spec)?;
            let is_split = |prefix: &str| {
                shards.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
            };
            if is_split("train-") && is_split("val-") {
                return Err(LoaderError::MixedSplits {
                    path: path.to_path_buf(),
                });
            }
            return Ok(shards);
        }
    };
    if !dir.is_dir() {
        return Err(LoaderError::NotFound {
            spec: spec.to_string(),
            path: dir,
        });
    }
    matching_files(&dir, &pattern, spec)
}

pub(crate) fn matching_files(
    dir: &Path,
    pattern: &str,
    spec: &str,
) -> Result<Vec<PathBuf>, LoaderError> {
    let list_err = |source| LoaderError::List {
        path: dir.to_path_buf(),
        source,
    };
    let matcher = file_glob(pattern).map_err(|message| LoaderError::BadPattern {
        spec: spec.to_string(),
        message,
    })?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if matcher.is_match(&name) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    if found.is_empty() {
        return Err(LoaderError::NoShards {
            spec: spec.to_string(),
        });
    }
    found.sort();
    Ok(found)
}

/// A shell-style glob over file names (`*`, `?`, `[...]`; `*` never crosses a `/`).
fn file_glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|e| e.to_string())
}

// === the token stream ===

/// Shards concatenated into one stream of tokens.
#[derive(Clone, Debug)]
pub struct TokenStream {
    spec: String,
    shards: Vec<Shard>,
    /// `starts[i]` is the stream position of shard i's first token; the last entry is `len`.
    starts: Vec<u64>,
    vocab_size: u32,
    max_token: u32,
    /// Tokens per packed row, 0 for a plain stream.
    row_len: u32,
    /// Some shard has a loss mask.
    masked: bool,
}

impl TokenStream {
    /// Opens and validates every shard the spec names.
    pub fn open(spec: &str) -> Result<TokenStream, LoaderError> {
        let paths = resolve_shard_spec(spec)?;
        let mut shards: Vec<Shard> = Vec::with_capacity(paths.len());
        for path in &paths {
            let shard = read_shard(path)?;
            if let Some(first) = shards.first()
                && first.vocab_size != shard.vocab_size
            {
                return Err(LoaderError::VocabMismatch {
                    first: first.path.clone(),
                    first_vocab: first.vocab_size,
                    path: shard.path.clone(),
                    vocab: shard.vocab_size,
                });
            }
            if let Some(first) = shards.first()
                && first.row_len != shard.row_len
            {
                return Err(LoaderError::RowsDiffer {
                    first: first.path.clone(),
                    first_rows: first.row_len,
                    path: shard.path.clone(),
                    rows: shard.row_len,
                });
            }
            shards.push(shard);
        }
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut at = 0u64;
        for shard in &shards {
            starts.push(at);
            at += shard.tokens.len() as u64;
        }
        starts.push(at);
        Ok(TokenStream {
            spec: spec.to_string(),
            vocab_size: shards[0].vocab_size,
            row_len: shards[0].row_len,
            masked: shards.iter().any(|s| s.mask.is_some()),
            max_token: shards.iter().map(|s| s.max_token).max().unwrap_or(0),
            shards,
            starts,
        })
    }

    /// Tokens in the whole stream.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts has len + 1 entries")
    }

    /// Always false: every shard holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokenizer's vocabulary size recorded in the shards; the model's vocabulary must
    /// be at least this.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The largest token id in the stream (below `vocab_size`).
    pub fn max_token(&self) -> u32 {
        self.max_token
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Tokens per packed row, 0 for a plain stream.
    pub fn row_len(&self) -> u32 {
        self.row_len
    }

    /// Whether some target is not counted by the loss.
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Whether the loss counts the token at stream position `pos` as a target.
    pub fn counted(&self, pos: u64) -> bool {
        if !self.masked {
            return true;
        }
        let shard = self.starts.partition_point(|&s| s <= pos) - 1;
        self.shards[shard].counted((pos - self.starts[shard]) as usize)
    }

    /// Counted targets of the window at `offset`: positions offset+1 ..= offset+context.
    pub fn counted_in_window(&self, offset: u64, context: u32) -> u64 {
        if !self.masked {
            return u64::from(context);
        }
        (offset + 1..=offset + u64::from(context))
            .filter(|&p| self.counted(p))
            .count() as u64
    }

    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Copies the tokens at stream positions `[start, start + out.len())` into `out`.
    /// The caller keeps the range inside the stream.
    pub fn copy_range(&self, start: u64, out: &mut [u32]) {
        let end = start + out.len() as u64;
        assert!(
            end <= self.len(),
            "range {start}..{end} beyond stream of {}",
            self.len()
        );
        // The shard holding `start`: the last one whose first token is at or before it.
        let mut shard = self.starts.partition_point(|&s| s <= start) - 1;
        let mut pos = start;
        let mut written = 0;
        while written < out.len() {
            let local = (pos - self.starts[shard]) as usize;
            let available = self.shards[shard].tokens.len() - local;
            let take = available.min(out.len() - written);
            self.shards[shard]
                .tokens
                .copy_to(local, &mut out[written..written + take]);
            written += take;
            pos += take as u64;
            shard += 1;
        }
    }

    fn require_window(&self, context: u32) -> Result<(), LoaderError> {
        if self.row_len > 0 && self.row_len != context + 1 {
            return Err(LoaderError::RowMismatch {
                spec: self.spec.clone(),
                row_len: self.row_len,
                packed_context: self.row_len - 1,
                context,
            });
        }
        let needed = u64::from(context) + 1;
        if context == 0 || self.len() < needed {
            return Err(LoaderError::TooShort {
                spec: self.spec.clone(),
                shards: self
                    .shards
                    .iter()
                    .map(|s| s.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                tokens: self.len(),
                context,
                needed,
            });
        }
        Ok(())
    }
}

// === batches ===

/// `rows` windows of `context` tokens: row-major `rows × context` inputs and targets, where
/// `targets[r][t]` is the token after `inputs[r][t]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub context: usize,
    pub inputs: Vec<u32>,
    /// The next tokens, or [`IGNORE_TARGET`] where the loss does not count them.
    pub targets: Vec<u32>,
    /// The stream offset of each row's window, for tests and diagnostics.
    pub offsets: Vec<u64>,
    /// Targets that are not [`IGNORE_TARGET`].
    pub counted: u64,
}

impl Batch {
    fn from_offsets(stream: &TokenStream, context: usize, offsets: Vec<u64>) -> Batch {
        let rows = offsets.len();
        let mut inputs = vec![0u32; rows * context];
        let mut targets = vec![0u32; rows * context];
        let mut window = vec![0u32; context + 1];
        for (row, &offset) in offsets.iter().enumerate() {
            stream.copy_range(offset, &mut window);
            inputs[row * context..(row + 1) * context].copy_from_slice(&window[..context]);
            let out = &mut targets[row * context..(row + 1) * context];
            out.copy_from_slice(&window[1..]);
            if stream.is_masked() {
                for (t, target) in out.iter_mut().enumerate() {
                    if !stream.counted(offset + 1 + t as u64) {
                        *target = IGNORE_TARGET;
                    }
                }
            }
        }
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count() as u64;
        Batch {
            rows,
            context,
            inputs,
            targets,
            offsets,
            counted,
        }
    }
}

/// How one rank takes its share of a step's global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    pub rank: u32,
    pub world_size: u32,
    /// Rows per micro-batch on each rank.
    pub micro_batch: u32,
    /// Micro-steps (gradient accumulation) per optimizer step.
    pub grad_accum: u32,
    /// Tokens per row (T).
    pub context: u32,
}

impl BatchLayout {
    /// Rows in one step's global batch, across all ranks and micro-steps.
    pub fn rows_per_step(&self) -> u64 {
        u64::from(self.grad_accum) * u64::from(self.world_size) * u64::from(self.micro_batch)
    }

    /// The global row read by `local_row` of this rank's micro-batch `micro_step`.
    pub fn global_row(&self, micro_step: u32, local_row: u32) -> u64 {
        (u64::from(micro_step) * u64::from(self.world_size) + u64::from(self.rank))
            * u64::from(self.micro_batch)
            + u64::from(local_row)
    }

    fn check(&self) -> Result<(), LoaderError> {
        let problem = if self.world_size == 0 {
            "world size is 0; use at least 1".to_string()
        } else if self.rank >= self.world_size {
            format!(
                "rank {} is outside a world of {} ranks",
                self.rank, self.world_size
            )
        } else if self.micro_batch == 0 {
            "micro batch is 0 rows; use at least 1".to_string()
        } else if self.grad_accum == 0 {
            "gradient accumulation is 0 micro-steps; use at least 1".to_string()
        } else {
            return Ok(());
        };
        Err(LoaderError::Layout(problem))
    }
}

/// Training batches: the window of every (seed, step, row) is fixed by a counter-based hash.
#[derive(Clone, Debug)]
pub struct TrainBatches {
    stream: TokenStream,
    seed: u64,
    layout: BatchLayout,
    order: Order,
}

/// How the rows of the steps are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Each (step, row) draws a window start at random, independently (`training.steps`).
    Sampled,
    /// `training.epochs`: the g-th row of the run (g = step · rows per step + row) is example
    /// `shuffle(seed, g / n)(g mod n)` of the n examples, so each epoch visits every example
    /// once, in its own order.
    Epochs(u32),
}

impl TrainBatches {
    pub fn new(stream: TokenStream, seed: u64, layout: BatchLayout) -> Result<Self, LoaderError> {
        layout.check()?;
        stream.require_window(layout.context)?;
        Ok(TrainBatches {
            stream,
            seed,
            layout,
            order: Order::Sampled,
        })
    }

    /// Draws the rows epoch by epoch (`training.epochs`) instead of at random.
    pub fn with_epochs(mut self, epochs: u32) -> Self {
        self.order = Order::Epochs(epochs);
        self
    }

    /// The examples an epoch visits: the packed rows of instruction and chat data, or the
    /// windows of context + 1 tokens of a text stream, one every `context` tokens.
    pub fn examples(&self) -> u64 {
        let row_len = u64::from(self.stream.row_len());
        match self.stream.len().checked_div(row_len) {
            Some(rows) => rows,
            None => (self.stream.len() - 1) / u64::from(self.layout.context),
        }
    }

    /// The optimizer steps of the run: `steps`, or under epochs as many as visiting every
    /// example `epochs` times takes (the last step's rows past the final epoch come from the
    /// next epoch's order).
    pub fn total_steps(&self, steps: Option<u64>) -> u64 {
        match self.order {
            Order::Epochs(epochs) => (u64::from(epochs) * self.examples())
                .div_ceil(self.layout.rows_per_step())
                .max(1),
            Order::Sampled => steps.unwrap_or(1),
        }
    }

    pub fn stream(&self) -> &TokenStream {
        &self.stream
    }

    pub fn layout(&self) -> BatchLayout {
        self.layout
    }

    /// The stream offset of global row `row` of step `step`: uniform over every window start
    /// (over every row start, for packed data).
    pub fn window_offset(&self, step: u64, row: u64) -> u64 {
        let row_len = u64::from(self.stream.row_len());
        if let Order::Epochs(_) = self.order {
            let n = self.examples();
            let g = step * self.layout.rows_per_step() + row;
            let (epoch, position) = (g / n, g % n);
            let key = splitmix64(splitmix64(self.seed ^ EPOCH_DOMAIN) ^ epoch);
            let example = shuffle(key, position, n);
            return if row_len > 0 {
                example * row_len
            } else {
                example * u64::from(self.layout.context)
            };
        }
        let starts = self
            .stream
            .len()
            .checked_div(row_len)
            .unwrap_or_else(|| self.stream.len() - u64::from(self.layout.context));
        let key = splitmix64(splitmix64(splitmix64(self.seed ^ DATA_DOMAIN) ^ step) ^ row);
        // Multiply-shift maps 64 random bits onto [0, starts); its bias is below starts/2^64.
        let start = ((u128::from(key) * u128::from(starts)) >> 64) as u64;
        if row_len > 0 { start * row_len } else { start }
    }

    /// Targets the loss counts in step `step`'s whole global batch (every rank, every
    /// micro-step): the same number on every rank, as the data order is known to all.
    pub fn counted_targets(&self, step: u64) -> u64 {
        let context = self.layout.context;
        if !self.stream.is_masked() {
            return self.layout.rows_per_step() * u64::from(context);
        }
        (0..self.layout.rows_per_step())
            .map(|row| {
                self.stream
                    .counted_in_window(self.window_offset(step, row), context)
            })
            .sum()
    }

    /// This rank's micro-batch `micro_step` of optimizer step `step`.
    pub fn batch(&self, step: u64, micro_step: u32) -> Result<Batch, LoaderError> {
        if micro_step >= self.layout.grad_accum {
            return Err(LoaderError::MicroStep {
                micro_step,
                grad_accum: self.layout.grad_accum,
            });
        }
        let offsets = (0..self.layout.micro_batch)
            .map(|r| self.window_offset(step, self.layout.global_row(micro_step, r)))
            .collect();
        Ok(Batch::from_offsets(
            &self.stream,
            self.layout.context as usize,
            offsets,
        ))
    }
}

/// Separates the data order's random stream from any other use of the run's seed.
const DATA_DOMAIN: u64 = 0x6461_7461_5f6f_7264; // "data_ord"
/// Separates the epochs' shuffles from any other use of the run's seed.
const EPOCH_DOMAIN: u64 = 0x6570_6f63_685f_7368; // "epoch_sh"

/// Position `i` of the permutation of `0..n` that `key` picks: a four-round Feistel network
/// on the smallest even number of bits that holds n - 1, walked until it lands below n (a
/// bijection of `0..n`, computed per position without materialising the order).
fn shuffle(key: u64, i: u64, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut x = i;
    loop {
        let (mut left, mut right) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = splitmix64(key ^ (round << 60) ^ right) & mask;
            (left, right) = (right, left ^ f);
        }
        x = (left << half) | right;
        if x < n {
            return x;
        }
    }
}

/// The fixed validation set: `batches` batches of `rows` windows at evenly spaced offsets
/// over the validation stream, the same at every evaluation.
#[derive(Clone, Debug)]
pub struct EvalBatches {
    stream: TokenStream,
    rows: u32,
    context: u32,
    batches: u32,
}

impl EvalBatches {
    pub fn new(
        stream: TokenStream,
        rows: u32,
        context: u32,
        batches: u32,
    ) -> Result<Self, LoaderError> {
        if rows == 0 || batches == 0 {
            return Err(LoaderError::Layout(format!(
                "the validation set needs at least one batch of one row (got {batches} batches of {rows} rows)"
            )));
        }
        stream.require_window(context)?;
        Ok(EvalBatches {
            stream,
            rows,
            context,
            batches,
        })
    }

    pub fn stream(&self) -> &TokenStream {
        &self.stream
    }

    /// Batches in the validation set.
    pub fn len(&self) -> u32 {
        self.batches
    }

    /// Always false: there is at least one batch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// Offset of window `i` of `batches * rows`: first at 0, last at the final window start
    /// (for packed data: the final row).
    fn window_offset(&self, i: u64) -> u64 {
        let windows = u64::from(self.batches) * u64::from(self.rows);
        let row_len = u64::from(self.stream.row_len());
        let last_start = match self.stream.len().checked_div(row_len) {
            Some(rows) => rows - 1,
            None => self.stream.len() - u64::from(self.context) - 1,
        };
        if windows == 1 {
            return 0;
        }
        let start = ((u128::from(i) * u128::from(last_start)) / u128::from(windows - 1)) as u64;
        if row_len > 0 { start * row_len } else { start }
    }

    /// Validation batch `index`.
    pub fn batch(&self, index: u32) -> Result<Batch, LoaderError> {
        if index >= self.batches {
            return Err(LoaderError::EvalIndex {
                index,
                batches: self.batches,
            });
        }
        let first = u64::from(index) * u64::from(self.rows);
        let offsets = (first..first + u64::from(self.rows))
            .map(|i| self.window_offset(i))
            .collect();
        Ok(Batch::from_offsets(
            &self.stream,
            self.context as usize,
            offsets,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::data::shard::write_shard;

    /// Two shards whose tokens are their stream positions modulo the vocabulary, so any
    /// window can be checked against its offset.
    fn two_shard_stream(dir: &Path, first: u32, second: u32) -> TokenStream {
        let vocab = 60_000;
        let a: Vec<u32> = (0..first).map(|i| i % vocab).collect();
        let b: Vec<u32> = (first..first + second).map(|i| i % vocab).collect();
        write_shard(&dir.join("train-000000.bin"), &a, vocab).unwrap();
        write_shard(&dir.join("train-000001.bin"), &b, vocab).unwrap();
        TokenStream::open(&format!("{}/train-*.bin", dir.display())).unwrap()
    }

    fn layout(rank: u32, world_size: u32, micro_batch: u32, grad_accum: u32) -> BatchLayout {
        BatchLayout {
            rank,
            world_size,
            micro_batch,
            grad_accum,
            context: 16,
        }
    }

    fn wildcard_match(pattern: &str, name: &str) -> bool {
        file_glob(pattern).unwrap().is_match(name)
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("train-*.bin", "train-000001.bin"));
        assert!(!wildcard_match("train-*.bin", "val-000001.bin"));
        assert!(!wildcard_match("train-*.bin", "train-000001.bin.tmp"));
        assert!(wildcard_match("*.bin", "a.bin"));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b*c", "aXcYb"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("exact.bin", "exact.bin"));
        assert!(!wildcard_match("exact.bin", "exact.bin2"));
        assert!(file_glob("train-[.bin").is_err());
    }

    #[test]
    fn specs_resolve_files_directories_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["train-000001.bin", "train-000000.bin", "val-000000.bin"] {
            write_shard(&d.join(name), &[1, 2, 3], 256).unwrap();
        }
        std::fs::write(d.join("dataset.json"), "{}").unwrap();
        let glob = resolve_shard_spec(&format!("{}/train-*.bin", d.display())).unwrap();
        assert_eq!(
            glob,
            vec![d.join("train-000000.bin"), d.join("train-000001.bin")]
        );
        let file = resolve_shard_spec(&d.join("val-000000.bin").display().to_string()).unwrap();
        assert_eq!(file, vec![d.join("val-000000.bin")]);
        let mixed = resolve_shard_spec(&d.display().to_string()).unwrap_err();
        assert!(matches!(mixed, LoaderError::MixedSplits { .. }), "{mixed}");

        let only_train = d.join("only");
        std::fs::create_dir(&only_train).unwrap();
        write_shard(&only_train.join("b.bin"), &[1], 256).unwrap();
        write_shard(&only_train.join("a.bin"), &[1], 256).unwrap();
        std::fs::write(only_train.join("notes.txt"), "x").unwrap();
        let listed = resolve_shard_spec(&only_train.display().to_string()).unwrap();
        assert_eq!(
            listed,
            vec![only_train.join("a.bin"), only_train.join("b.bin")]
        );

        assert!(matches!(
            resolve_shard_spec(""),
            Err(LoaderError::EmptySpec)
        ));
        assert!(matches!(
            resolve_shard_spec(&format!("{}/nope-*.bin", d.display())),
            Err(LoaderError::NoShards { .. })
        ));
        assert!(matches!(
            resolve_shard_spec(&format!("{}/missing.bin", d.display())),
            Err(LoaderError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_shard_spec(&format!("{}/*/a.bin", d.display())),
            Err(LoaderError::GlobInDirectory { .. })
        ));
    }

    #[test]
    fn stream_concatenates_shards_and_reports_vocab_and_max_token() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 100, 50);
        assert_eq!(stream.len(), 150);
        assert_eq!(stream.vocab_size(), 60_000);
        assert_eq!(stream.max_token(), 149);
        let mut across = vec![0u32; 20];
        stream.copy_range(90, &mut across);
        assert_eq!(across, (90..110).collect::<Vec<u32>>());
        let mut tail = vec![0u32; 3];
        stream.copy_range(147, &mut tail);
        assert_eq!(tail, vec![147, 148, 149]);
    }

    #[test]
    fn shards_from_different_tokenizers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("a.bin"), &[1, 2], 256).unwrap();
        write_shard(&dir.path().join("b.bin"), &[1, 2], 50_257).unwrap();
        let err = TokenStream::open(&dir.path().display().to_string()).unwrap_err();
        assert!(matches!(
            err,
            LoaderError::VocabMismatch {
                first_vocab: 256,
                vocab: 50_257,
                ..
            }
        ));
    }

    #[test]
    fn corrupt_shard_in_a_spec_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("a.bin"), &[1, 2, 3, 4], 256).unwrap();
        let bad = dir.path().join("b.bin");
        write_shard(&bad, &[1, 2, 3, 4], 256).unwrap();
        let bytes = std::fs::read(&bad).unwrap();
        std::fs::write(&bad, &bytes[..bytes.len() - 1]).unwrap();
        let err = TokenStream::open(&dir.path().display().to_string()).unwrap_err();
        assert!(
            matches!(err, LoaderError::Shard(ShardError::Truncated { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("b.bin"));
    }

    #[test]
    fn epochs_visit_every_example_once_each_in_its_own_order_on_any_rank_count() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 5_000, 3_000);
        // 8 rows a step (1 rank × 2 micro-steps × 4 rows); windows of 16 + 1 tokens.
        let one = TrainBatches::new(stream.clone(), 7, layout(0, 1, 4, 2))
            .unwrap()
            .with_epochs(3);
        let n = one.examples();
        assert_eq!(n, (8_000 - 1) / 16);
        assert_eq!(one.total_steps(None), (3 * n).div_ceil(8));
        let rows_of = |epoch: u64| -> Vec<u64> {
            (epoch * n..(epoch + 1) * n)
                .map(|g| one.window_offset(g / 8, g % 8) / 16)
                .collect()
        };
        let (first, second) = (rows_of(0), rows_of(1));
        for order in [&first, &second] {
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "each example once");
        }
        assert_ne!(first, second, "each epoch has its own order");
        assert_ne!(first, (0..n).collect::<Vec<_>>(), "the order is shuffled");
        // Two ranks taking one micro-step each read the same global rows.
        for rank in 0..2 {
            let two = TrainBatches::new(stream.clone(), 7, layout(rank, 2, 4, 1))
                .unwrap()
                .with_epochs(3);
            assert_eq!(two.total_steps(None), one.total_steps(None));
            for step in [0, 5, 11] {
                assert_eq!(
                    two.batch(step, 0).unwrap().offsets,
                    one.batch(step, rank).unwrap().offsets
                );
            }
        }
    }

    #[test]
    fn the_shuffle_is_a_permutation_for_any_size() {
        for n in [1u64, 2, 3, 7, 64, 65, 1000] {
            let mut seen: Vec<u64> = (0..n).map(|i| shuffle(42, i, n)).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn same_seed_and_step_give_the_same_batch_and_other_steps_differ() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 5_000, 3_000);
        let loader = TrainBatches::new(stream.clone(), 1234, layout(0, 1, 8, 2)).unwrap();
        let again = TrainBatches::new(stream.clone(), 1234, layout(0, 1, 8, 2)).unwrap();
        assert_eq!(loader.batch(7, 1).unwrap(), again.batch(7, 1).unwrap());
        assert_ne!(loader.batch(7, 1).unwrap(), loader.batch(8, 1).unwrap());
        assert_ne!(loader.batch(7, 0).unwrap(), loader.batch(7, 1).unwrap());
        let other_seed = TrainBatches::new(stream, 99, layout(0, 1, 8, 2)).unwrap();
        assert_ne!(loader.batch(7, 1).unwrap(), other_seed.batch(7, 1).unwrap());
    }

    #[test]
    fn targets_are_inputs_shifted_by_one_and_windows_match_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 300, 200);
        let loader = TrainBatches::new(stream, 5, layout(0, 1, 64, 1)).unwrap();
        let batch = loader.batch(3, 0).unwrap();
        assert_eq!((batch.rows, batch.context), (64, 16));
        assert_eq!(batch.inputs.len(), 64 * 16);
        for row in 0..batch.rows {
            let offset = batch.offsets[row];
            assert!(offset + 17 <= 500, "window at {offset} overruns the stream");
            let inputs = &batch.inputs[row * 16..(row + 1) * 16];
            let targets = &batch.targets[row * 16..(row + 1) * 16];
            let expected: Vec<u32> = (offset as u32..offset as u32 + 16).collect();
            assert_eq!(inputs, expected.as_slice());
            assert_eq!(&inputs[1..], &targets[..15]);
            assert_eq!(targets[15], offset as u32 + 16);
        }
    }

    #[test]
    fn offsets_cover_the_stream_including_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        // 20 tokens, context 16: exactly 4 window starts (0..=3).
        let stream = two_shard_stream(dir.path(), 12, 8);
        let loader = TrainBatches::new(stream, 0, layout(0, 1, 1, 1)).unwrap();
        let mut seen = [0u32; 4];
        for step in 0..400 {
            seen[loader.window_offset(step, 0) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 60),
            "uneven window starts: {seen:?}"
        );
    }

    #[test]
    fn a_steps_windows_do_not_depend_on_the_rank_layout() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 5_000, 3_000);
        let windows = |world: u32, micro: u32, accum: u32| {
            let mut by_row = BTreeMap::new();
            for rank in 0..world {
                let loader =
                    TrainBatches::new(stream.clone(), 42, layout(rank, world, micro, accum))
                        .unwrap();
                assert_eq!(loader.layout().rows_per_step(), 8);
                for m in 0..accum {
                    let batch = loader.batch(11, m).unwrap();
                    for r in 0..micro {
                        let row = loader.layout().global_row(m, r);
                        let rows = r as usize * 16..(r as usize + 1) * 16;
                        let window = (
                            batch.inputs[rows.clone()].to_vec(),
                            batch.targets[rows].to_vec(),
                        );
                        assert!(by_row.insert(row, window).is_none(), "row {row} read twice");
                    }
                }
            }
            by_row
        };
        let one_rank = windows(1, 4, 2);
        assert_eq!(one_rank.len(), 8);
        assert_eq!(one_rank, windows(2, 4, 1));
        assert_eq!(one_rank, windows(2, 2, 2));
        assert_eq!(one_rank, windows(4, 1, 2));
        assert_eq!(one_rank, windows(8, 1, 1));
    }

    #[test]
    fn short_streams_and_bad_layouts_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 10, 6);
        let err = TrainBatches::new(stream.clone(), 0, layout(0, 1, 1, 1)).unwrap_err();
        match &err {
            LoaderError::TooShort { tokens, needed, .. } => {
                assert_eq!((*tokens, *needed), (16, 17))
            }
            other => panic!("expected TooShort, got {other}"),
        }
        assert!(err.to_string().contains("train-000000.bin"), "{err}");
        assert!(matches!(
            EvalBatches::new(stream.clone(), 1, 16, 1),
            Err(LoaderError::TooShort { .. })
        ));
        let ok = TrainBatches::new(
            stream.clone(),
            0,
            BatchLayout {
                context: 15,
                ..layout(0, 1, 1, 1)
            },
        );
        assert!(ok.is_ok());
        assert!(matches!(
            ok.unwrap().batch(0, 1),
            Err(LoaderError::MicroStep { .. })
        ));
        for bad in [
            layout(2, 2, 1, 1),
            layout(0, 0, 1, 1),
            layout(0, 1, 0, 1),
            layout(0, 1, 1, 0),
        ] {
            let bad = BatchLayout { context: 4, ..bad };
            assert!(matches!(
                TrainBatches::new(stream.clone(), 0, bad),
                Err(LoaderError::Layout(_))
            ));
        }
    }

    #[test]
    fn validation_windows_are_fixed_evenly_spaced_and_span_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let stream = two_shard_stream(dir.path(), 700, 317);
        let eval = EvalBatches::new(stream.clone(), 4, 16, 3).unwrap();
        assert_eq!(eval.len(), 3);
        let batches: Vec<Batch> = (0..3).map(|i| eval.batch(i).unwrap()).collect();
        let offsets: Vec<u64> = batches.iter().flat_map(|b| b.offsets.clone()).collect();
        assert_eq!(offsets.len(), 12);
        assert_eq!(offsets[0], 0);
        assert_eq!(*offsets.last().unwrap(), 1017 - 17);
        let gaps: Vec<u64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == 90 || g == 91), "{gaps:?}");
        let again = EvalBatches::new(stream, 4, 16, 3).unwrap();
        assert_eq!(again.batch(1).unwrap(), batches[1]);
        assert_eq!(batches[2].targets[0], batches[2].inputs[1]);
        assert!(matches!(eval.batch(3), Err(LoaderError::EvalIndex { .. })));
    }
}
