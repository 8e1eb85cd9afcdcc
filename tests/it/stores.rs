//! Both usage stores give the same answers on the same events: the embedded SQLite store and
//! ClickHouse (the shared server from `scripts/services.sh`, a fresh migrated database), for
//! every series bucket, latency report, group and rollup the analytics API and dashboards use.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tollgate::domain::*;
use tollgate::settings::ClickhouseSettings;
use tollgate::store::clickhouse::ClickhouseStore;
use tollgate::store::sqlite::SqliteStore;
use tollgate::store::{Bucket, Filter, GroupBy, GroupSeries, Stats, UsageStore, ROLLUP_DIMENSIONS};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A varied, deterministic day of events: several workspaces, keys, models, departments and
/// users, errors, costs with twelve decimals, metadata, some events repeated (replays).
fn events() -> Vec<UsageEvent> {
    let mut out = Vec::new();
    for i in 0..600u64 {
        let mut metadata = Metadata::new();
        let department = ["engineering", "research", "sales"][(i % 3) as usize];
        if i % 5 != 0 {
            metadata.insert("department".into(), department.into());
        }
        metadata.insert("team".into(), format!("t{}", i % 4));
        out.push(UsageEvent {
            event_id: uuid::Uuid::from_u128(0x1000 + u128::from(i)).to_string(),
            at: Millis(T0 + (i as i64) * 137_003 % 86_400_000),
            organisation_id: "org".into(),
            workspace_id: format!("ws{}", i % 3),
            api_key_id: format!("key{}", i % 7),
            provider_id: format!("prov{}", i % 2),
            provider_slug: format!("p{}", i % 2),
            integration_id: "int".into(),
            ai_provider: if i % 4 == 0 { "anthropic" } else { "openai" }.into(),
            department: (i % 5 != 0).then(|| department.to_owned()),
            user: (i % 6 != 0).then(|| format!("user{}", i % 11)),
            metadata,
            model: ["gpt-4o-mini", "gpt-4o", "claude-3-5-haiku"][(i % 3) as usize].into(),
            endpoint: Endpoint::ChatCompletions,
            status_code: [200, 200, 200, 429, 500, 200][(i % 6) as usize],
            prompt_tokens: 10 + i % 97,
            completion_tokens: i % 53,
            cached_tokens: i % 5,
            cost_usd: Decimal::new((i as i64) * 1_234_567 + 1, 12),
            priced: i % 9 != 0,
            usage_source: UsageSource::Provider,
            latency_ms: (i * 37 % 900) as u32,
            upstream_latency_ms: (i * 31 % 800) as u32,
            streamed: i % 2 == 0,
            attempt_index: (i % 2) as u32,
            trace_id: format!("trace{}", i % 50),
            config_id: (i % 3 == 0).then(|| "cfg1".to_owned()),
            cache_write_tokens: 0,
        });
    }
    let replays: Vec<UsageEvent> = out.iter().step_by(10).cloned().collect();
    out.extend(replays);
    out
}

/// The whole day of [`events`].
fn day() -> Filter {
    Filter {
        from: Millis(T0),
        to: Millis(T0 + 86_400_000),
        ..Default::default()
    }
}

/// Filters over [`events`] that use every field of a [`Filter`].
fn filters() -> Vec<Filter> {
    let day = day();
    vec![
        day.clone(),
        Filter {
            workspace_id: Some("ws1".into()),
            ..day.clone()
        },
        Filter {
            api_key_ids: vec!["key2".into(), "key5".into()],
            status_codes: vec![200, 500],
            ..day.clone()
        },
        Filter {
            models: vec![("openai".into(), "gpt-4o".into())],
            provider_slugs: vec!["p1".into()],
            ..day.clone()
        },
        Filter {
            metadata: [("team".to_owned(), "t2".to_owned())].into_iter().collect(),
            config_ids: vec!["cfg1".into()],
            ..day.clone()
        },
        Filter {
            from: Millis(T0 + 3_600_000),
            to: Millis(T0 + 7_200_000),
            trace_id: Some("trace7".into()),
            ..day.clone()
        },
    ]
}

/// Every grouping, metadata keys that every event has (`team`) and that some lack (`department`).
fn groupings() -> Vec<GroupBy> {
    vec![
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
        GroupBy::Metadata("department".into()),
    ]
}

