//! The analytics SQL of the embedded store: series (also by group), latency, groups and rollups
//! over `usage_events` and `usage_rollup`, and the exact reading of their integer sums.

use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection};
use rust_decimal::Decimal;

use parking_lot::Mutex;

use super::recent::Recent;
use crate::domain::Millis;
use crate::store::{
    latency_report, Bucket, Filter, GroupBy, GroupSeries, LatencyReport, RollupRow, Stats,
    StoreError,
};

/// A sum of token counts read as its millions and the rest (see [`STATS_COLUMNS`]).
fn from_count_parts(millions: i64, rest: i64) -> u64 {
    let n = i128::from(millions) * 1_000_000 + i128::from(rest);
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

pub(super) fn from_pico(p: i64) -> Decimal {
    Decimal::new(p, 12).normalize()
}

/// A sum of picodollars read as its whole microdollars and the rest (see [`STATS_COLUMNS`]).
fn from_pico_parts(micro: i64, rest: i64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(micro) * 1_000_000 + i128::from(rest), 12).normalize()
}

/// A WHERE clause and its parameters.
fn where_clause(f: &Filter) -> (String, Vec<Sql>) {
    let mut sql = String::from("ts >= ? AND ts < ?");
    let mut args = vec![Sql::Integer(f.from.0), Sql::Integer(f.to.0)];
    let mut any_of = |col: &str, vals: Vec<Sql>, sql: &mut String| {
        if !vals.is_empty() {
            let marks = vec!["?"; vals.len()].join(",");
            sql.push_str(&format!(" AND {col} IN ({marks})"));
            args.extend(vals);
        }
    };
    let text = |v: &[String]| v.iter().map(|s| Sql::Text(s.clone())).collect::<Vec<_>>();
    if let Some(ws) = &f.workspace_id {
        any_of("workspace_id", vec![Sql::Text(ws.clone())], &mut sql);
    }
    any_of("api_key_id", text(&f.api_key_ids), &mut sql);
    any_of("provider_slug", text(&f.provider_slugs), &mut sql);
    any_of("config_id", text(&f.config_ids), &mut sql);
    any_of(
        "status_code",
        f.status_codes
            .iter()
            .map(|c| Sql::Integer(i64::from(*c)))
            .collect(),
        &mut sql,
    );
    if let Some(t) = &f.trace_id {
        any_of("trace_id", vec![Sql::Text(t.clone())], &mut sql);
    }
    if !f.models.is_empty() {
        let ors = vec!["(ai_provider = ? AND model = ?)"; f.models.len()].join(" OR ");
        sql.push_str(&format!(" AND ({ors})"));
        for (p, m) in &f.models {
            args.push(Sql::Text(p.clone()));
            args.push(Sql::Text(m.clone()));
        }
    }
    for (k, v) in &f.metadata {
        sql.push_str(" AND json_extract(metadata, ?) = ?");
        args.push(Sql::Text(json_path(k)));
        args.push(Sql::Text(v.clone()));
    }
    (sql, args)
}

