//! The token cache's record: text a manifest names, tokenized once by whichever process gets
//! there first and read by every other (the CLI, each rank, a restarted run).
//!
//! ```text
//! CHECKPOINTS/tokens/KEY/   train-NNNNNN.bin  val-NNNNNN.bin  dataset.json
//!                           cache.json   ← this record; its presence commits the entry
//! ```
//!
//! `KEY` is the SHA-256 of the tokenization's options and every input's contents, in order
//! ([`cache_key`]): a changed input, tokenizer or split makes a new entry, and the same inputs
//! under another path reuse the old one. A Hugging Face tokenizer enters the key by the SHA-256
//! of its `tokenizer.json` (and the document separator its config files chose), not by its
//! path: an edited tokenizer re-tokenizes, a moved one does not.

use serde::{Deserialize, Serialize};

use crate::spec::{DataFormat, Tokenizer};

/// The record's format; bumped when a field changes meaning.
pub const TOKEN_CACHE_VERSION: u32 = 2;
/// The directory below the checkpoint path that holds the cache's entries.
pub const TOKEN_CACHE_DIR: &str = "tokens";
/// The record's file name inside an entry.
pub const TOKEN_CACHE_RECORD: &str = "cache.json";

/// `cache.json`: what an entry holds and what it was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCacheRecord {
    pub version: u32,
    /// The entry's key (its directory name).
    pub key: String,
    pub tokenizer: Tokenizer,
    /// For a Hugging Face tokenizer: SHA-256 of its `tokenizer.json`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// The fraction of every input's tokens (its end) in the validation shards.
    pub val_fraction: f64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// The inputs, in the order they were tokenized.
    pub inputs: Vec<TokenCacheInput>,
    /// When the entry was made (RFC 3339, UTC).
    pub created: String,
    /// The inputs' format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Instruction and chat data: the examples and the rows they were packed into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<TokenCacheExamples>,
}

/// How a cache entry's instruction or chat examples were packed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCacheExamples {
    /// Tokens per row: the context + 1.
    pub row_len: u32,
    pub examples: u64,
    /// Examples longer than a row, cut (`overlong: truncate`) or left out (`drop`).
    pub truncated: u64,
    pub dropped: u64,
    pub train_rows: u64,
    pub val_rows: u64,
    /// Targets the loss counts (completion / assistant tokens, or all with `trainOn: all`).
    pub train_counted: u64,
    pub val_counted: u64,
}

/// One input file of a cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCacheInput {
    /// As the manifest's data field resolved it.
    pub path: String,
    pub bytes: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

/// The key of an entry: SHA-256 over the format version, the tokenizer, the split and each
/// input's content hash in order. Paths do not enter it: moved inputs hit the same entry.
///
/// `tokenizer` identifies the tokenization by content: `gpt2` or `bytes` (the built-in
/// tokenizers' names, so their keys are what they always were), or for a Hugging Face
/// tokenizer a string made from its file's hash (the trainer's `TextTokenizer::cache_id`).
pub fn cache_key(tokenizer: &str, val_fraction: f64, input_sha256: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("tessera token cache v{TOKEN_CACHE_VERSION}\n"));
    h.update(format!("tokenizer {tokenizer}\n"));
    h.update(format!("val fraction {:016x}\n", val_fraction.to_bits()));
    for sha in input_sha256 {
        h.update(format!("input {sha}\n"));
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shas(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_key_follows_contents_order_tokenizer_and_split() {
        let base = cache_key("bytes", 0.1, &shas(&["aa", "bb"]));
        assert_eq!(base, cache_key("bytes", 0.1, &shas(&["aa", "bb"])));
        assert_ne!(base, cache_key("bytes", 0.1, &shas(&["bb", "aa"])));
        assert_ne!(base, cache_key("gpt2", 0.1, &shas(&["aa", "bb"])));
        assert_ne!(base, cache_key("bytes", 0.2, &shas(&["aa", "bb"])));
        assert_ne!(base, cache_key("bytes", 0.1, &shas(&["aa", "bc"])));
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn the_record_round_trips() {
        let record = TokenCacheRecord {
            version: TOKEN_CACHE_VERSION,
            key: "k".into(),
            tokenizer: Tokenizer::Bytes,
            tokenizer_sha256: None,
            val_fraction: 0.1,
            train_tokens: 90,
            val_tokens: 10,
            inputs: vec![TokenCacheInput {
                path: "a.txt".into(),
                bytes: 100,
                sha256: "ab".into(),
            }],
            created: "2026-12-03T10:00:00Z".into(),
            format: None,
            examples: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"valFraction\":0.1"), "{json}");
        let back: TokenCacheRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);

        let hf = TokenCacheRecord {
            tokenizer: Tokenizer::from("/models/llama/tokenizer.json"),
            tokenizer_sha256: Some("cd".into()),
            ..record
        };
        let json = serde_json::to_string(&hf).unwrap();
        assert!(
            json.contains("\"tokenizer\":\"/models/llama/tokenizer.json\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TokenCacheRecord>(&json).unwrap(), hf);
    }
}
