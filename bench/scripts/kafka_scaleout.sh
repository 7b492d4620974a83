#!/usr/bin/env bash
# Edge → Kafka → writer throughput, with 1 and then 2 writers.
#
# Starts a Tansu broker (in-memory), N writers in one consumer group sharing a
# data directory, and one edge node (--relay-kafka). tally-bench loads the
# edge with `usage.llm` NDJSON for DURATION; then the script waits until the
# writers have durably accepted every record the edge acknowledged. Reported:
# the edge's acknowledged records/s (client side, from tally-bench) and the
# end-to-end rate: records / (time from the load's start until the writers
# hold the last one).
#
# Usage: bench/scripts/kafka_scaleout.sh [TANSU_BIN] [WRITERS...]
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
  ports=()
  for i in $(seq 1 "$writers"); do
    port=$((18300 + i))
    ports+=("$port")
    "$TALLY" serve --data "$run/shared" --state-dir "$run/w$i" --node-id "w$i" \
      --listen "127.0.0.1:$port" --no-sampler --kafka 127.0.0.1:19192 \
      --kafka-partitions "$PARTITIONS" --max-queued-rows 2000000 \
      >"$run/w$i.log" 2>&1 &
    pids+=($!)
  done
  # Every writer holds partitions before the load starts.
  total_parts=$((PARTITIONS * 8))
  for _ in $(seq 1 300); do
    sum=0; all=1
    for port in "${ports[@]}"; do
      a=$(assigned "$port"); sum=$((sum + a)); [ "$a" -gt 0 ] || all=0
    done
    [ "$all" = 1 ] && [ "$sum" = "$total_parts" ] && break
    sleep 0.2
  done
  "$TALLY" serve --data "$run/edge" --node-id edge --listen 127.0.0.1:18390 \
    --no-sampler --relay-kafka 127.0.0.1:19192 >"$run/edge.log" 2>&1 &
  pids+=($!)
  sleep 1

  start=$(date +%s.%N)
  "$BENCH" --scenario http-llm --target http://127.0.0.1:18390 --warmup 0s \
    --duration "$DURATION" --concurrency "$CONCURRENCY" --batch "$BATCH" \
    --out "$run/edge.json" >"$run/bench.txt"
  acked=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["records_acked"])' "$run/edge.json")
  while [ "$(accepted "${ports[@]}")" -lt "$acked" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  python3 - "$writers" "$acked" "$start" "$end" "$run/edge.json" <<'EOF'
import json, sys
writers, acked, start, end, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
edge = json.load(open(path))
print(json.dumps({
    "writers": writers,
    "records_acked_by_edge": acked,
    "edge_records_per_sec": edge.get("records_per_second"),
    "end_to_end_seconds": round(end - start, 2),
    "end_to_end_records_per_sec": round(acked / (end - start)),
}))
EOF
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
done
