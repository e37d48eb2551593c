//! Hugging Face tokenizers: the `tokenizer.json` of an open model (Llama, Qwen2, Mistral, ...),
//! run by the `tokenizers` crate with its pure-Rust regex engine, offline.
//!
//! ```text
//! DIR/tokenizer.json          the tokenizer: normalizer, pre-tokenizer, model, added tokens
//! DIR/tokenizer_config.json   bos_token, eos_token (a string, or {"content": ...})  optional
//! DIR/generation_config.json  bos_token_id, eos_token_id (an id, or a list of ids)  optional
//! ```
//!
//! `spec.data.tokenizer` (or `--tokenizer`) names the directory or the `tokenizer.json` in it;
//! the two config files are read from the same directory.
//!
//! BOS and EOS: `tokenizer_config.json`'s token, looked up in the vocabulary, wins; without
//! one, `generation_config.json`'s id (the first of a list). A named token that is not in the
//! vocabulary, or an id outside it, is refused rather than guessed around.
//!
//! Documents: as for GPT-2, every document (input file) is preceded by the end-of-sequence
//! token, so EOS separates documents the way Llama-style models end one; no BOS is inserted
//! into the token stream (a training window starts anywhere in it, and a BOS mid-stream would
//! teach nothing a model uses). A tokenizer with no EOS concatenates documents unseparated.
//!
//! Text is encoded *ordinarily*: special-token spellings in the text (`<|eot_id|>`) become
//! ordinary text tokens, never the special token, so data cannot forge document boundaries or
//! chat turns; the post-processor (which would add BOS) is not applied either. [`encode`]
//! gives the Hugging Face behaviour (`tokenizer(text)`), with or without special tokens.
//!
//! [`encode`]: HfTokenizer::encode

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use tessera_api::spec::Tokenizer;

/// The tokenizer file in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// BOS/EOS as token strings.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// BOS/EOS as ids.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

#[derive(Debug, thiserror::Error)]
pub enum HfTokenizerError {
    #[error(
        "{field}: {path} does not exist; name a Hugging Face model directory holding {TOKENIZER_FILE}, or the {TOKENIZER_FILE} file itself"
    )]
    Missing { field: &'static str, path: PathBuf },
    #[error(
        "{field}: the directory {dir} has no {TOKENIZER_FILE}; name a Hugging Face model directory that has one (download the model's tokenizer files), or the file itself"
    )]
    NoTokenizerFile { field: &'static str, dir: PathBuf },
    #[error("{field}: cannot read {path}: {source}; check the path and its permissions")]
    Read {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{field}: {path} is not a Hugging Face tokenizer ({detail}); name a model's {TOKENIZER_FILE} as saved by `tokenizers`/`transformers`"
    )]
    Malformed {
        field: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{field}: {path}: {key} {detail}; fix or remove {key} in that file")]
    BadConfig {
        field: &'static str,
        path: PathBuf,
        key: &'static str,
        detail: String,
    },
    #[error("the Hugging Face tokenizer {path} failed on the text: {detail}")]
    Encode { path: PathBuf, detail: String },
}

