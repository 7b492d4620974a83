//! Sources: each turns its input into records and hands them to the pipeline.

pub mod billing;
pub mod cloudevents;
pub mod events;
pub mod hardware;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod otlp;
pub mod stripe;
