//! The analytics SQL of the ClickHouse store: the WHERE clause of a [`Filter`] with its bound
//! arguments, and the stats columns every series and group reads.

use clickhouse::Row;
use serde::Deserialize;

use super::money::from_d12;
use super::ClickhouseStore;
use crate::domain::Millis;
use crate::store::{Filter, Stats, StoreError};

#[derive(Row, Deserialize)]
pub(super) struct StatsRow {
    pub(super) g: String,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) cost_usd: i128,
    pub(super) users: u64,
    pub(super) last_seen: i64,
}

impl StatsRow {
    pub(super) fn stats(&self) -> Stats {
        Stats {
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_usd: from_d12(self.cost_usd),
            users: self.users,
            last_seen: Millis(self.last_seen),
        }
    }
}

/// A bound query argument (the `?`s of a built WHERE clause, in order). Lists are bound as
/// arrays and tested with `has(list, column)`: ClickHouse 18.16 takes no array after `IN`. (For a
/// long list, `IN (SELECT arrayJoin(list))` builds a set instead of scanning the list per row.)
pub(super) enum Arg {
    Int(i64),
    Str(String),
    Strs(Vec<String>),
    Codes(Vec<u16>),
}

pub(super) fn bind_all(
    mut q: clickhouse::query::Query,
    args: Vec<Arg>,
) -> clickhouse::query::Query {
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

pub(super) fn where_clause(f: &Filter) -> (String, Vec<Arg>) {
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

pub(super) const STATS_COLUMNS: &str = "toUInt64(count()) AS requests, toUInt64(sum(status_code >= 400)) AS errors,
    toUInt64(sum(prompt_tokens)) AS prompt_tokens, toUInt64(sum(completion_tokens)) AS completion_tokens,
    sum(cost_usd) AS cost_usd, toUInt64(ifNull(uniqExact(user), 0)) AS users, toInt64(max(ts)) AS last_seen";

impl ClickhouseStore {
    pub(super) async fn stats_rows(
        &self,
        sql: String,
        args: Vec<Arg>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        Ok(bind_all(self.client.query(&sql), args).fetch_all().await?)
    }
}
