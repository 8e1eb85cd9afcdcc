//! The `tollgate serve` binary as users run it: state survives a restart exactly, SIGTERM stops
//! cleanly (metering a stream whose client left before it exits), and `kill -9` under load loses
//! no acknowledged usage event.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::binary::{spawn_serving, tollgate_env};
use crate::harness::admin_call as admin;
use crate::mock;

pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) url: String,
}

pub(crate) async fn spawn(dir: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    tollgate_env(cmd.arg("serve"), dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (child, url) = spawn_serving(&mut cmd).await;
    Proc { child, url }
}

pub(crate) fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(p.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Creates a tenant through the admin API; returns the workspace id and a data-plane key.
async fn tenant(url: &str, upstream: &str) -> (String, String) {
    let ws_id =
        crate::harness::provision_up(url, upstream, "persist", "sk-persisted-key-000111").await;
    admin(url, "PUT", "/integrations/up/models", Some(json!({"allow_all_models": false, "models": [{"slug": "gpt-4o-mini", "enabled": true}]}))).await;
    admin(
        url,
        "POST",
        "/configs",
        Some(json!({"name": "c", "workspace_id": ws_id, "config": {"provider": "@up"}})),
    )
    .await;
    let key = crate::harness::completions_key(url, &ws_id, "k").await;
    (ws_id, key["key"].as_str().unwrap().to_owned())
}

async fn chat(url: &str, key: &str, trace: &str) -> u16 {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .header("x-portkey-api-key", key)
        .header("x-portkey-trace-id", trace)
        .json(&json!({"model": "@up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    r.map_or(0, |r| r.status().as_u16())
}

/// Everything the admin API shows, minus what legitimately changes between calls.
async fn snapshot(url: &str, ws: &str) -> Value {
    let mut keys = admin(url, "GET", &format!("/api-keys?workspace_id={ws}"), None).await;
    for k in keys["data"].as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("status");
    }
    json!({
        "workspaces": admin(url, "GET", "/admin/workspaces", None).await,
        "integration": admin(url, "GET", "/integrations/up", None).await,
        "access": admin(url, "GET", "/integrations/up/workspaces", None).await,
        "models": admin(url, "GET", "/integrations/up/models", None).await,
        "providers": admin(url, "GET", &format!("/providers?workspace_id={ws}"), None).await,
        "configs": admin(url, "GET", &format!("/configs?workspace_id={ws}"), None).await,
        "keys": keys,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_everything_exactly() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path()).await;
    let (ws, key) = tenant(&p.url, &mock.url).await;
    for i in 0..25 {
        assert_eq!(chat(&p.url, &key, &format!("r{i}")).await, 200);
    }
    // A key whose token budget is used up stays refused after the restart.
    let capped = admin(
        &p.url,
        "POST",
        "/api-keys/workspace/service",
        Some(json!({"name": "capped", "workspace_id": ws,
        "scopes": ["completions.write"], "usage_limits": {"type": "tokens", "credit_limit": 100}})),
    )
    .await;
    let capped = capped["key"].as_str().unwrap().to_owned();
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(chat(&p.url, &capped, &format!("c{i}")).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "six 19-token requests use 100 tokens: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&412));
    let before = snapshot(&p.url, &ws).await;
    let svc = before["keys"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "k")
        .unwrap()
        .clone();
    assert_eq!(svc["current_usage"]["requests"], 25);
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success(), "SIGTERM exits cleanly");

    let mut p = spawn(dir.path()).await;
    assert_eq!(snapshot(&p.url, &ws).await, before);
    assert_eq!(
        chat(&p.url, &key, "after").await,
        200,
        "the old key works after a restart"
    );
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_meters_a_stream_whose_client_left_before_exiting() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path()).await;
    let (_, key) = tenant(&p.url, &mock.url).await;
    admin(
        &p.url,
        "PUT",
        "/integrations/up/models",
        Some(json!({"allow_all_models": true})),
    )
    .await;
    // The mock takes about a second for this stream; the client leaves after the first chunk and
    // the gateway is told to stop at once, while it is still draining the provider's stream.
    crate::harness::leave_stream_after_first_chunk(
        &p.url,
        &key,
        "@up/slow-stream",
        "left-at-shutdown",
    )
    .await;
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success(), "SIGTERM exits cleanly");
    assert_eq!(mock.seen.streams_finished.load(Ordering::SeqCst), 1);
    let db = rusqlite::Connection::open(dir.path().join("usage.sqlite")).unwrap();
    let (source, completion): (String, i64) = db
        .query_row(
            "SELECT usage_source, completion_tokens FROM usage_events WHERE trace_id = 'left-at-shutdown'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the event is in the store when the process has exited");
    assert_eq!(
        (source.as_str(), completion),
        ("provider", mock::COMPLETION_TOKENS as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let mock = mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path()).await;
    let (_, key) = tenant(&p.url, &mock.url).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (url, key, acked) = (p.url.clone(), key.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let trace = format!("w{w}-{i}");
                match chat(&url, &key, &trace).await {
                    200 => {
                        acked.lock().insert(trace);
                    }
                    0 => return, // the server is gone
                    s => panic!("unexpected status {s}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&p, "KILL");
    let _ = p.child.wait();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > 50, "load ran: {}", acked.len());

    let mut p = spawn(dir.path()).await;
    let stored_now = || {
        let db = rusqlite::Connection::open(dir.path().join("usage.sqlite")).unwrap();
        let mut stmt = db.prepare("SELECT trace_id FROM usage_events").unwrap();
        let stored: HashSet<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        stored
    };
    crate::harness::eventually(Duration::from_millis(50), || {
        let all = acked.is_subset(&stored_now());
        async move { all }
    })
    .await;
    let stored = stored_now();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged requests lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    signal(&p, "TERM");
    let _ = p.child.wait();
}
