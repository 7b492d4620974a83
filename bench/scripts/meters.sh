#!/usr/bin/env bash
# Meters over OpenMeter's API at scale: make two meters, send EVENTS
# CloudEvents (default 100,000,000) over October 2026 in batches of 100 with
# compaction held back (the ingest rate), restart with compaction on, wait
# until every hour is compacted and rolled up, time three meter queries;
# DuckDB computes the same from the same raw files in the same run.
#
# Usage: bench/scripts/meters.sh [EVENTS]
# Needs: cargo build --release -p tally -p tally-bench; pip install duckdb
# Env: TALLY and BENCH (the binaries), RUNS (requests a query), PEER_RUNS,
#      DIR (kept when given), CONCURRENCY (load requests at once, default 8),
#      SPAN_HOURS: the hours from October 1st the events spread over (default
#      720; SPAN_HOURS=1 with 180000000 events is the design point's hour:
#      PEER_RUNS=0 RUNS=1 then, the queries are not its point),
#      QUERY_ONLY=1: DIR holds data compacted by an earlier run; start on it
#      and time the queries (the first of each cold) and DuckDB only.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000000}
RUNS=${RUNS:-20}
TALLY=${TALLY:-target/release/tally}
BENCH=${BENCH:-target/release/tally-bench}
KEEP=${DIR:+1}
DIR=${DIR:-$(mktemp -d)}
mkdir -p "$DIR"
SPAN=()
[ -n "${SPAN_HOURS:-}" ] && SPAN=(--span-hours "$SPAN_HOURS")
PORT=${PORT:-18093}
URL=http://127.0.0.1:$PORT
trap 'kill $PID 2>/dev/null || true; [ -n "$KEEP" ] || rm -rf "$DIR"' EXIT

start() {
  "$TALLY" serve --data "$DIR/data" --listen 127.0.0.1:$PORT --no-sampler "$@" \
    2>>"$DIR/tally.log" &
  PID=$!
  until curl -sf "$URL/health" >/dev/null; do sleep 0.05; done
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' /proc/$PID/status; }

if [ -n "${QUERY_ONLY:-}" ]; then
  start --scrub-interval 0s
  "$BENCH" --scenario meters --target "$URL" --phase query --events "$N" --queries "$RUNS" \
    --quiet | tee "$DIR/read.json"
  echo "{\"rss_after_reads_mib\": $(rss_mib)}"
  kill -TERM $PID; wait $PID || true
  python3 bench/peer/meters_duckdb.py "$DIR/data" "$DIR/read.json" "${PEER_RUNS:-5}"
  exit 0
fi

start --compact-interval 24h
"$BENCH" --scenario meters --target "$URL" --phase load --events "$N" "${SPAN[@]}" \
  --concurrency "${CONCURRENCY:-8}" --quiet | tee "$DIR/load.json"
echo "{\"rss_after_load_mib\": $(rss_mib)}"
kill -TERM $PID; wait $PID || true

start --compact-after 0s --compact-interval 1s
"$BENCH" --scenario meters --target "$URL" --phase read --events "$N" "${SPAN[@]}" --queries "$RUNS" --quiet \
  | tee "$DIR/read.json"
echo "{\"rss_after_reads_mib\": $(rss_mib), \"rss_peak_vmhwm_mib\": $(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' /proc/$PID/status), \"compaction_peak_mib\": $(curl -s "$URL/metrics" | awk '/^tally_compaction_memory_peak_bytes/ {printf "%.0f", $2 / 1048576}')}"
kill -TERM $PID; wait $PID || true
grep 'hour compacted' "$DIR/tally.log" | grep -E 'events|meter' | tail -n 3 || true
echo "{\"events_bytes\": $(du -sb "$DIR/data/events" | cut -f1), \"meter_hourly_bytes\": $(du -sb "$DIR/data/meter_hourly" | cut -f1)}"
if [ "${PEER_RUNS:-5}" != 0 ]; then
  python3 bench/peer/meters_duckdb.py "$DIR/data" "$DIR/read.json" "${PEER_RUNS:-5}"
fi
