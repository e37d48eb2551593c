//! Text generation from a committed checkpoint, so a person can see what a model learned:
//! temperature and top-k sampling from a seeded generator, with the context window sliding
//! over the text once it is longer than the model's context.

use std::path::{Path, PathBuf};

use crate::{
    backend::Backend,
    checkpoint::{InvalidReason, LoadedCheckpoint, find_latest_valid, load_checkpoint},
    config::ConfigError,
    data::loader::IGNORE_TARGET,
    data::tokenizer::{TextTokenizer, TokenizerError},
    family::{Family, FamilyError},
    model::{ModelError, ParamLayout},
    rng::Rng,
    run::RunError,
};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("no committed checkpoint under {0}; train first, or name a checkpoint directory")]
    NoCheckpoint(PathBuf),
    #[error("checkpoint {dir} cannot be used: {reason}")]
    Invalid { dir: PathBuf, reason: InvalidReason },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Family(#[from] FamilyError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("--temperature must be a finite number >= 0 (0 picks the most likely token); got {0}")]
    Temperature(f64),
    #[error("the prompt encodes to token {token}, outside the model's vocabulary of {vocab}")]
    PromptToken { token: u32, vocab: usize },
    #[error(
        "--data {data} was tokenized with {data_vocab} tokens, more than the model's {vocab}; evaluate on data made with the model's tokenizer"
    )]
    DataVocab {
        data: String,
        data_vocab: u32,
        vocab: usize,
    },
    #[error("--data {data} holds {tokens} token(s): at least 2 are needed to score one prediction")]
    TooLittleData { data: String, tokens: u64 },
    #[error("--data: {0}")]
    Data(#[from] crate::data::loader::LoaderError),
    #[error("--chat: {0}")]
    Chat(String),
    #[error(
        "checkpoint {dir} holds LoRA adapters trained on {want}, but {path} now has other weights (SHA-256 {found}); restore the base model the adapters were trained on"
    )]
    BaseChanged {
        dir: PathBuf,
        want: String,
        path: String,
        found: String,
    },
}

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub prompt: String,
    pub tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub seed: u64,
    /// The prompt is a user's message: rendered with the model's chat template and its
    /// generation prompt, and generation stops at an end-of-turn token.
    pub chat: bool,
}

/// A checkpoint directory, or a checkpoint root whose newest valid checkpoint is taken.
pub fn open_checkpoint(path: &Path) -> Result<LoadedCheckpoint, SampleError> {
    if path.join(tessera_api::checkpoint::COMMIT_MARKER).exists() {
        return load_checkpoint(path).map_err(|reason| SampleError::Invalid {
            dir: path.to_path_buf(),
            reason,
        });
    }
    find_latest_valid(path)?
        .loaded
        .ok_or_else(|| SampleError::NoCheckpoint(path.to_path_buf()))
}

/// The checkpoint's parameters in the model's flat layout.
pub fn flat_params(
    checkpoint: &LoadedCheckpoint,
    layout: &ParamLayout,
) -> Result<Vec<f32>, SampleError> {
    let mut params = vec![0.0f32; layout.total];
    for tensor in &layout.tensors {
        let saved = checkpoint
            .model_tensor(tensor.name)
            .filter(|t| t.values.len() == tensor.len)
            .ok_or_else(|| SampleError::Invalid {
                dir: checkpoint.dir.clone(),
                reason: InvalidReason::BadTensors {
                    path: crate::checkpoint::MODEL_FILE.into(),
                    message: format!("no tensor {} of {} values", tensor.name, tensor.len),
                },
            })?;
        params[tensor.range()].copy_from_slice(&saved.values);
    }
    Ok(params)
}

/// The family, dimensions and spec a checkpoint was trained with (its spec's paths are
/// absolute when a resolved run wrote it; others are taken from the checkpoint directory).
pub fn checkpoint_family(
    checkpoint: &LoadedCheckpoint,
) -> Result<
    (
        Family,
        tessera_api::spec::ResolvedModel,
        tessera_api::TrainingRunSpec,
    ),
    SampleError,
