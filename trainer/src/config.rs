//! Model shape: [`ModelConfig`], its named presets, validation, and the parameter-count and
//! FLOPs-per-token helpers that MFU reporting uses.
//!
//! The trainer owns this type on purpose: the API crate's manifest types are converted into it
//! by the caller, so the numeric core does not depend on the API crate.

use thiserror::Error;

/// Rows of the output head (and token embedding) are padded to a multiple of this, so matrix
/// products see friendly shapes (GPT-2's 50257 becomes 50304).
pub const VOCAB_PAD_MULTIPLE: usize = 128;

/// The names [`ModelConfig::preset`] accepts.
pub const PRESET_NAMES: [&str; 5] = ["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

/// Why a model shape was refused. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("model.{field} must be greater than 0")]
    Zero { field: &'static str },
    #[error("model.heads ({heads}) must divide model.width ({width}) exactly")]
    HeadsDoNotDivideWidth { heads: usize, width: usize },
    #[error("model.padded_vocab ({padded_vocab}) must be at least model.vocab ({vocab})")]
    PaddedVocabTooSmall { vocab: usize, padded_vocab: usize },
    #[error("unknown model preset {name:?}; known presets: {}", PRESET_NAMES.join(", "))]
    UnknownPreset { name: String },
}

/// The shape of a GPT-2 style decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Number of transformer blocks (L).
    pub layers: usize,
    /// Attention heads per block (NH); divides `width`.
    pub heads: usize,
    /// Residual stream width (C).
    pub width: usize,
    /// Longest sequence the position embedding covers (maxT).
    pub context: usize,
    /// Real vocabulary size (V): targets and inputs are below this.
    pub vocab: usize,
    /// Rows of the token embedding / output head (Vp >= V); columns V..Vp of the logits are
    /// ignored by the loss.
    pub padded_vocab: usize,
}

/// Rounds `vocab` up to a multiple of [`VOCAB_PAD_MULTIPLE`].
pub fn pad_vocab(vocab: usize) -> usize {
    vocab.div_ceil(VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
}

impl ModelConfig {
    /// Explicit dimensions; the padded vocabulary is `vocab` rounded up to a multiple of 128.
    pub fn new(
        layers: usize,
        heads: usize,
        width: usize,
        context: usize,
        vocab: usize,
    ) -> Result<Self, ConfigError> {
        let config = Self {
            layers,
            heads,
            width,
            context,
            vocab,
            padded_vocab: pad_vocab(vocab),
        };
        config.validate()?;
        Ok(config)
    }

    /// A named preset: `tiny` (byte-level, CI-sized), `gpt2` (124M), `gpt2-medium` (350M),
    /// `gpt2-large` (774M), `gpt2-xl` (1558M). GPT-2 presets use vocab 50257 and context 1024.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (layers, heads, width, context, vocab) = match name {
            // Tuned to reach < 2.0 nats/byte on tinyshakespeare within minutes on 2 cores.
            "tiny" => (4, 4, 128, 128, 256),
            "gpt2" => (12, 12, 768, 1024, 50257),
            "gpt2-medium" => (24, 16, 1024, 1024, 50257),
            "gpt2-large" => (36, 20, 1280, 1024, 50257),
            "gpt2-xl" => (48, 25, 1600, 1024, 50257),
            other => {
                return Err(ConfigError::UnknownPreset {
                    name: other.to_string(),
                });
            }
        };
        Self::new(layers, heads, width, context, vocab)
    }

    /// The same shape with another vocabulary (the tokenizer decides it); re-pads.
    pub fn with_vocab(self, vocab: usize) -> Result<Self, ConfigError> {
        Self::new(self.layers, self.heads, self.width, self.context, vocab)
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("width", self.width),
            ("context", self.context),
            ("vocab", self.vocab),
            ("padded_vocab", self.padded_vocab),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(ConfigError::HeadsDoNotDivideWidth {
                heads: self.heads,
                width: self.width,
            });
        }
        if self.padded_vocab < self.vocab {
            return Err(ConfigError::PaddedVocabTooSmall {
                vocab: self.vocab,
                padded_vocab: self.padded_vocab,
            });
        }
        Ok(())
    }

    /// Channels per attention head (hs = C / NH).
    pub fn head_size(&self) -> usize {
        self.width / self.heads
    }

    /// Every parameter in the flat buffer, padded embedding rows included:
    /// `Vp·C + maxT·C + L·(12·C² + 13·C) + 2·C`.
    pub fn num_params(&self) -> usize {
        let c = self.width;
        self.padded_vocab * c + self.context * c + self.layers * (12 * c * c + 13 * c) + 2 * c
    }

    /// Training FLOPs per token at sequence length `seq_len` (the PaLM appendix B estimate):
    /// `6·N + 12·L·C·T`, where `N` counts the parameters that take part in matrix products
    /// (all but the position embedding and the padded embedding rows) and `12·L·C·T` is the
    /// forward+backward cost of the attention score and value products (causal masking not
    /// discounted, as is customary for MFU).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let c = self.width as f64;
        let matmul_params = (self.vocab * self.width
            + self.layers * (12 * self.width * self.width + 13 * self.width)
            + 2 * self.width) as f64;
        6.0 * matmul_params + 12.0 * self.layers as f64 * c * seq_len as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_preset_has_124m_parameters_and_padded_vocab() {
        let c = ModelConfig::preset("gpt2").unwrap();
        assert_eq!(c.padded_vocab, 50304);
        // 124,475,904 with the padded rows (llm.c reports the same number).
        assert_eq!(c.num_params(), 124_475_904);
    }

    #[test]
    fn presets_have_expected_shapes() {
        let m = ModelConfig::preset("gpt2-medium").unwrap();
        assert_eq!((m.layers, m.heads, m.width), (24, 16, 1024));
        let l = ModelConfig::preset("gpt2-large").unwrap();
        assert_eq!((l.layers, l.heads, l.width), (36, 20, 1280));
        let x = ModelConfig::preset("gpt2-xl").unwrap();
        assert_eq!((x.layers, x.heads, x.width), (48, 25, 1600));
        let t = ModelConfig::preset("tiny").unwrap();
        assert_eq!((t.vocab, t.padded_vocab), (256, 256));
    }

    #[test]
    fn bad_shapes_name_the_field() {
        assert_eq!(
            ModelConfig::new(0, 4, 128, 128, 256),
            Err(ConfigError::Zero { field: "layers" })
        );
        assert_eq!(
            ModelConfig::new(2, 4, 128, 0, 256),
            Err(ConfigError::Zero { field: "context" })
        );
        assert_eq!(
            ModelConfig::new(2, 3, 128, 64, 256),
            Err(ConfigError::HeadsDoNotDivideWidth {
                heads: 3,
                width: 128
            })
        );
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.padded_vocab = 100;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PaddedVocabTooSmall { .. })
        ));
        let err = ModelConfig::preset("gpt5").unwrap_err();
        assert!(err.to_string().contains("gpt2-medium"), "{err}");
    }

    #[test]
    fn with_vocab_repads() {
        let c = ModelConfig::preset("tiny")
            .unwrap()
            .with_vocab(50257)
            .unwrap();
        assert_eq!(c.padded_vocab, 50304);
    }

    #[test]
    fn flops_formula_matches_hand_count() {
        let c = ModelConfig::new(1, 1, 2, 4, 3).unwrap();
        // N = V*C + L*(12C^2+13C) + 2C = 6 + 48 + 26 + 4 = 84; 6N = 504; 12*L*C*T = 12*1*2*4 = 96.
        assert_eq!(c.flops_per_token(4), 600.0);
    }
}
