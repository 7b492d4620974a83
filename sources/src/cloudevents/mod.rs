//! CloudEvents over HTTP, as OpenMeter's API takes them (README "Meters and
//! the OpenMeter API"): `POST /api/v1/events` with one event
//! (`application/cloudevents+json`), a batch
//! (`application/cloudevents-batch+json`), or either as `application/json`.
//!
//! Every event of a request is checked before any is stored: one bad event
//! refuses the request whole, with a `problem+json` answer that names the
//! event and the field. A request is answered 204 once its events are
//! durable. An event is stored in the `events` dataset under the token's
//! tenant and deduplicated on (tenant, `source`, `id`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value as Json;
use tally_pipeline::access::Access;
use tally_pipeline::batch::{Cell, Row, Rows};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::http_reply::{problem, retry_after};
use tally_pipeline::{now_ns, Dataset, IngestError, Pipeline};

/// The source name events are stored under.
pub const SOURCE: &str = "cloudevents";

/// The CloudEvents source: it runs nothing of its own; its route is built
/// on the pipeline.
pub struct CloudEvents;

#[async_trait::async_trait]
impl Component for CloudEvents {
    const NAME: &'static str = "CloudEvents ingest";
    type Running = Router;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, Router), Self::Error> {
        let routes = Router::new()
            .route("/api/v1/events", post(ingest))
            .with_state(ctx.pipeline.clone());
        Ok((Handle::Idle, routes))
    }
}

/// How the body holds its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Batch,
    Either,
}

fn shape(headers: &HeaderMap) -> Result<Shape, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/cloudevents+json" => Ok(Shape::One),
        "application/cloudevents-batch+json" => Ok(Shape::Batch),
        "application/json" => Ok(Shape::Either),
        "" => Err("Content-Type is required: application/cloudevents+json, application/cloudevents-batch+json or application/json".into()),
        other => Err(format!(
            "Content-Type {other:?} is not supported: send application/cloudevents+json, application/cloudevents-batch+json or application/json"
        )),
    }
}

/// One field of an event, as the rules read it.
pub enum Field<'a> {
    Absent,
    Null,
    Str(String),
    /// A JSON object's text.
    Object(std::borrow::Cow<'a, str>),
    /// Another kind of value: its name ("a number", …).
    Other(&'static str),
}

/// An event's fields by name: a parsed JSON object, or the raw fields of a
/// request body (read without building `data`'s tree).
pub trait EventFields {
    fn field(&self, name: &str) -> Field<'_>;
}

impl EventFields for serde_json::Map<String, Json> {
    fn field(&self, name: &str) -> Field<'_> {
        match self.get(name) {
            None => Field::Absent,
            Some(Json::Null) => Field::Null,
            Some(Json::String(s)) => Field::Str(s.clone()),
            Some(o @ Json::Object(_)) => Field::Object(o.to_string().into()),
            Some(other) => Field::Other(kind(other)),
        }
    }
}

/// An event of a request body: its fields as raw JSON texts.
pub struct RawEvent<'a>(HashMap<String, &'a RawValue>);

impl EventFields for RawEvent<'_> {
    fn field(&self, name: &str) -> Field<'_> {
        let Some(raw) = self.0.get(name) else {
            return Field::Absent;
        };
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                serde_json::from_str::<String>(text).map_or(Field::Other("a string"), Field::Str)
            }
            Some(b'{') => Field::Object(text.into()),
            Some(b'n') => Field::Null,
            Some(b'[') => Field::Other("an array"),
            Some(b't' | b'f') => Field::Other("a boolean"),
            _ => Field::Other("a number"),
        }
    }
}

