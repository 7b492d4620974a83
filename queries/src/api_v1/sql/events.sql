-- GET /api/v1/events: one tenant's events, most recently ingested first.
-- $1 tenant; $2, $3 the event time's bounds and $4, $5 the ingestion
-- time's (nanoseconds, inclusive, NULL: open); $6 part of the id and $7
-- part of the subject (NULL: any); $8 at most this many rows.
SELECT id, source, CAST(type AS VARCHAR) AS type, subject,
       CAST(specversion AS VARCHAR) AS specversion,
       CAST(timestamp AS BIGINT) AS time_ns,
       CAST(datacontenttype AS VARCHAR) AS datacontenttype, dataschema, data,
       CAST(ingested_at AS BIGINT) AS ingested_ns
FROM events
WHERE tenant = $1
  AND ($2 IS NULL OR CAST(timestamp AS BIGINT) >= $2)
  AND ($3 IS NULL OR CAST(timestamp AS BIGINT) <= $3)
  AND ($4 IS NULL OR CAST(ingested_at AS BIGINT) >= $4)
  AND ($5 IS NULL OR CAST(ingested_at AS BIGINT) <= $5)
  AND ($6 IS NULL OR strpos(id, $6) > 0)
  AND ($7 IS NULL OR strpos(subject, $7) > 0)
ORDER BY ingested_at DESC, timestamp DESC, id
LIMIT $8
