//! Ingest for a source that can wait: a consumer (NATS, Kafka) reads more
//! slowly while the pipeline is full, instead of dropping or refusing.

use std::time::Duration;

use tokio::sync::watch;

use crate::batch::Columns;
use crate::pipeline::{IngestError, IngestReport, Pipeline, Rejection};

/// The first wait after a refusal; each next one doubles, up to [`LAST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(20);
const LAST_WAIT: Duration = Duration::from_secs(1);

/// Where a waiting source's rows come from; it decides what is waited out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A consumer that can be answered (NATS): a full queue is waited out;
    /// any other refusal is returned to it.
    Consumer,
    /// A replayable log (Kafka): the rows are marked as the log's (a
    /// restart leaves them to it), and every refusal is waited out, since
    /// the log cannot be told no.
    Log,
}

impl Pipeline {
    /// Stores `parts` (checked columns) and `rejections`, and returns once
    /// they are durable, waiting (20 ms doubling to 1 s) through what
    /// `origin` waits out; `waited` hears each refusal waited out. When
    /// `stop` turns true meanwhile, the refusal is returned. A full queue
    /// refuses before anything of the batch is taken, so the batch is
    /// tried again as it is; columns are shared, not copied.
    pub async fn ingest_until_durable(
        &self,
        source: &str,
        origin: Origin,
        parts: Vec<Columns>,
        rejections: Vec<Rejection>,
        stop: &watch::Receiver<bool>,
        mut waited: impl FnMut(&IngestError),
    ) -> Result<IngestReport, IngestError> {
        let mut delay = FIRST_WAIT;
        loop {
            let error = match origin {
                Origin::Consumer => match self.reserve_parts(&parts, &rejections) {
                    Ok(()) => {
                        return self
                            .ingest_reserved_parts(source, parts, rejections, false)
                            .await
                    }
                    Err(e) => e,
                },
                Origin::Log => {
                    match self
                        .ingest_parts(source, parts.clone(), rejections.clone(), true)
                        .await
                    {
                        Ok(report) => return Ok(report),
                        Err(e) => e,
                    }
                }
            };
            let waits = origin == Origin::Log || matches!(error, IngestError::QueueFull(_));
            if *stop.borrow() || !waits {
                return Err(error);
            }
            waited(&error);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LAST_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, Record, RecordBuilder};

    fn message(id: &str) -> Record {
        let mut b = RecordBuilder::new(Dataset::UsageMessage);
        b.set("event_id", id)
            .set("timestamp", crate::Value::Ts(0))
            .set("actor_id", "user:1")
            .set("actor_type", "human")
            .set("microdao_id", "dao")
            .set("channel_id", "c")
            .set("message_length", 1);
        b.build().unwrap()
    }

    fn columns(ids: &[&str]) -> Vec<Columns> {
        Columns::of_records(ids.iter().map(|id| message(id)).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_waited_out_until_room_or_stop() {
        for origin in [Origin::Consumer, Origin::Log] {
            let dir = tempfile::tempdir().unwrap();
            let (pipeline, wal, store, _) = crate::pipeline::tests::open(dir.path(), 3);
            let first: Vec<Record> = ["a", "b", "c"].into_iter().map(message).collect();
            pipeline.ingest("test", first, Vec::new()).await.unwrap();
            // The queue is full; room comes 150 ms later (as after a flush).
            let freeing = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                freeing.release(Dataset::UsageMessage, 3);
            });
            let (stop_tx, stop) = watch::channel(false);
            let mut waits = 0;
            let report = pipeline
                .ingest_until_durable("test", origin, columns(&["d"]), Vec::new(), &stop, |e| {
                    assert!(matches!(e, IngestError::QueueFull(_)), "{e}");
                    waits += 1;
                })
                .await
                .unwrap();
            assert_eq!((report.accepted, report.duplicates), (1, 0), "{origin:?}");
            assert!(waits >= 2, "{origin:?}: waited {waits} times");
            // Full again, and stopping: the refusal comes back at once.
            let second: Vec<Record> = ["e", "f"].into_iter().map(message).collect();
            pipeline.ingest("test", second, Vec::new()).await.unwrap();
            stop_tx.send(true).unwrap();
            let refused = pipeline
                .ingest_until_durable("test", origin, columns(&["g"]), Vec::new(), &stop, |_| {
                    panic!("nothing is waited out after the stop")
                })
                .await
                .unwrap_err();
            assert!(matches!(refused, IngestError::QueueFull(_)), "{origin:?}");
            wal.shutdown().await;
        }
    }
}
