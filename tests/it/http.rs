//! Raw HTTP: bad input gets the contract's error body and changes nothing.

use serde_json::json;

use crate::harness::{self, call};
use crate::mock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_in_the_api_format() {
    let mock = mock::start().await;
    let server = harness::start_with(|s| s.set("max_body_bytes", "4096").unwrap()).await;
    let (_, key) = server.tenant(&mock.url, "p1").await;
    let v1 = format!("{}/v1", server.url);
    let before = server.state().workspaces.len();
    let client = reqwest::Client::new();

    // Malformed JSON on both planes.
    for (path, k) in [
        ("/admin/workspaces", &server.admin_key),
        ("/chat/completions", &key),
    ] {
        let r = client
            .post(format!("{v1}{path}"))
            .header("x-portkey-api-key", k.as_str())
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains("JSON"),
            "{body}"
        );
    }
    // Wrong types.
    let (s, _, b) = call(
        "POST",
        &format!("{v1}/admin/workspaces"),
        Some(&server.admin_key),
        Some(json!({"name": 5})),
    )
    .await;
    assert_eq!(
        (s, b["data"]["errorCode"].as_str()),
        (400, Some("AB01")),
        "{b}"
    );
    let (s, _, b) = call(
        "POST",
        &format!("{v1}/chat/completions"),
        Some(&key),
        Some(json!({"model": "@p1/gpt-4o", "messages": [], "stream": "yes"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    // Unknown routes.
    let (s, _, b) = call("GET", &format!("{v1}/nope"), Some(&server.admin_key), None).await;
    assert_eq!((s, b["success"].as_bool()), (404, Some(false)), "{b}");
    let (s, _, _) = call("GET", &format!("{}/other", server.url), None, None).await;
    assert_eq!(s, 404);
    // Oversized body.
    let big = "x".repeat(8192);
    let (s, _, b) = call(
        "POST",
        &format!("{v1}/chat/completions"),
        Some(&key),
        Some(json!({"model": "@p1/gpt-4o", "messages": [{"role":"user","content": big}]})),
    )
    .await;
    assert_eq!(s, 413, "{b}");
    assert!(b["error"]["message"].is_string());
    // Missing and unknown keys.
    let (s, _, b) = call("GET", &format!("{v1}/admin/workspaces"), None, None).await;
    assert_eq!((s, b["data"]["errorCode"].as_str()), (401, Some("AB05")));
    let (s, _, b) = call(
        "POST",
        &format!("{v1}/chat/completions"),
        Some("tg_unknown"),
        Some(json!({"model":"@p1/gpt-4o","messages":[]})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    // A workspace key without the scope, and on the admin plane.
    let ws = server
        .admin(
            "POST",
            "/admin/workspaces",
            Some(json!({"name": "noscope"})),
        )
        .await;
    let weak = server
        .admin(
            "POST",
            "/api-keys/workspace/service",
            Some(json!({"name": "ro", "workspace_id": ws["id"], "scopes": ["logs.view"]})),
        )
        .await;
    let weak = weak["key"].as_str().unwrap();
    let (s, _, _) = call(
        "POST",
        &format!("{v1}/chat/completions"),
        Some(weak),
        Some(json!({"model":"@p1/gpt-4o","messages":[]})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _, _) = call(
        "POST",
        &format!("{v1}/admin/workspaces"),
        Some(&key),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    // Unknown provider, config and virtual key.
    for (h, v) in [
        ("x-portkey-provider", "@ghost"),
        ("x-portkey-config", "pc-ghost"),
        ("x-portkey-virtual-key", "ghost"),
    ] {
        let r = client
            .post(format!("{v1}/chat/completions"))
            .header("x-portkey-api-key", key.as_str())
            .header(h, v)
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{h}");
        assert!(r.headers().contains_key("x-portkey-trace-id"));
    }
    // An invalid inline config.
    let r = client
        .post(format!("{v1}/chat/completions"))
        .header("x-portkey-api-key", key.as_str())
        .header("x-portkey-config", r#"{"strategy":{"mode":"fallback"}}"#)
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Nothing changed, and the server still serves.
    assert_eq!(server.state().workspaces.len(), before + 1);
    let (s, _, _) = call("GET", &format!("{}/healthz", server.url), None, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        mock.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_slow_upstreams() {
    let mock = mock::start().await;
    let server = harness::start().await;
    let (_, key) = server.tenant("http://127.0.0.1:9/v1", "dead").await;
    let v1 = format!("{}/v1", server.url);
    let (s, h, b) = call(
        "POST",
        &format!("{v1}/chat/completions"),
        Some(&key),
        Some(json!({"model":"@dead/gpt-4o","messages":[]})),
    )
    .await;
    assert_eq!(s, 502, "{b}");
    assert!(h.contains_key("x-portkey-trace-id"));
    // A request timeout from the config gives 408.
    server.admin("POST", "/integrations", Some(json!({"name": "m", "slug": "m", "ai_provider_id": "openai", "key": "sk-x", "configurations": {"custom_host": mock.url}}))).await;
    let ws = server.key_named("svc").workspace_id.clone().unwrap();
    server
        .admin(
            "PUT",
            "/integrations/m/workspaces",
            Some(json!({"workspaces": [{"id": ws, "enabled": true}]})),
        )
        .await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{v1}/chat/completions"))
        .header("x-portkey-api-key", key.as_str())
        .header(
            "x-portkey-config",
            r#"{"provider":"@m","request_timeout":300}"#,
        )
        .json(&json!({"model": "slow", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    // Both attempts were metered, as failures with no tokens.
    server.store_caught_up().await;
    let f = tollgate::store::Filter {
        from: tollgate::domain::Millis(0),
        to: tollgate::domain::Millis(i64::MAX),
        ..Default::default()
    };
    let codes = server
        .store()
        .groups(f, tollgate::store::GroupBy::StatusCode)
        .await
        .unwrap();
    let codes: Vec<_> = codes
        .iter()
        .map(|(c, s)| (c.as_str(), s.requests, s.tokens()))
        .collect();
    assert!(
        codes.contains(&("502", 1, 0)) && codes.contains(&("408", 1, 0)),
        "{codes:?}"
    );
}
