//! Test helpers of the Llama module: where the recorded fixtures (trainer/tests/fixtures/hf)
//! live.

use std::path::{Path, PathBuf};

/// `trainer/tests/fixtures/hf/<name>`.
pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}
