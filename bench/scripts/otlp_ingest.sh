#!/usr/bin/env bash
# OTLP ingest: Claude Code's api_request log records (one model call each)
# in exports of BATCH (default 512) over OTLP/HTTP protobuf and OTLP/gRPC,
# against `usage.llm` NDJSON over HTTP in the same loop, ROUNDS (default 3)
# rounds of each, closed loop (as fast as the server answers), each run on a
# fresh server; then the latency of OTLP/HTTP and OTLP/gRPC exports at RATE
# (default 20,000) calls/s, open loop. Prints one JSON line per run.
#
# Usage: bench/scripts/otlp_ingest.sh
# Needs: cargo build --release -p tally -p tally-bench
# Env: TALLY, BENCH (the binaries), OUT (reports, default /tmp/otlp-ingest),
#      DURATION (default 20s), CONCURRENCY (default 8).
set -euo pipefail
cd "$(dirname "$0")/../.."
TALLY=${TALLY:-target/release/tally}
BENCH=${BENCH:-target/release/tally-bench}
OUT=${OUT:-/tmp/otlp-ingest}
BATCH=${BATCH:-512}
RATE=${RATE:-20000}
mkdir -p "$OUT"
line() {
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], "records_per_second": round(r["records_per_second"]),
                  "p50_ms": r["latency_ms"].get("p50"), "p99_ms": r["latency_ms"].get("p99"),
                  "server_cpu_us_per_record": round((r.get("server_cpu_ns_per_record") or 0) / 1000, 2),
                  "errors": r.get("errors")}))
PY
}
for i in $(seq 1 "${ROUNDS:-3}"); do
  for s in otlp-http-logs otlp-grpc-logs http-llm; do
    "$BENCH" --scenario "$s" --server-bin "$TALLY" --concurrency "${CONCURRENCY:-8}" \
      --batch "$BATCH" --duration "${DURATION:-20s}" --warmup 3s --quiet \
      --out "$OUT/$s.$i.json" >/dev/null
    line "$OUT/$s.$i.json" "$s closed loop, round $i"
  done
done
for s in otlp-http-logs otlp-grpc-logs; do
  "$BENCH" --scenario "$s" --server-bin "$TALLY" --concurrency "${CONCURRENCY:-8}" \
    --batch "$BATCH" --rate "$RATE" --duration "${DURATION:-20s}" --warmup 3s --quiet \
    --out "$OUT/$s.rate.json" >/dev/null
  line "$OUT/$s.rate.json" "$s at $RATE calls/s"
done
