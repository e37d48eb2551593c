//! The first stage of the data pipeline: what a data file holds ([`detect_format`]) and its
//! records read and checked ([`read_records`]).
//!
//! ```text
//! file ──detect_format──▶ text | jsonl | instruction | chat | shards
//!      ──read_records───▶ [Record::Text | Record::Instruction | Record::Chat]   (JSONL formats)
//! ```
//!
//! A `.jsonl`/`.json` file, or one whose first non-blank line is a JSON object, is JSON Lines:
//! its first record's fields say which kind (`messages` → chat, `prompt` + `completion` →
//! instruction, `text` → jsonl). Every later record must have the same fields; a bad line is
//! refused naming the file, the line and the field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tessera_api::spec::DataFormat;

use super::shard::SHARD_MAGIC;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 (first bad byte at offset {offset}); JSON Lines must be UTF-8")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path}:{line}: {detail}; fix the record or remove the line")]
    BadLine {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "{path}:{line}: field `{field}` {problem}; a {format} record needs {expected} (set spec.data.format if the format was detected wrongly)"
    )]
    BadField {
        path: PathBuf,
        line: usize,
        field: String,
        problem: String,
        format: &'static str,
        expected: &'static str,
    },
    #[error(
        "{path}:{line}: the record has none of the fields `text`, `prompt` + `completion` or `messages`; name the format with spec.data.format or fix the record"
    )]
    UnknownRecord { path: PathBuf, line: usize },
    #[error("{path} holds no records (every line is blank); remove it from the data")]
    NoRecords { path: PathBuf },
    #[error(
        "{field}: {spec} mixes {first_format} data ({first}) and {format} data ({path}); name one kind of data per field, or set spec.data.format"
    )]
    Mixed {
        field: &'static str,
        spec: String,
        first: PathBuf,
        first_format: &'static str,
        path: PathBuf,
        format: &'static str,
    },
}

/// A chat turn's speaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One record of a data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A document (a text file, or a JSONL record's `text`).
    Text(String),
    /// A prompt and the completion the model learns to give.
    Instruction { prompt: String, completion: String },
    /// A conversation with at least one assistant turn.
    Chat(Vec<Message>),
}

// === detection ===

/// What `path` holds, from its extension and first bytes.
pub fn detect_format(path: &Path) -> Result<DataFormat, RecordError> {
    let read = |source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.extension().is_some_and(|e| e == "bin") {
        return Ok(DataFormat::Shards);
    }
    let bytes = std::fs::read(path).map_err(read)?;
    if bytes.len() >= SHARD_MAGIC.len() && bytes[..SHARD_MAGIC.len()] == SHARD_MAGIC {
        return Ok(DataFormat::Shards);
    }
    let named_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json" || e == "ndjson");
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty());
    let Some((index, line)) = first else {
        return Ok(if named_jsonl {
            DataFormat::Jsonl
        } else {
            DataFormat::Text
        });
    };
    let value = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        // Text that merely starts like JSON stays text, unless the file says it is JSONL.
        _ if !named_jsonl => return Ok(DataFormat::Text),
        Ok(_) => {
            return Err(RecordError::BadLine {
                path: path.to_path_buf(),
                line: index + 1,
                detail: "a JSON Lines record must be a JSON object".into(),
            });
        }
        Err(e) => {
            return Err(RecordError::BadLine {
                path: path.to_path_buf(),
                line: index + 1,
                detail: format!("not JSON: {e}"),
            });
        }
    };
    let has = |k: &str| value.get(k).is_some();
    if has("messages") {
        Ok(DataFormat::Chat)
    } else if has("prompt") || has("completion") {
        Ok(DataFormat::Instruction)
    } else if has("text") {
        Ok(DataFormat::Jsonl)
    } else {
        Err(RecordError::UnknownRecord {
            path: path.to_path_buf(),
            line: index + 1,
        })
    }
}

