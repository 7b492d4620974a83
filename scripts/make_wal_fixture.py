#!/usr/bin/env python3
"""Writes WAL segments with a given tally binary, for replay tests of later
releases: tests/fixtures/<name>/wal/ and what was sent, in sent.json.

    python3 scripts/make_wal_fixture.py ./target/release/tally tests/fixtures/wal_v1

The server runs with a flush interval of an hour, receives VM samples over
Connect JSON and usage.llm events as NDJSON (with copies and one bad event),
and is killed with SIGKILL: every acknowledged record is in the WAL alone.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

binary, out = sys.argv[1], sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, ctype):
    req = urllib.request.Request(url, data=body.encode(), headers={"content-type": ctype})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


BASE = 1_764_000_000  # 2025-11-24T16:00:00Z, seconds
vm_batches = []
for vm, customer, n, step in [("vm-a", "cust-1", 50, 97), ("vm-b", "cust-2", 30, 151)]:
    samples = [
        {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE + i * step)) + ".250Z",
            "cpu_time_nanos": (i + 1) * 1_000_000_007,
            "memory_usage_bytes": 512 * 1024 * 1024 + i,
            "disk_read_bytes": i * 4096,
            "disk_write_bytes": i * 8192,
            "network_rx_bytes": i * 1500,
            "network_tx_bytes": i * 700,
        }
        for i in range(n)
    ]
    vm_batches.append({"vm_id": vm, "customer_id": customer, "metrics": samples})
# A resend of the first batch's first ten samples: duplicates.
vm_batches.append({"vm_id": "vm-a", "customer_id": "cust-1", "metrics": vm_batches[0]["metrics"][:10]})

llm = []
for i in range(40):
    llm.append({
        "event_id": f"evt-{i}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE + i * 211)),
        "actor_id": f"user:{i % 3}", "actor_type": "human", "agent_id": f"agent:{i % 2}",
        "microdao_id": "microdao:7", "model": ["gpt-4.1-mini", "claude-sonnet-4"][i % 2],
        "provider": ["openai", "anthropic"][i % 2],
        "prompt_tokens": 100 + i, "completion_tokens": 10 + 2 * i, "total_tokens": 110 + 3 * i,
        "latency_ms": 900 + i, "success": i % 7 != 0,
    })
copies = llm[:5]
bad = dict(llm[0], event_id="evt-bad", prompt_tokens=-1)

with tempfile.TemporaryDirectory() as data:
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--data", data, "--listen", f"127.0.0.1:{port}",
                             "--flush-interval", "1h"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health")
            break
        except Exception:
            time.sleep(0.05)
    answers = []
    for b in vm_batches:
        answers.append(post(url + "/billing.v1.BillingService/SendMetricsBatch", json.dumps(b), "application/json"))
    ndjson = lambda evs: "".join(json.dumps(e) + "\n" for e in evs)
    answers.append(post(url + "/v1/events/usage.llm", ndjson(llm), "application/x-ndjson"))
    answers.append(post(url + "/v1/events/usage.llm", ndjson(copies + [bad]), "application/x-ndjson"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.makedirs(out, exist_ok=True)
    shutil.rmtree(os.path.join(out, "wal"), ignore_errors=True)
    shutil.copytree(os.path.join(data, "_tally", "wal"), os.path.join(out, "wal"))
    parquet = [f for _, _, fs in os.walk(data) for f in fs if f.endswith(".parquet")]
    assert not parquet, f"the server flushed: {parquet}"
with open(os.path.join(out, "sent.json"), "w") as f:
    json.dump({"vm_batches": vm_batches, "llm_requests": [llm, copies + [bad]], "answers": answers}, f, indent=1)
print(json.dumps(answers))
