//! `tessera data prepare`: text files in, token shards and a data set description out.
//!
//! ```text
//! INPUT... (files, or directories walked recursively, sorted by path; dot-files skipped)
//!    │ tokenize each file (gpt2: <|endoftext|> before each file; a Hugging Face tokenizer:
//!    │ its EOS before each file; bytes: nothing added)
//!    ▼
//! [ first (1-F) of each file's tokens ] ──▶ DIR/train-000000.bin, train-000001.bin, ...
//! [ last F of each file's tokens      ] ──▶ DIR/val-000000.bin, ...   (none when F = 0)
//!                                           DIR/dataset.json  (tokenizer, counts, files)
//! ```
//!
//! Shards hold at most `shard_tokens` tokens each (100M by default). The output is a pure
//! function of the inputs' contents, their order and the options. Shards and the description
//! left in DIR by an earlier run are replaced.
//!
//! The inputs are one format ([`super::records`]): text files and `jsonl` records (each a
//! document, as above), or `instruction` and `chat` records, which become masked examples
//! packed into rows of `context + 1` tokens ([`super::examples`]); their shards carry the loss
//! mask and the row length, and the last F of the rows (not of each file) are the validation
//! split. Tokenizing runs on every core (rayon), records in order; large inputs log progress.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_api::spec::{DataFormat, Overlong, Tokenizer, TrainOn};
use tracing::info;

use super::chat::{ChatError, ChatTemplate};
use super::examples::{ExampleEncoder, MaskedTokens, PackCounts, Packed, pack};
use super::records::{Record, RecordError, common_format, read_records};
use super::shard::{ShardError, ShardLayout, write_shard_with};
use super::tokenizer::{TextTokenizer, TokenizerError};

/// Default fraction of every input held out for validation.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;
/// Default tokens per shard file.
pub const DEFAULT_SHARD_TOKENS: u64 = 100_000_000;
/// The data set description written beside the shards.
pub const DATASET_FILE: &str = "dataset.json";

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub tokenizer: Tokenizer,
    /// The option or manifest field that named the tokenizer, for its errors.
    pub tokenizer_field: &'static str,
    pub out_dir: PathBuf,
    /// Fraction in [0, 1) of each input's tokens (its end) kept for validation.
    pub val_fraction: f64,
    /// Most tokens in one shard file; at least 1.
    pub shard_tokens: u64,
    pub inputs: Vec<PathBuf>,
    /// The inputs' format; detected from the files when `None`.
    pub format: Option<DataFormat>,
    /// The option or manifest field that named the inputs, for a mixed-format error.
    pub inputs_field: &'static str,
    /// Chat data: a template file in place of the tokenizer directory's.
    pub chat_template: Option<PathBuf>,
    pub train_on: TrainOn,
    pub overlong: Overlong,
    /// Instruction and chat data: the training context; rows are `context + 1` tokens.
    pub context: Option<u32>,
}

impl PrepareOptions {
    /// Options with the defaults for the validation fraction and shard size.
    pub fn new(tokenizer: Tokenizer, out_dir: impl Into<PathBuf>, inputs: Vec<PathBuf>) -> Self {
        PrepareOptions {
            tokenizer,
            tokenizer_field: "--tokenizer",
            out_dir: out_dir.into(),
            val_fraction: DEFAULT_VAL_FRACTION,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            inputs,
            format: None,
            inputs_field: "INPUT",
            chat_template: None,
            train_on: TrainOn::default(),
            overlong: Overlong::default(),
            context: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("no input files given; name at least one text file or directory")]
    NoInputs,
    #[error("input {path} does not exist; check the path")]
    MissingInput { path: PathBuf },
    #[error("input {path} is empty; remove it from the inputs")]
    EmptyInput { path: PathBuf },
    #[error(
        "input directory {path} holds no files (dot-files are skipped); name a directory with text files"
    )]
    EmptyDirectory { path: PathBuf },
    #[error(
        "input {path} is not UTF-8 (first bad byte at offset {offset}); the {tokenizer} tokenizer reads UTF-8 text, use --tokenizer bytes for other data"
    )]
    NotUtf8 {
        path: PathBuf,
        offset: usize,
        tokenizer: String,
    },
    #[error(
        "--val-fraction {value} is outside [0, 1); use e.g. 0.1 to hold out 10%, or 0 for no validation split"
    )]
    ValFraction { value: f64 },
    #[error("shard size {value} tokens is too small; use at least 1")]
    ShardTokens { value: u64 },
    #[error(
        "the validation split is empty: {tokens} tokens with --val-fraction {val_fraction} hold out none; give more text, a larger fraction, or --val-fraction 0"
    )]
    EmptyValidation { tokens: u64, val_fraction: f64 },
    #[error("cannot read input {path}: {source}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to output directory {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Record(Box<RecordError>),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{path}:{line}: {detail}")]
    Example {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "{format} data is packed into rows of the training context: give the context (--context, or model.context in a manifest)"
    )]
    NeedsContext { format: &'static str },
    #[error(
        "{format} data ends every example with an end-of-sequence token, and the {tokenizer} tokenizer has none; use gpt2 or a Hugging Face tokenizer"
    )]
    NoEndOfSequence {
        format: &'static str,
        tokenizer: String,
    },
    #[error(
        "{path} is already token shards; name text or JSONL to tokenize, or use the shards as they are"
    )]
    AlreadyShards { path: PathBuf },
    #[error(
        "no example fits: all {dropped} are longer than the context of {context} tokens and spec.data.overlong is drop; use truncate or a longer context"
    )]
    NoExamples { dropped: u64, context: u32 },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl From<RecordError> for PrepareError {
    fn from(e: RecordError) -> PrepareError {
        PrepareError::Record(Box::new(e))
    }
}

