#!/usr/bin/env python3
"""DuckDB on tally's raw `events` Parquet files: the three answers the
meters scenario asks tally for (bench/src/meters.rs), computed from the raw
events by the meters' definitions, timed, and checked against tally's.

Usage: meters_duckdb.py DATA_DIR REPORT_JSON [RUNS]
REPORT_JSON is tally-bench's report of the read phase (its `answers`: each
query's values summed). Prints JSON: per query, the median and each run in
milliseconds, the rows, the sum of the values, and whether it equals tally's.
Every hour is compacted when it runs: each (tenant, source, id) is in the
files once, so no deduplication is needed here.
"""
import json
import statistics
import sys
import time

import duckdb

data, report_path = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
report = json.load(open(report_path))
con = duckdb.connect()
EVENTS = f"read_parquet('{data}/events/**/*.parquet', hive_partitioning = false)"
MONTH = "timestamp >= TIMESTAMPTZ '2026-10-01 00:00:00+00' AND timestamp < TIMESTAMPTZ '2026-10-31 00:00:00+00'"
DAY = "timestamp >= TIMESTAMPTZ '2026-10-15 00:00:00+00' AND timestamp < TIMESTAMPTZ '2026-10-16 00:00:00+00'"
# The meters read $.tokens as a number (a JSON number or a string holding
# one) and $.user as text; events without them count nothing.
QUERIES = [
    ("month of a SUM meter by subject", f"""
SELECT subject, sum(TRY_CAST(json_extract_string(data, '$.tokens') AS DOUBLE)) AS value
FROM {EVENTS}
WHERE type = 'request' AND {MONTH}
  AND TRY_CAST(json_extract_string(data, '$.tokens') AS DOUBLE) IS NOT NULL
GROUP BY subject"""),
    ("a day by hour for one subject", f"""
SELECT date_trunc('hour', timestamp) AS hour,
       sum(TRY_CAST(json_extract_string(data, '$.tokens') AS DOUBLE)) AS value
FROM {EVENTS}
WHERE type = 'request' AND subject = 'cust-00042' AND {DAY}
  AND TRY_CAST(json_extract_string(data, '$.tokens') AS DOUBLE) IS NOT NULL
GROUP BY 1"""),
    ("month of a UNIQUE_COUNT meter", f"""
SELECT count(DISTINCT json_extract_string(data, '$.user')) AS value
FROM {EVENTS}
WHERE type = 'request' AND {MONTH} AND json_extract_string(data, '$.user') IS NOT NULL"""),
]

out = {}
for i, (name, sql) in enumerate(QUERIES):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    total = sum(r[-1] for r in rows)
    want = report["answers"][i]
    out[name] = {
        "median_ms": statistics.median(times),
        "runs_ms": times,
        "rows": len(rows),
        "sum": total,
        "equals_tally": abs(total - want) <= 1e-9 * max(abs(want), 1.0),
    }
print(json.dumps({"duckdb": out}, indent=1))