> {
    let spec = checkpoint.manifest.config.clone();
    let run = tessera_api::TrainingRun::new("checkpoint", spec.clone());
    let (family, resolved) = Family::of(&run, &checkpoint.dir)?;
    let mut spec = spec;
    if let Some(from) = &spec.model.from {
        // A model directory's own tokenizer, as the run resolved it.
        if !matches!(
            spec.data.tokenizer,
            tessera_api::spec::Tokenizer::HuggingFace(_)
        ) {
            spec.data.tokenizer = tessera_api::spec::Tokenizer::HuggingFace(from.clone());
        }
    }
    Ok((family, resolved, spec))
}

/// A checkpoint's whole model: its family with every weight in one flat space, and those
/// weights. A LoRA checkpoint's adapters are merged into the base it names (`W + scale·B·A`),
/// which must still hold the weights they were trained on.
pub fn checkpoint_model(checkpoint: &LoadedCheckpoint) -> Result<(Family, Vec<f32>), SampleError> {
    let (family, _, _) = checkpoint_family(checkpoint)?;
    let placement = family.placement()?;
    let trainable = flat_params(checkpoint, &placement.trainable)?;
    if family.lora().is_none() {
        return Ok((family, trainable));
    }
    let base = family
        .base_ref()?
        .expect("a LoRA family names its base (validation requires one)");
    let want = checkpoint.manifest.base.as_ref();
    if want.map(|w| &w.sha256) != Some(&base.sha256) {
        return Err(SampleError::BaseChanged {
            dir: checkpoint.dir.clone(),
            want: want.map_or_else(
                || "(no base named)".to_string(),
                |w| format!("{} (SHA-256 {})", w.path, w.sha256),
            ),
            path: base.path,
            found: base.sha256,
        });
    }
    let (weights, _) = family
        .initial_weights(&family.layout())?
        .expect("a LoRA family names its base (validation requires one)");
    Ok((
        family.without_lora(),
        placement.merged(&weights, &trainable),
    ))
}

/// A model ready to use: its family, flat parameters, tokenizer and context, from a
/// checkpoint (root or step directory) or a Hugging Face model directory.
pub struct LoadedModel {
    pub family: Family,
    pub params: Vec<f32>,
    pub tokenizer: tessera_api::spec::Tokenizer,
    /// Positions the model takes (a checkpoint: its training context; a Hugging Face
    /// directory: `max_position_embeddings` / `n_positions`).
    pub context: usize,
    /// What was loaded, for messages: "checkpoint DIR (step N)" or "Hugging Face model DIR".
    pub source: String,
}

/// Loads `path`: a Hugging Face model directory (it holds config.json) or a checkpoint
/// (a step directory or a root, whose newest valid checkpoint is taken).
pub fn load_model(path: &Path) -> Result<LoadedModel, SampleError> {
    if path.join("config.json").is_file() {
        let (family, context) = Family::from_hf_dir(path)?;
        let layout = family.layout();
        let params = family
            .initial_weights(&layout)?
            .map(|(params, _)| params)
            .expect("a Hugging Face directory names its weights");
        let tokenizer = if path.join("tokenizer.json").is_file() {
            tessera_api::spec::Tokenizer::HuggingFace(path.to_string_lossy().into_owned())
        } else {
            tessera_api::spec::Tokenizer::Gpt2
        };
        return Ok(LoadedModel {
            family,
            params,
            tokenizer,
            context,
            source: format!("Hugging Face model {}", path.display()),
        });
    }
    let checkpoint = open_checkpoint(path)?;
    let (_, resolved, spec) = checkpoint_family(&checkpoint)?;
    let (family, params) = checkpoint_model(&checkpoint)?;
    Ok(LoadedModel {
        family,
        params,
        tokenizer: spec.data.tokenizer,
        context: resolved.context as usize,
        source: format!(
            "checkpoint {} (step {})",
            checkpoint.dir.display(),
            checkpoint.manifest.step
        ),
    })
}

/// What [`sample`] produced: the prompt's and the continuation's token ids and text.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sampled {
    pub prompt_ids: Vec<u32>,
    pub prompt: String,
    pub continuation_ids: Vec<u32>,
    pub continuation: String,
}