/// Token ids and each token's byte range in the text.
pub type TokensWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// A loaded Hugging Face tokenizer with its BOS and EOS.
pub struct HfTokenizer {
    /// As the manifest or command line named it.
    spec: Tokenizer,
    file: PathBuf,
    sha256: String,
    /// Hugging Face's behaviour: special-token spellings in text match the special tokens.
    tokenizer: tokenizers::Tokenizer,
    /// The same tokenizer with special-token spellings encoded as ordinary text.
    ordinary: tokenizers::Tokenizer,
    vocab_size: u32,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("file", &self.file)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

impl HfTokenizer {
    /// Loads the tokenizer `path` names (a directory with `tokenizer.json`, or the file);
    /// errors name `field` (`spec.data.tokenizer`, `--tokenizer`) and the file.
    pub fn load(path: &Path, field: &'static str) -> Result<HfTokenizer, HfTokenizerError> {
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => HfTokenizerError::Missing {
                field,
                path: path.to_path_buf(),
            },
            _ => HfTokenizerError::Read {
                field,
                path: path.to_path_buf(),
                source,
            },
        })?;
        let (file, dir) = if meta.is_dir() {
            let file = path.join(TOKENIZER_FILE);
            if !file.is_file() {
                return Err(HfTokenizerError::NoTokenizerFile {
                    field,
                    dir: path.to_path_buf(),
                });
            }
            (file, path.to_path_buf())
        } else {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (path.to_path_buf(), dir)
        };
        let bytes = std::fs::read(&file).map_err(|source| HfTokenizerError::Read {
            field,
            path: file.clone(),
            source,
        })?;
        let malformed = |detail: String| HfTokenizerError::Malformed {
            field,
            path: file.clone(),
            detail,
        };
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| malformed(e.to_string()))?;
        let mut ordinary = tokenizer.clone();
        ordinary.set_encode_special_tokens(true);

        // Added tokens may sit past the model's vocabulary or leave holes: the size is one past
        // the largest id, at least the count of tokens.
        let vocab = tokenizer.get_vocab(true);
        let largest = vocab.values().max().map_or(0, |&id| u64::from(id) + 1);
        let vocab_size = largest.max(tokenizer.get_vocab_size(true) as u64);
        let vocab_size = u32::try_from(vocab_size)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| malformed(format!("a vocabulary of {vocab_size} tokens")))?;

        let configs = SpecialTokens::read(&dir, &tokenizer, vocab_size, field)?;
        Ok(HfTokenizer {
            spec: Tokenizer::HuggingFace(path.display().to_string()),
            sha256: hex::encode(Sha256::digest(&bytes)),
            file,
            tokenizer,
            ordinary,
            vocab_size,
            bos: configs.bos,
            eos: configs.eos,
        })
    }

    /// The tokenizer as it was named.
    pub fn spec(&self) -> &Tokenizer {
        &self.spec
    }

    /// The `tokenizer.json` loaded.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// SHA-256 of `tokenizer.json`, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Every id is below this: the vocabulary with the added tokens.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Hugging Face's `tokenizer(text, add_special_tokens=...)`: special-token spellings in
    /// the text match the special tokens, and with `add_special_tokens` the post-processor
    /// adds its tokens (Llama's BOS).
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, HfTokenizerError> {
        Self::ids(&self.tokenizer, &self.file, text, add_special_tokens)
    }

    /// Hugging Face's `tokenizer(text, add_special_tokens=False)` with each token's byte
    /// range in `text`: special-token spellings are the special tokens (rendered chat
    /// templates are tokenized this way).
    pub fn encode_with_offsets(&self, text: &str) -> Result<TokensWithOffsets, HfTokenizerError> {
        let encoding =
            self.tokenizer
                .encode(text, false)
                .map_err(|e| HfTokenizerError::Encode {
                    path: self.file.clone(),
                    detail: e.to_string(),
                })?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The spelling of token `id` (`<|eot_id|>`), if the vocabulary has it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// The directory `tokenizer.json` sits in (where a chat template is looked for).
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// The text's tokens with special-token spellings as ordinary text and nothing added.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>, HfTokenizerError> {
        Self::ids(&self.ordinary, &self.file, text, false)
    }

    fn ids(
        tokenizer: &tokenizers::Tokenizer,
        file: &Path,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, HfTokenizerError> {
        tokenizer
            .encode(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| HfTokenizerError::Encode {
                path: file.to_path_buf(),
                detail: e.to_string(),
            })
    }

    /// Hugging Face's `decode(ids, skip_special_tokens=...)`. Ids must be below
    /// [`vocab_size`](Self::vocab_size) (the caller checks).
    pub fn decode(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, HfTokenizerError> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| HfTokenizerError::Encode {
                path: self.file.clone(),
                detail: e.to_string(),
            })
    }
}

/// BOS and EOS from the two config files.
struct SpecialTokens {
    bos: Option<u32>,
    eos: Option<u32>,
}

