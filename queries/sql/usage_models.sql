-- /internal/usage/models: LLM calls by model and provider. `{llm}` is the
-- filter (period, microdao_id, agent_id). Cost is added from the price
-- catalogue per row.
SELECT CAST(model AS VARCHAR) AS model,
       CAST(provider AS VARCHAR) AS provider,
       COUNT(*) AS calls,
       COALESCE(SUM(total_tokens), 0) AS tokens,
       COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
       COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
       COALESCE(SUM(cache_creation_tokens), 0) AS cache_creation_tokens,
       COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens,
       AVG(latency_ms) AS avg_latency_ms
FROM usage_llm
WHERE {llm}
GROUP BY model, provider
ORDER BY calls DESC, model, provider
