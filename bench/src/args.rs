//! The command line of tally-bench: what to run and how hard.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `500ms`, `15s`, `5m`, `2h` (a bare number is seconds): the flags' durations.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("a duration is a number with a unit (ms, s, m, h), got {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("a duration's unit is ms, s, m or h, got {unit:?}")),
    }
}

/// Load-tests a tally server and reports throughput, acknowledgement latency
/// and what the server spent on it.
#[derive(Debug, Parser)]
#[command(name = "tally-bench", version, about)]
pub struct Args {
    /// What to send.
    #[arg(long, value_enum, default_value = "http-llm")]
    pub scenario: Scenario,

    /// A running server to target, e.g. http://127.0.0.1:8081.
    #[arg(long, conflicts_with = "server_bin")]
    pub target: Option<String>,

    /// Start this `tally` binary on a temporary data directory instead, and
    /// measure its CPU time, peak memory and bytes on disk.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,

    /// Measured time after the warm-up, e.g. 20s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load before measuring starts; not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Concurrent senders (closed loop) or in-flight cap (open loop).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Records per request (HTTP events, or VM samples per batch).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,

    /// VM scenarios: how many VMs the batches rotate over.
    #[arg(long, default_value_t = 1000)]
    pub vms: u64,

    /// Open loop: offered records per second. Latency then counts from each
    /// request's intended send time (no coordinated omission).
    #[arg(long)]
    pub rate: Option<u64>,

    /// VM scenarios: samples in one synthetic hour over all VMs (each VM's
    /// samples are 3600 s × vms / hour-rows apart). Unset: 100 ms apart.
    #[arg(long)]
    pub hour_rows: Option<u64>,

    /// Meters scenario: the hours from October 1st the events are spread
    /// over (default 720, the month; 1 puts them all in one hour).
    #[arg(long)]
    pub span_hours: Option<u64>,

    /// VM scenarios: the first record's number, to go on where a run
    /// before stopped (its `next_record`).
    #[arg(long, default_value_t = 0)]
    pub first_record: u64,

    /// Stop once this many records were sent (the warm-up's included).
    #[arg(long)]
    pub records: Option<u64>,

    /// Send a request the server refused for load (429, resource_exhausted,
    /// unavailable) again after 20 ms, until it is taken: every record
    /// numbered is stored.
    #[arg(long)]
    pub retry_refused: bool,

    /// A running --target's process id: its resident memory is sampled.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Every second: the server's RSS and the compactor's memory, backlog
    /// and passes from /metrics, into the report's timeline.
    #[arg(long)]
    pub timeline: bool,

    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// `ws-clients`: WebSocket clients to open on `/usage`.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,

    /// nats-jetstream-llm: publish with plain `PUB`s over the protocol (as
    /// nats-core-llm does), not with publish acks; the stream stores them
    /// all the same, and `lost` says whether it did.
    #[arg(long)]
    pub js_unacked: bool,

    /// NATS scenarios: the nats-server URL (tally is started with it).
    #[arg(long)]
    pub nats: Option<String>,

    /// `usage-summary`: events to load first.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,

    /// `usage-summary`: summary requests to time.
    #[arg(long, default_value_t = 50)]
    pub queries: usize,

    /// `usage-summary`: the PostgreSQL peer to load the same events into
    /// and ask the same summary (schema `tally_bench`, dropped and made
    /// anew). Unset or unreachable: the peer part is skipped, and the
    /// report says why.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// `history-*` and `meters`: `load` sends the month, `read` waits for
    /// compaction and times the reads, `query` times them at once.
    #[arg(long, default_value = "read")]
    pub phase: String,

    /// `budget-check`: budgets to create.
    #[arg(long, default_value_t = 10_000)]
    pub budgets: usize,

    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Run the scenario twice on fresh servers of --server-bin: plain, then
    /// over TLS with a bearer token on every request; report both and the
    /// ratio (http-llm, connect-proto-vm and connect-json-vm).
    #[arg(long, requires = "server_bin")]
    pub secure_ab: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `usage.llm` events as NDJSON over `POST /v1/events/usage.llm`.
    HttpLlm,
    /// VM metric batches over gRPC (HTTP/2, binary protobuf).
    GrpcVm,
    /// OTLP log records of Claude Code's `api_request` shape, one model
    /// call each, as protobuf over `POST /v1/logs`.
    OtlpHttpLogs,
    /// The same over OTLP/gRPC (the Logs service's Export).
    OtlpGrpcLogs,
    /// VM metric batches over Connect with binary protobuf.
    ConnectProtoVm,
    /// VM metric batches over Connect with JSON.
    ConnectJsonVm,
    /// `usage.llm` events over core NATS (needs --nats); the server is told
    /// to consume them. Measures the stored rate.
    NatsCoreLlm,
    /// `usage.llm` events published to a JetStream stream (needs --nats).
    NatsJetstreamLlm,
    /// The publisher of nats-core-llm with a subscriber that only counts in
    /// tally's place (needs --nats, no server): the most core NATS carries
    /// on this machine, for comparison with nats-core-llm.
    NatsCoreCeiling,
    /// Load --events LLM events over HTTP, then time /internal/usage/summary.
    UsageSummary,
    /// All of gRPC, Connect binary, Connect JSON (VM batches) and HTTP
    /// NDJSON (LLM events) at once, requests taking turns; errors are
    /// counted per protocol.
    Mixed,
    /// A month of VM samples (--events of them, --vms VMs) in October 2026;
    /// then the monthly bill of every customer and a customer's day.
    HistoryVm,
    /// A month of `usage.llm` events (--events) before now; then
    /// `/internal/usage/summary` over 720 and 24 hours.
    HistoryLlm,
    /// OpenMeter's API: two meters, --events CloudEvents over October 2026
    /// for 10,000 subjects (batches of 100); then three meter queries.
    Meters,
    /// Idle WebSocket clients on `/usage`: memory per client and the spread
    /// of each update's arrival across clients.
    WsClients,
    /// --budgets budgets and --events LLM events of this month, then
    /// --queries calls of /v1/budgets/check one at a time (latency), and the
    /// same checks on PostgreSQL with DATABASE_URL.
    BudgetCheck,
}
