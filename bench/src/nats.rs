//! NATS scenarios: `usage.llm` events published to NATS (core or JetStream)
//! and the rate at which tally makes them durable, read from its
//! `tally_records_accepted_total{source="nats"}` counter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct NatsReport {
    pub mode: &'static str,
    pub publishers: usize,
    pub duration_seconds: f64,
    pub published: u64,
    pub published_per_second: f64,
    /// Events stored by tally during the measured window, per second.
    pub stored_per_second: f64,
    /// Events stored in the end (after a drain wait).
    pub stored_total: u64,
    /// Published but never stored (core NATS drops under overload).
    pub lost: u64,
    /// `--rate`: events per second the publishers aimed at.
    pub offered_per_second: Option<u64>,
    /// CPU seconds each process used during the measured window.
    pub cpu_seconds: CpuSeconds,
}

/// CPU seconds (user + system) over the measured window, from /proc.
#[derive(Debug, Default, Serialize)]
pub struct CpuSeconds {
    /// This process: the publishers (and the counting subscriber of
    /// `nats-core-ceiling`).
    pub bench: f64,
    /// Every process named `nats-server` on this machine.
    pub nats_server: f64,
    /// The tally server, when the bench started it.
    pub tally: Option<f64>,
}

/// What a run publishes, and how fast.
#[derive(Debug, Clone)]
pub struct Load {
    pub jetstream: bool,
    pub publishers: usize,
    /// Events per second over all publishers; as fast as they can if `None`.
    pub rate: Option<u64>,
    /// JetStream: publish plain `PUB`s on the stream's subject, as core
    /// runs do, without waiting for the stream's publish acks. The stream
    /// stores them all the same; whether it did shows as `lost`.
    pub unacked: bool,
    pub warmup: Duration,
    pub duration: Duration,
}

/// tally's count of events accepted from NATS.
pub async fn stored(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tally_records_accepted_total{") && l.contains("source=\"nats\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Where the stored count is read: tally's metrics, or a subscriber of the
/// bench's own that only counts.
enum Counter {
    Tally { http: reqwest::Client, base: String },
    Local(Arc<AtomicU64>),
}

impl Counter {
    async fn get(&self) -> anyhow::Result<u64> {
        match self {
            Counter::Tally { http, base } => stored(http, base).await,
            Counter::Local(n) => Ok(n.load(Ordering::Relaxed)),
        }
    }
}

pub async fn run(
    base: &str,
    server_pid: Option<u32>,
    nats_url: &str,
    load: &Load,
) -> anyhow::Result<NatsReport> {
    let counter = Counter::Tally {
        http: reqwest::Client::new(),
        base: base.to_string(),
    };
    publish(counter, server_pid, nats_url, load).await
}

/// Core NATS with a subscriber (its own connection, as tally's would be)
/// that counts messages and drops them.
pub async fn ceiling(nats_url: &str, load: &Load) -> anyhow::Result<NatsReport> {
    use futures::StreamExt;
    let received = Arc::new(AtomicU64::new(0));
    // Default options, as tally's collector has.
    let subscriber = async_nats::connect(nats_url).await?;
    let mut messages = subscriber.subscribe("usage.llm").await?;
    subscriber.flush().await?;
    let count = received.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            std::hint::black_box(&m.payload);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let core = Load {
        jetstream: false,
        ..load.clone()
    };
    let mut report = publish(Counter::Local(received), None, nats_url, &core).await?;
    report.mode = "core, counting subscriber";
    task.abort();
    Ok(report)
}

/// CPU seconds of this process, of every `nats-server` and of tally.
fn cpu_now(server_pid: Option<u32>) -> (f64, f64, Option<f64>) {
    let bench = crate::server::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let nats_server = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "nats-server")
        })
        .filter_map(|pid| crate::server::cpu_seconds(pid).ok())
        .sum();
    let tally = server_pid.and_then(|pid| crate::server::cpu_seconds(pid).ok());
    (bench, nats_server, tally)
}

/// How many events a publisher may have sent `elapsed` into the run.
fn due(rate: Option<u64>, publishers: usize, elapsed: Duration, sent: u64) -> u64 {
    match rate {
        Some(r) => (elapsed.as_secs_f64() * r as f64 / publishers.max(1) as f64) as u64,
        None => sent + CHUNK,
    }
}

/// Events a publisher writes at once.
const CHUNK: u64 = 256;

