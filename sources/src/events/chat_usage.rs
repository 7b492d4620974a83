//! Spec 004 events: `chat.usage_delta` (mapped onto `usage_llm` as DESIGN.md
//! says) and `chat.usage_summary`.

use serde_json::{Map, Value as Json};
use tally_pipeline::Value;

use super::fields::Fields;

type Obj = Map<String, Json>;

pub fn delta(obj: &Obj) -> Result<Vec<Value>, String> {
    let mut f = Fields::new(obj);
    let event_id = f.str("event_id");
    let timestamp = f.timestamp("event_ts");
    let actor_id = f.opt_str_value("user_id");
    let agent_id = f.opt_str_value("agent_name");
    let microdao_id = f.opt_str_value("app_id");
    let model = f.opt_str_value("model_name");
    let prompt = f.count32("prompt_tokens");
    let completion = f.count32("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    let cached = f.opt_bool("cached");
    let latency = f
        .opt_seconds_as_ms("duration_sec")
        .map(Value::I32)
        .unwrap_or(Value::Null);
    let chat_id = f.opt_str_value("chat_id");
    let workflow = f.opt_str_value("workflow_name");
    let invocation = f.opt_str_value("invocation_id");
    let metadata = f.metadata();
    f.finish(vec![
        event_id,
        timestamp,
        actor_id,
        Value::Null,
        agent_id,
        microdao_id,
        model,
        Value::Null,
        prompt,
        completion,
        total,
        Value::Null,
        Value::Null,
        latency,
        Value::Bool(true),
        Value::Null,
        cached.map(Value::Bool).unwrap_or(Value::Null),
        chat_id,
        workflow,
        invocation,
        Value::Str("chat.usage_delta".into()),
        metadata,
    ])
}

pub fn summary(obj: &Obj) -> Result<Vec<Value>, String> {
    let mut f = Fields::new(obj);
    let event_id = f.str("event_id");
    let timestamp = f.timestamp("event_ts");
    let chat_id = f.str("chat_id");
    let app_id = f.str("app_id");
    let user_id = f.str("user_id");
    let workflow = f.str("workflow_name");
    let prompt = f.count64("prompt_tokens");
    let completion = f.count64("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    f.finish(vec![
        event_id, timestamp, chat_id, app_id, user_id, workflow, prompt, completion, total,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_delta_example_maps_onto_usage_llm() {
        let v = delta(json!({
            "event_id": "a1b2c3d4e5f6", "event_ts": "2026-01-12T03:12:34.567890+00:00",
            "chat_id": "chat_123", "app_id": "app_abc", "user_id": "user_456",
            "workflow_name": "AgentGenerator", "agent_name": "PlannerAgent",
            "model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 48,
            "total_tokens": 168, "cached": false, "duration_sec": 0.82, "invocation_id": "inv_789"
        }).as_object().unwrap())
        .unwrap();
        assert_eq!(v[2], Value::Str("user_456".into()));
        assert_eq!(v[4], Value::Str("PlannerAgent".into()));
        assert_eq!(v[5], Value::Str("app_abc".into()));
        assert_eq!(v[6], Value::Str("gpt-4o-mini".into()));
        assert_eq!(v[13], Value::I32(820));
        assert_eq!(v[20], Value::Str("chat.usage_delta".into()));
    }

    #[test]
    fn summary_requires_its_dimensions() {
        let err = summary(
            json!({"event_id": "x", "event_ts": "2026-01-12T03:12:35Z",
            "prompt_tokens": 1, "completion_tokens": -1})
            .as_object()
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "chat_id is required; app_id is required; user_id is required; \
            workflow_name is required; completion_tokens must be >= 0, got -1"
        );
    }
}
