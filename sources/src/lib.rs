//! Sources: each turns its input into records and hands them to the pipeline.

pub mod events;
pub mod http;
