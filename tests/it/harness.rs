//! Starting the real server: in-process on `127.0.0.1:0`, or as the `tollgate` binary; plus
//! helpers for the admin API and for running the Python scripts in `tests/sdk/` and
//! `tests/console/`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use tollgate::domain::{Actor, Change, State};
use tollgate::ledger::LedgerError;
use tollgate::roles::Node;
use tollgate::settings::Settings;

pub struct Server {
    pub url: String,
    pub admin_key: String,
    node: Arc<Node>,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

pub const ADMIN_KEY: &str = "tg_test_admin_key_for_integration_tests";

/// Settings for a test server in `dir`.
pub fn settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.set("listen", "127.0.0.1:0").unwrap();
    s.set("data_dir", dir.to_str().unwrap()).unwrap();
    s.set("admin_key", ADMIN_KEY).unwrap();
    s.set("upstream_timeout_ms", "5000").unwrap();
    s.set("stream_drain_timeout_ms", "5000").unwrap();
    // More than one serving thread, whatever the machine, so every in-process test also covers
    // requests, pooled upstream connections and shutdown shared between them.
    s.set("serve_threads", "2").unwrap();
    s
}

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    tweak(&mut s);
    // The binary's own wiring and shutdown order (`tollgate serve`).
    let node = Arc::new(tollgate::roles::serve::open(s).await.unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(node.clone().serve(listener, stopped));
    Server {
        url,
        admin_key: ADMIN_KEY.into(),
        node,
        dir,
        stop,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An HTTP call with an optional Tollgate key; returns status, headers and JSON (or `Value::Null`).
pub async fn call(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(k) = key {
        req = req.header("x-portkey-api-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bound on waiting for a condition in these tests. It only turns a broken server into a
/// failure instead of a hang: a condition that holds ends the wait at once, so the bound costs
/// nothing when things are fast, and it is far above what anything takes with both cores busy.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `cond` every `every` until it holds (true), or until [`PATIENCE`] has passed (false).
pub async fn eventually<F: Future<Output = bool>>(
    every: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    eventually_some(every, || {
        let f = cond();
        async { f.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Polls `probe` every `every` until it finds something, or until [`PATIENCE`] has passed (None).
pub async fn eventually_some<T, F: Future<Output = Option<T>>>(
    every: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits (up to [`PATIENCE`]) until the process `child` answers `/readyz` at `url` with 200;
/// otherwise kills it and fails the test, naming `what`.
pub async fn await_ready(child: &mut std::process::Child, url: &str, what: &str) {
    let ready = eventually(Duration::from_millis(25), || async {
        reqwest::get(format!("{url}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    if ready {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not become ready");
}

/// An admin call with the bootstrap admin key to the server at `url`, which must succeed.
/// Starts a streamed chat for `model` (`@provider/slow-stream`: about a second at the mock) and
/// goes away after the first chunk, as a client that leaves mid-stream.
pub async fn leave_stream_after_first_chunk(url: &str, key: &str, model: &str, trace: &str) {
    use futures_util::StreamExt;
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-portkey-api-key", key)
        .header("x-portkey-trace-id", trace)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
}

pub async fn admin_call(url: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (s, _, v) = call(method, &format!("{url}/v1{path}"), Some(ADMIN_KEY), body).await;
    assert!(s < 300, "{method} {path}: {s} {v}");
    v
}

/// A workspace named `name` with an integration `@up` (provider key `secret`) pointing at
/// `upstream` provisioned to it, through the admin API at `url`; returns the workspace id.
pub async fn provision_up(url: &str, upstream: &str, name: &str, secret: &str) -> String {
    let ws_id = create_workspace(url, name).await;
    admin_call(url, "POST", "/integrations", Some(json!({"name": "up", "slug": "up", "ai_provider_id": "openai", "key": secret, "configurations": {"custom_host": upstream}}))).await;
    admin_call(
        url,
        "PUT",
        "/integrations/up/workspaces",
        Some(json!({"workspaces": [{"id": ws_id, "enabled": true}]})),
    )
    .await;
    ws_id
}

impl Server {
    /// An admin call that must succeed.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, _, v) = call(
            method,
            &format!("{}/v1{path}", self.url),
            Some(&self.admin_key),
            body,
        )
        .await;
        assert!(status < 300, "{method} {path}: {status} {v}");
        v
    }

    /// A workspace, an integration pointing at `upstream` provisioned to it (provider `@<slug>`),
    /// and a workspace service key with `completions.write`. Returns (workspace id, key).
    pub async fn tenant(&self, upstream: &str, slug: &str) -> (String, String) {
        let ws = self
            .admin(
                "POST",
                "/admin/workspaces",
                Some(json!({"name": format!("team {slug}")})),
            )
            .await;
        let ws_id = ws["id"].as_str().unwrap().to_owned();
        self.admin(
            "POST",
            "/integrations",
            Some(
                json!({"name": slug, "slug": slug, "ai_provider_id": "openai",
            "key": "sk-upstream-secret-1234567890", "configurations": {"custom_host": upstream}}),
            ),
        )
        .await;
        self.admin(
            "PUT",
            &format!("/integrations/{slug}/workspaces"),
            Some(json!({"workspaces": [{"id": ws_id, "enabled": true}]})),
        )
        .await;
        let key = self.admin("POST", "/api-keys/workspace/service", Some(json!({"name": "svc", "workspace_id": ws_id,
            "scopes": ["completions.write"], "defaults": {"metadata": {"department": "engineering"}}}))).await;
        (ws_id, key["key"].as_str().unwrap().to_owned())
    }

    /// The server's state, read-locked (briefly: never across an await).
    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.node.ledger().state()
    }

    /// Commits config changes as an admin command would (`actor` None: the system).
    pub async fn commit(
        &self,
        actor: Option<Actor>,
        changes: Vec<Change>,
    ) -> Result<(), LedgerError> {
        let command = self.node.ledger().command().await;
        command.commit(actor, changes).await
    }

    pub fn store(&self) -> &Arc<dyn tollgate::store::UsageStore> {
        self.node.store()
    }

    pub fn log(&self) -> &Arc<dyn tollgate::log::EventLog> {
        self.node.log()
    }

    pub fn metrics(&self) -> &tollgate::telemetry::Metrics {
        self.node.metrics()
    }

    /// How many bytes of the usage log the store has not ingested yet.
    pub async fn store_lag(&self) -> u64 {
        self.node.ledger().store_lag().await
    }

    /// The API key record named `name`.
    pub fn key_named(&self, name: &str) -> std::sync::Arc<tollgate::domain::ApiKey> {
        let state = self.state();
        state
            .api_keys
            .values()
            .find(|k| k.name == name)
            .cloned()
            .expect("a key with that name")
    }

    /// Waits (up to [`PATIENCE`]) until the usage store has every event of the log.
    pub async fn store_caught_up(&self) {
        let caught_up = eventually(Duration::from_millis(25), || async {
            self.store_lag().await == 0
        })
        .await;
        assert!(caught_up, "the usage store did not catch up");
    }
}

/// The Python with the SDKs installed (`TG_PYTHON`, set up by scripts/test.sh).
pub fn python() -> PathBuf {
    std::env::var_os("TG_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Runs `tests/sdk/<script>` with the given environment and asserts it succeeded.
pub async fn run_sdk(script: &str, env: &[(&str, &str)]) -> String {
    run_python("tests/sdk", script, env).await
}

/// Runs `<dir>/<script>` (`dir` relative to the crate root, e.g. `tests/console`) with the SDKs'
/// Python and the given environment, and asserts it succeeded; returns its standard output.
/// The caller's own provider keys are removed from the environment, so no script can reach a
/// real provider by accident.
pub async fn run_python(dir: &str, script: &str, env: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(script);
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(&path)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.env_remove("PORTKEY_API_KEY")
        .env_remove("OPENAI_API_KEY");
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{dir}/{script} timed out"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// The JSON a script printed on its `RESULT {json}` line.
pub fn script_result(stdout: &str) -> Value {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .expect("the script printed its result")
}

/// A mock provider, a server, and on it the tenant `slug` of [`Server::tenant`] pointing at the
/// mock; returns (mock, server, workspace id, key).
pub async fn with_tenant(slug: &str) -> (crate::mock::Mock, Server, String, String) {
    let mock = crate::mock::start().await;
    let server = start().await;
    let (ws, key) = server.tenant(&mock.url, slug).await;
    (mock, server, ws, key)
}

/// A workspace named `name` created through the admin API at `url`; returns its id.
pub async fn create_workspace(url: &str, name: &str) -> String {
    let ws = admin_call(
        url,
        "POST",
        "/admin/workspaces",
        Some(json!({"name": name})),
    )
    .await;
    ws["id"].as_str().unwrap().to_owned()
}

/// A workspace service key `name` in `ws` with `completions.write` only, made through the admin
/// API at `url`; returns its record (`id`, `key`, …).
pub async fn completions_key(url: &str, ws: &str, name: &str) -> Value {
    admin_call(
        url,
        "POST",
        "/api-keys/workspace/service",
        Some(json!({"name": name, "workspace_id": ws, "scopes": ["completions.write"]})),
    )
    .await
}

/// `POST /v1/chat/completions` with `key`, `body` and the extra `headers`; returns status, headers
/// and JSON (or `Value::Null`).
pub async fn post_chat(
    server: &Server,
    key: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("x-portkey-api-key", key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.json().await.unwrap_or(Value::Null))
}

impl Server {
    /// Resets, as the admin, the usage counted against the object at `path` (`PUT {path}` with
    /// `reset_usage`).
    pub async fn reset_usage(&self, path: &str) {
        self.admin("PUT", path, Some(json!({"reset_usage": true})))
            .await;
    }
}

/// `GET url` (a whole URL) with the bootstrap admin key, whatever it answers: status, headers and
/// JSON (or `Value::Null`).
pub async fn admin_get(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    call("GET", url, Some(ADMIN_KEY), None).await
}
