-- /internal/usage/summary as the Usage Engine specification's PostgreSQL
-- service answers it: the same four statements tally runs (totals, models,
-- agents, tools), over the period `$1 <= timestamp < $2`.
SELECT (SELECT COUNT(*) FROM usage_llm WHERE timestamp >= $1 AND timestamp < $2) AS llm_calls_total,
       (SELECT COALESCE(SUM(total_tokens), 0) FROM usage_llm WHERE timestamp >= $1 AND timestamp < $2) AS llm_tokens_total,
       (SELECT COUNT(*) FROM usage_tool WHERE timestamp >= $1 AND timestamp < $2) AS tool_calls_total,
       (SELECT COUNT(*) FROM usage_agent WHERE timestamp >= $1 AND timestamp < $2) AS agent_invocations_total,
       (SELECT COUNT(*) FROM usage_message WHERE timestamp >= $1 AND timestamp < $2) AS messages_sent;
SELECT model, provider, COUNT(*) AS calls,
       COALESCE(SUM(total_tokens), 0) AS tokens,
       COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
       COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
       AVG(latency_ms) AS avg_latency_ms
FROM usage_llm WHERE timestamp >= $1 AND timestamp < $2
GROUP BY model, provider ORDER BY calls DESC, model, provider;
WITH invocations AS (
    SELECT agent_id, COUNT(*) AS invocations
    FROM usage_agent WHERE timestamp >= $1 AND timestamp < $2 GROUP BY agent_id
),
llm AS (
    SELECT agent_id, COUNT(*) AS llm_calls, COALESCE(SUM(total_tokens), 0) AS total_tokens
    FROM usage_llm WHERE timestamp >= $1 AND timestamp < $2 AND agent_id IS NOT NULL GROUP BY agent_id
),
tools AS (
    SELECT agent_id, COUNT(*) AS tool_calls
    FROM usage_tool WHERE timestamp >= $1 AND timestamp < $2 AND agent_id IS NOT NULL GROUP BY agent_id
),
agents AS (
    SELECT agent_id FROM invocations UNION SELECT agent_id FROM llm UNION SELECT agent_id FROM tools
)
SELECT a.agent_id, COALESCE(i.invocations, 0) AS invocations, COALESCE(l.llm_calls, 0) AS llm_calls,
       COALESCE(t.tool_calls, 0) AS tool_calls, COALESCE(l.total_tokens, 0) AS total_tokens
FROM agents a
LEFT JOIN invocations i ON i.agent_id = a.agent_id
LEFT JOIN llm l ON l.agent_id = a.agent_id
LEFT JOIN tools t ON t.agent_id = a.agent_id
ORDER BY invocations DESC, llm_calls DESC, a.agent_id;
SELECT tool_id, tool_name, COUNT(*) AS calls,
       AVG(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
       AVG(latency_ms) AS avg_latency_ms
FROM usage_tool WHERE timestamp >= $1 AND timestamp < $2
GROUP BY tool_id, tool_name ORDER BY calls DESC, tool_id;