/// `dataset.json`: what was tokenized, how, and where the tokens went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasetDescription {
    pub tokenizer: Tokenizer,
    /// For a Hugging Face tokenizer: SHA-256 of its `tokenizer.json`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    pub vocab_size: u32,
    pub val_fraction: f64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// The largest token id in any shard.
    pub max_token: u32,
    pub train_shards: Vec<ShardEntry>,
    pub val_shards: Vec<ShardEntry>,
    pub inputs: Vec<InputEntry>,
    /// The inputs' format (absent in descriptions from before formats: text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Instruction and chat data: how the examples were packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<PackingDescription>,
}

/// How instruction or chat examples were packed into rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackingDescription {
    /// Tokens per row: the context + 1.
    pub row_len: u32,
    pub train_on: TrainOn,
    pub overlong: Overlong,
    /// SHA-256 of the chat template's source (chat data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
    pub examples: u64,
    pub truncated: u64,
    pub dropped: u64,
    pub train_rows: u64,
    pub val_rows: u64,
    /// Targets the loss counts in the training and validation rows.
    pub train_counted: u64,
    pub val_counted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardEntry {
    /// File name, relative to the data set directory.
    pub file: String,
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputEntry {
    pub path: String,
    pub train_tokens: u64,
    pub val_tokens: u64,
}

/// What [`prepare`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    pub out_dir: PathBuf,
    pub description: DatasetDescription,
    pub train_shards: Vec<PathBuf>,
    pub val_shards: Vec<PathBuf>,
    pub description_path: PathBuf,
}

