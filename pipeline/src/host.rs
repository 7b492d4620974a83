//! The host usage feed of README "Host telemetry and the /usage WebSocket": what the host sampler (a source)
//! publishes and the `/usage` WebSocket (on the read side) sends.

use std::sync::Arc;

use tokio::sync::watch;

/// A serialised `usage_update` (UTF-8 JSON), shared by every WebSocket
/// client: one serialisation per tick, a reference count per client.
#[derive(Debug, Clone)]
pub struct HostUpdate {
    pub seq: u64,
    pub json: bytes::Bytes,
}

#[derive(Clone)]
pub struct UsageFeed {
    /// The `system_info` message, made per connection (its timestamp is fresh).
    pub system_info: Arc<dyn Fn() -> String + Send + Sync>,
    pub updates: watch::Receiver<Option<HostUpdate>>,
}
