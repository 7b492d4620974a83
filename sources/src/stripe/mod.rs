//! Stripe's meter events (`POST /v1/billing/meter_events`, form-encoded), so
//! the official `stripe` clients can send usage to tally with `api_base`
//! changed: `event_name`, `payload[stripe_customer_id]`, `payload[value]`
//! (and any other `payload[…]`), `identifier`, `timestamp` (Unix seconds).
//!
//! Each becomes a CloudEvent of type `event_name` for subject
//! `stripe_customer_id`, from source `stripe`, with the payload as `data`,
//! deduplicated on `identifier` (a new one when absent). The client sends a
//! new `Idempotency-Key` on every call, so that key is not the identity.
//! The answer is Stripe's `billing.meter_event` object (200; the client
//! refuses a 204), and a refusal is Stripe's error object naming the `param`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use tally_pipeline::access::Access;
use tally_pipeline::batch::Rows;
use tally_pipeline::clock::{rfc3339, NS_PER_SEC};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::{now_ns, Dataset, IngestError, Pipeline};

use crate::cloudevents;

/// The source name these events are stored under.
pub const SOURCE: &str = "stripe";

/// The Stripe meter-event route; it runs nothing of its own.
pub struct StripeMeterEvents;

#[async_trait::async_trait]
impl Component for StripeMeterEvents {
    const NAME: &'static str = "Stripe meter events";
    type Running = Router;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, Router), Self::Error> {
        let routes = Router::new()
            .route("/v1/billing/meter_events", post(create))
            .with_state(ctx.pipeline.clone());
        Ok((Handle::Idle, routes))
    }
}

/// Stripe's error object.
fn error(status: StatusCode, kind: &str, message: String, param: Option<&str>) -> Response {
    let mut e = json!({"type": kind, "message": message});
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    (status, Json(json!({"error": e}))).into_response()
}

fn invalid(message: String, param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        Some(param),
    )
}

/// A meter event read from its form: the CloudEvent it becomes, the
/// payload as sent (for the answer), and its time.
pub type MeterEvent = (Map<String, Value>, Map<String, Value>, i64);

/// A form's meter event, or what is wrong and the `param` that is.
pub fn event_of(
    form: &[(String, String)],
    arrived: i64,
) -> Result<MeterEvent, (String, &'static str)> {
    let mut event_name = None;
    let mut identifier = None;
    let mut timestamp = None;
    let mut payload = Map::new();
    for (k, v) in form {
        match k.as_str() {
            "event_name" => event_name = Some(v.clone()),
            "identifier" => identifier = Some(v.clone()),
            "timestamp" => timestamp = Some(v.clone()),
            other => match other
                .strip_prefix("payload[")
                .and_then(|r| r.strip_suffix(']'))
            {
                Some(key) => {
                    payload.insert(key.to_string(), Value::String(v.clone()));
                }
                None => {
                    return Err((format!("Received unknown parameter: {other}"), "other"));
                }
            },
        }
    }
    let event_name = event_name.filter(|n| !n.is_empty()).ok_or((
        "Missing required param: event_name.".to_string(),
        "event_name",
    ))?;
    let customer = payload
        .get("stripe_customer_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .ok_or((
            "Missing required param: payload[stripe_customer_id].".to_string(),
            "payload[stripe_customer_id]",
        ))?;
    match payload.get("value").and_then(Value::as_str) {
        None => {
            return Err((
                "Missing required param: payload[value].".to_string(),
                "payload[value]",
            ))
        }
        Some(v) if v.trim().parse::<f64>().map_or(true, |x| !x.is_finite()) => {
            return Err((
                format!("payload[value] must be a number, got {v:?}"),
                "payload[value]",
            ))
        }
        Some(_) => {}
    }
    let at = match timestamp {
        None => arrived,
        Some(t) => match t.parse::<i64>() {
            Ok(secs) if secs > 0 && secs < i64::MAX / NS_PER_SEC => secs * NS_PER_SEC,
            _ => {
                return Err((
                    format!("timestamp must be a Unix time in seconds, got {t:?}"),
                    "timestamp",
                ))
            }
        },
    };
    let identifier = identifier
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut event = Map::new();
    for (name, value) in [
        ("specversion", json!("1.0")),
        ("id", json!(identifier)),
        ("source", json!(SOURCE)),
        ("type", json!(event_name)),
        ("subject", json!(customer)),
        ("time", json!(rfc3339(at))),
        ("data", Value::Object(payload.clone())),
    ] {
        event.insert(name.to_string(), value);
    }
    Ok((event, payload, at))
}

