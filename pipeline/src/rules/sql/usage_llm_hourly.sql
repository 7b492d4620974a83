-- Hourly rollup of usage_llm: one row per hour and (microdao_id, agent_id,
-- actor_id, model, provider). `source` holds each record of the hours once.
-- cost_usd prices the four token sums of the row at the price the catalogue
-- of the rollup's day gives for the row's hour (NULL for a model without a
-- price); the read APIs price the same sums with the catalogue of the
-- running server, also at the row's hour.
SELECT *,
       llm_cost_usd_at(model, provider, prompt_tokens, completion_tokens,
                       cache_creation_tokens, cache_read_tokens, hour) AS cost_usd
FROM (
SELECT CAST(date_trunc('hour', timestamp) AS BIGINT) AS hour,
       CAST(microdao_id AS VARCHAR) AS microdao_id,
       CAST(agent_id AS VARCHAR) AS agent_id,
       CAST(actor_id AS VARCHAR) AS actor_id,
       CAST(model AS VARCHAR) AS model,
       CAST(provider AS VARCHAR) AS provider,
       CAST(COUNT(*) AS BIGINT) AS calls,
       CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens,
       CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens,
       CAST(COALESCE(SUM(cache_creation_tokens), 0) AS BIGINT) AS cache_creation_tokens,
       CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens,
       CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS total_tokens,
       CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT) AS latency_ms_sum,
       CAST(COUNT(latency_ms) AS BIGINT) AS latency_count,
       CAST(COUNT(CASE WHEN NOT success THEN 1 END) AS BIGINT) AS failures
FROM source
GROUP BY 1, 2, 3, 4, 5, 6
)
