//! A TrainingRun read once: parsed, its `--set` overrides applied, validated with the cluster's
//! rules, its relative paths made absolute against the directory they were given from, and its
//! model's shape worked out. Whoever reads the manifest (`tessera run`, a pod's agent from its
//! ConfigMap, a standalone `tessera-trainer`) resolves it; every hop below is handed the
//! [`ResolvedRun`] (as a value, or as the JSON file an agent gives its ranks with `--run`) and
//! re-derives nothing.
//!
//! ```text
//! run.yaml + --set ──parse, override, validate──▶ TrainingRun ──absolute paths, shape──▶ ResolvedRun
//!                                                            (base_dir)                 │
//!                           agents (in-process, or --run run.json) ◀────────────────────┤
//!                           ranks (tessera-trainer --run run.json) ◀────────────────────┘
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    ManifestError, TrainingRun,
    manifest::{Override, parse_training_run_with, resolve_path},
    spec::{ResolvedModel, Tokenizer},
};

/// The JSON form's version; a reader refuses a newer one.
pub const RESOLVED_RUN_VERSION: u32 = 1;

/// A TrainingRun ready to run: see the module documentation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedRun {
    pub version: u32,
    /// `metadata.name`.
    pub name: String,
    /// The run with overrides applied and `spec.data.train`, `spec.data.validation`,
    /// `spec.checkpoint.path`, `spec.training.initFrom` and a Hugging Face `spec.data.tokenizer`
    /// absolute.
    pub run: TrainingRun,
    /// The model's dimensions.
    pub model: ResolvedModel,
    /// The directory relative paths were taken from (absolute).
    pub base_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("metadata.name is missing; give the run a name")]
    MissingName,
    #[error(
        "spec.model does not resolve to dimensions; set model.from, model.preset or every dimension"
    )]
    UnresolvedModel,
    #[error("spec.model.from: {0}")]
    ModelDir(#[from] crate::llama_config::ConfigError),
    #[error(
        "spec.model.context is {context}, beyond the max_position_embeddings ({max}) of {config}; train with a context of at most {max}"
    )]
    ContextBeyondModel {
        context: u32,
        max: usize,
        config: PathBuf,
    },
    #[error("the base directory {0} is not absolute")]
    RelativeBase(PathBuf),
    #[error("cannot read the resolved run {path}: {detail}")]
    Read { path: PathBuf, detail: String },
    #[error(
        "the resolved run {path} has version {found}, newer than this binary reads ({RESOLVED_RUN_VERSION}); use binaries of one release"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write the resolved run {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ResolvedRun {
    /// Reads the manifest text with its overrides and resolves it against `base_dir`.
    pub fn from_manifest(
        yaml: &str,
        overrides: &[Override],
        base_dir: &Path,
    ) -> Result<ResolvedRun, ResolveError> {
        let run = parse_training_run_with(yaml, overrides)?;
        ResolvedRun::resolve(run, base_dir)
    }

    /// Resolves an already validated run against `base_dir`.
    pub fn resolve(mut run: TrainingRun, base_dir: &Path) -> Result<ResolvedRun, ResolveError> {
        if !base_dir.is_absolute() {
            return Err(ResolveError::RelativeBase(base_dir.to_path_buf()));
        }
        let name = run
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(ResolveError::MissingName)?;
        let absolute = |p: &str| resolve_path(base_dir, p).to_string_lossy().into_owned();
        let spec = &mut run.spec;
        let model = match spec.model.from.as_deref().map(absolute) {
            Some(dir) => {
                let (_, model) = model_from_dir(Path::new(&dir), spec.model.context)?;
                spec.model.from = Some(dir);
                spec.data.tokenizer = spec.run_tokenizer(base_dir);
                model
            }
            None => spec
                .model
                .resolve(&spec.data.tokenizer)
                .ok_or(ResolveError::UnresolvedModel)?,
        };
        spec.data.train = absolute(&spec.data.train);
        spec.data.validation = spec.data.validation.as_deref().map(absolute);
        spec.checkpoint.path = absolute(&spec.checkpoint.path);
        spec.training.init_from = spec.training.init_from.as_deref().map(absolute);
        if let Tokenizer::HuggingFace(path) = &spec.data.tokenizer {
            spec.data.tokenizer = Tokenizer::HuggingFace(absolute(path));
        }
        Ok(ResolvedRun {
            version: RESOLVED_RUN_VERSION,
            name,
            run,
            model,
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// The run's Kubernetes namespace (`default` when the manifest names none).
    pub fn namespace(&self) -> &str {
        self.run.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The checkpoint directory (absolute).
    pub fn checkpoint_root(&self) -> PathBuf {
        PathBuf::from(&self.run.spec.checkpoint.path)
    }

    /// Writes the JSON form to `path`, whole or not at all (a temporary file renamed).
    pub fn write_to(&self, path: &Path) -> Result<(), ResolveError> {
        let json = serde_json::to_vec_pretty(self).expect("plain data serializes");
        // Unique per writer: agents sharing a process may write at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.tmp-{}-{n}", std::process::id()));
        let write_err = |source| ResolveError::Write {
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&tmp, json).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    /// Reads the JSON form [`ResolvedRun::write_to`] wrote.
    pub fn read_from(path: &Path) -> Result<ResolvedRun, ResolveError> {
        let read_err = |detail: String| ResolveError::Read {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let versioned: Versioned =
            serde_json::from_slice(&bytes).map_err(|e| read_err(e.to_string()))?;
        if versioned.version > RESOLVED_RUN_VERSION {
            return Err(ResolveError::Version {
                path: path.to_path_buf(),
                found: versioned.version,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| read_err(e.to_string()))
    }
}

/// The Llama-family model in `dir` (its config.json, read once) and its dimensions trained
/// with sequences of `context` tokens (required by `validate()`; at most the model's
/// positions).
pub fn model_from_dir(
    dir: &Path,
    context: Option<u32>,
) -> Result<(crate::llama_config::LlamaConfig, ResolvedModel), ResolveError> {
    let config = crate::llama_config::LlamaConfig::from_dir(dir)?;
    let context = context.ok_or(ResolveError::UnresolvedModel)?;
    if context as usize > config.max_position_embeddings {
        return Err(ResolveError::ContextBeyondModel {
            context,
            max: config.max_position_embeddings,
            config: dir.join(crate::llama_config::CONFIG_FILE),
        });
    }
    let model = config.resolved_model(context);
    Ok((config, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: small}
spec:
  model: {preset: tiny}
  data: {train: data/train-*.bin, validation: /abs/val-*.bin, tokenizer: bytes}
  optimizer: {globalBatchTokens: 1024, microBatch: 8}
  training: {steps: 10, initFrom: models/gpt2.safetensors}
  checkpoint: {path: checkpoints}
"#;

    fn set(text: &str) -> Override {
        text.parse().unwrap()
    }

    #[test]
    fn paths_become_absolute_once_and_overrides_apply() {
        let run = ResolvedRun::from_manifest(
            MANIFEST,
            &[set("training.steps=20"), set("checkpoint.path=out/ckpt")],
            Path::new("/work/here"),
        )
        .unwrap();
        let spec = &run.run.spec;
        assert_eq!(spec.training.steps, Some(20));
        assert_eq!(spec.data.train, "/work/here/data/train-*.bin");
        assert_eq!(spec.data.validation.as_deref(), Some("/abs/val-*.bin"));
        assert_eq!(run.checkpoint_root(), Path::new("/work/here/out/ckpt"));
        assert_eq!(
            spec.training.init_from.as_deref(),
            Some("/work/here/models/gpt2.safetensors")
        );
        assert_eq!(run.name, "small");
        assert_eq!(run.namespace(), "default");
        assert_eq!(spec.data.tokenizer, Tokenizer::Bytes);

        let hf = MANIFEST
            .replace("tokenizer: bytes", "tokenizer: models/llama")
            .replace("model: {preset: tiny}", "model: {preset: tiny, vocab: 384}");
        let hf_run = ResolvedRun::from_manifest(&hf, &[], Path::new("/work/here")).unwrap();
        assert_eq!(
            hf_run.run.spec.data.tokenizer,
            Tokenizer::HuggingFace("/work/here/models/llama".into())
        );
        assert_eq!(hf_run.model.vocab, 384);
        assert_eq!(run.model.vocab, 256);
        assert_eq!(run.model.layers, 4);
        // Resolving again changes nothing: absolute paths stay as they are.
        let again = ResolvedRun::resolve(run.run.clone(), Path::new("/elsewhere")).unwrap();
        assert_eq!(again.run.spec, run.run.spec);
    }

    #[test]
    fn the_file_form_round_trips_and_refuses_newer_versions() {
        let dir = std::env::temp_dir().join(format!("tessera-resolved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.json");
        let run = ResolvedRun::from_manifest(MANIFEST, &[], Path::new("/w")).unwrap();
        run.write_to(&path).unwrap();
        let read = ResolvedRun::read_from(&path).unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&run).unwrap()
        );

        let mut newer = serde_json::to_value(&run).unwrap();
        newer["version"] = serde_json::json!(RESOLVED_RUN_VERSION + 1);
        std::fs::write(&path, serde_json::to_vec(&newer).unwrap()).unwrap();
        let err = ResolvedRun::read_from(&path).unwrap_err().to_string();
        assert!(err.contains("newer than this binary reads"), "{err}");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = ResolvedRun::read_from(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_refused_naming_what_to_fix() {
        let err = ResolvedRun::from_manifest(MANIFEST, &[], Path::new("relative")).unwrap_err();
        assert!(err.to_string().contains("not absolute"), "{err}");
        let nameless = MANIFEST.replace("metadata: {name: small}", "metadata: {}");
        let err = ResolvedRun::from_manifest(&nameless, &[], Path::new("/w")).unwrap_err();
        assert!(err.to_string().contains("metadata.name"), "{err}");
        let err = ResolvedRun::from_manifest(MANIFEST, &[set("training.steps=0")], Path::new("/w"))
            .unwrap_err();
        assert!(err.to_string().contains("spec.training.steps"), "{err}");
    }

    const FROM_MANIFEST: &str = r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {name: tune}
spec:
  model: {from: llama-gqa, context: 64}
  data: {train: data/train.txt, validationFraction: 0.1}
  optimizer: {globalBatchTokens: 512, microBatch: 8}
  training: {steps: 10, evalInterval: 0}
"#;

    /// `trainer/tests/fixtures/hf`, where the recorded model directories are.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/hf")
    }

    #[test]
    fn a_model_directory_gives_the_architecture_dimensions_and_tokenizer() {
        let run = ResolvedRun::from_manifest(FROM_MANIFEST, &[], &fixtures()).unwrap();
        let dir = fixtures().join("llama-gqa").to_string_lossy().into_owned();
        assert_eq!(run.run.spec.model.from.as_deref(), Some(dir.as_str()));
        assert_eq!(
            run.run.spec.data.tokenizer,
            Tokenizer::HuggingFace(dir.clone())
        );
        let m = run.model;
        assert_eq!(m.architecture, crate::spec::Architecture::Llama);
        assert_eq!((m.layers, m.heads, m.width, m.vocab), (2, 4, 64, 384));
        assert_eq!(
            (m.kv_heads, m.ffn_width, m.context),
            (Some(2), Some(160), 64)
        );
        // head_dim 16 is width / heads: not recorded separately.
        assert_eq!(m.head_dim, None);
    }

    #[test]
    fn a_bad_model_directory_or_context_is_refused_naming_the_field_and_file() {
        let long = ResolvedRun::from_manifest(
            FROM_MANIFEST,
            &[
                set("model.context=4096"),
                set("optimizer.globalBatchTokens=32768"),
            ],
            &fixtures(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            long.contains("spec.model.context is 4096")
                && long.contains("max_position_embeddings (128)")
                && long.contains("config.json"),
            "{long}"
        );
        let missing = ResolvedRun::from_manifest(
            FROM_MANIFEST,
            &[set("model.from=no-such-model")],
            &fixtures(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.starts_with("spec.model.from: ")
                && missing.contains("no-such-model/config.json"),
            "{missing}"
        );
    }
}
