//! The LLM price catalogue: USD per token for prompt, completion,
//! cache-creation and cache-read tokens, by model.
//!
//! The default is a filtered copy of LiteLLM's MIT-licensed price map
//! (`queries/prices/`, licence beside it); `--prices FILE` replaces it with a
//! file of the same shape (LiteLLM's full map works as it is).

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
    models: HashMap<String, ModelPrice>,
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
    /// `sample_spec` of LiteLLM's file) are skipped.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(text)?;
        let models = raw
            .into_iter()
            .filter_map(|(name, v)| {
                serde_json::from_value::<ModelPrice>(v)
                    .ok()
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
    pub fn price(&self, model: &str, provider: Option<&str>) -> Option<&ModelPrice> {
        self.models
            .get(model)
            .or_else(|| provider.and_then(|p| self.models.get(&format!("{p}/{model}"))))
            .or_else(|| model.rsplit_once('/').and_then(|(_, m)| self.models.get(m)))
    }
}

/// The SQL function `llm_cost_usd(model, provider, prompt_tokens,
/// completion_tokens, cache_creation_tokens, cache_read_tokens)`: the cost
/// in USD by this catalogue, NULL for a model it has no price for. Prices
/// are linear in tokens, so pricing the sums of a group equals summing the
/// prices of its calls.
pub fn cost_udf(prices: Arc<PriceCatalogue>) -> ScalarUDF {
    use arrow::datatypes::DataType;
    let fun = move |args: &[ColumnarValue]| -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
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
    create_udf(
        "llm_cost_usd",
        vec![
            DataType::Utf8,
            DataType::Utf8,
            DataType::Int64,
            DataType::Int64,
            DataType::Int64,
            DataType::Int64,
        ],
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
        let p = c.price("m1", None).unwrap();
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
                .unwrap_or_else(|| panic!("{model}"));
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
