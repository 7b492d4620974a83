//! billing.v1 (README "billing.v1") on the shared port: Connect (JSON and binary),
//! gRPC over HTTP/2 cleartext, and gRPC-Web, all at
//! `POST /billing.v1.BillingService/<Method>`, told apart by content type.
//!
//! gRPC and gRPC-Web are tonic's (`tonic-web` for the latter), with
//! `SendMetricsBatch` served by hand over both (`grpc.rs`). Connect unary
//! is served here: it is plain HTTP (a JSON or protobuf body, gzip, a JSON
//! error), and the maintained Connect crates for axum were pre-release or
//! pinned to older prost/axum when this was written.

pub mod batch;
pub mod connect;
pub mod error;
pub mod grpc;
pub(crate) mod json;
pub mod metrics;
pub mod service;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::sync::Arc;

use tally_pipeline::access::limits::RateLimiter;
use tally_pipeline::access::Access;
use tally_pipeline::component::{Component, Context, Handle};
use tally_proto::billing::v1::billing_service_server::BillingServiceServer;
use tower::ServiceExt;

pub use batch::{MetricsBatch, MAX_BATCH};
pub use service::BillingService;

/// The methods of billing.v1.BillingService.
pub const METHODS: [&str; 5] = [
    "SendMetricsBatch",
    "SendHeartbeat",
    "NotifyVmStarted",
    "NotifyVmStopped",
    "NotifyPossibleGap",
];

#[derive(Clone)]
struct Billing {
    service: BillingService,
    grpc: BillingServiceServer<BillingService>,
    grpc_web: tonic_web::GrpcWebService<BillingServiceServer<BillingService>>,
    max_body: usize,
}

/// The billing.v1 source: each customer held to its rate
/// (`--customer-rate`), bodies up to `max_body` bytes.
pub struct BillingSource {
    pub customer_limits: Option<RateLimiter>,
    pub max_body: usize,
}

/// What the rest of tally keeps of the billing source.
pub struct BillingRunning {
    pub routes: Router,
    pub metrics: Arc<metrics::BillingMetrics>,
}

#[async_trait::async_trait]
impl Component for BillingSource {
    const NAME: &'static str = "billing.v1";
    type Running = BillingRunning;
    type Error = std::convert::Infallible;

    async fn start(self, ctx: &Context) -> Result<(Handle, BillingRunning), Self::Error> {
        let service =
            BillingService::new(ctx.pipeline.clone()).with_customer_limits(self.customer_limits);
        let metrics = service.metrics.clone();
        let routes = router(service, self.max_body);
        Ok((Handle::Idle, BillingRunning { routes, metrics }))
    }
}

pub fn router(service: BillingService, max_body: usize) -> Router {
    let grpc = BillingServiceServer::new(service.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(max_body);
    let grpc_web = tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), grpc.clone());
    Router::new()
        .route("/billing.v1.BillingService/{method}", post(serve))
        .with_state(Billing {
            service,
            grpc,
            grpc_web,
            max_body,
        })
}

async fn serve(State(b): State<Billing>, Path(method): Path<String>, req: Request) -> Response {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/grpc-web") {
        if method == "SendMetricsBatch" {
            return grpc::grpc_web_send_metrics_batch(b.service, b.max_body, req)
                .await
                .map(Body::new);
        }
        let mut req = req;
        req.extensions_mut().insert(grpc::GrpcWeb);
        return match b.grpc_web.oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => connect::error("internal", &e.to_string()),
        };
    }
    if content_type.starts_with("application/grpc") {
        if method == "SendMetricsBatch" {
            let req = req.map(tonic::body::Body::new);
            return grpc::send_metrics_batch(b.service, b.max_body, req)
                .await
                .map(Body::new);
        }
        return match b.grpc.oneshot(req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => connect::error("internal", &e.to_string()),
        };
    }
    if !METHODS.contains(&method.as_str()) {
        return connect::error(
            "not_found",
            &format!("billing.v1.BillingService has no method {method:?}"),
        );
    }
    let (parts, body) = req.into_parts();
    let Some(access) = parts.extensions.get::<Access>().cloned() else {
        return connect::error(
            "permission_denied",
            "the request carries no access decision",
        );
    };
    let bytes = match axum::body::to_bytes(body, b.max_body).await {
        Ok(bytes) => bytes,
        Err(e) => return connect::error("resource_exhausted", &format!("request body: {e}")),
    };
    connect::call(&b.service, &access, &method, &parts.headers, bytes)
        .await
        .into_response()
}

/// A call refused before it ran (no valid token, or a token without the
/// role): gRPC and gRPC-Web as a trailers-only response with `grpc-status`
/// 16 (`unauthenticated`) or 7 (`permission_denied`), Connect as its JSON
/// error with HTTP 401 or 403.
pub fn refusal(headers: &HeaderMap, unauthenticated: bool, message: &str) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/grpc")
    {
        let code = if unauthenticated {
            "unauthenticated"
        } else {
            "permission_denied"
        };
        return connect::error(code, message);
    }
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        "grpc-status",
        HeaderValue::from_static(if unauthenticated { "16" } else { "7" }),
    );
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, the rest
/// as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
