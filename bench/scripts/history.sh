#!/usr/bin/env bash
# A month of history: load it into tally with compaction held back, restart
# with compaction on and time the start-up, wait until every hour is one
# file with its rollups, then time the read APIs; DuckDB computes the same
# from the same raw files in the same run.
#
# Usage: bench/scripts/history.sh vm|llm [RECORDS]
#   vm:  RECORDS VM samples (default 100,000,000) of 1,000 VMs over October 2026
#   llm: RECORDS usage.llm events (default 10,000,000) over the last 30 days
# Needs: cargo build --release -p tally -p tally-bench; pip install duckdb
# Env: TALLY and BENCH (the binaries), RUNS (requests a query), PEER_RUNS,
#      DIR (kept when given), QUERY_ONLY=1: DIR holds data loaded and
#      compacted by an earlier run; start on it and time the reads only (an
#      A/B of two builds on the same files).
set -euo pipefail
cd "$(dirname "$0")/../.."
KIND=${1:-vm}
if [ "$KIND" = vm ]; then N=${2:-100000000}; else N=${2:-10000000}; fi
RUNS=${RUNS:-20}
TALLY=${TALLY:-target/release/tally}
BENCH=${BENCH:-target/release/tally-bench}
KEEP=${DIR:+1}
DIR=${DIR:-$(mktemp -d)}
mkdir -p "$DIR"
PORT=${PORT:-18091}
URL=http://127.0.0.1:$PORT
trap 'kill $PID 2>/dev/null || true; [ -n "$KEEP" ] || rm -rf "$DIR"' EXIT

start() {
  "$TALLY" serve --data "$DIR/data" --listen 127.0.0.1:$PORT --no-sampler "$@" \
    2>>"$DIR/tally.log" &
  PID=$!
  until curl -sf "$URL/health" >/dev/null; do
    # Another server on the port would answer in this one's place.
    kill -0 $PID 2>/dev/null || { echo "tally did not start: see $DIR/tally.log" >&2; exit 1; }
    sleep 0.05
  done
  kill -0 $PID 2>/dev/null || { echo "tally did not start: see $DIR/tally.log" >&2; exit 1; }
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' /proc/$PID/status; }

if [ -n "${QUERY_ONLY:-}" ]; then
  start --compact-after 0s --compact-interval 1s
  "$BENCH" --scenario history-$KIND --target "$URL" --phase query --queries "$RUNS" --quiet
  echo "{\"rss_after_reads_mib\": $(rss_mib)}"
  kill -TERM $PID; wait $PID || true
  exit 0
fi

# Compaction held back while loading: one pass at the end, as after a backlog.
start --compact-interval 24h
"$BENCH" --scenario history-$KIND --target "$URL" --phase load --events "$N" \
  --vms 1000 --concurrency 8 --quiet
echo "{\"rss_after_load_mib\": $(rss_mib)}"
kill -TERM $PID; wait $PID || true

timed_start() {
  local t0 t1
  t0=$(date +%s.%N)
  start "$@"
  t1=$(date +%s.%N)
  echo "{\"$LABEL\": $(echo "$t1 - $t0" | bc)}"
}
# Right after the load nothing is compacted: start-up reads the keys of
# every new file (the dedup key bound caps them).
LABEL=startup_seconds_uncompacted timed_start --compact-after 0s --compact-interval 1s
"$BENCH" --scenario history-$KIND --target "$URL" --phase read --queries "$RUNS" --quiet
echo "{\"rss_after_reads_mib\": $(rss_mib)}"
kill -TERM $PID; wait $PID || true
# Steady state: every closed hour compacted, nothing to read for dedup.
LABEL=startup_seconds_compacted timed_start --compact-after 0s --compact-interval 1s
kill -TERM $PID; wait $PID || true
echo "{\"raw_files\": $(find "$DIR/data" -path '*_tally*' -prune -o -name '*.parquet' -print | grep -vc _hourly\\\|vm_usage_hours\\\|vm_gap_spans || true), \"bytes\": $(du -sb "$DIR/data" | cut -f1)}"
# PEER_RUNS=0 leaves DuckDB out (an A/B of two tally builds).
if [ "${PEER_RUNS:-5}" != 0 ]; then
  python3 bench/peer/history_duckdb.py "$DIR/data" "$KIND" "${PEER_RUNS:-5}"
fi
