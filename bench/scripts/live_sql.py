#!/usr/bin/env python3
"""SQL over the live buffer: ROWS usage.llm events held unflushed, then
`count(*)` and `sum` over them, timed.

Usage: bench/scripts/live_sql.py TALLY_BINARY [ROWS] [RUNS]

Starts `tally serve` with the flush held back (`--flush-interval 1h`,
row and byte bounds above ROWS), posts ROWS events over HTTP NDJSON in
batches of 5,000 (every one acknowledged, so durable and buffered), and
times RUNS requests of each query after one warm-up. It also reports the
server's RSS before and after the load, and the /metrics gauges of the
buffer when the build has them. Prints one JSON object.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
ROWS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
PORT = int(os.environ.get("PORT", "18093"))
URL = f"http://127.0.0.1:{PORT}"
BATCH = 5_000
MODELS = ["gpt-4.1-mini", "claude-sonnet-4", "gpt-4o"]
QUERIES = {
    "count": "SELECT count(*) AS n FROM usage_llm",
    "sum": "SELECT sum(total_tokens) AS tokens, count(*) AS n FROM usage_llm",
}


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return None


def post(path, body, content_type="application/x-ndjson"):
    req = urllib.request.Request(URL + path, data=body, method="POST")
    req.add_header("content-type", content_type)
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def main():
    data = tempfile.mkdtemp(prefix="live-sql-")
    args = [BIN, "serve", "--data", f"{data}/data", "--listen", f"127.0.0.1:{PORT}",
            "--no-sampler", "--flush-interval", "1h", "--flush-rows", str(ROWS * 2),
            "--flush-bytes", str(64 << 30), "--max-queued-rows", str(ROWS * 2)]
    log = open(f"{data}/tally.log", "w")
    server = subprocess.Popen(args, stderr=log)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"tally did not start: see {data}/tally.log")
            try:
                urllib.request.urlopen(URL + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        rss_before = rss_mib(server.pid)
        hour = time.strftime("%Y-%m-%dT%H", time.gmtime())
        expected_tokens = 0
        sent = 0
        load_started = time.time()
        while sent < ROWS:
            lines = []
            for i in range(sent, min(sent + BATCH, ROWS)):
                p, c = (i * 31) % 4000, (i * 7) % 900
                expected_tokens += p + c
                lines.append(json.dumps({
                    "event_id": f"live-{i}", "timestamp": f"{hour}:{(i // 60) % 60:02}:{i % 60:02}Z",
                    "actor_id": f"user:{i % 997}", "actor_type": "human",
                    "agent_id": f"agent:{i % 40}", "microdao_id": f"dao:{i % 12}",
                    "model": MODELS[i % 3], "provider": "openai",
                    "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                    "latency_ms": 100 + i % 500}))
            answer = json.loads(post("/v1/events/usage.llm", "\n".join(lines).encode()))
            assert answer["accepted"] == len(lines), answer
            sent += len(lines)
        load_seconds = time.time() - load_started
        rss_after = rss_mib(server.pid)
        report = {"rows": ROWS, "load_seconds": round(load_seconds, 1),
                  "rss_before_mib": round(rss_before), "rss_after_load_mib": round(rss_after),
                  "rss_per_row_bytes": round((rss_after - rss_before) * (1 << 20) / ROWS)}
        metrics = urllib.request.urlopen(URL + "/metrics").read().decode()
        for line in metrics.splitlines():
            if line.startswith("tally_buffer_") and 'dataset="usage_llm"' in line:
                report[line.split("{")[0]] = int(line.split()[-1])
        for name, sql in QUERIES.items():
            times = []
            answer = None
            for run in range(RUNS + 1):
                t0 = time.perf_counter()
                answer = json.loads(post("/v1/sql", sql.encode(), "text/plain"))
                if run > 0:
                    times.append((time.perf_counter() - t0) * 1000)
            assert answer[0]["n"] == ROWS, answer
            if name == "sum":
                assert answer[0]["tokens"] == expected_tokens, (answer, expected_tokens)
            report[f"{name}_p50_ms"] = round(statistics.median(times), 2)
            report[f"{name}_max_ms"] = round(max(times), 2)
        print(json.dumps(report))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        subprocess.run(["rm", "-rf", data])


main()
