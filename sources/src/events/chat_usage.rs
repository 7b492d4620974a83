//! The control-plane events (README "Control-plane usage hook"): `chat.usage_delta` (mapped onto `usage_llm` as README "Datasets"
//! says) and `chat.usage_summary`.

use tally_pipeline::batch::Row;

use super::fields::Fields;
use super::invalid::InvalidEvent;
use super::object::Object;

type Obj<'a> = Object<'a>;

pub fn delta<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    r.set("event_id", f.str("event_id"))
        .set("timestamp", f.timestamp("event_ts"))
        .set("actor_id", f.opt_str_value("user_id"))
        .set("agent_id", f.opt_str_value("agent_name"))
        .set("microdao_id", f.opt_str_value("app_id"))
        .set("model", f.opt_str_value("model_name"));
    let prompt = f.count32("prompt_tokens");
    let completion = f.count32("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    r.set("prompt_tokens", prompt)
        .set("completion_tokens", completion)
        .set("total_tokens", total)
        .set("cached", f.opt_bool("cached"))
        .set("latency_ms", f.opt_seconds_as_ms("duration_sec"))
        .set("success", true)
        .set("chat_id", f.opt_str_value("chat_id"))
        .set("workflow_name", f.opt_str_value("workflow_name"))
        .set("invocation_id", f.opt_str_value("invocation_id"))
        .set("source", "chat.usage_delta")
        .set("metadata", f.metadata());
    f.finish()
}

pub fn summary<'a>(obj: &'a Obj<'a>, r: &mut Row<'a>) -> Result<(), InvalidEvent> {
    let mut f = Fields::new(obj);
    r.set("event_id", f.str("event_id"))
        .set("timestamp", f.timestamp("event_ts"))
        .set("chat_id", f.str("chat_id"))
        .set("app_id", f.str("app_id"))
        .set("user_id", f.str("user_id"))
        .set("workflow_name", f.str("workflow_name"));
    let prompt = f.count64("prompt_tokens");
    let completion = f.count64("completion_tokens");
    let total = f.total_tokens(&prompt, &completion);
    r.set("prompt_tokens", prompt)
        .set("completion_tokens", completion)
        .set("total_tokens", total);
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Subject;
    use serde_json::json;
    use tally_pipeline::Value;

    #[test]
    fn spec_delta_example_maps_onto_usage_llm() {
        let v = Subject::ChatUsageDelta.decode_object(&Object::from_map(json!({
            "event_id": "a1b2c3d4e5f6", "event_ts": "2026-01-12T03:12:34.567890+00:00",
            "chat_id": "chat_123", "app_id": "app_abc", "user_id": "user_456",
            "workflow_name": "AgentGenerator", "agent_name": "PlannerAgent",
            "model_name": "gpt-4o-mini", "prompt_tokens": 120, "completion_tokens": 48,
            "total_tokens": 168, "cached": false, "duration_sec": 0.82, "invocation_id": "inv_789"
        }).as_object().unwrap()))
        .unwrap();
        assert_eq!(v.get("actor_id"), Some(&Value::Str("user_456".into())));
        assert_eq!(v.get("agent_id"), Some(&Value::Str("PlannerAgent".into())));
        assert_eq!(v.get("microdao_id"), Some(&Value::Str("app_abc".into())));
        assert_eq!(v.get("model"), Some(&Value::Str("gpt-4o-mini".into())));
        assert_eq!(v.get("latency_ms"), Some(&Value::I32(820)));
        assert_eq!(
            v.get("source"),
            Some(&Value::Str("chat.usage_delta".into()))
        );
    }

    #[test]
    fn summary_requires_its_dimensions() {
        let err = Subject::ChatUsageSummary
            .decode_object(&Object::from_map(
                json!({"event_id": "x", "event_ts": "2026-01-12T03:12:35Z",
            "prompt_tokens": 1, "completion_tokens": -1})
                .as_object()
                .unwrap(),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "chat_id is required; app_id is required; user_id is required; \
            workflow_name is required; completion_tokens must be >= 0, got -1"
        );
    }
}
