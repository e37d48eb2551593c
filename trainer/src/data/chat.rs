//! Chat templates: the Jinja template a model ships (`chat_template.jinja`, or the
//! `chat_template` key of `tokenizer_config.json`) or a file the manifest names, rendered with
//! `minijinja` the way transformers' `apply_chat_template` renders it.
//!
//! ```text
//! messages ──render(add_generation_prompt)──▶ text            (sampling, golden tests)
//! messages ──render_training─────────────────▶ text + the byte ranges of assistant output
//!            {% generation %} blocks where the template has them, else by prefix difference:
//!            render(messages[..i], add_generation_prompt) is where turn i starts,
//!            render(messages[..=i]) where it ends
//! ```
//!
//! As transformers does: `trim_blocks` and `lstrip_blocks` on, loop controls, the variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the helpers HF templates
//! call: `raise_exception(msg)`, `strftime_now(fmt)`, `tojson` (Python's `json.dumps`
//! spacing, no HTML escaping) and Python string/dict methods (`.strip()`, `.items()`).

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use minijinja::{Environment, Error, ErrorKind, Value, context};
use sha2::{Digest, Sha256};

use super::records::Message;

/// The template file newer transformers save beside the tokenizer.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Marks the start and end of a `{% generation %}` block in rendered text (private-use
/// characters no template writes).
const GENERATION_START: char = '\u{E000}';
const GENERATION_END: char = '\u{E001}';

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(
        "no chat template for chat data: {dir} has neither {CHAT_TEMPLATE_FILE} nor a `chat_template` in tokenizer_config.json; name a Jinja template file in spec.data.chatTemplate"
    )]
    NoTemplate { dir: PathBuf },
    #[error("chat template {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chat template {origin} does not parse: {detail}; fix the template")]
    Syntax { origin: String, detail: String },
    #[error("chat template {origin} failed: {detail}")]
    Render { origin: String, detail: String },
    #[error(
        "chat template {origin} does not render a conversation as the prefix of a longer one, so the assistant's tokens cannot be found; add {{% generation %}} blocks around assistant output or use spec.data.trainOn: all"
    )]
    NotPrefix { origin: String },
}

/// A parsed chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    sha256: String,
    tracks_generation: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Parses `source` (`origin` names it in errors).
    pub fn new(
        source: &str,
        origin: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<ChatTemplate, ChatError> {
        let origin = origin.into();
        let (rewritten, tracks_generation) = mark_generation_blocks(source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| -> Result<String, Error> {
            let now = jiff::Timestamp::now();
            jiff::fmt::strtime::format(&format, &now.to_zoned(jiff::tz::TimeZone::UTC))
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", rewritten)
            .map_err(|e| ChatError::Syntax {
                origin: origin.clone(),
                detail: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            sha256: hex::encode(Sha256::digest(source.as_bytes())),
            origin,
            tracks_generation,
            bos_token,
            eos_token,
        })
    }

    /// The template of a tokenizer directory: `chat_template.jinja`, else the
    /// `chat_template` of `tokenizer_config.json` (a string, or the `default` of a list of
    /// named templates); `None` when it has neither.
    pub fn find_in(dir: &Path) -> Result<Option<(String, PathBuf)>, ChatError> {
        let file = dir.join(CHAT_TEMPLATE_FILE);
        if file.is_file() {
            let source = std::fs::read_to_string(&file).map_err(|source| ChatError::Read {
                path: file.clone(),
                source,
            })?;
            return Ok(Some((source, file)));
        }
        let config = dir.join("tokenizer_config.json");
        let Ok(bytes) = std::fs::read(&config) else {
            return Ok(None);
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ChatError::Syntax {
                origin: config.display().to_string(),
                detail: e.to_string(),
            })?;
        let template = match json.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        Ok(template.map(|t| (t, config)))
    }

    /// Reads a template file.
    pub fn read_file(path: &Path) -> Result<String, ChatError> {
        std::fs::read_to_string(path).map_err(|source| ChatError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// SHA-256 of the template's source, hex: it enters the token cache's key.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let raw = self.render_raw(messages, add_generation_prompt)?;
        Ok(raw
            .chars()
            .filter(|&c| c != GENERATION_START && c != GENERATION_END)
            .collect())
    }

    /// The conversation rendered for training, and the byte ranges of the text the assistant
    /// produces (its `{% generation %}` blocks, or by prefix difference).
    pub fn render_training(
        &self,
        messages: &[Message],
    ) -> Result<(String, Vec<Range<usize>>), ChatError> {
        if self.tracks_generation {
            let raw = self.render_raw(messages, false)?;
            let mut text = String::with_capacity(raw.len());
            let mut spans = Vec::new();
            let mut open = None;
            for c in raw.chars() {
                match c {
                    GENERATION_START => open = Some(text.len()),
                    GENERATION_END => {
                        if let Some(start) = open.take() {
                            spans.push(start..text.len());
                        }
                    }
                    c => text.push(c),
                }
            }
            return Ok((text, spans));
        }
        let text = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != super::records::Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !text.starts_with(&through) {
                return Err(ChatError::NotPrefix {
                    origin: self.origin.clone(),
                });
            }
            spans.push(before.len()..through.len());
        }
        Ok((text, spans))
    }

    fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        // Maps keep their keys' order (`role`, then `content`), as Python dicts do.
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.name(), content => m.content.clone() })
            .collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Render {
                origin: self.origin.clone(),
                detail: describe(&e),
            })?;
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        template.render(ctx).map_err(|e| ChatError::Render {
            origin: self.origin.clone(),
            detail: describe(&e),
        })
    }
}

