//! The distributed usage store: ClickHouse through the `clickhouse` crate, with the DDL in
//! `schemas/clickhouse/` (applied by [`ClickhouseStore::migrate`]).
//!
//! Exactness: the aggregator inserts each batch of new events as one `INSERT` (atomic in
//! ClickHouse), after asking which of the batch's event ids the table already has, so a replayed
//! batch adds nothing. Rollups and per-budget usage are materialized views over those inserts,
//! summed by the engine; queries sum their rows, so merges never change an answer.
//! Works on ClickHouse 18.16 (no row-type validation there: `with_validation(false)`).

use clickhouse::{Client, Row};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{
    audit_where, latency_report, AuditArg, Bucket, Filter, GroupBy, LatencyReport, Notification,
    RollupRow, Stats, StoreError, UsageStore, AUDIT_COLUMNS, AUDIT_ORDER,
};
use crate::domain::{Action, Actor, AuditEntry, AuditQuery, EntityKind, Millis, UsageEvent};
use crate::settings::ClickhouseSettings;

/// The versioned DDL files, applied in order by `migrate`.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../schemas/clickhouse/001_init.sql")),
    (2, include_str!("../../schemas/clickhouse/002_audit.sql")),
];

/// Money as ClickHouse's Decimal(38, 12) (an i128 of 10^-12 dollars); exact for any event cost.
fn to_d12(d: Decimal) -> i128 {
    let mut d = d;
    d.rescale(12);
    d.mantissa()
}

fn from_d12(v: i128) -> Decimal {
    Decimal::try_from_i128_with_scale(v, 12)
        .unwrap_or(Decimal::MAX)
        .normalize()
}

/// One usage event as stored, with its Kafka position and the budget windows it counted toward.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub ts: i64,
    pub organisation_id: String,
    pub workspace_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub provider_slug: String,
    pub integration_id: String,
    pub ai_provider: String,
    pub department: Option<String>,
    pub user: Option<String>,
    pub metadata_keys: Vec<String>,
    pub metadata_values: Vec<String>,
    pub model: String,
    pub endpoint: String,
    pub status_code: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: i128,
    pub priced: u8,
    pub usage_source: String,
    pub latency_ms: u32,
    pub upstream_latency_ms: u32,
    pub streamed: u8,
    pub attempt_index: u32,
    pub trace_id: String,
    pub config_id: Option<String>,
    pub budgets: Vec<String>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