/// The one format of `files` (`field`'s data, named `spec`): `format` when the manifest set
/// it, else detected per file; files of different formats are refused naming two of them.
pub fn common_format(
    field: &'static str,
    spec: &str,
    files: &[PathBuf],
    format: Option<DataFormat>,
) -> Result<DataFormat, RecordError> {
    if let Some(format) = format {
        return Ok(format);
    }
    let mut first: Option<(DataFormat, &PathBuf)> = None;
    for file in files {
        let detected = detect_format(file)?;
        match first {
            None => first = Some((detected, file)),
            Some((f, path)) if f != detected => {
                return Err(RecordError::Mixed {
                    field,
                    spec: spec.to_string(),
                    first: path.clone(),
                    first_format: f.name(),
                    path: file.clone(),
                    format: detected.name(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(DataFormat::Text, |(f, _)| f))
}

// === reading ===

/// The records of a JSON Lines file of `format` (`jsonl`, `instruction` or `chat`) with their
/// line numbers (from 1), in order; blank lines are skipped.
pub fn read_records(path: &Path, format: DataFormat) -> Result<Vec<(usize, Record)>, RecordError> {
    let bytes = std::fs::read(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| RecordError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        records.push((index + 1, parse_record(path, index + 1, line, format)?));
    }
    if records.is_empty() {
        return Err(RecordError::NoRecords {
            path: path.to_path_buf(),
        });
    }
    Ok(records)
}

/// What each format expects, for errors.
fn expected(format: DataFormat) -> &'static str {
    match format {
        DataFormat::Chat => {
            "`messages`: a list of {\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"} with at least one assistant turn"
        }
        DataFormat::Instruction => "`prompt` and `completion` strings",
        _ => "a `text` string",
    }
}

#[derive(Deserialize)]
struct WireMessage {
    role: Option<serde_json::Value>,
    content: Option<serde_json::Value>,
}

fn parse_record(
    path: &Path,
    line: usize,
    text: &str,
    format: DataFormat,
) -> Result<Record, RecordError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RecordError::BadLine {
            path: path.to_path_buf(),
            line,
            detail: format!("not JSON: {e}"),
        })?;
    let serde_json::Value::Object(object) = value else {
        return Err(RecordError::BadLine {
            path: path.to_path_buf(),
            line,
            detail: "a JSON Lines record must be a JSON object".into(),
        });
    };
    let bad = |field: &str, problem: &str| RecordError::BadField {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        problem: problem.to_string(),
        format: format.name(),
        expected: expected(format),
    };
    let string = |field: &str| -> Result<String, RecordError> {
        match object.get(field) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(field, "is not a string")),
            None => Err(bad(field, "is missing")),
        }
    };
    match format {
        DataFormat::Instruction => {
            let prompt = string("prompt")?;
            let completion = string("completion")?;
            if completion.is_empty() {
                return Err(bad("completion", "is empty"));
            }
            Ok(Record::Instruction { prompt, completion })
        }
        DataFormat::Chat => {
            let messages = match object.get("messages") {
                Some(serde_json::Value::Array(list)) => list,
                Some(_) => return Err(bad("messages", "is not a list")),
                None => return Err(bad("messages", "is missing")),
            };
            let mut turns = Vec::with_capacity(messages.len());
            for (i, message) in messages.iter().enumerate() {
                let at = |f: &str| format!("messages[{i}].{f}");
                let wire: WireMessage = serde_json::from_value(message.clone())
                    .map_err(|_| bad(&format!("messages[{i}]"), "is not an object"))?;
                let role = match wire.role {
                    Some(serde_json::Value::String(r)) => match r.as_str() {
                        "system" => Role::System,
                        "user" => Role::User,
                        "assistant" => Role::Assistant,
                        other => {
                            return Err(bad(
                                &at("role"),
                                &format!("is {other:?}, not system, user or assistant"),
                            ));
                        }
                    },
                    Some(_) => return Err(bad(&at("role"), "is not a string")),
                    None => return Err(bad(&at("role"), "is missing")),
                };
                let content = match wire.content {
                    Some(serde_json::Value::String(c)) => c,
                    Some(_) => return Err(bad(&at("content"), "is not a string")),
                    None => return Err(bad(&at("content"), "is missing")),
                };
                turns.push(Message { role, content });
            }
            if !turns.iter().any(|m| m.role == Role::Assistant) {
                return Err(bad("messages", "has no assistant turn"));
            }
            Ok(Record::Chat(turns))
        }
        _ => Ok(Record::Text(string("text")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn formats_are_detected_from_extension_and_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases = [
            ("a.txt", "plain words\n", DataFormat::Text),
            ("b.md", "{ not json at all\n", DataFormat::Text),
            ("c.jsonl", "\n{\"text\": \"hi\"}\n", DataFormat::Jsonl),
            ("d.data", "{\"text\": \"hi\"}\n", DataFormat::Jsonl),
            (
                "e.jsonl",
                "{\"prompt\": \"q\", \"completion\": \"a\"}\n",
                DataFormat::Instruction,
            ),
            (
                "f.jsonl",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n",
                DataFormat::Chat,
            ),
            ("g.bin", "whatever", DataFormat::Shards),
        ];
        for (name, text, want) in cases {
            assert_eq!(detect_format(&file(d, name, text)).unwrap(), want, "{name}");
        }
        let err = detect_format(&file(d, "h.jsonl", "{\"id\": 3}\n")).unwrap_err();
        assert!(err.to_string().contains("h.jsonl:1"), "{err}");
    }

    #[test]
    fn a_mixed_folder_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(dir.path(), "a.jsonl", "{\"text\": \"x\"}\n");
        let b = file(
            dir.path(),
            "b.jsonl",
            "{\"prompt\": \"q\", \"completion\": \"a\"}\n",
        );
        let err = common_format("spec.data.train", "data/", &[a, b], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.jsonl") && err.contains("b.jsonl"), "{err}");
        assert!(err.contains("jsonl data") && err.contains("instruction data"));
        assert!(err.contains("spec.data.train"), "{err}");
    }

    #[test]
    fn records_are_read_and_bad_lines_named_by_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let chat = file(
            dir.path(),
            "chat.jsonl",
            concat!(
                "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
                "\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"a2\"}]}\n",
            ),
        );
        let records = read_records(&chat, DataFormat::Chat).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].0, 3);
        assert_eq!(
            records[1].1,
            Record::Chat(vec![
                Message {
                    role: Role::User,
                    content: "q2".into()
                },
                Message {
                    role: Role::Assistant,
                    content: "a2".into()
                },
            ])
        );
        let bad = [
            (
                DataFormat::Chat,
                "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}",
                "`messages` has no assistant turn",
            ),
            (
                DataFormat::Chat,
                "{\"messages\": [{\"role\": \"bot\", \"content\": \"q\"}]}",
                "`messages[0].role` is \"bot\"",
            ),
            (
                DataFormat::Chat,
                "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
                "`messages[0].content` is not a string",
            ),
            (DataFormat::Chat, "{\"msgs\": []}", "`messages` is missing"),
            (
                DataFormat::Instruction,
                "{\"prompt\": \"q\"}",
                "`completion` is missing",
            ),
            (
                DataFormat::Instruction,
                "{\"prompt\": 1, \"completion\": \"a\"}",
                "`prompt` is not a string",
            ),
            (DataFormat::Jsonl, "{\"text\": \"ok\"", "not JSON"),
            (DataFormat::Jsonl, "[1, 2]", "must be a JSON object"),
        ];
        for (format, line, want) in bad {
            let path = file(
                dir.path(),
                "bad.jsonl",
                &format!(
                    "{{\"text\": \"x\", \"prompt\": \"p\", \"completion\": \"c\", \"messages\": [{{\"role\": \"assistant\", \"content\": \"a\"}}]}}\n{line}\n"
                ),
            );
            let err = read_records(&path, format).unwrap_err().to_string();
            assert!(err.contains("bad.jsonl:2"), "{line}: {err}");
            assert!(err.contains(want), "{line}: {err}");
        }
        let blank = file(dir.path(), "blank.jsonl", "\n  \n");
        assert!(matches!(
            read_records(&blank, DataFormat::Jsonl),
            Err(RecordError::NoRecords { .. })
        ));
    }
}
