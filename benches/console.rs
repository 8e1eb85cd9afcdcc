//! The web console's page-render time (issue 13: "10,000 keys and a month of usage: each page's
//! server time; target under 50 ms per page"). Run: `cargo bench --bench console`.
//!
//! One real embedded Tollgate (`roles::serve`, the binary's wiring) in a temp dir, served on
//! `127.0.0.1:0`. Seeded through the admin HTTP API (workspaces, integrations provisioned to
//! them, configs, a department policy, then `KEYS` API keys, every fifth with a budget, and alerts to a local webhook) and with
//! `EVENTS` usage events over the last 30 days appended through the ledger's own metering path
//! (`Ledger::record_usage`: the usage log, the fold into totals and budgets, then the store's
//! sink), so the analytics pages read them from the store and the budgets show them. Then one
//! console sign-in, a check that every page answers 200 with its heading and no error, and one
//! criterion benchmark per page: GET over loopback HTTP with the session cookie, the body read to
//! its end (so each figure is server time plus a loopback round trip). A second group, `store
//! 30d`, times the usage-store queries behind the analytics pages alone, over the overview's
//! default range.
//!
//! `KEYS` (default 10000) and `EVENTS` (default 300000) set the data set. Under `cargo test`
//! (no `--bench` argument) it is a smoke run on 200 keys and 3000 events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use criterion::Criterion;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::watch;

use tollgate::domain::{Endpoint, Metadata, Millis, UsageEvent, UsageSource};
use tollgate::store::{Bucket, Filter, GroupBy, UsageStore};

const ADMIN_KEY: &str = "tg_bench_admin_key_console_page_render";
const WORKSPACES: usize = 8;
const DEPARTMENTS: &[&str] = &[
    "engineering",
    "research",
    "sales",
    "support",
    "marketing",
    "finance",
];
/// (integration slug, ai provider, models, prompt and completion price in 10^-8 $ per token:
/// 250 is $2.50 per million).
const MODELS: &[(&str, &str, &[&str], i64, i64)] = &[
    (
        "openai-prod",
        "openai",
        &["gpt-4o", "gpt-4o-mini", "gpt-4.1"],
        250,
        1000,
    ),
    (
        "anthropic-prod",
        "anthropic",
        &["claude-sonnet-4", "claude-3-5-haiku"],
        300,
        1500,
    ),
];
const DAY_MS: i64 = 86_400_000;

/// The server under test and what the pages need to find in it.
struct Fixture {
    url: String,
    http: reqwest::Client,
    cookie: String,
    /// A key with a budget and usage, for the key's page.
    key_id: String,
    node: Arc<tollgate::roles::Node>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn count(name: &str, bench: usize, smoke: usize, benching: bool) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|_| benching)
        .unwrap_or(if benching { bench } else { smoke })
}

fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    let keys = count("KEYS", 10_000, 200, benching);
    let events = count("EVENTS", 300_000, 3_000, benching);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fx = rt.block_on(Fixture::build(keys, events))?;
    let pages = pages(&fx.key_id);
    rt.block_on(fx.check(&pages))?;
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut g = c.benchmark_group("console");
    for (name, path, _) in &pages {
        g.bench_function(*name, |b| {
            b.iter(|| rt.block_on(fx.get(path)).map(|(_, body)| body.len()))
        });
    }
    g.finish();
    store_queries(&mut c, &rt, fx.node.store());
    c.final_summary();
    Ok(())
}

/// The store queries behind the analytics pages, alone (no HTTP, no rendering), over the
/// overview's default range (the last 30 days, by day): what a page's time is made of.
fn store_queries(c: &mut Criterion, rt: &tokio::runtime::Runtime, store: &Arc<dyn UsageStore>) {
    let now = Millis::now();
    let filter = Filter {
        from: Millis(now.0 - 30 * DAY_MS),
        to: now,
        ..Filter::default()
    };
    let f = || filter.clone();
    let mut g = c.benchmark_group("store 30d");
    g.sample_size(10);
    g.bench_function("series by day", |b| {
        b.iter(|| rt.block_on(store.series(f(), Bucket::Day)).map(|r| r.len()))
    });
    g.bench_function("series_by day, department", |b| {
        b.iter(|| {
            let by = GroupBy::Department;
            rt.block_on(store.series_by(f(), Bucket::Day, by))
                .map(|r| r.len())
        })
    });
    g.bench_function("groups, department", |b| {
        b.iter(|| {
            rt.block_on(store.groups(f(), GroupBy::Department))
                .map(|r| r.len())
        })
    });
    g.bench_function("groups, api key", |b| {
        b.iter(|| {
            rt.block_on(store.groups(f(), GroupBy::ApiKey))
                .map(|r| r.len())
        })
    });
    g.bench_function("latency by day", |b| {
        b.iter(|| {
            rt.block_on(store.latency(f(), Bucket::Day))
                .map(|r| r.1.len())
        })
    });
    g.finish();
}

