-- A meter's events: one tenant's events of one type in [$3, $4)
-- (nanoseconds; $3 NULL: from the first), with their subject and data.
SELECT CAST(timestamp AS BIGINT) AS ts, subject, data
FROM events
WHERE tenant = $1
  AND type = $2
  AND ($3 IS NULL OR CAST(timestamp AS BIGINT) >= $3)
  AND CAST(timestamp AS BIGINT) < $4
