//! `tally collect claude-code|codex`: reads a coding agent's local session
//! logs and sends each model call to a tally server as a `usage.llm` event.
//!
//! - `claude_code.rs` and `codex.rs` turn one log line into an event (or a
//!   reason to skip it);
//! - `state.rs` remembers, per file, how far it was read and sent;
//! - this file finds the files, reads them from where it stopped, sends in
//!   batches with retries, and follows them with `--follow`.
//!
//! A file's offset moves only past lines whose events the server
//! acknowledged, so a crash resends at most one batch, and the server's
//! dedup (the event id comes from the log) counts it once. The copies of a
//! streamed message are contiguous lines with one id: the last copy is
//! sent, and the message at the end of a file still being written is held
//! until the file settles.

pub mod claude_code;
pub mod codex;
pub mod format;
pub mod state;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use format::{home, Format, Line, Origin};
use state::{FileState, State};

#[derive(Debug, Args)]
pub struct CollectArgs {
    #[command(subcommand)]
    pub agent: Agent,
}

#[derive(Debug, Subcommand)]
pub enum Agent {
    /// Claude Code's project logs (~/.claude/projects/**/*.jsonl and
    /// $CLAUDE_CONFIG_DIR/projects for each entry of CLAUDE_CONFIG_DIR).
    ClaudeCode(Common),
    /// Codex CLI's session logs (~/.codex/sessions/**/*.jsonl), their
    /// token_count events.
    Codex(Common),
}

#[derive(Debug, Args, Clone)]
pub struct Common {
    /// A log directory to read (repeatable). [default: the agent's own]
    #[arg(long)]
    pub dir: Vec<PathBuf>,
    /// The tally server, e.g. http://127.0.0.1:8081.
    #[arg(long, env = "TALLY_SERVER")]
    pub server: String,
    /// An ingest token.
    #[arg(long, env = "TALLY_TOKEN")]
    pub token: Option<String>,
    /// The tenant (`microdao_id`) of the events. [default: the user name]
    #[arg(long)]
    pub tenant: Option<String>,
    /// This machine's name in the events (`actor_id` is user@machine).
    /// [default: the host name]
    #[arg(long)]
    pub machine: Option<String>,
    /// Keep reading new lines as they are written.
    #[arg(long)]
    pub follow: bool,
    /// Where to remember how far each file was read.
    /// [default: ~/.local/state/tally/collect-<agent>.json]
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Events a request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// Counts of one pass, printed as JSON when the command ends.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub files: usize,
    pub lines: u64,
    pub events: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Lines that are not usage, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Bytes at the ends of files not read yet (an unfinished last line).
    pub held_bytes: u64,
}

const SETTLE: Duration = Duration::from_secs(3);

pub async fn run(args: CollectArgs) -> anyhow::Result<()> {
    let (format, common): (Box<dyn Format>, Common) = match args.agent {
        Agent::ClaudeCode(c) => (Box::new(claude_code::ClaudeCode), c),
        Agent::Codex(c) => (Box::new(codex::Codex), c),
    };
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "user".into());
    let origin = Origin {
        tenant: common.tenant.clone().unwrap_or_else(|| user.clone()),
        machine: common
            .machine
            .clone()
            .unwrap_or_else(crate::config::default_node_id),
        user,
    };
    let dirs = if common.dir.is_empty() {
        format.default_dirs()
    } else {
        common.dir.clone()
    };
    let state_path = common.state.clone().unwrap_or_else(|| {
        home()
            .join(".local/state/tally")
            .join(format!("collect-{}.json", format.name()))
    });
    let mut state = State::load(&state_path)?;
    let sender = Sender::new(&common)?;
    let mut total = Report::default();
    loop {
        let report = pass(
            &*format,
            &dirs,
            &origin,
            &mut state,
            &state_path,
            &sender,
            &common,
        )
        .await?;
        total.add(report);
        if !common.follow {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("{}", serde_json::to_string(&total)?);
    Ok(())
}

impl Report {
    fn add(&mut self, o: Report) {
        self.files = self.files.max(o.files);
        self.lines += o.lines;
        self.events += o.events;
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        for (k, v) in o.skipped {
            *self.skipped.entry(k).or_default() += v;
        }
        self.held_bytes = o.held_bytes;
    }
}

/// Every `*.jsonl` under `dirs`, sorted.
fn find_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) if p.extension().is_some_and(|x| x == "jsonl") => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// One pass over every file: what is new is read and sent.
async fn pass(
    format: &dyn Format,
    dirs: &[PathBuf],
    origin: &Origin,
    state: &mut State,
    state_path: &Path,
    sender: &Sender,
    common: &Common,
) -> anyhow::Result<Report> {
    let files = find_files(dirs);
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let todo: u64 = files
        .iter()
        .map(|f| {
            let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            len.saturating_sub(state.files.get(&key(f)).map_or(0, |s| s.offset))
        })
        .sum();
    let mut progress = Progress::new(todo);
    for file in files {
        let mut fs = state.files.get(&key(&file)).cloned().unwrap_or_default();
        let meta =
            std::fs::metadata(&file).with_context(|| format!("reading {}", file.display()))?;
        if meta.len() < fs.offset {
            // Truncated or replaced: read it again (dedup absorbs repeats).
            fs = FileState::default();
        }
        if meta.len() == fs.offset {
            continue;
        }
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age >= SETTLE)
            || !common.follow;
        read_file(
            format,
            &file,
            origin,
            &mut fs,
            settled,
            sender,
            common.batch,
            &mut report,
            &mut progress,
            &mut |fs| {
                state.files.insert(key(&file), fs.clone());
                state.store(state_path)
            },
        )
        .await?;
    }
    progress.done();
    Ok(report)
}

