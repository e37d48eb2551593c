//! The data a run trains on, whichever form the manifest names it in: token shards are used as
//! they are; text is tokenized once into the token cache beside the checkpoints (layout, key
//! and record: [`tessera_api::token_cache`]) and its shards used from there.
//!
//! ```text
//! spec.data.train ──classify──▶ shards ───────────────────────────────────▶ train shards
//!                          └──▶ text ──materialize──▶ tokens/KEY/train-*.bin ─▶ train shards
//!                                                    tokens/KEY/val-*.bin ───▶ validation
//!                                                    (with data.validationFraction)
//! ```
//!
//! An entry is written into a private `.KEY.partial-PID-N` directory, made durable, and renamed
//! into place with its record inside, so an entry either is whole or is not there. Processes
//! that tokenize the same inputs at once race harmlessly: the first rename wins and the others
//! use its entry. A second start of a run finds the entry and tokenizes nothing.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_api::{
    spec::{DataFormat, DataSpec, Overlong, Tokenizer, TrainOn},
    token_cache::{
        TOKEN_CACHE_DIR, TOKEN_CACHE_RECORD, TOKEN_CACHE_VERSION, TokenCacheExamples,
        TokenCacheInput, TokenCacheRecord, cache_key,
    },
};

use super::{
    loader::{LoaderError, matching_files, resolve_shard_spec},
    prepare::{PrepareError, PrepareOptions, collect_inputs, load_template, prepare},
    records::{RecordError, common_format},
    shard::SHARD_MAGIC,
    tokenizer::TextTokenizer,
};

/// How the run turns its data into tokens, beyond the tokenizer: the manifest's
/// `data.format`, `chatTemplate`, `trainOn`, `overlong`, and the training context.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizeOptions {
    pub format: Option<DataFormat>,
    /// Resolved against the manifest's directory.
    pub chat_template: Option<PathBuf>,
    pub train_on: TrainOn,
    pub overlong: Overlong,
    pub context: u32,
}

impl TokenizeOptions {
    /// Text-only defaults (no format given, a context that only packed data uses).
    pub fn text(context: u32) -> TokenizeOptions {
        TokenizeOptions {
            format: None,
            chat_template: None,
            train_on: TrainOn::default(),
            overlong: Overlong::default(),
            context,
        }
    }
}

/// The manifest field a run's tokenizer comes from, for its errors.
const TOKENIZER_FIELD: &str = "spec.data.tokenizer";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Record(Box<RecordError>),
    #[error(
        "{field}: {spec} mixes token shards ({shard}) and text ({text}); name one kind of data per field"
    )]
    Mixed {
        field: &'static str,
        spec: String,
        shard: PathBuf,
        text: PathBuf,
    },
    #[error(
        "{field}: {path} does not exist (from {spec}); name text (a file, folder or glob) or token shards made by `tessera data prepare`"
    )]
    Missing {
        field: &'static str,
        spec: String,
        path: PathBuf,
    },
    #[error(
        "spec.data.validationFraction holds out part of text data, but spec.data.train ({spec}) names token shards; name validation shards in spec.data.validation instead"
    )]
    FractionOnShards { spec: String },
    #[error(
        "token cache entry {path} is damaged ({detail}); remove that directory and the run tokenizes its data again"
    )]
    BadEntry { path: PathBuf, detail: String },
    #[error("token cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<RecordError> for CacheError {
    fn from(e: RecordError) -> CacheError {
        CacheError::Record(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a data field names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataForm {
    /// Token shards: the field is used as it is.
    Shards,
    /// Text files (directories expanded), in the order they are tokenized.
    Text(Vec<PathBuf>),
}

/// Finds out from the files whether `spec` (already resolved against the base directory)
/// names token shards or text. A file is a shard when it starts with the shard magic or
/// is named `*.bin` (the loader then checks it); a directory holds shards when it has `*.bin` files at its top, text otherwise (walked
/// recursively, dot-files skipped, as `tessera data prepare` walks it).
pub fn classify(field: &'static str, spec: &str) -> Result<DataForm, CacheError> {
    let path = Path::new(spec);
    let globbed = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains('*'));
    let files = if globbed {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let pattern = path.file_name().unwrap_or_default().to_string_lossy();
        if dir.to_string_lossy().contains('*') {
            // The loader names this mistake.
            resolve_shard_spec(spec)?;
        }
        if !dir.is_dir() {
            return Err(CacheError::Missing {
                field,
                spec: spec.to_string(),
                path: dir.to_path_buf(),
            });
        }
        matching_files(dir, &pattern, spec)?
    } else if path.is_dir() {
        if matching_files(path, "*.bin", spec).is_ok() {
            return Ok(DataForm::Shards);
        }
        collect_inputs(&[path.to_path_buf()])?
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(CacheError::Missing {
            field,
            spec: spec.to_string(),
            path: path.to_path_buf(),
        });
    };
    let (mut shards, mut text) = (None, None);
    for file in &files {
        // `.bin` is the shards' extension: such a file without the magic is a damaged or
        // foreign shard, which the loader names, not text to tokenize.
        let named_bin = file.extension().is_some_and(|e| e == "bin");
        let slot = if named_bin || is_shard(file)? {
            &mut shards
        } else {
            &mut text
        };
        slot.get_or_insert_with(|| file.clone());
    }
    match (shards, text) {
        (Some(shard), Some(text)) => Err(CacheError::Mixed {
            field,
            spec: spec.to_string(),
            shard,
            text,
        }),
        (Some(_), None) => Ok(DataForm::Shards),
        _ => Ok(DataForm::Text(files)),
    }
}

fn is_shard(path: &Path) -> Result<bool, CacheError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).map_err(io_err(path))? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read == head.len() && head == SHARD_MAGIC)
}

