//! The recent events' analytics columns, in memory: what the analytics queries read (time,
//! status, tokens, cost, latency and the filter and group columns), for every event of the last
//! [`WINDOW_DAYS`] days, at most [`MAX_ROWS`] of them. A query whose range lies inside the window
//! is answered from here, exactly as the SQL of `query.rs` answers it (same sums, same bounds on
//! counts and cost, same `coalesce`s, same order); any other goes to SQLite. A month of a busy
//! organisation's traffic is a few hundred thousand events: SQLite scans them in 0.2–0.4 s a
//! query (a lookup of the row by its key for each index entry), this in a few milliseconds.
//!
//! # Invariant
//! `rows` holds every event stored with `ts >= since` (and possibly some older, never matched):
//! loaded from the table at open, then appended by the writer thread in the ingest job that
//! commits them, under the write lock held across the commit, so a reader that has seen the
//! store's offset move (which it reads through the writer thread, after that job) sees the rows.
//! Evicting the oldest rows past [`MAX_ROWS`] moves `since` past them.
//!
//! Strings are interned (`u32` symbols), metadata maps too: a row is 80 bytes. Trace ids, one per
//! request, are not kept (a query by trace id reads SQLite).

use std::collections::HashMap;

use rusqlite::Connection;
use rust_decimal::Decimal;

use super::ingest::{count_sql, to_pico};
use crate::domain::hash::FastHash;
use crate::domain::{Metadata, Millis, UsageEvent};
use crate::store::{latency_report, Bucket, Filter, GroupBy, GroupSeries, LatencyReport, Stats};

/// How far back the columns reach.
pub const WINDOW_DAYS: i64 = 93;
/// The most events held (about 160 MB); past it the oldest go, and the window starts later.
pub const MAX_ROWS: usize = 2_000_000;
const DAY_MS: i64 = 86_400_000;

/// The symbol of a missing value (`NULL` in the table).
const NONE: u32 = u32::MAX;

/// One event's analytics columns; strings as symbols of [`Recent::names`] (or [`NONE`]).
#[derive(Clone, Copy)]
struct Row {
    ts: i64,
    prompt: i64,
    completion: i64,
    cost_pico: i64,
    latency: u32,
    status: u16,
    user: u32,
    workspace: u32,
    key: u32,
    provider: u32,
    model: u32,
    ai_provider: u32,
    config: u32,
    department: u32,
    metadata: u32,
}

/// The columns, and the window they cover.
#[derive(Default)]
pub struct Recent {
    rows: std::collections::VecDeque<Row>,
    /// Every stored event with `ts >= since` is in `rows`; `None` until loaded.
    since: Option<i64>,
    names: Vec<String>,
    symbols: HashMap<String, u32>,
    metadata: Vec<Metadata>,
    metadata_symbols: HashMap<Metadata, u32>,
}

impl Recent {
    fn symbol(&mut self, s: &str) -> u32 {
        if let Some(&n) = self.symbols.get(s) {
            return n;
        }
        let n = self.names.len() as u32;
        self.names.push(s.to_owned());
        self.symbols.insert(s.to_owned(), n);
        n
    }

