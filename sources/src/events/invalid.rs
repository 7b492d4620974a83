//! What the sender of a bad event is told.

/// An event that does not follow its spec: the reason names the field and
/// the rule (it is what the sender is told).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);
