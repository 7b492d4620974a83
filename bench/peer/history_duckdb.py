#!/usr/bin/env python3
"""DuckDB on tally's raw Parquet files: the same answers the history
scenarios ask tally for, computed from the raw records, timed.

Usage: history_duckdb.py DATA_DIR vm|llm [RUNS]
Prints JSON: per query, the median and each run in milliseconds, and rows.
"""
import json
import statistics
import sys
import time

import duckdb

data, kind = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
con = duckdb.connect()

# The billing rules of DESIGN.md, as queries/src/vm_billing/sql/vm_usage.sql has them (the
# bench fleet reports no gaps, so the NotifyPossibleGap join is left out).
VM_USAGE = """
WITH samples AS (
  SELECT DISTINCT ON (vm_id, timestamp) customer_id, vm_id, timestamp,
         epoch_ns(timestamp) AS ts_ns, cpu_time_nanos, memory_usage_bytes,
         disk_read_bytes, disk_write_bytes, network_rx_bytes, network_tx_bytes
  FROM read_parquet('{data}/vm_metrics/**/*.parquet', hive_partitioning = false)
), pairs AS (
  SELECT customer_id, vm_id, timestamp, ts_ns,
         LAG(ts_ns) OVER w AS a_ns,
         cpu_time_nanos - LAG(cpu_time_nanos) OVER w AS d_cpu,
         LEAST(memory_usage_bytes, LAG(memory_usage_bytes) OVER w) AS min_mem,
         disk_read_bytes - LAG(disk_read_bytes) OVER w AS d_dr,
         disk_write_bytes - LAG(disk_write_bytes) OVER w AS d_dw,
         network_rx_bytes - LAG(network_rx_bytes) OVER w AS d_rx,
         network_tx_bytes - LAG(network_tx_bytes) OVER w AS d_tx
  FROM samples WINDOW w AS (PARTITION BY vm_id ORDER BY ts_ns)
), c AS (
  SELECT *, a_ns IS NOT NULL AND ts_ns - a_ns <= 120000000000 AS counted,
            a_ns IS NOT NULL AND ts_ns - a_ns > 120000000000 AS gap
  FROM pairs
)
SELECT customer_id, vm_id, date_trunc('{unit}', timestamp) AS window_start,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_cpu, 0) END), 0) / 1e9 AS cpu_seconds,
       COALESCE(SUM(CASE WHEN counted THEN min_mem::DOUBLE * (ts_ns - a_ns) / 1e9 END), 0)
         / 1073741824.0 / 3600.0 AS memory_gib_hours,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_dr, 0) END), 0) AS disk_read_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_dw, 0) END), 0) AS disk_write_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_rx, 0) END), 0) AS network_rx_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_tx, 0) END), 0) AS network_tx_bytes,
       COUNT(*) AS samples, COUNT(CASE WHEN gap THEN 1 END) AS gaps
FROM c {where}
GROUP BY ALL
"""

LLM = """
SELECT count(*), sum(total_tokens) FROM read_parquet('{data}/usage_llm/**/*.parquet', hive_partitioning = false)
  WHERE timestamp >= now() - INTERVAL {hours} HOUR;
SELECT model, provider, count(*), sum(total_tokens), sum(prompt_tokens), sum(completion_tokens),
       sum(cache_creation_tokens), sum(cache_read_tokens), avg(latency_ms)
  FROM read_parquet('{data}/usage_llm/**/*.parquet', hive_partitioning = false)
  WHERE timestamp >= now() - INTERVAL {hours} HOUR GROUP BY ALL;
SELECT agent_id, count(*), sum(total_tokens)
  FROM read_parquet('{data}/usage_llm/**/*.parquet', hive_partitioning = false)
  WHERE timestamp >= now() - INTERVAL {hours} HOUR AND agent_id IS NOT NULL GROUP BY ALL
"""

if kind == "vm":
    queries = {
        "monthly bill, every customer": VM_USAGE.format(
            data=data, unit="month",
            where="WHERE timestamp >= TIMESTAMPTZ '2026-10-01 00:00:00+00' AND timestamp < TIMESTAMPTZ '2026-11-01 00:00:00+00'"),
        "one customer, hourly, one day": VM_USAGE.format(
            data=data, unit="hour",
            where="WHERE customer_id = 'cust-007' AND timestamp >= TIMESTAMPTZ '2026-10-15 00:00:00+00' AND timestamp < TIMESTAMPTZ '2026-10-16 00:00:00+00'"),
    }
else:
    queries = {
        f"summary, {h} hours": LLM.format(data=data, hours=h) for h in (720, 24)
    }

con.execute("SET TimeZone = 'UTC'")
out = {}
for name, sql in queries.items():
    times, rows = [], 0
    for _ in range(runs + 1):  # the first run warms the caches, not counted
        t = time.perf_counter()
        for statement in [s for s in sql.split(";") if s.strip()]:
            rows = len(con.execute(statement).fetchall())
        times.append((time.perf_counter() - t) * 1000)
    out[name] = {"median_ms": round(statistics.median(times[1:]), 1),
                 "runs_ms": [round(x, 1) for x in times[1:]], "rows": rows}
print(json.dumps(out, indent=2))
