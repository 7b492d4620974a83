//! The LLM price catalogue: USD per token for prompt, completion,
//! cache-creation and cache-read tokens, by model.
//!
//! The default is a filtered copy of LiteLLM's MIT-licensed price map
//! (`queries/prices/`, licence beside it); `--prices FILE` replaces it with a
//! file of the same shape (LiteLLM's full map works as it is).
//!
//! A model may carry `tally_earlier_prices`: the prices it had before a
//! change, each with the instant (`until`, RFC 3339) the next one took over
//! (`scripts/build_prices.py` writes them from LiteLLM's releases). A call is
//! priced at the price of its own time.

use std::collections::HashMap;
use std::path::Path;

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array};
use arrow::datatypes::Int64Type;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use serde::Deserialize;

const EMBEDDED: &str = include_str!("../prices/llm_model_prices.json");

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ModelPrice {
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    /// Falls back to the input price when the catalogue has none.
    pub cache_creation_input_token_cost: Option<f64>,
    pub cache_read_input_token_cost: Option<f64>,
}

/// Token counts of one or more calls to one model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens {
    pub prompt: f64,
    pub completion: f64,
    pub cache_creation: f64,
    pub cache_read: f64,
}

impl ModelPrice {
    /// Prompt, completion and cache tokens are counted apart (the four add
    /// up to the total, as the usage API defines it).
    pub fn cost(&self, t: Tokens) -> f64 {
        t.prompt * self.input_cost_per_token
            + t.completion * self.output_cost_per_token
            + t.cache_creation
                * self
                    .cache_creation_input_token_cost
                    .unwrap_or(self.input_cost_per_token)
            + t.cache_read
                * self
                    .cache_read_input_token_cost
                    .unwrap_or(self.input_cost_per_token)
    }
}

/// A model's price now and the prices it had before, each with the instant
/// it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrices {
    current: ModelPrice,
    /// `(until, price)`, `until` in ns since the epoch, ascending.
    earlier: Vec<(i64, ModelPrice)>,
}

impl ModelPrices {
    pub fn current(&self) -> &ModelPrice {
        &self.current
    }

    /// The price in force at `at` (ns since the epoch): the first earlier
    /// price that ended after it, else the current one.
    pub fn at(&self, at: i64) -> &ModelPrice {
        self.earlier
            .iter()
            .find(|(until, _)| at < *until)
            .map_or(&self.current, |(_, p)| p)
    }

    /// Whether the price never changed (one price serves every instant).
    pub fn is_fixed(&self) -> bool {
        self.earlier.is_empty()
    }
}

/// One catalogue entry as the file has it.
#[derive(Deserialize)]
struct Entry {
    #[serde(flatten)]
    current: ModelPrice,
    #[serde(default)]
    tally_earlier_prices: Vec<Earlier>,
}

#[derive(Deserialize)]
struct Earlier {
    until: String,
    #[serde(flatten)]
    price: ModelPrice,
}

