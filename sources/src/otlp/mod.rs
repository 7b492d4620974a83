//! OTLP (OpenTelemetry) receiver: Claude Code, Codex and GenAI
//! instrumentations export their model calls here, and each becomes a
//! `usage.llm` row (`calls.rs` says which records are calls and how they
//! are read).
//!
//! - OTLP/HTTP: `POST /v1/logs`, `/v1/traces` and `/v1/metrics`, in
//!   protobuf (`application/x-protobuf`) or JSON (`application/json`),
//!   plain or `Content-Encoding: gzip`; the answer is in the request's
//!   encoding.
//! - OTLP/gRPC: the Logs, Trace and Metrics `Export` services, on the main
//!   listener beside billing.v1's gRPC.
//!
//! An export is answered once its calls are durable (the WAL's fsync).
//! Records that are not calls (prompts, tool decisions, spans without
//! token usage) are counted and not stored. A call tally cannot read is
//! refused by OTLP's `partial_success` (`rejected_*` and an
//! `error_message` naming the record and the reason), kept with the
//! rejected records, and the export's other calls are stored. Metric data
//! points go to the `otel_metrics` dataset (`points.rs`), never to
//! `usage_llm`.
//!
//! Limits: a body of at most `--max-body-bytes` (compressed and after
//! decompression), at most [`MAX_RECORDS`] records an export (400 past
//! it). 401/403 for tokens (the server's auth layer), 429 with
//! `Retry-After` when the ingest queue is full, 503 when the WAL cannot
//! take the records.

pub mod calls;
pub mod json;
pub mod points;

use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tower::ServiceExt;

use tally_pipeline::access::{Access, DEFAULT_NAMESPACE};
use tally_pipeline::batch::{Row, Rows};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::http_reply::retry_after;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::{Dataset, IngestError, Pipeline, Rejection};
use tally_proto::opentelemetry::proto::collector::logs::v1 as logs;
use tally_proto::opentelemetry::proto::collector::metrics::v1 as metrics;
use tally_proto::opentelemetry::proto::collector::trace::v1 as trace;

use crate::events::object::Object;
use crate::events::Subject;
use calls::{Attrs, Found, Origin};

pub const SOURCE: &str = "otlp";

/// Records (log records, spans or data points) one export may hold.
pub const MAX_RECORDS: usize = 100_000;

#[derive(Clone)]
struct Otlp {
    pipeline: Pipeline,
    default_tenant: Arc<str>,
    max_body: usize,
    metrics: Arc<Metrics>,
}

/// `[otlp]` in `tally.toml`.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "OTLP")]
pub struct OtlpArgs {
    /// The tenant of OTLP model calls sent with a token of every tenant
    /// whose records name no `organization.id`. [default: default]
    #[arg(long, env = "TALLY_OTLP_DEFAULT_TENANT")]
    #[serde(default)]
    pub otlp_default_tenant: Option<String>,

    /// Also serve the OTLP routes alone (gRPC and HTTP on one port) on
    /// these addresses, e.g. 0.0.0.0:4317,0.0.0.0:4318 for exporters'
    /// defaults (repeatable, or comma-separated).
    #[arg(long, env = "TALLY_OTLP_LISTEN", value_delimiter = ',')]
    #[serde(default)]
    pub otlp_listen: Vec<std::net::SocketAddr>,
}

/// The OTLP receiver's routes.
pub struct OtlpSource {
    /// The tenant of calls whose token covers every tenant and whose
    /// records name no `organization.id`.
    pub default_tenant: Option<String>,
    pub max_body: usize,
}

pub struct OtlpRunning {
    pub routes: Router,
}

#[async_trait::async_trait]
impl Component for OtlpSource {
    const NAME: &'static str = "OTLP";
    type Running = OtlpRunning;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, OtlpRunning), Self::Error> {
        let metrics = ctx.pipeline.metrics().clone();
        let state = Otlp {
            pipeline: ctx.pipeline.clone(),
            default_tenant: self
                .default_tenant
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
                .into(),
            max_body: self.max_body,
            metrics,
        };
        Ok((
            Handle::Idle,
            OtlpRunning {
                routes: router(state),
            },
        ))
    }
}

