-- usage_llm_hourly without the actor: what /internal/usage needs, about as
-- many rows as tenants × agents × models an hour instead of one per actor.
-- `source` holds usage_llm_hourly rows; the columns keep their names.
SELECT hour, microdao_id, agent_id, CAST(NULL AS VARCHAR) AS actor_id, model, provider,
       CAST(SUM(calls) AS BIGINT) AS calls,
       CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
       CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
       CAST(SUM(cache_creation_tokens) AS BIGINT) AS cache_creation_tokens,
       CAST(SUM(cache_read_tokens) AS BIGINT) AS cache_read_tokens,
       CAST(SUM(total_tokens) AS BIGINT) AS total_tokens,
       CAST(SUM(latency_ms_sum) AS BIGINT) AS latency_ms_sum,
       CAST(SUM(latency_count) AS BIGINT) AS latency_count,
       CAST(SUM(failures) AS BIGINT) AS failures,
       SUM(cost_usd) AS cost_usd
FROM source
GROUP BY hour, microdao_id, agent_id, model, provider
