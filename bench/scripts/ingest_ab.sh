#!/usr/bin/env bash
# Ingest, A/B: two builds of tally in one loop, runs alternating, 3 each,
# 15 s measured after 3 s of warm-up:
#   grpc-vm-closed  gRPC VM batches, closed loop (server CPU per metric)
#   grpc-vm-200k    gRPC VM batches at 200,000 metrics/s (p99)
#   http-llm-100k   HTTP NDJSON usage.llm at 100,000 events/s (CPU per event)
#   nats-core-300k  core NATS usage.llm at 300,000 events/s offered, a fresh
#                   nats-server each run (stored/s and lost)
#
# Usage: bench/scripts/ingest_ab.sh BASE_DIR NEW_DIR
#   each DIR holds a release `tally`; NEW_DIR's `tally-bench` drives both.
#   OUT (default /tmp/ingest-ab) keeps the reports; ingest_ab_summary.py
#   prints the medians. Needs nats-server on the PATH.
#   RUNS (default 3) runs of each build; ONLY (a scenario name above) runs
#   that scenario alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$1 NEW=$2
OUT=${OUT:-/tmp/ingest-ab}
mkdir -p "$OUT"
BENCH=$NEW/tally-bench
NATS_PORT=4333

RUNS=${RUNS:-3}
ONLY=${ONLY:-}
for i in $(seq "$RUNS"); do
  for v in base new; do
    [ $v = base ] && BIN=$BASE || BIN=$NEW
    run() {
      local name=$1
      shift
      if [ -n "$ONLY" ] && [ "$ONLY" != "$name" ]; then
        return
      fi
      # The run before left files to write back and delete: not this
      # run's disk time.
      sync
      sleep 2
      "$BENCH" --server-bin "$BIN/tally" --duration 15s --warmup 3s --quiet \
        --out "$OUT/$name.$v.$i.json" "$@" >/dev/null
    }
    run grpc-vm-closed --scenario grpc-vm --concurrency 8 --batch 600 --vms 1000
    run grpc-vm-200k --scenario grpc-vm --concurrency 8 --batch 600 --vms 1000 --rate 200000
    run http-llm-100k --scenario http-llm --concurrency 8 --batch 500 --rate 100000
    if [ -n "$ONLY" ] && [ "$ONLY" != nats-core-300k ]; then
      continue
    fi
    NATS_DIR=$(mktemp -d)
    nats-server -a 127.0.0.1 -p $NATS_PORT -js -sd "$NATS_DIR" >/dev/null 2>&1 &
    NATS_PID=$!
    sleep 0.5
    run nats-core-300k --scenario nats-core-llm --nats nats://127.0.0.1:$NATS_PORT \
      --concurrency 1 --rate 300000
    kill $NATS_PID; wait $NATS_PID 2>/dev/null || true
    rm -rf "$NATS_DIR"
  done
done
