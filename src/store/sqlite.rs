//! The embedded usage store: one SQLite file in the data dir (`usage.sqlite`, WAL mode), with
//! the tables of `schemas/sqlite/`. One connection writes, owned by a dedicated thread at
//! background priority ([`super::background_priority`]: aggregation must never take CPU from
//! requests in flight; on a small machine a burst of inserts on a normal-priority thread showed
//! up directly in the gateway's p99); another
//! connection serves analytics reads under a mutex, so a long query never blocks ingestion.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OptionalExtension};
use rust_decimal::Decimal;

use super::*;
use crate::domain::hash::FastHash;

const DDL: &str = include_str!("../../schemas/sqlite/001_init.sql");
/// The audit trail's table (version 2; `IF NOT EXISTS`, so it applies to older store files too).
const DDL_AUDIT: &str = include_str!("../../schemas/sqlite/002_audit.sql");

/// Dollars ↔ integer picodollars (the store's exact money column).
fn to_pico(d: Decimal) -> i64 {
    let mut d = d;
    d.rescale(12);
    i64::try_from(d.mantissa()).unwrap_or(i64::MAX)
}

/// A token count as SQLite's integer, bounded as the gateway meters it: a log may hold older
/// events with absurd counts, which must neither wrap negative nor overflow sums (the ClickHouse
/// store bounds them the same way, so both answer alike).
fn count_sql(n: u64) -> i64 {
    i64::try_from(n.min(crate::domain::pricing::MAX_PLAUSIBLE_TOKENS)).unwrap_or(i64::MAX)
}

/// A sum of token counts read as its millions and the rest (see [`STATS_COLUMNS`]).
fn from_count_parts(millions: i64, rest: i64) -> u64 {
    let n = i128::from(millions) * 1_000_000 + i128::from(rest);
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

fn from_pico(p: i64) -> Decimal {
    Decimal::new(p, 12).normalize()
}

/// A sum of picodollars read as its whole microdollars and the rest (see [`STATS_COLUMNS`]).
fn from_pico_parts(micro: i64, rest: i64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(micro) * 1_000_000 + i128::from(rest), 12).normalize()
}

/// A rollup cell's cost. A cell holds at most an i64 of picodollars, $9.2 M (one key, model,
/// workspace… in one minute or day); past that it stays at the maximum rather than wrap.
fn rollup_pico(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or_else(|_| {
        tracing::warn!(picodollars = %sum, "a usage rollup cell passed $9.2 M; it is capped there");
        i64::MAX
    })
}

/// Records, inside the transaction that stored a batch, that `consumer` has read its log up to
/// `next` (so the rows and the position commit together).
fn set_offset(
    tx: &rusqlite::Transaction<'_>,
    consumer: &str,
    next: u64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO consumer_offsets VALUES (?1, ?2)
         ON CONFLICT (consumer) DO UPDATE SET next_offset = excluded.next_offset",
        params![consumer, next as i64],
    )
}

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The embedded usage store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: std::sync::mpsc::Sender<WriteJob>,
    /// The writer thread, for readers that wait on it.
    writer_thread: super::Hurry,
    reader: Arc<Mutex<Connection>>,
}

/// Runs write jobs on their own thread at background priority.
fn writer_thread(
    mut conn: Connection,
    jobs: std::sync::mpsc::Receiver<WriteJob>,
    hurry: super::Hurry,
) {
    hurry.enter();
    super::background_priority();
    for job in jobs {
        job(&mut conn);
    }
    hurry.leave();
}

impl SqliteStore {
    /// Opens (creating) the store file and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_files(path)?;
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // The log, not this file, is the durable record: a store lost to a power cut is rebuilt
        // from it (its offsets are in the same transactions), so NORMAL sync and infrequent
        // checkpoints are safe and keep ingestion cheap.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "wal_autocheckpoint", 4_000)?;
        writer.execute_batch(DDL)?;
        writer.execute_batch(DDL_AUDIT)?;
        let reader = Connection::open(path)?;
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        let writer_hurry = super::Hurry::default();
        let hurry = writer_hurry.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_thread(writer, rx, hurry))?;
        Ok(SqliteStore {
            writer: tx,
            writer_thread: writer_hurry,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (done, result) = tokio::sync::oneshot::channel();
        let priority = super::Priority::current();
        let sent = self.writer.send(Box::new(move |c: &mut Connection| {
            priority.apply();
            let _ = done.send(f(c));
        }));
        async move {
            sent.map_err(|_| StoreError::Task("the store writer has stopped".into()))?;
            result
                .await
                .map_err(|_| StoreError::Task("the store writer dropped a job".into()))?
        }
        .boxed()
    }

    fn blocking<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let conn = conn.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&mut conn.lock()))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        }
        .boxed()
    }
}