/// The kind of a raw JSON value, by its first character.
fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'n') => "null",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// The events of a body: each an object's raw fields, or the kind of value
/// it is instead.
fn events_of(shape: Shape, body: &[u8]) -> Result<Vec<Result<RawEvent<'_>, &'static str>>, String> {
    let invalid = |e: &dyn std::fmt::Display| format!("the body is not valid JSON: {e}");
    let text = std::str::from_utf8(body).map_err(|e| invalid(&e))?;
    let whole: &RawValue = serde_json::from_str(text).map_err(|e| invalid(&e))?;
    let items: Vec<&RawValue> = match (shape, raw_kind(whole)) {
        (Shape::One | Shape::Either, "an object") => vec![whole],
        (Shape::One, _) => {
            return Err(
                "an application/cloudevents+json body must be one event (a JSON object)".into(),
            )
        }
        (Shape::Batch | Shape::Either, "an array") => {
            serde_json::from_str(whole.get()).map_err(|e| invalid(&e))?
        }
        (Shape::Batch, _) => {
            return Err(
                "an application/cloudevents-batch+json body must be a JSON array of events".into(),
            )
        }
        (Shape::Either, _) => {
            return Err("the body must be an event (a JSON object) or an array of events".into())
        }
    };
    items
        .into_iter()
        .map(|raw| match raw_kind(raw) {
            "an object" => serde_json::from_str(raw.get())
                .map(|fields| Ok(RawEvent(fields)))
                .map_err(|e| invalid(&e)),
            other => Ok(Err(other)),
        })
        .collect()
}

/// One event as a checked record of `events`, or every rule it breaks
/// (the tests read rows this way; the sources append rows to columns).
#[cfg(test)]
pub fn record(
    event: &Json,
    tenant: &str,
    arrived: i64,
) -> Result<tally_pipeline::Record, Vec<String>> {
    match event {
        Json::Object(obj) => row_of(obj, tenant, arrived)?
            .into_record()
            .map_err(|e| vec![e.to_string()]),
        other => Err(vec![format!(
            "an event must be a JSON object, got {}",
            kind(other)
        )]),
    }
}

/// An event's fields as a row of `events`, or every rule they break (the
/// row's fit to the schema is checked where it joins its columns).
pub fn row_of(
    obj: &impl EventFields,
    tenant: &str,
    arrived: i64,
) -> Result<Row<'static>, Vec<String>> {
    let mut errors = Vec::new();
    let text = |name: &str, errors: &mut Vec<String>| -> Option<String> {
        match obj.field(name) {
            Field::Absent | Field::Null => {
                errors.push(format!("{name} is required"));
                None
            }
            Field::Str(s) if s.is_empty() => {
                errors.push(format!("{name} must not be empty"));
                None
            }
            Field::Str(s) => Some(s),
            Field::Object(_) => {
                errors.push(format!("{name} must be a string, got an object"));
                None
            }
            Field::Other(k) => {
                errors.push(format!("{name} must be a string, got {k}"));
                None
            }
        }
    };
    let optional = |name: &str, errors: &mut Vec<String>| -> Option<String> {
        match obj.field(name) {
            Field::Absent | Field::Null => None,
            Field::Str(s) => Some(s),
            other => {
                let k = match other {
                    Field::Other(k) => k,
                    _ => "an object",
                };
                errors.push(format!("{name} must be a string or null, got {k}"));
                None
            }
        }
    };
    let specversion = text("specversion", &mut errors);
    let id = text("id", &mut errors);
    let source = text("source", &mut errors);
    let kind_ = text("type", &mut errors);
    let subject = text("subject", &mut errors);
    let time = match optional("time", &mut errors) {
        None => arrived,
        Some(t) => match parse_rfc3339(&t) {
            Some(ns) => ns,
            None => {
                errors.push(format!(
                    "time must be an RFC 3339 time such as 2025-11-24T12:00:00.000Z, got {t:?}"
                ));
                arrived
            }
        },
    };
    let datacontenttype = optional("datacontenttype", &mut errors);
    if let Some(ct) = &datacontenttype {
        if ct != "application/json" {
            errors.push(format!(
                "datacontenttype must be application/json or null, got {ct:?}"
            ));
        }
    }
    let dataschema = optional("dataschema", &mut errors);
    let data = match obj.field("data") {
        Field::Absent | Field::Null => None,
        Field::Object(text) => Some(text.into_owned()),
        Field::Str(_) => {
            errors.push("data must be a JSON object, got a string".to_string());
            None
        }
        Field::Other(k) => {
            errors.push(format!("data must be a JSON object, got {k}"));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut b = Row::new(Dataset::Events);
    b.set("id", id.unwrap_or_default())
        .set("timestamp", Cell::Ts(time))
        .set("tenant", tenant.to_string())
        .set("source", source.unwrap_or_default())
        .set("type", kind_.unwrap_or_default())
        .set("subject", subject.unwrap_or_default())
        .set("specversion", specversion.unwrap_or_default())
        .set("datacontenttype", datacontenttype)
        .set("dataschema", dataschema)
        .set("data", data)
        .set("ingested_at", Cell::Ts(arrived));
    Ok(b)
}

fn parse_rfc3339(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()?
        .timestamp_nanos_opt()
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

async fn ingest(
    State(pipeline): State<Pipeline>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |detail: String| problem(StatusCode::BAD_REQUEST, "Bad Request", detail);
    let shape = match shape(&headers) {
        Ok(s) => s,
        Err(detail) => {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                detail,
            )
        }
    };
    let events = match events_of(shape, &body) {
        Ok(e) => e,
        Err(detail) => return bad(detail),
    };
    if events.is_empty() {
        return bad("the batch holds no event".into());
    }
    let tenant = match access.namespace() {
        Ok(t) => t,
        Err(e) => return problem(StatusCode::FORBIDDEN, "Forbidden", e.to_string()),
    };
    let arrived = now_ns();
    let mut rows = Rows::new(Dataset::Events, events.len());
    let mut refused: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let checked = match e {
            Ok(fields) => row_of(fields, &tenant, arrived)
                .and_then(|row| rows.push(&row).map_err(|e| vec![e.to_string()])),
            Err(k) => Err(vec![format!("an event must be a JSON object, got {k}")]),
        };
        match checked {
            Ok(()) => {}
            Err(errors) => {
                let id = match e.as_ref().map(|f| f.field("id")) {
                    Ok(Field::Str(id)) => Some(id),
                    _ => None,
                };
                let which = match (events.len(), id) {
                    (1, Some(id)) => format!("event {id:?}"),
                    (1, None) => "the event".to_string(),
                    (_, Some(id)) => format!("event {i} (id {id:?})"),
                    (_, None) => format!("event {i}"),
                };
                refused.push(format!("{which}: {}", errors.join("; ")));
            }
        }
    }
    if !refused.is_empty() {
        let mut detail = refused.join(". ");
        if events.len() > 1 {
            detail.push_str(". Nothing of the batch was stored.");
        }
        return bad(detail);
    }
    match pipeline
        .ingest_columns(SOURCE, rows.finish(), Vec::new())
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ingest_refused(&e),
    }
}

