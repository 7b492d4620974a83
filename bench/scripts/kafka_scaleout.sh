#!/usr/bin/env bash
# Edge → Kafka → writer throughput, with 1 and then 2 writers.
#
# Starts a Tansu broker (in-memory), N writers in one consumer group sharing a
# data directory, and one edge node (--relay-kafka). tally-bench loads the
# edge with `usage.llm` NDJSON for DURATION.
#
# MODE=live (default): the writers run during the load; the script then waits
# until they have durably accepted (WAL, fsync'd) every record the edge
# acknowledged. Reported: the edge's acknowledged records/s (client side,
# tally-bench) and end to end: records / (load start → last record in a writer).
#
# MODE=backlog: the load goes into Kafka with no writer running; then the
# writers start, and the drain rate is timed from their first accepted record
# to their last: what N writers consume, with nothing else using the CPU.
#
# Usage: [MODE=live|backlog] bench/scripts/kafka_scaleout.sh [TANSU_BIN] [WRITERS...]
#   TANSU_BIN defaults to `tansu` on PATH; WRITERS defaults to "1 2".
# Needs release builds: cargo build --release --workspace --bins
set -euo pipefail
cd "$(dirname "$0")/../.."

TANSU=${1:-tansu}
shift || true
WRITER_COUNTS=${*:-1 2}
DURATION=${DURATION:-20s}
CONCURRENCY=${CONCURRENCY:-16}
BATCH=${BATCH:-1000}
PARTITIONS=${PARTITIONS:-8}
TALLY=target/release/tally
BENCH=target/release/tally-bench
MODE=${MODE:-live}
OUT=${OUT:-target/kafka-scaleout}
mkdir -p "$OUT"

accepted() { # sum of usage_llm rows the writers accepted from Kafka
  local sum=0 port n
  for port in "$@"; do
    n=$(curl -s "http://127.0.0.1:$port/metrics" |
      awk '/^tally_records_accepted_total\{dataset="usage_llm",source="kafka"\}/ {print $2}')
    sum=$((sum + ${n:-0}))
  done
  echo "$sum"
}

cpu_ticks() { # user+system clock ticks of the given pids
  local sum=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    sum=$((sum + t))
  done
  echo "$sum"
}

assigned() { # partitions assigned to the writer on port $1
  curl -s "http://127.0.0.1:$1/health" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["components"]["kafka"]["assigned_partitions"])' 2>/dev/null || echo 0
}

for writers in $WRITER_COUNTS; do
  run="$OUT/writers-$writers"
  rm -rf "$run" && mkdir -p "$run"
  pids=()
  "$TANSU" broker --storage-engine memory://tansu/ \
    --listener-url tcp://127.0.0.1:19192 --advertised-listener-url tcp://127.0.0.1:19192 \
    >"$run/tansu.log" 2>&1 &
  pids+=($!)
  sleep 1
  # The relay's topic exists before anything produces to it (a broker that
  # creates topics on first use would pick its own partition count).
  "$TANSU" topic create tally.records --partitions "$PARTITIONS" \
    --broker tcp://127.0.0.1:19192 >/dev/null
  ports=()
  for i in $(seq 1 "$writers"); do ports+=($((18300 + i))); done
  writer_pids=()
  start_writers() {
    for i in $(seq 1 "$writers"); do
      "$TALLY" serve --data "$run/shared" --state-dir "$run/w$i" --node-id "w$i" \
        --listen "127.0.0.1:$((18300 + i))" --no-sampler --kafka 127.0.0.1:19192 \
        --kafka-partitions "$PARTITIONS" --max-queued-rows 2000000 \
        >"$run/w$i.log" 2>&1 &
      pids+=($!)
      writer_pids+=($!)
    done
    # Every writer holds partitions before timing starts.
    total_parts=$((PARTITIONS * 8))
    for _ in $(seq 1 600); do
      sum=0; all=1
      for port in "${ports[@]}"; do
        a=$(assigned "$port"); sum=$((sum + a)); [ "$a" -gt 0 ] || all=0
      done
      [ "$all" = 1 ] && [ "$sum" = "$total_parts" ] && break
      sleep 0.1
    done
  }
  if [ "$MODE" = live ]; then start_writers; fi
  "$TALLY" serve --data "$run/edge" --node-id edge --listen 127.0.0.1:18390 \
    --no-sampler --relay-kafka 127.0.0.1:19192 >"$run/edge.log" 2>&1 &
  pids+=($!)
  sleep 1

  start=$(date +%s.%N)
  "$BENCH" --scenario http-llm --target http://127.0.0.1:18390 --warmup 0s \
    --duration "$DURATION" --concurrency "$CONCURRENCY" --batch "$BATCH" \
    --out "$run/edge.json" >"$run/bench.txt"
  acked=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["records_acked"])' "$run/edge.json")
  first=0
  ticks0=0
  if [ "$MODE" = backlog ]; then
    # Writers join after the load: the group is formed before they consume.
    # Note: partitions are assigned only once all have joined, so the clock
    # starts at the first record accepted.
    start_writers
    while :; do
      first=$(accepted "${ports[@]}")
      [ "$first" -gt 0 ] && break
      sleep 0.02
    done
    start=$(date +%s.%N)
    ticks0=$(cpu_ticks "${writer_pids[@]}")
  fi
  while [ "$(accepted "${ports[@]}")" -lt "$acked" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  ticks=$(($(cpu_ticks "${writer_pids[@]}") - ticks0))
  python3 - "$MODE" "$writers" "$acked" "$first" "$start" "$end" "$run/edge.json" "$ticks" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
mode, writers, acked, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
start, end, path = float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
cpu = int(sys.argv[8]) / int(sys.argv[9])
edge = json.load(open(path))
print(json.dumps({
    "mode": mode,
    "writers": writers,
    "records_acked_by_edge": acked,
    "edge_records_per_sec": round(edge.get("records_per_second")),
    "seconds": round(end - start, 2),
    "records_per_sec": round((acked - first) / (end - start)),
    # Writers' CPU while draining (backlog) or over the whole run (live).
    "writer_cpu_seconds": round(cpu, 2),
    "writer_cpu_us_per_record": round(cpu * 1e6 / max(acked - first, 1), 2),
}))
EOF
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
done