/// Creates the store file 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the
/// database file's mode), and narrows the mode of files an older version left wider.
fn private_files(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        crate::files::private_dir(dir)?;
    }
    drop(crate::files::private_file(path)?);
    for ext in ["sqlite-wal", "sqlite-shm"] {
        let side = path.with_extension(ext);
        if side.exists() {
            crate::files::narrow(&side, 0o600)?;
        }
    }
    Ok(())
}

/// The consumers' positions in a store file, read without starting a store (for `tollgate log`).
pub fn read_offsets(path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT consumer, next_offset FROM consumer_offsets")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(c, o)| (c, u64::try_from(o).unwrap_or(0)))
        .collect())
}

/// Moves a consumer's position back to `to` (events after it are ingested again; the store
/// drops the ones it has by `event_id`).
pub fn rewind_offset(path: &Path, consumer: &str, to: u64) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    conn.execute(
        "UPDATE consumer_offsets SET next_offset = ?2 WHERE consumer = ?1 AND next_offset > ?2",
        params![consumer, to as i64],
    )?;
    Ok(())
}

#[derive(Default)]
struct Agg {
    requests: i64,
    errors: i64,
    prompt: i64,
    completion: i64,
    cached: i64,
    cost: i128,
    latency: i64,
}

/// The rollup keys an event contributes to.
fn rollup_keys(e: &UsageEvent) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("api_key", Some(e.api_key_id.as_str())),
        ("workspace", Some(e.workspace_id.as_str())),
        ("department", e.department.as_deref()),
        ("integration", Some(e.integration_id.as_str())),
        ("provider", Some(e.provider_slug.as_str())),
        ("model", Some(e.model.as_str())),
    ]
    .into_iter()
    .filter_map(|(d, v)| v.map(|v| (d, v)))
}

fn ingest(
    conn: &mut Connection,
    events: &[UsageEvent],
    consumer: &str,
    next: u64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut new = 0;
    // Keyed by borrowed values (the batch outlives the map): no allocation per event and rollup.
    let mut rollups: HashMap<(&'static str, i64, &'static str, &str), Agg, FastHash> =
        HashMap::default();
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage_events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        )?;
        for e in events {
            let metadata = serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into());
            let inserted = insert.execute(params![
                e.event_id,
                e.at.0,
                e.organisation_id,
                e.workspace_id,
                e.api_key_id,
                e.provider_id,
                e.provider_slug,
                e.integration_id,
                e.ai_provider,
                e.department,
                e.user,
                metadata,
                e.model,
                e.endpoint.as_str(),
                e.status_code,
                count_sql(e.prompt_tokens),
                count_sql(e.completion_tokens),
                count_sql(e.cached_tokens),
                to_pico(e.cost_usd),
                e.priced,
                e.usage_source.as_str(),
                e.latency_ms,
                e.upstream_latency_ms,
                e.streamed,
                e.attempt_index,
                e.trace_id,
                e.config_id
            ])?;
            if inserted == 0 {
                continue; // seen before: a replay after a crash between insert and offset commit
            }
            new += 1;
            for (grain, bucket) in [
                ("minute", e.at.floor_minute().0),
                ("day", e.at.floor_day().0),
            ] {
                for (dim, value) in rollup_keys(e) {
                    let a = rollups.entry((grain, bucket, dim, value)).or_default();
                    a.requests += 1;
                    a.errors += i64::from(e.is_error());
                    a.prompt = a.prompt.saturating_add(count_sql(e.prompt_tokens));
                    a.completion = a.completion.saturating_add(count_sql(e.completion_tokens));
                    a.cached = a.cached.saturating_add(count_sql(e.cached_tokens));
                    a.cost += i128::from(to_pico(e.cost_usd));
                    a.latency += i64::from(e.latency_ms);
                }
            }
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO usage_rollup VALUES (?,?,?,?,?,?,?,?,?,?,?)
             ON CONFLICT (grain, bucket, dimension, value) DO UPDATE SET
               requests = requests + excluded.requests, errors = errors + excluded.errors,
               prompt_tokens = CASE WHEN prompt_tokens > 9223372036854775807 - excluded.prompt_tokens
                 THEN 9223372036854775807 ELSE prompt_tokens + excluded.prompt_tokens END,
               completion_tokens = CASE WHEN completion_tokens > 9223372036854775807 - excluded.completion_tokens
                 THEN 9223372036854775807 ELSE completion_tokens + excluded.completion_tokens END,
               cached_tokens = CASE WHEN cached_tokens > 9223372036854775807 - excluded.cached_tokens
                 THEN 9223372036854775807 ELSE cached_tokens + excluded.cached_tokens END,
               cost_pico = CASE WHEN cost_pico > 9223372036854775807 - excluded.cost_pico
                 THEN 9223372036854775807 ELSE cost_pico + excluded.cost_pico END,
               latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
        )?;
        for ((grain, bucket, dim, value), a) in &rollups {
            upsert.execute(params![
                grain,
                bucket,
                dim,
                value,
                a.requests,
                a.errors,
                a.prompt,
                a.completion,
                a.cached,
                rollup_pico(a.cost),
                a.latency
            ])?;
        }
        set_offset(&tx, consumer, next)?;
    }
    tx.commit()?;
    Ok(new)
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

