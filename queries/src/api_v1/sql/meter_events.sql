-- A meter's raw events: one tenant's ($1) events of one type ($2) in
-- `source` (the raw rows of the hours without a stored rollup, each once,
-- in the asked time ranges), with their time, subject and data.
SELECT CAST(timestamp AS BIGINT) AS ts, subject, data
FROM source
WHERE tenant = $1
  AND type = $2