/// Generates `options.tokens` tokens after the prompt (greedy, deterministic, at
/// temperature 0), the window sliding once the text is longer than the model's context.
pub fn sample<B: Backend>(
    backend: B,
    loaded: &LoadedModel,
    options: &SampleOptions,
) -> Result<Sampled, SampleError> {
    if !(options.temperature.is_finite() && options.temperature >= 0.0) {
        return Err(SampleError::Temperature(options.temperature));
    }
    let tokenizer = TextTokenizer::new(&loaded.tokenizer)?;
    let t = loaded.context;
    let vocab = loaded.family.vocab();
    let mut model = loaded.family.build(backend, 1, t, 0)?;
    model.load_params_from_host(&loaded.params)?;

    let (mut tokens, stop) = if options.chat {
        chat_prompt(&tokenizer, loaded, &options.prompt)?
    } else {
        (tokenizer.encode(&options.prompt)?, Vec::new())
    };
    if tokens.is_empty() {
        // Start from end-of-text where the tokenizer has one, else a newline.
        tokens.push(tokenizer.end_of_text().unwrap_or(u32::from(b'\n')));
    }
    if let Some(&token) = tokens.iter().find(|&&tok| tok as usize >= vocab) {
        return Err(SampleError::PromptToken { token, vocab });
    }
    let prompt_len = tokens.len();
    let mut rng = Rng::new(options.seed);
    let mut window = vec![0u32; t];
    for _ in 0..options.tokens {
        let start = tokens.len().saturating_sub(t);
        let context = &tokens[start..];
        window[..context.len()].copy_from_slice(context);
        window[context.len()..].fill(0);
        model.forward_logits(&window)?;
        let logits = model.logits_at(0, context.len() - 1)?;
        let next = pick(&logits, options, &mut rng);
        if stop.contains(&next) {
            break;
        }
        tokens.push(next);
    }
    let continuation_ids = tokens.split_off(prompt_len);
    Ok(Sampled {
        prompt: tokenizer.decode(&tokens)?,
        continuation: tokenizer.decode(&continuation_ids)?,
        prompt_ids: tokens,
        continuation_ids,
    })
}

/// A user's message rendered with the model's chat template (the tokenizer directory's
/// `chat_template.jinja` or tokenizer_config.json's) and its generation prompt, as token ids
/// (special-token spellings are the special tokens), and the tokens that end the assistant's
/// turn: the tokenizer's end of sequence and the model's `eos_token_id`s.
fn chat_prompt(
    tokenizer: &TextTokenizer,
    loaded: &LoadedModel,
    prompt: &str,
) -> Result<(Vec<u32>, Vec<u32>), SampleError> {
    use crate::data::{
        chat::{ChatError, ChatTemplate},
        records::{Message, Role},
    };
    let TextTokenizer::HuggingFace(hf) = tokenizer else {
        return Err(SampleError::Chat(format!(
            "--chat needs a model with a Hugging Face tokenizer and chat template, not {}",
            tokenizer.name()
        )));
    };
    let (source, origin) = ChatTemplate::find_in(hf.dir())
        .map_err(|e| SampleError::Chat(e.to_string()))?
        .ok_or_else(|| {
            SampleError::Chat(
                ChatError::NoTemplate {
                    dir: hf.dir().to_path_buf(),
                }
                .to_string(),
            )
        })?;
    let spelling = |id: Option<u32>| id.and_then(|id| hf.token_text(id));
    let template = ChatTemplate::new(
        &source,
        origin.display().to_string(),
        spelling(hf.bos()),
        spelling(hf.eos()),
    )
    .map_err(|e| SampleError::Chat(e.to_string()))?;
    let messages = [Message {
        role: Role::User,
        content: prompt.to_string(),
    }];
    let text = template
        .render(&messages, true)
        .map_err(|e| SampleError::Chat(e.to_string()))?;
    let (ids, _) = hf
        .encode_with_offsets(&text)
        .map_err(|e| SampleError::Chat(e.to_string()))?;
    let mut stop: Vec<u32> = hf.eos().into_iter().collect();
    if let Family::Llama { config, .. } = &loaded.family {
        stop.extend(&config.tokens.eos);
    }
    Ok((ids, stop))
}

