//! The Connect protocol, unary: `application/json` or `application/proto`,
//! gzip request and response bodies, errors as `{"code","message"}`.

use std::io::{Read, Write};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;
use serde_json::json;

use tally_pipeline::access::Access;

use super::batch::MetricsBatch;
use super::error::RpcError;
use super::json;
use super::service::BillingService;
use tally_proto::billing::v1 as pb;

pub const SOURCE: &str = "connect";
/// Largest decompressed request accepted.
const MAX_MESSAGE: u64 = 32 << 20;

/// The message encoding of a Connect request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// From the `content-type` header; `None` for a type Connect unary
    /// does not use.
    pub fn from_content_type(content_type: &str) -> Option<Codec> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Codec::Json),
            "application/proto" => Some(Codec::Proto),
            _ => None,
        }
    }
}

/// A decoded request of one of the five methods.
#[derive(Debug)]
pub enum BillingRequest {
    /// Decoded straight into columns.
    SendMetricsBatch(MetricsBatch),
    SendHeartbeat(pb::SendHeartbeatRequest),
    NotifyVmStarted(pb::NotifyVmStartedRequest),
    NotifyVmStopped(pb::NotifyVmStoppedRequest),
    NotifyPossibleGap(pb::NotifyPossibleGapRequest),
}

/// The request body after its `content-encoding` (identity or gzip),
/// bounded to 32 MiB decompressed.
pub fn decompress(content_encoding: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    match content_encoding {
        "identity" => Ok(body.to_vec()),
        "gzip" => {
            let mut out = Vec::new();
            match GzDecoder::new(body)
                .take(MAX_MESSAGE + 1)
                .read_to_end(&mut out)
            {
                Ok(_) if out.len() as u64 > MAX_MESSAGE => Err(RpcError::ResourceExhausted(
                    "decompressed request is larger than 32 MiB".into(),
                )),
                Ok(_) => Ok(out),
                Err(e) => Err(RpcError::InvalidArgument(format!(
                    "request body is not valid gzip: {e}"
                ))),
            }
        }
        other => Err(RpcError::Unimplemented(format!(
            "content-encoding {other:?} is not supported; use gzip or identity"
        ))),
    }
}

/// Decodes the message of `method` from a decompressed body.
pub fn decode_request(method: &str, codec: Codec, body: &[u8]) -> Result<BillingRequest, RpcError> {
    Ok(match method {
        "SendMetricsBatch" => BillingRequest::SendMetricsBatch(match codec {
            Codec::Proto => MetricsBatch::decode(body).map_err(not_protobuf)?,
            Codec::Json => json::metrics_batch(body).map_err(RpcError::InvalidArgument)?,
        }),
        "SendHeartbeat" => BillingRequest::SendHeartbeat(decode(codec, body, json::heartbeat)?),
        "NotifyVmStarted" => {
            BillingRequest::NotifyVmStarted(decode(codec, body, json::vm_started)?)
        }
        "NotifyVmStopped" => {
            BillingRequest::NotifyVmStopped(decode(codec, body, json::vm_stopped)?)
        }
        "NotifyPossibleGap" => {
            BillingRequest::NotifyPossibleGap(decode(codec, body, json::possible_gap)?)
        }
        other => {
            return Err(RpcError::Unimplemented(format!(
                "billing.v1.BillingService has no method {other}"
            )))
        }
    })
}

/// A Connect error: its code, HTTP status and message.
pub fn error(code: &str, message: &str) -> Response {
    let status = match code {
        "invalid_argument" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response();
    if code == "resource_exhausted" {
        tally_pipeline::http_reply::retry_after(&mut r, 1);
    }
    r
}

fn rpc_error(e: RpcError) -> Response {
    let mut r = error(e.code(), &e.to_string());
    if let Some(secs) = e.retry_after_secs() {
        tally_pipeline::http_reply::retry_after(&mut r, secs);
    }
    r
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Serves one unary Connect call of `method`.
pub async fn call(
    service: &BillingService,
    access: &Access,
    method: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or_default();
    let Some(codec) = Codec::from_content_type(content_type) else {
        let mut r = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {:?}: use application/json or application/proto (Connect), application/grpc or application/grpc-web", content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()),
        )
            .into_response();
        r.headers_mut().insert(
            "accept-post",
            HeaderValue::from_static(
                "application/json, application/proto, application/grpc, application/grpc-web",
            ),
        );
        return r;
    };
    if let Some(v) = headers.get("connect-protocol-version") {
        if v != "1" {
            return error("invalid_argument", "connect-protocol-version must be 1");
        }
    }
    let encoding = header_str(headers, header::CONTENT_ENCODING).unwrap_or("identity");
    let request = match decompress(encoding, &body).and_then(|b| decode_request(method, codec, &b))
    {
        Ok(r) => r,
        Err(e) => return rpc_error(e),
    };
    let result = dispatch(service, access, request).await;
    let (message, json_body) = match result {
        Ok(ok) => ok,
        Err(e) => return rpc_error(e),
    };
    let mut bytes = match codec {
        Codec::Proto => message,
        Codec::Json => json_body.to_string().into_bytes(),
    };
    let gzip = header_str(headers, header::ACCEPT_ENCODING)
        .is_some_and(|a| a.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if codec == Codec::Json {
            "application/json"
        } else {
            "application/proto"
        }),
    );
    if gzip {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&bytes).is_ok() {
            if let Ok(zipped) = enc.finish() {
                bytes = zipped;
                response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
    }
    (StatusCode::OK, response_headers, bytes).into_response()
}

fn not_protobuf(e: prost::DecodeError) -> RpcError {
    RpcError::InvalidArgument(format!("request is not a valid protobuf message: {e}"))
}

fn decode<T: Message + Default + 'static>(
    codec: Codec,
    body: &[u8],
    from_json: fn(&[u8]) -> Result<T, String>,
) -> Result<T, RpcError> {
    match codec {
        Codec::Proto => tally_proto::codec::decode_message::<T>(body).map_err(not_protobuf),
        Codec::Json => from_json(body).map_err(RpcError::InvalidArgument),
    }
}

/// Runs the method; returns the response as protobuf bytes and as JSON.
async fn dispatch(
    service: &BillingService,
    access: &Access,
    request: BillingRequest,
) -> Result<(Vec<u8>, serde_json::Value), RpcError> {
    // The four acknowledgements are all `bool success = 1`: one encoding serves them.
    let ok = || {
        (
            pb::SendHeartbeatResponse { success: true }.encode_to_vec(),
            json!({"success": true}),
        )
    };
    match request {
        BillingRequest::SendMetricsBatch(req) => {
            let message = service.send_metrics_batch(SOURCE, access, req).await?;
            let bytes = pb::SendMetricsBatchResponse {
                success: true,
                message: message.clone(),
            }
            .encode_to_vec();
            Ok((bytes, json!({"success": true, "message": message})))
        }
        BillingRequest::SendHeartbeat(req) => {
            service.send_heartbeat(SOURCE, req).await?;
            Ok(ok())
        }
        BillingRequest::NotifyVmStarted(req) => {
            service.notify_vm_started(SOURCE, access, req).await?;
            Ok(ok())
        }
        BillingRequest::NotifyVmStopped(req) => {
            service.notify_vm_stopped(SOURCE, access, req).await?;
            Ok(ok())
        }
        BillingRequest::NotifyPossibleGap(req) => {
            service.notify_possible_gap(SOURCE, access, req).await?;
            Ok(ok())
        }
    }
}