    fn optional(&mut self, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.symbol(s))
    }

    fn metadata_symbol(&mut self, m: &Metadata) -> u32 {
        if let Some(&n) = self.metadata_symbols.get(m) {
            return n;
        }
        let n = self.metadata.len() as u32;
        self.metadata.push(m.clone());
        self.metadata_symbols.insert(m.clone(), n);
        n
    }

    /// Loads every stored event of the window ending `now` (run on the writer thread, before
    /// any ingest job).
    pub fn load(&mut self, conn: &Connection, now: Millis) -> Result<(), rusqlite::Error> {
        let since = now.0 - WINDOW_DAYS * DAY_MS;
        let mut stmt = conn.prepare(
            "SELECT ts, prompt_tokens, completion_tokens, cost_pico, latency_ms, status_code, user,
             workspace_id, api_key_id, provider_slug, model, ai_provider, config_id, department,
             metadata FROM usage_events WHERE ts >= ? ORDER BY ts",
        )?;
        let mut rows = stmt.query([since])?;
        while let Some(r) = rows.next()? {
            let text = |i: usize| r.get::<_, String>(i);
            let opt = |i: usize| r.get::<_, Option<String>>(i);
            let metadata: Metadata = serde_json::from_str(&text(14)?).unwrap_or_default();
            let row = Row {
                ts: r.get(0)?,
                prompt: r.get(1)?,
                completion: r.get(2)?,
                cost_pico: r.get(3)?,
                latency: r.get(4)?,
                status: r.get(5)?,
                user: self.optional(opt(6)?.as_deref()),
                workspace: self.symbol(&text(7)?),
                key: self.symbol(&text(8)?),
                provider: self.symbol(&text(9)?),
                model: self.symbol(&text(10)?),
                ai_provider: self.symbol(&text(11)?),
                config: self.optional(opt(12)?.as_deref()),
                department: self.optional(opt(13)?.as_deref()),
                metadata: self.metadata_symbol(&metadata),
            };
            self.rows.push_back(row);
        }
        self.since = Some(since);
        self.bound();
        Ok(())
    }

    /// Adds events just stored (new ones only), as the table holds them.
    pub fn add(&mut self, events: &[&UsageEvent]) {
        let Some(since) = self.since else { return };
        for e in events.iter().filter(|e| e.at.0 >= since) {
            let row = Row {
                ts: e.at.0,
                prompt: count_sql(e.prompt_tokens),
                completion: count_sql(e.completion_tokens),
                cost_pico: to_pico(e.cost_usd),
                latency: e.latency_ms,
                status: e.status_code,
                user: self.optional(e.user.as_deref()),
                workspace: self.symbol(&e.workspace_id),
                key: self.symbol(&e.api_key_id),
                provider: self.symbol(&e.provider_slug),
                model: self.symbol(&e.model),
                ai_provider: self.symbol(&e.ai_provider),
                config: self.optional(e.config_id.as_deref()),
                department: self.optional(e.department.as_deref()),
                metadata: self.metadata_symbol(&e.metadata),
            };
            self.rows.push_back(row);
        }
        self.bound();
    }

    /// Drops the oldest rows past [`MAX_ROWS`], and those the window has left, moving `since`.
    fn bound(&mut self) {
        let Some(mut since) = self.since else { return };
        while self.rows.len() > MAX_ROWS {
            if let Some(r) = self.rows.pop_front() {
                since = since.max(r.ts + 1);
            }
        }
        self.since = Some(since);
    }

    /// Moves the window's start to `now - WINDOW_DAYS` (called now and then: rows behind it are
    /// dropped, so memory follows the window).
    pub fn slide(&mut self, now: Millis) {
        let Some(since) = self.since else { return };
        let start = now.0 - WINDOW_DAYS * DAY_MS;
        if start > since + DAY_MS {
            self.rows.retain(|r| r.ts >= start);
            self.since = Some(start);
        }
    }

    /// Whether a query over `f` can be answered here.
    fn covers(&self, f: &Filter) -> bool {
        self.since.is_some_and(|s| f.from.0 >= s) && f.trace_id.is_none()
    }

    /// The symbols of `names` that exist (a name never seen matches no row).
    fn symbols_of(&self, names: &[String]) -> Vec<u32> {
        names
            .iter()
            .filter_map(|n| self.symbols.get(n).copied())
            .collect()
    }

    /// The rows matching `f`, as `where_clause` selects them.
    fn matching<'a>(&'a self, f: &'a Filter) -> impl Iterator<Item = &'a Row> + 'a {
        let sym = |s: &String| self.symbols.get(s).copied();
        let workspace = f.workspace_id.as_ref().map(sym);
        let keys = self.symbols_of(&f.api_key_ids);
        let providers = self.symbols_of(&f.provider_slugs);
        let configs = self.symbols_of(&f.config_ids);
        let models: Vec<(Option<u32>, Option<u32>)> =
            f.models.iter().map(|(p, m)| (sym(p), sym(m))).collect();
        let in_list =
            |given: &[String], syms: &[u32], v: u32| given.is_empty() || syms.contains(&v);
        self.rows.iter().filter(move |r| {
            r.ts >= f.from.0
                && r.ts < f.to.0
                && workspace.is_none_or(|w| w == Some(r.workspace))
                && in_list(&f.api_key_ids, &keys, r.key)
                && in_list(&f.provider_slugs, &providers, r.provider)
                && (f.config_ids.is_empty() || r.config != NONE && configs.contains(&r.config))
                && (f.status_codes.is_empty() || f.status_codes.contains(&r.status))
                && (models.is_empty()
                    || models
                        .iter()
                        .any(|(p, m)| *p == Some(r.ai_provider) && *m == Some(r.model)))
                && (f.metadata.is_empty() || {
                    let m = &self.metadata[r.metadata as usize];
                    f.metadata.iter().all(|(k, v)| m.get(k) == Some(v))
                })
        })
    }

    /// A row's group value, as `group_column` reads it.
    fn value(&self, r: &Row, by: &GroupBy) -> String {
        let name = |s: u32| self.names.get(s as usize).cloned().unwrap_or_default();
        match by {
            GroupBy::User => name(r.user),
            GroupBy::Model => name(r.model),
            GroupBy::AiProvider => name(r.ai_provider),
            GroupBy::Provider => name(r.provider),
            GroupBy::ApiKey => name(r.key),
            GroupBy::Workspace => name(r.workspace),
            GroupBy::StatusCode => r.status.to_string(),
            GroupBy::Config => name(r.config),
            GroupBy::Department => name(r.department),
            GroupBy::Metadata(k) => self.metadata[r.metadata as usize]
                .get(k)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// What `stats_by` answers, when the window covers the filter.
    pub fn stats_by(
        &self,
        f: &Filter,
        bucket: Option<Bucket>,
        by: Option<&GroupBy>,
    ) -> Option<GroupSeries> {
        if !self.covers(f) {
            return None;
        }
        // Grouped first by symbol-level keys (cheap), then by the value's text: `coalesce` makes
        // a missing value and an empty one the same group.
        let mut raw: HashMap<(i64, u64), Acc, FastHash> = HashMap::default();
        for r in self.matching(f) {
            let at = bucket.map_or(0, |b| r.ts / b.ms() * b.ms());
            let g = by.map_or(0, |by| raw_key(r, by));
            raw.entry((at, g)).or_default().add(r);
        }
        let mut merged: HashMap<(i64, String), Acc, FastHash> = HashMap::default();
        for ((at, _), acc) in raw {
            let value = match (by, acc.first) {
                (Some(by), Some(r)) => self.value(&r, by),
                _ => String::new(),
            };
            merged.entry((at, value)).or_default().merge(acc);
        }
        let mut seen = Distinct::new(self.names.len());
        let mut out: GroupSeries = merged
            .into_iter()
            .map(|((at, g), mut acc)| (Millis(at), g, acc.stats(&mut seen)))
            .collect();
        out.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.2.requests), &a.1).cmp(&(
                b.0,
                std::cmp::Reverse(b.2.requests),
                &b.1,
            ))
        });
        Some(out)
    }

    /// What `latency` answers, when the window covers the filter.
    pub fn latency(&self, f: &Filter, b: Bucket) -> Option<LatencyReport> {
        if !self.covers(f) {
            return None;
        }
        let mut rows: Vec<(i64, u32)> = self.matching(f).map(|r| (r.ts, r.latency)).collect();
        rows.sort_by_key(|(ts, _)| *ts);
        Some(latency_report(rows, b))
    }
}

