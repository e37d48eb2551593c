//! README.md's "Set up" and "Use" sections name only what the set-up builds: every command in
//! their `sh` blocks runs a script of this repository or a binary of this workspace from
//! `target/debug/` (what `bash scripts/setup.sh` builds), every file it names exists, and every
//! `tessera` subcommand it uses is one the binary has. The main command (the first of "Use")
//! then runs as written, from the repository root, with a short override.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

mod common;

const BINARIES: [&str; 4] = [
    "tessera",
    "tessera-trainer",
    "tessera-agent",
    "tessera-operator",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of every ```sh block in the `## {title}` section, comments and blank lines dropped.
fn commands_in(readme: &str, title: &str) -> Vec<String> {
    let heading = format!("\n## {title}\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README.md has no '## {title}' section"))
        + heading.len();
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + e);
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme[start..end].lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            text if in_sh => {
                let command = text.split(" #").next().unwrap_or("").trim();
                if !command.is_empty() && !command.starts_with('#') {
                    commands.push(command.to_string());
                }
            }
            _ => {}
        }
    }
    commands
}

/// Why `command` names something the build does not produce, if it does.
fn check(command: &str, target_debug: &Path) -> Result<(), String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let program = words[0];
    let args = &words[1..];
    if program == "bash" {
        let script = args.first().ok_or("bash with no script")?;
        if !repo().join(script).is_file() {
            return Err(format!("runs {script}, which is not in the repository"));
        }
    } else if let Some(name) = program.strip_prefix("target/debug/") {
        if !BINARIES.contains(&name) {
            return Err(format!(
                "runs {program}, which is not a binary of this workspace"
            ));
        }
        if !target_debug.join(name).is_file() {
            return Err(format!("runs {program}, which the build did not produce"));
        }
        if name == "tessera" {
            let sub = args.first().ok_or("tessera with no subcommand")?;
            let help = Command::new(target_debug.join(name))
                .args([sub, "--help"])
                .output()
                .map_err(|e| e.to_string())?;
            if !help.status.success() {
                return Err(format!("tessera has no subcommand {sub}"));
            }
        }
    } else {
        return Err(format!(
            "runs {program}: only scripts of this repository (bash scripts/...) and the \
             workspace's binaries under target/debug/ are built by the set-up"
        ));
    }
    for arg in args {
        let looks_like_file = !arg.starts_with('-')
            && (arg.contains('/') || arg.ends_with(".yaml") || arg.ends_with(".sh"));
        if looks_like_file && !repo().join(arg).exists() {
            return Err(format!("names {arg}, which is not in the repository"));
        }
    }
    Ok(())
}

#[test]
fn set_up_and_use_name_only_what_the_build_produces() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let target_debug = common::bin("tessera").parent().unwrap().to_path_buf();
    for binary in BINARIES {
        common::bin(binary);
    }
    let set_up = commands_in(&readme, "Set up");
    assert_eq!(
        set_up,
        vec!["bash scripts/setup.sh"],
        "the set-up is one command"
    );
    let usage = commands_in(&readme, "Use");
    assert!(!usage.is_empty(), "the Use section shows the main command");
    let mut problems = Vec::new();
    for command in set_up.iter().chain(&usage) {
        if let Err(why) = check(command, &target_debug) {
            problems.push(format!("`{command}` {why}"));
        }
    }
    assert!(problems.is_empty(), "README.md:\n{}", problems.join("\n"));

    // The checker itself refuses what a newcomer could not run.
    assert!(check("cargo build --release", &target_debug).is_err());
    assert!(check("target/release/tessera run x.yaml", &target_debug).is_err());
    assert!(
        check(
            "target/debug/tessera run examples/missing.yaml",
            &target_debug
        )
        .is_err()
    );
    assert!(check("target/debug/tessera trian", &target_debug).is_err());
}

#[test]
fn the_main_command_trains_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let main = commands_in(&readme, "Use")
        .into_iter()
        .next()
        .expect("the Use section shows the main command");
    let words: Vec<&str> = main.split_whitespace().collect();
    let program = words[0]
        .strip_prefix("target/debug/")
        .expect("the main command runs a binary from target/debug/");
    common::bin("tessera-trainer");
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(common::bin(program))
        .args(&words[1..])
        .args(["--set", "training.steps=20", "--json", "--out"])
        .arg(out.path())
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "`{main}` failed:\n{log}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("summary JSON: {e}\n{log}"));
    assert_eq!(summary["phase"], "Succeeded", "{log}");
    assert_eq!(summary["steps"], 20, "{log}");
    assert!(
        summary["finalLoss"].as_f64().is_some_and(f64::is_finite),
        "{summary}"
    );
}