impl SpecialTokens {
    fn read(
        dir: &Path,
        tokenizer: &tokenizers::Tokenizer,
        vocab_size: u32,
        field: &'static str,
    ) -> Result<SpecialTokens, HfTokenizerError> {
        let tokenizer_config = read_json(&dir.join(TOKENIZER_CONFIG_FILE), field)?;
        let generation_config = read_json(&dir.join(GENERATION_CONFIG_FILE), field)?;
        let by_name = |key: &'static str| -> Result<Option<u32>, HfTokenizerError> {
            let Some((path, config)) = &tokenizer_config else {
                return Ok(None);
            };
            let bad = |detail: String| HfTokenizerError::BadConfig {
                field,
                path: path.clone(),
                key,
                detail,
            };
            let content = match config.get(key) {
                None | Some(Json::Null) => return Ok(None),
                Some(Json::String(s)) => s,
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s,
                    _ => return Err(bad("is an object without a \"content\" string".into())),
                },
                Some(other) => {
                    return Err(bad(format!(
                        "is {other}, not a token string or {{\"content\": ...}}"
                    )));
                }
            };
            tokenizer.token_to_id(content).map(Some).ok_or_else(|| {
                bad(format!(
                    "names {content:?}, which is not in the tokenizer's vocabulary"
                ))
            })
        };
        let by_id = |key: &'static str| -> Result<Option<u32>, HfTokenizerError> {
            let Some((path, config)) = &generation_config else {
                return Ok(None);
            };
            let bad = |detail: String| HfTokenizerError::BadConfig {
                field,
                path: path.clone(),
                key,
                detail,
            };
            let first = match config.get(key) {
                None | Some(Json::Null) => return Ok(None),
                Some(Json::Array(ids)) => match ids.first() {
                    None => return Ok(None),
                    Some(id) => id,
                },
                Some(id) => id,
            };
            match first.as_u64().and_then(|id| u32::try_from(id).ok()) {
                Some(id) if id < vocab_size => Ok(Some(id)),
                Some(id) => Err(bad(format!(
                    "is {id}, outside the tokenizer's vocabulary of {vocab_size}"
                ))),
                None => Err(bad(format!("is {first}, not a token id or a list of ids"))),
            }
        };
        Ok(SpecialTokens {
            bos: by_name("bos_token")?.or(by_id("bos_token_id")?),
            eos: by_name("eos_token")?.or(by_id("eos_token_id")?),
        })
    }
}