impl EventRow {
    /// The row of an event; `budgets` are `'<budget key>@<window start>'` windows it counts toward.
    pub fn new(e: &UsageEvent, budgets: Vec<String>, partition: i32, offset: i64) -> EventRow {
        let (metadata_keys, metadata_values) = e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unzip();
        EventRow {
            event_id: e.event_id.clone(),
            ts: e.at.0,
            organisation_id: e.organisation_id.clone(),
            workspace_id: e.workspace_id.clone(),
            api_key_id: e.api_key_id.clone(),
            provider_id: e.provider_id.clone(),
            provider_slug: e.provider_slug.clone(),
            integration_id: e.integration_id.clone(),
            ai_provider: e.ai_provider.clone(),
            department: e.department.clone(),
            user: e.user.clone(),
            metadata_keys,
            metadata_values,
            model: e.model.clone(),
            endpoint: e.endpoint.as_str().to_owned(),
            status_code: e.status_code,
            // Stored counts are bounded (as the gateway meters them) so ClickHouse's UInt64 sums,
            // which wrap silently, cannot overflow even for older events in a log.
            prompt_tokens: plausible(e.prompt_tokens),
            completion_tokens: plausible(e.completion_tokens),
            cached_tokens: plausible(e.cached_tokens),
            cost_usd: to_d12(e.cost_usd),
            priced: u8::from(e.priced),
            usage_source: e.usage_source.as_str().to_owned(),
            latency_ms: e.latency_ms,
            upstream_latency_ms: e.upstream_latency_ms,
            streamed: u8::from(e.streamed),
            attempt_index: e.attempt_index,
            trace_id: e.trace_id.clone(),
            config_id: e.config_id.clone(),
            budgets,
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }
}

/// Usage counted in one budget window (see [`ClickhouseStore::budget_usage`]).
#[derive(Row, Deserialize, Debug, Clone, PartialEq)]
pub struct BudgetUsage {
    pub budget: String,
    pub cost_usd: i128,
    pub tokens: u64,
}

impl BudgetUsage {
    pub fn cost(&self) -> Decimal {
        from_d12(self.cost_usd)
    }
}

/// One published limit event, for dashboards (`limit_events`).
#[derive(Row, Serialize, Debug, Clone)]
pub struct LimitRow {
    pub event_id: String,
    pub ts: i64,
    pub kind: String,
    pub budget: String,
    pub owner_kind: String,
    pub workspace_id: String,
    pub window_start: i64,
    pub budget_type: String,
    pub credit_limit: i128,
    pub used: i128,
}

impl LimitRow {
    pub fn new(e: &crate::domain::LimitEvent) -> LimitRow {
        LimitRow {
            event_id: e.event_id.clone(),
            ts: e.at.0,
            kind: e.kind.as_str().to_owned(),
            budget: e.budget.clone(),
            owner_kind: e.owner_kind.clone(),
            workspace_id: e.workspace_id.clone().unwrap_or_default(),
            window_start: e.window_start.0,
            budget_type: match e.budget_type {
                crate::domain::limits::BudgetKind::Cost => "cost".into(),
                crate::domain::limits::BudgetKind::Tokens => "tokens".into(),
            },
            credit_limit: to_d12(e.credit_limit),
            used: to_d12(e.used),
        }
    }
}

#[derive(Row, Deserialize)]
struct StatsRow {
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
    fn stats(&self) -> Stats {
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

#[derive(Row, Serialize, Deserialize)]
struct NotificationRow {
    limit_event_id: String,
    channel: String,
    kind: String,
    budget: String,
    recipients: String,
    status: String,
    attempts: u32,
    error: Option<String>,
    created_at: i64,
}

/// A row of `audit_log` (empty strings mean none).
#[derive(Row, Serialize, Deserialize)]
struct AuditRow {
    event_id: String,
    ts: i64,
    actor_key_id: String,
    actor_name: String,
    actor_created_by: String,
    actor_workspace_id: String,
    action: String,
    resource_type: String,
    resource_id: String,
    resource_name: String,
    workspace_id: String,
    changed_fields: Vec<String>,
}

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl AuditRow {
    fn new(e: AuditEntry) -> AuditRow {
        let actor = e.actor.unwrap_or_default();
        AuditRow {
            event_id: e.id,
            ts: e.at.0,
            actor_key_id: actor.key_id,
            actor_name: actor.key_name,
            actor_created_by: actor.created_by.unwrap_or_default(),
            actor_workspace_id: actor.workspace_id.unwrap_or_default(),
            action: e.action.as_str().to_owned(),
            resource_type: e.resource_type.as_str().to_owned(),
            resource_id: e.resource_id,
            resource_name: e.resource_name.unwrap_or_default(),
            workspace_id: e.workspace_id.unwrap_or_default(),
            changed_fields: e.changed_fields,
        }
    }

    /// None when the row names an action or kind this version does not know.
    fn entry(self) -> Option<AuditEntry> {
        let actor = (!self.actor_key_id.is_empty()).then(|| Actor {
            key_id: self.actor_key_id,
            key_name: self.actor_name,
            created_by: none_if_empty(self.actor_created_by),
            workspace_id: none_if_empty(self.actor_workspace_id),
        });
        Some(AuditEntry {
            id: self.event_id,
            at: Millis(self.ts),
            actor,
            action: Action::parse(&self.action)?,
            resource_type: EntityKind::parse(&self.resource_type)?,
            resource_id: self.resource_id,
            resource_name: none_if_empty(self.resource_name),
            workspace_id: none_if_empty(self.workspace_id),
            changed_fields: self.changed_fields,
        })
    }
}

#[derive(Row, Serialize)]
struct OffsetRow {
    consumer: String,
    next_offset: u64,
    updated_at: u64,
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

fn plausible(tokens: u64) -> u64 {
    tokens.min(crate::domain::pricing::MAX_PLAUSIBLE_TOKENS)
}

/// The ClickHouse usage store.
#[derive(Clone)]
pub struct ClickhouseStore {
    client: Client,
}

impl ClickhouseStore {
    /// A client for the configured server and database (nothing is contacted yet).
    pub fn new(s: &ClickhouseSettings) -> Result<ClickhouseStore, StoreError> {
        Ok(ClickhouseStore {
            client: Self::server(s)?.with_database(&s.database),
        })
    }

    fn server(s: &ClickhouseSettings) -> Result<Client, StoreError> {
        let url = s
            .url
            .as_deref()
            .ok_or_else(|| StoreError::Task("clickhouse_url is not set".into()))?;
        let mut c = Client::default()
            .with_url(url)
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(u) = &s.user {
            c = c.with_user(u);
        }
        if let Some(p) = &s.password {
            c = c.with_password(p);
        }
        Ok(c)
    }

    /// Creates the database and applies the DDL versions not applied yet, in order. Idempotent:
    /// every statement is `IF NOT EXISTS`, and applied versions are recorded.
    pub async fn migrate(s: &ClickhouseSettings) -> Result<Vec<u32>, StoreError> {
        Self::server(s)?
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", s.database))
            .execute()
            .await?;
        let c = Self::new(s)?.client;
        c.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at Int64)
             ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
        let done: Vec<u32> = c
            .query("SELECT version FROM schema_migrations")
            .fetch_all()
            .await?;
        let mut applied = Vec::new();
        for (version, ddl) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            for statement in statements(ddl) {
                c.query(&statement).execute().await?;
            }
            c.query("INSERT INTO schema_migrations VALUES (?, ?)")
                .bind(version)
                .bind(Millis::now().0)
                .execute()
                .await?;
            applied.push(*version);
        }
        Ok(applied)
    }

    /// Of `ids` (events between `from` and `to` ms inclusive), those the table already has.
    async fn existing(
        &self,
        ids: Vec<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT event_id FROM usage_events WHERE ts >= ? AND ts <= ? AND event_id IN (SELECT arrayJoin(?))",
            )
            .bind(from)
            .bind(to)
            .bind(ids)
            .fetch_all()
            .await?)
    }

