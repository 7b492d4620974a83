-- VM usage rollup by the billing rules (README, "billing.v1 (VM metering)"; never inflate).
-- `{window}` is hour, day or month; tally registers one view per window:
-- vm_usage_hourly, vm_usage_daily, vm_usage_monthly. `{gap_limit_ns}` is
-- the gap limit (VM_GAP_LIMIT_SECS) in nanoseconds.
--
-- Per VM, distinct samples are ordered by time and taken in consecutive
-- pairs (a, b). A pair is a gap, and counts nothing, when b - a is over the
-- gap limit (120 s; exactly 120 s is not a gap) or a NotifyPossibleGap span
-- overlaps it: max(a, last_sent) < min(b, resume_time). Counters count
-- max(0, b - a); memory counts min(a, b) * dt. A pair belongs to the window
-- holding b.
WITH samples AS (
    SELECT customer_id, vm_id, timestamp,
           CAST(timestamp AS BIGINT) AS ts_ns,
           cpu_time_nanos, memory_usage_bytes, disk_read_bytes, disk_write_bytes,
           network_rx_bytes, network_tx_bytes,
           ROW_NUMBER() OVER (PARTITION BY vm_id, timestamp ORDER BY customer_id) AS copy
    FROM vm_metrics
),
pairs AS (
    SELECT customer_id, vm_id, timestamp, ts_ns,
           LAG(ts_ns) OVER w AS a_ns,
           cpu_time_nanos - LAG(cpu_time_nanos) OVER w AS d_cpu,
           LEAST(memory_usage_bytes, LAG(memory_usage_bytes) OVER w) AS min_mem,
           disk_read_bytes - LAG(disk_read_bytes) OVER w AS d_disk_read,
           disk_write_bytes - LAG(disk_write_bytes) OVER w AS d_disk_write,
           network_rx_bytes - LAG(network_rx_bytes) OVER w AS d_rx,
           network_tx_bytes - LAG(network_tx_bytes) OVER w AS d_tx
    FROM samples
    WHERE copy = 1
    WINDOW w AS (PARTITION BY vm_id ORDER BY ts_ns)
),
reported_gaps AS (
    SELECT DISTINCT p.vm_id, p.ts_ns
    FROM pairs p
    JOIN vm_events g
      ON g.kind = 'possible_gap' AND g.vm_id = p.vm_id
     AND GREATEST(p.a_ns, CAST(g.last_sent AS BIGINT)) < LEAST(p.ts_ns, CAST(g.resume_time AS BIGINT))
    WHERE p.a_ns IS NOT NULL
),
classified AS (
    SELECT p.*,
           p.a_ns IS NOT NULL
             AND p.ts_ns - p.a_ns <= {gap_limit_ns}
             AND r.vm_id IS NULL AS counted,
           p.a_ns IS NOT NULL
             AND (p.ts_ns - p.a_ns > {gap_limit_ns} OR r.vm_id IS NOT NULL) AS gap
    FROM pairs p
    LEFT JOIN reported_gaps r ON r.vm_id = p.vm_id AND r.ts_ns = p.ts_ns
)
SELECT customer_id, vm_id,
       date_trunc('{window}', timestamp) AS window_start,
       date_trunc('{window}', timestamp) + INTERVAL '1 {window}' AS window_end,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_cpu, 0) END), 0) / 1e9 AS cpu_seconds,
       COALESCE(SUM(CASE WHEN counted THEN CAST(min_mem AS DOUBLE) * (ts_ns - a_ns) / 1e9 END), 0)
         / 1073741824.0 / 3600.0 AS memory_gib_hours,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_disk_read, 0) END), 0) AS disk_read_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_disk_write, 0) END), 0) AS disk_write_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_rx, 0) END), 0) AS network_rx_bytes,
       COALESCE(SUM(CASE WHEN counted THEN GREATEST(d_tx, 0) END), 0) AS network_tx_bytes,
       COALESCE(SUM(CASE WHEN counted THEN ts_ns - a_ns END), 0) / 1e9 AS observed_seconds,
       COUNT(*) AS samples,
       COUNT(CASE WHEN gap THEN 1 END) AS gaps
FROM classified
GROUP BY customer_id, vm_id, date_trunc('{window}', timestamp)
