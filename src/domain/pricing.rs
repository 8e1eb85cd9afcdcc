//! Exact cost of a request. Prices are US cents per token (the unit of Portkey's open price
//! table, shipped as `data/prices.tsv`); costs come out in US dollars. All decimal, never f64.

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

/// Per-token prices of one model, in US cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: Decimal,
    pub output: Decimal,
    /// Cached input tokens; falls back to `input` when the table has no cached price.
    pub cache_read: Option<Decimal>,
    /// Input tokens written to the cache; falls back to `input` when the table has no price.
    pub cache_write: Option<Decimal>,
}

/// Token counts of one attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
    /// The part of `prompt` served from the provider's cache.
    pub cached: u64,
    /// The part of `prompt` written to the provider's cache (Anthropic's
    /// `cache_creation_input_tokens`, Bedrock's `cacheWriteInputTokens`), billed at its own rate.
    pub cache_write: u64,
}

/// The most tokens one attempt may report per count (prompt, completion): a hundred times the
/// largest context windows offered today, far above any real request and far below where sums
/// overflow. Usage above it is implausible (a broken or hostile upstream): it is clamped to the
/// bound and the event flagged (see [`TokenUsage::plausible`]).
pub const MAX_PLAUSIBLE_TOKENS: u64 = 100_000_000;

/// The integration setting that meters models without a price at $0 instead of refusing them
/// on paths with a cost budget.
pub const METER_UNPRICED_AT_ZERO: &str = "meter_unpriced_at_zero";

impl TokenUsage {
    /// The usage with every count clamped to [`MAX_PLAUSIBLE_TOKENS`] (and cached tokens to the
    /// prompt), and whether anything had to be clamped.
    pub fn plausible(self) -> (TokenUsage, bool) {
        let clamp = |t: u64| t.min(MAX_PLAUSIBLE_TOKENS);
        let prompt = clamp(self.prompt);
        let cached = self.cached.min(prompt);
        let out = TokenUsage {
            prompt,
            completion: clamp(self.completion),
            cached,
            cache_write: self.cache_write.min(prompt - cached),
        };
        let clamped = out.prompt != self.prompt
            || out.completion != self.completion
            || self.cached > MAX_PLAUSIBLE_TOKENS
            || self.cache_write > MAX_PLAUSIBLE_TOKENS;
        (out, clamped)
    }
}

impl Price {
    /// Cost in US dollars. Cached tokens and cache writes are part of the prompt, each billed at
    /// its own rate (the plain input rate where the price has none).
    /// Prices carry at most [`MAX_PRICE_SCALE`] decimal places in cents, so the cost has at most 12
    /// in dollars (the scale of the event schema) and no rounding happens. A cost past what a
    /// decimal holds (only from absurd token counts) saturates instead of overflowing.
    pub fn cost_usd(&self, u: TokenUsage) -> Decimal {
        let cached = u.cached.min(u.prompt);
        let written = u.cache_write.min(u.prompt - cached);
        let fresh = u.prompt - cached - written;
        let cents = Decimal::from(fresh)
            .saturating_mul(self.input)
            .saturating_add(
                Decimal::from(cached).saturating_mul(self.cache_read.unwrap_or(self.input)),
            )
            .saturating_add(
                Decimal::from(written).saturating_mul(self.cache_write.unwrap_or(self.input)),
            )
            .saturating_add(Decimal::from(u.completion).saturating_mul(self.output));
        (cents / Decimal::ONE_HUNDRED).normalize()
    }

    /// True when every rate is zero.
    pub fn is_free(&self) -> bool {
        self.input.is_zero()
            && self.output.is_zero()
            && self.cache_read.is_none_or(|c| c.is_zero())
            && self.cache_write.is_none_or(|c| c.is_zero())
    }

    /// Reads an integration model's `pricing_config` (`pay_as_you_go.{request,response}_token.price`);
    /// `None` when it holds no valid price (see [`Price::parse_pricing_config`]).
    pub fn from_pricing_config(v: &Value) -> Option<Price> {
        Self::parse_pricing_config(v).ok()
    }

