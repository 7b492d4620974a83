//! How every part of tally starts, and what it gives back.
//!
//! A source, a sink or a derive job is a [`Component`]: a value built from
//! its resolved settings and the parts it is wired to, started once with
//! the [`Context`] every component shares. Starting spawns what it runs and
//! returns a [`Handle`] and what the rest of tally keeps of it (its routes,
//! its status). `tally serve` registers them in start order in
//! [`Components`], and at shutdown, after the stop signal, awaits them in
//! the reverse order.

use async_trait::async_trait;
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

/// A source, sink or derive job.
#[async_trait]
pub trait Component: Send + Sized {
    /// Its name in logs and in the error of a failed start.
    const NAME: &'static str;
    /// What the rest of tally keeps of it: routes, status, shared parts.
    type Running: Send;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Spawns what it runs; it stops when `ctx.stop` turns `true`.
    async fn start(self, ctx: &Context) -> Result<(Handle, Self::Running), Self::Error>;
}

/// A component that did not start.
#[derive(Debug, thiserror::Error)]
#[error("starting {component}: {source}")]
pub struct StartError {
    pub component: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
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
    /// A job that stops at the signal between passes and is not awaited:
    /// a pass the exit cuts short (a compaction, a scrub) is made again
    /// after the next start.
    Background(JoinHandle<()>),
}

impl Handle {
    /// Waits until the component has stopped (after `stop` turned `true`).
    pub async fn stopped(self) {
        match self {
            Handle::Idle | Handle::Background(_) => {}
            Handle::Task(t) => {
                let _ = t.await;
            }
            Handle::Thread(t) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}

/// The components started, in start order.
#[derive(Debug, Default)]
pub struct Components {
    started: Vec<(&'static str, Handle)>,
}

impl Components {
    /// Starts `component` and registers its handle.
    pub async fn start<C: Component>(
        &mut self,
        component: C,
        ctx: &Context,
    ) -> Result<C::Running, StartError> {
        let (handle, running) = component.start(ctx).await.map_err(|e| StartError {
            component: C::NAME,
            source: Box::new(e),
        })?;
        tracing::debug!(component = C::NAME, "started");
        self.started.push((C::NAME, handle));
        Ok(running)
    }

    /// The names of the components started, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.started.iter().map(|(n, _)| *n).collect()
    }

    /// Awaits every component in the reverse of its start order (call
    /// after the stop signal).
    pub async fn stopped(self) {
        for (name, handle) in self.started.into_iter().rev() {
            handle.stopped().await;
            tracing::debug!(component = name, "stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use parking_lot::Mutex;

    /// A component whose task notes that it stopped.
    struct Noting {
        name: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
        fail: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no port")]
    struct NoPort;

    #[async_trait]
    impl Component for Noting {
        const NAME: &'static str = "noting";
        type Running = &'static str;
        type Error = NoPort;

        async fn start(self, ctx: &Context) -> Result<(Handle, &'static str), NoPort> {
            if self.fail {
                return Err(NoPort);
            }
            let mut stop = ctx.stop.clone();
            let (name, log) = (self.name, self.log);
            let task = tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                log.lock().push(name);
            });
            Ok((Handle::Task(task), name))
        }
    }

    #[tokio::test]
    async fn components_start_in_order_and_are_awaited_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let ctx = Context {
            pipeline: crate::pipeline::tests::open(dir.path(), 100).0,
            stop,
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut all = Components::default();
        for name in ["sink", "derive", "source"] {
            let c = Noting {
                name,
                log: log.clone(),
                fail: false,
            };
            assert_eq!(all.start(c, &ctx).await.unwrap(), name);
        }
        let bad = Noting {
            name: "bad",
            log: log.clone(),
            fail: true,
        };
        let refused = all.start(bad, &ctx).await.unwrap_err();
        assert_eq!(refused.to_string(), "starting noting: no port");
        assert_eq!(
            all.names().len(),
            3,
            "a component that failed is not registered"
        );
        stop_tx.send(true).unwrap();
        all.stopped().await;
        let mut stopped = log.lock().clone();
        stopped.sort();
        assert_eq!(stopped, ["derive", "sink", "source"]);
    }
}
