//! Ingestion into the embedded store: a batch of usage events is inserted (ignoring event ids
//! already stored), folded into the minute and day rollups, and the consumer's position recorded,
//! in one transaction. Amounts are stored as integer picodollars, token counts bounded.

use std::collections::HashMap;

use rusqlite::{params, CachedStatement, Connection, Transaction};
use rust_decimal::Decimal;

use parking_lot::RwLock;

use super::positions::set_offset;
use super::recent::Recent;
use crate::domain::hash::FastHash;
use crate::domain::{Millis, UsageEvent};
use crate::store::StoreError;

/// Dollars ↔ integer picodollars (the store's exact money column).
pub(super) fn to_pico(d: Decimal) -> i64 {
    let mut d = d;
    d.rescale(12);
    i64::try_from(d.mantissa()).unwrap_or(i64::MAX)
}

/// A token count as SQLite's integer, bounded as the gateway meters it: a log may hold older
/// events with absurd counts, which must neither wrap negative nor overflow sums (the ClickHouse
/// store bounds them the same way, so both answer alike).
pub(super) fn count_sql(n: u64) -> i64 {
    i64::try_from(n.min(crate::domain::pricing::MAX_PLAUSIBLE_TOKENS)).unwrap_or(i64::MAX)
}

/// A rollup cell's cost. A cell holds at most an i64 of picodollars, $9.2 M (one key, model,
/// workspace… in one minute or day); past that it stays at the maximum rather than wrap.
fn rollup_pico(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or_else(|_| {
        tracing::warn!(picodollars = %sum, "a usage rollup cell passed $9.2 M; it is capped there");
        i64::MAX
    })
}

/// One rollup cell's sums over a batch.
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

/// The rollup cells of one batch, keyed by borrowed values (the batch outlives the map): no
/// allocation per event and rollup.
type Cells<'a> = HashMap<(&'static str, i64, &'static str, &'a str), Agg, FastHash>;

impl Agg {
    /// Adds one event to the cell.
    fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        self.errors += i64::from(e.is_error());
        self.prompt = self.prompt.saturating_add(count_sql(e.prompt_tokens));
        self.completion = self
            .completion
            .saturating_add(count_sql(e.completion_tokens));
        self.cached = self.cached.saturating_add(count_sql(e.cached_tokens));
        self.cost += i128::from(to_pico(e.cost_usd));
        self.latency += i64::from(e.latency_ms);
    }
}

/// Stores the events not seen before, folds them into the minute and day rollups, and records
/// that `consumer` has read the log up to `next`, in one transaction; then adds the new ones to
/// the in-memory columns, under their lock held across the commit (see `recent.rs`). Returns how
/// many were new.
pub(super) fn ingest(
    conn: &mut Connection,
    recent: &RwLock<Recent>,
    events: &[UsageEvent],
    consumer: &str,
    next: u64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut cells = Cells::default();
    let new = insert_events(&tx, events, &mut cells)?;
    upsert_rollups(&tx, &cells)?;
    set_offset(&tx, consumer, next)?;
    let mut recent = recent.write();
    tx.commit()?;
    recent.add(&new);
    recent.slide(Millis::now());
    Ok(new.len())
}

/// Inserts the events whose ids the table does not have, and adds each new one to its cells.
fn insert_events<'a>(
    tx: &Transaction<'_>,
    events: &'a [UsageEvent],
    cells: &mut Cells<'a>,
) -> Result<Vec<&'a UsageEvent>, StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO usage_events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )?;
    let mut new = Vec::new();
    for e in events {
        if insert_event(&mut insert, e)? == 0 {
            continue; // seen before: a replay after a crash between insert and offset commit
        }
        new.push(e);
        for (grain, bucket) in [
            ("minute", e.at.floor_minute().0),
            ("day", e.at.floor_day().0),
        ] {
            for (dim, value) in rollup_keys(e) {
                cells.entry((grain, bucket, dim, value)).or_default().add(e);
            }
        }
    }
    Ok(new)
}

/// One `usage_events` row; returns 0 when the event id is there already.
fn insert_event(insert: &mut CachedStatement<'_>, e: &UsageEvent) -> rusqlite::Result<usize> {
    let metadata = serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into());
    insert.execute(params![
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
        e.config_id,
        count_sql(e.cache_write_tokens)
    ])
}

/// Adds the batch's cells to the stored rollups; sums that would pass an i64 stay at its maximum.
fn upsert_rollups(tx: &Transaction<'_>, cells: &Cells<'_>) -> Result<(), StoreError> {
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
    for ((grain, bucket, dim, value), a) in cells {
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
    Ok(())
}
