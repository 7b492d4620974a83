//! `tally collect` end to end: generated Claude Code and Codex log trees,
//! the real binary collecting into a real server; token totals per day and
//! model against sums the generator kept.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Rng, Tally};
use serde_json::{json, Value};

/// (day, model) → [input, output, cache creation, cache read].
type Totals = BTreeMap<(String, String), [i64; 4]>;

fn add(t: &mut Totals, ts: &str, model: &str, u: [i64; 4]) {
    let e = t
        .entry((ts[..10].to_string(), model.to_string()))
        .or_default();
    for i in 0..4 {
        e[i] += u[i];
    }
}

fn assistant(
    session: &str,
    cwd: &str,
    ts: &str,
    msg: &str,
    req: &str,
    model: &str,
    u: [i64; 4],
) -> String {
    json!({"parentUuid": null, "isSidechain": false, "userType": "external", "cwd": cwd,
        "sessionId": session, "version": "1.0.80", "type": "assistant", "uuid": format!("u-{msg}-{}", u[1]),
        "timestamp": ts, "requestId": req,
        "message": {"id": msg, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "ok"}],
            "usage": {"input_tokens": u[0], "output_tokens": u[1],
                "cache_creation_input_tokens": u[2], "cache_read_input_tokens": u[3]}}})
    .to_string()
}

