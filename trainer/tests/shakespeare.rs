//! The tiny model learns real text: a short run on tinyshakespeare (bytes) must get clearly
//! below the bigram entropy (2.45 nats/byte). The full 5-minute target (< 2.0) is checked by
//! bench/cpu-tiny-shakespeare.sh, not here.

use std::path::PathBuf;

use tessera_api::{manifest::parse_training_run_with, spec::Tokenizer};
use tessera_trainer::{
    backend::cpu::CpuBackend,
    data::prepare::{PrepareOptions, prepare},
    run::{RunOptions, train},
};

#[test]
fn tiny_gets_clearly_below_the_bigram_entropy_on_shakespeare() {
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinyshakespeare.txt");
    assert!(
        corpus.exists(),
        "{} is missing: the tests expect the repository's shared/ folder beside the checkout",
        corpus.display()
    );
    let dir = tempfile::tempdir().unwrap();
    prepare(&PrepareOptions::new(
        Tokenizer::Bytes,
        dir.path(),
        vec![corpus],
    ))
    .unwrap();
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/tiny-shakespeare.yaml"
    ))
    .unwrap();
    let set = |s: &str| s.parse().unwrap();
    let run = parse_training_run_with(
        &yaml,
        &[
            set("training.steps=400"),
            set("optimizer.warmupSteps=20"),
            set("training.evalInterval=400"),
            set("checkpoint.everySteps=400"),
        ],
    )
    .unwrap();
    let options = RunOptions {
        log_every: 100,
        ..RunOptions::new(dir.path(), "shakespeare-test")
    };
    let summary = train(CpuBackend::<f32>::new(), &run, &options).unwrap();
    let val = summary
        .final_val_loss
        .expect("the run evaluates at its last step");
    assert!(
        val < 2.40,
        "validation loss {val:.4} nats/byte is not clearly below the bigram 2.45"
    );
}
