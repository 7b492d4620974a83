-- Hourly rollup of usage_agent: invocations per hour and (microdao_id, agent_id).
SELECT CAST(date_trunc('hour', timestamp) AS BIGINT) AS hour,
       CAST(microdao_id AS VARCHAR) AS microdao_id,
       CAST(agent_id AS VARCHAR) AS agent_id,
       CAST(COUNT(*) AS BIGINT) AS invocations
FROM source
GROUP BY 1, 2, 3