    /// Checks an integration model's `pricing_config` as it is set: at least one of
    /// `pay_as_you_go.request_token.price` and `response_token.price`, and every price given a
    /// decimal number of US cents per token from 0 to [`MAX_PRICE_CENTS`] with at most
    /// [`MAX_PRICE_SCALE`] decimal places. The error names the offending field.
    pub fn parse_pricing_config(v: &Value) -> Result<Price, String> {
        let payg = v.get("pay_as_you_go");
        let get = |k: &str| -> Result<Option<Decimal>, String> {
            let Some(price) = payg.and_then(|p| p.get(k)).and_then(|t| t.get("price")) else {
                return Ok(None);
            };
            let field = format!("pay_as_you_go.{k}.price");
            decimal_of(price)
                .ok_or_else(|| {
                    format!("{field} must be a number of US cents per token, from 0 to {MAX_PRICE_CENTS}")
                })
                .and_then(|d| check_price(&field, d))
                .map(Some)
        };
        let input = get("request_token")?;
        let output = get("response_token")?;
        let cache_read = get("cache_read_input_token")?;
        let cache_write = get("cache_write_input_token")?;
        if input.is_none() && output.is_none() {
            return Err(
                "needs pay_as_you_go.request_token.price or response_token.price (US cents per token)"
                    .into(),
            );
        }
        Ok(Price {
            input: input.unwrap_or_default(),
            output: output.unwrap_or_default(),
            cache_read,
            cache_write,
        })
    }
}

/// The highest price accepted, in US cents per token: $1,000 a token, about ten million times
/// the dearest model priced today (a few cents a token). A price above it can only be a mistake
/// (or an attempt to make totals meaningless and budgets saturate), so it is refused where it is
/// set, and the shipped table is held to it when it loads.
pub const MAX_PRICE_CENTS: Decimal = Decimal::from_parts(100_000, 0, 0, false, 0);

/// `d` when it is a valid price for `field`: from 0 to [`MAX_PRICE_CENTS`], at most
/// [`MAX_PRICE_SCALE`] decimal places.
fn check_price(field: &str, d: Decimal) -> Result<Decimal, String> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!("{field} must not be negative"));
    }
    if d > MAX_PRICE_CENTS {
        return Err(format!(
            "{field} must be at most {MAX_PRICE_CENTS} (US cents per token, i.e. $1,000)"
        ));
    }
    if d.normalize().scale() > MAX_PRICE_SCALE {
        return Err(format!(
            "{field} must have at most {MAX_PRICE_SCALE} decimal places (US cents per token)"
        ));
    }
    Ok(d.abs())
}

/// How a request's model is priced, as cost budgets see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pricing {
    /// A price with some non-zero rate.
    #[default]
    Priced,
    /// Explicitly priced at zero: free, so cost budgets do not apply.
    Free,
    /// No price anywhere: a cost budget could never count it.
    Unpriced,
    /// No price, and the integration opted in to metering it at $0
    /// (`configurations.meter_unpriced_at_zero`).
    UnpricedAtZero,
}

impl Pricing {
    /// The pricing of a model with `price` (if any) on an integration that does or does not meter
    /// unpriced models at zero.
    pub fn of(price: Option<&Price>, meter_unpriced_at_zero: bool) -> Pricing {
        match price {
            Some(p) if p.is_free() => Pricing::Free,
            Some(_) => Pricing::Priced,
            None if meter_unpriced_at_zero => Pricing::UnpricedAtZero,
            None => Pricing::Unpriced,
        }
    }
}

/// The most decimal places a price (US cents per token) may have.
pub const MAX_PRICE_SCALE: u32 = 10;

/// An exact decimal as a JSON number (its exact text, never through f64).
pub fn decimal_json(d: Decimal) -> Value {
    d.normalize()
        .to_string()
        .parse::<serde_json::Number>()
        .map_or(Value::Null, Value::Number)
}

/// A JSON number or numeric string as an exact decimal (no float round trip).
pub fn decimal_of(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => {
            let s = n.to_string();
            Decimal::from_str(&s)
                .or_else(|_| Decimal::from_scientific(&s))
                .ok()
        }
        Value::String(s) => Decimal::from_str(s).ok(),
        _ => None,
    }
}

/// The shipped price table, keyed by provider and model.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    prices: HashMap<String, HashMap<String, Price>>,
}

/// The table built from Portkey's open price data (see `scripts/build-prices.py`).
pub const SHIPPED_PRICES: &str = include_str!("../../data/prices.tsv");

