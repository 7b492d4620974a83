//! Spec 001 events: `usage.llm`, `usage.tool`, `usage.agent`,
//! `messaging.message.created`. Required fields are the spec's NOT NULL
//! columns without a default. Rows are built by column name; where the
//! event's field is named differently, the pair is spelled out.

use serde_json::{Map, Value as Json};
use tally_pipeline::batch::{Cell, Row};

use super::fields::Fields;
use super::invalid::InvalidEvent;
use super::object::{Field, Object};

type Obj<'a> = Object<'a>;

pub fn llm<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    r.set("event_id", f.str("event_id"))
        .set("timestamp", f.timestamp("timestamp"))
        .set("actor_id", f.str("actor_id"))
        .set("actor_type", f.str("actor_type"))
        .set("agent_id", f.opt_str_value("agent_id"))
        .set("microdao_id", f.opt_str_value("microdao_id"))
        .set("model", f.str("model"))
        .set("provider", f.str("provider"));
    let prompt = f.count32("prompt_tokens");
    let completion = f.count32("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    r.set("prompt_tokens", prompt)
        .set("completion_tokens", completion)
        .set("total_tokens", total)
        .set(
            "cache_creation_tokens",
            f.opt_count32("cache_creation_tokens"),
        )
        .set("cache_read_tokens", f.opt_count32("cache_read_tokens"))
        .set("latency_ms", f.count32("latency_ms"))
        .set("success", f.bool_or("success", true))
        .set("error", f.opt_str_value("error"))
        .set("cached", f.opt_bool("cached"))
        .set("chat_id", f.opt_str_value("chat_id"))
        .set("workflow_name", f.opt_str_value("workflow_name"))
        .set("invocation_id", f.opt_str_value("invocation_id"))
        .set("source", "usage.llm")
        .set("metadata", f.metadata());
    f.finish()
}

pub fn tool<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    r.set("event_id", f.str("event_id"))
        .set("timestamp", f.timestamp("timestamp"))
        .set("actor_id", f.str("actor_id"))
        .set("actor_type", f.str("actor_type"))
        .set("agent_id", f.opt_str_value("agent_id"))
        .set("microdao_id", f.opt_str_value("microdao_id"))
        .set("tool_id", f.str("tool_id"))
        .set("tool_name", f.str("tool_name"))
        .set("success", f.bool("success"))
        .set("latency_ms", f.count32("latency_ms"))
        .set("error", f.opt_str_value("error"))
        .set("metadata", f.metadata());
    f.finish()
}

pub fn agent<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    r.set("event_id", f.str("event_id"))
        .set("timestamp", f.timestamp("timestamp"))
        .set("agent_id", f.str("agent_id"))
        .set("microdao_id", f.opt_str_value("microdao_id"))
        .set("channel_id", f.opt_str_value("channel_id"))
        .set("trigger", f.str("trigger"))
        .set("duration_ms", f.count32("duration_ms"))
        .set("llm_calls", f.opt_count32("llm_calls").unwrap_or(0))
        .set("tool_calls", f.opt_count32("tool_calls").unwrap_or(0))
        .set("success", f.bool_or("success", true))
        .set("error", f.opt_str_value("error"))
        .set("metadata", f.metadata());
    f.finish()
}

/// Fields of `messaging.message.created` that map onto columns; the rest go
/// to `metadata`. Message text is measured, never stored.
const MESSAGE_FIELDS: &[&str] = &[
    "message_id",
    "created_at",
    "sender_id",
    "sender_type",
    "microdao_id",
    "channel_id",
    "content",
    "content_preview",
    "message_length",
    "metadata",
];

pub fn message<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    let event_id = f.str("message_id");
    let timestamp = f.timestamp("created_at");
    let actor_id = f.str("sender_id");
    let actor_type = f.str_or("sender_type", "human");
    let microdao_id = f.str("microdao_id");
    let channel_id = f.str("channel_id");
    let length = if let Some(n) = f.opt_count32("message_length") {
        n
    } else {
        let text = f
            .opt_str("content")
            .or_else(|| f.opt_str("content_preview"));
        text.map(|t| t.chars().count().min(i32::MAX as usize) as i32)
            .unwrap_or(0)
    };
    let mut extra: Map<String, Json> = obj
        .iter()
        .filter(|(k, _)| !MESSAGE_FIELDS.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_json()))
        .collect();
    if let Some(Field::Nested(Json::Object(m))) = obj.get("metadata") {
        for (k, v) in m {
            extra.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let metadata = if extra.is_empty() {
        Cell::Null
    } else {
        Cell::from(Json::Object(extra).to_string())
    };
    r.set("event_id", event_id)
        .set("timestamp", timestamp)
        .set("actor_id", actor_id)
        .set("actor_type", actor_type)
        .set("microdao_id", microdao_id)
        .set("channel_id", channel_id)
        .set("message_length", length)
        .set("metadata", metadata);
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Subject;
    use serde_json::json;
    use tally_pipeline::Value;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn spec_llm_example_decodes() {
        let v = Subject::UsageLlm
            .decode_object(&Object::from_map(&obj(json!({
                "event_id": "evt-123", "timestamp": "2025-11-24T12:00:00Z",
                "actor_id": "user:93", "actor_type": "human", "agent_id": "agent:sofia",
                "microdao_id": "microdao:7", "model": "gpt-4.1-mini", "provider": "openai",
                "prompt_tokens": 450, "completion_tokens": 120, "total_tokens": 570,
                "latency_ms": 1250, "success": true
            }))))
            .unwrap();
        assert_eq!(v.get("event_id"), Some(&Value::Str("evt-123".into())));
        assert_eq!(
            v.get("timestamp"),
            Some(&Value::Ts(1_763_985_600_000_000_000))
        );
        assert_eq!(v.get("total_tokens"), Some(&Value::I32(570)));
        assert_eq!(v.get("success"), Some(&Value::Bool(true)));
    }

    #[test]
    fn missing_total_is_prompt_plus_completion() {
        let v = Subject::UsageLlm
            .decode_object(&Object::from_map(&obj(json!({
                "event_id": "e", "timestamp": "2025-11-24T12:00:00Z", "actor_id": "a",
                "actor_type": "human", "model": "m", "provider": "p",
                "prompt_tokens": 2, "completion_tokens": 3, "latency_ms": 1
            }))))
            .unwrap();
        assert_eq!(v.get("total_tokens"), Some(&Value::I32(5)));
    }

    #[test]
    fn message_maps_fields_and_keeps_extras_in_metadata() {
        let v = Subject::MessageCreated
            .decode_object(&Object::from_map(&obj(json!({
                "channel_id": "c", "message_id": "m", "sender_id": "user:1",
                "microdao_id": "d", "created_at": "2025-11-24T12:03:00Z",
                "content": "héllo", "thread_id": "t1"
            }))))
            .unwrap();
        assert_eq!(v.get("event_id"), Some(&Value::Str("m".into())));
        assert_eq!(v.get("actor_type"), Some(&Value::Str("human".into())));
        assert_eq!(v.get("message_length"), Some(&Value::I32(5)));
        assert_eq!(
            v.get("metadata"),
            Some(&Value::Str(r#"{"thread_id":"t1"}"#.into()))
        );
    }
}