/// Each page: its benchmark name, its path, and what its answer must contain (its heading, and
/// for the search the first key it finds).
fn pages(key_id: &str) -> Vec<(&'static str, String, Vec<String>)> {
    let h1 = |t: &str| vec![format!("<h1>{t}</h1>")];
    vec![
        ("overview", "/console".into(), h1("Overview")),
        ("analytics", "/console/analytics".into(), h1("Analytics")),
        ("keys page 1", "/console/keys".into(), h1("API keys")),
        (
            "keys search",
            "/console/keys?search=key-001".into(),
            vec!["<h1>API keys</h1>".into(), ">key-00100</a>".into()],
        ),
        (
            "key detail",
            format!("/console/keys/{key_id}"),
            h1("API key key-00000"),
        ),
        (
            "integrations",
            "/console/integrations".into(),
            h1("Integrations"),
        ),
        ("workspaces", "/console/workspaces".into(), h1("Workspaces")),
        ("providers", "/console/providers".into(), h1("Providers")),
        ("configs", "/console/configs".into(), h1("Configs")),
        ("alerts", "/console/alerts".into(), h1("Alerts")),
        ("audit", "/console/audit".into(), h1("Audit log")),
        (
            "analytics.csv groups",
            "/console/analytics.csv?table=groups".into(),
            vec!["group,name,requests,errors".into()],
        ),
    ]
}