/// A pipeline refusal as a problem: 429 with `Retry-After` when a queue is
/// full (OpenMeter's clients retry it), 503 when the WAL cannot take writes.
fn ingest_refused(e: &IngestError) -> Response {
    match e {
        IngestError::QueueFull(q) => {
            let mut r = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                q.to_string(),
            );
            retry_after(&mut r, 1);
            r
        }
        other => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            other.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tally_pipeline::Value;

    const ARRIVED: i64 = 1_700_000_000_000_000_000;

    fn event() -> Json {
        json!({"specversion": "1.0", "id": "e1", "source": "api", "type": "request",
               "subject": "customer-1", "time": "2026-01-02T03:04:05.123456Z",
               "data": {"tokens": 12, "model": "m"}})
    }

    #[test]
    fn an_event_is_a_row_by_column_name() {
        let r = record(&event(), "acme", ARRIVED).unwrap();
        let d = Dataset::Events;
        let at = |name: &str| &r.values[d.column_index(name).unwrap()];
        assert_eq!(at("id"), &Value::Str("e1".into()));
        assert_eq!(at("tenant"), &Value::Str("acme".into()));
        assert_eq!(at("subject"), &Value::Str("customer-1".into()));
        // 2026-01-02T03:04:05.123456Z, microseconds kept.
        assert_eq!(at("timestamp"), &Value::Ts(1_767_323_045_123_456_000));
        assert_eq!(at("ingested_at"), &Value::Ts(ARRIVED));
        let data: Json = match at("data") {
            Value::Str(s) => serde_json::from_str(s).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(data, json!({"tokens": 12, "model": "m"}));
    }

    #[test]
    fn time_defaults_to_arrival_and_takes_any_fraction() {
        let mut e = event();
        e.as_object_mut().unwrap().remove("time");
        let r = record(&e, "t", ARRIVED).unwrap();
        let ts = Dataset::Events.time_column();
        assert_eq!(r.values[ts], Value::Ts(ARRIVED));
        for (text, ns) in [
            ("2026-01-02T03:04:05Z", 1_767_323_045_000_000_000),
            ("2026-01-02T03:04:05.5Z", 1_767_323_045_500_000_000),
            ("2026-01-02T04:04:05.001+01:00", 1_767_323_045_001_000_000),
        ] {
            e["time"] = json!(text);
            assert_eq!(
                record(&e, "t", ARRIVED).unwrap().values[ts],
                Value::Ts(ns),
                "{text}"
            );
        }
    }

    #[test]
    fn every_broken_rule_is_named() {
        let e = json!({"specversion": "1.0", "source": "", "type": 3, "subject": "s",
                       "time": "noon", "data": [1]});
        let errors = record(&e, "t", ARRIVED).unwrap_err();
        assert_eq!(
            errors,
            [
                "id is required",
                "source must not be empty",
                "type must be a string, got a number",
                "time must be an RFC 3339 time such as 2025-11-24T12:00:00.000Z, got \"noon\"",
                "data must be a JSON object, got an array",
            ]
        );
    }

    #[test]
    fn a_bodys_raw_fields_are_read_as_a_parsed_event_is() {
        let events = json!([
            {"specversion": "1.0", "id": "a", "source": "s", "type": "t", "subject": "x",
             "time": "2025-11-24T12:00:00.123Z", "data": {"n": 1, "s": "é\"q", "o": {"l": [1, 2]}}},
            {"specversion": "1.0", "id": "bé", "source": "s", "type": "t", "subject": "x",
             "datacontenttype": "application/json", "dataschema": null},
            {"specversion": 1, "id": "", "source": ["s"], "type": {"a": 1}, "subject": null,
             "time": "yesterday", "datacontenttype": "text/plain", "data": "text"},
            {"id": "c", "data": [1], "dataschema": true},
            7,
        ]);
        let body = events.to_string();
        let raw = events_of(Shape::Batch, body.as_bytes()).unwrap();
        for (e, r) in events.as_array().unwrap().iter().zip(&raw) {
            let from_raw = match r {
                Ok(fields) => row_of(fields, "t", ARRIVED)
                    .and_then(|row| row.into_record().map_err(|e| vec![e.to_string()])),
                Err(k) => Err(vec![format!("an event must be a JSON object, got {k}")]),
            };
            assert_eq!(from_raw, record(e, "t", ARRIVED), "{e}");
        }
        assert!(record(&events[0], "t", ARRIVED).is_ok());
        assert_eq!(record(&events[2], "t", ARRIVED).unwrap_err().len(), 8);
        // Escapes in a field are read; data is kept as its text.
        let body = br#"[{"specversion":"1.0","id":"b\u00e9","source":"s","type":"t","subject":"x","data":{"q":"\""}}]"#;
        let raw = events_of(Shape::Batch, body).unwrap();
        let r = row_of(raw[0].as_ref().unwrap(), "t", ARRIVED)
            .unwrap()
            .into_record()
            .unwrap();
        let at = |name: &str| &r.values[Dataset::Events.column_index(name).unwrap()];
        assert_eq!(at("id"), &Value::Str("bé".into()));
        assert_eq!(at("data"), &Value::Str(r#"{"q":"\""}"#.into()));
    }

    #[test]
    fn the_content_type_says_how_many_events_the_body_holds() {
        let one = br#"{"id":"a"}"#;
        let many = br#"[{"id":"a"},{"id":"b"}]"#;
        assert_eq!(events_of(Shape::One, one).unwrap().len(), 1);
        assert!(events_of(Shape::One, many).is_err());
        assert_eq!(events_of(Shape::Batch, many).unwrap().len(), 2);
        assert!(events_of(Shape::Batch, one).is_err());
        assert_eq!(events_of(Shape::Either, one).unwrap().len(), 1);
        assert_eq!(events_of(Shape::Either, many).unwrap().len(), 2);
        assert!(events_of(Shape::Either, b"3").is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/cloudevents-batch+json; charset=utf-8"
                .parse()
                .unwrap(),
        );
        assert_eq!(shape(&h), Ok(Shape::Batch));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(shape(&h).is_err());
    }
}