/// A group key of `r` for `by` before its text is looked up: a symbol, a status, a metadata set.
fn raw_key(r: &Row, by: &GroupBy) -> u64 {
    match by {
        GroupBy::User => u64::from(r.user),
        GroupBy::Model => u64::from(r.model),
        GroupBy::AiProvider => u64::from(r.ai_provider),
        GroupBy::Provider => u64::from(r.provider),
        GroupBy::ApiKey => u64::from(r.key),
        GroupBy::Workspace => u64::from(r.workspace),
        GroupBy::StatusCode => u64::from(r.status),
        GroupBy::Config => u64::from(r.config),
        GroupBy::Department => u64::from(r.department),
        GroupBy::Metadata(_) => u64::from(r.metadata),
    }
}

/// The sums of `STATS_COLUMNS`, kept wide as the SQL keeps them (then bounded the same way).
#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    prompt: i128,
    completion: i128,
    cost_pico: i128,
    /// Every row's user (with repeats): counted distinct at the end, cheaper than a set a group.
    users: Vec<u32>,
    last_seen: i64,
    /// A row of the group, to read its value from.
    first: Option<Row>,
}

impl Acc {
    fn add(&mut self, r: &Row) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.prompt += i128::from(r.prompt);
        self.completion += i128::from(r.completion);
        self.cost_pico += i128::from(r.cost_pico);
        if r.user != NONE {
            self.users.push(r.user);
        }
        self.last_seen = self.last_seen.max(r.ts);
        self.first.get_or_insert(*r);
    }

    fn merge(&mut self, o: Acc) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.prompt += o.prompt;
        self.completion += o.completion;
        self.cost_pico += o.cost_pico;
        self.users.extend(o.users);
        self.last_seen = self.last_seen.max(o.last_seen);
        if self.first.is_none() {
            self.first = o.first;
        }
    }

    fn stats(&mut self, seen: &mut Distinct) -> Stats {
        let count = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
        let users = seen.count(&mut self.users);
        Stats {
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: count(self.prompt),
            completion_tokens: count(self.completion),
            cost_usd: Decimal::from_i128_with_scale(self.cost_pico, 12).normalize(),
            users,
            last_seen: Millis(self.last_seen),
        }
    }
}