async fn clickhouse() -> ClickhouseStore {
    let settings = ClickhouseSettings {
        url: Some(std::env::var("TG_CLICKHOUSE_URL").expect(
            "TG_CLICKHOUSE_URL is not set: run the tests with ./scripts/test.sh, which starts ClickHouse",
        )),
        database: format!("tg_stores_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        ..Default::default()
    };
    ClickhouseStore::migrate(&settings).await.unwrap();
    ClickhouseStore::new(&settings).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_clickhouse_answer_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("usage.sqlite")).unwrap();
    let ch = clickhouse().await;
    let all = events();
    // In two batches, the second overlapping the first: both stores keep each event once.
    let (a, b) = all.split_at(400);
    for store in [&sqlite as &dyn UsageStore, &ch as &dyn UsageStore] {
        store.ingest(a.to_vec(), "test", 1).await.unwrap();
        let mut second = b.to_vec();
        second.extend(a[..50].iter().cloned());
        store.ingest(second, "test", 2).await.unwrap();
    }
    let (day, filters, groupings) = (day(), filters(), groupings());
    for f in &filters {
        for bucket in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
            let s = sqlite.series(f.clone(), bucket).await.unwrap();
            assert_eq!(
                s,
                ch.series(f.clone(), bucket).await.unwrap(),
                "series {bucket:?} {f:?}"
            );
            for by in &groupings {
                assert_eq!(
                    sqlite
                        .series_by(f.clone(), bucket, by.clone())
                        .await
                        .unwrap(),
                    ch.series_by(f.clone(), bucket, by.clone()).await.unwrap(),
                    "series_by {bucket:?} {by:?} {f:?}"
                );
            }
            let l = sqlite.latency(f.clone(), bucket).await.unwrap();
            assert_eq!(
                l,
                ch.latency(f.clone(), bucket).await.unwrap(),
                "latency {bucket:?} {f:?}"
            );
        }
        for by in &groupings {
            let g = sqlite.groups(f.clone(), by.clone()).await.unwrap();
            assert_eq!(
                g,
                ch.groups(f.clone(), by.clone()).await.unwrap(),
                "groups {by:?} {f:?}"
            );
        }
    }
    let totals = sqlite.series(day.clone(), Bucket::Day).await.unwrap();
    assert_eq!(totals[0].1.requests, 600, "each event once");
    for grain in ["minute", "day"] {
        for dim in ROLLUP_DIMENSIONS {
            let r = sqlite.rollups(grain, dim).await.unwrap();
            assert!(!r.is_empty(), "{grain} {dim}");
            assert_eq!(
                r,
                ch.rollups(grain, dim).await.unwrap(),
                "rollups {grain} {dim}"
            );
        }
    }
}

/// An event's value in a grouping, as the stores answer it: ids (workspace ids for workspaces),
/// `''` for what an event lacks, status codes as text.
fn group_value(by: &GroupBy, e: &UsageEvent) -> String {
    match by {
        GroupBy::User => e.user.clone().unwrap_or_default(),
        GroupBy::Model => e.model.clone(),
        GroupBy::AiProvider => e.ai_provider.clone(),
        GroupBy::Provider => e.provider_slug.clone(),
        GroupBy::ApiKey => e.api_key_id.clone(),
        GroupBy::Workspace => e.workspace_id.clone(),
        GroupBy::StatusCode => e.status_code.to_string(),
        GroupBy::Config => e.config_id.clone().unwrap_or_default(),
        GroupBy::Department => e.department.clone().unwrap_or_default(),
        GroupBy::Metadata(k) => e.metadata.get(k).cloned().unwrap_or_default(),
    }
}

/// What `series_by` must answer over the day (each event once, replays aside): the stats of each
/// (bucket, group value), computed here from the events, in the port's order (bucket, then most
/// requests, then value).
fn expected_series_by(bucket: Bucket, by: &GroupBy) -> GroupSeries {
    let mut seen = std::collections::HashSet::new();
    let mut cells = BTreeMap::<(Millis, String), (Stats, Vec<String>)>::new();
    for e in events().iter().filter(|e| seen.insert(e.event_id.clone())) {
        let at = Millis(e.at.0.div_euclid(bucket.ms()) * bucket.ms());
        let (s, users) = cells.entry((at, group_value(by, e))).or_default();
        s.requests += 1;
        s.errors += u64::from(e.status_code >= 400);
        s.prompt_tokens += e.prompt_tokens;
        s.completion_tokens += e.completion_tokens;
        s.cost_usd += e.cost_usd;
        s.last_seen = s.last_seen.max(e.at);
        if let Some(u) = e.user.as_ref().filter(|u| !users.contains(u)) {
            users.push(u.clone());
            s.users += 1;
        }
    }
    let mut out: GroupSeries = cells
        .into_iter()
        .map(|((at, g), (s, _))| (at, g, s))
        .collect();
    out.sort_by_key(|(at, g, s)| (*at, std::cmp::Reverse(s.requests), g.clone()));
    out
}

