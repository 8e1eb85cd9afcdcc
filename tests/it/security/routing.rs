//! See [`super`]: the routing area of the security suite. A stored credential goes only to the
//! host its integration names, whatever the request carries (item 1); a config costs memory in
//! proportion to its size, within documented bounds (item 16); an upstream answer of any size is
//! bounded and still metered (item 19). From the security review: prices are bounded (review
//! item 1), a `custom_host` is only scheme, host, port and path, and private hosts can be denied
//! (review item 3), and output fields are bounded before anything is reserved (review item 4).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::binary;
use crate::harness::{self, call, Server};
use crate::mock;

/// The stored credential of `Server::tenant`'s integration.
const SECRET: &str = "sk-upstream-secret-1234567890";

/// One request a capture server received.
#[derive(Clone, Debug)]
struct Captured {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// An upstream that records every request: the integration's real host, or the host an attacker
/// would like the credential sent to. It answers a chat completion (500 for a model containing
/// `fail-500`), or redirects every request to `redirect_to`.
struct Capture {
    /// `http://127.0.0.1:<port>`.
    url: String,
    seen: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    async fn start(redirect_to: Option<String>) -> Capture {
        let seen: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let redirect_to = redirect_to.clone();
            async move {
                let model = serde_json::from_slice::<Value>(&body).unwrap_or_default()["model"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                log.lock().push(Captured { uri, headers, body });
                answer(redirect_to, &model)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Capture { url, seen }
    }

    fn seen(&self) -> Vec<Captured> {
        self.seen.lock().clone()
    }

    /// Asserts this host received nothing at all, so no credential either.
    fn assert_untouched(&self, what: &str) {
        let seen = self.seen();
        assert!(seen.is_empty(), "{what}: the capture server got {seen:?}");
    }
}

fn answer(redirect_to: Option<String>, model: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(to) = redirect_to {
        let location = [("location", format!("{to}/v1/chat/completions"))];
        return (axum::http::StatusCode::TEMPORARY_REDIRECT, location).into_response();
    }
    if model.contains("fail-500") {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    axum::Json(json!({"id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))
    .into_response()
}

/// A chat request with extra headers; returns status and JSON body.
async fn chat(server: &Server, key: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let (status, _, v) = harness::post_chat(server, key, headers, &body).await;
    (status, v)
}

/// A `gpt-4o-mini` chat with the inline config `config` (`x-portkey-config`).
async fn config_chat(server: &Server, key: &str, config: &str) -> (u16, Value) {
    chat(
        server,
        key,
        &[("x-portkey-config", config)],
        hello("gpt-4o-mini"),
    )
    .await
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn message(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap_or("")
}

/// A server with a tenant whose integration `@team` (organisation-wide, provisioned to the
/// workspace) points at a capture server; plus a second capture server, the attacker's.
async fn setup() -> (Server, Capture, Capture, String, String) {
    let legit = Capture::start(None).await;
    let evil = Capture::start(None).await;
    let server = harness::start().await;
    let (ws, key) = server.tenant(&format!("{}/v1", legit.url), "team").await;
    (server, legit, evil, ws, key)
}

/// Item 1, the main test: a key with only `completions.write` names its own provider (or virtual
/// key) in an inline config with a `custom_host` of its choosing, on the target, on a fallback's
/// second target, or inherited from a parent node. Before: the gateway sent the integration's
/// decrypted key there. Now: a 400 that says why, and nothing reaches either host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_custom_host_never_receives_a_stored_credential() {
    let (server, legit, evil, ws, key) = setup().await;
    let evil_host = format!("{}/v1", evil.url);
    // A workspace credential too: a virtual key (its own workspace-scoped integration).
    let vk = server
        .admin(
            "POST",
            "/virtual-keys",
            Some(
                json!({"name": "wsvk", "provider": "openai", "key": "sk-workspace-secret-0000",
                "workspace_id": ws, "custom_host": format!("{}/v1", legit.url)}),
            ),
        )
        .await;
    let vk = vk["slug"].as_str().unwrap();
    let configs = [
        json!({"provider": "@team", "custom_host": evil_host}),
        json!({"virtual_key": "team", "custom_host": evil_host}),
        json!({"virtual_key": vk, "custom_host": evil_host}),
        json!({"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "@team", "override_params": {"model": "fail-500"}},
            {"provider": "@team", "custom_host": evil_host}]}),
        json!({"strategy": {"mode": "single"}, "custom_host": evil_host,
            "targets": [{"provider": "@team"}]}),
    ];
    for config in &configs {
        let text = config.to_string();
        let (s, b) = config_chat(&server, &key, &text).await;
        assert_eq!(s, 400, "{config}: {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
        assert!(message(&b).contains("custom_host"), "{b}");
        assert!(message(&b).contains("stored credential"), "{b}");
    }
    evil.assert_untouched("a request-chosen custom_host");
    legit.assert_untouched("a refused config");
    // The same routes without a custom_host go to the integration's host, with its key.
    let (s, b) = config_chat(&server, &key, r#"{"provider":"@team"}"#).await;
    assert_eq!(s, 200, "{b}");
    let seen = legit.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {SECRET}"));
}

/// Item 1 at save time and for a key's default config. Before: POST/PUT /configs accepted a
/// `custom_host` next to a stored credential, and requests through it (a key's default config
/// included) sent the credential there. Now: the save is a 400, and a config saved by an older
/// version (put straight into the log here) is refused at request time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_and_default_configs_refuse_custom_host_on_stored_credentials() {
    let (server, _legit, evil, ws, _) = setup().await;
    let evil_host = format!("{}/v1", evil.url);
    let configs = format!("{}/v1/configs", server.url);
    let admin = Some(server.admin_key.as_str());
    let bad = json!({"strategy": {"mode": "fallback"}, "custom_host": evil_host,
        "targets": [{"virtual_key": "team"}]});
    for config in [bad.clone(), Value::String(bad.to_string())] {
        let body = json!({"name": "evil", "workspace_id": ws, "config": config});
        let (s, _, b) = call("POST", &configs, admin, Some(body)).await;
        assert_eq!(s, 400, "{b}");
        assert!(message(&b).contains("custom_host"), "{b}");
    }
    let ok = server
        .admin(
            "POST",
            "/configs",
            Some(json!({"name": "ok", "workspace_id": ws, "config": {"provider": "@team"}})),
        )
        .await;
    let slug = ok["slug"].as_str().unwrap();
    let (s, _, b) = call(
        "PUT",
        &format!("{configs}/{slug}"),
        admin,
        Some(json!({"config": bad})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let kept = server.admin("GET", &format!("/configs/{slug}"), None).await;
    assert_eq!(kept["config"], json!({"provider": "@team"}), "{kept}");

    let old = tollgate::domain::RouteConfig {
        id: "cfg-legacy".into(),
        slug: "pc-legacy".into(),
        name: "legacy".into(),
        workspace_id: ws.clone(),
        config: json!({"provider": "@team", "custom_host": evil_host}),
        is_default: false,
        status: "active".into(),
        version_id: "v1".into(),
        owner_id: None,
        created_at: tollgate::domain::Millis(0),
        updated_at: tollgate::domain::Millis(0),
    };
    {
        let change = tollgate::domain::Change::Upsert(tollgate::domain::Entity::Config(old));
        server.commit(None, vec![change]).await.unwrap();
    }
    let key = server
        .admin(
            "POST",
            "/api-keys/workspace/service",
            Some(json!({"name": "dflt", "workspace_id": ws,
        "scopes": ["completions.write"], "defaults": {"config_id": "pc-legacy"}})),
        )
        .await;
    let key = key["key"].as_str().unwrap();
    for headers in [&[][..], &[("x-portkey-config", "pc-legacy")][..]] {
        let (s, b) = chat(&server, key, headers, hello("gpt-4o-mini")).await;
        assert_eq!(s, 400, "{headers:?}: {b}");
        assert!(
            message(&b).contains("config pc-legacy") && message(&b).contains("custom_host"),
            "{b}"
        );
    }
    evil.assert_untouched("a saved or default config's custom_host");
}

/// Item 1, the SDK's `custom_host` argument (sent as `x-portkey-custom-host`). Before: ignored
/// silently (the request was served elsewhere than the caller asked). Now: a clear 400 on every
/// route, since every route here uses a stored credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_host_header_is_refused() {
    let (server, legit, evil, _, key) = setup().await;
    let evil_host = format!("{}/v1", evil.url);
    for (headers, model) in [
        (vec![("x-portkey-provider", "@team")], "gpt-4o-mini"),
        (vec![("x-portkey-virtual-key", "team")], "gpt-4o-mini"),
        (
            vec![("x-portkey-config", r#"{"provider":"@team"}"#)],
            "gpt-4o-mini",
        ),
        (vec![], "@team/gpt-4o-mini"),
    ] {
        let mut headers = headers;
        headers.push(("x-portkey-custom-host", &evil_host));
        let (s, b) = chat(&server, &key, &headers, hello(model)).await;
        assert_eq!(s, 400, "{headers:?}: {b}");
        assert!(message(&b).contains("x-portkey-custom-host"), "{b}");
    }
    evil.assert_untouched("x-portkey-custom-host");
    legit.assert_untouched("x-portkey-custom-host");
}

/// Item 1, every other request input that could steer or add to the upstream call. Config fields
/// naming an endpoint or headers (`custom_headers`, Azure's `resource_name` / `deployment_id`,
/// `openai_project`) on a stored-credential target: before, silently accepted; now a 400. Headers
/// (`x-portkey-forward-headers` with the headers it names, `x-portkey-azure-*`, `x-portkey-base-url`,
/// `x-portkey-openai-project`, a client `Authorization`) and a config's `forward_headers`: the call
/// still goes to the integration's host and path, with its credential and nothing of the client's
/// (this part passed before too: it pins the wall).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_else_in_a_request_steers_or_adds_to_the_upstream_call() {
    let (server, legit, evil, _, key) = setup().await;
    let evil_host = format!("{}/v1", evil.url);
    for config in [
        json!({"provider": "@team", "custom_headers": {"x-evil": "1"}}),
        json!({"virtual_key": "team", "resource_name": "evil", "deployment_id": "../x"}),
        json!({"provider": "@team", "openai_project": "proj_evil"}),
        json!({"strategy": {"mode": "single"}, "base_url": evil_host, "targets": [{"provider": "@team"}]}),
    ] {
        let (s, b) = config_chat(&server, &key, &config.to_string()).await;
        assert_eq!(s, 400, "{config}: {b}");
        assert!(
            message(&b).contains("is not accepted on a target that uses a stored credential"),
            "{b}"
        );
    }
    legit.assert_untouched("refused config fields");
    let config =
        json!({"provider": "@team", "forward_headers": ["x-evil", "authorization", "host"]})
            .to_string();
    let headers = [
        ("x-portkey-config", config.as_str()),
        (
            "x-portkey-forward-headers",
            "x-evil,authorization,host,x-portkey-custom-host",
        ),
        ("x-evil", "attacker"),
        ("authorization", "Bearer sk-attacker"),
        ("x-portkey-azure-resource-name", "evil"),
        ("x-portkey-azure-deployment-id", "../../evil"),
        ("x-portkey-azure-endpoint-name", "evil"),
        ("x-portkey-base-url", &evil_host),
        ("x-portkey-openai-project", "proj_attacker"),
        ("x-portkey-openai-organization", "org_attacker"),
        ("x-portkey-custom-headers", r#"{"x-evil":"attacker"}"#),
    ];
    let (s, b) = chat(&server, &key, &headers, hello("gpt-4o-mini")).await;
    assert_eq!(s, 200, "{b}");
    evil.assert_untouched("request headers");
    let seen = legit.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {SECRET}"));
    for (name, value) in &seen[0].headers {
        let v = value.to_str().unwrap_or("");
        assert!(
            !v.contains("attacker") && !v.contains("evil"),
            "{name}: {v}"
        );
        assert!(
            !name.as_str().starts_with("x-portkey") && name != "x-evil",
            "{name}"
        );
    }
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert!(body.get("forward_headers").is_none(), "{body}");
}

/// Item 1, a model name as a URL path. An Azure integration (its key in `api-key`) whose base is
/// a deployment path. Before: any model was accepted; now one with `?`, `#`, `..`/`.` segments,
/// `\` or whitespace is a 400 and nothing is sent. A valid model (`@` included) leaves the path,
/// query and credential header exactly the integration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_cannot_change_the_upstream_url() {
    let (server, _, _, ws, key) = setup().await;
    let azure = Capture::start(None).await;
    server.admin("POST", "/integrations", Some(json!({"name": "az", "slug": "az", "ai_provider_id": "azure-openai",
        "key": "az-secret-key-1234567890", "configurations": {"custom_host": format!("{}/openai/deployments/dep", azure.url)}}))).await;
    server
        .admin(
            "PUT",
            "/integrations/az/workspaces",
            Some(json!({"workspaces": [{"id": ws, "enabled": true}]})),
        )
        .await;
    for model in [
        "../../evil",
        "dep?x=1",
        "dep#frag",
        "a/./b",
        "a\\b",
        "gpt 4o",
        "..",
        "%2e%2e/../x",
    ] {
        let (s, b) = chat(
            &server,
            &key,
            &[("x-portkey-provider", "@az")],
            hello(model),
        )
        .await;
        assert_eq!(s, 400, "{model}: {b}");
        assert!(message(&b).contains("is not a model id"), "{b}");
    }
    azure.assert_untouched("a model with URL syntax");
    let (s, b) = chat(
        &server,
        &key,
        &[("x-portkey-provider", "@az")],
        hello("gpt-4o@2024-08-06"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let seen = azure.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].uri,
        "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen[0].headers["api-key"], "az-secret-key-1234567890");
}

/// Item 1, a redirect. Before: the gateway followed an upstream's 307 and re-sent the body and
/// Azure's `api-key` header to wherever it pointed. Now: redirects are not followed; the client
/// gets a 502 that says so, and the other host sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_does_not_carry_the_credential_elsewhere() {
    let (server, _, evil, ws, key) = setup().await;
    let redirector = Capture::start(Some(evil.url.clone())).await;
    server.admin("POST", "/integrations", Some(json!({"name": "azr", "slug": "azr", "ai_provider_id": "azure-openai",
        "key": "az-secret-key-0987654321", "configurations": {"custom_host": format!("{}/v1", redirector.url)}}))).await;
    server
        .admin(
            "PUT",
            "/integrations/azr/workspaces",
            Some(json!({"workspaces": [{"id": ws, "enabled": true}]})),
        )
        .await;
    let (s, b) = chat(
        &server,
        &key,
        &[("x-portkey-provider", "@azr")],
        hello("gpt-4o-mini"),
    )
    .await;
    assert_eq!(s, 502, "{b}");
    assert_eq!(b["error"]["code"], "upstream_redirect", "{b}");
    assert_eq!(redirector.seen().len(), 1);
    evil.assert_untouched("an upstream redirect");
}

/// `depth` levels of fallback nodes, each with `width` leaf targets and one nested node.
fn tree(depth: usize, width: usize) -> Value {
    let leaves = || {
        (0..width)
            .map(|_| json!({"provider": "@up"}))
            .collect::<Vec<_>>()
    };
    let mut node = json!({"strategy": {"mode": "fallback"}, "targets": leaves()});
    for _ in 1..depth {
        let mut targets = leaves();
        targets.push(node);
        node = json!({"strategy": {"mode": "fallback"}, "targets": targets});
    }
    node
}

fn with_root_params(mut config: Value, pad_bytes: usize) -> Value {
    config["override_params"] = json!({"model": "gpt-4o-mini", "user": "x".repeat(pad_bytes)});
    config
}

/// Item 16, the bounds as clear 400s naming them, on both planes. Before: no bound on bytes or
/// targets (the 1.4 MB config below took the process past 3 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_bounds_are_clear_400s() {
    let (mock, server, ws, key) = harness::with_tenant("up").await;
    let configs = format!("{}/v1/configs", server.url);
    let admin = Some(server.admin_key.as_str());
    let cases = [
        (with_root_params(tree(8, 250), 1_400_000), "262144 bytes"),
        (tree(8, 13), "at most 100 targets"),
        (tree(10, 1), "at most 8 levels"),
    ];
    for (config, needle) in &cases {
        let body = json!({"name": "big", "workspace_id": ws, "config": config});
        let (s, _, b) = call("POST", &configs, admin, Some(body)).await;
        assert_eq!(s, 400, "{needle}: {b}");
        assert!(
            message(&b).contains(needle),
            "{needle}: {}",
            &message(&b)[..message(&b).len().min(300)]
        );
    }
    let header = with_root_params(tree(8, 12), 300_000).to_string();
    let (s, b) = config_chat(&server, &key, &header).await;
    assert_eq!(s, 400, "{b}");
    assert!(message(&b).contains("262144 bytes"), "{b}");
    for (config, needle) in &cases[1..] {
        let (s, b) = config_chat(&server, &key, &config.to_string()).await;
        assert_eq!(s, 400, "{b}");
        assert!(message(&b).contains(needle), "{b}");
    }
    assert_eq!(mock.seen.requests.load(Ordering::SeqCst), 0);
}

/// Item 16 against the binary: the two attack shapes of the issue (a 1.4 MB POST /configs and a
/// ~400 KB `x-portkey-config`, both deep and wide with a large root `override_params`) are
/// refused, and the largest config the bounds allow (a 200 KB root `override_params` inherited by
/// 95 targets over 8 levels) is served, ten requests at once, while the process's peak memory
/// stays under 200 MiB. Before: each target copied its parent's `override_params` (3 GiB and
/// ~2 GB for the two shapes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_attacks_stay_within_bounded_memory() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    binary::tollgate_env(cmd.arg("serve"), dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (mut child, url) = binary::spawn_serving(&mut cmd).await;
    let ws = harness::provision_up(&url, &mock.url, "mem", SECRET).await;
    let key = harness::completions_key(&url, &ws, "k").await;
    let key = key["key"].as_str().unwrap().to_owned();

    let saved = json!({"name": "big", "workspace_id": ws, "config": with_root_params(tree(8, 250), 1_400_000)});
    let (s, _, b) = call(
        "POST",
        &format!("{url}/v1/configs"),
        Some(harness::ADMIN_KEY),
        Some(saved),
    )
    .await;
    assert_eq!(s, 400, "{}", &b.to_string()[..200.min(b.to_string().len())]);
    let client = reqwest::Client::new();
    let send = |config: String| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        async move {
            client
                .post(format!("{url}/v1/chat/completions"))
                .header("x-portkey-api-key", key)
                .header("x-portkey-config", config)
                .json(&hello("portkey-default"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let header = with_root_params(tree(8, 125), 380_000).to_string();
    assert!(header.len() > 390_000);
    let s = send(header).await;
    assert!(s == 400 || s == 431, "an oversized x-portkey-config: {s}");

    let allowed = with_root_params(tree(8, 11), 200_000).to_string();
    assert!(allowed.len() < 256 * 1024);
    let served = futures_util::future::join_all((0..10).map(|_| send(allowed.clone()))).await;
    assert_eq!(served, vec![200; 10]);

    let peak = binary::peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(peak < 200 * 1024, "peak resident memory {peak} kB");
}

/// The columns [`wait_for_event`] reads.
const COLUMNS: &str = "status_code, usage_source, completion_tokens, streamed";

/// Waits for the raw usage events of one trace: (status, usage source, completion tokens, streamed).
async fn wait_for_event(server: &Server, trace: &str) -> Vec<(i64, String, i64, i64)> {
    crate::events::wait_for_usage_events(server, COLUMNS, trace).await
}

/// Waits (bounded) until the mock's oversized answer stopped, and returns the bytes it got out.
async fn poured_when_stopped(mock: &mock::Mock) -> usize {
    let stopped = harness::eventually(Duration::from_millis(25), || async {
        mock.seen.pours_ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(stopped, "the mock's oversized answer never stopped");
    mock.seen.poured.load(Ordering::SeqCst)
}

/// Five ordinary requests, all served.
async fn others_are_served(server: &Server, key: &str) {
    let ok = futures_util::future::join_all(
        (0..5).map(|_| chat(server, key, &[], hello("@big/gpt-4o-mini"))),
    )
    .await;
    assert!(ok.iter().all(|(s, _)| *s == 200), "{ok:?}");
}

const CAP: &str = "65536";

/// Item 19, a non-stream body past `max_upstream_body_bytes`. Before: buffered whole (here 64 MiB,
/// answered 200 with a broken body; 300 MB took +640 MiB). Now: reading stops at the cap, the
/// client gets a 502 in the OpenAI envelope naming the setting, the attempt is metered as an
/// estimate, and other requests are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_over_the_cap_is_a_metered_502() {
    let mock = mock::start().await;
    let server = harness::start_with(|s| s.set("max_upstream_body_bytes", CAP).unwrap()).await;
    let (_, key) = server.tenant(&mock.url, "big").await;
    let huge = chat(
        &server,
        &key,
        &[("x-portkey-trace-id", "huge")],
        hello("@big/huge-body"),
    );
    let ((s, b), ()) = tokio::join!(huge, others_are_served(&server, &key));
    assert_eq!(s, 502, "{b}");
    assert_eq!(b["error"]["code"], "upstream_body_too_large", "{b}");
    assert_eq!(b["error"]["type"], "api_error", "{b}");
    assert!(
        message(&b).contains("max_upstream_body_bytes = 65536"),
        "{b}"
    );
    let poured = poured_when_stopped(&mock).await;
    assert!(
        poured < mock::HUGE_BODY_BYTES,
        "the gateway read the whole body: {poured}"
    );
    let events = wait_for_event(&server, "huge").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (status, source, completion, streamed) = events[0].clone();
    assert_eq!((status, source.as_str(), streamed), (502, "estimated", 0));
    assert!(completion > 0, "the provider billed its answer: {events:?}");
}

/// Item 19, an SSE event that never ends. Before: buffered and rescanned from its start on every
/// chunk (16 MB: 9.7 s of a serving thread), then forwarded whole. Now: scanned once, and past the
/// cap the stream ends with an error frame naming the setting (no `[DONE]`, nothing of the event
/// forwarded), metered as an estimate, while other requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_sse_event_ends_the_stream_metered() {
    let mock = mock::start().await;
    // The cap on one event of a stream is its own setting, far below a whole body's.
    let server = harness::start_with(|s| s.set("max_stream_event_bytes", CAP).unwrap()).await;
    let (_, key) = server.tenant(&mock.url, "big").await;
    let stream = async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.url))
            .header("x-portkey-api-key", key.as_str())
            .header("x-portkey-trace-id", "endless")
            .json(&json!({"model": "@big/endless-event", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let (text, ()) = tokio::join!(stream, others_are_served(&server, &key));
    assert!(
        text.len() < 4096,
        "part of the oversized event was forwarded: {} bytes",
        text.len()
    );
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.starts_with("data: {\"error\""), "{text}");
    assert!(text.contains("max_stream_event_bytes"), "{text}");
    let poured = poured_when_stopped(&mock).await;
    assert!(
        poured < mock::ENDLESS_EVENT_BYTES,
        "the gateway read the whole event: {poured}"
    );
    let events = wait_for_event(&server, "endless").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (status, source, completion, streamed) = events[0].clone();
    assert_eq!((status, source.as_str(), streamed), (200, "estimated", 1));
    assert!(
        completion > 0,
        "the provider billed the event it sent: {events:?}"
    );
}

/// Review item 1: a custom price is bounded where it is set. Before: a `pricing_config` price of
/// 1.9e25 cents per token was accepted (and a request through it saturated every cost total).
/// Now: 400 naming the field and the bound (US cents per token), nothing stored; a price at the
/// bound is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_price_above_the_bound_is_a_clear_400() {
    let mock = mock::start().await;
    let server = harness::start().await;
    server.tenant(&mock.url, "priced").await;
    let models = format!("{}/v1/integrations/priced/models", server.url);
    let admin = Some(server.admin_key.as_str());
    let priced = |price: Value| {
        json!({"models": [{"slug": "gpt-4o-mini", "enabled": true, "pricing_config": {"type": "static",
            "pay_as_you_go": {"request_token": {"price": 0.00015}, "response_token": {"price": price}}}}]})
    };
    for price in [json!("19000000000000000000000000"), json!(100_000.5)] {
        let (s, _, b) = call("PUT", &models, admin, Some(priced(price.clone()))).await;
        assert_eq!(s, 400, "{price}: {b}");
        let text = b.to_string();
        assert!(
            text.contains("models[0].pricing_config: pay_as_you_go.response_token.price must be at most 100000"),
            "{price}: {b}"
        );
    }
    let listed = server
        .admin("GET", "/integrations/priced/models", None)
        .await;
    assert!(
        !listed.to_string().contains("19000000"),
        "nothing stored: {listed}"
    );
    let (s, _, b) = call("PUT", &models, admin, Some(priced(json!(100_000)))).await;
    assert_eq!(s, 200, "the bound itself is a price: {b}");
}

/// Review item 4: output fields are bounded before anything is reserved or sent. Before:
/// `max_tokens` of 2^64 − 6, `n` of a million, or a `max_tokens` the gateway could not read (a
/// string, which a lenient upstream may still honour) were sent to the provider (200). Now: a
/// 400 naming the field and its bound, and the provider sees nothing; the bounds themselves pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_output_fields_are_a_clear_400_before_the_provider() {
    let (mock, server, _, key) = harness::with_tenant("up").await;
    let with = |extra: Value| {
        let mut b = hello("@up/gpt-4o-mini");
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for (extra, needle) in [
        (
            json!({"max_tokens": u64::MAX - 5}),
            "max_tokens must be a whole number from 0 to 100000000",
        ),
        (
            json!({"max_completion_tokens": 100_000_001}),
            "max_completion_tokens must be a whole number from 0 to 100000000",
        ),
        (
            json!({"max_tokens": "4000000000"}),
            "max_tokens must be a whole number",
        ),
        (
            json!({"n": 1_000_000}),
            "n must be a whole number from 0 to 128",
        ),
        (
            json!({"max_tokens": 1000, "n": 129}),
            "n must be a whole number from 0 to 128",
        ),
    ] {
        let (s, b) = chat(&server, &key, &[], with(extra.clone())).await;
        assert_eq!(s, 400, "{extra}: {b}");
        assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
        assert!(message(&b).contains(needle), "{extra}: {b}");
    }
    assert_eq!(
        mock.seen.requests.load(Ordering::SeqCst),
        0,
        "refused before the provider"
    );
    let (s, b) = chat(
        &server,
        &key,
        &[],
        with(json!({"max_tokens": 100_000_000, "n": 128})),
    )
    .await;
    assert_eq!(s, 200, "the bounds themselves are served: {b}");
}

/// Review item 3, the URL's shape: a `custom_host` with a query, a fragment or userinfo is a 400
/// wherever it is set (integration, virtual key, a config target with its own key). Before: all
/// accepted (a query or `user@` host went out on every call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_host_is_only_scheme_host_port_path() {
    let (mock, server, ws, key) = harness::with_tenant("up").await;
    let admin = Some(server.admin_key.as_str());
    for (bad, needle) in [
        (format!("{}/v1?api-version=x", mock.url), "a query (?)"),
        (format!("{}/v1#frag", mock.url), "a fragment (#)"),
        ("http://user:pw@evil.example/v1".to_owned(), "userinfo"),
        (
            format!("http://api.openai.com@{}", &mock.url[7..]),
            "userinfo",
        ),
    ] {
        let integration = json!({"name": "bad", "slug": "bad", "ai_provider_id": "openai",
            "key": "sk-x", "configurations": {"custom_host": bad}});
        let vk = json!({"name": "vk", "provider": "openai", "key": "sk-vk-000000000",
            "workspace_id": ws, "custom_host": bad});
        let config = json!({"provider": "openai", "api_key": "sk-own", "custom_host": bad});
        let saved = json!({"name": "c", "workspace_id": ws, "config": config});
        for (path, body) in [
            ("/integrations", integration),
            ("/virtual-keys", vk),
            ("/configs", saved),
        ] {
            let (s, _, b) = call(
                "POST",
                &format!("{}/v1{path}", server.url),
                admin,
                Some(body),
            )
            .await;
            assert_eq!(s, 400, "{path} {bad}: {b}");
            assert!(b.to_string().contains(needle), "{path} {bad}: {b}");
            assert!(
                b.to_string().contains("http(s)://host[:port][/path]"),
                "{b}"
            );
        }
        let (s, b) = config_chat(&server, &key, &config.to_string()).await;
        assert_eq!(s, 400, "inline {bad}: {b}");
        assert!(message(&b).contains(needle), "{b}");
    }
    assert_eq!(mock.seen.requests.load(Ordering::SeqCst), 0);
}

/// Review item 3, `upstream_private_hosts = deny`: a literal private address is a 400 where it is
/// set (integration, virtual key; and a 403 per request, see `check_private_host`), a name resolving to one
/// (`localhost`) is refused when the call would connect, with a 403 naming the setting; the mock
/// sees no request. With the default (`allow`) the same name is served. Before: the setting did
/// not exist and every such host was called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_private_hosts_deny_refuses_private_addresses() {
    let mock = mock::start().await;
    let by_name = mock.url.replace("127.0.0.1", "localhost");
    let server = harness::start_with(|s| s.set("upstream_private_hosts", "deny").unwrap()).await;
    let admin = Some(server.admin_key.as_str());
    for literal in [
        mock.url.clone(),
        "http://[::1]:9/v1".into(),
        "http://169.254.169.254".into(),
        "http://10.0.0.8:8000/v1".into(),
    ] {
        let body = json!({"name": "lit", "slug": "lit", "ai_provider_id": "openai", "key": "sk-x",
            "configurations": {"custom_host": literal}});
        let (s, _, b) = call(
            "POST",
            &format!("{}/v1/integrations", server.url),
            admin,
            Some(body),
        )
        .await;
        assert_eq!(s, 400, "{literal}: {b}");
        assert!(
            b.to_string().contains("upstream_private_hosts = deny"),
            "{literal}: {b}"
        );
    }
    let (_, key) = server.tenant(&by_name, "named").await;
    let (s, b) = chat(&server, &key, &[], hello("@named/gpt-4o-mini")).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "upstream_host_not_allowed", "{b}");
    assert!(message(&b).contains("localhost resolves to"), "{b}");
    assert!(message(&b).contains("upstream_private_hosts = deny"), "{b}");
    let (ws, _) = server.tenant(&by_name, "other").await;
    let vk = json!({"name": "vk", "provider": "openai", "key": "sk-vk-000000000",
        "workspace_id": ws, "custom_host": mock.url});
    let (s, _, b) = call(
        "POST",
        &format!("{}/v1/virtual-keys", server.url),
        admin,
        Some(vk),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b.to_string()
            .contains("custom_host: 127.0.0.1 is a loopback"),
        "{b}"
    );
    assert_eq!(
        mock.seen.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the private host"
    );

    let open = harness::start().await;
    let (_, key) = open.tenant(&by_name, "named").await;
    let (s, b) = chat(&open, &key, &[], hello("@named/gpt-4o-mini")).await;
    assert_eq!(s, 200, "allow (the default) serves private hosts: {b}");
}
