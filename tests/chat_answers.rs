//! Chat fine-tuning end to end, as a user does it: `tessera run` trains a small random
//! Llama-architecture model (made here, from scratch) on a chat JSONL of question/answer
//! pairs with fixed answers, the loss counting only the assistant's tokens; then `tessera
//! sample --chat` (the template's generation prompt, greedy) must give the recorded answer
//! to at least 90% of the questions.

use std::path::Path;
use std::process::Command;

const THINGS: [&str; 12] = [
    "king", "house", "lord", "night", "crown", "sword", "river", "tower", "horse", "field",
    "storm", "bell",
];
const COLOURS: [&str; 6] = ["red", "blue", "green", "white", "black", "gold"];

/// Conversation `i`: its question and its one right answer.
fn pair(i: usize) -> (String, String) {
    let thing = THINGS[i % THINGS.len()];
    let colour = COLOURS[(i * 7 + i / THINGS.len()) % COLOURS.len()];
    (
        format!("What colour is the {thing} number {i}?"),
        format!("The {thing} number {i} is {colour}."),
    )
}

const PAIRS: usize = 120;

#[test]
fn a_chat_fine_tune_answers_its_questions() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..PAIRS)
        .map(|i| {
            let (q, a) = pair(i);
            serde_json::json!({"messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("qa.jsonl"), lines.join("\n") + "\n").unwrap();
    let tokenizer =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/hf/llama-gqa");
    std::fs::write(
        dir.path().join("run.yaml"),
        format!(
            r#"
apiVersion: tessera.dev/v1alpha1
kind: TrainingRun
metadata: {{name: chat}}
spec:
  model: {{architecture: llama, layers: 2, heads: 4, kvHeads: 2, width: 96, ffnWidth: 256, context: 63, vocab: 384}}
  data: {{train: qa.jsonl, tokenizer: {}, trainOn: completions}}
  optimizer: {{lr: 0.003, warmupSteps: 20, weightDecay: 0.0, globalBatchTokens: 504, microBatch: 8}}
  training: {{steps: 1500, seed: 7, evalInterval: 0}}
  checkpoint: {{path: checkpoints, everySteps: 1500}}
"#,
            tokenizer.display()
        ),
    )
    .unwrap();
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let run = Command::new(tessera)
        .args(["run", "run.yaml", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let checkpoints = dir.path().join("runs/chat/checkpoints");
    let mut right = 0;
    let mut wrong = Vec::new();
    for i in 0..PAIRS {
        let (question, answer) = pair(i);
        let out = Command::new(tessera)
            .args([
                "sample",
                checkpoints.to_str().unwrap(),
                "--chat",
                "--prompt",
            ])
            .arg(&question)
            .args(["--temperature", "0", "--tokens", "32", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sampled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let said = sampled["continuation"].as_str().unwrap().trim().to_string();
        if said == answer {
            right += 1;
        } else {
            wrong.push(format!("{question} -> {said:?} (want {answer:?})"));
        }
    }
    assert!(
        right * 10 >= PAIRS * 9,
        "{right} of {PAIRS} exact answers; wrong:\n{}",
        wrong.join("\n")
    );
    eprintln!("{right} of {PAIRS} answers exact");
}