/// A JSON object from `path`, `None` when there is no such file.
fn read_json(
    path: &Path,
    field: &'static str,
) -> Result<Option<(PathBuf, Json)>, HfTokenizerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HfTokenizerError::Read {
                field,
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(value @ Json::Object(_)) => Ok(Some((path.to_path_buf(), value))),
        Ok(_) => Err(HfTokenizerError::Malformed {
            field,
            path: path.to_path_buf(),
            detail: "not a JSON object".into(),
        }),
        Err(e) => Err(HfTokenizerError::Malformed {
            field,
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "spec.data.tokenizer";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(name)
    }

    fn ids(value: &Json) -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect()
    }

    /// Every recorded case: ids with and without special tokens, and both decodings.
    #[test]
    fn every_recorded_case_matches_transformers() {
        for name in ["llama-gqa", "gpt2", "qwen2-tied", "mistral"] {
            let dir = fixture(name);
            let tokenizer = HfTokenizer::load(&dir, FIELD).unwrap();
            let cases: Json =
                serde_json::from_slice(&std::fs::read(dir.join("tokenizer_cases.json")).unwrap())
                    .unwrap();
            if let Some(size) = cases.get("vocab_size").and_then(Json::as_u64) {
                assert_eq!(u64::from(tokenizer.vocab_size()), size, "{name}");
            }
            let cases = cases["cases"].as_array().unwrap();
            assert!(cases.len() >= 5, "{name}");
            for case in cases {
                let text = case["text"].as_str().unwrap();
                let with = tokenizer.encode(text, true).unwrap();
                assert_eq!(with, ids(&case["ids"]), "{name}: {text:?}");
                let without = tokenizer.encode(text, false).unwrap();
                assert_eq!(without, ids(&case["ids_no_special"]), "{name}: {text:?}");
                assert_eq!(
                    tokenizer.decode(&with, false).unwrap(),
                    case["decoded"].as_str().unwrap(),
                    "{name}: {text:?}"
                );
                assert_eq!(
                    tokenizer.decode(&with, true).unwrap(),
                    case["decoded_skip_special"].as_str().unwrap(),
                    "{name}: {text:?}"
                );
                let tokens: Vec<String> = without
                    .iter()
                    .map(|&id| tokenizer.tokenizer.id_to_token(id).unwrap())
                    .collect();
                let expected: Vec<String> = case["tokens_no_special"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(tokens, expected, "{name}: {text:?}");
            }
        }
    }

    #[test]
    fn bos_and_eos_come_from_the_config_files() {
        // tokenizer_config.json's strings win over generation_config.json's ids.
        let llama = HfTokenizer::load(&fixture("llama-gqa"), FIELD).unwrap();
        assert_eq!(llama.bos(), Some(372)); // <|begin_of_text|>
        assert_eq!(llama.eos(), Some(376)); // <|eot_id|>, not generation_config's list
        let mistral = HfTokenizer::load(&fixture("mistral"), FIELD).unwrap();
        assert_eq!((mistral.bos(), mistral.eos()), (Some(379), Some(380)));
        let qwen = HfTokenizer::load(&fixture("qwen2-tied"), FIELD).unwrap();
        assert_eq!((qwen.bos(), qwen.eos()), (None, Some(378)));

        // Without tokenizer_config.json: generation_config.json's ids (a list's first).
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture("llama-gqa").join(TOKENIZER_FILE),
            dir.path().join(TOKENIZER_FILE),
        )
        .unwrap();
        let bare = HfTokenizer::load(dir.path(), FIELD).unwrap();
        assert_eq!((bare.bos(), bare.eos()), (None, None));
        std::fs::write(
            dir.path().join(GENERATION_CONFIG_FILE),
            r#"{"bos_token_id": 372, "eos_token_id": [373, 376]}"#,
        )
        .unwrap();
        let by_id = HfTokenizer::load(&dir.path().join(TOKENIZER_FILE), FIELD).unwrap();
        assert_eq!((by_id.bos(), by_id.eos()), (Some(372), Some(373)));

        // {"content": ...} objects, as older transformers saved them.
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": {"content": "</s>"}}"#,
        )
        .unwrap();
        let objects = HfTokenizer::load(dir.path(), FIELD).unwrap();
        assert_eq!((objects.bos(), objects.eos()), (Some(379), Some(380)));
    }

    #[test]
    fn ordinary_encoding_keeps_special_spellings_as_text() {
        let llama = HfTokenizer::load(&fixture("llama-gqa"), FIELD).unwrap();
        let text = "before<|eot_id|>after <|im_start|>user";
        let tokens = llama.encode_ordinary(text).unwrap();
        assert!(tokens.iter().all(|&t| t < 372), "{tokens:?}");
        assert_eq!(llama.decode(&tokens, false).unwrap(), text);
        assert!(llama.encode(text, false).unwrap().contains(&376));
    }

    #[test]
    fn bad_tokenizers_are_refused_naming_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let message = |path: &Path| {
            HfTokenizer::load(path, "--tokenizer")
                .unwrap_err()
                .to_string()
        };

        let missing = dir.path().join("nowhere");
        let m = message(&missing);
        assert!(
            m.contains("--tokenizer") && m.contains("nowhere") && m.contains("does not exist"),
            "{m}"
        );

        let m = message(dir.path());
        assert!(
            m.contains("--tokenizer") && m.contains("has no tokenizer.json"),
            "{m}"
        );

        let file = dir.path().join(TOKENIZER_FILE);
        std::fs::write(&file, r#"{"model": "nonsense"}"#).unwrap();
        let m = message(dir.path());
        assert!(
            m.contains("--tokenizer")
                && m.contains("tokenizer.json")
                && m.contains("is not a Hugging Face tokenizer"),
            "{m}"
        );

        std::fs::copy(fixture("gpt2").join(TOKENIZER_FILE), &file).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"eos_token": "<|nope|>"}"#,
        )
        .unwrap();
        let m = message(&file);
        assert!(
            m.contains("tokenizer_config.json")
                && m.contains("eos_token")
                && m.contains("<|nope|>"),
            "{m}"
        );

        std::fs::write(dir.path().join(TOKENIZER_CONFIG_FILE), "{not json").unwrap();
        let m = message(&file);
        assert!(
            m.contains("tokenizer_config.json") && m.contains("--tokenizer"),
            "{m}"
        );

        std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
        std::fs::write(
            dir.path().join(GENERATION_CONFIG_FILE),
            r#"{"eos_token_id": 99999}"#,
        )
        .unwrap();
        let m = message(&file);
        assert!(
            m.contains("generation_config.json")
                && m.contains("eos_token_id")
                && m.contains("99999"),
            "{m}"
        );
    }
}
