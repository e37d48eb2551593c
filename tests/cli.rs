//! The `tessera` binary's front door: help, the CRD, manifest checks and bad input.

use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the tessera binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_the_subcommands() {
    let out = tessera(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["crd", "validate"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[test]
fn crd_prints_the_checked_in_definition() {
    let out = tessera(&["crd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/trainingrun.yaml"
    ))
    .unwrap();
    assert_eq!(text(&out.stdout), checked_in);
}

#[test]
fn the_examples_are_valid() {
    for example in [
        "examples/tiny.yaml",
        "examples/gpt2-124m.yaml",
        "examples/local.yaml",
        "examples/chat-finetune.yaml",
    ] {
        let out = tessera(&["validate", example]);
        assert!(out.status.success(), "{example}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("is valid"));
    }
}

#[test]
fn an_unknown_subcommand_fails_with_a_message() {
    let out = tessera(&["trian"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand") && err.contains("trian"),
        "{err}"
    );
}

#[test]
fn a_missing_file_fails_naming_it() {
    let out = tessera(&["validate", "no/such/run.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no/such/run.yaml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn an_invalid_manifest_fails_naming_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tiny.yaml"))
        .unwrap()
        .lines()
        .map(|line| match line.trim_start().split(':').next() {
            Some("nodes") => "    nodes: 0",
            Some("lr") => "    lr: 0.0",
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, yaml).unwrap();
    let out = tessera(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("spec.parallelism.nodes") && err.contains("spec.optimizer.lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn data_prepare_takes_a_hugging_face_tokenizer_directory() {
    use tessera_api::spec::Tokenizer;
    use tessera_trainer::data::{shard::read_shard, tokenizer::TextTokenizer};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("speech.txt");
    let speech = "First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(20);
    std::fs::write(&input, &speech).unwrap();
    let out_dir = dir.path().join("out");
    let llama = "trainer/tests/fixtures/hf/llama-gqa";
    let out = tessera(&[
        "data",
        "prepare",
        "--tokenizer",
        llama,
        "--val-fraction",
        "0",
        "--out",
        out_dir.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(llama), "{}", text(&out.stdout));
    let shard = read_shard(&out_dir.join("train-000000.bin")).unwrap();
    let tokenizer = TextTokenizer::load(
        &Tokenizer::from(format!("{}/{llama}", env!("CARGO_MANIFEST_DIR"))),
        "--tokenizer",
    )
    .unwrap();
    assert_eq!(shard.vocab_size, tokenizer.vocab_size());
    assert_eq!(shard.vocab_size, 384);
    let tokens = shard.tokens.to_u32();
    assert_eq!(tokens[0], tokenizer.end_of_text().unwrap());
    assert_eq!(tokenizer.decode(&tokens[1..]).unwrap(), speech);
}

#[test]
fn data_prepare_refuses_a_bad_tokenizer_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, "some text").unwrap();
    let out_dir = dir.path().join("out");
    for (tokenizer, expected) in [
        ("llama", "./llama"),
        ("./no/such/model", "does not exist"),
        (
            "trainer/tests/fixtures/hf/gpt2-lora",
            "has no tokenizer.json",
        ),
    ] {
        let out = tessera(&[
            "data",
            "prepare",
            "--tokenizer",
            tokenizer,
            "--out",
            out_dir.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{tokenizer}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--tokenizer") && err.contains(tokenizer) && err.contains(expected),
            "{tokenizer}: {err}"
        );
    }
}
