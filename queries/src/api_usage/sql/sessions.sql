-- The usage snapshots of GET /api/usage/sessions, newest first, with how
-- many match in all. $1: since (ns since the epoch); $2, $3, $4: actor_id,
-- microdao_id and session_id, or NULL for any; $5: at most this many rows;
-- $6: the tenants (microdao_id) a token covers, comma-separated, or NULL
-- for all.
SELECT id, session_id, CAST(timestamp AS BIGINT) / 1000000 AS ts_ms, stats,
       COUNT(*) OVER () AS total_count
FROM usage_snapshots
WHERE CAST(timestamp AS BIGINT) >= $1
  AND ($2 IS NULL OR CAST(actor_id AS VARCHAR) = $2)
  AND ($3 IS NULL OR CAST(microdao_id AS VARCHAR) = $3)
  AND ($4 IS NULL OR session_id = $4)
  AND ($6 IS NULL OR array_has(string_to_array($6, ','), CAST(microdao_id AS VARCHAR)))
ORDER BY timestamp DESC
LIMIT $5