fn key(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Reads `file` from `fs.offset`, sends its events in batches, and calls
/// `commit` with the new state after each acknowledged batch.
#[allow(clippy::too_many_arguments)]
async fn read_file(
    format: &dyn Format,
    file: &Path,
    origin: &Origin,
    fs: &mut FileState,
    settled: bool,
    sender: &Sender,
    batch_size: usize,
    report: &mut Report,
    progress: &mut Progress,
    commit: &mut dyn FnMut(&FileState) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(fs.offset))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut pos = fs.offset;
    let mut ctx = fs.context.clone();
    let mut batch: Vec<Value> = Vec::new();
    let mut inflight: Option<Inflight> = None;
    // The newest message: its later copies replace it; sent once another
    // message follows (or the file is done).
    let mut pending: Option<(String, Value, u64)> = None;
    let mut line = String::new();
    loop {
        line.clear();
        let start = pos;
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        if !line.ends_with('\n') {
            // An unfinished last line: read it when it is whole.
            report.held_bytes += n as u64;
            break;
        }
        pos += n as u64;
        progress.advance(n as u64);
        report.lines += 1;
        match format.parse(line.trim_end(), origin, file, &mut ctx) {
            Line::Skip(why) => *report.skipped.entry(why.to_string()).or_default() += 1,
            Line::Usage { id, event } => match &mut pending {
                Some((pid, pevent, _)) if *pid == id => *pevent = event,
                _ => {
                    if let Some((_, e, _)) = pending.take() {
                        batch.push(e);
                    }
                    pending = Some((id, event, start));
                }
            },
        }
        if batch.len() >= batch_size {
            // One batch in flight while the next is read.
            let upto = pending.as_ref().map_or(pos, |p| p.2);
            if let Some(prev) = inflight.take() {
                settle(prev, report, fs, commit).await?;
            }
            inflight = Some(Inflight::send(sender, &mut batch, upto, ctx.clone()));
        }
    }
    if let Some(prev) = inflight.take() {
        settle(prev, report, fs, commit).await?;
    }
    let upto = match pending.take() {
        Some((_, e, _)) if settled => {
            batch.push(e);
            pos
        }
        Some((_, _, first)) => first,
        None => pos,
    };
    if !batch.is_empty() {
        settle(
            Inflight::send(sender, &mut batch, upto, ctx),
            report,
            fs,
            commit,
        )
        .await?;
    } else if upto != fs.offset {
        fs.offset = upto;
        fs.context = ctx;
        commit(fs)?;
    }
    Ok(())
}

/// A batch sent and not acknowledged yet, and where the file stands once
/// it is.
struct Inflight {
    answer: tokio::task::JoinHandle<anyhow::Result<Value>>,
    events: u64,
    upto: u64,
    context: Value,
}

impl Inflight {
    fn send(sender: &Sender, batch: &mut Vec<Value>, upto: u64, context: Value) -> Inflight {
        let body: String = batch.iter().map(|e| format!("{e}\n")).collect();
        let events = batch.len() as u64;
        batch.clear();
        let sender = sender.clone();
        Inflight {
            answer: tokio::spawn(async move { sender.send(body).await }),
            events,
            upto,
            context,
        }
    }
}

/// Waits for a batch's answer, counts it, and moves the file's offset.
async fn settle(
    sent: Inflight,
    report: &mut Report,
    fs: &mut FileState,
    commit: &mut dyn FnMut(&FileState) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let answer = sent.answer.await??;
    report.events += sent.events;
    report.accepted += answer["accepted"].as_u64().unwrap_or(0);
    report.duplicates += answer["duplicates"].as_u64().unwrap_or(0);
    let rejected = answer["rejected"].as_array().map_or(0, Vec::len) as u64;
    if rejected > 0 {
        tracing::warn!(rejected, answer = %answer["rejected"], "the server rejected events");
    }
    report.rejected += rejected;
    fs.offset = sent.upto;
    fs.context = sent.context;
    commit(fs)
}

/// POSTs batches to `/v1/events/usage.llm`, retrying what may pass later.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Sender {
    fn new(c: &Common) -> anyhow::Result<Sender> {
        Ok(Sender {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            url: format!("{}/v1/events/usage.llm", c.server.trim_end_matches('/')),
            token: c.token.clone(),
        })
    }

    /// Retries 429, 5xx and connection errors with backoff (0.5 s doubling
    /// to 30 s) until the server answers; another answer is an error.
    async fn send(&self, body: String) -> anyhow::Result<Value> {
        let mut wait = Duration::from_millis(500);
        loop {
            let mut req = self.client.post(&self.url).body(body.clone());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let why = match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("{} answered {}", self.url, r.status())
                }
                Ok(r) => {
                    let status = r.status();
                    anyhow::bail!(
                        "{} answered {status}: {}",
                        self.url,
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(e) => format!("POST {}: {e}", self.url),
            };
            tracing::warn!(error = %why, retry_in = ?wait, "sending usage failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

/// A progress line on standard error for a large first import.
struct Progress {
    total: u64,
    done: u64,
    shown: Option<Instant>,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            done: 0,
            shown: None,
            on: total >= 32 << 20 && std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.on
            || self
                .shown
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.shown = Some(Instant::now());
        let pct = self.done as f64 * 100.0 / self.total.max(1) as f64;
        let bar = "#".repeat((pct / 5.0) as usize);
        eprint!("\r[{bar:<20}] {pct:5.1} % of {} MiB", self.total >> 20);
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.on && self.shown.is_some() {
            eprintln!();
        }
    }
}
