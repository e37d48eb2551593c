//! Text generation from a committed checkpoint, so a person can see what a model learned:
//! temperature and top-k sampling from a seeded generator, with the context window sliding
//! over the text once it is longer than the model's context.

use std::path::{Path, PathBuf};

use crate::{
    backend::Backend,
    checkpoint::{InvalidReason, LoadedCheckpoint, find_latest_valid, load_checkpoint},
    config::ConfigError,
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

/// Generates `options.tokens` tokens after the prompt; returns prompt and continuation.
pub fn sample<B: Backend>(
    backend: B,
    checkpoint: &LoadedCheckpoint,
    options: &SampleOptions,
) -> Result<String, SampleError> {
    if !(options.temperature.is_finite() && options.temperature >= 0.0) {
        return Err(SampleError::Temperature(options.temperature));
    }
    let (family, resolved, spec) = checkpoint_family(checkpoint)?;
    let tokenizer = TextTokenizer::new(&spec.data.tokenizer)?;
    let t = resolved.context as usize;
    let vocab = family.vocab();
    let mut model = family.build(backend, 1, t, 0)?;
    let params = flat_params(checkpoint, model.layout())?;
    model.load_params_from_host(&params)?;

    let mut tokens = tokenizer.encode(&options.prompt)?;
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
        tokens.push(pick(&logits, options, &mut rng));
    }
    let mut text = tokenizer.decode(&tokens[..prompt_len])?;
    text.push_str(&tokenizer.decode(&tokens[prompt_len..])?);
    Ok(text)
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
