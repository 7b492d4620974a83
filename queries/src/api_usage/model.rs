//! The usage model behind the Usage API (the model of the open-source
//! Claude Code Usage Monitor): 5-hour session blocks, plan limits, burn rate
//! and predictions. Pure functions over LLM calls; times in milliseconds.

use std::collections::BTreeMap;

use serde::Serialize;

pub const HOUR_MS: i64 = 3_600_000;
pub const BLOCK_MS: i64 = 5 * HOUR_MS;

/// One LLM call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub timestamp_ms: i64,
    pub model: String,
    pub input: i64,
    pub output: i64,
    pub cache_creation: i64,
    pub cache_read: i64,
    /// `None` when the model has no price.
    pub cost: Option<f64>,
    /// How many messages this is (calls summed per hour count as many).
    pub messages: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TokenCounts {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cache_read_tokens: i64,
    pub total_tokens: i64,
}

impl TokenCounts {
    /// What counts toward a plan's token limit: input and output, as
    /// Claude Code Usage Monitor counts it (cache tokens are in
    /// `total_tokens`, not here).
    pub fn toward_limit(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStats {
    pub tokens: i64,
    pub cost: f64,
    pub messages: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BurnRate {
    pub tokens_per_minute: f64,
    pub cost_per_hour: f64,
}

/// A 5-hour session block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    pub id: String,
    pub start_time: i64,
    pub end_time: i64,
    pub is_active: bool,
    pub token_counts: TokenCounts,
    pub cost_usd: f64,
    pub burn_rate: BurnRate,
    pub models: Vec<String>,
    pub sent_messages_count: i64,
    pub per_model_stats: BTreeMap<String, ModelStats>,
    /// Calls of models without a price (their cost is not in `cost_usd`).
    pub unpriced_messages: i64,
}

/// Groups calls (any order) into blocks: a block starts at its first call's
/// time floored to the hour (UTC) and ends 5 hours later; a call at or after
/// the end starts a new block. A block is active while its end is after `now`.
pub fn blocks(calls: &[Call], now_ms: i64) -> Vec<Block> {
    let mut sorted: Vec<&Call> = calls.iter().collect();
    sorted.sort_by_key(|c| c.timestamp_ms);
    let mut out: Vec<Block> = Vec::new();
    for c in sorted {
        let start_new = out.last().is_none_or(|b| c.timestamp_ms >= b.end_time);
        if start_new {
            let start = c.timestamp_ms - c.timestamp_ms.rem_euclid(HOUR_MS);
            out.push(Block {
                id: format!("session-{}", start + BLOCK_MS),
                start_time: start,
                end_time: start + BLOCK_MS,
                is_active: false,
                token_counts: TokenCounts::default(),
                cost_usd: 0.0,
                burn_rate: BurnRate::default(),
                models: Vec::new(),
                sent_messages_count: 0,
                per_model_stats: BTreeMap::new(),
                unpriced_messages: 0,
            });
        }
        let b = out.last_mut().expect("a block exists");
        let total = c.input + c.output + c.cache_creation + c.cache_read;
        let t = &mut b.token_counts;
        t.input_tokens += c.input;
        t.output_tokens += c.output;
        t.cache_creation_tokens += c.cache_creation;
        t.cache_read_tokens += c.cache_read;
        t.total_tokens += total;
        b.sent_messages_count += c.messages;
        let cost = c.cost.unwrap_or(0.0);
        if c.cost.is_none() {
            b.unpriced_messages += c.messages;
        }
        b.cost_usd += cost;
        if !b.models.contains(&c.model) {
            b.models.push(c.model.clone());
        }
        let m = b.per_model_stats.entry(c.model.clone()).or_default();
        m.tokens += total;
        m.cost += cost;
        m.messages += c.messages;
    }
    for b in &mut out {
        b.is_active = b.end_time > now_ms;
        let elapsed_min = ((now_ms.min(b.end_time) - b.start_time) as f64 / 60_000.0).max(1.0);
        b.burn_rate = BurnRate {
            tokens_per_minute: b.token_counts.total_tokens as f64 / elapsed_min,
            cost_per_hour: b.cost_usd / (elapsed_min / 60.0),
        };
    }
    out
}

/// Limits of a plan: tokens, cost (USD) and messages per block.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub tokens: f64,
    pub cost: f64,
    pub messages: f64,
}

pub const PRO: Limits = Limits {
    tokens: 19_000.0,
    cost: 18.0,
    messages: 250.0,
};
pub const MAX5: Limits = Limits {
    tokens: 88_000.0,
    cost: 35.0,
    messages: 1_000.0,
};
pub const MAX20: Limits = Limits {
    tokens: 220_000.0,
    cost: 140.0,
    messages: 2_000.0,
};

/// The 90th percentile (linear interpolation between closest ranks).
pub fn p90(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = 0.9 * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(values[lo] + (values[hi] - values[lo]) * (rank - lo as f64))
}

/// Limits of `plan`. `custom`: `custom_limit_tokens` when set, otherwise the
/// P90 of the totals of finished blocks that started in the last 8 days, never
/// below the `pro` limit; cost and message limits the same way.
pub fn limits(
    plan: &str,
    custom_limit_tokens: Option<i64>,
    all_blocks: &[Block],
    now_ms: i64,
) -> Limits {
    match plan {
        "pro" => PRO,
        "max5" => MAX5,
        "max20" => MAX20,
        _ => {
            let finished: Vec<&Block> = all_blocks
                .iter()
                .filter(|b| !b.is_active && b.start_time >= now_ms - 8 * 24 * HOUR_MS)
                .collect();
            let mut tokens: Vec<f64> = finished
                .iter()
                .map(|b| b.token_counts.toward_limit() as f64)
                .collect();
            let mut cost: Vec<f64> = finished.iter().map(|b| b.cost_usd).collect();
            let mut msgs: Vec<f64> = finished
                .iter()
                .map(|b| b.sent_messages_count as f64)
                .collect();
            Limits {
                tokens: match custom_limit_tokens {
                    Some(t) => t as f64,
                    None => p90(&mut tokens).unwrap_or(0.0).max(PRO.tokens),
                },
                cost: p90(&mut cost).unwrap_or(0.0).max(PRO.cost),
                messages: p90(&mut msgs).unwrap_or(0.0).max(PRO.messages),
            }
        }
    }
}

/// When the token or cost limit, whichever first, is reached at the current
/// burn rate (ms); `None` when nothing burns. Already over: now. Tokens
/// toward the limit (input and output) burn at their own rate.
pub fn runs_out_at(block: &Block, limits: &Limits, now_ms: i64) -> Option<i64> {
    let t = &block.token_counts;
    let tpm = match t.total_tokens {
        0 => 0.0,
        total => block.burn_rate.tokens_per_minute * t.toward_limit() as f64 / total as f64,
    };
    let cpm = block.burn_rate.cost_per_hour / 60.0;
    let by_tokens = (tpm > 0.0).then(|| (limits.tokens - t.toward_limit() as f64).max(0.0) / tpm);
    let by_cost = (cpm > 0.0).then(|| (limits.cost - block.cost_usd).max(0.0) / cpm);
    let minutes = match (by_tokens, by_cost) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return None,
    };
    Some(now_ms + (minutes * 60_000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ms: i64, tokens: [i64; 4], cost: Option<f64>) -> Call {
        Call {
            timestamp_ms: ms,
            messages: 1,
            model: "m".into(),
            input: tokens[0],
            output: tokens[1],
            cache_creation: tokens[2],
            cache_read: tokens[3],
            cost,
        }
    }

    #[test]
    fn blocks_start_on_the_hour_and_last_five_hours() {
        let h = HOUR_MS;
        let calls = [
            call(10 * h + 1_000, [1250, 850, 0, 200], Some(0.034)),
            call(14 * h + 59 * 60_000, [1, 1, 0, 0], Some(0.0)),
            call(15 * h, [5, 5, 0, 0], None), // at the end: a new block
        ];
        let b = blocks(&calls, 16 * h);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start_time, b[0].end_time), (10 * h, 15 * h));
        assert_eq!(b[0].token_counts.total_tokens, 1250 + 850 + 200 + 2);
        assert_eq!(b[0].sent_messages_count, 2);
        assert!(!b[0].is_active);
        assert_eq!(
            (b[1].start_time, b[1].is_active, b[1].unpriced_messages),
            (15 * h, true, 1)
        );
        // One hour in: 10 tokens over 60 minutes.
        assert_eq!(b[1].burn_rate.tokens_per_minute, 10.0 / 60.0);
    }

    #[test]
    fn p90_and_custom_limits_have_the_pro_floor() {
        assert_eq!(p90(&mut []), None);
        let mut v: Vec<f64> = (1..=11).map(|x| x as f64 * 10.0).collect();
        assert_eq!(p90(&mut v), Some(100.0));
        let h = HOUR_MS;
        let calls: Vec<Call> = (0..4)
            .map(|i| call(i * 6 * h, [50_000 * (i + 1), 0, 0, 0], Some(1.0)))
            .collect();
        let b = blocks(&calls, 100 * h);
        let l = limits("custom", None, &b, 100 * h);
        // Totals 50k..200k: P90 = 150k + 0.7 × 50k.
        assert_eq!(l.tokens, 185_000.0);
        assert_eq!((l.cost, l.messages), (18.0, 250.0));
        assert_eq!(limits("custom", Some(5), &b, 100 * h).tokens, 5.0);
        assert_eq!(limits("max5", None, &b, 0), MAX5);
    }

    #[test]
    fn run_out_is_the_earlier_of_tokens_and_cost() {
        let h = HOUR_MS;
        // 6000 tokens and $3 in the first hour: 100 tokens/min, $3/h.
        let b = &blocks(&[call(0, [6000, 0, 0, 0], Some(3.0))], h)[0];
        let lim = Limits {
            tokens: 19_000.0,
            cost: 18.0,
            messages: 250.0,
        };
        // Tokens: 13000 / 100 = 130 min; cost: 15 / 0.05 = 300 min.
        assert_eq!(runs_out_at(b, &lim, h), Some(h + 130 * 60_000));
        let idle = &blocks(&[call(0, [0, 0, 0, 0], Some(0.0))], h)[0];
        assert_eq!(runs_out_at(idle, &lim, h), None);
    }
}
