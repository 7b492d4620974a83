//! tally's plan numbers against Claude Code Usage Monitor's on the same
//! logs: 60 Claude Code messages of the last three hours
//! (claude-sonnet-4-20250514, heavy cache reads), read by `claude-monitor
//! --once --output json` (4.0.0, pinned, installed by scripts/test.sh) and
//! by `tally collect claude-code`; the active block's tokens toward the
//! limit, percentage, reset time, cost and messages must agree.

mod common;

use std::process::Command;

use chrono::{SecondsFormat, Utc};
use common::{Rng, Tally};
use serde_json::{json, Value};

fn monitor() -> String {
    match std::env::var("TALLY_TEST_CLAUDE_MONITOR") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "TALLY_TEST_CLAUDE_MONITOR is not set: run ./scripts/test.sh, which installs claude-monitor==4.0.0"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_numbers_agree_with_claude_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let projects = dir.path().join("home/.claude/projects/-home-dev-app");
    std::fs::create_dir_all(&projects).unwrap();
    let mut rng = Rng::from_time();
    let now = Utc::now();
    let mut lines = Vec::new();
    for i in 0..60 {
        let at = now - chrono::Duration::seconds(175 * 60 - i * 170);
        let usage = json!({
            "input_tokens": 1 + rng.below(1500), "output_tokens": 200 + rng.below(2000),
            "cache_creation_input_tokens": rng.below(3000), "cache_read_input_tokens": 10_000 + rng.below(30_000)});
        lines.push(
            json!({"type": "assistant", "sessionId": "s-1", "cwd": "/home/dev/app", "version": "1.0.80",
                "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true), "requestId": format!("req_{i}"),
                "uuid": format!("u-{i}"), "message": {"id": format!("msg_{i}"), "type": "message",
                "role": "assistant", "model": "claude-sonnet-4-20250514", "content": [], "usage": usage}})
            .to_string(),
        );
    }
    std::fs::write(projects.join("s-1.jsonl"), lines.join("\n") + "\n").unwrap();
    let root = dir.path().join("home/.claude/projects");

    let out = Command::new(monitor())
        .args([
            "--once",
            "--output",
            "json",
            "--plan",
            "max20",
            "--timezone",
            "UTC",
            "--data-paths",
        ])
        .arg(&root)
        .env("HOME", dir.path().join("home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let five = &theirs["limits"]["five_hour"];

    let t = Tally::start(&dir.path().join("data"), &["--no-sampler"]).await;
    let collected = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["collect", "claude-code", "--dir"])
        .arg(&root)
        .args(["--server", &t.url(""), "--tenant", "dev", "--state"])
        .arg(dir.path().join("state.json"))
        .output()
        .unwrap();
    assert!(
        collected.status.success(),
        "{}",
        String::from_utf8_lossy(&collected.stderr)
    );
    let r = reqwest::get(t.url("/api/usage/stats?plan=max20&microdao_id=dev"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ours: Value = r.json().await.unwrap();

    let context = format!("monitor: {five:#} {:#}\ntally: {ours:#}", theirs["local"]);
    assert_eq!(
        ours["totals"]["tokens_toward_limit"], five["tokens_used"],
        "{context}"
    );
    let pct = ours["totals"]["token_percentage"].as_f64().unwrap();
    // The monitor rounds to one decimal.
    assert!(
        (pct - five["used_percentage"].as_f64().unwrap()).abs() <= 0.05 + 1e-9,
        "{context}"
    );
    assert_eq!(
        ours["predictions"]["limit_resets_at"].as_i64().unwrap(),
        five["resets_at_epoch"].as_i64().unwrap() * 1000,
        "{context}"
    );
    let cur = &ours["current_session"];
    let (a, b) = (
        cur["cost_usd"].as_f64().unwrap(),
        theirs["local"]["cost_usd"].as_f64().unwrap(),
    );
    // The monitor rounds each message's cost to six decimals before adding.
    assert!(
        a > 0.0 && (a - b).abs() <= 60.0 * 5e-7,
        "{a} vs {b}\n{context}"
    );
    assert_eq!(
        cur["sent_messages_count"], theirs["local"]["sent_messages"],
        "{context}"
    );
    assert_eq!(
        cur["token_counts"]["total_tokens"], theirs["local"]["tokens"]["total_tokens"],
        "{context}"
    );
}