fn router(state: Otlp) -> Router {
    let grpc = Grpc(state.clone());
    let max = state.max_body;
    let logs = logs::logs_service_server::LogsServiceServer::new(grpc.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let traces = trace::trace_service_server::TraceServiceServer::new(grpc.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    let metrics = metrics::metrics_service_server::MetricsServiceServer::new(grpc)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(max);
    Router::new()
        .route("/v1/logs", post(http_logs))
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .with_state(state)
        .route(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            post(move |req: Request| async move { grpc_call(logs, req).await }),
        )
        .route(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            post(move |req: Request| async move { grpc_call(traces, req).await }),
        )
        .route(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            post(move |req: Request| async move { grpc_call(metrics, req).await }),
        )
}

async fn grpc_call<S>(service: S, req: Request) -> Response
where
    S: tower::Service<
            axum::http::Request<Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    match service.oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}

/// What an export came to: calls stored (or duplicates), and the records
/// refused with their reasons.
#[derive(Debug, Default)]
struct Outcome {
    rejected: i64,
    messages: Vec<String>,
}

impl Outcome {
    fn error_message(&self) -> String {
        let mut m = self
            .messages
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if self.messages.len() > 5 {
            m.push_str(&format!("; and {} more", self.messages.len() - 5));
        }
        m
    }
}

/// An export refused whole.
enum Refusal {
    BadRequest(String),
    Forbidden(String),
    Ingest(IngestError),
}

impl Otlp {
    fn origin<'a>(
        &'a self,
        access: &'a Access,
        resource: Attrs<'a>,
        fallback: &'a str,
    ) -> Origin<'a> {
        let tenant = access
            .tenants
            .as_ref()
            .filter(|t| t.len() == 1)
            .and_then(|t| t.iter().next())
            .map(String::as_str);
        Origin {
            resource,
            tenant,
            default_tenant: &self.default_tenant,
            fallback_actor: fallback,
        }
    }

    /// Stores the calls; refuses the rest with their reasons.
    async fn store(
        &self,
        access: &Access,
        found: Vec<(String, Result<Found, String>)>,
    ) -> Result<Outcome, Refusal> {
        let mut outcome = Outcome::default();
        let dataset = Subject::UsageLlm.dataset();
        let mut rows = Rows::new(dataset, found.len());
        let mut rejections: Vec<Rejection> = Vec::new();
        // Calls refused for their tenant, and the first reason.
        let (mut other_tenant, mut other_tenants) = (None::<String>, 0);
        let mut refuse = |what: &str, reason: String, payload: String, o: &mut Outcome| {
            o.rejected += 1;
            o.messages.push(format!("{what}: {reason}"));
            rejections.push(Rejection {
                index: None,
                subject: Some(Subject::UsageLlm.name().to_string()),
                dataset: Some(Subject::UsageLlm.dataset()),
                reason: format!("{what}: {reason}"),
                payload,
            });
        };
        for (what, f) in found {
            match f {
                Ok(Found::NotACall) => {
                    self.metrics.otlp_not_calls.add(1);
                }
                Ok(Found::Call(call)) => {
                    // The call's fields are read as built: no JSON in
                    // between.
                    let obj = Object::from_fields(call);
                    let payload = || serde_json::Value::Object(obj.to_map()).to_string();
                    let mut row = Row::new(dataset);
                    let decoded = Subject::UsageLlm
                        .decode_object_into(&obj, &mut row)
                        .map_err(|e| e.0);
                    match decoded {
                        Ok(()) => match access.refuse_row(dataset, row.tenant()) {
                            None => {
                                if let Err(e) = rows.push(&row) {
                                    refuse(&what, e.to_string(), payload(), &mut outcome)
                                }
                            }
                            Some(reason) => {
                                other_tenant.get_or_insert_with(|| reason.clone());
                                other_tenants += 1;
                                refuse(&what, reason, payload(), &mut outcome)
                            }
                        },
                        Err(reason) => refuse(&what, reason, payload(), &mut outcome),
                    }
                }
                Err(reason) => refuse(&what, reason, String::new(), &mut outcome),
            }
        }
        // Every call is another tenant's: the export as a whole may not.
        if let Some(reason) = other_tenant.filter(|_| other_tenants == outcome.rejected) {
            if rows.is_empty() {
                return Err(Refusal::Forbidden(reason));
            }
        }
        let calls = rows.len() as u64;
        self.pipeline
            .ingest_columns(SOURCE, rows.finish(), rejections)
            .await
            .map_err(Refusal::Ingest)?;
        self.metrics.otlp_calls.add(calls);
        self.metrics.otlp_rejected.add(outcome.rejected as u64);
        Ok(outcome)
    }

    fn fallback_actor(access: &Access) -> String {
        access
            .token
            .as_deref()
            .map_or_else(|| SOURCE.to_string(), |t| format!("token:{t}"))
    }

    async fn logs(
        &self,
        access: &Access,
        req: logs::ExportLogsServiceRequest,
    ) -> Result<logs::ExportLogsServiceResponse, Refusal> {
        let n: usize = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        too_many(n)?;
        let fallback = Self::fallback_actor(access);
        let mut found = Vec::with_capacity(n);
        for (i, rl) in req.resource_logs.iter().enumerate() {
            let resource = Attrs(rl.resource.as_ref().map_or(&[], |r| &r.attributes));
            let origin = self.origin(access, resource, &fallback);
            for (j, sl) in rl.scope_logs.iter().enumerate() {
                for (k, r) in sl.log_records.iter().enumerate() {
                    let what = format!("resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]");
                    found.push((what, calls::of_log(&origin, r)));
                }
            }
        }
        let o = self.store(access, found).await?;
        Ok(logs::ExportLogsServiceResponse {
            partial_success: (o.rejected > 0).then(|| logs::ExportLogsPartialSuccess {
                rejected_log_records: o.rejected,
                error_message: o.error_message(),
            }),
        })
    }

    async fn traces(
        &self,
        access: &Access,
        req: trace::ExportTraceServiceRequest,
    ) -> Result<trace::ExportTraceServiceResponse, Refusal> {
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        too_many(n)?;
        let fallback = Self::fallback_actor(access);
        let mut found = Vec::with_capacity(n);
        for (i, rs) in req.resource_spans.iter().enumerate() {
            let resource = Attrs(rs.resource.as_ref().map_or(&[], |r| &r.attributes));
            let origin = self.origin(access, resource, &fallback);
            for (j, ss) in rs.scope_spans.iter().enumerate() {
                for (k, s) in ss.spans.iter().enumerate() {
                    let what = format!("resourceSpans[{i}].scopeSpans[{j}].spans[{k}]");
                    found.push((what, calls::of_span(&origin, s)));
                }
            }
        }
        let o = self.store(access, found).await?;
        Ok(trace::ExportTraceServiceResponse {
            partial_success: (o.rejected > 0).then(|| trace::ExportTracePartialSuccess {
                rejected_spans: o.rejected,
                error_message: o.error_message(),
            }),
        })
    }

    /// Data points go to `otel_metrics`, one row each; a point tally
    /// cannot store (no time) is refused in `partial_success`.
    async fn metrics(
        &self,
        access: &Access,
        req: metrics::ExportMetricsServiceRequest,
    ) -> Result<metrics::ExportMetricsServiceResponse, Refusal> {
        let received = tally_pipeline::now_ns();
        let mut rows = Rows::new(Dataset::OtelMetrics, 64);
        let mut rejections = Vec::new();
        let mut outcome = Outcome::default();
        let mut n = 0;
        for (i, rm) in req.resource_metrics.iter().enumerate() {
            let attrs = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes);
            let resource = points::attributes_json(attrs);
            let origin = self.origin(access, Attrs(attrs), "");
            let tenant = origin.tenant(Attrs(&[]));
            for (j, sm) in rm.scope_metrics.iter().enumerate() {
                for (k, m) in sm.metrics.iter().enumerate() {
                    for row in points::rows_of(&tenant, &resource, m, received) {
                        n += 1;
                        too_many(n)?;
                        let what = format!("resourceMetrics[{i}].scopeMetrics[{j}].metrics[{k}]");
                        let refused = match row {
                            Ok(r) => match access.refuse_row(r.dataset(), r.tenant()) {
                                None => match rows.push(&r) {
                                    Ok(()) => continue,
                                    Err(e) => format!("{}: {e}", m.name),
                                },
                                Some(reason) => reason,
                            },
                            Err(reason) => reason,
                        };
                        outcome.rejected += 1;
                        outcome.messages.push(format!("{what}: {refused}"));
                        rejections.push(Rejection {
                            index: None,
                            subject: Some("otlp.metrics".into()),
                            dataset: Some(Dataset::OtelMetrics),
                            reason: format!("{what}: {refused}"),
                            payload: String::new(),
                        });
                    }
                }
            }
        }
        let stored = rows.len() as u64;
        self.pipeline
            .ingest_columns(SOURCE, rows.finish(), rejections)
            .await
            .map_err(Refusal::Ingest)?;
        self.metrics.otlp_points.add(stored);
        self.metrics.otlp_rejected.add(outcome.rejected as u64);
        Ok(metrics::ExportMetricsServiceResponse {
            partial_success: (outcome.rejected > 0).then(|| metrics::ExportMetricsPartialSuccess {
                rejected_data_points: outcome.rejected,
                error_message: outcome.error_message(),
            }),
        })
    }
}