    /// Inserts the rows whose event ids the table does not have yet, in one `INSERT` (one atomic
    /// block for ClickHouse); returns how many.
    pub async fn insert_new(&self, rows: &[EventRow]) -> Result<usize, StoreError> {
        let (Some(from), Some(to)) = (
            rows.iter().map(|r| r.ts).min(),
            rows.iter().map(|r| r.ts).max(),
        ) else {
            return Ok(0);
        };
        let ids = rows.iter().map(|r| r.event_id.clone()).collect();
        let have: std::collections::HashSet<String> =
            self.existing(ids, from, to).await?.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<&EventRow> = rows
            .iter()
            .filter(|r| !have.contains(&r.event_id) && seen.insert(r.event_id.as_str()))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut insert = self.client.insert::<EventRow>("usage_events").await?;
        for r in &fresh {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(fresh.len())
    }

    /// Inserts the audit rows whose event ids the table does not have yet, in one `INSERT`;
    /// returns how many.
    pub async fn insert_audit(&self, rows: Vec<AuditEntry>) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let have: std::collections::HashSet<String> = self
            .client
            .query("SELECT event_id FROM audit_log WHERE event_id IN (SELECT arrayJoin(?))")
            .bind(ids)
            .fetch_all::<String>()
            .await?
            .into_iter()
            .collect();
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<AuditEntry> = rows
            .into_iter()
            .filter(|r| !have.contains(&r.id) && seen.insert(r.id.clone()))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let n = fresh.len();
        let mut insert = self.client.insert::<AuditRow>("audit_log").await?;
        for r in fresh {
            insert.write(&AuditRow::new(r)).await?;
        }
        insert.end().await?;
        Ok(n)
    }