async fn create(
    State(pipeline): State<Pipeline>,
    Extension(access): Extension<Access>,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let arrived = now_ns();
    let (event, payload, at) = match event_of(&form, arrived) {
        Ok(e) => e,
        Err((message, param)) => return invalid(message, param),
    };
    let tenant = match access.namespace() {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                e.to_string(),
                None,
            )
        }
    };
    // The event joins the `events` columns as the CloudEvents path's do:
    // checked once, by column name; a rule it breaks is the sender's error.
    let mut rows = Rows::new(Dataset::Events, 1);
    let checked = cloudevents::row_of(&event, &tenant, arrived)
        .and_then(|row| rows.push(&row).map_err(|e| vec![e.to_string()]));
    if let Err(errors) = checked {
        return invalid(errors.join("; "), "payload");
    }
    match pipeline
        .ingest_columns(SOURCE, rows.finish(), Vec::new())
        .await
    {
        Ok(_) => Json(json!({
            "object": "billing.meter_event",
            "created": arrived / NS_PER_SEC,
            "event_name": event["type"],
            "identifier": event["id"],
            "livemode": false,
            "payload": payload,
            "timestamp": at / NS_PER_SEC,
        }))
        .into_response(),
        Err(IngestError::QueueFull(q)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                q.to_string(),
                None,
            );
            tally_pipeline::http_reply::retry_after(&mut r, 1);
            r
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            e.to_string(),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_meter_event_is_a_cloud_event_of_its_customer() {
        let (e, payload, at) = event_of(
            &form(&[
                ("event_name", "api_calls"),
                ("payload[stripe_customer_id]", "cus_1"),
                ("payload[value]", "3"),
                ("identifier", "idem-1"),
                ("timestamp", "1765000000"),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(e["type"], "api_calls");
        assert_eq!(e["subject"], "cus_1");
        assert_eq!(e["id"], "idem-1");
        assert_eq!(e["source"], "stripe");
        assert_eq!(e["data"]["value"], "3");
        assert_eq!(e["time"], "2025-12-06T05:46:40Z");
        assert_eq!(at, 1_765_000_000 * NS_PER_SEC);
        assert_eq!(payload.len(), 2);
    }

    #[test]
    fn what_is_missing_is_named_as_stripe_names_params() {
        let err = |pairs: &[(&str, &str)]| event_of(&form(pairs), 7).unwrap_err().1;
        assert_eq!(
            err(&[
                ("payload[value]", "1"),
                ("payload[stripe_customer_id]", "c")
            ]),
            "event_name"
        );
        assert_eq!(
            err(&[("event_name", "e"), ("payload[value]", "1")]),
            "payload[stripe_customer_id]"
        );
        assert_eq!(
            err(&[("event_name", "e"), ("payload[stripe_customer_id]", "c")]),
            "payload[value]"
        );
        assert_eq!(
            err(&[
                ("event_name", "e"),
                ("payload[stripe_customer_id]", "c"),
                ("payload[value]", "x")
            ]),
            "payload[value]"
        );
        assert_eq!(
            err(&[
                ("event_name", "e"),
                ("payload[stripe_customer_id]", "c"),
                ("payload[value]", "1"),
                ("timestamp", "soon")
            ]),
            "timestamp"
        );
    }
}
