//! billing.v1 protobuf messages and the gRPC service/client code, generated
//! at build time from `proto/billing/v1/billing.proto`; and OTLP's (the
//! OpenTelemetry protocol's) collector services, from the subset of
//! opentelemetry-proto under `proto/opentelemetry/`.

pub mod codec;
pub mod fast;

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("billing.v1");
    }
}

/// OTLP: `opentelemetry.proto.*` (logs, traces, metrics, and the
/// collector services that take them).
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod logs {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.logs.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod metrics {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.metrics.v1");
            }
        }
        pub mod collector {
            pub mod logs {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.logs.v1");
                }
            }
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
            pub mod metrics {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.metrics.v1");
                }
            }
        }
    }
}

pub use prost_types::Timestamp;

/// The schema file, for tools that want it (e.g. `buf curl --schema`).
pub const BILLING_PROTO: &str = include_str!("../proto/billing/v1/billing.proto");