/// A committed cache entry.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedTokens {
    pub dir: PathBuf,
    pub record: TokenCacheRecord,
    /// The entry was there already: nothing was tokenized.
    pub reused: bool,
}

impl CachedTokens {
    /// The entry's training shards, as a data spec.
    pub fn train_spec(&self) -> String {
        self.dir.join("train-*.bin").display().to_string()
    }

    /// The entry's validation shards, when it held any out.
    pub fn val_spec(&self) -> Option<String> {
        (self.record.val_tokens > 0).then(|| self.dir.join("val-*.bin").display().to_string())
    }
}

/// The cache entry for `files` tokenized with `tokenizer`, the end `val_fraction` of each held
/// out: found under `cache_root`, or made there.
pub fn materialize(
    cache_root: &Path,
    (field, spec): (&'static str, &str),
    files: &[PathBuf],
    tokenizer: &Tokenizer,
    val_fraction: f64,
    how: &TokenizeOptions,
) -> Result<CachedTokens, CacheError> {
    // Loaded for its identity: a Hugging Face tokenizer enters the key by its file's hash.
    let text_tokenizer = TextTokenizer::load(tokenizer, TOKENIZER_FIELD)
        .map_err(|e| CacheError::Prepare(e.into()))?;
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        let bytes = std::fs::read(file).map_err(|source| PrepareError::ReadInput {
            path: file.clone(),
            source,
        })?;
        inputs.push(TokenCacheInput {
            path: file.display().to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    let shas: Vec<String> = inputs.iter().map(|i| i.sha256.clone()).collect();
    let format = common_format(field, spec, files, how.format)?;
    let mut options = PrepareOptions::new(text_tokenizer.kind(), PathBuf::new(), files.to_vec());
    options.tokenizer_field = TOKENIZER_FIELD;
    options.inputs_field = field;
    options.val_fraction = val_fraction;
    options.format = Some(format);
    options.chat_template = how.chat_template.clone();
    options.train_on = how.train_on;
    options.overlong = how.overlong;
    options.context = Some(how.context);
    // Everything the tokens depend on enters the key: for packed examples the row length,
    // the mask rule and the template too (text keeps its entry across contexts).
    let identity = match format {
        DataFormat::Instruction | DataFormat::Chat => {
            let template = match format {
                DataFormat::Chat => load_template(&text_tokenizer, &options)?
                    .sha256()
                    .to_string(),
                _ => String::new(),
            };
            format!(
                "{} format={} rows={} trainOn={:?} overlong={:?} template={template}",
                text_tokenizer.cache_id(),
                format.name(),
                how.context + 1,
                how.train_on,
                how.overlong
            )
        }
        other => format!("{} format={}", text_tokenizer.cache_id(), other.name()),
    };
    let key = cache_key(&identity, val_fraction, &shas);
    let dir = cache_root.join(&key);
    if dir.exists() {
        return read_entry(&dir, &key);
    }

    std::fs::create_dir_all(cache_root).map_err(io_err(cache_root))?;
    // Private to this process and call: racing writers never share a directory.
    static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = cache_root.join(format!(".{key}.partial-{}-{n}", std::process::id()));
    options.out_dir = partial.clone();
    let made = write_entry(&options, &text_tokenizer, key.clone(), inputs);
    let record = match made {
        Ok(record) => record,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    match std::fs::rename(&partial, &dir) {
        Ok(()) => {
            sync_dir(cache_root)?;
            Ok(CachedTokens {
                dir,
                record,
                reused: false,
            })
        }
        // Another process committed the same entry first: use that one.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&partial);
            read_entry(&dir, &key)
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(CacheError::Io { path: dir, source })
        }
    }
}

fn write_entry(
    options: &PrepareOptions,
    tokenizer: &TextTokenizer,
    key: String,
    inputs: Vec<TokenCacheInput>,
) -> Result<TokenCacheRecord, CacheError> {
    let partial = options.out_dir.as_path();
    let val_fraction = options.val_fraction;
    let report = prepare(options)?;
    let examples = report
        .description
        .packing
        .as_ref()
        .map(|p| TokenCacheExamples {
            row_len: p.row_len,
            examples: p.examples,
            truncated: p.truncated,
            dropped: p.dropped,
            train_rows: p.train_rows,
            val_rows: p.val_rows,
            train_counted: p.train_counted,
            val_counted: p.val_counted,
        });
    let record = TokenCacheRecord {
        version: TOKEN_CACHE_VERSION,
        key,
        tokenizer: tokenizer.kind(),
        tokenizer_sha256: tokenizer.file_sha256().map(str::to_string),
        val_fraction,
        train_tokens: report.description.train_tokens,
        val_tokens: report.description.val_tokens,
        inputs,
        created: tessera_api::clock::rfc3339_now(),
        format: report.description.format,
        examples,
    };
    let json = serde_json::to_vec_pretty(&record).expect("plain data serializes");
    std::fs::write(partial.join(TOKEN_CACHE_RECORD), json).map_err(io_err(partial))?;
    for entry in std::fs::read_dir(partial).map_err(io_err(partial))? {
        let path = entry.map_err(io_err(partial))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
    }
    sync_dir(partial)?;
    Ok(record)
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read_entry(dir: &Path, key: &str) -> Result<CachedTokens, CacheError> {
    let bad = |detail: String| CacheError::BadEntry {
        path: dir.to_path_buf(),
        detail,
    };
    let path = dir.join(TOKEN_CACHE_RECORD);
    let bytes = std::fs::read(&path).map_err(|e| bad(format!("{TOKEN_CACHE_RECORD}: {e}")))?;
    let record: TokenCacheRecord =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("{TOKEN_CACHE_RECORD}: {e}")))?;
    if record.version != TOKEN_CACHE_VERSION || record.key != key {
        return Err(bad(format!(
            "its record says version {} key {}, expected version {TOKEN_CACHE_VERSION} key {key}",
            record.version, record.key
        )));
    }
    Ok(CachedTokens {
        dir: dir.to_path_buf(),
        record,
        reused: true,
    })
}

/// The shards a run reads, after any text it names has been tokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct RunData {
    /// Training shards, as a data spec.
    pub train: String,
    /// Validation shards, as a data spec.
    pub validation: Option<String>,
    /// The cache entries behind them (empty when the manifest named shards).
    pub tokenized: Vec<CachedTokens>,
}

/// Resolves the manifest's data against `base_dir`, tokenizing text into the cache under
/// `checkpoint_root` (its `tokens/` directory).
pub fn resolve_run_data(
    data: &DataSpec,
    base_dir: &Path,
    checkpoint_root: &Path,
    context: u32,
) -> Result<RunData, CacheError> {
    let cache_root = checkpoint_root.join(TOKEN_CACHE_DIR);
    let resolve = |spec: &str| {
        let p = Path::new(spec);
        if p.is_absolute() {
            spec.to_string()
        } else {
            base_dir.join(p).display().to_string()
        }
    };
    let mut tokenized = Vec::new();
    // A Hugging Face tokenizer's path resolves against the same base as the data.
    let tokenizer = match &data.tokenizer {
        Tokenizer::HuggingFace(path) => Tokenizer::HuggingFace(resolve(path)),
        builtin => builtin.clone(),
    };
    let how = TokenizeOptions {
        format: data.format,
        chat_template: data
            .chat_template
            .as_deref()
            .map(|t| PathBuf::from(resolve(t))),
        train_on: data.train_on.unwrap_or_default(),
        overlong: data.overlong.unwrap_or_default(),
        context,
    };
    let train_spec = resolve(&data.train);
    let (train, held_out) = match classify("spec.data.train", &train_spec)? {
        DataForm::Shards => {
            if data.validation_fraction.is_some() {
                return Err(CacheError::FractionOnShards { spec: train_spec });
            }
            (train_spec, None)
        }
        DataForm::Text(files) => {
            let fraction = data.validation_fraction.unwrap_or(0.0);
            let field = ("spec.data.train", train_spec.as_str());
            let entry = materialize(&cache_root, field, &files, &tokenizer, fraction, &how)?;
            let specs = (entry.train_spec(), entry.val_spec());
            tokenized.push(entry);
            specs
        }
    };
    let validation = match &data.validation {
        None => held_out,
        Some(val) => {
            let val_spec = resolve(val);
            match classify("spec.data.validation", &val_spec)? {
                DataForm::Shards => Some(val_spec),
                DataForm::Text(files) => {
                    let field = ("spec.data.validation", val_spec.as_str());
                    let entry = materialize(&cache_root, field, &files, &tokenizer, 0.0, &how)?;
                    let spec = entry.train_spec();
                    tokenized.push(entry);
                    Some(spec)
                }
            }
        }
    };
    Ok(RunData {
        train,
        validation,
        tokenized,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{loader::TokenStream, shard::write_shard};

    fn text_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn data(train: &str) -> DataSpec {
        DataSpec {
            train: train.into(),
            tokenizer: Tokenizer::Bytes,
            ..DataSpec::default()
        }
    }

    #[test]
    fn text_is_tokenized_once_and_found_again() {
        let src = text_dir(&[
            ("a.txt", &"alpha ".repeat(50)),
            ("sub/b.md", &"beta ".repeat(40)),
        ]);
        let ckpt = tempfile::tempdir().unwrap();
        let mut spec = data(&src.path().display().to_string());
        spec.validation_fraction = Some(0.1);
        let first = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        assert_eq!(first.tokenized.len(), 1);
        let entry = &first.tokenized[0];
        assert!(!entry.reused);
        assert_eq!(entry.record.inputs.len(), 2);
        assert_eq!(
            entry.record.train_tokens + entry.record.val_tokens,
            300 + 200
        );
        assert_eq!(entry.record.val_tokens, 30 + 20);
        let train = TokenStream::open(&first.train).unwrap();
        assert_eq!(train.len(), 450);
        let val = TokenStream::open(first.validation.as_ref().unwrap()).unwrap();
        assert_eq!(val.len(), 50);

        let second = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        assert!(second.tokenized[0].reused);
        assert_eq!(second.train, first.train);
        assert_eq!(second.tokenized[0].record, entry.record);
        // Nothing but the committed entry is left in the cache.
        let names: Vec<_> = std::fs::read_dir(ckpt.path().join(TOKEN_CACHE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![entry.record.key.clone()]);
    }

    #[test]
    fn a_hugging_face_tokenizer_named_relatively_tokenizes_into_the_cache() {
        let base = tempfile::tempdir().unwrap();
        let model = base.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama-gqa");
        for file in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            std::fs::copy(fixture.join(file), model.join(file)).unwrap();
        }
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
        std::fs::write(base.path().join("corpus.txt"), text).unwrap();
        let ckpt = tempfile::tempdir().unwrap();
        let spec = DataSpec {
            train: "corpus.txt".into(),
            tokenizer: Tokenizer::from("./model"),
            ..DataSpec::default()
        };
        let first = resolve_run_data(&spec, base.path(), ckpt.path(), 64).unwrap();
        let entry = &first.tokenized[0];
        assert!(!entry.reused);
        let sha = hex::encode(Sha256::digest(
            std::fs::read(model.join("tokenizer.json")).unwrap(),
        ));
        assert_eq!(entry.record.tokenizer_sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            entry.record.tokenizer,
            Tokenizer::HuggingFace(base.path().join("./model").display().to_string())
        );
        let train = TokenStream::open(&first.train).unwrap();
        assert_eq!(train.vocab_size(), 384);
        let mut tokens = vec![0; train.len() as usize];
        train.copy_range(0, &mut tokens);
        assert_eq!(tokens[0], 376, "EOS (<|eot_id|>) starts the document");
        let tokenizer =
            TextTokenizer::load(&Tokenizer::from(model.display().to_string()), "test").unwrap();
        assert_eq!(tokenizer.decode(&tokens[1..]).unwrap(), text);

        // Found again; a changed tokenizer.json (one merge fewer) makes a new entry.
        assert!(
            resolve_run_data(&spec, base.path(), ckpt.path(), 64)
                .unwrap()
                .tokenized[0]
                .reused
        );
        let path = model.join("tokenizer.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["model"]["merges"].as_array_mut().unwrap().pop();
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let changed = resolve_run_data(&spec, base.path(), ckpt.path(), 64).unwrap();
        assert!(!changed.tokenized[0].reused);
        assert_ne!(changed.tokenized[0].record.key, entry.record.key);

        // A missing tokenizer names the field and the path.
        let bad = DataSpec {
            tokenizer: Tokenizer::from("./nowhere"),
            ..spec.clone()
        };
        let err = resolve_run_data(&bad, base.path(), ckpt.path(), 64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.data.tokenizer") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_input_makes_a_new_entry() {
        let src = text_dir(&[("a.txt", &"alpha ".repeat(50))]);
        let ckpt = tempfile::tempdir().unwrap();
        let spec = data(&src.path().join("a.txt").display().to_string());
        let first = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        std::fs::write(src.path().join("a.txt"), "gamma ".repeat(50)).unwrap();
        let second = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        assert!(!second.tokenized[0].reused);
        assert_ne!(
            first.tokenized[0].record.key,
            second.tokenized[0].record.key
        );
        assert_eq!(first.validation, None);
    }

    #[test]
    fn racing_writers_leave_one_entry_and_agree() {
        let src = text_dir(&[("a.txt", &"delta ".repeat(2000))]);
        let ckpt = tempfile::tempdir().unwrap();
        let spec = data(&src.path().display().to_string());
        let results: Vec<RunData> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(results.iter().all(|r| r.train == results[0].train));
        let left = std::fs::read_dir(ckpt.path().join(TOKEN_CACHE_DIR))
            .unwrap()
            .count();
        assert_eq!(left, 1, "partial directories were left behind");
    }

    #[test]
    fn shards_are_used_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("train-000000.bin"), &[1, 2, 3, 4], 256).unwrap();
        let spec = data(&format!("{}/train-*.bin", dir.path().display()));
        let ckpt = tempfile::tempdir().unwrap();
        let got = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        assert_eq!(got.train, spec.train);
        assert!(got.tokenized.is_empty());
        assert!(!ckpt.path().join(TOKEN_CACHE_DIR).exists());

        let mut with_fraction = spec.clone();
        with_fraction.validation_fraction = Some(0.1);
        let err = resolve_run_data(&with_fraction, Path::new("/"), ckpt.path(), 64).unwrap_err();
        assert!(
            err.to_string().contains("spec.data.validationFraction"),
            "{err}"
        );
    }

    #[test]
    fn mixed_shards_and_text_are_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(&dir.path().join("a.bin"), &[1, 2, 3], 256).unwrap();
        std::fs::write(dir.path().join("b.txt"), "plain text").unwrap();
        let err = classify("spec.data.train", &format!("{}/*", dir.path().display()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.data.train") && err.contains("a.bin"),
            "{err}"
        );
        assert!(err.contains("b.txt"), "{err}");
    }

    #[test]
    fn a_damaged_entry_is_named_with_the_fix() {
        let src = text_dir(&[("a.txt", &"alpha ".repeat(50))]);
        let ckpt = tempfile::tempdir().unwrap();
        let spec = data(&src.path().display().to_string());
        let first = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64).unwrap();
        let entry = &first.tokenized[0].dir;
        std::fs::write(entry.join(TOKEN_CACHE_RECORD), "{ truncated").unwrap();
        let err = resolve_run_data(&spec, Path::new("/"), ckpt.path(), 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("remove that directory"), "{err}");
        assert!(err.contains(&entry.display().to_string()), "{err}");
    }

    #[test]
    fn missing_data_names_the_path() {
        let ckpt = tempfile::tempdir().unwrap();
        let err = resolve_run_data(
            &data("/nonexistent/corpus"),
            Path::new("/"),
            ckpt.path(),
            64,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/corpus"), "{err}");
        assert!(err.contains("spec.data.train"), "{err}");
    }
}
