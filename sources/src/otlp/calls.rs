//! Model calls in OTLP records, as `usage.llm` events: Claude Code's
//! `api_request` log records, Codex's `codex.sse_event` records of kind
//! `response.completed` that have counts, and GenAI spans (or GenAI log
//! events) with `gen_ai.usage.*` tokens.
//!
//! Tokens follow `tally collect`'s rules for the same clients, so both
//! paths give the same totals: `prompt_tokens` never counts cached tokens
//! (Claude Code's `input_tokens` already excludes them; Codex's
//! `input_token_count` and GenAI's `gen_ai.usage.input_tokens` include
//! them, and they are taken out), and `total_tokens` is what the client
//! counts as its total (Claude Code: input, output, cache writes and cache
//! reads; Codex and GenAI: input and output).
//!
//! Who: the actor is `user.email`, else `user.id`, else `enduser.id`, else
//! `token:<name>` of the token that sent it (or `otlp` without
//! authentication). The agent is the resource's `service.name`; the tenant
//! is the token's one tenant, else `organization.id`, else the default
//! tenant. When: the record's time, else `event.timestamp`, else the time
//! it was observed; a record with none of them is refused.

use std::borrow::Cow;

use serde_json::{json, Map, Value};
use tally_proto::opentelemetry::proto::common::v1::{any_value, AnyValue, KeyValue};
use tally_proto::opentelemetry::proto::logs::v1::LogRecord;
use tally_proto::opentelemetry::proto::trace::v1::Span;

use crate::events::object::Field;

/// Attributes, looked up by key (the last of equal keys wins, as most
/// SDKs keep one).
#[derive(Clone, Copy)]
pub struct Attrs<'a>(pub &'a [KeyValue]);