impl Entry {
    /// `None` when an earlier price's `until` is not an RFC 3339 instant.
    fn prices(self) -> Option<ModelPrices> {
        let mut earlier = self
            .tally_earlier_prices
            .into_iter()
            .map(|e| {
                let until = chrono::DateTime::parse_from_rfc3339(&e.until).ok()?;
                Some((until.timestamp_nanos_opt()?, e.price))
            })
            .collect::<Option<Vec<_>>>()?;
        earlier.sort_by_key(|(until, _)| *until);
        Some(ModelPrices {
            current: self.current,
            earlier,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("reading price file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("price file {path} is not a JSON object of models: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// Which price catalogue (`[prices]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Prices")]
pub struct PricesArgs {
    /// LLM price catalogue (LiteLLM's JSON shape) instead of the built-in one.
    #[arg(
        id = "prices",
        value_name = "FILE",
        long = "prices",
        env = "TALLY_PRICES"
    )]
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
}

impl PricesArgs {
    pub fn load(&self) -> Result<PriceCatalogue, PriceError> {
        match &self.file {
            Some(path) => PriceCatalogue::from_file(path),
            None => Ok(PriceCatalogue::embedded()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PriceCatalogue {
    models: HashMap<String, ModelPrices>,
}

impl PriceCatalogue {
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the embedded price catalogue parses")
    }

    pub fn from_file(path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| PriceError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Entries without both per-token prices (images, embeddings, the
    /// `sample_spec` of LiteLLM's file) are skipped, and so is an entry
    /// whose earlier prices do not parse.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(text)?;
        let models = raw
            .into_iter()
            .filter_map(|(name, v)| {
                serde_json::from_value::<Entry>(v)
                    .ok()
                    .and_then(Entry::prices)
                    .map(|p| (name, p))
            })
            .collect();
        Ok(Self { models })
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model as named, then `provider/model`, then the name after its
    /// last `/`.
    pub fn price(&self, model: &str, provider: Option<&str>) -> Option<&ModelPrices> {
        self.models
            .get(model)
            .or_else(|| provider.and_then(|p| self.models.get(&format!("{p}/{model}"))))
            .or_else(|| model.rsplit_once('/').and_then(|(_, m)| self.models.get(m)))
    }
}

/// The SQL functions of this catalogue:
/// - `llm_cost_usd(model, provider, prompt_tokens, completion_tokens,
///   cache_creation_tokens, cache_read_tokens)`: the cost in USD at today's
///   price;
/// - `llm_cost_usd_at(…the same six…, at)`: the cost at the price in force
///   at `at`, ns since the epoch (the rollups' `hour`, or
///   `CAST(timestamp AS BIGINT)`).
///
/// Both are NULL for a model the catalogue has no price for. Prices are
/// linear in tokens, so pricing the sums of a group of one hour equals
/// summing the prices of its calls.
pub fn cost_udfs(prices: Arc<PriceCatalogue>) -> [ScalarUDF; 2] {
    [cost_udf(prices.clone(), false), cost_udf(prices, true)]
}

fn cost_udf(prices: Arc<PriceCatalogue>, dated: bool) -> ScalarUDF {
    use arrow::datatypes::DataType;
    let fun = move |args: &[ColumnarValue]| -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let at = dated.then(|| arrays[6].as_primitive::<Int64Type>());
        let (model, provider) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
        let n = |i: usize| arrays[i].as_primitive::<Int64Type>();
        let (p, c, cc, cr) = (n(2), n(3), n(4), n(5));
        let tokens = |a: &arrow::array::Int64Array, r: usize| {
            if a.is_null(r) {
                0.0
            } else {
                a.value(r) as f64
            }
        };
        let out: Float64Array = (0..model.len())
            .map(|r| {
                if model.is_null(r) {
                    return None;
                }
                let provider = (!provider.is_null(r)).then(|| provider.value(r));
                prices.price(model.value(r), provider).map(|price| {
                    let price = match at {
                        Some(at) if !at.is_null(r) => price.at(at.value(r)),
                        _ => price.current(),
                    };
                    price.cost(Tokens {
                        prompt: tokens(p, r),
                        completion: tokens(c, r),
                        cache_creation: tokens(cc, r),
                        cache_read: tokens(cr, r),
                    })
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    };
    let mut args = vec![
        DataType::Utf8,
        DataType::Utf8,
        DataType::Int64,
        DataType::Int64,
        DataType::Int64,
        DataType::Int64,
    ];
    if dated {
        args.push(DataType::Int64);
    }
    create_udf(
        if dated {
            "llm_cost_usd_at"
        } else {
            "llm_cost_usd"
        },
        args,
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(fun),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_order_and_cost() {
        let c = PriceCatalogue::parse(
            r#"{"m1": {"input_cost_per_token": 1.0, "output_cost_per_token": 2.0,
                       "cache_read_input_token_cost": 0.5},
                "acme/m2": {"input_cost_per_token": 3.0, "output_cost_per_token": 4.0},
                "sample_spec": {"input_cost_per_token": "x"},
                "img": {"output_cost_per_image": 1.0}}"#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        let p = c.price("m1", None).unwrap().current();
        let t = Tokens {
            prompt: 10.0,
            completion: 1.0,
            cache_creation: 2.0,
            cache_read: 4.0,
        };
        // 10×1 + 1×2 + 2×1 (creation falls back to input) + 4×0.5
        assert_eq!(p.cost(t), 16.0);
        assert!(c.price("m2", Some("acme")).is_some());
        assert!(c.price("openai/m1", None).is_some());
        assert!(c.price("m3", Some("acme")).is_none());
    }

    #[test]
    fn a_call_is_priced_at_the_price_of_its_time() {
        let c = PriceCatalogue::parse(
            r#"{"m": {"input_cost_per_token": 1.0, "output_cost_per_token": 2.0,
                      "tally_earlier_prices": [
                        {"until": "2025-06-01T00:00:00Z",
                         "input_cost_per_token": 5.0, "output_cost_per_token": 6.0},
                        {"until": "2025-01-01T00:00:00+01:00",
                         "input_cost_per_token": 9.0, "output_cost_per_token": 9.0}]},
                "bad": {"input_cost_per_token": 1.0, "output_cost_per_token": 2.0,
                        "tally_earlier_prices": [{"until": "June",
                         "input_cost_per_token": 5.0, "output_cost_per_token": 6.0}]}}"#,
        )
        .unwrap();
        assert!(c.price("bad", None).is_none());
        let m = c.price("m", None).unwrap();
        let ns = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap()
        };
        let input = |at: &str| m.at(ns(at)).input_cost_per_token;
        assert_eq!(input("2024-12-31T22:59:59Z"), 9.0);
        assert_eq!(input("2024-12-31T23:00:00Z"), 5.0);
        assert_eq!(input("2025-05-31T23:59:59Z"), 5.0);
        assert_eq!(input("2025-06-01T00:00:00Z"), 1.0);
        assert_eq!(m.current().input_cost_per_token, 1.0);
        assert!(!m.is_fixed());
    }

    #[test]
    fn embedded_catalogue_dates_the_haiku_price_cut() {
        // LiteLLM 1.55.0 listed claude-3-5-haiku-20241022 at $1/$5 per
        // million tokens; 1.72.0 (uploaded 2025-06-01) at $0.80/$4.
        let c = PriceCatalogue::embedded();
        let m = c
            .price("claude-3-5-haiku-20241022", Some("anthropic"))
            .unwrap();
        let jan = chrono::DateTime::parse_from_rfc3339("2025-01-15T00:00:00Z")
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap();
        let per_million = |x: f64| (x * 1e6 * 1e6).round() / 1e6;
        assert_eq!(per_million(m.at(jan).input_cost_per_token), 1.0);
        assert_eq!(per_million(m.at(jan).output_cost_per_token), 5.0);
        assert_eq!(per_million(m.current().input_cost_per_token), 0.8);
    }

    #[test]
    fn embedded_catalogue_has_common_models() {
        let c = PriceCatalogue::embedded();
        assert!(c.len() > 1000);
        assert!(c.price("gpt-4o-mini", Some("openai")).is_some());
    }

    #[test]
    fn models_retired_from_litellm_keep_their_last_price() {
        let c = PriceCatalogue::embedded();
        // (model, input, output, cache read) per million tokens, as Anthropic
        // lists them.
        for (model, input, output, read) in [
            ("claude-sonnet-4-20250514", 3.0, 15.0, 0.3),
            ("claude-opus-4-20250514", 15.0, 75.0, 1.5),
            ("claude-3-5-sonnet-20241022", 3.0, 15.0, 0.3),
            ("claude-3-5-haiku-20241022", 0.8, 4.0, 0.08),
        ] {
            let p = c
                .price(model, Some("anthropic"))
                .unwrap_or_else(|| panic!("{model}"))
                .current();
            let per_million = |x: f64| (x * 1e6 * 1e6).round() / 1e6;
            assert_eq!(
                (
                    per_million(p.input_cost_per_token),
                    per_million(p.output_cost_per_token),
                    per_million(p.cache_read_input_token_cost.unwrap())
                ),
                (input, output, read),
                "{model}"
            );
        }
    }
}
