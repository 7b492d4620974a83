//! billing.v1 protobuf messages and the gRPC service/client code, generated
//! at build time from `proto/billing/v1/billing.proto`.

pub mod codec;
pub mod fast;

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("billing.v1");
    }
}

pub use prost_types::Timestamp;

/// The schema file, for tools that want it (e.g. `buf curl --schema`).
pub const BILLING_PROTO: &str = include_str!("../proto/billing/v1/billing.proto");