/// `$."key"` with the key quoted, so any metadata key is a literal member name.
fn json_path(key: &str) -> String {
    format!("$.\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Cost is summed as whole microdollars and the rest apart: SQLite's `sum` of integers fails past
/// an i64 (an error, which would fail the whole query), which picodollars reach at $9.2 M (an
/// organisation's year); the parts reach it only at $9.2 M × 10^6 and after 9.2 × 10^12 events.
/// Token counts are summed the same way, as millions and the rest: a count is at most an i64, so
/// the parts cannot overflow before 10^6 events of the largest count, or 9.2 × 10^12 events.
const STATS_COLUMNS: &str = "count(*), coalesce(sum(status_code >= 400), 0),
    coalesce(sum(prompt_tokens / 1000000), 0), coalesce(sum(prompt_tokens % 1000000), 0),
    coalesce(sum(completion_tokens / 1000000), 0), coalesce(sum(completion_tokens % 1000000), 0),
    coalesce(sum(cost_pico / 1000000), 0), coalesce(sum(cost_pico % 1000000), 0),
    count(DISTINCT user), coalesce(max(ts), 0)";

fn stats_of(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Stats> {
    Ok(Stats {
        requests: row.get::<_, i64>(at)? as u64,
        errors: row.get::<_, i64>(at + 1)? as u64,
        prompt_tokens: from_count_parts(row.get(at + 2)?, row.get(at + 3)?),
        completion_tokens: from_count_parts(row.get(at + 4)?, row.get(at + 5)?),
        cost_usd: from_pico_parts(row.get(at + 6)?, row.get(at + 7)?),
        users: row.get::<_, i64>(at + 8)? as u64,
        last_seen: Millis(row.get(at + 9)?),
    })
}

/// Stats over the filter per time bucket, per group value, or per both (the one query behind
/// `series`, `groups` and `series_by`): in bucket order, within a bucket most requests first,
/// then by value. A key left out reads as 0 (the bucket) or `''` (the value); one must be given.
fn stats_by(
    conn: &Mutex<Connection>,
    recent: &Recent,
    f: &Filter,
    bucket: Option<Bucket>,
    by: Option<&GroupBy>,
) -> Result<GroupSeries, StoreError> {
    if let Some(rows) = recent.stats_by(f, bucket, by) {
        return Ok(rows);
    }
    let conn = conn.lock();
    let (cond, filter_args) = where_clause(f);
    let (mut args, mut keys) = (Vec::new(), Vec::new());
    let at = match bucket {
        Some(b) => {
            args.extend([Sql::Integer(b.ms()), Sql::Integer(b.ms())]);
            keys.push("bucket");
            "(ts / ?) * ?".to_owned()
        }
        None => "0".to_owned(),
    };
    let value = match by {
        Some(by) => {
            let (col, col_arg) = group_column(by);
            args.extend(col_arg);
            keys.push("g");
            col
        }
        None => "''".to_owned(),
    };
    args.extend(filter_args);
    let keys = keys.join(", ");
    let sql = format!(
        "SELECT {at} AS bucket, {value} AS g, {STATS_COLUMNS} FROM usage_events WHERE {cond}
         GROUP BY {keys} ORDER BY bucket, count(*) DESC, g"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        let g = match r.get::<_, Sql>(1)? {
            Sql::Text(s) => s,
            Sql::Integer(i) => i.to_string(),
            Sql::Real(x) => x.to_string(),
            _ => String::new(),
        };
        Ok((Millis(r.get(0)?), g, stats_of(r, 2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn series(
    conn: &Mutex<Connection>,
    recent: &Recent,
    f: &Filter,
    b: Bucket,
) -> Result<Vec<(Millis, Stats)>, StoreError> {
    let rows = stats_by(conn, recent, f, Some(b), None)?;
    Ok(rows.into_iter().map(|(at, _, s)| (at, s)).collect())
}

pub(super) fn series_by(
    conn: &Mutex<Connection>,
    recent: &Recent,
    f: &Filter,
    b: Bucket,
    by: &GroupBy,
) -> Result<GroupSeries, StoreError> {
    stats_by(conn, recent, f, Some(b), Some(by))
}

pub(super) fn latency(
    conn: &Mutex<Connection>,
    recent: &Recent,
    f: &Filter,
    b: Bucket,
) -> Result<LatencyReport, StoreError> {
    if let Some(report) = recent.latency(f, b) {
        return Ok(report);
    }
    let conn = conn.lock();
    let (cond, args) = where_clause(f);
    let sql = format!("SELECT ts, latency_ms FROM usage_events WHERE {cond} ORDER BY ts");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
    })?;
    Ok(latency_report(rows.collect::<Result<Vec<_>, _>>()?, b))
}

fn group_column(by: &GroupBy) -> (String, Option<Sql>) {
    match by {
        GroupBy::User => ("coalesce(user, '')".into(), None),
        GroupBy::Model => ("model".into(), None),
        GroupBy::AiProvider => ("ai_provider".into(), None),
        GroupBy::Provider => ("provider_slug".into(), None),
        GroupBy::ApiKey => ("api_key_id".into(), None),
        GroupBy::Workspace => ("workspace_id".into(), None),
        GroupBy::StatusCode => ("CAST(status_code AS TEXT)".into(), None),
        GroupBy::Config => ("coalesce(config_id, '')".into(), None),
        GroupBy::Department => ("coalesce(department, '')".into(), None),
        GroupBy::Metadata(k) => (
            "coalesce(json_extract(metadata, ?), '')".into(),
            Some(Sql::Text(json_path(k))),
        ),
    }
}

pub(super) fn groups(
    conn: &Mutex<Connection>,
    recent: &Recent,
    f: &Filter,
    by: &GroupBy,
) -> Result<Vec<(String, Stats)>, StoreError> {
    let rows = stats_by(conn, recent, f, None, Some(by))?;
    Ok(rows.into_iter().map(|(_, g, s)| (g, s)).collect())
}

pub(super) fn rollups(
    conn: &mut Connection,
    grain: &str,
    dimension: &str,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT grain, bucket, dimension, value, requests, errors, prompt_tokens, completion_tokens, cost_pico
         FROM usage_rollup WHERE grain = ? AND dimension = ? ORDER BY bucket, value",
    )?;
    let rows = stmt.query_map(params![grain, dimension], |r| {
        Ok(RollupRow {
            grain: r.get(0)?,
            bucket: Millis(r.get(1)?),
            dimension: r.get(2)?,
            value: r.get(3)?,
            requests: r.get::<_, i64>(4)? as u64,
            errors: r.get::<_, i64>(5)? as u64,
            prompt_tokens: r.get::<_, i64>(6)? as u64,
            completion_tokens: r.get::<_, i64>(7)? as u64,
            cost_usd: from_pico(r.get(8)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