/// `series_by` rows summed over their groups, a bucket's stats but for users (a user may be in
/// several groups), with the most and the sum of the groups' users.
fn summed(rows: &GroupSeries) -> BTreeMap<Millis, (Stats, u64, u64)> {
    let mut out = BTreeMap::<Millis, (Stats, u64, u64)>::new();
    for (at, _, s) in rows {
        let (t, most, sum) = out.entry(*at).or_default();
        t.requests += s.requests;
        t.errors += s.errors;
        t.prompt_tokens += s.prompt_tokens;
        t.completion_tokens += s.completion_tokens;
        t.cost_usd += s.cost_usd;
        t.last_seen = t.last_seen.max(s.last_seen);
        *most = (*most).max(s.users);
        *sum += s.users;
    }
    out
}

/// The `series_by` scenario, run on each store: over the day, exact stats per (bucket, group) for
/// every grouping and bucket; and, for every filter, bucket and grouping, the groups of a bucket
/// sum to its `series` row.
async fn series_by_scenario(store: &dyn UsageStore, name: &str) {
    store.ingest(events(), "test", 1).await.unwrap();
    for bucket in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
        for by in groupings() {
            let want = expected_series_by(bucket, &by);
            // Several buckets (but a day), several groups in a bucket (but minutes: 137 s apart).
            let buckets = 1 + want.windows(2).filter(|w| w[0].0 != w[1].0).count();
            assert!(buckets > 1 || bucket == Bucket::Day, "{bucket:?}");
            assert!(
                buckets < want.len() || bucket == Bucket::Minute,
                "{bucket:?}"
            );
            let got = store.series_by(day(), bucket, by.clone()).await.unwrap();
            assert_eq!(got, want, "{name}: series_by {bucket:?} {by:?}");
        }
    }
    for f in filters() {
        for bucket in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
            let series = store.series(f.clone(), bucket).await.unwrap();
            for by in groupings() {
                let rows = store
                    .series_by(f.clone(), bucket, by.clone())
                    .await
                    .unwrap();
                let at = format!("{name}: {bucket:?} {by:?} {f:?}");
                assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "order {at}");
                let sums = summed(&rows);
                assert_eq!(sums.len(), series.len(), "{at}");
                for (bucket_at, s) in &series {
                    let (t, most, sum) = &sums[bucket_at];
                    let s_but_users = Stats {
                        users: 0,
                        ..s.clone()
                    };
                    assert_eq!(t, &s_but_users, "{bucket_at:?} {at}");
                    assert!(
                        *most <= s.users && s.users <= *sum,
                        "users {bucket_at:?} {at}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_by_is_exact_per_bucket_and_group_and_sums_to_series() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("usage.sqlite")).unwrap();
    series_by_scenario(&sqlite, "sqlite").await;
    series_by_scenario(&clickhouse().await, "clickhouse").await;
}

/// Distributed gateways read entity totals as "before the cutoff" plus "since the cutoff"; the two
/// ranges must partition the events exactly (each counted once, replays included only once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_entity_totals_split_by_time_add_up() {
    let ch = clickhouse().await;
    let all = events();
    ch.ingest(all.clone(), "test", 1).await.unwrap();
    let cutoff = T0 + 43_200_000;
    let mut expected = BTreeMap::<(String, String), (u64, u64, Decimal)>::new();
    let mut seen = std::collections::HashSet::new();
    for e in all.iter().filter(|e| seen.insert(e.event_id.clone())) {
        for (kind, id) in [
            ("ApiKey", &e.api_key_id),
            ("Workspace", &e.workspace_id),
            ("Integration", &e.integration_id),
            ("Provider", &e.provider_id),
        ] {
            let half = if e.at.0 < cutoff { "before" } else { "since" };
            for part in [half, "all"] {
                let t = expected
                    .entry((format!("{part}/{kind}"), id.clone()))
                    .or_default();
                t.0 += 1;
                t.1 += e.prompt_tokens + e.completion_tokens;
                t.2 += e.cost_usd;
            }
        }
    }
    let mut got = BTreeMap::new();
    for (part, from, to) in [
        ("before", i64::MIN, cutoff),
        ("since", cutoff, i64::MAX),
        ("all", i64::MIN, i64::MAX),
    ] {
        for (kind, id, t) in ch.entity_totals(from, to).await.unwrap() {
            got.insert(
                (format!("{part}/{kind:?}"), id),
                (t.requests, t.tokens, t.cost_usd),
            );
        }
    }
    assert_eq!(got, expected);
    assert!(got.keys().any(|(p, _)| p.starts_with("before/")));
    assert!(got.keys().any(|(p, _)| p.starts_with("since/")));
}

/// A varied audit trail: system changes (no actor), organisation and workspace keys, every
/// action and kind, changed fields, some rows at the same millisecond.
fn audit_rows() -> Vec<AuditEntry> {
    (0..120u64)
        .map(|i| {
            let actor = (i % 5 != 0).then(|| Actor {
                key_id: format!("key{}", i % 4),
                key_name: format!("Key {}", i % 4),
                created_by: (i % 4 != 0).then(|| "admin".to_owned()),
                workspace_id: (i % 2 == 0).then(|| format!("ws{}", i % 3)),
            });
            AuditEntry {
                id: uuid::Uuid::from_u128(0x9000 + u128::from(i)).to_string(),
                at: Millis(T0 + (i as i64 / 2) * 60_000),
                actor,
                action: Action::ALL[(i % 3) as usize],
                resource_type: EntityKind::ALL[(i % 7) as usize],
                resource_id: format!("r{}", i % 13),
                resource_name: (i % 6 != 0).then(|| format!("name {i}")),
                workspace_id: (i % 4 != 3).then(|| format!("ws{}", i % 3)),
                changed_fields: if i % 3 == 1 {
                    vec!["name".into(), "usage_limits".into()]
                } else {
                    vec![]
                },
            }
        })
        .collect()
}

/// The audit trail reads the same from both stores, for every filter and page, and a replayed
/// batch adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_keep_the_same_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("usage.sqlite")).unwrap();
    let ch = clickhouse().await;
    let all = audit_rows();
    let (a, b) = all.split_at(70);
    for store in [&sqlite as &dyn UsageStore, &ch as &dyn UsageStore] {
        assert_eq!(
            store.record_audit(a.to_vec(), "audit", 1).await.unwrap(),
            70
        );
        let mut second = b.to_vec();
        second.extend(a[..20].iter().cloned());
        assert_eq!(store.record_audit(second, "audit", 2).await.unwrap(), 50);
    }
    assert_eq!(sqlite.offset("audit").await.unwrap(), 2);
    let everything = AuditQuery {
        limit: 1000,
        ..Default::default()
    };
    let queries = vec![
        everything.clone(),
        AuditQuery {
            from: Some(Millis(T0 + 10 * 60_000)),
            to: Some(Millis(T0 + 20 * 60_000)),
            ..everything.clone()
        },
        AuditQuery {
            actor: Some("key1".into()),
            action: Some(Action::Updated),
            ..everything.clone()
        },
        AuditQuery {
            resource_type: Some(EntityKind::ApiKey),
            workspace_id: Some("ws1".into()),
            ..everything.clone()
        },
        AuditQuery {
            resource_id: Some("r3".into()),
            ..everything.clone()
        },
        AuditQuery {
            offset: 25,
            limit: 10,
            ..everything.clone()
        },
    ];
    for q in &queries {
        let s = sqlite.audit(q.clone()).await.unwrap();
        assert_eq!(s, ch.audit(q.clone()).await.unwrap(), "{q:?}");
        let matching: Vec<&AuditEntry> = all
            .iter()
            .filter(|r| q.from.is_none_or(|t| r.at >= t) && q.to.is_none_or(|t| r.at <= t))
            .filter(|r| {
                q.actor.is_none() || r.actor.as_ref().map(|a| &a.key_id) == q.actor.as_ref()
            })
            .filter(|r| q.action.is_none_or(|a| r.action == a))
            .filter(|r| q.resource_type.is_none_or(|k| r.resource_type == k))
            .filter(|r| q.resource_id.is_none() || Some(&r.resource_id) == q.resource_id.as_ref())
            .filter(|r| q.workspace_id.is_none() || r.workspace_id == q.workspace_id)
            .collect();
        assert_eq!(s.0, matching.len() as u64, "total {q:?}");
        assert_eq!(
            s.1.len(),
            (matching.len() as u64)
                .saturating_sub(q.offset)
                .min(q.limit) as usize
        );
        assert!(
            s.1.windows(2)
                .all(|w| (w[0].at, &w[0].id) >= (w[1].at, &w[1].id)),
            "newest first {q:?}"
        );
    }
    // Every field comes back as written.
    let (_, rows) = sqlite.audit(everything).await.unwrap();
    let mut want = all.clone();
    want.sort_by(|x, y| (y.at, &y.id).cmp(&(x.at, &x.id)));
    assert_eq!(rows, want);
}
