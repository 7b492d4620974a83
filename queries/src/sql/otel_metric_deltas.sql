-- otel_metric_deltas: every OTLP metric stream of `otel_metrics` as deltas.
-- A delta point is its own delta. A cumulative point's delta is its value
-- (count, sum) less the previous point's of the same series, or its whole
-- value when the stream (re)started: the first point of its series, a new
-- start time, or a value below the previous one (a reset). Each stored
-- point counts once (a point exported again is a copy in otel_metrics), so
-- a cumulative stream is never counted twice. Gauges keep their value.
SELECT
  tenant, name, unit, kind, temporality, series, attributes, resource,
  timestamp, start_time,
  CASE
    WHEN temporality <> 'cumulative' OR kind = 'gauge' THEN value
    WHEN prev_time IS NULL OR (start_time IS DISTINCT FROM prev_start) OR value < prev_value
      THEN value
    ELSE value - prev_value
  END AS value,
  CASE
    WHEN temporality <> 'cumulative' THEN count
    WHEN prev_time IS NULL OR (start_time IS DISTINCT FROM prev_start) OR count < prev_count
      THEN count
    ELSE count - prev_count
  END AS count,
  CASE
    WHEN temporality <> 'cumulative' THEN sum
    WHEN prev_time IS NULL OR (start_time IS DISTINCT FROM prev_start) OR count < prev_count
      OR sum < prev_sum
      THEN sum
    ELSE sum - prev_sum
  END AS sum
FROM (
  SELECT *,
    lag(timestamp) OVER (PARTITION BY series ORDER BY timestamp) AS prev_time,
    lag(start_time) OVER (PARTITION BY series ORDER BY timestamp) AS prev_start,
    lag(value) OVER (PARTITION BY series ORDER BY timestamp) AS prev_value,
    lag(count) OVER (PARTITION BY series ORDER BY timestamp) AS prev_count,
    lag(sum) OVER (PARTITION BY series ORDER BY timestamp) AS prev_sum
  FROM otel_metrics
) AS points