/// An error's message, with the template's line where minijinja knows it.
fn describe(e: &Error) -> String {
    let detail = e.detail().map_or_else(|| e.to_string(), str::to_string);
    match e.line() {
        Some(line) => format!("{detail} (template line {line})"),
        None => detail,
    }
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask tags)
/// into markers in the output, keeping the tags' whitespace control: the start becomes
/// `{%<l> if true %}START{% endif <r>%}`, where `<l>`/`<r>` are the tag's own `-`s.
fn mark_generation_blocks(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            rest = "";
            break;
        };
        let inner = &tag[2..close];
        let left = inner.starts_with('-');
        let right = inner.ends_with('-');
        let word = inner.trim_matches('-').trim();
        let marker = match word {
            "generation" => Some(GENERATION_START),
            "endgeneration" => Some(GENERATION_END),
            _ => None,
        };
        match marker {
            Some(marker) => {
                found = true;
                let (l, r) = (if left { "-" } else { "" }, if right { "-" } else { "" });
                out.push_str(&format!("{{%{l} if true %}}{marker}{{% endif {r}%}}"));
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    (out, found)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers'
/// `tojson` filter: `", "` and `": "` separators, keys in their order, no HTML escaping.
fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let kind = v.kind();
    if matches!(kind, ValueKind::Seq | ValueKind::Map | ValueKind::Iterable) {
        let is_map = kind == ValueKind::Map;
        let items: Vec<Value> = v.try_iter()?.collect();
        let (open, close) = if is_map { ('{', '}') } else { ('[', ']') };
        out.push(open);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            newline(out, depth + 1);
            if is_map {
                write_json(item, None, 0, out)?;
                out.push_str(": ");
                write_json(&v.get_item(item)?, indent, depth + 1, out)?;
            } else {
                write_json(item, indent, depth + 1, out)?;
            }
        }
        if !items.is_empty() {
            newline(out, depth);
        }
        out.push(close);
        return Ok(());
    }
    let json = serde_json::to_string(v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    out.push_str(&json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::Role;

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    /// The tiny tokenizer directory of a template's family (all share one vocabulary).
    fn family_dir(family: &str) -> std::path::PathBuf {
        let dir = match family {
            "qwen2" => "qwen2-tied",
            "llama" => "llama-gqa",
            other => other,
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(dir)
    }

    fn messages_of(case: &serde_json::Value) -> Vec<Message> {
        case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                },
                content: m["content"].as_str().unwrap().to_string(),
            })
            .collect()
    }

    fn ids(value: &serde_json::Value) -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    /// Every recorded case of tests/fixtures/chat/templates.json (transformers'
    /// apply_chat_template): the rendered string, its ids with special tokens special, the
    /// assistant mask of `{% generation %}` templates, and the raise_exception errors.
    #[test]
    fn every_recorded_template_case_matches_transformers() {
        use crate::data::{
            examples::ExampleEncoder, hf_tokenizer::HfTokenizer, tokenizer::TextTokenizer,
        };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat/templates.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut checked = (0, 0, 0);
        for (name, entry) in fixture["templates"].as_object().unwrap() {
            let special = &entry["special_tokens"];
            let token = |k: &str| special[k].as_str().map(str::to_string);
            let template = ChatTemplate::new(
                entry["template"].as_str().unwrap(),
                name.clone(),
                token("bos_token"),
                token("eos_token"),
            )
            .unwrap();
            let dir = family_dir(entry["family"].as_str().unwrap());
            let hf = std::sync::Arc::new(HfTokenizer::load(&dir, "test").unwrap());
            let tokenizer = TextTokenizer::HuggingFace(hf.clone());
            for case in entry["cases"].as_array().unwrap() {
                let label = format!("{name}/{}", case["name"].as_str().unwrap());
                let messages = messages_of(case);
                let generation = case["add_generation_prompt"].as_bool().unwrap();
                if let Some(error) = case.get("error") {
                    let err = template.render(&messages, generation).unwrap_err();
                    let want = error["message"].as_str().unwrap();
                    assert!(err.to_string().contains(want), "{label}: {err}");
                    checked.2 += 1;
                    continue;
                }
                let rendered = template.render(&messages, generation).unwrap();
                assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{label}");
                let (got, _) = hf.encode_with_offsets(&rendered).unwrap();
                let want = ids(&case["ids"]);
                assert_eq!(got, want, "{label}");
                checked.0 += 1;
                if let (Some(mask), false) = (case.get("assistant_mask"), generation) {
                    let encoder = ExampleEncoder {
                        tokenizer: &tokenizer,
                        template: Some(&template),
                        train_on: tessera_api::spec::TrainOn::Completions,
                        eos: hf.eos().unwrap(),
                    };
                    let example = encoder
                        .encode(&crate::data::records::Record::Chat(messages.clone()))
                        .unwrap();
                    assert_eq!(example.tokens[..want.len()], want[..], "{label}");
                    let mask: Vec<bool> = ids(mask).iter().map(|&b| b == 1).collect();
                    assert_eq!(example.mask[..want.len()], mask[..], "{label}");
                    checked.1 += 1;
                }
            }
        }
        assert_eq!(checked, (31, 4, 1), "(rendered, masks, errors) checked");
    }

    /// Without `{% generation %}` blocks the assistant's tokens are found by prefix
    /// difference: on the chatml template that is transformers' mask plus the newline that
    /// follows each `<|im_end|>`.
    #[test]
    fn prefix_difference_agrees_with_the_recorded_generation_masks() {
        use crate::data::hf_tokenizer::HfTokenizer;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat/templates.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let chatml = &fixture["templates"]["chatml"];
        let template =
            ChatTemplate::new(chatml["template"].as_str().unwrap(), "chatml", None, None).unwrap();
        let hf = HfTokenizer::load(&family_dir("qwen2"), "test").unwrap();
        let newline = hf.encode("\n", false).unwrap();
        let mut compared = 0;
        for case in fixture["templates"]["chatml_generation"]["cases"]
            .as_array()
            .unwrap()
        {
            if case["add_generation_prompt"].as_bool().unwrap() {
                continue;
            }
            let (text, spans) = template.render_training(&messages_of(case)).unwrap();
            let (tokens, offsets) = hf.encode_with_offsets(&text).unwrap();
            let recorded = ids(&case["assistant_mask"]);
            for (i, &(start, end)) in offsets.iter().enumerate() {
                let ours = spans.iter().any(|s| start < s.end && end > s.start);
                match (recorded[i], ours) {
                    (1, true) | (0, false) => {}
                    (0, true) => {
                        assert_eq!([tokens[i]], newline[..], "{}: token {i}", case["name"])
                    }
                    _ => panic!(
                        "{}: token {i} is the assistant's but not found",
                        case["name"]
                    ),
                }
            }
            compared += 1;
        }
        assert_eq!(compared, 4);
    }

    #[test]
    fn generation_tags_keep_their_whitespace_control() {
        let (out, found) = mark_generation_blocks("a{%- generation %}b{% endgeneration -%} c");
        assert!(found);
        assert_eq!(
            out,
            "a{%- if true %}\u{E000}{% endif %}b{% if true %}\u{E001}{% endif -%} c"
        );
        let (same, found) = mark_generation_blocks("{% if x %}y{% endif %}");
        assert!(!found);
        assert_eq!(same, "{% if x %}y{% endif %}");
    }

    #[test]
    fn tojson_spaces_like_python_and_helpers_exist() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ 'x'.upper() }}|{{ ' y '.strip() }}|{{ strftime_now('%Y') | length }}",
            "inline",
            None,
            None,
        )
        .unwrap();
        let out = t.render(&[msg(Role::User, "<é>")], false).unwrap();
        assert_eq!(out, "[{\"role\": \"user\", \"content\": \"<é>\"}]|X|y|4");
    }

    #[test]
    fn prefix_difference_finds_each_assistant_turn() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}</>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            "inline",
            None,
            None,
        )
        .unwrap();
        let conv = [
            msg(Role::User, "q1"),
            msg(Role::Assistant, "a1"),
            msg(Role::User, "q2"),
            msg(Role::Assistant, "a2"),
        ];
        let (text, spans) = t.render_training(&conv).unwrap();
        let pieces: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(pieces, vec!["a1</>", "a2</>"]);
        let bad = ChatTemplate::new("{{ raise_exception('nope') }}", "inline", None, None)
            .unwrap()
            .render(&conv, false)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("nope") && bad.contains("inline"), "{bad}");
    }
}