async fn publish(
    counter: Counter,
    server_pid: Option<u32>,
    nats_url: &str,
    load: &Load,
) -> anyhow::Result<NatsReport> {
    let jetstream = load.jetstream;
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let stream_client = if jetstream {
        let client = async_nats::connect(nats_url).await?;
        let js = async_nats::jetstream::new(client.clone());
        // tally creates the stream; wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.get_stream("BENCH").await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "stream BENCH was not created by tally"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some((client, js))
    } else {
        None
    };
    if let Some((client, js)) = stream_client.filter(|_| !load.unacked) {
        for _ in 0..load.publishers.max(1) {
            let (client, js, next, stop) = (client.clone(), js.clone(), next.clone(), stop.clone());
            let (rate, publishers) = (load.rate, load.publishers);
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::with_capacity(256);
                let (start, mut sent) = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if due(rate, publishers, start.elapsed(), sent) <= sent {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let event = crate::runner::body(id, 1);
                    let payload = bytes::Bytes::from(event.trim_end().to_string());
                    sent += 1;
                    match js.publish("usage.llm", payload).await {
                        Ok(ack) => acks.push(ack),
                        Err(_) => continue,
                    }
                    if acks.len() >= 256 {
                        for a in acks.drain(..) {
                            let _ = a.await;
                        }
                    }
                }
                for a in acks.drain(..) {
                    let _ = a.await;
                }
                let _ = client.flush().await;
                Ok(())
            }));
        }
    } else {
        for _ in 0..load.publishers.max(1) {
            let publisher = RawPublisher::connect(nats_url).await?;
            let (next, stop) = (next.clone(), stop.clone());
            let (rate, publishers) = (load.rate, load.publishers);
            tasks.push(tokio::spawn(async move {
                publisher.run(next, stop, rate, publishers).await
            }));
        }
    }
    tokio::time::sleep(load.warmup).await;
    let (s0, p0, c0, t0) = (
        counter.get().await?,
        next.load(Ordering::Relaxed),
        cpu_now(server_pid),
        Instant::now(),
    );
    tokio::time::sleep(load.duration).await;
    let (s1, p1, c1, elapsed) = (
        counter.get().await?,
        next.load(Ordering::Relaxed),
        cpu_now(server_pid),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let published = next.load(Ordering::Relaxed);
    // Let tally drain what is on its way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = counter.get().await?;
    let mut last_change = Instant::now();
    while total < published
        && Instant::now() < deadline
        && last_change.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counter.get().await?;
        if now != total {
            last_change = Instant::now();
        }
        total = now;
    }
    let secs = elapsed.as_secs_f64();
    Ok(NatsReport {
        mode: if jetstream { "jetstream" } else { "core" },
        publishers: load.publishers,
        duration_seconds: secs,
        published,
        published_per_second: (p1 - p0) as f64 / secs,
        stored_per_second: (s1 - s0) as f64 / secs,
        stored_total: total,
        lost: published.saturating_sub(total),
        offered_per_second: load.rate,
        cpu_seconds: CpuSeconds {
            bench: c1.0 - c0.0,
            nats_server: c1.1 - c0.1,
            tally: c1.2.zip(c0.2).map(|(b, a)| b - a),
        },
    })
}

/// A core NATS publisher speaking the client protocol itself: `PUB` frames
/// written a chunk at a time on one TCP connection. It costs the shared
/// cores far less than a general client's per-message path (the way
/// `nats bench` publishes), so more of them are left to the subscriber.
struct RawPublisher {
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// PINGs from the server not answered yet.
    pings: Arc<AtomicU64>,
    /// The server's `-ERR`, once it sent one.
    error: Arc<std::sync::Mutex<Option<String>>>,
}

impl RawPublisher {
    async fn connect(url: &str) -> anyhow::Result<RawPublisher> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let addr = url.strip_prefix("nats://").unwrap_or(url);
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, mut writer) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let info = lines.next_line().await?.unwrap_or_default();
        anyhow::ensure!(
            info.starts_with("INFO "),
            "{addr} is not a NATS server: {info:?}"
        );
        writer
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"tally-bench\"}\r\nPING\r\n")
            .await?;
        let reply = lines.next_line().await?.unwrap_or_default();
        anyhow::ensure!(reply == "PONG", "NATS refused the connection: {reply}");
        let pings = Arc::new(AtomicU64::new(0));
        let error = Arc::new(std::sync::Mutex::new(None));
        let (p, e) = (pings.clone(), error.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "PING" {
                    p.fetch_add(1, Ordering::Relaxed);
                } else if line.starts_with("-ERR") {
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
                }
            }
        });
        Ok(RawPublisher {
            writer,
            pings,
            error,
        })
    }

    /// Publishes until `stop`, `rate / publishers` events per second (or
    /// as fast as the connection takes them), ids taken from `next`.
    async fn run(
        mut self,
        next: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        rate: Option<u64>,
        publishers: usize,
    ) -> anyhow::Result<()> {
        use std::io::Write;
        use tokio::io::AsyncWriteExt;
        let mut frames = Vec::with_capacity(CHUNK as usize * 400);
        let (start, mut sent) = (Instant::now(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            if let Some(e) = self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                anyhow::bail!("nats-server: {e}");
            }
            let due = due(rate, publishers, start.elapsed(), sent);
            if due <= sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let n = (due - sent).min(CHUNK);
            let first = next.fetch_add(n, Ordering::Relaxed);
            frames.clear();
            for _ in 0..self.pings.swap(0, Ordering::Relaxed) {
                frames.extend_from_slice(b"PONG\r\n");
            }
            for event in crate::runner::body(first, n as usize).lines() {
                write!(frames, "PUB usage.llm {}\r\n", event.len())?;
                frames.extend_from_slice(event.as_bytes());
                frames.extend_from_slice(b"\r\n");
            }
            self.writer.write_all(&frames).await?;
            sent += n;
        }
        self.writer.flush().await?;
        Ok(())
    }
}
