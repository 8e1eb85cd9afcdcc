//! Distributed mode end to end, against the real broker (tansu) and ClickHouse started by
//! `scripts/services.sh` (which `scripts/test.sh` runs): `tollgate migrate`, two gateways and two
//! aggregators as processes, the mock provider upstream.
//!
//! Each test gets its own topic prefix and ClickHouse database on the shared servers; the fault
//! tests (broker restart, ClickHouse outage) start private servers they can stop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::harness::{
    admin_call as admin, await_ready, call, create_workspace, free_port, ADMIN_KEY, PATIENCE,
};
use crate::mock;

const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn need(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with ./scripts/test.sh, which starts ClickHouse and the broker")
    })
}

fn services_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh")
}

/// A private ClickHouse and broker this test can stop and start.
struct Private {
    dir: tempfile::TempDir,
    ch_http: u16,
    ch_tcp: u16,
    kafka: u16,
}

impl Private {
    fn run(&self, args: &[&str], keep: bool) {
        let ok = Command::new("bash")
            .arg(services_script())
            .args(args)
            .env("TG_SERVICES_DIR", self.dir.path())
            .env("TG_CH_HTTP_PORT", self.ch_http.to_string())
            .env("TG_CH_TCP_PORT", self.ch_tcp.to_string())
            .env("TG_KAFKA_PORT", self.kafka.to_string())
            .env("TG_TANSU", need("TG_TANSU"))
            .env("TG_SERVICES_KEEP", if keep { "1" } else { "0" })
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "services.sh {args:?}");
    }

    fn start() -> Private {
        let p = Private {
            dir: tempfile::tempdir().unwrap(),
            ch_http: free_port(),
            ch_tcp: free_port(),
            kafka: free_port(),
        };
        p.run(&["start"], false);
        p
    }

    /// Stops `service` for `down` while the test's load keeps running, then starts it again.
    async fn outage(&self, service: &str, down: Duration) {
        self.run(&["stop", service], true);
        tokio::time::sleep(down).await;
        self.run(&["start"], true);
    }

    fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ch_http)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.run(&["stop"], true);
    }
}

/// One distributed deployment: its settings and its processes.
struct Cluster {
    env: Vec<(String, String)>,
    clickhouse_url: String,
    database: String,
    dirs: tempfile::TempDir,
    gateways: Vec<(Child, String)>,
    aggregators: Vec<Child>,
}

impl Cluster {
    async fn new(brokers: &str, clickhouse_url: &str) -> Cluster {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("tg_{}", &id[..12]);
        let env = vec![
            ("TOLLGATE_KAFKA_BROKERS".into(), brokers.to_owned()),
            ("TOLLGATE_CLICKHOUSE_URL".into(), clickhouse_url.to_owned()),
            ("TOLLGATE_CLICKHOUSE_DATABASE".into(), database.clone()),
            ("TOLLGATE_TOPIC_PREFIX".into(), format!("t{}.", &id[..12])),
            ("TOLLGATE_USAGE_PARTITIONS".into(), "4".into()),
            ("TOLLGATE_MASTER_KEY".into(), MASTER_KEY.into()),
            ("TOLLGATE_ADMIN_KEY".into(), ADMIN_KEY.into()),
        ];
        let c = Cluster {
            env,
            clickhouse_url: clickhouse_url.to_owned(),
            database,
            dirs: tempfile::tempdir().unwrap(),
            gateways: vec![],
            aggregators: vec![],
        };
        let out = c.command("migrate", "migrate").output().unwrap();
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Idempotent: a second run applies nothing and succeeds.
        assert!(c.command("migrate", "migrate").status().unwrap().success());
        c
    }

    /// A cluster on a private broker that the test stops and starts. tansu 0.6 refuses idempotent
    /// produces after it restarts (UNKNOWN_SERVER_ERROR, forever), so these clusters run the
    /// producer without idempotence; duplicates are then dropped by `event_id`.
    async fn with_restartable_broker(private: &Private) -> Cluster {
        let mut c = Cluster::new(&private.brokers(), &private.clickhouse_url()).await;
        c.env
            .push(("TOLLGATE_KAFKA_IDEMPOTENCE".into(), "false".into()));
        c
    }

