-- /internal/usage/agents: per agent, its invocations joined with its LLM
-- calls, tool calls and tokens.
WITH invocations AS (
    SELECT CAST(agent_id AS VARCHAR) AS agent_id, COUNT(*) AS invocations
    FROM usage_agent WHERE {agent} GROUP BY agent_id
),
llm AS (
    SELECT CAST(agent_id AS VARCHAR) AS agent_id, COUNT(*) AS llm_calls,
           COALESCE(SUM(total_tokens), 0) AS total_tokens
    FROM usage_llm WHERE {llm} AND agent_id IS NOT NULL GROUP BY agent_id
),
tools AS (
    SELECT CAST(agent_id AS VARCHAR) AS agent_id, COUNT(*) AS tool_calls
    FROM usage_tool WHERE {tool} AND agent_id IS NOT NULL GROUP BY agent_id
),
agents AS (
    SELECT agent_id FROM invocations
    UNION SELECT agent_id FROM llm
    UNION SELECT agent_id FROM tools
)
SELECT a.agent_id,
       COALESCE(i.invocations, 0) AS invocations,
       COALESCE(l.llm_calls, 0) AS llm_calls,
       COALESCE(t.tool_calls, 0) AS tool_calls,
       COALESCE(l.total_tokens, 0) AS total_tokens
FROM agents a
LEFT JOIN invocations i ON i.agent_id = a.agent_id
LEFT JOIN llm l ON l.agent_id = a.agent_id
LEFT JOIN tools t ON t.agent_id = a.agent_id
ORDER BY invocations DESC, llm_calls DESC, a.agent_id