/// What [`evaluate`] measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// Mean next-token cross-entropy (nats per token).
    pub loss: f64,
    pub perplexity: f64,
    /// Predictions scored.
    pub tokens: u64,
    /// Windows of `context` predictions.
    pub windows: u64,
    pub context: usize,
}

/// The mean next-token loss over consecutive non-overlapping windows read from the start of
/// `data` (token shards) in order: window `i` predicts tokens `i·N + 1 ..= (i + 1)·N` from
/// the `N` before each. `N` is `context`, or the model's, capped by the data; packed rows of
/// instruction and chat data are the windows when no `context` is given. Targets the data's
/// loss mask does not count (prompts, user turns, padding) are not scored.
pub fn evaluate<B: Backend>(
    backend: B,
    loaded: &LoadedModel,
    data: &str,
    context: Option<usize>,
) -> Result<Evaluation, SampleError> {
    let stream = crate::data::loader::TokenStream::open(data)?;
    let vocab = loaded.family.vocab();
    if stream.vocab_size() as usize > vocab {
        return Err(SampleError::DataVocab {
            data: data.to_string(),
            data_vocab: stream.vocab_size(),
            vocab,
        });
    }
    let available = stream.len().saturating_sub(1);
    let row = stream.row_len() as usize;
    // Packed rows (instruction and chat data) are windows of their own when they fit.
    let (n, stride) = if row > 1 && row - 1 <= loaded.context && context.is_none() {
        (row - 1, row as u64)
    } else {
        let n = context
            .unwrap_or(loaded.context)
            .min(loaded.context)
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        (n, n as u64)
    };
    if n == 0 {
        return Err(SampleError::TooLittleData {
            data: data.to_string(),
            tokens: stream.len(),
        });
    }
    let mut model = loaded.family.build(backend, 1, n, 0)?;
    model.load_params_from_host(&loaded.params)?;
    let windows = available.saturating_sub(n as u64) / stride + 1;
    let mut window = vec![0u32; n + 1];
    let mut targets = vec![0u32; n];
    let (mut total, mut tokens) = (0.0f64, 0u64);
    for i in 0..windows {
        let start = i * stride;
        stream.copy_range(start, &mut window);
        // The loss counts what training counts: a masked stream's uncounted targets are
        // ignored (prompts, user turns, padding).
        for (j, t) in targets.iter_mut().enumerate() {
            let pos = start + 1 + j as u64;
            *t = if stream.counted(pos) {
                window[j + 1]
            } else {
                IGNORE_TARGET
            };
        }
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count() as u64;
        if counted == 0 {
            continue;
        }
        total += model.forward_sum(&window[..n], &targets, 0.0)?;
        tokens += counted;
    }
    if tokens == 0 {
        return Err(SampleError::TooLittleData {
            data: data.to_string(),
            tokens: stream.len(),
        });
    }
    let loss = total / tokens as f64;
    Ok(Evaluation {
        loss,
        perplexity: loss.exp(),
        tokens,
        windows,
        context: n,
    })
}

/// Draws a token from logits with temperature and top-k.
fn pick(logits: &[f32], options: &SampleOptions, rng: &mut Rng) -> u32 {
    let argmax = |xs: &[f32]| {
        xs.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 { (i, x) } else { best }
            })
            .0 as u32
    };
    if options.temperature == 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if options.top_k > 0 {
        order.truncate(options.top_k);
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / options.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(temperature: f64, top_k: usize) -> SampleOptions {
        SampleOptions {
            prompt: String::new(),
            tokens: 1,
            temperature,
            top_k,
            seed: 1,
            chat: false,
        }
    }

    #[test]
    fn greedy_picks_the_largest_and_top_k_never_leaves_the_k_best() {
        let logits = [0.1, 3.0, 2.9, -1.0, 2.8];
        let mut rng = Rng::new(3);
        assert_eq!(pick(&logits, &options(0.0, 0), &mut rng), 1);
        for _ in 0..200 {
            let token = pick(&logits, &options(5.0, 2), &mut rng);
            assert!(token == 1 || token == 2, "top-2 drew {token}");
        }
        // With a high temperature and no top-k every token shows up.
        let mut seen = [false; 5];
        for _ in 0..2000 {
            seen[pick(&logits, &options(50.0, 0), &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }
}
