#!/usr/bin/env bash
# Checksums, A/B: two builds of tally in one loop, runs alternating.
#   1. ingest, open loop: grpc-vm at 200,000 metrics/s and http-llm at
#      100,000 events/s (15 s after 3 s of warm-up), 3 runs a build;
#   2. the history reads (bench/scripts/history.sh, DuckDB left out): the
#      monthly bill and one customer's day over VM_SAMPLES VM samples, and
#      /internal/usage/summary at 720 h and 24 h over LLM_EVENTS events,
#      3 runs a build;
#   3. the scrub (NEW only) over a compacted month of SCRUB_EVENTS (default
#      30 M) events: its throughput unthrottled, and grpc-vm's p99 at
#      200,000/s with a scrub at the default 50 MB/s running back to back
#      against none. SCRUB_ONLY=1 runs this part alone.
#
# Usage: bench/scripts/checksum_ab.sh BASE_DIR NEW_DIR
#   each DIR holds a release `tally` and `tally-bench` (the new tally-bench
#   drives both builds). OUT (default /tmp/checksum-ab) keeps the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$1 NEW=$2
OUT=${OUT:-/tmp/checksum-ab}
VM_SAMPLES=${VM_SAMPLES:-20000000}
LLM_EVENTS=${LLM_EVENTS:-10000000}
mkdir -p "$OUT"
BENCH=$NEW/tally-bench

for i in $([ -n "${SCRUB_ONLY:-}" ] || echo 1 2 3); do
  for v in base new; do
    [ $v = base ] && BIN=$BASE || BIN=$NEW
    "$BENCH" --scenario grpc-vm --server-bin "$BIN/tally" --concurrency 8 --batch 600 \
      --vms 1000 --rate 200000 --duration 15s --warmup 3s --quiet \
      --out "$OUT/grpc-vm.$v.$i.json" >/dev/null
    "$BENCH" --scenario http-llm --server-bin "$BIN/tally" --concurrency 8 --batch 500 \
      --rate 100000 --duration 15s --warmup 3s --quiet \
      --out "$OUT/http-llm.$v.$i.json" >/dev/null
    TALLY=$BIN/tally BENCH=$BENCH PEER_RUNS=0 bench/scripts/history.sh vm "$VM_SAMPLES" \
      >"$OUT/history-vm.$v.$i.jsonl"
    TALLY=$BIN/tally BENCH=$BENCH PEER_RUNS=0 bench/scripts/history.sh llm "$LLM_EVENTS" \
      >"$OUT/history-llm.$v.$i.jsonl"
  done
done

# The scrub, on the new build, over a compacted month of SCRUB_EVENTS events.
DIR=$(mktemp -d)
PORT=18097
URL=http://127.0.0.1:$PORT
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
serve() {
  "$NEW/tally" serve --data "$DIR/data" --listen 127.0.0.1:$PORT --no-sampler "$@" \
    2>>"$DIR/${LOG:-tally}.log" &
  PID=$!
  until curl -sf "$URL/health" >/dev/null; do sleep 0.05; done
}
serve --compact-interval 24h --scrub-interval 0s
"$BENCH" --scenario history-llm --target "$URL" --phase load --events "${SCRUB_EVENTS:-30000000}" \
  --concurrency 8 --quiet >/dev/null
kill -TERM $PID; wait $PID || true
# Every closed hour compacted (the read phase waits for it), then left alone:
# the load below goes into hours that are never compacted meanwhile.
serve --compact-after 0s --compact-interval 1s --scrub-interval 0s
"$BENCH" --scenario history-llm --target "$URL" --phase read --queries 1 --quiet >/dev/null
kill -TERM $PID; wait $PID || true
echo "{\"scrubbed_bytes_on_disk\": $(du -sb "$DIR/data" | cut -f1)}" >"$OUT/scrub.json"
NO_COMPACTION=(--compact-after 100000h --compact-interval 24h)
# Unthrottled: three passes, each line says files, bytes and seconds.
LOG=unthrottled serve "${NO_COMPACTION[@]}" --scrub-interval 1s --scrub-rate 100000
until [ "$(grep -c 'scrub pass' "$DIR/unthrottled.log")" -ge 3 ]; do sleep 0.5; done
kill -TERM $PID; wait $PID || true
grep 'scrub pass' "$DIR/unthrottled.log" >"$OUT/scrub-passes.log"
# Ingest with a scrub at the default rate running back to back, against none.
for i in 1 2 3; do
  for s in off on; do
    if [ $s = on ]; then LOG=scrub-on serve "${NO_COMPACTION[@]}" --scrub-interval 1s
    else serve "${NO_COMPACTION[@]}" --scrub-interval 0s; fi
    "$BENCH" --scenario grpc-vm --target "$URL" --server-pid $PID --concurrency 8 \
      --batch 600 --vms 1000 --rate 200000 --duration 15s --warmup 3s --quiet \
      --out "$OUT/scrub-ingest.$s.$i.json" >/dev/null
    kill -TERM $PID; wait $PID || true
  done
done
grep 'scrub pass' "$DIR/scrub-on.log" >"$OUT/scrub-passes-50mb.log"
echo "reports in $OUT"
