//! The error of a billing.v1 call, with its Connect and gRPC code.

use tally_pipeline::access::limits::OverRate;
use tally_pipeline::{IngestError, SchemaError};

/// An RPC failure with its Connect / gRPC code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(String),
    /// The token may not write for this customer.
    #[error("{0}")]
    PermissionDenied(String),
    /// The customer is over its rate (`--customer-rate`).
    #[error("{0}")]
    OverRate(OverRate),
}

impl From<SchemaError> for RpcError {
    /// A row this service built does not fit its dataset: a defect of
    /// tally's, not of the request.
    fn from(e: SchemaError) -> Self {
        RpcError::Internal(format!("the row does not fit the schema: {e}"))
    }
}

impl RpcError {
    /// The Connect code name.
    pub fn code(&self) -> &'static str {
        match self {
            RpcError::InvalidArgument(_) => "invalid_argument",
            RpcError::ResourceExhausted(_) => "resource_exhausted",
            RpcError::Unavailable(_) => "unavailable",
            RpcError::Internal(_) => "internal",
            RpcError::Unimplemented(_) => "unimplemented",
            RpcError::PermissionDenied(_) => "permission_denied",
            RpcError::OverRate(_) => "resource_exhausted",
        }
    }

    /// When to try again, for `resource_exhausted`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RpcError::OverRate(e) => Some(e.retry_after.as_secs().max(1)),
            RpcError::ResourceExhausted(_) => Some(1),
            _ => None,
        }
    }
}

impl From<IngestError> for RpcError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::QueueFull(q) => RpcError::ResourceExhausted(q.to_string()),
            IngestError::Wal(w) => RpcError::Unavailable(w.to_string()),
            IngestError::Relay(r) => RpcError::Unavailable(r.to_string()),
        }
    }
}