fn too_many(n: usize) -> Result<(), Refusal> {
    if n > MAX_RECORDS {
        return Err(Refusal::BadRequest(format!(
            "the export holds {n} records; at most {MAX_RECORDS} are taken at once"
        )));
    }
    Ok(())
}

// ---- OTLP/HTTP ----

/// The request's encoding: protobuf, or JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// The body, gunzipped when it says so, within `max` bytes.
fn body_of(headers: &HeaderMap, body: &Bytes, max: usize) -> Result<Vec<u8>, String> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_ascii_lowercase();
    match encoding.as_str() {
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("the gzip body cannot be read: {e}"))?;
            if out.len() > max {
                return Err(format!("the body is over {max} bytes once decompressed"));
            }
            Ok(out)
        }
        "identity" | "" => Ok(body.to_vec()),
        other => Err(format!(
            "Content-Encoding {other:?} is not supported: send gzip or none"
        )),
    }
}

/// `google.rpc.Status`, OTLP/HTTP's error body.
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn reply<M: Message + serde_like::ToJson>(json: bool, m: &M) -> Response {
    if json {
        let mut r = (StatusCode::OK, m.to_json().to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        let mut r = (StatusCode::OK, m.encode_to_vec()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        r
    }
}

fn error(json: bool, status: StatusCode, code: i32, message: String) -> Response {
    let s = Status { code, message };
    let mut r = if json {
        let body = serde_json::json!({"code": s.code, "message": s.message});
        let mut r = (status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        let mut r = (status, s.encode_to_vec()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        r
    };
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        retry_after(&mut r, 1);
    }
    r
}

fn refused(json: bool, e: Refusal) -> Response {
    match e {
        // google.rpc codes: 3 invalid argument, 7 permission denied,
        // 8 resource exhausted, 14 unavailable.
        Refusal::BadRequest(m) => error(json, StatusCode::BAD_REQUEST, 3, m),
        Refusal::Forbidden(m) => error(json, StatusCode::FORBIDDEN, 7, m),
        Refusal::Ingest(IngestError::QueueFull(q)) => {
            error(json, StatusCode::TOO_MANY_REQUESTS, 8, q.to_string())
        }
        Refusal::Ingest(e) => error(json, StatusCode::SERVICE_UNAVAILABLE, 14, e.to_string()),
    }
}

fn access_of(req: &Request) -> Option<Access> {
    req.extensions().get::<Access>().cloned()
}

/// The decoded request of an OTLP/HTTP call, or the answer refusing it.
async fn decode<M: Message + Default>(
    max: usize,
    req: Request,
    from_json: fn(&[u8]) -> Result<M, String>,
) -> Result<(bool, Access, M), Response> {
    let json = is_json(req.headers());
    let Some(access) = access_of(&req) else {
        return Err(error(
            json,
            StatusCode::FORBIDDEN,
            7,
            "the request carries no access decision".into(),
        ));
    };
    let headers = req.headers().clone();
    let bytes = axum::body::to_bytes(req.into_body(), max)
        .await
        .map_err(|e| {
            error(
                json,
                StatusCode::PAYLOAD_TOO_LARGE,
                8,
                format!("request body: {e}"),
            )
        })?;
    let body =
        body_of(&headers, &bytes, max).map_err(|m| error(json, StatusCode::BAD_REQUEST, 3, m))?;
    let decoded = if json {
        from_json(&body)
    } else {
        M::decode(&body[..]).map_err(|e| format!("the body is not an OTLP protobuf message: {e}"))
    };
    decoded
        .map(|m| (json, access, m))
        .map_err(|m| error(json, StatusCode::BAD_REQUEST, 3, m))
}

async fn http_logs(State(s): State<Otlp>, req: Request) -> Response {
    let (json, access, m) = match decode(s.max_body, req, json::logs).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match s.logs(&access, m).await {
        Ok(r) => reply(json, &r),
        Err(e) => refused(json, e),
    }
}

async fn http_traces(State(s): State<Otlp>, req: Request) -> Response {
    let (json, access, m) = match decode(s.max_body, req, json::traces).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match s.traces(&access, m).await {
        Ok(r) => reply(json, &r),
        Err(e) => refused(json, e),
    }
}

async fn http_metrics(State(s): State<Otlp>, req: Request) -> Response {
    let (json, access, m) = match decode(s.max_body, req, json::metrics).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match s.metrics(&access, m).await {
        Ok(r) => reply(json, &r),
        Err(e) => refused(json, e),
    }
}

/// The responses' OTLP/JSON: `partialSuccess` only when something was
/// refused, counts as strings (int64).
mod serde_like {
    use super::{logs, metrics, trace};
    use serde_json::{json, Value};

    pub trait ToJson {
        fn to_json(&self) -> Value;
    }

    fn partial(key: &str, n: i64, message: &str) -> Value {
        json!({"partialSuccess": {key: n.to_string(), "errorMessage": message}})
    }

    impl ToJson for logs::ExportLogsServiceResponse {
        fn to_json(&self) -> Value {
            self.partial_success.as_ref().map_or(json!({}), |p| {
                partial(
                    "rejectedLogRecords",
                    p.rejected_log_records,
                    &p.error_message,
                )
            })
        }
    }

    impl ToJson for trace::ExportTraceServiceResponse {
        fn to_json(&self) -> Value {
            self.partial_success.as_ref().map_or(json!({}), |p| {
                partial("rejectedSpans", p.rejected_spans, &p.error_message)
            })
        }
    }

    impl ToJson for metrics::ExportMetricsServiceResponse {
        fn to_json(&self) -> Value {
            self.partial_success.as_ref().map_or(json!({}), |p| {
                partial(
                    "rejectedDataPoints",
                    p.rejected_data_points,
                    &p.error_message,
                )
            })
        }
    }
}

/// A call refused before it ran (no valid token, or a token without the
/// role): gRPC as a trailers-only status, OTLP/HTTP as a
/// `google.rpc.Status` with 401 or 403.
pub fn refusal(headers: &HeaderMap, unauthenticated: bool, message: &str) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return crate::billing::refusal(headers, unauthenticated, message);
    }
    let (status, code) = if unauthenticated {
        (StatusCode::UNAUTHORIZED, 16)
    } else {
        (StatusCode::FORBIDDEN, 7)
    };
    error(is_json(headers), status, code, message.to_string())
}

// ---- OTLP/gRPC ----

#[derive(Clone)]
struct Grpc(Otlp);

fn grpc_access<T>(req: &tonic::Request<T>) -> Result<Access, tonic::Status> {
    req.extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| tonic::Status::permission_denied("the request carries no access decision"))
}

impl From<Refusal> for tonic::Status {
    fn from(e: Refusal) -> tonic::Status {
        match e {
            Refusal::BadRequest(m) => tonic::Status::invalid_argument(m),
            Refusal::Forbidden(m) => tonic::Status::permission_denied(m),
            // OTLP exporters retry UNAVAILABLE and RESOURCE_EXHAUSTED (with
            // retry info) only.
            Refusal::Ingest(e) => tonic::Status::unavailable(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl logs::logs_service_server::LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<logs::ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<logs::ExportLogsServiceResponse>, tonic::Status> {
        let access = grpc_access(&req)?;
        Ok(tonic::Response::new(
            self.0.logs(&access, req.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl trace::trace_service_server::TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<trace::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<trace::ExportTraceServiceResponse>, tonic::Status> {
        let access = grpc_access(&req)?;
        Ok(tonic::Response::new(
            self.0.traces(&access, req.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl metrics::metrics_service_server::MetricsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<metrics::ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<metrics::ExportMetricsServiceResponse>, tonic::Status> {
        let access = grpc_access(&req)?;
        Ok(tonic::Response::new(
            self.0.metrics(&access, req.into_inner()).await?,
        ))
    }
}
