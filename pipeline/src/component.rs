//! What every component gets when it starts, and what it gives back.
//!
//! A component (a source, a sink, a read API) has a `start` function in its
//! folder that takes its resolved settings and a [`Context`], spawns what it
//! runs, and returns a [`Handle`] that `tally serve` awaits at shutdown, in
//! its shutdown order.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pipeline::Pipeline;

/// Shared by every component.
#[derive(Clone)]
pub struct Context {
    /// Where sources write: admission, dedup, WAL.
    pub pipeline: Pipeline,
    /// Turns `true` when tally shuts down.
    pub stop: watch::Receiver<bool>,
}

/// A running component: its task or thread, awaited at shutdown.
#[derive(Debug, Default)]
pub enum Handle {
    /// Nothing runs on its own (the component only answers requests).
    #[default]
    Idle,
    Task(JoinHandle<()>),
    /// A blocking thread (the Kafka consumer).
    Thread(std::thread::JoinHandle<()>),
}

impl Handle {
    /// Waits until the component has stopped (after `stop` turned `true`).
    pub async fn stopped(self) {
        match self {
            Handle::Idle => {}
            Handle::Task(t) => {
                let _ = t.await;
            }
            Handle::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}
