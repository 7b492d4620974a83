-- Hourly rollup of usage_tool: one row per hour and (microdao_id, agent_id,
-- tool_id, tool_name).
SELECT CAST(date_trunc('hour', timestamp) AS BIGINT) AS hour,
       CAST(microdao_id AS VARCHAR) AS microdao_id,
       CAST(agent_id AS VARCHAR) AS agent_id,
       CAST(tool_id AS VARCHAR) AS tool_id,
       CAST(tool_name AS VARCHAR) AS tool_name,
       CAST(COUNT(*) AS BIGINT) AS calls,
       CAST(COUNT(CASE WHEN success THEN 1 END) AS BIGINT) AS successes,
       CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT) AS latency_ms_sum,
       CAST(COUNT(latency_ms) AS BIGINT) AS latency_count
FROM source
GROUP BY 1, 2, 3, 4, 5
