//! Listing a checkpoint root, newest first, as text lines or JSON: what `tessera ckpt ls`
//! prints, and what `tessera status` shows for a run directory that holds only checkpoints.
//! Listing is cheap (manifests are read, files are not hashed); `tessera ckpt verify` checks.

use std::path::Path;

use anyhow::{Result, bail};
use tessera_trainer::checkpoint::{CheckpointListing, list_checkpoints};

/// Every checkpoint directory under `root`, newest first. `root` must be a directory.
pub fn list(root: &Path) -> Result<Vec<CheckpointListing>> {
    if !root.is_dir() {
        bail!(
            "{} is not a directory; name a checkpoint root (checkpoint.path)",
            root.display()
        );
    }
    Ok(list_checkpoints(root)?)
}

/// One line: step, committed or not, loss, size and directory.
pub fn line(c: &CheckpointListing) -> String {
    let state = if c.committed {
        "committed"
    } else {
        "uncommitted"
    };
    let loss = c
        .manifest
        .as_ref()
        .and_then(|m| m.loss)
        .map_or_else(|| "-".to_string(), |l| format!("{l:.4}"));
    format!(
        "{:>10}  {state:<11}  loss {loss:>8}  {:>12} bytes  {}",
        c.step,
        c.bytes,
        c.dir.display()
    )
}

/// One checkpoint as a JSON object: `step`, `committed`, `loss`, `valLoss`, `generation`,
/// `bytes`, `dir` (unknown values are `null`).
pub fn json(c: &CheckpointListing) -> serde_json::Value {
    let m = c.manifest.as_ref();
    serde_json::json!({
        "step": c.step,
        "committed": c.committed,
        "loss": m.and_then(|m| m.loss),
        "valLoss": m.and_then(|m| m.val_loss),
        "generation": m.map(|m| m.generation),
        "bytes": c.bytes,
        "dir": c.dir.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_missing_root_is_named_and_an_empty_one_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = list(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("not a directory"),
            "{err}"
        );
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn an_uncommitted_checkpoint_is_listed_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("step-0000000100.partial")).unwrap();
        std::fs::create_dir(dir.path().join("step-0000000050")).unwrap();
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        for c in &listed {
            assert!(!c.committed);
            let text = line(c);
            assert!(
                text.contains("uncommitted") && text.contains("loss        -"),
                "{text}"
            );
            let j = json(c);
            assert_eq!(j["committed"], false);
            assert!(j["loss"].is_null());
            assert_eq!(j["step"], c.step);
        }
        let fake = CheckpointListing {
            dir: PathBuf::from("/ckpt/step-0000000007"),
            step: 7,
            committed: true,
            manifest: None,
            bytes: 1234,
        };
        assert_eq!(
            line(&fake),
            "         7  committed    loss        -          1234 bytes  /ckpt/step-0000000007"
        );
    }
}
