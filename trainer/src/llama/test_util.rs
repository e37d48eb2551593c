//! Test helpers of the Llama module: the recorded fixtures (trainer/tests/fixtures/hf), random
//! inputs, and the central finite-difference check every kernel's backward is tested with.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::rng::Rng;

/// `trainer/tests/fixtures/hf/<name>`.
pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// What scripts/fixtures/record.py stored for one model: golden.json and golden.safetensors.
pub(crate) struct Golden {
    pub json: Value,
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub labels_masked: Vec<i64>,
    pub logits: Vec<f32>,
    /// Absent for mistral (not stored, to keep the fixtures small).
    pub logits_f64: Option<Vec<f64>>,
    pub inv_freq: Vec<f32>,
}

fn le_values<const N: usize, T>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|b| from(b.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

impl Golden {
    pub(crate) fn load(name: &str) -> Self {
        let dir = fixture_dir(name);
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensor = |n: &str, dtype: safetensors::Dtype| {
            let view = file.tensor(n).unwrap();
            assert_eq!(view.dtype(), dtype, "{name}: {n}");
            (view.shape().to_vec(), view.data().to_vec())
        };
        let (shape, ids) = tensor("input_ids", safetensors::Dtype::I64);
        let (_, labels) = tensor("labels_masked", safetensors::Dtype::I64);
        let (_, logits) = tensor("logits", safetensors::Dtype::F32);
        let (_, inv_freq) = tensor("rope.inv_freq", safetensors::Dtype::F32);
        let logits_f64 = file
            .tensor("logits_f64")
            .ok()
            .map(|v| le_values(v.data(), f64::from_le_bytes));
        Golden {
            json,
            batch: shape[0],
            seq_len: shape[1],
            input_ids: le_values(&ids, i64::from_le_bytes),
            labels_masked: le_values(&labels, i64::from_le_bytes),
            logits: le_values(&logits, f32::from_le_bytes),
            logits_f64,
            inv_freq: le_values(&inv_freq, f32::from_le_bytes),
        }
    }

    /// `golden.json[precision][key]` as a number.
    pub(crate) fn number(&self, precision: &str, key: &str) -> f64 {
        self.json[precision][key]
            .as_f64()
            .unwrap_or_else(|| panic!("golden.json lacks {precision}.{key}"))
    }

    /// The float32-against-float64 spread transformers itself shows for `key`.
    pub(crate) fn spread(&self, key: &str) -> f64 {
        self.number("float32_vs_float64", key)
    }

    pub(crate) fn ids_u32(&self) -> Vec<u32> {
        self.input_ids.iter().map(|&t| t as u32).collect()
    }
}

/// `n` values drawn from N(0, scale²).
pub(crate) fn random(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// Checks `analytic[i]` against the central difference of `loss` at `x` along coordinate `i`,
/// for every `i`, with step 1e-5 in f64 (truncation and rounding error both ~1e-10 for the
/// O(1) values used here, so a relative 1e-6 catches any wrong term).
pub(crate) fn assert_gradient(
    what: &str,
    x: &[f64],
    analytic: &[f64],
    mut loss: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}");
    const H: f64 = 1e-5;
    let mut probe = x.to_vec();
    for i in 0..x.len() {
        probe[i] = x[i] + H;
        let up = loss(&probe);
        probe[i] = x[i] - H;
        let down = loss(&probe);
        probe[i] = x[i];
        let numeric = (up - down) / (2.0 * H);
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= 1e-6 * (1.0 + numeric.abs()),
            "{what}[{i}]: analytic {} against finite difference {numeric}",
            analytic[i]
        );
    }
}

/// `Σ a[i]·b[i]` in f64: the scalar a kernel's output is reduced to for gradient checks.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
