//! Text tokenizers: `bytes` (each byte is its own token, 256 tokens), `gpt2` (GPT-2's
//! byte-pair encoding, 50,257 tokens), and a Hugging Face `tokenizer.json` named by path
//! ([`super::hf_tokenizer`]).
//!
//! GPT-2's BPE comes from `tiktoken-rs`, whose `r50k_base` encoding is GPT-2's; the crate
//! compiles its vocabulary in (`include_str!` of `assets/r50k_base.tiktoken`), so nothing is
//! downloaded at run time. Both tokenizers decode too, for sampling.

use std::{path::Path, sync::Arc};

use tessera_api::spec::Tokenizer;
use tiktoken_rs::CoreBPE;

use super::hf_tokenizer::{HfTokenizer, HfTokenizerError};

/// GPT-2's `<|endoftext|>`, which separates documents.
pub const GPT2_END_OF_TEXT: u32 = 50_256;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "token {token} is outside the {tokenizer} vocabulary of {vocab_size} tokens; was this text tokenized with a different tokenizer?"
    )]
    UnknownToken {
        tokenizer: String,
        token: u32,
        vocab_size: u32,
    },
    #[error("the built-in GPT-2 vocabulary failed to load: {0}")]
    Vocabulary(String),
    #[error(transparent)]
    HuggingFace(#[from] HfTokenizerError),
}

/// A ready tokenizer. Cheap to clone: GPT-2's tables are built once per process and shared, a
/// Hugging Face tokenizer is shared by reference count.
#[derive(Clone)]
pub enum TextTokenizer {
    Bytes,
    Gpt2(&'static CoreBPE),
    HuggingFace(Arc<HfTokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TextTokenizer {
    /// The tokenizer a manifest names; a Hugging Face tokenizer's errors name
    /// `spec.data.tokenizer`.
    pub fn new(kind: &Tokenizer) -> Result<TextTokenizer, TokenizerError> {
        TextTokenizer::load(kind, "spec.data.tokenizer")
    }

    /// The tokenizer `kind` names; a Hugging Face tokenizer is loaded from its file, and its
    /// errors name `field` (`spec.data.tokenizer`, `--tokenizer`).
    pub fn load(kind: &Tokenizer, field: &'static str) -> Result<TextTokenizer, TokenizerError> {
        match kind {
            Tokenizer::HuggingFace(path) => Ok(TextTokenizer::HuggingFace(Arc::new(
                HfTokenizer::load(Path::new(path), field)?,
            ))),
            Tokenizer::Bytes => Ok(TextTokenizer::Bytes),
            Tokenizer::Gpt2 => {
                static GPT2: std::sync::OnceLock<Result<CoreBPE, String>> =
                    std::sync::OnceLock::new();
                match GPT2.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| e.to_string())) {
                    Ok(bpe) => Ok(TextTokenizer::Gpt2(bpe)),
                    Err(message) => Err(TokenizerError::Vocabulary(message.clone())),
                }
            }
        }
    }

    pub fn kind(&self) -> Tokenizer {
        match self {
            TextTokenizer::Bytes => Tokenizer::Bytes,
            TextTokenizer::Gpt2(_) => Tokenizer::Gpt2,
            TextTokenizer::HuggingFace(hf) => hf.spec().clone(),
        }
    }

    /// `bytes`, `gpt2`, or the Hugging Face tokenizer's path.
    pub fn name(&self) -> &str {
        match self {
            TextTokenizer::Bytes => "bytes",
            TextTokenizer::Gpt2(_) => "gpt2",
            TextTokenizer::HuggingFace(hf) => hf.spec().name(),
        }
    }

    pub fn vocab_size(&self) -> u32 {
        match self {
            TextTokenizer::Bytes => tessera_api::spec::BYTES_VOCAB,
            TextTokenizer::Gpt2(_) => GPT2_VOCAB_SIZE,
            TextTokenizer::HuggingFace(hf) => hf.vocab_size(),
        }
    }

    /// What identifies this tokenization in the token cache's key: the built-in tokenizers'
    /// names, or a Hugging Face tokenizer's file hash and separator (never its path).
    pub fn cache_id(&self) -> String {
        match self {
            TextTokenizer::HuggingFace(hf) => format!(
                "huggingface sha256={} separator={:?}",
                hf.sha256(),
                hf.eos()
            ),
            other => other.name().to_string(),
        }
    }

    /// SHA-256 of a Hugging Face tokenizer's `tokenizer.json`.
    pub fn file_sha256(&self) -> Option<&str> {
        match self {
            TextTokenizer::HuggingFace(hf) => Some(hf.sha256()),
            _ => None,
        }
    }

    /// The token that separates documents, where the tokenizer has one: GPT-2's
    /// `<|endoftext|>`, a Hugging Face tokenizer's EOS.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Gpt2(_) => Some(GPT2_END_OF_TEXT),
            TextTokenizer::HuggingFace(hf) => hf.eos(),
        }
    }

    /// Tokenizes text. Special-token spellings such as `<|endoftext|>` in the text are
    /// encoded as ordinary text, never as the special token, and nothing is added (no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            TextTokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            TextTokenizer::Gpt2(bpe) => Ok(bpe.encode_ordinary(text)),
            TextTokenizer::HuggingFace(hf) => Ok(hf.encode_ordinary(text)?),
        }
    }

    /// The bytes the tokens stand for. A GPT-2 token may hold part of a UTF-8 character, so
    /// the bytes of a prefix need not be valid UTF-8.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        if let Some(&token) = tokens.iter().find(|&&t| t >= self.vocab_size()) {
            return Err(TokenizerError::UnknownToken {
                tokenizer: self.name().to_string(),
                token,
                vocab_size: self.vocab_size(),
            });
        }
        match self {
            TextTokenizer::Bytes => Ok(tokens.iter().map(|&t| t as u8).collect()),
            TextTokenizer::Gpt2(bpe) => {
                bpe.decode_bytes(tokens)
                    .map_err(|e| TokenizerError::UnknownToken {
                        tokenizer: "gpt2".into(),
                        token: e.token,
                        vocab_size: GPT2_VOCAB_SIZE,
                    })
            }
            // Special tokens are kept: they are part of what the model sees.
            TextTokenizer::HuggingFace(hf) => Ok(hf.decode(tokens, false)?.into_bytes()),
        }
    }

    /// Decodes to text, replacing byte sequences that are not UTF-8 with U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(tokens)?).into_owned())
    }
}

