//! gRPC and gRPC-Web: the tonic service, calling the same billing logic.
//!
//! `SendMetricsBatch` is served by hand ([`send_metrics_batch`]), over gRPC
//! and, behind tonic-web's layer, over gRPC-Web: its message is decoded
//! from the wire straight into a [`MetricsBatch`]'s columns. The other
//! methods are tonic's generated service.

use std::future::Future;
use std::pin::Pin;

use axum::http;
use tally_proto::billing::v1 as pb;
use tally_proto::codec::SliceCodec;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tower::{Layer, ServiceExt};

use tally_pipeline::access::Access;

use super::batch::MetricsBatch;
use super::error::RpcError;
use super::service::BillingService;

impl From<RpcError> for Status {
    fn from(e: RpcError) -> Status {
        match e {
            RpcError::InvalidArgument(m) => Status::invalid_argument(m),
            RpcError::ResourceExhausted(m) => Status::resource_exhausted(m),
            RpcError::Unavailable(m) => Status::unavailable(m),
            RpcError::Internal(m) => Status::internal(m),
            RpcError::Unimplemented(m) => Status::unimplemented(m),
            RpcError::PermissionDenied(m) => Status::permission_denied(m),
            RpcError::OverRate(e) => {
                let mut s = Status::resource_exhausted(e.to_string());
                if let Ok(v) = e.retry_after.as_secs().max(1).to_string().parse() {
                    s.metadata_mut().insert("retry-after", v);
                }
                s
            }
        }
    }
}

/// What the request's token allows (the server's auth layer sets it on
/// the HTTP request; tonic keeps it). Without one, nothing.
fn access<T>(req: &Request<T>) -> Result<Access, Status> {
    req.extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("the request carries no access decision"))
}

/// Marks a request that arrived as gRPC-Web. tonic-web's layer rewrites
/// the content type to `application/grpc` before the service sees it, so
/// the router sets this extension while it can still tell.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrpcWeb;

/// The label of a request's source: `grpc-web` or `grpc`.
fn source<T>(req: &Request<T>) -> &'static str {
    if req.extensions().get::<GrpcWeb>().is_some() {
        "grpc-web"
    } else {
        "grpc"
    }
}

#[tonic::async_trait]
impl pb::billing_service_server::BillingService for BillingService {
    /// The router serves this method by hand ([`send_metrics_batch`]); the
    /// generated trait still asks for it, so a caller of the generated
    /// service alone gets the same answer.
    async fn send_metrics_batch(
        &self,
        req: Request<pb::SendMetricsBatchRequest>,
    ) -> Result<Response<pb::SendMetricsBatchResponse>, Status> {
        let src = source(&req);
        let access = access(&req)?;
        let batch = MetricsBatch::from_request(req.get_ref());
        let message = BillingService::send_metrics_batch(self, src, &access, batch).await?;
        Ok(Response::new(pb::SendMetricsBatchResponse {
            success: true,
            message,
        }))
    }

    async fn send_heartbeat(
        &self,
        req: Request<pb::SendHeartbeatRequest>,
    ) -> Result<Response<pb::SendHeartbeatResponse>, Status> {
        let src = source(&req);
        BillingService::send_heartbeat(self, src, req.into_inner()).await?;
        Ok(Response::new(pb::SendHeartbeatResponse { success: true }))
    }

    async fn notify_vm_started(
        &self,
        req: Request<pb::NotifyVmStartedRequest>,
    ) -> Result<Response<pb::NotifyVmStartedResponse>, Status> {
        let src = source(&req);
        let access = access(&req)?;
        BillingService::notify_vm_started(self, src, &access, req.into_inner()).await?;
        Ok(Response::new(pb::NotifyVmStartedResponse { success: true }))
    }

    async fn notify_vm_stopped(
        &self,
        req: Request<pb::NotifyVmStoppedRequest>,
    ) -> Result<Response<pb::NotifyVmStoppedResponse>, Status> {
        let src = source(&req);
        let access = access(&req)?;
        BillingService::notify_vm_stopped(self, src, &access, req.into_inner()).await?;
        Ok(Response::new(pb::NotifyVmStoppedResponse { success: true }))
    }

    async fn notify_possible_gap(
        &self,
        req: Request<pb::NotifyPossibleGapRequest>,
    ) -> Result<Response<pb::NotifyPossibleGapResponse>, Status> {
        let src = source(&req);
        let access = access(&req)?;
        BillingService::notify_possible_gap(self, src, &access, req.into_inner()).await?;
        Ok(Response::new(pb::NotifyPossibleGapResponse {
            success: true,
        }))
    }
}

/// `SendMetricsBatch` as a tonic unary service over [`MetricsBatch`].
struct SendMetricsBatch(BillingService);

impl tonic::server::UnaryService<MetricsBatch> for SendMetricsBatch {
    type Response = pb::SendMetricsBatchResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send + 'static>>;

    fn call(&mut self, req: Request<MetricsBatch>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let src = source(&req);
            let access = access(&req)?;
            let message =
                BillingService::send_metrics_batch(&service, src, &access, req.into_inner())
                    .await?;
            Ok(Response::new(pb::SendMetricsBatchResponse {
                success: true,
                message,
            }))
        })
    }
}

/// Serves one gRPC `SendMetricsBatch` call: gzip accepted and sent, and
/// messages up to `max_body` bytes, as the generated service is set up.
/// A gRPC-Web call reaches it through tonic-web's layer
/// ([`grpc_web_send_metrics_batch`]).
pub(super) async fn send_metrics_batch(
    service: BillingService,
    max_body: usize,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let codec = SliceCodec::<pb::SendMetricsBatchResponse, MetricsBatch>::default();
    tonic::server::Grpc::new(codec)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_body)
        .unary(SendMetricsBatch(service), req)
        .await
}

/// Serves one gRPC-Web `SendMetricsBatch` call: tonic-web's layer turns
/// the request into gRPC (its frames unwrapped, base64 decoded for
/// `-text`), [`send_metrics_batch`] reads it into columns, and the layer
/// turns the answer back into gRPC-Web, trailers in the body.
pub(super) async fn grpc_web_send_metrics_batch(
    service: BillingService,
    max_body: usize,
    mut req: axum::extract::Request,
) -> http::Response<tonic::body::Body> {
    req.extensions_mut().insert(GrpcWeb);
    let method = tower::service_fn(move |req| {
        let service = service.clone();
        async move {
            Ok::<_, std::convert::Infallible>(send_metrics_batch(service, max_body, req).await)
        }
    });
    match tonic_web::GrpcWebLayer::new()
        .layer(method)
        .oneshot(req)
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
