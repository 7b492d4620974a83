//! A tally server started by the bench, and what it cost.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

pub enum Target {
    Running(String),
    Spawned(Box<Spawned>),
}

impl Target {
    pub fn url(&self) -> &str {
        match self {
            Target::Running(u) => u,
            Target::Spawned(s) => &s.url,
        }
    }

    /// The server's process, when it runs here.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Target::Running(_) => None,
            Target::Spawned(s) => s.pid(),
        }
    }
}

pub struct Spawned {
    child: Child,
    pub url: String,
    data: tempfile::TempDir,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStats {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    pub parquet_bytes: u64,
    pub bytes_per_record: f64,
}

impl Spawned {
    pub async fn start(bin: &Path, extra: &[String]) -> anyhow::Result<Spawned> {
        Self::start_in(
            bin,
            extra,
            tempfile::tempdir()?,
            "http",
            &reqwest::Client::new(),
        )
        .await
    }

    /// Starts on `data` (its `data` folder), served as `scheme`; `client`
    /// waits for `/health`.
    pub async fn start_in(
        bin: &Path,
        extra: &[String],
        data: tempfile::TempDir,
        scheme: &str,
        client: &reqwest::Client,
    ) -> anyhow::Result<Spawned> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("{scheme}://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{url}/health")).send().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Spawned { child, url, data })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server with SIGTERM (it flushes everything) and measures.
    pub async fn stop(mut self, records: u64) -> anyhow::Result<ServerStats> {
        let pid = self.child.id().context("server already exited")?;
        let (cpu_seconds, peak_rss_mib) = proc_usage(pid)?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exit = self.child.wait().await?;
        anyhow::ensure!(exit.success(), "server exited with {exit}");
        let data = self.data.path().join("data");
        let parquet_bytes = dir_size(&data.join("usage_llm")) + dir_size(&data.join("vm_metrics"));
        Ok(ServerStats {
            cpu_seconds,
            peak_rss_mib,
            parquet_bytes,
            bytes_per_record: parquet_bytes as f64 / records.max(1) as f64,
        })
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(proc_usage(pid)?.0)
}

/// CPU seconds (user + system) and peak RSS of a process, from /proc.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after comm.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Ok((ticks / hz, hwm_kib / 1024.0))
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// The server at one moment of a run (`--timeline`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Moment {
    pub seconds: f64,
    /// Resident memory (VmRSS), when the process is known.
    pub rss_mib: Option<f64>,
    pub compaction_memory_mib: Option<f64>,
    pub compaction_backlog_hours: Option<f64>,
    pub compaction_rows_per_second: Option<f64>,
    /// Hours of `vm_metrics` compacted since the server started.
    pub vm_compactions: Option<f64>,
    /// Hours of every dataset compacted since the server started.
    pub compactions: Option<f64>,
    /// The slowest acknowledgement since the moment before, ms.
    pub slowest_ack_ms: Option<f64>,
}

/// Samples the server's RSS and its compactor's metrics.
pub async fn sample(http: &reqwest::Client, base: &str, pid: Option<u32>, at: Duration) -> Moment {
    let rss_mib = pid.and_then(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(kib / 1024.0)
    });
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let metric = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    };
    Moment {
        seconds: at.as_secs_f64(),
        rss_mib,
        compaction_memory_mib: metric("tally_compaction_memory_bytes").map(|b| b / 1048576.0),
        compaction_backlog_hours: metric("tally_compaction_backlog_hours"),
        compaction_rows_per_second: metric("tally_compaction_rows_per_second"),
        vm_compactions: metric("tally_compactions_total{dataset=\"vm_metrics\"}"),
        compactions: Some(
            text.lines()
                .filter(|l| l.starts_with("tally_compactions_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        ),
        slowest_ack_ms: None,
    }
}
