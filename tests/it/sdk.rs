//! The real `portkey-ai` and `openai` SDKs against the real server.

use std::sync::atomic::Ordering;

use rust_decimal::Decimal;
use serde_json::Value;
use tollgate::store::Filter;

use crate::harness;
use crate::mock;

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portkey_and_openai_sdks_walkthrough() {
    let mock = mock::start().await;
    let server = harness::start().await;
    let stdout = harness::run_sdk(
        "walkthrough.py",
        &[
            ("TOLLGATE_URL", &server.url),
            ("ADMIN_KEY", &server.admin_key),
            ("MOCK_URL", &mock.url),
        ],
    )
    .await;
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .expect("the script printed its result");

    // The decrypted provider credentials reached the provider, and only there.
    let auth = mock.seen.auth.lock().clone();
    assert!(auth
        .iter()
        .any(|a| a == "Bearer sk-mock-provider-key-0123456789"));
    assert!(auth.iter().any(|a| a == "Bearer sk-vk-secret-abcdefghijkl"));
    assert!(
        !auth
            .iter()
            .any(|a| a.contains("OPENAI_API_KEY") || a.contains("tg_")),
        "{auth:?}"
    );
    for f in files_under(server.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("sk-mock-provider-key") && !text.contains("sk-vk-secret"),
            "secret in {}",
            f.display()
        );
    }
    // Streams always asked upstream for usage; the disallowed model never reached it.
    let bodies = mock.seen.bodies.lock().clone();
    for b in bodies.iter().filter(|b| b["stream"] == true) {
        assert_eq!(b["stream_options"]["include_usage"], true, "{b}");
    }
    assert!(!bodies.iter().any(|b| b["model"] == "gpt-4"));

    // Every attempt was metered once, and the store's totals are the sum of distinct events.
    server.store_caught_up().await;
    let ws = result["workspace_id"].as_str().unwrap().to_owned();
    let f = Filter {
        from: tollgate::domain::Millis(0),
        to: tollgate::domain::Millis(i64::MAX),
        workspace_id: Some(ws.clone()),
        ..Default::default()
    };
    let by_key = server
        .store()
        .groups(f.clone(), tollgate::store::GroupBy::ApiKey)
        .await
        .unwrap();
    let requests: u64 = by_key.iter().map(|(_, s)| s.requests).sum();
    assert_eq!(
        requests as usize,
        mock.seen.requests.load(Ordering::SeqCst),
        "one event per upstream attempt"
    );
    let cost: Decimal = by_key.iter().map(|(_, s)| s.cost_usd).sum();
    let cents: Decimal = result["cost_cents"].as_str().unwrap().parse().unwrap();
    assert_eq!(cost * Decimal::ONE_HUNDRED, cents);
    let totals = server
        .state()
        .usage_of(tollgate::domain::EntityKind::Workspace, &ws);
    assert_eq!(totals.cost_usd, cost);
    assert_eq!(totals.requests, requests);
    // The custom-priced model: 12 prompt tokens at 0.001 cents + 7 at 0.002 cents = $0.00026.
    let custom = server
        .store()
        .groups(f, tollgate::store::GroupBy::Model)
        .await
        .unwrap();
    let my = custom.iter().find(|(m, _)| m == "my-custom").unwrap();
    assert_eq!(my.1.cost_usd, "0.00026".parse::<Decimal>().unwrap());
    // Rollups per day by workspace equal the raw events exactly.
    let day = server.store().rollups("day", "workspace").await.unwrap();
    let row: Vec<_> = day.iter().filter(|r| r.value == ws).collect();
    assert_eq!(row.iter().map(|r| r.requests).sum::<u64>(), requests);
    assert_eq!(row.iter().map(|r| r.cost_usd).sum::<Decimal>(), cost);
}
