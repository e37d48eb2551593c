//! Instruction and chat examples: tokenized with a loss mask, then packed into rows.
//!
//! ```text
//! Record::Instruction ─▶ prompt tokens (mask 0) · completion tokens (1) · EOS (1)
//! Record::Chat ──template──▶ rendered text ─▶ tokens (1 inside assistant output, 0 else) · EOS (0)
//!                                                (EOS not added when the text ends with it)
//! pack: [ ex0 | ex1 | ex2 | EOS pad… ][ ex3 | ex4 | EOS pad… ] …   rows of T+1 tokens
//!        an example longer than T+1: its first T+1 tokens (overlong: truncate) or left out (drop)
//! ```
//!
//! The mask bit of a token says whether the loss counts it as a target (the loader turns an
//! uncounted target into [`crate::data::loader::IGNORE_TARGET`]). With `trainOn: all` every
//! token of an example counts; padding never does. Examples are packed first-fit in their
//! order, so the rows are a pure function of the records.

use tessera_api::spec::{Overlong, TrainOn};

use super::{
    chat::ChatTemplate,
    records::{Record, Role},
    tokenizer::TextTokenizer,
};

/// One example's tokens and their loss mask.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskedTokens {
    pub tokens: Vec<u32>,
    pub mask: Vec<bool>,
}

impl MaskedTokens {
    fn push(&mut self, tokens: &[u32], counted: bool) {
        self.tokens.extend_from_slice(tokens);
        self.mask.extend(std::iter::repeat_n(counted, tokens.len()));
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Turns records into masked tokens.
pub struct ExampleEncoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    /// Needed for chat records.
    pub template: Option<&'a ChatTemplate>,
    pub train_on: TrainOn,
    /// Ends every example (the tokenizer's end of sequence).
    pub eos: u32,
}

impl ExampleEncoder<'_> {
    /// The example's tokens and mask; the error is a sentence naming what failed.
    pub fn encode(&self, record: &Record) -> Result<MaskedTokens, String> {
        let all = self.train_on == TrainOn::All;
        let mut out = MaskedTokens::default();
        match record {
            Record::Instruction { prompt, completion } => {
                let encode = |t: &str| self.tokenizer.encode(t).map_err(|e| e.to_string());
                out.push(&encode(prompt)?, all);
                out.push(&encode(completion)?, true);
                out.push(&[self.eos], true);
            }
            Record::Chat(messages) => {
                let template = self
                    .template
                    .ok_or("chat data needs a chat template (spec.data.chatTemplate)")?;
                let TextTokenizer::HuggingFace(hf) = self.tokenizer else {
                    return Err(format!(
                        "chat data needs a Hugging Face tokenizer (model.from, or a tokenizer.json path in spec.data.tokenizer), not {}",
                        self.tokenizer.name()
                    ));
                };
                let (text, spans) = if all {
                    (
                        template
                            .render(messages, false)
                            .map_err(|e| e.to_string())?,
                        Vec::new(),
                    )
                } else {
                    template
                        .render_training(messages)
                        .map_err(|e| e.to_string())?
                };
                let (ids, offsets) = hf.encode_with_offsets(&text).map_err(|e| e.to_string())?;
                for (&id, &(start, end)) in ids.iter().zip(&offsets) {
                    // A token counts when any of its bytes is assistant output (transformers
                    // marks the tokens from the span's first character to its last).
                    let inside = spans
                        .iter()
                        .any(|s| start < s.end && end.max(start + 1) > s.start);
                    out.push(&[id], all || inside);
                }
                if !all && !out.mask.iter().any(|&m| m) {
                    let assistant = messages.iter().any(|m| m.role == Role::Assistant);
                    return Err(if assistant {
                        format!(
                            "chat template {} put no assistant text in the rendered conversation",
                            template.origin()
                        )
                    } else {
                        "the conversation has no assistant turn".into()
                    });
                }
                if out.tokens.last() != Some(&self.eos) {
                    out.push(&[self.eos], all);
                }
            }
            Record::Text(text) => {
                out.push(&[self.eos], all);
                let tokens = self.tokenizer.encode(text).map_err(|e| e.to_string())?;
                out.push(&tokens, true);
            }
        }
        Ok(out)
    }
}

/// Examples packed into rows of `row_len` tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub tokens: Vec<u32>,
    pub mask: Vec<bool>,
    pub row_len: usize,
    pub counts: PackCounts,
}

/// What packing did, for the cache record and the run's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackCounts {
    /// Examples in the rows (truncated ones included).
    pub examples: u64,
    /// Examples cut to the row length.
    pub truncated: u64,
    /// Examples left out for being longer than the row.
    pub dropped: u64,
    pub rows: u64,
    /// Tokens the loss counts as targets (mask bits set, the first of each row excluded).
    pub counted: u64,
}

