#!/usr/bin/env bash
# Times `tally collect claude-code` on a generated tree against
# `claude-monitor --once` (4.0.0) reading the same tree, and measures the
# resident memory of `tally collect --follow` once the tree is read.
#
# Usage: scripts/bench-collect.sh TREE [RUNS]
#   (TREE from scripts/gen_claude_logs.py; a release build in target/release)
set -euo pipefail
tree=$1
runs=${2:-3}
bin=target/release/tally
lines=$(cat "$tree"/*/*.jsonl | wc -l)
bytes=$(du -sb "$tree" | cut -f1)
port=18611
echo "tree: $lines lines, $((bytes >> 20)) MiB"
for run in $(seq "$runs"); do
  work=$(mktemp -d)
  "$bin" serve --data "$work/data" --listen 127.0.0.1:$port --no-sampler 2>"$work/server.log" &
  server=$!
  until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 0.1; done
  /usr/bin/time -f "%e %M" -o "$work/collect.time" \
    "$bin" collect claude-code --dir "$tree" --server http://127.0.0.1:$port \
    --state "$work/state.json" >"$work/report.json"
  read -r secs rss <"$work/collect.time"
  events=$(python3 -c "import json,sys; print(json.load(open('$work/report.json'))['accepted'])")
  # --follow over the tree already read: its memory while it waits.
  "$bin" collect claude-code --dir "$tree" --server http://127.0.0.1:$port \
    --state "$work/state.json" --follow >/dev/null &
  follow=$!
  sleep 10
  follow_rss=$(awk '/VmRSS/ {print $2}' /proc/$follow/status)
  kill $follow; wait $follow 2>/dev/null || true
  kill $server; wait $server 2>/dev/null || true
  mkdir -p "$work/home"
  /usr/bin/time -f "%e %M" -o "$work/monitor.time" env HOME="$work/home" \
    claude-monitor --once --output json --plan max20 --timezone UTC --data-paths "$tree" >/dev/null \
    || true # it exits 2 when the plan's limit is passed, as here
  read -r msecs mrss < <(tail -n 1 "$work/monitor.time")
  python3 - "$lines" "$secs" "$rss" "$events" "$follow_rss" "$msecs" "$mrss" <<'PY'
import sys
lines, secs, rss, events, follow, msecs, mrss = sys.argv[1:]
lines, secs, msecs = int(lines), float(secs), float(msecs)
print(f"tally collect: {secs:.1f} s, {lines / secs:,.0f} lines/s, {events} events stored, "
      f"peak RSS {int(rss) // 1024} MiB; --follow idle RSS {int(follow) // 1024} MiB | "
      f"claude-monitor --once: {msecs:.1f} s, {lines / msecs:,.0f} lines/s, peak RSS {int(mrss) // 1024} MiB | "
      f"claude-monitor time / tally time {msecs / secs:.2f}")
PY
  rm -rf "$work"
done
