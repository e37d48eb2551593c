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
