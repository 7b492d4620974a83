-- /internal/usage/tools: tool calls with success rate and mean latency.
SELECT CAST(tool_id AS VARCHAR) AS tool_id,
       CAST(tool_name AS VARCHAR) AS tool_name,
       COUNT(*) AS calls,
       AVG(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
       AVG(latency_ms) AS avg_latency_ms
FROM usage_tool
WHERE {tool}
GROUP BY tool_id, tool_name
ORDER BY calls DESC, tool_id
