-- Usage API: the LLM calls of a scope since a time, oldest first. `{filter}`
-- holds the time bound and the optional actor_id / microdao_id scope.
SELECT CAST(timestamp AS BIGINT) / 1000000 AS ts_ms,
       COALESCE(CAST(model AS VARCHAR), 'unknown') AS model,
       CAST(provider AS VARCHAR) AS provider,
       prompt_tokens,
       completion_tokens,
       COALESCE(cache_creation_tokens, 0) AS cache_creation_tokens,
       COALESCE(cache_read_tokens, 0) AS cache_read_tokens
FROM usage_llm
WHERE {filter}
ORDER BY timestamp