/// A Claude Code tree: `sessions` sessions over two projects, each with
/// user lines, tool results, a summary, a broken line and a message
/// logged three times while streaming (its last copy counts).
fn claude_tree(
    root: &Path,
    rng: &mut Rng,
    tag: &str,
    sessions: usize,
    totals: &mut Totals,
) -> Vec<PathBuf> {
    let models = ["claude-sonnet-4-20250514", "claude-opus-4-20250514"];
    let mut files = Vec::new();
    for s in 0..sessions {
        let project = format!("proj-{}", s % 2);
        let cwd = format!("/home/dev/{project}");
        let dir = root.join(format!("-home-dev-{project}"));
        std::fs::create_dir_all(&dir).unwrap();
        let session = format!("{tag}-session-{s}");
        let mut lines =
            vec![json!({"type": "summary", "summary": "work", "leafUuid": "x"}).to_string()];
        for m in 0..20 {
            let day = 20 + (m % 2);
            let ts = format!("2026-11-{day}T1{}:{:02}:00.000Z", m % 10, m);
            let model = models[rng.below(2) as usize];
            lines.push(
                json!({"type": "user", "sessionId": session, "timestamp": ts, "cwd": cwd,
                "message": {"role": "user", "content": "do it"}})
                .to_string(),
            );
            let u = [
                rng.below(50) as i64 + 1,
                rng.below(900) as i64 + 1,
                rng.below(5000) as i64,
                rng.below(40000) as i64,
            ];
            let msg = format!("msg_{tag}_{s}_{m}");
            // The streamed message: three copies, output growing; the last
            // counts.
            let outputs = if m == 7 {
                vec![3, u[1] / 2, u[1]]
            } else {
                vec![u[1]]
            };
            for out in outputs {
                lines.push(assistant(
                    &session,
                    &cwd,
                    &ts,
                    &msg,
                    &format!("req_{msg}"),
                    model,
                    [u[0], out, u[2], u[3]],
                ));
            }
            add(totals, &ts, model, u);
            lines.push(json!({"type": "user", "sessionId": session, "timestamp": ts,
                "message": {"role": "user", "content": [{"type": "tool_result", "content": "done"}]}}).to_string());
        }
        lines.push("{\"type\": \"assistant\", broken".to_string());
        let path = dir.join(format!("{session}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        files.push(path);
    }
    files
}

fn collect(agent: &str, dir: &Path, t: &Tally, state: &Path, machine: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["collect", agent, "--dir"])
        .arg(dir)
        .args([
            "--server",
            &t.url(""),
            "--tenant",
            "dev-team",
            "--machine",
            machine,
            "--batch",
            "7",
            "--state",
        ])
        .arg(state)
        .env("USER", "dev")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Token totals per day and model of one agent, as stored.
async fn stored(t: &Tally, agent: &str) -> Totals {
    let rows = t
        .sql(&format!(
            "SELECT CAST(timestamp AS VARCHAR) AS ts, model, prompt_tokens AS i, completion_tokens AS o, \
             COALESCE(cache_creation_tokens, 0) AS c, COALESCE(cache_read_tokens, 0) AS r \
             FROM usage_llm WHERE agent_id = '{agent}'"
        ))
        .await;
    let mut out = Totals::new();
    for r in rows {
        let n = |k: &str| r[k].as_i64().unwrap();
        add(
            &mut out,
            r["ts"].as_str().unwrap(),
            r["model"].as_str().unwrap(),
            [n("i"), n("o"), n("c"), n("r")],
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_logs_from_two_machines_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &["--no-sampler"]).await;
    let mut rng = Rng::from_time();
    let mut want = Totals::new();
    let tree1 = dir.path().join("m1/projects");
    let files = claude_tree(&tree1, &mut rng, "a", 3, &mut want);
    // A message being written: its last line is not whole yet.
    let cut = assistant(
        "a-session-0",
        "/home/dev/proj-0",
        "2026-11-21T18:00:00.000Z",
        "msg_cut",
        "req_cut",
        "claude-sonnet-4-20250514",
        [5, 6, 7, 8],
    );
    let (head, tail) = cut.split_at(cut.len() / 2);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&files[0])
        .unwrap()
        .write_all(head.as_bytes())
        .unwrap();

    let state1 = dir.path().join("m1-state.json");
    let r = collect("claude-code", &tree1, &t, &state1, "m1");
    assert_eq!(r["events"], 60, "{r}");
    assert_eq!(r["accepted"], 60, "{r}");
    assert!(r["held_bytes"].as_u64().unwrap() > 0, "{r}");
    let skipped = &r["skipped"];
    assert_eq!(skipped["not JSON"], 3, "{r}");
    assert_eq!(skipped["not an assistant message"], 3 + 3 * 40, "{r}");
    assert_eq!(stored(&t, "claude-code").await, want);

    // Nothing new: nothing sent.
    let r = collect("claude-code", &tree1, &t, &state1, "m1");
    assert_eq!(r["events"], 0, "{r}");

    // The cut line finished and one more message: only they are sent.
    let more = assistant(
        "a-session-0",
        "/home/dev/proj-0",
        "2026-11-21T18:05:00.000Z",
        "msg_more",
        "req_more",
        "claude-opus-4-20250514",
        [1, 2, 3, 4],
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&files[0])
        .unwrap()
        .write_all(format!("{tail}\n{more}\n").as_bytes())
        .unwrap();
    add(
        &mut want,
        "2026-11-21",
        "claude-sonnet-4-20250514",
        [5, 6, 7, 8],
    );
    add(
        &mut want,
        "2026-11-21",
        "claude-opus-4-20250514",
        [1, 2, 3, 4],
    );
    let r = collect("claude-code", &tree1, &t, &state1, "m1");
    assert_eq!(
        (r["events"].as_u64(), r["accepted"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(stored(&t, "claude-code").await, want);

    // A second machine adds up; the first one's tree sent again (its state
    // lost) counts once.
    let tree2 = dir.path().join("m2/projects");
    claude_tree(&tree2, &mut rng, "b", 2, &mut want);
    let r = collect(
        "claude-code",
        &tree2,
        &t,
        &dir.path().join("m2-state.json"),
        "m2",
    );
    assert_eq!(r["accepted"], 40, "{r}");
    let r = collect(
        "claude-code",
        &tree1,
        &t,
        &dir.path().join("lost-state.json"),
        "m1",
    );
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(62)),
        "{r}"
    );
    assert_eq!(stored(&t, "claude-code").await, want);

    // Per machine in SQL.
    let rows = t
        .sql("SELECT actor_id, COUNT(*) AS n FROM usage_llm WHERE agent_id = 'claude-code' GROUP BY actor_id ORDER BY actor_id")
        .await;
    assert_eq!(
        rows,
        vec![
            json!({"actor_id": "dev@m1", "n": 62}),
            json!({"actor_id": "dev@m2", "n": 40})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_token_counts_are_collected_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tally::start(&dir.path().join("data"), &["--no-sampler"]).await;
    let mut rng = Rng::from_time();
    let mut want = Totals::new();
    let root = dir.path().join("sessions");
    let day_dir = root.join("2026/11/20");
    std::fs::create_dir_all(&day_dir).unwrap();
    for s in 0..2 {
        let model = ["gpt-5-codex", "gpt-5"][s];
        let session = format!("0199-session-{s}");
        let mut lines = vec![
            json!({"timestamp": "2026-11-20T09:00:00.000Z", "type": "session_meta",
                "payload": {"id": session, "cwd": "/home/dev/app", "cli_version": "0.46.0"}})
            .to_string(),
            json!({"timestamp": "2026-11-20T09:00:01.000Z", "type": "turn_context",
                "payload": {"cwd": "/home/dev/app", "model": model}})
            .to_string(),
            json!({"timestamp": "2026-11-20T09:00:02.000Z", "type": "response_item",
                "payload": {"type": "message", "role": "user", "content": []}})
            .to_string(),
            json!({"timestamp": "2026-11-20T09:00:02.500Z", "type": "event_msg",
                "payload": {"type": "token_count", "info": null}})
            .to_string(),
        ];
        let mut total = 0i64;
        for k in 0..15 {
            let ts = format!("2026-11-2{}T10:{:02}:00.000Z", k % 2, k);
            let (input, output) = (rng.below(20000) as i64 + 100, rng.below(3000) as i64 + 1);
            let cached = rng.below(input as u64) as i64;
            total += input + output;
            let last = json!({"input_tokens": input, "cached_input_tokens": cached, "output_tokens": output,
                "reasoning_output_tokens": output / 3, "total_tokens": input + output});
            let count =
                json!({"timestamp": ts, "type": "event_msg", "payload": {"type": "token_count",
                "info": {"total_token_usage": {"total_tokens": total}, "last_token_usage": last}}})
                .to_string();
            lines.push(count.clone());
            if k == 4 {
                // Repeated when only the rate limits changed: counts once.
                lines.push(count);
            }
            add(&mut want, &ts, model, [input - cached, output, 0, cached]);
        }
        std::fs::write(
            day_dir.join(format!("rollout-{session}.jsonl")),
            lines.join("\n") + "\n",
        )
        .unwrap();
    }
    let state = dir.path().join("codex-state.json");
    let r = collect("codex", &root, &t, &state, "m1");
    assert_eq!(
        (r["events"].as_u64(), r["accepted"].as_u64()),
        (Some(30), Some(30)),
        "{r}"
    );
    assert_eq!(r["skipped"]["repeated token count"], 2, "{r}");
    assert_eq!(stored(&t, "codex").await, want);
    let r = collect("codex", &root, &t, &state, "m1");
    assert_eq!(r["events"], 0, "{r}");
}
