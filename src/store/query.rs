//! The analytics vocabulary of the usage-store port: which events a query covers ([`Filter`]),
//! how it buckets and groups them ([`Bucket`], [`GroupBy`]), and what it answers ([`Stats`],
//! [`Latency`], [`RollupRow`]). Latency percentiles are computed here, once, for both stores.

use rust_decimal::Decimal;

use crate::domain::{Metadata, Millis};

/// Which events an analytics query covers. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub from: Millis,
    pub to: Millis,
    pub workspace_id: Option<String>,
    pub api_key_ids: Vec<String>,
    pub provider_slugs: Vec<String>,
    /// `(ai_provider, model)` pairs.
    pub models: Vec<(String, String)>,
    pub status_codes: Vec<u16>,
    pub metadata: Metadata,
    pub trace_id: Option<String>,
    pub config_ids: Vec<String>,
}

/// Time-series bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    /// The width in milliseconds.
    pub fn ms(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// Minutes for ranges up to 2 hours, hours up to 2 days, days beyond.
    pub fn for_range(from: Millis, to: Millis) -> Bucket {
        let span = to.0 - from.0;
        if span <= 2 * 3_600_000 {
            Bucket::Minute
        } else if span <= 2 * 86_400_000 {
            Bucket::Hour
        } else {
            Bucket::Day
        }
    }
}

/// Aggregates of one bucket (or of a whole group).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Decimal,
    pub users: u64,
    pub last_seen: Millis,
}

impl Stats {
    /// Prompt and completion tokens together.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Latency distribution of a bucket, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub avg: f64,
    pub p50: u32,
    pub p90: u32,
    pub p95: u32,
    pub p99: u32,
}

impl Latency {
    /// Nearest-rank percentiles of sorted values.
    pub fn of_sorted(v: &[u32]) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let sum: u64 = v.iter().map(|&x| u64::from(x)).sum();
        Latency {
            avg: sum as f64 / v.len() as f64,
            p50: rank(0.5),
            p90: rank(0.9),
            p95: rank(0.95),
            p99: rank(0.99),
        }
    }
}

/// The whole range's latency, then each bucket's.
pub type LatencyReport = (Latency, Vec<(Millis, Latency)>);

/// The latency report of `(ts, latency_ms)` rows in time order: every store computes it here, so
/// both answer with the same percentiles.
pub fn latency_report(rows: Vec<(i64, u32)>, b: Bucket) -> LatencyReport {
    let mut all = Vec::with_capacity(rows.len());
    let mut buckets: Vec<(Millis, Vec<u32>)> = Vec::new();
    for (ts, ms) in rows {
        let bucket = Millis(ts.div_euclid(b.ms()) * b.ms());
        match buckets.last_mut() {
            Some((at, v)) if *at == bucket => v.push(ms),
            _ => buckets.push((bucket, vec![ms])),
        }
        all.push(ms);
    }
    all.sort_unstable();
    let per = buckets
        .into_iter()
        .map(|(at, mut v)| {
            v.sort_unstable();
            (at, Latency::of_sorted(&v))
        })
        .collect();
    (Latency::of_sorted(&all), per)
}

/// Stats per time bucket and group value, `(bucket, value, stats)`: a stacked chart's data.
pub type GroupSeries = Vec<(Millis, String, Stats)>;

/// What analytics groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Model,
    AiProvider,
    Provider,
    ApiKey,
    Workspace,
    StatusCode,
    Config,
    Department,
    /// A metadata key.
    Metadata(String),
}

/// The rollup dimensions.
pub const ROLLUP_DIMENSIONS: [&str; 6] = [
    "api_key",
    "workspace",
    "department",
    "integration",
    "provider",
    "model",
];

/// One rollup row (for SQL users, Grafana and the exactness tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RollupRow {
    pub grain: String,
    pub bucket: Millis,
    pub dimension: String,
    pub value: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        let l = Latency::of_sorted(&v);
        assert_eq!((l.p50, l.p90, l.p95, l.p99), (50, 90, 95, 99));
        assert_eq!(Latency::of_sorted(&[]), Latency::default());
        // Nearest rank: the smallest value with at least p of the values at or below it.
        let l = Latency::of_sorted(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert_eq!((l.p50, l.p90, l.p95, l.p99), (50, 90, 100, 100));
        let one = Latency::of_sorted(&[7]);
        assert_eq!((one.p50, one.p95, one.p99), (7, 7, 7));
    }
}