/// Tokenizes the inputs into train and validation shards under `options.out_dir`.
pub fn prepare(options: &PrepareOptions) -> Result<PrepareReport, PrepareError> {
    let val_fraction = options.val_fraction;
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(PrepareError::ValFraction {
            value: val_fraction,
        });
    }
    if options.shard_tokens == 0 {
        return Err(PrepareError::ShardTokens { value: 0 });
    }
    let files = collect_inputs(&options.inputs)?;
    let tokenizer = TextTokenizer::load(&options.tokenizer, options.tokenizer_field)?;
    let vocab_size = tokenizer.vocab_size();

    let out_dir = &options.out_dir;
    let output_err = |source| PrepareError::Output {
        path: out_dir.clone(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(output_err)?;
    remove_previous_output(out_dir).map_err(output_err)?;

    let spec = options
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let format = common_format(options.inputs_field, &spec, &files, options.format)?;
    let mut train = ShardSink::new(out_dir, "train", options.shard_tokens, vocab_size);
    let mut val = ShardSink::new(out_dir, "val", options.shard_tokens, vocab_size);
    let mut inputs = Vec::with_capacity(files.len());
    let mut packing = None;
    match format {
        DataFormat::Shards => {
            return Err(PrepareError::AlreadyShards {
                path: files[0].clone(),
            });
        }
        DataFormat::Text | DataFormat::Jsonl => {
            // Files are tokenized on every core; their tokens are written in order.
            let progress = Progress::new(files.len() as u64, "files");
            let per_file: Vec<Result<Vec<u32>, PrepareError>> = files
                .par_iter()
                .map(|path| {
                    let tokens = if format == DataFormat::Text {
                        tokenize_file(&tokenizer, path)
                    } else {
                        tokenize_jsonl(&tokenizer, path)
                    };
                    progress.advance(1);
                    tokens
                })
                .collect();
            for (path, tokens) in files.iter().zip(per_file) {
                let tokens = tokens?;
                let val_tokens = (tokens.len() as f64 * val_fraction).floor() as usize;
                let split = tokens.len() - val_tokens;
                train.push(&tokens[..split], None)?;
                val.push(&tokens[split..], None)?;
                inputs.push(InputEntry {
                    path: path.display().to_string(),
                    train_tokens: split as u64,
                    val_tokens: val_tokens as u64,
                });
            }
        }
        DataFormat::Instruction | DataFormat::Chat => {
            let context = options.context.ok_or(PrepareError::NeedsContext {
                format: format.name(),
            })?;
            let row_len = context as usize + 1;
            let eos = tokenizer
                .end_of_text()
                .ok_or_else(|| PrepareError::NoEndOfSequence {
                    format: format.name(),
                    tokenizer: tokenizer.name().to_string(),
                })?;
            let template = match format {
                DataFormat::Chat => Some(load_template(&tokenizer, options)?),
                _ => None,
            };
            let encoder = ExampleEncoder {
                tokenizer: &tokenizer,
                template: template.as_ref(),
                train_on: options.train_on,
                eos,
            };
            let mut examples = Vec::new();
            for path in &files {
                let encoded = encode_file(&encoder, path, format)?;
                let tokens: u64 = encoded.iter().map(|e| e.len() as u64).sum();
                inputs.push(InputEntry {
                    path: path.display().to_string(),
                    train_tokens: tokens,
                    val_tokens: 0,
                });
                examples.extend(encoded);
            }
            let packed = pack(examples, row_len, eos, options.overlong);
            if packed.counts.rows == 0 {
                return Err(PrepareError::NoExamples {
                    dropped: packed.counts.dropped,
                    context,
                });
            }
            let counts = packed.counts;
            let val_rows = (packed.counts.rows as f64 * val_fraction).floor() as usize;
            let (train_rows, val_part) = packed.split_rows(counts.rows as usize - val_rows);
            train.rows(row_len);
            val.rows(row_len);
            train.push(&train_rows.tokens, Some(&train_rows.mask))?;
            val.push(&val_part.tokens, Some(&val_part.mask))?;
            packing = Some(packing_description(
                row_len,
                options,
                template.as_ref(),
                counts,
                (&train_rows, &val_part),
            ));
        }
    }
    train.finish()?;
    val.finish()?;
    if val_fraction > 0.0 && val.total == 0 {
        return Err(PrepareError::EmptyValidation {
            tokens: train.total,
            val_fraction,
        });
    }

    let description = DatasetDescription {
        tokenizer: options.tokenizer.clone(),
        tokenizer_sha256: tokenizer.file_sha256().map(str::to_string),
        vocab_size,
        val_fraction,
        train_tokens: train.total,
        val_tokens: val.total,
        max_token: train.max_token.max(val.max_token),
        train_shards: train.entries,
        val_shards: val.entries,
        inputs,
        format: Some(format),
        packing,
    };
    let description_path = out_dir.join(DATASET_FILE);
    let json = serde_json::to_vec_pretty(&description).expect("plain data serializes");
    std::fs::write(&description_path, json).map_err(output_err)?;
    Ok(PrepareReport {
        out_dir: out_dir.clone(),
        train_shards: train.paths,
        val_shards: val.paths,
        description,
        description_path,
    })
}

/// Reads `DIR/dataset.json`, if the directory has one.
pub fn read_dataset_description(dir: &Path) -> Option<DatasetDescription> {
    let bytes = std::fs::read(dir.join(DATASET_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every input file, directories expanded recursively, each argument's files sorted by path.
pub(crate) fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, PrepareError> {
    if inputs.is_empty() {
        return Err(PrepareError::NoInputs);
    }
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => PrepareError::MissingInput {
                path: input.clone(),
            },
            _ => PrepareError::ReadInput {
                path: input.clone(),
                source,
            },
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            if found.is_empty() {
                return Err(PrepareError::EmptyDirectory {
                    path: input.clone(),
                });
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), PrepareError> {
    let read_err = |source| PrepareError::ReadInput {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, so a linked file or directory counts as what it points to.
        let meta = std::fs::metadata(&path).map_err(|source| PrepareError::ReadInput {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

fn packing_description(
    row_len: usize,
    options: &PrepareOptions,
    template: Option<&ChatTemplate>,
    counts: PackCounts,
    (train, val): (&Packed, &Packed),
) -> PackingDescription {
    PackingDescription {
        row_len: row_len as u32,
        train_on: options.train_on,
        overlong: options.overlong,
        chat_template_sha256: template.map(|t| t.sha256().to_string()),
        examples: counts.examples,
        truncated: counts.truncated,
        dropped: counts.dropped,
        train_rows: train.counts.rows,
        val_rows: val.counts.rows,
        train_counted: train.counts.counted,
        val_counted: val.counts.counted,
    }
}

/// The chat template: the file the options name, else the tokenizer directory's.
pub fn load_template(
    tokenizer: &TextTokenizer,
    options: &PrepareOptions,
) -> Result<ChatTemplate, PrepareError> {
    let TextTokenizer::HuggingFace(hf) = tokenizer else {
        return Err(PrepareError::Example {
            path: options.inputs.first().cloned().unwrap_or_default(),
            line: 1,
            detail: format!(
                "chat data needs a Hugging Face tokenizer (model.from, or a tokenizer.json path in spec.data.tokenizer), not {}",
                tokenizer.name()
            ),
        });
    };
    let (source, origin) = match &options.chat_template {
        Some(file) => (ChatTemplate::read_file(file)?, file.clone()),
        None => ChatTemplate::find_in(hf.dir())?.ok_or_else(|| ChatError::NoTemplate {
            dir: hf.dir().to_path_buf(),
        })?,
    };
    let spelling = |id: Option<u32>| id.and_then(|id| hf.token_text(id));
    Ok(ChatTemplate::new(
        &source,
        origin.display().to_string(),
        spelling(hf.bos()),
        spelling(hf.eos()),
    )?)
}

/// Logs how far tokenizing is, every tenth of the work, when there is a lot of it.
struct Progress {
    total: u64,
    what: &'static str,
    done: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// Below this many items nothing is logged.
    const LARGE: u64 = 10_000;

    fn new(total: u64, what: &'static str) -> Progress {
        Progress {
            total,
            what,
            done: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let after = before + n;
        let tenth = (self.total / 10).max(1);
        if self.total >= Self::LARGE && before / tenth != after / tenth {
            info!(
                done = after,
                total = self.total,
                "tokenizing: {after}/{} {}",
                self.total,
                self.what
            );
        }
    }
}

/// A JSONL file's documents, each preceded by the end-of-text token as text files are.
fn tokenize_jsonl(tokenizer: &TextTokenizer, path: &Path) -> Result<Vec<u32>, PrepareError> {
    let records = read_records(path, DataFormat::Jsonl)?;
    let progress = Progress::new(records.len() as u64, "records");
    let docs: Vec<Result<Vec<u32>, PrepareError>> = records
        .par_iter()
        .map(|(_, record)| {
            // read_records(Jsonl) yields text records only.
            let text = match record {
                Record::Text(text) => text.as_str(),
                _ => "",
            };
            let mut tokens = Vec::with_capacity(text.len() / 3 + 1);
            tokens.extend(tokenizer.end_of_text());
            tokens.extend(tokenizer.encode(text)?);
            progress.advance(1);
            Ok(tokens)
        })
        .collect();
    let mut all = Vec::new();
    for doc in docs {
        all.extend(doc?);
    }
    Ok(all)
}

/// A file's instruction or chat records as masked examples, in order (on every core).
fn encode_file(
    encoder: &ExampleEncoder<'_>,
    path: &Path,
    format: DataFormat,
) -> Result<Vec<MaskedTokens>, PrepareError> {
    let records = read_records(path, format)?;
    let progress = Progress::new(records.len() as u64, "examples");
    records
        .par_iter()
        .map(|(line, record)| {
            let encoded = encoder
                .encode(record)
                .map_err(|detail| PrepareError::Example {
                    path: path.to_path_buf(),
                    line: *line,
                    detail,
                });
            progress.advance(1);
            encoded
        })
        .collect()
}

fn tokenize_file(tokenizer: &TextTokenizer, path: &Path) -> Result<Vec<u32>, PrepareError> {
    let bytes = std::fs::read(path).map_err(|source| PrepareError::ReadInput {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(PrepareError::EmptyInput {
            path: path.to_path_buf(),
        });
    }
    match tokenizer {
        TextTokenizer::Bytes => Ok(bytes.iter().map(|&b| u32::from(b)).collect()),
        TextTokenizer::Gpt2(_) | TextTokenizer::HuggingFace(_) => {
            let text = String::from_utf8(bytes).map_err(|e| PrepareError::NotUtf8 {
                path: path.to_path_buf(),
                offset: e.utf8_error().valid_up_to(),
                tokenizer: tokenizer.name().to_string(),
            })?;
            let mut tokens = Vec::with_capacity(text.len() / 3 + 1);
            // Documents start with the end-of-text token (GPT-2's <|endoftext|>, as its
            // training data did; a Hugging Face tokenizer's EOS, see hf_tokenizer.rs).
            tokens.extend(tokenizer.end_of_text());
            tokens.extend(tokenizer.encode(&text)?);
            Ok(tokens)
        }
    }
}

/// Deletes `train-NNNNNN.bin`, `val-NNNNNN.bin` and `dataset.json` from an earlier run, so a
/// smaller new data set does not leave stale shards behind.
fn remove_previous_output(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == DATASET_FILE || is_shard_name(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("train-")
        .or_else(|| name.strip_prefix("val-"))
    else {
        return false;
    };
    let Some(digits) = rest.strip_suffix(".bin") else {
        return false;
    };
    digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Buffers one split's tokens and writes a shard whenever `shard_tokens` have gathered.
struct ShardSink<'a> {
    dir: &'a Path,
    split: &'static str,
    shard_tokens: usize,
    vocab_size: u32,
    buffer: Vec<u32>,
    /// The loss mask of `buffer`, when the data has one.
    mask: Option<Vec<bool>>,
    /// Tokens per packed row (0: a stream); a shard holds whole rows.
    row_len: usize,
    total: u64,
    max_token: u32,
    entries: Vec<ShardEntry>,
    paths: Vec<PathBuf>,
}

impl<'a> ShardSink<'a> {
    fn new(dir: &'a Path, split: &'static str, shard_tokens: u64, vocab_size: u32) -> Self {
        ShardSink {
            dir,
            split,
            shard_tokens: usize::try_from(shard_tokens).unwrap_or(usize::MAX),
            vocab_size,
            buffer: Vec::new(),
            mask: None,
            row_len: 0,
            total: 0,
            max_token: 0,
            entries: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// Packed rows of `row_len` tokens: every shard holds whole rows.
    fn rows(&mut self, row_len: usize) {
        self.row_len = row_len;
        self.shard_tokens = (self.shard_tokens / row_len).max(1) * row_len;
    }

    fn push(&mut self, mut tokens: &[u32], mut mask: Option<&[bool]>) -> Result<(), ShardError> {
        while !tokens.is_empty() {
            let room = self.shard_tokens - self.buffer.len();
            let take = room.min(tokens.len());
            self.buffer.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if let Some(m) = mask {
                self.mask
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&m[..take]);
                mask = Some(&m[take..]);
            }
            if self.buffer.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ShardError> {
        if !self.buffer.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ShardError> {
        let file = format!("{}-{:06}.bin", self.split, self.entries.len());
        let path = self.dir.join(&file);
        let layout = ShardLayout {
            mask: self.mask.as_deref(),
            row_len: self.row_len as u32,
        };
        let summary = write_shard_with(&path, &self.buffer, self.vocab_size, layout)?;
        self.max_token = self
            .max_token
            .max(self.buffer.iter().copied().max().unwrap_or(0));
        self.total += summary.tokens;
        self.entries.push(ShardEntry {
            file,
            tokens: summary.tokens,
        });
        self.paths.push(path);
        self.buffer.clear();
        if let Some(mask) = &mut self.mask {
            mask.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::read_shard;

    const SHAKESPEARE: &str = "/work/shared/data/tinyshakespeare.txt";

    fn shakespeare() -> PathBuf {
        let path = PathBuf::from(SHAKESPEARE);
        assert!(
            path.exists(),
            "{SHAKESPEARE} is missing: the test corpus lives in shared/data"
        );
        path
    }

    #[test]
    fn a_hugging_face_tokenizer_makes_shards_of_its_vocabulary_that_decode_back() {
        let llama = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/llama-gqa");
        let dir = tempfile::tempdir().unwrap();
        let texts = [
            "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(5),
            "Café naïve 日本語 🙂 — and <|eot_id|> written out.\n".repeat(5),
        ];
        let mut inputs = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let path = dir.path().join(format!("{i}.txt"));
            std::fs::write(&path, text).unwrap();
            inputs.push(path);
        }
        let mut options =
            PrepareOptions::new(Tokenizer::from(llama), dir.path().join("out"), inputs);
        options.val_fraction = 0.0;
        let report = prepare(&options).unwrap();
        let d = &report.description;
        assert_eq!(d.vocab_size, 384);
        assert!(d.tokenizer_sha256.as_ref().is_some_and(|s| s.len() == 64));
        let shard = read_shard(&report.train_shards[0]).unwrap();
        assert_eq!(shard.vocab_size, 384);
        let tokens = shard.tokens.to_u32();
        let tokenizer = TextTokenizer::load(&Tokenizer::from(llama), "--tokenizer").unwrap();
        // Each document is its EOS (<|eot_id|>, 376) and its text; no special token inside.
        let starts: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i] == 376).collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0], 0);
        assert_eq!(tokenizer.decode(&tokens[1..starts[1]]).unwrap(), texts[0]);
        assert_eq!(
            tokenizer.decode(&tokens[starts[1] + 1..]).unwrap(),
            texts[1]
        );
        assert_eq!(read_dataset_description(&report.out_dir).unwrap(), *d);

        let mut missing = options.clone();
        missing.tokenizer = Tokenizer::from("./no/such/model");
        let err = prepare(&missing).unwrap_err().to_string();
        assert!(
            err.contains("--tokenizer") && err.contains("./no/such/model"),
            "{err}"
        );
    }

    #[test]
    fn tinyshakespeare_with_bytes_splits_ninety_ten() {
        let input = shakespeare();
        let out = tempfile::tempdir().unwrap();
        let options = PrepareOptions::new(Tokenizer::Bytes, out.path(), vec![input]);
        let report = prepare(&options).unwrap();
        let d = &report.description;
        assert_eq!(d.train_tokens + d.val_tokens, 1_115_394);
        assert_eq!(d.val_tokens, 111_539); // floor(1_115_394 * 0.1)
        assert_eq!(d.train_tokens, 1_003_855);
        assert_eq!(
            report.train_shards,
            vec![out.path().join("train-000000.bin")]
        );
        assert_eq!(report.val_shards, vec![out.path().join("val-000000.bin")]);
        let train = read_shard(&report.train_shards[0]).unwrap();
        let val = read_shard(&report.val_shards[0]).unwrap();
        assert_eq!(train.tokens.len() as u64, d.train_tokens);
        assert_eq!(val.tokens.len() as u64, d.val_tokens);
        // The split is the file itself, cut at the boundary.
        let text = std::fs::read(SHAKESPEARE).unwrap();
        let expected_train: Vec<u32> = text[..1_003_855].iter().map(|&b| u32::from(b)).collect();
        let expected_val: Vec<u32> = text[1_003_855..].iter().map(|&b| u32::from(b)).collect();
        assert_eq!(train.tokens.to_u32(), expected_train);
        assert_eq!(val.tokens.to_u32(), expected_val);
        let json = read_dataset_description(out.path()).unwrap();
        assert_eq!(&json, d);
        assert_eq!(json.vocab_size, 256);
        assert_eq!(json.max_token, *text.iter().max().unwrap() as u32);
    }

    #[test]
    fn gpt2_prepare_starts_documents_with_end_of_text() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.txt");
        std::fs::write(&input, "Hello world").unwrap();
        let mut options = PrepareOptions::new(Tokenizer::Gpt2, dir.path().join("out"), vec![input]);
        options.val_fraction = 0.0;
        let report = prepare(&options).unwrap();
        assert!(report.val_shards.is_empty());
        let train = read_shard(&report.train_shards[0]).unwrap();
        assert_eq!(train.tokens.to_u32(), vec![50_256, 15496, 995]);
        assert_eq!(train.vocab_size, 50_257);
    }

    #[test]
    fn directories_are_walked_sorted_and_shards_split_at_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus");
        std::fs::create_dir_all(corpus.join("sub")).unwrap();
        std::fs::write(corpus.join("b.txt"), "bbbbbbbbbb").unwrap();
        std::fs::write(corpus.join("a.txt"), "aaaaaaaaaa").unwrap();
        std::fs::write(corpus.join("sub/c.txt"), "cccccccccc").unwrap();
        std::fs::write(corpus.join(".hidden"), "zzzz").unwrap();
        let out = dir.path().join("out");
        let mut options = PrepareOptions::new(Tokenizer::Bytes, &out, vec![corpus.clone()]);
        options.val_fraction = 0.2;
        options.shard_tokens = 7;
        let report = prepare(&options).unwrap();
        let d = &report.description;
        assert_eq!((d.train_tokens, d.val_tokens), (24, 6));
        let names: Vec<_> = d
            .train_shards
            .iter()
            .map(|s| (s.file.as_str(), s.tokens))
            .collect();
        assert_eq!(
            names,
            vec![
                ("train-000000.bin", 7),
                ("train-000001.bin", 7),
                ("train-000002.bin", 7),
                ("train-000003.bin", 3)
            ]
        );
        let mut train = Vec::new();
        for p in &report.train_shards {
            train.extend(read_shard(p).unwrap().tokens.to_u32());
        }
        assert_eq!(
            train,
            "aaaaaaaabbbbbbbbcccccccc"
                .bytes()
                .map(u32::from)
                .collect::<Vec<_>>()
        );
        let mut val = Vec::new();
        for p in &report.val_shards {
            val.extend(read_shard(p).unwrap().tokens.to_u32());
        }
        assert_eq!(val, "aabbcc".bytes().map(u32::from).collect::<Vec<_>>());
        let inputs: Vec<_> = d.inputs.iter().map(|i| i.path.clone()).collect();
        assert!(inputs[0].ends_with("a.txt") && inputs[1].ends_with("b.txt"));
        assert!(inputs[2].ends_with("c.txt") && inputs.len() == 3);

        // A second, smaller run over the same directory leaves no stale shard behind.
        options.shard_tokens = 100;
        let again = prepare(&options).unwrap();
        assert_eq!(again.train_shards.len(), 1);
        assert!(!out.join("train-000001.bin").exists());
    }

    #[test]
    fn bad_options_and_inputs_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "some text here").unwrap();
        let with = |inputs: Vec<PathBuf>, f: f64| {
            let mut o = PrepareOptions::new(Tokenizer::Bytes, &out, inputs);
            o.val_fraction = f;
            prepare(&o)
        };
        assert!(matches!(with(vec![], 0.1), Err(PrepareError::NoInputs)));
        let missing = with(vec![dir.path().join("nope.txt")], 0.1).unwrap_err();
        assert!(matches!(missing, PrepareError::MissingInput { .. }));
        assert!(missing.to_string().contains("nope.txt"));
        for f in [1.0, -0.1, f64::NAN, 2.0] {
            assert!(matches!(
                with(vec![text.clone()], f),
                Err(PrepareError::ValFraction { .. })
            ));
        }
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            with(vec![empty], 0.1),
            Err(PrepareError::EmptyInput { .. })
        ));
        let empty_dir = dir.path().join("nothing");
        std::fs::create_dir(&empty_dir).unwrap();
        assert!(matches!(
            with(vec![empty_dir], 0.1),
            Err(PrepareError::EmptyDirectory { .. })
        ));
        let short = dir.path().join("short.txt");
        std::fs::write(&short, "abc").unwrap();
        assert!(matches!(
            with(vec![short], 0.1),
            Err(PrepareError::EmptyValidation { .. })
        ));
        let binary = dir.path().join("b.dat");
        std::fs::write(&binary, [0xFFu8, 0xFE, 0x00]).unwrap();
        let mut o = PrepareOptions::new(Tokenizer::Gpt2, &out, vec![binary]);
        o.val_fraction = 0.0;
        assert!(matches!(
            prepare(&o),
            Err(PrepareError::NotUtf8 { offset: 0, .. })
        ));
        // A `.bin` input is token shards, not text to tokenize.
        let shard = dir.path().join("c.bin");
        std::fs::write(&shard, [1u8, 2, 3]).unwrap();
        let mut o = PrepareOptions::new(Tokenizer::Gpt2, &out, vec![shard]);
        o.val_fraction = 0.0;
        assert!(matches!(
            prepare(&o),
            Err(PrepareError::AlreadyShards { .. })
        ));
    }
}
