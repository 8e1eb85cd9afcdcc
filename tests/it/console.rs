//! The web console end to end in a real headless Chromium (`tests/console/walkthrough.py`,
//! Playwright): the governance workflows done through the pages, chats sent with the key they
//! made through the real `openai` SDK, and the spend, exhaustion and alerts seen on the pages.
//! Here, the server's side of the same story: what the pages showed is what the ledger, the usage
//! store, the provider and the SMTP sink hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rust_decimal::Decimal;
use serde_json::Value;
use tollgate::domain::limits::{RateKind, RateUnit};
use tollgate::domain::{EntityKind, Millis};
use tollgate::store::{Filter, GroupBy};

use crate::{alerts, harness, mock};

const PROVIDER_KEY: &str = "sk-console-provider-key-0123456789";
const RECIPIENTS: [&str; 2] = ["alice@example.com", "bob@example.com"];

/// Where the pages are saved: `TG_SCREENSHOTS`, else `target/console-screenshots`. Emptied of a
/// previous run's pages first, so the secret checks read this run's only.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("TG_SCREENSHOTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "png" || x == "html") {
            std::fs::remove_file(p).unwrap();
        }
    }
    dir
}

/// The text of the first `<code>` after `id="secret"` in a saved page.
fn secret_in(html: &str) -> Option<&str> {
    let rest = &html[html.find("id=\"secret\"")?..];
    let start = rest.find('>')? + 1;
    let end = rest.find("</code>")?;
    Some(rest[start..end].trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_walkthrough_in_a_real_browser() {
    let sink = alerts::smtp_sink().await;
    let mock = mock::start().await;
    let smtp = sink.url.clone();
    let server = harness::start_with(move |s| {
        s.set("smtp_url", &smtp).unwrap();
        s.set("alert_from", "tollgate@example.com").unwrap();
    })
    .await;
    let shots = screenshots();
    let started = std::time::Instant::now();
    let stdout = harness::run_python(
        "tests/console",
        "walkthrough.py",
        &[
            ("TOLLGATE_URL", &server.url),
            ("ADMIN_KEY", &server.admin_key),
            ("MOCK_URL", &mock.url),
            ("PROVIDER_KEY", PROVIDER_KEY),
            ("TG_SCREENSHOTS", shots.to_str().unwrap()),
        ],
    )
    .await;
    eprintln!("the console walkthrough took {:?}", started.elapsed());
    let result = harness::script_result(&stdout);
    let served = result["served"].as_u64().unwrap();
    let key_id = result["key_id"].as_str().unwrap().to_owned();
    let research = result["workspaces"]["Research"]
        .as_str()
        .unwrap()
        .to_owned();
    let marketing = result["workspaces"]["Marketing"]
        .as_str()
        .unwrap()
        .to_owned();

    // A chat costs 19 cents (12 + 7 tokens at the custom price of 1 cent a token), so the $1
    // budget admits six: after five, 95 cents are used; after six, $1.14.
    assert_eq!(served, 6, "{result}");
    assert_eq!(result["cost_cents"], "114", "{result}");
    assert_eq!(result["spend_today"], "$1.14", "{result}");

    // Every upstream call carried the integration's key and nothing of Tollgate's; the model not
    // provisioned and the chat refused for the budget never reached the provider.
    assert_eq!(mock.seen.requests.load(Ordering::SeqCst) as u64, served);
    let auth = mock.seen.auth.lock().clone();
    assert!(
        auth.iter().all(|a| *a == format!("Bearer {PROVIDER_KEY}")),
        "{auth:?}"
    );
    let bodies = mock.seen.bodies.lock().clone();
    assert!(
        bodies.iter().all(|b| b["model"] == "gpt-4o-mini"),
        "{bodies:?}"
    );

    // What the forms made is what the ledger holds.
    let page = |name: &str| {
        let n = result["pages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|p| p.ends_with(name))
            .unwrap_or_else(|| panic!("no page {name}"))
            .to_owned();
        std::fs::read_to_string(shots.join(format!("{n}.html"))).unwrap()
    };
    let created = page("key-created");
    let secret = secret_in(&created).expect("the secret on the page that shows it");
    {
        let state = server.state();
        let key = state
            .api_keys
            .get(&key_id)
            .expect("the key made in the browser");
        assert_eq!(key.key_hash, tollgate::proxy::auth::key_hash(secret));
        assert_eq!(key.name, "research-svc");
        assert_eq!(key.workspace_id.as_deref(), Some(research.as_str()));
        assert_eq!(key.alert_emails, RECIPIENTS);
        let budget = key.usage_limits.as_ref().unwrap();
        assert_eq!(budget.credit_limit, Decimal::ONE);
        assert_eq!(budget.alert_threshold, Some("0.5".parse().unwrap()));
        assert_eq!(key.rate_limits.len(), 1);
        let rate = &key.rate_limits[0];
        assert_eq!(
            (rate.kind, rate.unit, rate.value),
            (RateKind::Requests, RateUnit::Rpm, 600)
        );

        let integration = state
            .integrations
            .values()
            .find(|i| i.slug == "mock-openai")
            .expect("the integration made in the browser");
        assert_eq!(
            integration.configurations["custom_host"].as_str(),
            Some(mock.url.as_str())
        );
        assert!(!integration.allow_all_models);
        let models: Vec<_> = integration.models.keys().collect();
        assert_eq!(models, ["gpt-4o-mini"]);
        let price = &integration.models["gpt-4o-mini"]
            .pricing_config
            .as_ref()
            .unwrap()["pay_as_you_go"];
        assert_eq!(price["request_token"]["price"], 1);
        assert_eq!(price["response_token"]["price"], 1);
        for (ws, budget, rpm) in [(&research, 10, 300), (&marketing, 5, 120)] {
            let access = &integration.workspaces[ws.as_str()];
            assert!(access.enabled);
            let limit = access.usage_limits.as_ref().unwrap();
            assert_eq!(limit.credit_limit, Decimal::from(budget));
            assert_eq!(access.rate_limits[0].value, rpm);
        }
    }

    // The overview's "Spend today" is the store's and the ledger's total.
    server.store_caught_up().await;
    let f = Filter {
        from: Millis::now().floor_day(),
        to: Millis(i64::MAX),
        ..Default::default()
    };
    let by_key = server.store().groups(f, GroupBy::ApiKey).await.unwrap();
    let cost: Decimal = by_key.iter().map(|(_, s)| s.cost_usd).sum();
    assert_eq!(format!("${}", cost.normalize()), result["spend_today"]);
    let mine = by_key.iter().find(|(k, _)| *k == key_id).unwrap();
    assert_eq!(mine.1.cost_usd, cost, "all of today's spend is the key's");
    let totals = server.state().usage_of(EntityKind::ApiKey, &key_id);
    assert_eq!(totals.cost_usd, cost);
    assert_eq!(totals.requests, served);

    // One e-mail per alert (threshold crossed, exhausted), each to both recipients.
    let maildir = sink.maildir.path();
    let both = harness::eventually(std::time::Duration::from_millis(50), || async {
        alerts::mails(maildir).len() >= 2
    })
    .await;
    assert!(both, "the alert e-mails did not arrive");
    let mails = alerts::mails(maildir);
    assert_eq!(mails.len(), 2, "{mails:?}");
    for m in &mails {
        for who in RECIPIENTS {
            assert!(m.contains(who), "{who} missing:\n{m}");
        }
    }
    assert!(mails.iter().any(|m| m.contains("alert threshold")));
    assert!(mails.iter().any(|m| m.contains("exhausted")));

    // No secret in any page saved but the one that shows the key's, once.
    for name in result["pages"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let html = std::fs::read_to_string(shots.join(format!("{name}.html"))).unwrap();
        assert!(!html.contains(PROVIDER_KEY), "the provider key on {name}");
        assert!(
            !html.contains(harness::ADMIN_KEY),
            "the admin key on {name}"
        );
        assert_eq!(
            html.contains(secret),
            name.ends_with("key-created"),
            "the key's secret on {name}"
        );
        assert!(shots.join(format!("{name}.png")).is_file(), "{name}.png");
    }
}
