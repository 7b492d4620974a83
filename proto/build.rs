//! Generates the billing.v1 and OTLP types and service code with a
//! pure-Rust protobuf compiler: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["billing/v1/billing.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .codec_path("crate::codec::SliceCodec")
        .compile_fds(fds)?;
    // OTLP's collector services (the subset of opentelemetry-proto that
    // tally reads), with tonic's own prost codec.
    let otlp = protox::compile(
        [
            "opentelemetry/proto/collector/logs/v1/logs_service.proto",
            "opentelemetry/proto/collector/trace/v1/trace_service.proto",
            "opentelemetry/proto/collector/metrics/v1/metrics_service.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(otlp)?;
    Ok(())
}