impl<'a> Attrs<'a> {
    pub fn get(&self, key: &str) -> Option<&'a AnyValue> {
        self.0
            .iter()
            .rev()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
    }

    /// Text: a string as it is, a number or boolean written out.
    pub fn text(&self, key: &str) -> Option<String> {
        match self.get(key)?.value.as_ref()? {
            any_value::Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::DoubleValue(d) => Some(d.to_string()),
            any_value::Value::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A count: an integer, a whole double, or a string of one (clients
    /// send each). `Err` names what it got when it is none of them.
    pub fn count(&self, key: &str) -> Result<Option<i64>, String> {
        let bad = |got: String| format!("{key} must be a whole number of tokens, got {got}");
        match self.get(key).and_then(|v| v.value.as_ref()) {
            None => Ok(None),
            Some(any_value::Value::IntValue(i)) if *i >= 0 => Ok(Some(*i)),
            Some(any_value::Value::DoubleValue(d)) if *d >= 0.0 && d.fract() == 0.0 => {
                Ok(Some(*d as i64))
            }
            Some(any_value::Value::StringValue(s)) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|i| *i >= 0)
                .map(Some)
                .ok_or_else(|| bad(format!("{s:?}"))),
            Some(other) => Err(bad(format!("{other:?}"))),
        }
    }

    /// A number (integer, double or a string of one).
    pub fn number(&self, key: &str) -> Option<f64> {
        match self.get(key)?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i as f64),
            any_value::Value::DoubleValue(d) => Some(*d),
            any_value::Value::StringValue(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Where a record came from: its resource's attributes, and who sent it.
pub struct Origin<'a> {
    pub resource: Attrs<'a>,
    /// The tenant of the sending token when it has one.
    pub tenant: Option<&'a str>,
    pub default_tenant: &'a str,
    /// The actor when the record names none.
    pub fallback_actor: &'a str,
}

/// A model call as a `usage.llm` event's fields, built from the record's
/// attributes.
pub type Call = Vec<(&'static str, Field<'static>)>;

/// What a record is to tally.
#[derive(Debug)]
pub enum Found {
    /// A model call: a `usage.llm` event.
    Call(Call),
    /// Not a model call (a prompt, a tool decision, a countless duplicate
    /// of a Codex completion): nothing to store.
    NotACall,
}

fn any_text(v: Option<&AnyValue>) -> Option<&str> {
    match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// RFC 3339 of nanoseconds since the epoch.
fn rfc3339(ns: u64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The record's time, else `event.timestamp`, else when it was observed.
fn when(time: u64, attrs: Attrs, observed: u64) -> Result<String, String> {
    if time > 0 {
        return Ok(rfc3339(time));
    }
    if let Some(t) = attrs.text("event.timestamp") {
        return chrono::DateTime::parse_from_rfc3339(&t)
            .map(|_| t.clone())
            .map_err(|e| format!("event.timestamp {t:?} is not an RFC 3339 time: {e}"));
    }
    if observed > 0 {
        return Ok(rfc3339(observed));
    }
    Err("the record has no time: timeUnixNano, event.timestamp and observedTimeUnixNano are all missing".into())
}

/// FNV-1a of the parts, as hex: ids of records that carry none.
fn digest(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Origin<'_> {
    fn actor(&self, attrs: Attrs) -> String {
        ["user.email", "user.id", "enduser.id"]
            .iter()
            .find_map(|k| attrs.text(k).or_else(|| self.resource.text(k)))
            .unwrap_or_else(|| self.fallback_actor.to_string())
    }

    pub fn tenant(&self, attrs: Attrs) -> String {
        self.tenant
            .map(str::to_string)
            .or_else(|| {
                attrs
                    .text("organization.id")
                    .or_else(|| self.resource.text("organization.id"))
            })
            .unwrap_or_else(|| self.default_tenant.to_string())
    }

    fn agent(&self) -> Option<String> {
        self.resource.text("service.name")
    }

    /// The event every kind of call shares.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        attrs: Attrs,
        id: String,
        time: String,
        model: String,
        provider: String,
        tokens: Tokens,
        latency_ms: f64,
        metadata: Map<String, Value>,
    ) -> Call {
        let session = ["session.id", "conversation.id", "gen_ai.conversation.id"]
            .iter()
            .find_map(|k| attrs.text(k));
        let text = |s: String| Field::Str(Cow::Owned(s));
        let opt = |s: Option<String>| s.map_or(Field::Null, text);
        let count = |n: i64| Field::PosInt(n.max(0) as u64);
        vec![
            ("event_id", text(id)),
            ("timestamp", text(time)),
            ("actor_id", text(self.actor(attrs))),
            ("actor_type", Field::Str(Cow::Borrowed("human"))),
            ("agent_id", opt(self.agent())),
            ("microdao_id", text(self.tenant(attrs))),
            ("model", text(model)),
            ("provider", text(provider)),
            ("prompt_tokens", count(tokens.prompt)),
            ("completion_tokens", count(tokens.completion)),
            ("cache_creation_tokens", count(tokens.cache_creation)),
            ("cache_read_tokens", count(tokens.cache_read)),
            ("total_tokens", count(tokens.total)),
            ("latency_ms", count(latency_ms.max(0.0).round() as i64)),
            ("success", Field::Bool(true)),
            ("chat_id", opt(session)),
            ("metadata", Field::Nested(Value::Object(metadata))),
        ]
    }
}

#[derive(Debug, Default)]
struct Tokens {
    prompt: i64,
    completion: i64,
    cache_creation: i64,
    cache_read: i64,
    total: i64,
}

fn count(attrs: Attrs, key: &str) -> Result<i64, String> {
    Ok(attrs.count(key)?.unwrap_or(0))
}

fn keep(metadata: &mut Map<String, Value>, attrs: Attrs, keys: &[&str]) {
    for k in keys {
        if let Some(v) = attrs.get(k).and_then(|v| v.value.as_ref()) {
            let v = match v {
                any_value::Value::StringValue(s) => json!(s),
                any_value::Value::IntValue(i) => json!(i),
                any_value::Value::DoubleValue(d) => json!(d),
                any_value::Value::BoolValue(b) => json!(b),
                _ => continue,
            };
            metadata.insert((*k).to_string(), v);
        }
    }
}

/// A log record: Claude Code's `api_request`, Codex's completion, or a
/// GenAI log event with usage.
pub fn of_log(origin: &Origin, r: &LogRecord) -> Result<Found, String> {
    let attrs = Attrs(&r.attributes);
    let event_name = attrs
        .text("event.name")
        .or_else(|| (!r.event_name.is_empty()).then(|| r.event_name.clone()))
        .unwrap_or_default();
    let body = any_text(r.body.as_ref()).unwrap_or_default();
    if body == "claude_code.api_request"
        || event_name == "api_request"
        || event_name == "claude_code.api_request"
    {
        return claude_code(origin, r, attrs).map(Found::Call);
    }
    if event_name == "codex.sse_event" {
        if attrs.text("event.kind").as_deref() != Some("response.completed") {
            return Ok(Found::NotACall);
        }
        return codex(origin, r, attrs);
    }
    if attrs.get("gen_ai.usage.input_tokens").is_some()
        || attrs.get("gen_ai.usage.output_tokens").is_some()
    {
        let id = if r.span_id.is_empty() {
            format!(
                "genai-log:{}",
                digest(&[
                    &r.time_unix_nano.to_string(),
                    &r.observed_time_unix_nano.to_string(),
                    &attrs.text("gen_ai.response.id").unwrap_or_default(),
                    &format!("{:?}", r.attributes),
                ])
            )
        } else {
            format!("span:{}:{}", hex(&r.trace_id), hex(&r.span_id))
        };
        let time = when(r.time_unix_nano, attrs, r.observed_time_unix_nano)?;
        return genai(origin, attrs, id, time, None).map(Found::Call);
    }
    Ok(Found::NotACall)
}

fn claude_code(origin: &Origin, r: &LogRecord, attrs: Attrs) -> Result<Call, String> {
    let request = attrs
        .text("request_id")
        .ok_or("an api_request record needs request_id (its event id)")?;
    let model = attrs
        .text("model")
        .ok_or("an api_request record needs model")?;
    let time = when(r.time_unix_nano, attrs, r.observed_time_unix_nano)?;
    // `input_tokens` excludes cache reads and writes, as in the session logs.
    let (input, output) = (
        count(attrs, "input_tokens")?,
        count(attrs, "output_tokens")?,
    );
    let (creation, read) = (
        count(attrs, "cache_creation_tokens")?,
        count(attrs, "cache_read_tokens")?,
    );
    let tokens = Tokens {
        prompt: input,
        completion: output,
        cache_creation: creation,
        cache_read: read,
        total: input + output + creation + read,
    };
    let mut metadata = Map::new();
    metadata.insert("via".into(), json!("otlp"));
    keep(
        &mut metadata,
        attrs,
        &[
            "cost_usd",
            "cost_usd_micros",
            "ttft_ms",
            "prompt.id",
            "query_source",
            "cache_creation_5m_tokens",
            "cache_creation_1h_tokens",
            "event.sequence",
        ],
    );
    keep(&mut metadata, origin.resource, &["service.version"]);
    Ok(origin.event(
        attrs,
        format!("claude-code:request:{request}"),
        time,
        model,
        "anthropic".into(),
        tokens,
        attrs.number("duration_ms").unwrap_or(0.0),
        metadata,
    ))
}

const CODEX_COUNTS: [&str; 6] = [
    "input_token_count",
    "output_token_count",
    "cached_token_count",
    "cache_write_token_count",
    "reasoning_token_count",
    "tool_token_count",
];

fn codex(origin: &Origin, r: &LogRecord, attrs: Attrs) -> Result<Found, String> {
    // Codex may send a second completion without counts for one call.
    let mut counts = Vec::with_capacity(CODEX_COUNTS.len());
    for k in CODEX_COUNTS {
        counts.push(attrs.count(k)?);
    }
    if counts[0].is_none() && counts[1].is_none() {
        return Ok(Found::NotACall);
    }
    let n: Vec<i64> = counts.iter().map(|c| c.unwrap_or(0)).collect();
    let (input, output, cached, cache_write) = (n[0], n[1], n[2], n[3]);
    let model = attrs
        .text("model")
        .ok_or("a response.completed record needs model")?;
    let time = when(r.time_unix_nano, attrs, r.observed_time_unix_nano)?;
    let conversation = attrs.text("conversation.id").unwrap_or_default();
    let stamp = attrs
        .text("event.timestamp")
        .unwrap_or_else(|| time.clone());
    let id = digest(&[
        &conversation,
        &stamp,
        &n.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
    ]);
    // `input_token_count` counts the cached tokens; tally keeps them apart
    // (as `tally collect` does). `tool_token_count` is input plus output.
    let tokens = Tokens {
        prompt: (input - cached).max(0),
        completion: output,
        cache_creation: cache_write,
        cache_read: cached.min(input),
        total: input + output,
    };
    let mut metadata = Map::new();
    metadata.insert("via".into(), json!("otlp"));
    metadata.insert("reasoning_output_tokens".into(), json!(n[4]));
    keep(&mut metadata, attrs, &["tool_token_count"]);
    keep(&mut metadata, origin.resource, &["service.version"]);
    Ok(Found::Call(origin.event(
        attrs,
        format!("codex:otlp:{id}"),
        time,
        model,
        "openai".into(),
        tokens,
        attrs.number("duration_ms").unwrap_or(0.0),
        metadata,
    )))
}

/// A GenAI span with token usage; spans without are not calls.
pub fn of_span(origin: &Origin, s: &Span) -> Result<Found, String> {
    let attrs = Attrs(&s.attributes);
    if attrs.get("gen_ai.usage.input_tokens").is_none()
        && attrs.get("gen_ai.usage.output_tokens").is_none()
    {
        return Ok(Found::NotACall);
    }
    if s.trace_id.is_empty() || s.span_id.is_empty() {
        return Err("a GenAI span needs its traceId and spanId (its event id)".into());
    }
    let start = if s.start_time_unix_nano > 0 {
        s.start_time_unix_nano
    } else {
        s.end_time_unix_nano
    };
    let time = when(start, attrs, 0)?;
    let latency = (s.end_time_unix_nano > s.start_time_unix_nano && s.start_time_unix_nano > 0)
        .then(|| (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6);
    let id = format!("span:{}:{}", hex(&s.trace_id), hex(&s.span_id));
    genai(origin, attrs, id, time, latency).map(Found::Call)
}

fn genai(
    origin: &Origin,
    attrs: Attrs,
    id: String,
    time: String,
    latency_ms: Option<f64>,
) -> Result<Call, String> {
    let model = attrs
        .text("gen_ai.response.model")
        .or_else(|| attrs.text("gen_ai.request.model"))
        .ok_or("a GenAI call needs gen_ai.response.model or gen_ai.request.model")?;
    let provider = attrs
        .text("gen_ai.provider.name")
        .or_else(|| attrs.text("gen_ai.system"))
        .unwrap_or_else(|| "unknown".into());
    // `gen_ai.usage.input_tokens` includes the cached tokens, read and
    // written; tally keeps them apart.
    let input = count(attrs, "gen_ai.usage.input_tokens")?;
    let output = count(attrs, "gen_ai.usage.output_tokens")?;
    let read = count(attrs, "gen_ai.usage.cache_read.input_tokens")?;
    let creation = count(attrs, "gen_ai.usage.cache_creation.input_tokens")?;
    let tokens = Tokens {
        prompt: (input - read - creation).max(0),
        completion: output,
        cache_creation: creation,
        cache_read: read,
        total: input + output,
    };
    let mut metadata = Map::new();
    metadata.insert("via".into(), json!("otlp"));
    keep(
        &mut metadata,
        attrs,
        &[
            "gen_ai.operation.name",
            "gen_ai.response.id",
            "gen_ai.request.model",
        ],
    );
    let latency = latency_ms
        .or_else(|| attrs.number("duration_ms"))
        .unwrap_or(0.0);
    Ok(origin.event(attrs, id, time, model, provider, tokens, latency, metadata))
}