impl PriceTable {
    /// Parses `provider\tmodel\tinput\toutput\tcache_read\tcache_write` rows; `#` starts a comment.
    pub fn parse(tsv: &str) -> Result<Self, String> {
        let mut prices: HashMap<String, HashMap<String, Price>> = HashMap::new();
        for (n, line) in tsv.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 5 {
                return Err(format!("prices line {}: expected 5 or more columns", n + 1));
            }
            let num = |s: &str| -> Result<Option<Decimal>, String> {
                if s.is_empty() {
                    return Ok(None);
                }
                let d =
                    Decimal::from_str(s).map_err(|e| format!("prices line {}: {s}: {e}", n + 1))?;
                check_price(s, d)
                    .map(Some)
                    .map_err(|e| format!("prices line {}: {e}", n + 1))
            };
            let price = Price {
                input: num(f[2])?.unwrap_or_default(),
                output: num(f[3])?.unwrap_or_default(),
                cache_read: num(f[4])?,
                cache_write: num(f.get(5).copied().unwrap_or_default())?,
            };
            prices
                .entry(f[0].to_owned())
                .or_default()
                .insert(f[1].to_owned(), price);
        }
        Ok(PriceTable { prices })
    }

    /// The shipped table.
    pub fn shipped() -> Result<Self, String> {
        Self::parse(SHIPPED_PRICES)
    }

    /// The price of `model` at `provider`: an exact match, else the model without a
    /// `-YYYY-MM-DD` snapshot suffix. Azure-hosted OpenAI models fall back to OpenAI's prices.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<Price> {
        let find = |p: &str| {
            let table = self.prices.get(p)?;
            table
                .get(model)
                .or_else(|| strip_snapshot(model).and_then(|m| table.get(m)))
                .copied()
        };
        find(provider).or_else(|| match provider {
            "azure-openai" => find("openai"),
            _ => None,
        })
    }

    /// The models priced for a provider.
    pub fn models_of<'a>(&'a self, provider: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.prices
            .get(provider)
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
    }

    pub fn len(&self) -> usize {
        self.prices.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `gpt-4o-2024-08-06` → `gpt-4o`.
fn strip_snapshot(model: &str) -> Option<&str> {
    let (head, tail) = model.split_at(model.len().checked_sub(11)?);
    let date = tail.strip_prefix('-')?;
    let ok = date.len() == 10
        && date.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    ok.then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_reads_and_writes_are_each_billed_at_their_own_rate() {
        let t = PriceTable::shipped().unwrap();
        // Claude 3.7 Sonnet on Bedrock: input 0.0003, output 0.0015, cache read 0.00003, cache
        // write 0.000375 US cents per token (the source has the last two swapped; fixed here).
        let p = t
            .lookup("bedrock", "anthropic.claude-3-7-sonnet-20250219-v1:0")
            .unwrap();
        assert_eq!(p.cache_read, Some(Decimal::from_str("0.00003").unwrap()));
        assert_eq!(p.cache_write, Some(Decimal::from_str("0.000375").unwrap()));
        let u = TokenUsage {
            prompt: 1_000,
            completion: 100,
            cached: 200,
            cache_write: 300,
        };
        // 500 fresh × 0.0003 + 200 × 0.00003 + 300 × 0.000375 + 100 × 0.0015 = 0.4185 cents.
        assert_eq!(p.cost_usd(u), Decimal::from_str("0.004185").unwrap());
        let no_write_price = Price {
            cache_write: None,
            ..p
        };
        // Without a cache-write price, writes are billed as plain input.
        assert_eq!(
            no_write_price.cost_usd(u),
            Decimal::from_str("0.003960").unwrap()
        );
    }

    #[test]
    fn shipped_table_prices_gpt_4o_exactly() {
        let t = PriceTable::shipped().unwrap();
        assert!(t.len() > 1000);
        let max_scale = t
            .prices
            .values()
            .flat_map(|m| m.values())
            .flat_map(|p| [Some(p.input), Some(p.output), p.cache_read])
            .flatten()
            .map(|d| d.normalize().scale())
            .max();
        assert!(max_scale <= Some(MAX_PRICE_SCALE), "{max_scale:?}");
        let p = t.lookup("openai", "gpt-4o").unwrap();
        // $2.50 / 1M input, $10 / 1M output, $1.25 / 1M cached input.
        let u = TokenUsage {
            prompt: 1_000_000,
            completion: 1_000_000,
            cached: 0,
            cache_write: 0,
        };
        assert_eq!(p.cost_usd(u), Decimal::from(1250) / Decimal::from(100));
        let u = TokenUsage {
            prompt: 1_000_000,
            completion: 0,
            cached: 1_000_000,
            cache_write: 0,
        };
        assert_eq!(p.cost_usd(u).to_string(), "1.25");
        let u = TokenUsage {
            prompt: 25,
            completion: 24,
            cached: 0,
            cache_write: 0,
        };
        let mini = t.lookup("openai", "gpt-4o-mini").unwrap();
        assert_eq!(mini.cost_usd(u).to_string(), "0.00001815");
    }

    #[test]
    fn snapshot_suffix_and_azure_fallback() {
        let t = PriceTable::parse("openai\tgpt-x\t0.1\t0.2\t\t\n").unwrap();
        assert!(t.lookup("openai", "gpt-x-2024-08-06").is_some());
        assert!(t.lookup("azure-openai", "gpt-x").is_some());
        assert!(t.lookup("openai", "gpt-y").is_none());
        assert_eq!(strip_snapshot("a-2024-0806"), None);
        assert_eq!(strip_snapshot("short"), None);
    }

    #[test]
    fn custom_pricing_config() {
        let p = Price::from_pricing_config(&json!({"type":"static","pay_as_you_go":{
            "request_token":{"price":0.0001},"response_token":{"price":"0.0003"}}}))
        .unwrap();
        let u = TokenUsage {
            prompt: 10,
            completion: 10,
            cached: 3,
            cache_write: 0,
        };
        assert_eq!(p.cost_usd(u).to_string(), "0.00004");
        assert_eq!(Price::from_pricing_config(&json!({"type":"static"})), None);
        let too_fine = json!({"pay_as_you_go":{"request_token":{"price":"0.00000000001"}}});
        assert_eq!(Price::from_pricing_config(&too_fine), None);
    }

    /// A price above the bound, negative, or not a number is refused naming its field (one bad
    /// field is not silently read as zero beside a good one); the bound itself is accepted.
    #[test]
    fn pricing_config_prices_are_bounded_and_errors_name_the_field() {
        let cfg = |k: &str, price: Value| json!({"pay_as_you_go": {"request_token": {"price": 1}, k: {"price": price}}});
        for (field, price) in [
            ("response_token", json!("19000000000000000000000000")),
            ("response_token", json!(19000000000000000000000000u128)),
            ("response_token", json!(1e40)),
            ("response_token", json!("100000.0000000001")),
            ("cache_read_input_token", json!(-1)),
            ("response_token", json!("lots")),
        ] {
            let err = Price::parse_pricing_config(&cfg(field, price.clone())).unwrap_err();
            assert!(
                err.contains(&format!("pay_as_you_go.{field}.price")),
                "{price}: {err}"
            );
        }
        let over = Price::parse_pricing_config(&cfg("response_token", json!(100_001))).unwrap_err();
        assert!(over.contains("at most 100000"), "{over}");
        let at_bound = Price::parse_pricing_config(&cfg("response_token", json!(100_000))).unwrap();
        assert_eq!(at_bound.output, MAX_PRICE_CENTS);
        assert_eq!(MAX_PRICE_CENTS, Decimal::from(100_000));
        // A bounded price times the most tokens an attempt may count stays far inside a decimal.
        let (u, _) = TokenUsage {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: 0,
            cache_write: 0,
        }
        .plausible();
        let dearest = Price {
            input: MAX_PRICE_CENTS,
            output: MAX_PRICE_CENTS,
            cache_read: None,
            cache_write: None,
        };
        assert_eq!(dearest.cost_usd(u), Decimal::from(200_000_000_000u64));
    }

    /// The shipped table is held to the same bound when it loads; a row above it is refused.
    #[test]
    fn price_table_rows_are_bounded() {
        let t = PriceTable::shipped().unwrap();
        let dearest = t
            .prices
            .values()
            .flat_map(|m| m.values())
            .flat_map(|p| [Some(p.input), Some(p.output), p.cache_read])
            .flatten()
            .max()
            .unwrap();
        assert!(dearest <= MAX_PRICE_CENTS, "{dearest}");
        let err = PriceTable::parse("openai\tm\t0.1\t19000000000000000000000000\t\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("at most"), "{err}");
        assert!(PriceTable::parse("openai\tm\t-0.1\t1\t\n").is_err());
        assert!(PriceTable::parse("openai\tm\t100000\t1\t\n").is_ok());
    }

    #[test]
    fn implausible_usage_is_clamped_and_costs_never_overflow() {
        let huge = TokenUsage {
            prompt: u64::MAX,
            completion: 9_223_372_036_854_775_000,
            cached: u64::MAX,
            cache_write: 0,
        };
        let (u, clamped) = huge.plausible();
        assert!(clamped);
        assert_eq!(
            (u.prompt, u.completion, u.cached),
            (
                MAX_PLAUSIBLE_TOKENS,
                MAX_PLAUSIBLE_TOKENS,
                MAX_PLAUSIBLE_TOKENS
            )
        );
        let fine = TokenUsage {
            prompt: 10,
            completion: 5,
            cached: 3,
            cache_write: 0,
        };
        assert_eq!(fine.plausible(), (fine, false));
        let dear = Price {
            input: Decimal::from(u64::MAX),
            output: Decimal::from(u64::MAX),
            cache_read: None,
            cache_write: None,
        };
        assert!(
            dear.cost_usd(huge) > Decimal::ZERO,
            "saturates, never panics"
        );
    }

    #[test]
    fn rejects_bad_rows() {
        assert!(PriceTable::parse("openai\tm\tx\t1\t\n").is_err());
        assert!(PriceTable::parse("openai\tm\n").is_err());
    }
}
