#!/usr/bin/env bash
# CloudEvents ingest over HTTP (POST /api/v1/events, batches of 100, the
# meters scenario's events), two builds in turns: each round starts each
# build on a fresh data directory and sends EVENTS events with the same
# tally-bench; prints one JSON line per run (events/s, server CPU seconds).
#
# Usage: bench/scripts/cloudevents_ingest.sh BASE_TALLY NEW_TALLY [EVENTS] [ROUNDS]
# Env: BENCH (default target/release/tally-bench), CONCURRENCY (default 8).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$1 NEW=$2 N=${3:-3000000} ROUNDS=${4:-3}
BENCH=${BENCH:-target/release/tally-bench}
PORT=${PORT:-18098}
URL=http://127.0.0.1:$PORT
for round in $(seq 1 "$ROUNDS"); do
  for which in base new; do
    bin=$BASE; [ "$which" = new ] && bin=$NEW
    dir=$(mktemp -d)
    "$bin" serve --data "$dir/data" --listen 127.0.0.1:$PORT --no-sampler \
      --compact-interval 24h --scrub-interval 0s 2>"$dir/log" &
    pid=$!
    until curl -sf "$URL/health" >/dev/null; do sleep 0.05; done
    rate=$("$BENCH" --scenario meters --target "$URL" --phase load --events "$N" \
      --concurrency "${CONCURRENCY:-8}" --quiet | python3 -c 'import json,sys; print(json.load(sys.stdin)["events_per_second"])')
    ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
    cpu=$(echo "$ticks / $(getconf CLK_TCK)" | bc -l)
    kill -TERM $pid; wait $pid || true
    rm -rf "$dir"
    printf '{"round": %d, "build": "%s", "events_per_second": %.0f, "server_cpu_us_per_event": %.2f}\n' \
      "$round" "$which" "$rate" "$(echo "$cpu * 1000000 / $N" | bc -l)"
  done
done