const GPT2_VOCAB_SIZE: u32 = tessera_api::spec::GPT2_VOCAB;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_encodes_hello_world_as_gpt2_does() {
        let gpt2 = TextTokenizer::new(&Tokenizer::Gpt2).unwrap();
        assert_eq!(gpt2.encode("Hello world").unwrap(), vec![15496, 995]);
        // A longer known encoding, from GPT-2's reference tokenizer.
        assert_eq!(
            gpt2.encode("First Citizen:\nBefore we proceed").unwrap(),
            vec![5962, 22307, 25, 198, 8421, 356, 5120]
        );
        assert_eq!(gpt2.vocab_size(), 50_257);
        assert_eq!(gpt2.end_of_text(), Some(50_256));
    }

    #[test]
    fn gpt2_round_trips_text_and_keeps_special_spellings_ordinary() {
        let gpt2 = TextTokenizer::new(&Tokenizer::Gpt2).unwrap();
        let text = "Ünïcödé, emoji 🦀 and <|endoftext|> as plain text.\n";
        let tokens = gpt2.encode(text).unwrap();
        assert!(!tokens.contains(&GPT2_END_OF_TEXT));
        assert_eq!(gpt2.decode(&tokens).unwrap(), text);
        assert_eq!(gpt2.decode(&[GPT2_END_OF_TEXT]).unwrap(), "<|endoftext|>");
    }

    #[test]
    fn bytes_is_the_identity_on_bytes() {
        let bytes = TextTokenizer::new(&Tokenizer::Bytes).unwrap();
        assert_eq!(bytes.encode("Hé").unwrap(), vec![72, 0xC3, 0xA9]);
        assert_eq!(bytes.decode(&[72, 0xC3, 0xA9]).unwrap(), "Hé");
        assert_eq!(bytes.vocab_size(), 256);
        assert_eq!(bytes.end_of_text(), None);
    }

    #[test]
    fn a_hugging_face_tokenizer_is_loaded_from_its_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/llama-gqa");
        let llama = TextTokenizer::load(&Tokenizer::from(dir), "--tokenizer").unwrap();
        assert_eq!(llama.name(), dir);
        assert_eq!(llama.kind(), Tokenizer::HuggingFace(dir.into()));
        assert_eq!(llama.vocab_size(), 384);
        assert_eq!(llama.end_of_text(), Some(376));
        let text = "Café <|eot_id|> 🙂";
        let tokens = llama.encode(text).unwrap();
        assert!(!tokens.contains(&376));
        assert_eq!(llama.decode(&tokens).unwrap(), text);
        assert!(matches!(
            llama.decode(&[384]),
            Err(TokenizerError::UnknownToken {
                token: 384,
                vocab_size: 384,
                ..
            })
        ));
        assert!(llama.cache_id().starts_with("huggingface sha256="));
        assert!(!llama.cache_id().contains("llama-gqa"));

        let err = TextTokenizer::load(&Tokenizer::from("./no/such/dir"), "--tokenizer")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tokenizer") && err.contains("./no/such/dir"),
            "{err}"
        );
    }

    #[test]
    fn decoding_an_unknown_token_is_an_error_naming_it() {
        let bytes = TextTokenizer::new(&Tokenizer::Bytes).unwrap();
        let err = bytes.decode(&[1, 256]).unwrap_err();
        assert!(err.to_string().contains("256"), "{err}");
        let gpt2 = TextTokenizer::new(&Tokenizer::Gpt2).unwrap();
        assert!(matches!(
            gpt2.decode(&[50_257]),
            Err(TokenizerError::UnknownToken { token: 50_257, .. })
        ));
    }
}
