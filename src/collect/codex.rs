//! Codex CLI's session logs (`rollout-*.jsonl`): `session_meta` names the
//! session, `turn_context` the model, and each `token_count` event carries
//! the last turn's usage and the session's running total.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::format::{home, Format, Line, Origin};

pub struct Codex;

impl Format for Codex {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn default_dirs(&self) -> Vec<PathBuf> {
        let home = std::env::var_os("CODEX_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".codex"));
        vec![home.join("sessions")]
    }

    fn parse(&self, line: &str, origin: &Origin, file: &Path, ctx: &mut Value) -> Line {
        if line.trim().is_empty() {
            return Line::Skip("empty");
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Line::Skip("not JSON");
        };
        if !ctx.is_object() {
            *ctx = json!({});
        }
        let p = &v["payload"];
        match v["type"].as_str() {
            Some("session_meta") => {
                ctx["session"] = p["id"].clone();
                ctx["cwd"] = p["cwd"].clone();
                if p["model"].is_string() {
                    ctx["model"] = p["model"].clone();
                }
                return Line::Skip("session_meta");
            }
            Some("turn_context") => {
                if p["model"].is_string() {
                    ctx["model"] = p["model"].clone();
                }
                if p["cwd"].is_string() {
                    ctx["cwd"] = p["cwd"].clone();
                }
                return Line::Skip("turn_context");
            }
            Some("event_msg") if p["type"] == "token_count" => {}
            _ => return Line::Skip("not a token count"),
        }
        let info = &p["info"];
        let last = &info["last_token_usage"];
        if !last.is_object() {
            return Line::Skip("token count without usage");
        }
        let total = info["total_token_usage"]["total_tokens"].as_i64();
        if total.is_some() && ctx["last_total"].as_i64() == total {
            // Repeated when only the rate limits changed.
            return Line::Skip("repeated token count");
        }
        ctx["last_total"] = json!(total);
        let Some(timestamp) = v["timestamp"].as_str() else {
            return Line::Skip("no timestamp");
        };
        let n = |k: &str| last[k].as_i64().unwrap_or(0).max(0);
        let (input, cached, output) = (
            n("input_tokens"),
            n("cached_input_tokens"),
            n("output_tokens"),
        );
        let session = ctx["session"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                file.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            });
        let id = format!(
            "codex:{session}:{}",
            total.map_or_else(|| timestamp.to_string(), |t| t.to_string())
        );
        let cwd = ctx["cwd"].as_str().unwrap_or_default().to_string();
        let project = Path::new(&cwd)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let event = json!({
            "event_id": id.as_str(),
            "timestamp": timestamp,
            "actor_id": format!("{}@{}", origin.user, origin.machine),
            "actor_type": "human",
            "agent_id": "codex",
            "microdao_id": origin.tenant,
            "model": ctx["model"].as_str().unwrap_or("unknown"),
            "provider": "openai",
            // OpenAI's input counts the cached tokens; tally keeps them apart.
            "prompt_tokens": (input - cached).max(0),
            "completion_tokens": output,
            "cache_read_tokens": cached.min(input),
            "total_tokens": input + output,
            "latency_ms": 0,
            "success": true,
            "chat_id": session,
            "workflow_name": (!project.is_empty()).then_some(project),
            "metadata": {"machine": origin.machine, "cwd": cwd, "file": file.to_string_lossy(),
                         "reasoning_output_tokens": n("reasoning_output_tokens")},
        });
        Line::Usage { id, event }
    }
}