    /// The audit rows matching `q`: how many in all, and the page asked for.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<(u64, Vec<AuditEntry>), StoreError> {
        let (cond, args) = audit_where(q);
        let bind = |mut query: clickhouse::query::Query| {
            for a in &args {
                query = match a {
                    AuditArg::Int(v) => query.bind(*v),
                    AuditArg::Str(v) => query.bind(v.as_str()),
                };
            }
            query
        };
        let total: Vec<u64> = bind(self.client.query(&format!(
            "SELECT toUInt64(count()) FROM audit_log FINAL WHERE {cond}"
        )))
        .fetch_all()
        .await?;
        let rows: Vec<AuditRow> = bind(self.client.query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log FINAL WHERE {cond} {AUDIT_ORDER} LIMIT ?, ?"
        )))
        .bind(q.offset)
        .bind(q.limit)
        .fetch_all()
        .await?;
        Ok((
            total.first().copied().unwrap_or(0),
            rows.into_iter().filter_map(AuditRow::entry).collect(),
        ))
    }

    /// Records published limit events (for dashboards; the topic stays the source of truth).
    pub async fn insert_limit_events(&self, rows: &[LimitRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<LimitRow>("limit_events").await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Usage counted so far in each of the given budget windows.
    pub async fn budget_usage(&self, windows: Vec<String>) -> Result<Vec<BudgetUsage>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT budget, sum(cost_usd) AS cost_usd, toUInt64(sum(tokens)) AS tokens
                 FROM budget_usage WHERE has(?, budget) GROUP BY budget",
            )
            .bind(windows)
            .fetch_all()
            .await?)
    }

    /// Requests, tokens and cost per API key, workspace, integration and provider, over the events
    /// with `from_ms <= ts < to_ms`. The range lets a caller re-read only recent days: `ts` leads
    /// the table's sort key, so a recent range reads only recent parts.
    pub async fn entity_totals(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(crate::domain::EntityKind, String, crate::domain::Totals)>, StoreError> {
        use crate::domain::EntityKind;
        #[derive(Row, Deserialize)]
        struct T {
            kind: String,
            id: String,
            requests: u64,
            tokens: u64,
            cost_usd: i128,
        }
        let rows: Vec<T> = self
            .client
            .query(
                "SELECT k.1 AS kind, k.2 AS id, toUInt64(count()) AS requests,
                   toUInt64(sum(prompt_tokens + completion_tokens)) AS tokens, sum(cost_usd) AS cost_usd
                 FROM usage_events
                 ARRAY JOIN [('api_key', api_key_id), ('workspace', workspace_id),
                   ('integration', integration_id), ('provider', provider_id)] AS k
                 WHERE ts >= ? AND ts < ? AND k.2 != ''
                 GROUP BY kind, id",
            )
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|t| {
                let kind = match t.kind.as_str() {
                    "api_key" => EntityKind::ApiKey,
                    "workspace" => EntityKind::Workspace,
                    "integration" => EntityKind::Integration,
                    "provider" => EntityKind::Provider,
                    _ => return None,
                };
                let totals = crate::domain::Totals {
                    requests: t.requests,
                    tokens: t.tokens,
                    cost_usd: from_d12(t.cost_usd),
                };
                Some((kind, t.id, totals))
            })
            .collect())
    }

    async fn stats_rows(&self, sql: String, args: Vec<Arg>) -> Result<Vec<StatsRow>, StoreError> {
        Ok(bind_all(self.client.query(&sql), args).fetch_all().await?)
    }
}

