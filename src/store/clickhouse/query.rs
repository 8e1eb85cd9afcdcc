//! The analytics SQL of the ClickHouse store: the WHERE clause of a [`Filter`] with its bound
//! arguments, the stats columns every series and group reads, and the queries of the port:
//! series (also by group), latency, groups and rollups.

use clickhouse::{Client, Row};
use serde::Deserialize;

use super::money::from_d12;
use crate::domain::Millis;
use crate::store::{
    latency_report, Bucket, Filter, GroupBy, GroupSeries, LatencyReport, RollupRow, Stats,
    StoreError,
};

/// A row of [`stats_by`]: its time bucket, its group value and the [`STATS_COLUMNS`].
#[derive(Row, Deserialize)]
struct StatsRow {
    bucket: i64,
    g: String,
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: i128,
    users: u64,
    last_seen: i64,
}

impl StatsRow {
    fn into_parts(self) -> (Millis, String, Stats) {
        let stats = Stats {
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_usd: from_d12(self.cost_usd),
            users: self.users,
            last_seen: Millis(self.last_seen),
        };
        (Millis(self.bucket), self.g, stats)
    }
}

/// A bound query argument (the `?`s of a built WHERE clause, in order). Lists are bound as
/// arrays and tested with `has(list, column)`: ClickHouse 18.16 takes no array after `IN`. (For a
/// long list, `IN (SELECT arrayJoin(list))` builds a set instead of scanning the list per row.)
enum Arg {
    Int(i64),
    Str(String),
    Strs(Vec<String>),
    Codes(Vec<u16>),
}

fn bind_all(mut q: clickhouse::query::Query, args: Vec<Arg>) -> clickhouse::query::Query {
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Str(v) => q.bind(v),
            Arg::Strs(v) => q.bind(v),
            Arg::Codes(v) => q.bind(v),
        };
    }
    q
}

fn where_clause(f: &Filter) -> (String, Vec<Arg>) {
    let mut sql = String::from("ts >= ? AND ts < ?");
    let mut args = vec![Arg::Int(f.from.0), Arg::Int(f.to.0)];
    let mut any_of = |col: &str, vals: &[String]| {
        if !vals.is_empty() {
            sql.push_str(&format!(" AND has(?, {col})"));
            args.push(Arg::Strs(vals.to_vec()));
        }
    };
    any_of("workspace_id", f.workspace_id.as_slice());
    any_of("api_key_id", &f.api_key_ids);
    any_of("provider_slug", &f.provider_slugs);
    any_of("ifNull(config_id, '')", &f.config_ids);
    any_of("trace_id", f.trace_id.as_slice());
    if !f.status_codes.is_empty() {
        sql.push_str(" AND has(?, toUInt16(status_code))");
        args.push(Arg::Codes(f.status_codes.clone()));
    }
    if !f.models.is_empty() {
        let ors = vec!["(ai_provider = ? AND model = ?)"; f.models.len()].join(" OR ");
        sql.push_str(&format!(" AND ({ors})"));
        for (p, m) in &f.models {
            args.push(Arg::Str(p.clone()));
            args.push(Arg::Str(m.clone()));
        }
    }
    for (k, v) in &f.metadata {
        sql.push_str(
            " AND has(metadata_keys, ?) AND metadata_values[indexOf(metadata_keys, ?)] = ?",
        );
        args.push(Arg::Str(k.clone()));
        args.push(Arg::Str(k.clone()));
        args.push(Arg::Str(v.clone()));
    }
    (sql, args)
}

const STATS_COLUMNS: &str = "toUInt64(count()) AS requests, toUInt64(sum(status_code >= 400)) AS errors,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens, toUInt64(sum(completion_tokens)) AS completion_tokens,
    sum(cost_usd) AS cost_usd, toUInt64(ifNull(uniqExact(user), 0)) AS users, toInt64(max(ts)) AS last_seen";

