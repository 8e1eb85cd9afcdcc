//! Alerts: crossing a budget's alert threshold and exhausting it each produce exactly one email
//! (to a real SMTP sink, aiosmtpd) with the right recipients and figures, and one signed webhook;
//! a duplicate of a delivered limit event is not delivered again, even after a notifier restart.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness;
use crate::mock;

pub struct SmtpSink {
    child: tokio::process::Child,
    pub maildir: tempfile::TempDir,
    pub url: String,
}

pub async fn smtp_sink() -> SmtpSink {
    let maildir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(harness::python())
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir.path().join("mail"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("aiosmtpd (installed by scripts/test.sh)");
    let up = harness::eventually(Duration::from_millis(50), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the SMTP sink did not start");
    SmtpSink {
        child,
        maildir,
        url: format!("smtp://127.0.0.1:{port}"),
    }
}

pub fn mails(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(dir.join("mail").join(sub)) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap()),
            );
        }
    }
    out
}

type Calls = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn webhook_receiver() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, body: String| {
            let c = c.clone();
            async move {
                c.lock().push((h, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_and_exhaustion_each_notify_exactly_once() {
    let mut sink = smtp_sink().await;
    let (hook, calls) = webhook_receiver().await;
    let mock = mock::start().await;
    let (smtp, hook2) = (sink.url.clone(), hook.clone());
    let server = harness::start_with(move |s| {
        s.set("smtp_url", &smtp).unwrap();
        s.set("alert_from", "tollgate@example.com").unwrap();
        s.set("alert_emails", "owner@example.com, admin@example.com")
            .unwrap();
        s.set("alert_webhook_url", &hook2).unwrap();
        s.set("alert_webhook_secret", "whsec-test").unwrap();
    })
    .await;
    let (ws, _) = server.tenant(&mock.url, "a1").await;
    server
        .admin("PUT", "/integrations/a1/models", Some(json!({"models": [{"slug": "pricey", "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 1}, "response_token": {"price": 1}}}}]})))
        .await;
    let key = server
        .admin("POST", "/api-keys/workspace/service", Some(json!({"name": "alerting", "workspace_id": ws, "scopes": ["completions.write"],
            "alert_emails": ["team@example.com"], "usage_limits": {"type": "cost", "credit_limit": 1, "alert_threshold": 0.5}})))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..9 {
        let r = client
            .post(format!("{}/v1/chat/completions", server.url))
            .header("x-portkey-api-key", key.as_str())
            .json(&json!({"model": "@a1/pricey", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 412, 412, 412]);

    let notifications = || server.admin("GET", "/admin/notifications", None);
    harness::eventually(Duration::from_millis(50), || async {
        notifications().await["total"] == 4
    })
    .await;
    let rows = notifications().await;
    assert_eq!(rows["total"], 4, "two events × (email, webhook): {rows}");
    assert!(
        rows["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "delivered"),
        "{rows}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mails = mails(sink.maildir.path());
    assert_eq!(mails.len(), 2, "exactly one email per event");
    let threshold = mails
        .iter()
        .find(|m| m.contains("alert threshold"))
        .expect("threshold email");
    let exhausted = mails
        .iter()
        .find(|m| m.contains("exhausted"))
        .expect("exhaustion email");
    for m in [threshold, exhausted] {
        for who in ["owner@example.com", "admin@example.com", "team@example.com"] {
            assert!(m.contains(who), "{who} missing:\n{m}");
        }
    }
    assert!(threshold.contains("Used: $0.57 of $1"), "{threshold}");
    assert!(exhausted.contains("Used: $1.14 of $1"), "{exhausted}");

    let calls = calls.lock().clone();
    assert_eq!(calls.len(), 2);
    for (headers, body) in &calls {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-test").unwrap();
        mac.update(body.as_bytes());
        let want = tollgate::crypto::hex(&mac.finalize().into_bytes());
        assert_eq!(
            headers["x-tollgate-signature"].to_str().unwrap(),
            format!("sha256={want}")
        );
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(
            v["type"] == "budget.threshold_crossed" || v["type"] == "budget.exhausted",
            "{v}"
        );
        assert_eq!(v["credit_limit"], json!(1));
    }
    let _ = sink.child.kill().await;
}

/// Two aggregators can emit one crossing under one event id, and the second copy can reach the
/// log after the notifier has delivered the first and restarted: it is still delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_after_a_notifier_restart_is_not_delivered_again() {
    use tollgate::domain::limits::BudgetKind;
    use tollgate::domain::{LimitEvent, LimitKind, Millis};
    use tollgate::log::Topic;
    let (hook, calls) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = harness::settings(dir.path());
    s.set("alert_webhook_url", &hook).unwrap();
    let node = std::sync::Arc::new(tollgate::roles::serve::open(s).await.unwrap());
    let event = LimitEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        at: Millis::now(),
        kind: LimitKind::ThresholdCrossed,
        budget: "api_key:k1:cost".into(),
        owner_kind: "api_key".into(),
        workspace_id: None,
        api_key_id: None,
        window_start: Millis(0),
        budget_type: BudgetKind::Cost,
        credit_limit: 1.into(),
        alert_threshold: Some("0.5".parse().unwrap()),
        used: "0.6".parse().unwrap(),
        next_reset: None,
    };
    let payload = tollgate::codec::encode_limit(&event).unwrap();
    let append = || {
        node.log().append(
            Topic::Limits,
            event.budget.clone().into_bytes(),
            payload.clone(),
        )
    };
    append().await.unwrap();
    for round in 0..2 {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let notifier = tokio::spawn(tollgate::roles::notifier::run(node.clone(), stopped));
        let end = *node.log().watch_end(Topic::Limits).borrow();
        harness::eventually(Duration::from_millis(25), || async {
            node.store().offset("notifier").await.unwrap() >= end
        })
        .await;
        assert_eq!(node.store().offset("notifier").await.unwrap(), end);
        stop.send(true).unwrap();
        notifier.await.unwrap();
        if round == 0 {
            append().await.unwrap(); // the second aggregator's copy, while the notifier is down
        }
    }
    assert_eq!(calls.lock().len(), 1, "delivered once");
}
