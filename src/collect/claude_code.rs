//! Claude Code's project logs: one JSON object a line; assistant lines
//! with `message.usage` are model calls.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Format, Line, Origin};

pub struct ClaudeCode;

impl Format for ClaudeCode {
    fn name(&self) -> &'static str {
        "claude-code"
    }

    fn default_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![super::home().join(".claude/projects")];
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
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Line::Skip("not JSON");
        };
        if v["type"] != "assistant" {
            return Line::Skip("not an assistant message");
        }
        let msg = &v["message"];
        let usage = &msg["usage"];
        if !usage.is_object() {
            return Line::Skip("no usage");
        }
        let (Some(message_id), Some(timestamp)) = (msg["id"].as_str(), v["timestamp"].as_str())
        else {
            return Line::Skip("no message id or timestamp");
        };
        let n = |k: &str| usage[k].as_i64().unwrap_or(0).max(0);
        let (input, output) = (n("input_tokens"), n("output_tokens"));
        let (creation, read) = (
            n("cache_creation_input_tokens"),
            n("cache_read_input_tokens"),
        );
        let model = msg["model"].as_str().unwrap_or("unknown");
        if model == "<synthetic>" {
            return Line::Skip("synthetic message");
        }
        let id = match v["requestId"].as_str() {
            Some(r) => format!("{message_id}:{r}"),
            None => message_id.to_string(),
        };
        let cwd = v["cwd"].as_str().unwrap_or_default();
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
            "chat_id": v["sessionId"].as_str(),
            "workflow_name": (!project.is_empty()).then_some(project),
            "metadata": {
                "machine": origin.machine,
                "cwd": cwd,
                "file": file.to_string_lossy(),
                "version": v["version"].as_str(),
            },
        });
        Line::Usage { id, event }
    }
}
