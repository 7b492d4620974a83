//! Claude Code's project logs: one JSON object a line; assistant lines
//! with `message.usage` are model calls.

use std::path::{Path, PathBuf};

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{json, Value};

use super::format::{home, Format, Line, Origin};

pub struct ClaudeCode;

impl Format for ClaudeCode {
    fn name(&self) -> &'static str {
        "claude-code"
    }

    fn default_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![home().join(".claude/projects")];
        if let Ok(v) = std::env::var("CLAUDE_CONFIG_DIR") {
            dirs.extend(
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| PathBuf::from(s.trim()).join("projects")),
            );
        }
        dirs
    }

    fn parse(&self, line: &str, origin: &Origin, file: &Path, _ctx: &mut Value) -> Line {
        if line.trim().is_empty() {
            return Line::Skip("empty");
        }
        // Typed and borrowed: the content of a message is skipped, not
        // built (a Value per line cost five times as much).
        let v: Raw<'_> = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok() => {
                return Line::Skip("not a Claude Code line")
            }
            Err(_) => return Line::Skip("not JSON"),
        };
        if v.kind.as_deref() != Some("assistant") {
            return Line::Skip("not an assistant message");
        }
        let Some(msg) = v.message else {
            return Line::Skip("no usage");
        };
        let Some(usage) = msg.usage else {
            return Line::Skip("no usage");
        };
        let (Some(message_id), Some(timestamp)) = (msg.id.as_deref(), v.timestamp.as_deref())
        else {
            return Line::Skip("no message id or timestamp");
        };
        let n = |x: Option<i64>| x.unwrap_or(0).max(0);
        let (input, output) = (n(usage.input_tokens), n(usage.output_tokens));
        let (creation, read) = (
            n(usage.cache_creation_input_tokens),
            n(usage.cache_read_input_tokens),
        );
        let model = msg.model.as_deref().unwrap_or("unknown");
        if model == "<synthetic>" {
            return Line::Skip("synthetic message");
        }
        let id = match v.request_id.as_deref() {
            Some(r) => format!("{message_id}:{r}"),
            None => message_id.to_string(),
        };
        let cwd = v.cwd.as_deref().unwrap_or_default();
        let project = Path::new(cwd)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| cwd.to_string());
        let event = json!({
            "event_id": format!("claude-code:{id}"),
            "timestamp": timestamp,
            "actor_id": format!("{}@{}", origin.user, origin.machine),
            "actor_type": "human",
            "agent_id": "claude-code",
            "microdao_id": origin.tenant,
            "model": model,
            "provider": "anthropic",
            "prompt_tokens": input,
            "completion_tokens": output,
            "cache_creation_tokens": creation,
            "cache_read_tokens": read,
            "total_tokens": input + output + creation + read,
            "latency_ms": 0,
            "success": true,
            "chat_id": v.session_id.as_deref(),
            "workflow_name": (!project.is_empty()).then_some(project),
            "metadata": {
                "machine": origin.machine,
                "cwd": cwd,
                "file": file.to_string_lossy(),
                "version": v.version.as_deref(),
            },
        });
        Line::Usage { id, event }
    }
}

/// The fields of a log line that matter; the rest is skipped unread.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<RawMessage<'a>>,
    #[serde(rename = "requestId", borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cwd: Option<Cow<'a, str>>,
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct RawUsage {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
    cache_read_input_tokens: Option<i64>,
}