/// Counts distinct symbols: a sort for a few, a bitset over every symbol for many (a day's
/// bucket of a month's traffic holds thousands of users' requests).
struct Distinct {
    bits: Vec<u64>,
}

impl Distinct {
    fn new(symbols: usize) -> Distinct {
        Distinct {
            bits: vec![0; symbols / 64 + 1],
        }
    }

    fn count(&mut self, users: &mut [u32]) -> u64 {
        if users.len() <= 256 {
            users.sort_unstable();
            return users.chunk_by(|a, b| a == b).count() as u64;
        }
        self.bits.iter_mut().for_each(|w| *w = 0);
        let mut n = 0;
        for &u in users.iter() {
            let (word, bit) = (u as usize / 64, 1u64 << (u % 64));
            if let Some(w) = self.bits.get_mut(word) {
                if *w & bit == 0 {
                    *w |= bit;
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::super::{query, SqliteStore};
    use super::*;
    use crate::codec::tests::sample_usage;
    use crate::store::UsageStore;

    /// Events over the last 20 days with every column varied, nulls and empty strings included.
    fn events(now: Millis) -> Vec<UsageEvent> {
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        (0..3_000)
            .map(|i| {
                let mut e = sample_usage();
                e.event_id = format!("e{i:05}");
                e.at = Millis(now.0 - (next(20 * 24) as i64) * 3_600_000 - next(3_600_000) as i64);
                e.workspace_id = format!("ws{}", next(3));
                e.api_key_id = format!("k{}", next(7));
                e.provider_slug = ["a", "b"][next(2) as usize].into();
                e.model = ["m1", "m2", "m3"][next(3) as usize].into();
                e.ai_provider = ["openai", "anthropic"][next(2) as usize].into();
                e.department =
                    [None, Some(String::new()), Some("r&d".into())][next(3) as usize].clone();
                e.user = [
                    None,
                    Some(String::new()),
                    Some("u1".into()),
                    Some("u2".into()),
                ][next(4) as usize]
                    .clone();
                e.config_id = [None, Some("pc-1".into())][next(2) as usize].clone();
                e.status_code = [200, 200, 429, 500][next(4) as usize];
                e.trace_id = format!("t{}", next(50));
                e.metadata = match next(3) {
                    0 => Metadata::new(),
                    1 => Metadata::from([("team".into(), "x".into())]),
                    _ => {
                        Metadata::from([("team".into(), "y".into()), ("env".into(), "prod".into())])
                    }
                };
                e.prompt_tokens = next(5_000);
                e.completion_tokens = next(2_000);
                e.cost_usd = Decimal::new(next(1_000_000_000) as i64, 12 - next(6) as u32);
                e.latency_ms = next(3_000) as u32;
                e
            })
            .collect()
    }

    fn filters(now: Millis) -> Vec<Filter> {
        let base = Filter {
            from: Millis(now.0 - 30 * DAY_MS),
            to: Millis(now.0 + 1),
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut Filter)| {
            let mut x = base.clone();
            f(&mut x);
            x
        };
        vec![
            base.clone(),
            with(&|f| f.from = Millis(now.0 - 3 * DAY_MS)),
            with(&|f| f.workspace_id = Some("ws1".into())),
            with(&|f| f.workspace_id = Some("nowhere".into())),
            with(&|f| f.api_key_ids = vec!["k1".into(), "k4".into(), "unknown".into()]),
            with(&|f| f.provider_slugs = vec!["b".into()]),
            with(&|f| f.config_ids = vec!["pc-1".into()]),
            with(&|f| f.status_codes = vec![429, 500]),
            with(&|f| {
                f.models = vec![
                    ("openai".into(), "m2".into()),
                    ("anthropic".into(), "m1".into()),
                ]
            }),
            with(&|f| f.metadata = Metadata::from([("team".into(), "y".into())])),
            with(&|f| {
                f.metadata =
                    Metadata::from([("team".into(), "y".into()), ("env".into(), "dev".into())])
            }),
        ]
    }

    #[tokio::test]
    async fn the_columns_answer_exactly_what_sqlite_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        let now = Millis::now();
        let all = events(now);
        // Half before a reopen (loaded from the table), half after (appended), a replay of both.
        store.ingest(all[..1_500].to_vec(), "agg", 1).await.unwrap();
        drop(store);
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        store.ingest(all.clone(), "agg", 2).await.unwrap();
        assert_eq!(
            store.offset("agg").await.unwrap(),
            2,
            "after the load and the ingest"
        );
        assert_eq!(
            store.recent.read().rows.len(),
            3_000,
            "a replay adds nothing"
        );
        let sql = Recent::default();
        let groupings = [
            GroupBy::User,
            GroupBy::Model,
            GroupBy::AiProvider,
            GroupBy::Provider,
            GroupBy::ApiKey,
            GroupBy::Workspace,
            GroupBy::StatusCode,
            GroupBy::Config,
            GroupBy::Department,
            GroupBy::Metadata("team".into()),
            GroupBy::Metadata("absent".into()),
        ];
        let reader = &store.reader;
        let recent = store.recent.read();
        for f in filters(now) {
            for b in [Bucket::Hour, Bucket::Day] {
                let memory = query::series(reader, &recent, &f, b).unwrap();
                assert!(recent.covers(&f));
                assert_eq!(memory, query::series(reader, &sql, &f, b).unwrap(), "{f:?}");
                let memory = query::latency(reader, &recent, &f, b).unwrap();
                assert_eq!(
                    memory,
                    query::latency(reader, &sql, &f, b).unwrap(),
                    "{f:?}"
                );
                for by in &groupings {
                    let memory = query::series_by(reader, &recent, &f, b, by).unwrap();
                    let from_sql = query::series_by(reader, &sql, &f, b, by).unwrap();
                    assert_eq!(memory, from_sql, "{f:?} {by:?}");
                }
            }
            for by in &groupings {
                let memory = query::groups(reader, &recent, &f, by).unwrap();
                assert_eq!(
                    memory,
                    query::groups(reader, &sql, &f, by).unwrap(),
                    "{f:?} {by:?}"
                );
            }
        }
        // A range reaching before the window is SQLite's.
        let old = Filter {
            from: Millis(now.0 - 400 * DAY_MS),
            to: Millis(now.0 + 1),
            ..Default::default()
        };
        assert!(!recent.covers(&old));
        let by_trace = Filter {
            trace_id: Some("t3".into()),
            ..filters(now)[0].clone()
        };
        assert!(!recent.covers(&by_trace), "trace ids are not kept");
        assert_eq!(std::mem::size_of::<Row>(), 80);
    }

    #[test]
    fn distinct_users_are_counted_alike_by_sort_and_by_bitset() {
        let mut seen = Distinct::new(5_000);
        for n in [0usize, 1, 255, 256, 257, 4_000] {
            let mut users: Vec<u32> = (0..n).map(|i| (i * 7 % 1_999) as u32).collect();
            let mut expected = users.clone();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(seen.count(&mut users), expected.len() as u64, "{n}");
        }
    }

    #[test]
    fn the_window_slides_and_holds_at_most_its_rows() {
        let mut r = Recent {
            since: Some(0),
            ..Default::default()
        };
        let now = Millis(200 * DAY_MS);
        let mut e = sample_usage();
        e.at = Millis(10 * DAY_MS);
        let mut late = sample_usage();
        late.at = Millis(150 * DAY_MS);
        r.add(&[&e, &late]);
        r.slide(now);
        assert_eq!(r.since, Some(now.0 - WINDOW_DAYS * DAY_MS));
        assert_eq!(r.rows.len(), 1, "the row the window left is dropped");
    }
}
