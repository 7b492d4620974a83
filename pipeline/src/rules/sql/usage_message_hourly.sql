-- Hourly rollup of usage_message: messages per hour and (microdao_id, actor_id).
SELECT CAST(date_trunc('hour', timestamp) AS BIGINT) AS hour,
       CAST(microdao_id AS VARCHAR) AS microdao_id,
       CAST(actor_id AS VARCHAR) AS actor_id,
       CAST(COUNT(*) AS BIGINT) AS messages
FROM source
GROUP BY 1, 2, 3
