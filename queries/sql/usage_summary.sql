-- /internal/usage/summary: totals over the period.
SELECT (SELECT COUNT(*) FROM usage_llm WHERE {llm}) AS llm_calls_total,
       (SELECT COALESCE(SUM(total_tokens), 0) FROM usage_llm WHERE {llm}) AS llm_tokens_total,
       (SELECT COUNT(*) FROM usage_tool WHERE {tool}) AS tool_calls_total,
       (SELECT COUNT(*) FROM usage_agent WHERE {agent}) AS agent_invocations_total,
       (SELECT COUNT(*) FROM usage_message WHERE {message}) AS messages_sent