impl Packed {
    /// The first `rows` rows and the rest, as two packings (the validation split).
    pub fn split_rows(mut self, rows: usize) -> (Packed, Packed) {
        let at = rows * self.row_len;
        let rest = Packed {
            tokens: self.tokens.split_off(at),
            mask: self.mask.split_off(at),
            row_len: self.row_len,
            counts: PackCounts::default(),
        };
        let mut head = self;
        head.recount();
        let mut rest = rest;
        rest.recount();
        (head, rest)
    }

    fn recount(&mut self) {
        self.counts.rows = (self.tokens.len() / self.row_len.max(1)) as u64;
        self.counts.counted = self
            .mask
            .chunks(self.row_len.max(1))
            .map(|row| row[1..].iter().filter(|&&m| m).count() as u64)
            .sum();
    }
}

/// Packs `examples` first-fit in order into rows of `row_len` tokens, `pad` (not counted)
/// filling the end of each row.
pub fn pack(
    examples: impl IntoIterator<Item = MaskedTokens>,
    row_len: usize,
    pad: u32,
    overlong: Overlong,
) -> Packed {
    let mut packed = Packed {
        row_len,
        ..Packed::default()
    };
    let mut used = 0;
    let close_row = |packed: &mut Packed, used: &mut usize| {
        let fill = row_len - *used;
        packed.tokens.extend(std::iter::repeat_n(pad, fill));
        packed.mask.extend(std::iter::repeat_n(false, fill));
        *used = 0;
    };
    for mut example in examples {
        if example.is_empty() {
            continue;
        }
        if example.len() > row_len {
            match overlong {
                Overlong::Drop => {
                    packed.counts.dropped += 1;
                    continue;
                }
                Overlong::Truncate => {
                    example.tokens.truncate(row_len);
                    example.mask.truncate(row_len);
                    packed.counts.truncated += 1;
                }
            }
        }
        if used + example.len() > row_len {
            close_row(&mut packed, &mut used);
        }
        packed.tokens.extend_from_slice(&example.tokens);
        packed.mask.extend_from_slice(&example.mask);
        used += example.len();
        packed.counts.examples += 1;
    }
    if used > 0 {
        close_row(&mut packed, &mut used);
    }
    packed.recount();
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(tokens: &[u32], counted: &[bool]) -> MaskedTokens {
        MaskedTokens {
            tokens: tokens.to_vec(),
            mask: counted.to_vec(),
        }
    }

    #[test]
    fn examples_pack_first_fit_with_padding_and_overlong_handling() {
        let (t, f) = (true, false);
        let examples = vec![
            ex(&[1, 2, 3], &[f, t, t]),
            ex(&[4, 5], &[f, t]),
            ex(&[6, 7, 8, 9, 10, 11, 12], &[f, f, t, t, t, t, t]),
            ex(&[13, 14], &[f, t]),
        ];
        let packed = pack(examples.clone(), 6, 0, Overlong::Truncate);
        assert_eq!(
            packed.tokens,
            vec![1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 10, 11, 13, 14, 0, 0, 0, 0]
        );
        assert_eq!(
            packed.mask,
            vec![f, t, t, f, t, f, f, f, t, t, t, t, f, t, f, f, f, f]
        );
        assert_eq!(
            packed.counts,
            PackCounts {
                examples: 4,
                truncated: 1,
                dropped: 0,
                rows: 3,
                counted: 3 + 4 + 1,
            }
        );
        let dropped = pack(examples, 6, 0, Overlong::Drop);
        assert_eq!(dropped.tokens, vec![1, 2, 3, 4, 5, 0, 13, 14, 0, 0, 0, 0]);
        assert_eq!((dropped.counts.dropped, dropped.counts.examples), (1, 3));
        let (train, val) = dropped.split_rows(1);
        assert_eq!((train.counts.rows, val.counts.rows), (1, 1));
        assert_eq!(val.tokens, vec![13, 14, 0, 0, 0, 0]);
        assert_eq!(val.counts.counted, 1);
    }

    #[test]
    fn an_instruction_counts_its_completion_and_the_end_of_sequence() {
        let tokenizer = TextTokenizer::Bytes;
        let encoder = ExampleEncoder {
            tokenizer: &tokenizer,
            template: None,
            train_on: TrainOn::Completions,
            eos: 0,
        };
        let record = Record::Instruction {
            prompt: "Q?".into(),
            completion: "ok".into(),
        };
        let got = encoder.encode(&record).unwrap();
        assert_eq!(
            got.tokens,
            vec![u32::from(b'Q'), u32::from(b'?'), 111, 107, 0]
        );
        assert_eq!(got.mask, vec![false, false, true, true, true]);
        let all = ExampleEncoder {
            train_on: TrainOn::All,
            ..encoder
        };
        assert!(all.encode(&record).unwrap().mask.iter().all(|&m| m));
    }
}
