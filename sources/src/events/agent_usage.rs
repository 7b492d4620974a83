//! Spec 001 events: `usage.llm`, `usage.tool`, `usage.agent`,
//! `messaging.message.created`. Required fields are the spec's NOT NULL
//! columns without a default.

use serde_json::{Map, Value as Json};
use tally_pipeline::Value;

use super::fields::Fields;

type Obj = Map<String, Json>;

pub fn llm(obj: &Obj) -> Result<Vec<Value>, String> {
    let mut f = Fields::new(obj);
    let event_id = f.str("event_id");
    let timestamp = f.timestamp("timestamp");
    let actor_id = f.str("actor_id");
    let actor_type = f.str("actor_type");
    let agent_id = f.opt_str_value("agent_id");
    let microdao_id = f.opt_str_value("microdao_id");
    let model = f.str("model");
    let provider = f.str("provider");
    let prompt = f.count32("prompt_tokens");
    let completion = f.count32("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    let cache_creation = f
        .opt_count32("cache_creation_tokens")
        .map(Value::I32)
        .unwrap_or(Value::Null);
    let cache_read = f
        .opt_count32("cache_read_tokens")
        .map(Value::I32)
        .unwrap_or(Value::Null);
    let latency = f.count32("latency_ms");
    let success = f.bool_or("success", true);
    let error = f.opt_str_value("error");
    let cached = f.opt_bool("cached").map(Value::Bool).unwrap_or(Value::Null);
    let chat_id = f.opt_str_value("chat_id");
    let workflow = f.opt_str_value("workflow_name");
    let invocation = f.opt_str_value("invocation_id");
    let metadata = f.metadata();
    f.finish(vec![
        event_id,
        timestamp,
        actor_id,
        actor_type,
        agent_id,
        microdao_id,
        model,
        provider,
        prompt,
        completion,
        total,
        cache_creation,
        cache_read,
        latency,
        success,
        error,
        cached,
        chat_id,
        workflow,
        invocation,
        Value::Str("usage.llm".into()),
        metadata,
    ])
}

pub fn tool(obj: &Obj) -> Result<Vec<Value>, String> {
    let mut f = Fields::new(obj);
    let values = vec![
        f.str("event_id"),
        f.timestamp("timestamp"),
        f.str("actor_id"),
        f.str("actor_type"),
        f.opt_str_value("agent_id"),
        f.opt_str_value("microdao_id"),
        f.str("tool_id"),
        f.str("tool_name"),
        f.bool("success"),
        f.count32("latency_ms"),
        f.opt_str_value("error"),
        f.metadata(),
    ];
    f.finish(values)
}

pub fn agent(obj: &Obj) -> Result<Vec<Value>, String> {
    let mut f = Fields::new(obj);
    let values = vec![
        f.str("event_id"),
        f.timestamp("timestamp"),
        f.str("agent_id"),
        f.opt_str_value("microdao_id"),
        f.opt_str_value("channel_id"),
        f.str("trigger"),
        f.count32("duration_ms"),
        Value::I32(f.opt_count32("llm_calls").unwrap_or(0)),
        Value::I32(f.opt_count32("tool_calls").unwrap_or(0)),
        f.bool_or("success", true),
        f.opt_str_value("error"),
        f.metadata(),
    ];
    f.finish(values)
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

pub fn message(obj: &Obj) -> Result<Vec<Value>, String> {
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
        .filter(|(k, _)| !MESSAGE_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(Json::Object(m)) = obj.get("metadata") {
        for (k, v) in m {
            extra.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let metadata = if extra.is_empty() {
        Value::Null
    } else {
        Value::Str(Json::Object(extra).to_string())
    };
    f.finish(vec![
        event_id,
        timestamp,
        actor_id,
        actor_type,
        microdao_id,
        channel_id,
        Value::I32(length),
        metadata,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Json) -> Obj {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn spec_llm_example_decodes() {
        let v = llm(&obj(json!({
            "event_id": "evt-123", "timestamp": "2025-11-24T12:00:00Z",
            "actor_id": "user:93", "actor_type": "human", "agent_id": "agent:sofia",
            "microdao_id": "microdao:7", "model": "gpt-4.1-mini", "provider": "openai",
            "prompt_tokens": 450, "completion_tokens": 120, "total_tokens": 570,
            "latency_ms": 1250, "success": true
        })))
        .unwrap();
        assert_eq!(v[0], Value::Str("evt-123".into()));
        assert_eq!(v[1], Value::Ts(1_763_985_600_000_000_000));
        assert_eq!(v[10], Value::I32(570));
        assert_eq!(v[14], Value::Bool(true));
    }

    #[test]
    fn missing_total_is_prompt_plus_completion() {
        let v = llm(&obj(json!({
            "event_id": "e", "timestamp": "2025-11-24T12:00:00Z", "actor_id": "a",
            "actor_type": "human", "model": "m", "provider": "p",
            "prompt_tokens": 2, "completion_tokens": 3, "latency_ms": 1
        })))
        .unwrap();
        assert_eq!(v[10], Value::I32(5));
    }

    #[test]
    fn message_maps_fields_and_keeps_extras_in_metadata() {
        let v = message(&obj(json!({
            "channel_id": "c", "message_id": "m", "sender_id": "user:1",
            "microdao_id": "d", "created_at": "2025-11-24T12:03:00Z",
            "content": "héllo", "thread_id": "t1"
        })))
        .unwrap();
        assert_eq!(v[0], Value::Str("m".into()));
        assert_eq!(v[3], Value::Str("human".into()));
        assert_eq!(v[6], Value::I32(5));
        assert_eq!(v[7], Value::Str(r#"{"thread_id":"t1"}"#.into()));
    }
}
