#!/usr/bin/env bash
# A full hour at the design point: HOUR_ROWS VM samples (default 180,000,000:
# 50,000 metrics/s for an hour) of 10,000 VMs sent into one synthetic hour as
# fast as the server takes them, then RATE metrics/s (default 50,000) into the
# next hour for SECONDS (default 900) while the full hour is compacted. The
# server runs with its defaults (--compact-memory 512MiB). Reports the load's
# latency and refusals, the server's RSS each second and its peak (VmHWM), and
# the compaction's log lines (rows, seconds, peak memory).
#
# Usage: bench/scripts/compaction_hour.sh [HOUR_ROWS] [RATE] [SECONDS]
#   FILL_RATE=100000 sends the first hour at that rate instead (two hours back
#   to back: compare fill.json's and load.json's last RSS).
# Needs: cargo build --release -p tally -p tally-bench
set -euo pipefail
cd "$(dirname "$0")/../.."
HOUR_ROWS=${1:-180000000}
RATE=${2:-50000}
SECONDS_LOAD=${3:-900}
VMS=${VMS:-10000}
TALLY=${TALLY:-target/release/tally}
BENCH=target/release/tally-bench
DIR=${DIR:-$(mktemp -d)}
OUT=${OUT:-$DIR}
PORT=${PORT:-18093}
URL=http://127.0.0.1:$PORT
trap 'kill $PID 2>/dev/null || true' EXIT

"$TALLY" serve --data "$DIR/data" --listen 127.0.0.1:$PORT --no-sampler \
  2>>"$OUT/tally.log" &
PID=$!
until curl -sf "$URL/health" >/dev/null; do sleep 0.05; done

# The hour, as fast as it is taken (closed loop), or at FILL_RATE (open loop).
FILL=()
[ -n "${FILL_RATE:-}" ] && FILL=(--rate "$FILL_RATE" --timeline)
"$BENCH" --scenario grpc-vm --target "$URL" --server-pid $PID --vms "$VMS" \
  --hour-rows "$HOUR_ROWS" --records "$HOUR_ROWS" --batch 500 --concurrency 8 \
  --warmup 0s --duration 7200s --retry-refused --quiet "${FILL[@]}" --out "$OUT/fill.json" >/dev/null
NEXT=$(python3 -c "import json,sys; print(json.load(open('$OUT/fill.json'))['next_record'])")
echo "filled: $(python3 -c "import json; r=json.load(open('$OUT/fill.json')); print(r['records_acked'], 'acked at', round(r['records_per_second']), 'records/s')")"

# The next hour at RATE while the full hour compacts.
"$BENCH" --scenario grpc-vm --target "$URL" --server-pid $PID --vms "$VMS" \
  --hour-rows "$HOUR_ROWS" --first-record "$NEXT" --rate "$RATE" --batch 500 \
  --concurrency 8 --warmup 0s --duration "${SECONDS_LOAD}s" --timeline --quiet \
  --out "$OUT/load.json" >/dev/null
HWM=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' /proc/$PID/status)
python3 - "$OUT/load.json" "$HWM" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timeline"]
print(json.dumps({
    "rate": r["mode"], "records_acked": r["records_acked"],
    "latency_ms": r["latency_ms"], "errors": r["errors"],
    "rss_peak_sampled_mib": r["rss_peak_mib"], "rss_peak_vmhwm_mib": int(sys.argv[2]),
    "rss_first_mib": t[0]["rss_mib"] if t else None, "rss_last_mib": t[-1]["rss_mib"] if t else None,
    "compaction_memory_peak_sampled_mib": max((m["compaction_memory_mib"] or 0) for m in t) if t else None,
    "vm_compactions_at_end": t[-1]["vm_compactions"] if t else None,
}, indent=1))
PY
grep -E 'hour compacted|compaction pass|hour merged in rounds' "$OUT/tally.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -5