/// The statements of a DDL file: comments dropped, split on `;`.
fn statements(ddl: &str) -> Vec<String> {
    let text: String = ddl
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl UsageStore for ClickhouseStore {
    fn record_audit(
        &self,
        rows: Vec<AuditEntry>,
        _consumer: &str,
        _next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        // Positions live in Kafka's consumer group (committed after this returns), not here.
        let this = self.clone();
        async move { this.insert_audit(rows).await }.boxed()
    }

    fn audit(
        &self,
        query: AuditQuery,
    ) -> BoxFuture<'static, Result<(u64, Vec<AuditEntry>), StoreError>> {
        let this = self.clone();
        async move { this.audit_page(&query).await }.boxed()
    }

    fn record_notifications(
        &self,
        rows: Vec<Notification>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let this = self.clone();
        let consumer = consumer.to_owned();
        async move {
            if !rows.is_empty() {
                let ids: Vec<String> = rows.iter().map(|r| r.limit_event_id.clone()).collect();
                let have: Vec<(String, String)> = this
                    .client
                    .query("SELECT limit_event_id, channel FROM notifications WHERE has(?, limit_event_id)")
                    .bind(ids)
                    .fetch_all()
                    .await?;
                let mut insert = this.client.insert::<NotificationRow>("notifications").await?;
                for n in rows {
                    if have.contains(&(n.limit_event_id.clone(), n.channel.clone())) {
                        continue;
                    }
                    insert
                        .write(&NotificationRow {
                            limit_event_id: n.limit_event_id,
                            channel: n.channel,
                            kind: n.kind,
                            budget: n.budget,
                            recipients: n.recipients,
                            status: n.status,
                            attempts: n.attempts,
                            error: n.error,
                            created_at: n.created_at.0,
                        })
                        .await?;
                }
                insert.end().await?;
            }
            let mut insert = this.client.insert::<OffsetRow>("consumer_offsets").await?;
            insert
                .write(&OffsetRow {
                    consumer,
                    next_offset,
                    updated_at: u64::try_from(Millis::now().0).unwrap_or(0),
                })
                .await?;
            insert.end().await?;
            Ok(())
        }
        .boxed()
    }

    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let this = self.clone();
        async move {
            let rows: Vec<NotificationRow> = this
                .client
                .query(
                    "SELECT limit_event_id, channel, kind, budget, recipients, status, attempts, error, created_at
                     FROM notifications FINAL ORDER BY created_at DESC, limit_event_id, channel LIMIT ?",
                )
                .bind(limit as u64)
                .fetch_all()
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| Notification {
                    limit_event_id: r.limit_event_id,
                    channel: r.channel,
                    kind: r.kind,
                    budget: r.budget,
                    recipients: r.recipients,
                    status: r.status,
                    attempts: r.attempts,
                    error: r.error,
                    created_at: Millis(r.created_at),
                })
                .collect())
        }
        .boxed()
    }

    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        _consumer: &str,
        _next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        // Positions live in Kafka's consumer group (committed after this returns), not here.
        let this = self.clone();
        async move {
            let rows: Vec<EventRow> = events
                .iter()
                .map(|e| EventRow::new(e, vec![], -1, -1))
                .collect();
            this.insert_new(&rows).await
        }
        .boxed()
    }

    fn offset(&self, consumer: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        let this = self.clone();
        let consumer = consumer.to_owned();
        async move {
            let v: Vec<u64> = this
                .client
                .query("SELECT argMax(next_offset, updated_at) FROM consumer_offsets WHERE consumer = ? GROUP BY consumer")
                .bind(consumer)
                .fetch_all()
                .await?;
            Ok(v.first().copied().unwrap_or(0))
        }
        .boxed()
    }

    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, args) = where_clause(&filter);
            let ms = bucket.ms();
            let sql = format!(
                "SELECT toString(intDiv(ts, {ms}) * {ms}) AS g, {STATS_COLUMNS} FROM usage_events
                 WHERE {cond} GROUP BY g ORDER BY toInt64(g)"
            );
            let rows = this.stats_rows(sql, args).await?;
            Ok(rows
                .iter()
                .map(|r| (Millis(r.g.parse().unwrap_or(0)), r.stats()))
                .collect())
        }
        .boxed()
    }

    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, args) = where_clause(&filter);
            let sql = format!("SELECT ts, latency_ms FROM usage_events WHERE {cond} ORDER BY ts");
            let rows: Vec<(i64, u32)> = bind_all(this.client.query(&sql), args).fetch_all().await?;
            Ok(latency_report(rows, bucket))
        }
        .boxed()
    }

    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, mut args) = where_clause(&filter);
            let col = match &by {
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
            };
            if let GroupBy::Metadata(k) = &by {
                args.insert(0, Arg::Str(k.clone()));
            }
            let sql = format!(
                "SELECT {col} AS g, {STATS_COLUMNS} FROM usage_events WHERE {cond}
                 GROUP BY g ORDER BY requests DESC, g"
            );
            let rows = this.stats_rows(sql, args).await?;
            Ok(rows.iter().map(|r| (r.g.clone(), r.stats())).collect())
        }
        .boxed()
    }

    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>> {
        let this = self.clone();
        let (grain, dimension) = (grain.to_owned(), dimension.to_owned());
        async move {
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
            let rows: Vec<R> = this
                .client
                .query(
                    "SELECT bucket, value, toUInt64(sum(requests)) AS requests, toUInt64(sum(errors)) AS errors,
                       toUInt64(sum(prompt_tokens)) AS prompt_tokens, toUInt64(sum(completion_tokens)) AS completion_tokens,
                       sum(cost_usd) AS cost_usd
                     FROM usage_rollup WHERE grain = ? AND dimension = ?
                     GROUP BY bucket, value ORDER BY bucket, value",
                )
                .bind(&grain)
                .bind(&dimension)
                .fetch_all()
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| RollupRow {
                    grain: grain.clone(),
                    bucket: Millis(r.bucket),
                    dimension: dimension.clone(),
                    value: r.value,
                    requests: r.requests,
                    errors: r.errors,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    cost_usd: from_d12(r.cost_usd),
                })
                .collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_12_round_trips_exactly() {
        for text in ["0", "0.000000000001", "1.5", "123456789.123456789012"] {
            let d: Decimal = text.parse().unwrap();
            assert_eq!(from_d12(to_d12(d)), d.normalize());
        }
    }

    #[test]
    fn ddl_statements_split_without_comments() {
        let s = statements("-- a\nCREATE TABLE a (x Int8); -- b\n\nCREATE TABLE b (y Int8);\n");
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x Int8)", "CREATE TABLE b (y Int8)"]
        );
        assert!(statements(MIGRATIONS[0].1).len() >= 7);
    }
}
