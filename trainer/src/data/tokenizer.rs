//! Text tokenizers: `bytes` (each byte is its own token, 256 tokens) and `gpt2` (GPT-2's
//! byte-pair encoding, 50,257 tokens).
//!
//! GPT-2's BPE comes from `tiktoken-rs`, whose `r50k_base` encoding is GPT-2's; the crate
//! compiles its vocabulary in (`include_str!` of `assets/r50k_base.tiktoken`), so nothing is
//! downloaded at run time. Both tokenizers decode too, for sampling.

use tessera_api::spec::Tokenizer;
use tiktoken_rs::CoreBPE;

/// GPT-2's `<|endoftext|>`, which separates documents.
pub const GPT2_END_OF_TEXT: u32 = 50_256;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "token {token} is outside the {tokenizer} vocabulary of {vocab_size} tokens; was this text tokenized with a different tokenizer?"
    )]
    UnknownToken {
        tokenizer: &'static str,
        token: u32,
        vocab_size: u32,
    },
    #[error("the built-in GPT-2 vocabulary failed to load: {0}")]
    Vocabulary(String),
}

/// A ready tokenizer. Cheap to clone: GPT-2's tables are built once per process and shared.
#[derive(Clone)]
pub enum TextTokenizer {
    Bytes,
    Gpt2(&'static CoreBPE),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TextTokenizer {
    pub fn new(kind: Tokenizer) -> Result<TextTokenizer, TokenizerError> {
        match kind {
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
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn vocab_size(&self) -> u32 {
        self.kind().vocab_size()
    }

    /// The token that separates documents, where the tokenizer has one.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            TextTokenizer::Bytes => None,
            TextTokenizer::Gpt2(_) => Some(GPT2_END_OF_TEXT),
        }
    }

    /// Tokenizes text. Special-token spellings such as `<|endoftext|>` in the text are
    /// encoded as ordinary text, never as the special token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            TextTokenizer::Bytes => text.bytes().map(u32::from).collect(),
            TextTokenizer::Gpt2(bpe) => bpe.encode_ordinary(text),
        }
    }

    /// The bytes the tokens stand for. A GPT-2 token may hold part of a UTF-8 character, so
    /// the bytes of a prefix need not be valid UTF-8.
    pub fn decode_bytes(&self, tokens: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        if let Some(&token) = tokens.iter().find(|&&t| t >= self.vocab_size()) {
            return Err(TokenizerError::UnknownToken {
                tokenizer: self.name(),
                token,
                vocab_size: self.vocab_size(),
            });
        }
        match self {
            TextTokenizer::Bytes => Ok(tokens.iter().map(|&t| t as u8).collect()),
            TextTokenizer::Gpt2(bpe) => {
                bpe.decode_bytes(tokens)
                    .map_err(|e| TokenizerError::UnknownToken {
                        tokenizer: "gpt2",
                        token: e.token,
                        vocab_size: GPT2_VOCAB_SIZE,
                    })
            }
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
        let gpt2 = TextTokenizer::new(Tokenizer::Gpt2).unwrap();
        assert_eq!(gpt2.encode("Hello world"), vec![15496, 995]);
        // A longer known encoding, from GPT-2's reference tokenizer.
        assert_eq!(
            gpt2.encode("First Citizen:\nBefore we proceed"),
            vec![5962, 22307, 25, 198, 8421, 356, 5120]
        );
        assert_eq!(gpt2.vocab_size(), 50_257);
        assert_eq!(gpt2.end_of_text(), Some(50_256));
    }

    #[test]
    fn gpt2_round_trips_text_and_keeps_special_spellings_ordinary() {
        let gpt2 = TextTokenizer::new(Tokenizer::Gpt2).unwrap();
        let text = "Ünïcödé, emoji 🦀 and <|endoftext|> as plain text.\n";
        let tokens = gpt2.encode(text);
        assert!(!tokens.contains(&GPT2_END_OF_TEXT));
        assert_eq!(gpt2.decode(&tokens).unwrap(), text);
        assert_eq!(gpt2.decode(&[GPT2_END_OF_TEXT]).unwrap(), "<|endoftext|>");
    }

    #[test]
    fn bytes_is_the_identity_on_bytes() {
        let bytes = TextTokenizer::new(Tokenizer::Bytes).unwrap();
        assert_eq!(bytes.encode("Hé"), vec![72, 0xC3, 0xA9]);
        assert_eq!(bytes.decode(&[72, 0xC3, 0xA9]).unwrap(), "Hé");
        assert_eq!(bytes.vocab_size(), 256);
        assert_eq!(bytes.end_of_text(), None);
    }

    #[test]
    fn decoding_an_unknown_token_is_an_error_naming_it() {
        let bytes = TextTokenizer::new(Tokenizer::Bytes).unwrap();
        let err = bytes.decode(&[1, 256]).unwrap_err();
        assert!(err.to_string().contains("256"), "{err}");
        let gpt2 = TextTokenizer::new(Tokenizer::Gpt2).unwrap();
        assert!(matches!(
            gpt2.decode(&[50_257]),
            Err(TokenizerError::UnknownToken { token: 50_257, .. })
        ));
    }
}