fn series(
    conn: &mut Connection,
    f: &Filter,
    b: Bucket,
) -> Result<Vec<(Millis, Stats)>, StoreError> {
    let (cond, mut args) = where_clause(f);
    let sql = format!(
        "SELECT (ts / ?) * ? AS bucket, {STATS_COLUMNS} FROM usage_events WHERE {cond} GROUP BY bucket ORDER BY bucket"
    );
    let mut all = vec![Sql::Integer(b.ms()), Sql::Integer(b.ms())];
    all.append(&mut args);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(all), |r| {
        Ok((Millis(r.get(0)?), stats_of(r, 1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn latency(conn: &mut Connection, f: &Filter, b: Bucket) -> Result<LatencyReport, StoreError> {
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

fn groups(
    conn: &mut Connection,
    f: &Filter,
    by: &GroupBy,
) -> Result<Vec<(String, Stats)>, StoreError> {
    let (cond, mut args) = where_clause(f);
    let (col, col_arg) = group_column(by);
    let sql = format!(
        "SELECT {col} AS g, {STATS_COLUMNS} FROM usage_events WHERE {cond} GROUP BY g ORDER BY count(*) DESC, g"
    );
    let mut all: Vec<Sql> = col_arg.into_iter().collect();
    all.append(&mut args);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(all), |r| {
        let g: Sql = r.get(0)?;
        let g = match g {
            Sql::Text(s) => s,
            Sql::Integer(i) => i.to_string(),
            Sql::Real(x) => x.to_string(),
            _ => String::new(),
        };
        Ok((g, stats_of(r, 1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn rollups(
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

fn record_notifications(
    conn: &mut Connection,
    rows: &[Notification],
    consumer: &str,
    next: u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO notifications VALUES (?,?,?,?,?,?,?,?,?)")?;
        for n in rows {
            insert.execute(params![
                n.limit_event_id,
                n.channel,
                n.kind,
                n.budget,
                n.recipients,
                n.status,
                n.attempts,
                n.error,
                n.created_at.0
            ])?;
        }
        set_offset(&tx, consumer, next)?;
    }
    tx.commit()?;
    Ok(())
}

fn notifications(conn: &mut Connection, limit: usize) -> Result<Vec<Notification>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT limit_event_id, channel, kind, budget, recipients, status, attempts, error, created_at
         FROM notifications ORDER BY created_at DESC, limit_event_id, channel LIMIT ?",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(Notification {
            limit_event_id: r.get(0)?,
            channel: r.get(1)?,
            kind: r.get(2)?,
            budget: r.get(3)?,
            recipients: r.get(4)?,
            status: r.get(5)?,
            attempts: r.get(6)?,
            error: r.get(7)?,
            created_at: Millis(r.get(8)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn record_audit(
    conn: &mut Connection,
    rows: &[AuditEntry],
    consumer: &str,
    next: u64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut new = 0;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")?;
        for r in rows {
            let actor = r.actor.as_ref();
            new += insert.execute(params![
                r.id,
                r.at.0,
                actor.map(|a| &a.key_id),
                actor.map(|a| &a.key_name),
                actor.and_then(|a| a.created_by.as_ref()),
                actor.and_then(|a| a.workspace_id.as_ref()),
                r.action.as_str(),
                r.resource_type.as_str(),
                r.resource_id,
                r.resource_name,
                r.workspace_id,
                serde_json::to_string(&r.changed_fields).unwrap_or_else(|_| "[]".into()),
            ])?;
        }
        set_offset(&tx, consumer, next)?;
    }
    tx.commit()?;
    Ok(new)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let text = |i: usize, v: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {v}").into(),
        )
    };
    let key_id: Option<String> = r.get(2)?;
    let actor = match key_id {
        Some(key_id) => Some(crate::domain::Actor {
            key_id,
            key_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            created_by: r.get(4)?,
            workspace_id: r.get(5)?,
        }),
        None => None,
    };
    let action: String = r.get(6)?;
    let kind: String = r.get(7)?;
    let changed: String = r.get(11)?;
    Ok(AuditEntry {
        id: r.get(0)?,
        at: Millis(r.get(1)?),
        actor,
        action: crate::domain::Action::parse(&action).ok_or_else(|| text(6, action.clone()))?,
        resource_type: crate::domain::EntityKind::parse(&kind)
            .ok_or_else(|| text(7, kind.clone()))?,
        resource_id: r.get(8)?,
        resource_name: r.get(9)?,
        workspace_id: r.get(10)?,
        changed_fields: serde_json::from_str(&changed).unwrap_or_default(),
    })
}

fn audit(conn: &mut Connection, q: &AuditQuery) -> Result<(u64, Vec<AuditEntry>), StoreError> {
    let (cond, args) = audit_where(q);
    let args: Vec<Sql> = args
        .into_iter()
        .map(|a| match a {
            AuditArg::Int(v) => Sql::Integer(v),
            AuditArg::Str(v) => Sql::Text(v),
        })
        .collect();
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM audit_log WHERE {cond}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut page = args;
    page.push(Sql::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    page.push(Sql::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {cond} {AUDIT_ORDER} LIMIT ? OFFSET ?"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(page.iter()), audit_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((u64::try_from(total).unwrap_or(0), rows))
}

impl UsageStore for SqliteStore {
    fn hurry(&self) {
        self.writer_thread.now();
    }

    fn record_audit(
        &self,
        rows: Vec<AuditEntry>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| record_audit(c, &rows, &consumer, next_offset))
    }

    fn audit(
        &self,
        query: AuditQuery,
    ) -> BoxFuture<'static, Result<(u64, Vec<AuditEntry>), StoreError>> {
        Self::blocking(&self.reader, move |c| audit(c, &query))
    }

    fn record_notifications(
        &self,
        rows: Vec<Notification>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| record_notifications(c, &rows, &consumer, next_offset))
    }

    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        Self::blocking(&self.reader, move |c| notifications(c, limit))
    }

    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| ingest(c, &events, &consumer, next_offset))
    }

    fn offset(&self, consumer: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| {
            let off: Option<i64> = c
                .query_row(
                    "SELECT next_offset FROM consumer_offsets WHERE consumer = ?",
                    [consumer],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(off.unwrap_or(0) as u64)
        })
    }

    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>> {
        Self::blocking(&self.reader, move |c| series(c, &filter, bucket))
    }

    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>> {
        Self::blocking(&self.reader, move |c| latency(c, &filter, bucket))
    }

    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>> {
        Self::blocking(&self.reader, move |c| groups(c, &filter, &by))
    }

    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>> {
        let (grain, dimension) = (grain.to_owned(), dimension.to_owned());
        Self::blocking(&self.reader, move |c| rollups(c, &grain, &dimension))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_usage;

    fn event(minute: i64, key: &str, cost: &str, status: u16) -> UsageEvent {
        let mut e = sample_usage();
        e.at = Millis(1_735_689_600_000 + minute * 60_000);
        e.api_key_id = key.into();
        e.cost_usd = cost.parse().unwrap();
        e.status_code = status;
        e
    }

    #[tokio::test]
    async fn ingest_is_idempotent_and_rollups_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        let a = event(0, "k1", "0.000000000001", 200);
        let b = event(0, "k1", "1.1", 500);
        let c = event(61, "k2", "2.25", 200);
        assert_eq!(
            store
                .ingest(vec![a.clone(), b.clone()], "agg", 10)
                .await
                .unwrap(),
            2
        );
        // A replay of the same events plus one new one: only the new one counts.
        assert_eq!(store.ingest(vec![a, b, c], "agg", 20).await.unwrap(), 1);
        assert_eq!(store.offset("agg").await.unwrap(), 20);
        assert_eq!(store.offset("other").await.unwrap(), 0);
        let minute = store.rollups("minute", "api_key").await.unwrap();
        assert_eq!(minute.len(), 2);
        assert_eq!(minute[0].cost_usd.to_string(), "1.100000000001");
        assert_eq!((minute[0].requests, minute[0].errors), (2, 1));
        let day = store.rollups("day", "department").await.unwrap();
        assert_eq!(day.len(), 1);
        assert_eq!(day[0].cost_usd.to_string(), "3.350000000001");
        let f = Filter {
            from: Millis(0),
            to: Millis(i64::MAX),
            ..Default::default()
        };
        let g = store.groups(f.clone(), GroupBy::ApiKey).await.unwrap();
        assert_eq!(g[0].0, "k1");
        assert_eq!(g[0].1.requests, 2);
        let s = store.series(f.clone(), Bucket::Hour).await.unwrap();
        assert_eq!(s.len(), 2);
        let mut by_dept = f.clone();
        by_dept
            .metadata
            .insert("department".into(), "engineering".into());
        assert_eq!(
            store
                .groups(by_dept.clone(), GroupBy::Metadata("department".into()))
                .await
                .unwrap()[0]
                .1
                .requests,
            3
        );
        by_dept.metadata.insert("department".into(), "sales".into());
        assert!(store
            .series(by_dept, Bucket::Hour)
            .await
            .unwrap()
            .is_empty());
    }

    /// Sums of cost over many events go past an i64 of picodollars ($9.2 M) and stay exact.
    #[tokio::test]
    async fn cost_sums_past_nine_million_dollars_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        let big = |m| vec![event(m, "k1", "4000000.000000000001", 200)];
        // Two events in one batch, one in the next: both ways of adding to a rollup cell.
        store
            .ingest([big(0), big(1)].concat(), "agg", 10)
            .await
            .unwrap();
        store.ingest(big(2), "agg", 20).await.unwrap();
        let f = Filter {
            from: Millis(0),
            to: Millis(i64::MAX),
            ..Default::default()
        };
        let total = "12000000.000000000003";
        let g = store.groups(f.clone(), GroupBy::ApiKey).await.unwrap();
        assert_eq!(g[0].1.cost_usd.to_string(), total);
        let s = store.series(f, Bucket::Day).await.unwrap();
        assert_eq!(s[0].1.cost_usd.to_string(), total);
        // The rollup cells of that day hold their maximum, $9.2 M, rather than wrap.
        let day = store.rollups("day", "api_key").await.unwrap();
        assert_eq!(day[0].cost_usd, from_pico(i64::MAX));
        let minute = store.rollups("minute", "api_key").await.unwrap();
        assert_eq!(minute[2].cost_usd.to_string(), "4000000.000000000001");
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        let l = Latency::of_sorted(&v);
        assert_eq!((l.p50, l.p90, l.p99), (50, 90, 99));
        assert_eq!(Latency::of_sorted(&[]).p99, 0);
    }
}
