//! How binaries print an error: the whole chain of causes on one line, each cause once.
//!
//! Many errors already quote their cause in their own message; printing the chain naively
//! would repeat it, so a cause whose text is already shown is skipped.

use std::{error::Error, process::ExitCode};

/// A binary's exit: 0 on success; otherwise the error chain on stderr and exit 1.
pub fn exit_code<E: AsRef<dyn Error + Send + Sync + 'static>>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `outer: cause: root cause`, without repeating a cause already quoted.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_are_joined_and_quoted_ones_skipped() {
        let root = Layer("disk full", None);
        let quoting = Layer("cannot write x: disk full", Some(Box::new(root)));
        let top = Layer("checkpoint failed", Some(Box::new(quoting)));
        assert_eq!(
            error_chain(&top),
            "checkpoint failed: cannot write x: disk full"
        );
    }
}