impl Fixture {
    async fn build(keys: usize, events: usize) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let mut s = tollgate::settings::Settings::default();
        s.set("listen", "127.0.0.1:0")?;
        s.set("data_dir", dir.path().to_str().context("temp dir path")?)?;
        s.set("admin_key", ADMIN_KEY)?;
        // Budget alerts go to a local webhook that takes them, so the alerts page has deliveries.
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        s.set(
            "alert_webhook_url",
            &format!("http://{}/hook", hook.local_addr()?),
        )?;
        let sink = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(hook, sink).await });
        let node = Arc::new(tollgate::roles::serve::open(s).await?);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(node.clone().serve(listener, stopped));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut fx = Fixture {
            url,
            http,
            cookie: String::new(),
            key_id: String::new(),
            node: node.clone(),
            _stop: stop,
            _dir: dir,
        };
        let started = Instant::now();
        let workspaces = fx.tenants().await?;
        let ids = fx.keys(&workspaces, keys).await?;
        let live_from = Millis::now();
        eprintln!("{keys} keys in {:.1} s", started.elapsed().as_secs_f64());
        fx.key_id = ids.first().context("no keys")?.0.clone();
        let started = Instant::now();
        let batch = month_of_usage(&node, &ids, events, live_from)?;
        let ledger = node.ledger();
        let mut appends = futures_util::stream::iter(batch)
            .map(|e| ledger.record_usage(e, None))
            .buffer_unordered(4096);
        while let Some(r) = appends.next().await {
            r?;
        }
        drop(appends);
        while ledger.store_lag().await > 0 {
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the usage store did not catch up with the log");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ledger.await_audit().await;
        eprintln!(
            "{events} usage events metered and in the store in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let alerts = settled_alerts(node.store().as_ref()).await?;
        eprintln!("{alerts} alert deliveries recorded");
        fx.sign_in().await?;
        Ok(fx)
    }

    /// An admin API call that must succeed.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let resp = self
            .http
            .request(method.clone(), format!("{}/v1{path}", self.url))
            .header("x-portkey-api-key", ADMIN_KEY)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Workspaces (two with budgets), both integrations provisioned to every one, a config in
    /// each and a department policy. Returns the workspace ids.
    async fn tenants(&self) -> anyhow::Result<Vec<String>> {
        use reqwest::Method;
        let mut ids = Vec::new();
        for w in 0..WORKSPACES {
            let mut body = json!({"name": format!("team {w}")});
            if w < 2 {
                body["usage_limits"] = json!({"type": "cost", "credit_limit": 5000, "alert_threshold": 4000, "periodic_reset": "monthly"});
            }
            let ws = self.admin(Method::POST, "/admin/workspaces", body).await?;
            ids.push(ws["id"].as_str().context("workspace id")?.to_owned());
        }
        let all: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "enabled": true}))
            .collect();
        for (slug, provider, _, _, _) in MODELS {
            let body = json!({"name": slug, "slug": slug, "ai_provider_id": provider, "key": "sk-bench-upstream-secret-1234567890"});
            self.admin(Method::POST, "/integrations", body).await?;
            let path = format!("/integrations/{slug}/workspaces");
            self.admin(Method::PUT, &path, json!({"workspaces": all}))
                .await?;
        }
        for ws in &ids {
            let body = json!({"name": "fallback", "workspace_id": ws, "config": {"strategy": {"mode": "fallback"}, "targets": [{"provider": "@openai-prod"}, {"provider": "@anthropic-prod"}]}});
            self.admin(Method::POST, "/configs", body).await?;
        }
        let policy = json!({"name": "per department", "conditions": [{"key": "metadata.department", "value": "research"}],
            "group_by": [{"key": "metadata.department"}], "type": "cost", "credit_limit": 100000});
        self.admin(Method::POST, "/policies/usage-limits", policy)
            .await?;
        Ok(ids)
    }

    /// `n` workspace service keys, spread over the workspaces, each with a department in its
    /// default metadata. The first 100 (the busiest) have tight lifetime budgets, and every fifth
    /// of the rest a monthly one, all with alert recipients. Returns (key id, workspace id,
    /// department) in creation order.
    async fn keys(
        &self,
        workspaces: &[String],
        n: usize,
    ) -> anyhow::Result<Vec<(String, String, &'static str)>> {
        let made = futures_util::stream::iter(0..n)
            .map(|i| async move {
                let ws = &workspaces[i % workspaces.len()];
                let dept = DEPARTMENTS[(i / workspaces.len()) % DEPARTMENTS.len()];
                let mut body = json!({"name": format!("key-{i:05}"), "workspace_id": ws,
                    "scopes": ["completions.write"], "defaults": {"metadata": {"department": dept}}});
                if i < 100 {
                    // The busiest keys: tight lifetime budgets, which the usage made after they
                    // were set crosses (a budget counts from when it is set).
                    body["usage_limits"] = json!({"type": "cost", "credit_limit": 1, "alert_threshold": 0.25});
                    body["alert_emails"] = json!([format!("owner{i}@example.com")]);
                } else if i % 5 == 0 {
                    body["usage_limits"] = json!({"type": "cost", "credit_limit": 20, "alert_threshold": 15, "periodic_reset": "monthly"});
                    body["alert_emails"] = json!([format!("owner{i}@example.com")]);
                }
                let path = "/api-keys/workspace/service";
                let k = self.admin(reqwest::Method::POST, path, body).await?;
                let id = k["id"].as_str().context("key id")?.to_owned();
                Ok::<_, anyhow::Error>((id, ws.clone(), dept))
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        made.into_iter().collect()
    }

    /// Signs in to the console with the admin key; keeps the session cookie.
    async fn sign_in(&mut self) -> anyhow::Result<()> {
        let login = format!("{}/console/login", self.url);
        let form = self.http.get(&login).send().await?;
        let signin = set_cookie(&form, "tg_signin").context("no tg_signin cookie")?;
        let html = form.text().await?;
        let token = html
            .split("name=\"_signin\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("no _signin field")?
            .to_owned();
        let resp = self
            .http
            .post(&login)
            .header("cookie", format!("tg_signin={signin}"))
            .form(&[("_signin", token.as_str()), ("api_key", ADMIN_KEY)])
            .send()
            .await?;
        let session = set_cookie(&resp, "tg_session")
            .with_context(|| format!("sign-in refused: {}", resp.status()))?;
        self.cookie = format!("tg_session={session}");
        Ok(())
    }

    /// GET `path` with the session: status and the whole body.
    async fn get(&self, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .send()
            .await?;
        Ok((resp.status().as_u16(), resp.bytes().await?))
    }

    /// Every page answers 200 with its heading and shows no error (so no benchmark measures an
    /// error page); prints each page's size and one cold time.
    async fn check(&self, pages: &[(&str, String, Vec<String>)]) -> anyhow::Result<()> {
        for (name, path, expect) in pages {
            let started = Instant::now();
            let (status, body) = self.get(path).await?;
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&body);
            let missing = expect.iter().find(|e| !text.contains(e.as_str()));
            if status != 200 || missing.is_some() || text.contains("class=\"error\"") {
                bail!("{name} ({path}): {status}, expected {missing:?}:\n{text}");
            }
            eprintln!(
                "{name:>22}: {path} 200, {} bytes, first answer {:.1} ms",
                body.len(),
                took.as_secs_f64() * 1e3
            );
        }
        Ok(())
    }
}

/// Waits (at most 10 s) until the notifier has recorded the budget alerts the usage made due:
/// until their count holds for a second. Returns it.
async fn settled_alerts(store: &dyn tollgate::store::UsageStore) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = usize::MAX;
    loop {
        let now = store.notifications(10_000).await?.len();
        if (now == seen && now > 0) || Instant::now() > deadline {
            return Ok(now);
        }
        seen = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The value of cookie `name` an answer sets.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// (workspace id, integration slug) → (provider id, integration id).
type Providers = HashMap<(String, String), (String, String)>;

/// `n` usage events over the last 30 days in time order, on the keys `ids` (a few keys busy, most
/// quiet), both providers of the key's workspace, five models and the key's department; about 3%
/// failed. The last 5% are made after `live_from` (when the keys and their budgets were set), so
/// the budgets count them; the rest are history up to a minute before it.
fn month_of_usage(
    node: &tollgate::roles::Node,
    ids: &[(String, String, &'static str)],
    n: usize,
    live_from: Millis,
) -> anyhow::Result<Vec<UsageEvent>> {
    let (org, providers): (String, Providers) = {
        let state = node.ledger().state();
        let org = state.organisation.as_ref().map(|o| o.id.clone());
        let slugs: HashMap<&str, &str> = state
            .integrations
            .values()
            .map(|i| (i.id.as_str(), i.slug.as_str()))
            .collect();
        let providers = state
            .providers
            .values()
            .filter_map(|p| {
                let slug = slugs.get(p.integration_id.as_str())?;
                Some((
                    (p.workspace_id.clone(), (*slug).to_owned()),
                    (p.id.clone(), p.integration_id.clone()),
                ))
            })
            .collect();
        (org.context("no organisation")?, providers)
    };
    let mut rng = StdRng::seed_from_u64(13);
    let now = Millis::now().0;
    let start = now - 30 * DAY_MS;
    let (live, history_end) = (n / 20, live_from.0 - 60_000);
    let history = n - live;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = if i < history {
            start + (history_end - start) * i as i64 / history as i64
        } else {
            live_from.0 + (now - live_from.0) * (i - history) as i64 / live as i64
        };
        // Squaring a uniform draw skews the traffic towards the first keys.
        let u: f64 = rng.gen();
        let (key, ws, dept) = &ids[((u * u) * ids.len() as f64) as usize % ids.len()];
        let (slug, ai, models, pin, pout) = MODELS[usize::from(rng.gen_bool(0.3))];
        let model = models[rng.gen_range(0..models.len())];
        let (provider_id, integration_id) = providers
            .get(&(ws.clone(), slug.to_owned()))
            .with_context(|| format!("no provider {slug} in {ws}"))?;
        let failed = rng.gen_bool(0.03);
        let prompt: u64 = rng.gen_range(50..4000);
        let completion: u64 = if failed { 0 } else { rng.gen_range(10..1500) };
        let mut cost = Decimal::new(prompt as i64 * pin + completion as i64 * pout, 8);
        if failed {
            cost = Decimal::ZERO;
        }
        let latency = rng.gen_range(200..6000);
        let mut metadata = Metadata::new();
        metadata.insert("department".into(), (*dept).into());
        let secs = u64::try_from(at / 1000)?;
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, (at % 1000) as u32 * 1_000_000);
        out.push(UsageEvent {
            event_id: uuid::Uuid::new_v7(ts).to_string(),
            at: Millis(at),
            organisation_id: org.clone(),
            workspace_id: ws.clone(),
            api_key_id: key.clone(),
            provider_id: provider_id.clone(),
            provider_slug: slug.into(),
            integration_id: integration_id.clone(),
            ai_provider: ai.into(),
            department: Some((*dept).into()),
            user: Some(format!("user-{}", rng.gen_range(0..400))),
            metadata,
            model: model.into(),
            endpoint: Endpoint::ChatCompletions,
            status_code: if failed { [429, 500, 502][i % 3] } else { 200 },
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: 0,
            cost_usd: cost,
            priced: true,
            usage_source: UsageSource::Provider,
            latency_ms: latency,
            upstream_latency_ms: latency - 5,
            streamed: rng.gen_bool(0.4),
            attempt_index: 0,
            trace_id: format!("trace-{i}"),
            config_id: None,
            cache_write_tokens: 0,
        });
    }
    Ok(out)
}