    /// A role's command; its log goes to `$TG_TEST_LOGS/<database>-<name>.log` when that is set.
    fn command(&self, role: &str, name: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        let (out, err) = match std::env::var("TG_TEST_LOGS") {
            Ok(dir) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(&dir).join(format!("{}-{name}.log", self.database)))
                    .unwrap();
                (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
            }
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        cmd.arg(role)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TOLLGATE_DATA_DIR", self.dirs.path().join(name))
            .env(
                "RUST_LOG",
                std::env::var("TG_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(out)
            .stderr(err);
        cmd
    }

    async fn add_gateway(&mut self) -> String {
        let port = free_port();
        let name = format!("gateway{}", self.gateways.len());
        let mut child = self
            .command("gateway", &name)
            .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        await_ready(&mut child, &url, "gateway").await;
        self.gateways.push((child, url.clone()));
        url
    }

    fn add_aggregator(&mut self) {
        let name = format!("aggregator{}", self.aggregators.len());
        self.aggregators
            .push(self.command("aggregator", &name).spawn().unwrap());
    }

    fn add_notifier(&mut self) {
        let child = self.command("notifier", "notifier").spawn().unwrap();
        self.aggregators.push(child); // stopped with the aggregators
    }

    fn kill_aggregator(&mut self, i: usize) {
        let c = &mut self.aggregators[i];
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
        let name = format!("aggregator{i}");
        self.aggregators[i] = self.command("aggregator", &name).spawn().unwrap();
    }

    async fn sql(&self, query: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/?database={}",
                self.clickhouse_url, self.database
            ))
            .body(format!("{query} FORMAT TSV"))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => r.text().await.unwrap().trim().to_owned(),
            Ok(r) => format!("error {}", r.text().await.unwrap_or_default()),
            Err(e) => format!("error {e}"),
        }
    }

    /// Waits until ClickHouse holds `n` events (up to `secs`), then returns what it holds.
    /// Every acknowledged event is in ClickHouse exactly once, and the billed tokens add up.
    async fn assert_each_event_once(&self, acked: usize, billed: u64) {
        assert_eq!(
            self.sql("SELECT count(), uniqExact(event_id), sum(prompt_tokens + completion_tokens) FROM usage_events")
                .await,
            format!("{acked}\t{acked}\t{billed}"),
            "each acknowledged event once"
        );
    }

    async fn wait_for_events(&self, n: usize, secs: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let have = self
                .sql("SELECT count() FROM usage_events")
                .await
                .parse::<usize>()
                .unwrap_or(0);
            if have >= n || Instant::now() > deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (c, _) in &mut self.gateways {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.aggregators {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A workspace with the mock provisioned (`@up`); returns the workspace id.
async fn tenant(url: &str, upstream: &str) -> String {
    crate::harness::provision_up(url, upstream, "dist", "sk-distributed-secret-0042").await
}

async fn new_key(url: &str, ws: &str, name: &str, extra: Value) -> String {
    let mut body = json!({"name": name, "workspace_id": ws, "scopes": ["completions.write"],
        "defaults": {"metadata": {"department": "research"}}});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let k = admin(url, "POST", "/api-keys/workspace/service", Some(body)).await;
    k["key"].as_str().unwrap().to_owned()
}

/// One chat request; returns the status and the billed total tokens when it succeeded.
async fn chat(client: &reqwest::Client, url: &str, key: &str) -> (u16, u64) {
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"model": "@up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v["usage"]["total_tokens"].as_u64().unwrap_or(0))
        }
        Err(_) => (0, 0),
    }
}

/// Waits until a gateway knows a key created on another one.
async fn known_on(url: &str, key: &str) {
    let client = reqwest::Client::new();
    let known = crate::harness::eventually(Duration::from_millis(10), || async {
        let r = client
            .get(format!("{url}/v1/models"))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .unwrap();
        r.status() != 401
    })
    .await;
    assert!(known, "the key never reached the other gateway");
}

/// Load through both gateways from several workers until `stop`; returns acknowledged billed tokens.
fn load(
    urls: Vec<String>,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, u64, usize)> {
    tokio::spawn(async move {
        let acked = Arc::new(Mutex::new((0usize, 0u64, 0usize)));
        let mut workers = Vec::new();
        for w in 0..6 {
            let (urls, keys, stop, acked) =
                (urls.clone(), keys.clone(), stop.clone(), acked.clone());
            workers.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let (status, tokens) =
                        chat(&client, &urls[i % urls.len()], &keys[i % keys.len()]).await;
                    let mut a = acked.lock();
                    if status == 200 {
                        a.0 += 1;
                        a.1 += tokens;
                    } else {
                        eprintln!("load: status {status}");
                        a.2 += 1;
                    }
                    i += 1;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let a = *acked.lock();
        a
    })
}

/// The gateway's `tollgate_spool_bytes` gauge.
async fn spooled(url: &str) -> u64 {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_spool_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The mock provider and a cluster on the shared servers with `aggregators` aggregators and
/// `gateways` gateways, a tenant provisioned through the first gateway.
async fn shared_cluster(
    aggregators: usize,
    gateways: usize,
) -> (mock::Mock, Cluster, Vec<String>, String) {
    let mock = mock::start().await;
    let mut c = Cluster::new(&need("TG_KAFKA_BROKERS"), &need("TG_CLICKHOUSE_URL")).await;
    for _ in 0..aggregators {
        c.add_aggregator();
    }
    let mut urls = Vec::new();
    for _ in 0..gateways {
        urls.push(c.add_gateway().await);
    }
    let ws = tenant(&urls[0], &mock.url).await;
    (mock, c, urls, ws)
}

/// Totals in ClickHouse equal the provider's billed usage exactly; rollups equal raw events;
/// analytics answer from ClickHouse; an admin change on one gateway reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_aggregators_meter_exactly() {
    let (_mock, c, urls, ws) = shared_cluster(2, 2).await;
    let (a, b) = (urls[0].clone(), urls[1].clone());
    let mut keys = Vec::new();
    for i in 0..4 {
        let key = new_key(&a, &ws, &format!("k{i}"), json!({})).await;
        known_on(&b, &key).await;
        keys.push(key);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(vec![a.clone(), b.clone()], keys.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, billed, failed) = loader.await.unwrap();
    assert!(
        acked > 50,
        "load ran: {acked} acknowledged, {failed} failed"
    );
    assert_eq!(failed, 0);
    assert_eq!(c.wait_for_events(acked, 60).await, acked);
    c.assert_each_event_once(acked, billed).await;
    // Rollups equal the raw events, per dimension, exactly (cost included).
    for dim in ["api_key", "workspace", "department", "model"] {
        let raw = c
            .sql("SELECT toUInt64(count()), toUInt64(sum(prompt_tokens + completion_tokens)), toString(sum(cost_usd)) FROM usage_events")
            .await;
        let rolled = c
            .sql(&format!("SELECT sum(requests), sum(prompt_tokens + completion_tokens), toString(sum(cost_usd)) FROM usage_rollup WHERE grain = 'day' AND dimension = '{dim}'"))
            .await;
        assert_eq!(raw, rolled, "dimension {dim}");
    }
    // Analytics read ClickHouse on either gateway.
    for url in [&a, &b] {
        let (s, _, v) = crate::harness::admin_get(&format!("{url}/v1/analytics/groups/workspaces?time_of_generation_min=2020-01-01T00:00:00Z&time_of_generation_max=2100-01-01T00:00:00Z"))
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"][0]["requests"], acked.to_string(), "{v}");
    }
    // The web console on either gateway signs in and shows the same totals, from ClickHouse.
    for url in [&a, &b] {
        let mut console = crate::security::console::Browser::at(url);
        let signed = console.sign_in(crate::harness::ADMIN_KEY).await;
        assert!(
            crate::security::console::signed_in(&signed),
            "{}",
            signed.body
        );
        let csv = console
            .get("/console/analytics.csv?table=groups&by=workspace&from=2020-01-01&to=2100-01-01")
            .await;
        assert_eq!(csv.status, 200, "{}", csv.body);
        let row = csv.body.lines().nth(1).unwrap_or_default().to_owned();
        assert!(row.starts_with(&format!("{ws},")), "{}", csv.body);
        assert_eq!(
            row.split(',').nth(2),
            Some(acked.to_string().as_str()),
            "{row}"
        );
    }
    // Each key's current_usage on either gateway is global (read from ClickHouse).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listed = admin(&b, "GET", &format!("/api-keys?workspace_id={ws}"), None).await;
        let (requests, tokens) =
            listed["data"]
                .as_array()
                .unwrap()
                .iter()
                .fold((0, 0), |(r, t), k| {
                    (
                        r + k["current_usage"]["requests"].as_u64().unwrap_or(0),
                        t + k["current_usage"]["tokens"].as_u64().unwrap_or(0),
                    )
                });
        if (requests, tokens) == (acked as u64, billed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "current_usage on gateway b: {requests} requests, {tokens} tokens; billed {acked}, {billed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The provider key reaches no ClickHouse table (every row of every table, as text).
    for table in [
        "usage_events",
        "usage_rollup",
        "budget_usage",
        "limit_events",
        "notifications",
    ] {
        let rows = c.sql(&format!("SELECT * FROM {table}")).await;
        assert!(!rows.starts_with("error"), "{table}: {rows}");
        assert!(
            !rows.contains("sk-distributed"),
            "{table} holds the provider key"
        );
    }
}

/// A budget exhausted through one gateway is enforced by the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhausted_on_one_gateway_is_enforced_by_the_other() {
    let (_mock, mut c, urls, ws) = shared_cluster(2, 2).await;
    let (a, b) = (urls[0].clone(), urls[1].clone());
    let client = reqwest::Client::new();
    let mut lags = Vec::new();
    for i in 0..12 {
        // 100 tokens; each request bills 19: the 6th exhausts it.
        let key = new_key(
            &a,
            &ws,
            &format!("capped{i}"),
            json!({"usage_limits": {"type": "tokens", "credit_limit": 100}}),
        )
        .await;
        known_on(&b, &key).await;
        let mut statuses = Vec::new();
        loop {
            let (s, _) = chat(&client, &a, &key).await;
            statuses.push(s);
            if s != 200 {
                break;
            }
        }
        assert_eq!(statuses.len(), 7, "{statuses:?}");
        assert_eq!(statuses[6], 412);
        let exhausted_at = Instant::now();
        loop {
            let (s, _) = chat(&client, &b, &key).await;
            if s == 412 {
                break;
            }
            assert_eq!(s, 200);
            assert!(
                exhausted_at.elapsed() < PATIENCE,
                "gateway b never enforced the budget"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(exhausted_at.elapsed());
    }
    lags.sort();
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    eprintln!(
        "enforcement lag across gateways: p50 {p50:?} p99 {p99:?} over {} budgets",
        lags.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    // A gateway that starts now catches up from the limit topic before serving: it refuses at once.
    let late = c.add_gateway().await;
    let capped = new_key(
        &a,
        &ws,
        "capped-late",
        json!({"usage_limits": {"type": "tokens", "credit_limit": 100}}),
    )
    .await;
    known_on(&late, &capped).await;
    while chat(&client, &a, &capped).await.0 == 200 {}
    let deadline = Instant::now() + PATIENCE;
    while chat(&client, &late, &capped).await.0 == 200 {
        assert!(
            Instant::now() < deadline,
            "the running late gateway enforces"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The exhaustion is published: the aggregator records it for dashboards once it has
    // published it to the limit topic, which a gateway reads to its end before serving. (`late`
    // may have enforced from the usage totals before the event was out.)
    let published = crate::harness::eventually(Duration::from_millis(25), || async {
        let sql = "SELECT uniqExact(budget) FROM limit_events WHERE kind = 'exhausted'";
        c.sql(sql).await.trim() == "13"
    })
    .await;
    assert!(
        published,
        "the aggregator published the capped key's exhaustion"
    );
    let later = c.add_gateway().await;
    assert_eq!(
        chat(&client, &later, &capped).await.0,
        412,
        "a gateway started after the exhaustion enforces it from its first request"
    );
    // The exhaustions were published once each (deterministic ids) and recorded for dashboards.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.sql("SELECT uniqExact(budget), uniqExact(event_id) FROM limit_events WHERE kind = 'exhausted'")
            .await,
        "13\t13"
    );
    dashboards_run(&c).await;
}

/// Every panel of the shipped Grafana dashboards runs on ClickHouse (the plugin's macros expanded
/// as it expands them), and the panels this traffic feeds have rows.
async fn dashboards_run(c: &Cluster) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (from, to) = (now - 3600, now + 3600);
    let fed = [
        "Cost (USD) by workspace",
        "Tokens by API key",
        "Requests per minute",
        "Latency percentiles (ms)",
        "Budget utilisation (current windows)",
        "Budget breaches (threshold crossed, exhausted)",
    ];
    let mut ran = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            for target in panel["targets"].as_array().unwrap() {
                let sql = expand_grafana_macros(target["rawSql"].as_str().unwrap(), from, to, 60);
                let out = c.sql(&sql).await;
                assert!(!out.starts_with("error"), "panel {title}: {out}\n{sql}");
                if fed.contains(&title) {
                    assert!(!out.is_empty(), "panel {title} has no rows");
                }
                ran += 1;
            }
        }
    }
    assert!(ran >= 18, "{ran} panels ran");
}

/// The grafana-clickhouse-datasource macros the dashboards use, expanded as the plugin does.
fn expand_grafana_macros(sql: &str, from: u64, to: u64, interval_s: u64) -> String {
    let mut out = sql
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("$__interval_s", &interval_s.to_string());
    while let Some(at) = out.find("$__timeFilter(") {
        let rest = &out[at + "$__timeFilter(".len()..];
        let end = rest.find(')').unwrap();
        let col = rest[..end].to_owned();
        out = format!(
            "{}{col} >= toDateTime({from}) AND {col} <= toDateTime({to}){}",
            &out[..at],
            &rest[end + 1..]
        );
    }
    assert!(!out.contains("$__"), "an unexpanded macro: {out}");
    out
}

/// kill -9 an aggregator repeatedly mid-stream: nothing lost, nothing counted twice. Usage is
/// keyed by API key, so several keys spread it over the topic's partitions: a partition that the
/// group leaves to nobody after the kills (tansu 0.6 can, see `roles::aggregator::group`) holds
/// some of it and shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_repeatedly_loses_and_doubles_nothing() {
    let (_mock, mut c, urls, ws) = shared_cluster(2, 1).await;
    let a = urls[0].clone();
    let mut keys = Vec::new();
    for i in 0..8 {
        keys.push(new_key(&a, &ws, &format!("k{i}"), json!({})).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(vec![a.clone()], keys, stop.clone());
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.kill_aggregator(round % 2);
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, billed, failed) = loader.await.unwrap();
    assert_eq!(failed, 0);
    assert_eq!(c.wait_for_events(acked, 60).await, acked);
    tokio::time::sleep(Duration::from_secs(2)).await; // anything late would show as extra
    c.assert_each_event_once(acked, billed).await;
    assert_eq!(
        c.sql("SELECT sum(requests) FROM usage_rollup WHERE grain = 'minute' AND dimension = 'api_key'").await,
        acked.to_string()
    );
}

/// The broker restarts mid-load: gateways spool, then drain; no acknowledged event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_load_loses_no_acknowledged_event() {
    let mock = mock::start().await;
    let private = Private::start();
    let mut c = Cluster::with_restartable_broker(&private).await;
    c.add_aggregator();
    let a = c.add_gateway().await;
    let ws = tenant(&a, &mock.url).await;
    let key = new_key(&a, &ws, "k", json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(vec![a.clone()], vec![key], stop.clone());
    let spool_peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (url, peak, stop) = (a.clone(), spool_peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(spooled(&url).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Down for longer than a produce may wait (5 s): usage goes to the spool meanwhile.
    private.outage("tansu", Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let (acked, billed, failed) = loader.await.unwrap();
    assert_eq!(
        failed, 0,
        "the gateway kept serving while the broker was down"
    );
    assert!(spool_peak.load(Ordering::Relaxed) > 0, "usage was spooled");
    assert_eq!(c.wait_for_events(acked, 90).await, acked);
    assert_eq!(spooled(&a).await, 0, "the spool drained");
    c.assert_each_event_once(acked, billed).await;
}

/// ClickHouse stops for 30 s: aggregation resumes afterwards and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_of_30s_loses_nothing() {
    let mock = mock::start().await;
    let private = Private::start();
    let mut c = Cluster::new(&private.brokers(), &private.clickhouse_url()).await;
    c.add_aggregator();
    let a = c.add_gateway().await;
    let ws = tenant(&a, &mock.url).await;
    let key = new_key(&a, &ws, "k", json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(vec![a.clone()], vec![key], stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    private.outage("clickhouse", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, billed, failed) = loader.await.unwrap();
    assert_eq!(failed, 0, "gateways keep serving while ClickHouse is down");
    assert_eq!(c.wait_for_events(acked, 90).await, acked);
    c.assert_each_event_once(acked, billed).await;
}

/// Crossing a threshold and exhausting a budget each mail once through the distributed notifier,
/// although two aggregators watch the budget; deliveries are listed from ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_mails_each_crossing_once() {
    let mock = mock::start().await;
    let smtp = crate::alerts::smtp_sink().await;
    let mut c = Cluster::new(&need("TG_KAFKA_BROKERS"), &need("TG_CLICKHOUSE_URL")).await;
    c.env.push(("TOLLGATE_SMTP_URL".into(), smtp.url.clone()));
    c.env
        .push(("TOLLGATE_ALERT_EMAILS".into(), "finops@example.com".into()));
    c.add_aggregator();
    c.add_aggregator();
    c.add_notifier();
    let a = c.add_gateway().await;
    let ws = tenant(&a, &mock.url).await;
    let key = new_key(
        &a,
        &ws,
        "alerted",
        json!({"usage_limits": {"type": "tokens", "credit_limit": 100, "alert_threshold": 50}}),
    )
    .await;
    let client = reqwest::Client::new();
    while chat(&client, &a, &key).await.0 == 200 {}
    let deadline = Instant::now() + PATIENCE;
    while crate::alerts::mails(smtp.maildir.path()).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // a duplicate would arrive meanwhile
    let mails = crate::alerts::mails(smtp.maildir.path());
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails
        .iter()
        .any(|m| m.contains("crossed its alert threshold")));
    assert!(mails.iter().any(|m| m.contains("is exhausted")));
    assert!(mails.iter().all(|m| m.contains("finops@example.com")));
    let listed = admin(&a, "GET", "/admin/notifications", None).await;
    let kinds: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{listed}");
}

/// While the broker is down, a `fail_closed` gateway and a gateway whose spool is full answer 503
/// before calling the provider (nothing is served unmetered); both serve again once the broker is
/// back, and every acknowledged request is in ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_and_full_spool_refuse_before_the_provider() {
    let mock = mock::start().await;
    let private = Private::start();
    let mut c = Cluster::with_restartable_broker(&private).await;
    c.add_aggregator();
    c.env
        .push(("TOLLGATE_WHEN_KAFKA_DOWN".into(), "fail_closed".into()));
    let closed = c.add_gateway().await;
    c.env.pop();
    c.env
        .push(("TOLLGATE_SPOOL_MAX_BYTES".into(), "1000".into()));
    let spooling = c.add_gateway().await;
    let ws = tenant(&closed, &mock.url).await;
    let key = new_key(&closed, &ws, "k", json!({})).await;
    known_on(&spooling, &key).await;
    let client = reqwest::Client::new();
    let mut acked = 0;
    for url in [&closed, &spooling] {
        assert_eq!(chat(&client, url, &key).await.0, 200);
        acked += 1;
    }
    private.run(&["stop", "tansu"], true);
    for (url, name) in [(&closed, "fail_closed"), (&spooling, "full spool")] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, _) = chat(&client, url, &key).await;
            match status {
                200 => acked += 1,
                503 => break,
                _ => {} // the first request may fail after its produce times out (500)
            }
            assert!(Instant::now() < deadline, "{name}: no 503");
        }
        let before = mock.seen.requests.load(Ordering::SeqCst);
        let (s, _, body) = call(
            "POST",
            &format!("{url}/v1/chat/completions"),
            Some(&key),
            Some(json!({"model": "@up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
        assert_eq!(s, 503, "{name}: {body}");
        assert_eq!(body["error"]["code"], "metering_unavailable", "{body}");
        assert_eq!(
            mock.seen.requests.load(Ordering::SeqCst),
            before,
            "{name}: refused before the provider"
        );
    }
    private.run(&["start"], true);
    for url in [&closed, &spooling] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if chat(&client, url, &key).await.0 == 200 {
                acked += 1;
                break;
            }
            assert!(Instant::now() < deadline, "{url} never served again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(c.wait_for_events(acked, 90).await, acked);
    assert_eq!(
        c.sql("SELECT count(), uniqExact(event_id) FROM usage_events")
            .await,
        format!("{acked}\t{acked}")
    );
}

/// The audit trail in distributed mode lives in ClickHouse (the aggregators consume the config
/// topic into `audit_log`), so an entity created, changed on another gateway and deleted keeps
/// its whole history after the compacted topic has only its deletion to say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_of_a_deleted_entity_is_served_from_clickhouse() {
    let (_mock, c, urls, ws) = shared_cluster(1, 2).await;
    let (a, b) = (urls[0].clone(), urls[1].clone());
    let cfg = admin(
        &a,
        "POST",
        "/configs",
        Some(json!({"name": "short lived", "workspace_id": ws,
        "config": {"provider": "@up"}})),
    )
    .await;
    let cfg = cfg["id"].as_str().unwrap().to_owned();
    // The change is made on the other gateway once it has the config.
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::harness::admin_get(&format!("{b}/v1/configs/{cfg}"))
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "gateway b never saw the config");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin(
        &b,
        "PUT",
        &format!("/configs/{cfg}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    // A command reads the state of the gateway it runs on: wait until a has the rename.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&a, "GET", &format!("/configs/{cfg}"), None).await["name"] != "renamed" {
        assert!(Instant::now() < deadline, "gateway a never saw the rename");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin(&a, "DELETE", &format!("/configs/{cfg}"), None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let history = loop {
        let (s, _, v) =
            crate::harness::admin_get(&format!("{b}/v1/audit-logs?resource_id={cfg}")).await;
        assert_eq!(s, 200, "{v}");
        if v["total"] == 3 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the audit trail never reached ClickHouse: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let data = history["data"].as_array().unwrap();
    let actions: Vec<&str> = data.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["deleted", "updated", "created"], "{history}");
    for r in data {
        assert_eq!(r["actor"]["key_id"], "admin-bootstrap", "{r}");
        assert_eq!(r["workspace_id"], json!(ws), "{r}");
        assert_eq!(r["resource_type"], "config");
    }
    assert_eq!(data[0]["resource_name"], "renamed");
    // The rows are ClickHouse's, once each, whatever the topic keeps.
    assert_eq!(
        c.sql(&format!(
            "SELECT count(), uniqExact(event_id) FROM audit_log WHERE resource_id = '{cfg}'"
        ))
        .await,
        "3\t3"
    );
    assert!(!c
        .sql("SELECT * FROM audit_log")
        .await
        .contains("sk-distributed-secret-0042"));
}

/// Issue 10 item 14 on Kafka: a command's changes commit together. A force-delete of a workspace
/// with 30 keys on one gateway is one record on the config topic (a batch), which every reader
/// unpacks: the other gateway goes from all 30 keys to none, and the aggregator writes an audit
/// row for every deletion. (That a failed batch leaves nothing is `logs::a_batch_with_one_record_
/// too_large_makes_none_of_them_visible`, run against Kafka too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_delete_reaches_the_other_gateway_whole() {
    let (_mock, c, urls, _) = shared_cluster(1, 2).await;
    let (a, b) = (urls[0].clone(), urls[1].clone());
    let ws = create_workspace(&a, "doomed").await;
    let mut keys = Vec::new();
    for i in 0..30 {
        keys.push(new_key(&a, &ws, &format!("k{i}"), json!({})).await);
    }
    for key in &keys {
        known_on(&b, key).await;
    }
    let (s, _, body) = call(
        "DELETE",
        &format!("{a}/v1/admin/workspaces/{ws}"),
        Some(ADMIN_KEY),
        Some(json!({"force_delete": true})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let client = reqwest::Client::new();
    let status = |key: String| {
        let (client, b) = (client.clone(), b.clone());
        async move {
            client
                .get(format!("{b}/v1/models"))
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Watch gateway b from the moment any key is refused: all of them are, at once.
    let refused = crate::harness::eventually(Duration::from_millis(2), || async {
        status(keys[keys.len() / 2].clone()).await == 401
    })
    .await;
    assert!(refused, "gateway b never saw the deletion");
    for key in &keys {
        assert_eq!(
            status(key.clone()).await,
            401,
            "a key outlived its deleted workspace"
        );
    }
    let (s, _, _) = crate::harness::admin_get(&format!("{b}/v1/admin/workspaces/{ws}")).await;
    assert_eq!(s, 404);
    // The aggregator unpacks the batch into one audit row per deletion.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = c
            .sql(&format!(
                "SELECT count() FROM audit_log WHERE action = 'deleted' AND workspace_id = '{ws}'"
            ))
            .await;
        if rows.trim() == "31" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit rows for the force-delete: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