/// Stats over the filter per time bucket, per group value, or per both (the one query behind
/// `series`, `groups` and `series_by`): in bucket order, within a bucket most requests first,
/// then by value. A key left out reads as 0 (the bucket) or `''` (the value); one must be given.
async fn stats_by(
    c: &Client,
    filter: &Filter,
    bucket: Option<Bucket>,
    by: Option<&GroupBy>,
) -> Result<GroupSeries, StoreError> {
    let (cond, mut args) = where_clause(filter);
    let mut keys = Vec::new();
    let at = match bucket {
        Some(b) => {
            keys.push("bucket");
            format!("toInt64(intDiv(ts, {ms}) * {ms})", ms = b.ms())
        }
        None => "toInt64(0)".to_owned(),
    };
    let value = match by {
        Some(by) => {
            if let GroupBy::Metadata(k) = by {
                args.insert(0, Arg::Str(k.clone()));
            }
            keys.push("g");
            group_column(by)
        }
        None => "''",
    };
    let keys = keys.join(", ");
    let sql = format!(
        "SELECT {at} AS bucket, {value} AS g, {STATS_COLUMNS} FROM usage_events WHERE {cond}
         GROUP BY {keys} ORDER BY bucket, requests DESC, g"
    );
    let rows: Vec<StatsRow> = bind_all(c.query(&sql), args).fetch_all().await?;
    Ok(rows.into_iter().map(StatsRow::into_parts).collect())
}

/// Per-bucket stats over the filter, in time order.
pub(super) async fn series(
    c: &Client,
    filter: &Filter,
    bucket: Bucket,
) -> Result<Vec<(Millis, Stats)>, StoreError> {
    let rows = stats_by(c, filter, Some(bucket), None).await?;
    Ok(rows.into_iter().map(|(at, _, s)| (at, s)).collect())
}

/// Per-bucket stats of each group value over the filter, in time order.
pub(super) async fn series_by(
    c: &Client,
    filter: &Filter,
    bucket: Bucket,
    by: &GroupBy,
) -> Result<GroupSeries, StoreError> {
    stats_by(c, filter, Some(bucket), Some(by)).await
}

/// The latency report over the filter (computed by [`latency_report`], as in every store).
pub(super) async fn latency(
    c: &Client,
    filter: &Filter,
    bucket: Bucket,
) -> Result<LatencyReport, StoreError> {
    let (cond, args) = where_clause(filter);
    let sql = format!("SELECT ts, latency_ms FROM usage_events WHERE {cond} ORDER BY ts");
    let rows: Vec<(i64, u32)> = bind_all(c.query(&sql), args).fetch_all().await?;
    Ok(latency_report(rows, bucket))
}

/// The column (an expression) a group reads; a metadata key is bound as the first argument.
fn group_column(by: &GroupBy) -> &'static str {
    match by {
        GroupBy::User => "ifNull(user, '')",
        GroupBy::Model => "model",
        GroupBy::AiProvider => "ai_provider",
        GroupBy::Provider => "provider_slug",
        GroupBy::ApiKey => "api_key_id",
        GroupBy::Workspace => "workspace_id",
        GroupBy::StatusCode => "toString(status_code)",
        GroupBy::Config => "ifNull(config_id, '')",
        GroupBy::Department => "ifNull(department, '')",
        GroupBy::Metadata(_) => "metadata_values[indexOf(metadata_keys, ?)]",
    }
}

/// Stats per group value over the filter, most requests first.
pub(super) async fn groups(
    c: &Client,
    filter: &Filter,
    by: &GroupBy,
) -> Result<Vec<(String, Stats)>, StoreError> {
    let rows = stats_by(c, filter, None, Some(by)).await?;
    Ok(rows.into_iter().map(|(_, g, s)| (g, s)).collect())
}

/// Every rollup row of a grain and dimension, its partial rows (not merged yet) summed.
pub(super) async fn rollups(
    c: &Client,
    grain: &str,
    dimension: &str,
) -> Result<Vec<RollupRow>, StoreError> {
    #[derive(Row, Deserialize)]
    struct R {
        bucket: i64,
        value: String,
        requests: u64,
        errors: u64,
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_usd: i128,
    }
    let rows: Vec<R> = c
        .query(
            "SELECT bucket, value, toUInt64(sum(requests)) AS requests, toUInt64(sum(errors)) AS errors,
               toUInt64(sum(prompt_tokens)) AS prompt_tokens, toUInt64(sum(completion_tokens)) AS completion_tokens,
               sum(cost_usd) AS cost_usd
             FROM usage_rollup WHERE grain = ? AND dimension = ?
             GROUP BY bucket, value ORDER BY bucket, value",
        )
        .bind(grain)
        .bind(dimension)
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| RollupRow {
            grain: grain.to_owned(),
            bucket: Millis(r.bucket),
            dimension: dimension.to_owned(),
            value: r.value,
            requests: r.requests,
            errors: r.errors,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cost_usd: from_d12(r.cost_usd),
        })
        .collect())
}
