//! See [`super`]: the privilege area of the security suite. Who may grant which scope, read
//! which object, and change, remove or reset which limit; and workspace provisioning.

use serde_json::{json, Value};

use tollgate::domain::{Change, Entity};

use super::common::{assert_forbidden, scoped_key, ws_key, WithKey};
use crate::harness::{self, Server};
use crate::mock;

/// A time range that covers every test's traffic, for analytics routes.
const RANGE: &str =
    "time_of_generation_min=2020-01-01T00:00:00Z&time_of_generation_max=2100-01-01T00:00:00Z";

/// Gives the key named `name` an extra scope directly in the state, as a key minted before scope
/// checks existed could hold it.
async fn grant_legacy_scope(server: &Server, name: &str, scope: &str) {
    let mut k = (*server.key_named(name)).clone();
    k.scopes.push(scope.to_owned());
    server
        .commit(None, vec![Change::Upsert(Entity::ApiKey(k))])
        .await
        .unwrap();
}

/// A chat through `@slug` with `key`; returns the status.
async fn chat(server: &Server, key: &str, slug: &str) -> u16 {
    let body = json!({"model": format!("@{slug}/gpt-4o-mini"), "max_tokens": 7,
        "messages": [{"role": "user", "content": "hi"}]});
    server.with_key(key).post("/chat/completions", body).await.0
}

/// Sends chats until one is refused with 412 (a budget used up); bounded.
async fn exhaust(server: &Server, key: &str, slug: &str) {
    for _ in 0..40 {
        if chat(server, key, slug).await == 412 {
            return;
        }
    }
    panic!("the budget was never used up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_key_cannot_mint_organisation_scopes_or_repoint_integrations() {
    let (mock, server, ws, _) = harness::with_tenant("shared").await;
    let (minter_id, minter) = scoped_key(
        &server,
        &ws,
        "minter",
        &[
            "workspace_service_api_keys.create",
            "workspace_service_api_keys.update",
            "completions.write",
        ],
    )
    .await;
    let before = server.admin("GET", "/integrations/shared", None).await;
    // Minting a key with an organisation scope, or any scope the minter lacks: refused.
    let as_minter = server.with_key(&minter);
    for scopes in [
        json!(["organisation_integrations.update"]),
        json!(["completions.write", "organisation_integrations.update"]),
        json!(["workspace_service_api_keys.delete"]),
        json!(["workspaces.delete"]),
    ] {
        let body = json!({"name": "evil", "workspace_id": ws, "scopes": scopes});
        let got = as_minter.post("/api-keys/workspace/service", body).await;
        assert_forbidden(got, &format!("mint {scopes}"));
    }
    // Widening its own scopes: refused; narrowing is allowed.
    let widen = json!({"scopes": ["workspace_service_api_keys.create", "workspace_service_api_keys.update", "completions.write", "organisation_integrations.update"]});
    let got = as_minter
        .put(&format!("/api-keys/{minter_id}"), widen)
        .await;
    assert_forbidden(got, "widen own scopes");
    // A scope it holds is grantable, and only valid ones for the new key's type.
    let body = json!({"name": "ok", "workspace_id": ws, "scopes": ["completions.write"]});
    let (s, v) = as_minter.post("/api-keys/workspace/service", body).await;
    assert_eq!(s, 200, "{v}");
    let body =
        json!({"name": "bad", "workspace_id": ws, "scopes": ["organisation_integrations.update"]});
    let (s, v) = server
        .as_admin()
        .post("/api-keys/workspace/service", body)
        .await;
    assert_eq!(s, 400, "an organisation-only scope on a workspace key: {v}");
    let body = json!({"name": "bad", "scopes": ["organisation_service_api_keys.create", "completions.write"]});
    let (s, v) = server
        .as_admin()
        .post("/api-keys/organisation/service", body)
        .await;
    assert_eq!(s, 400, "a data-plane scope on an organisation key: {v}");
    // Scopes Tollgate does not enforce are stored verbatim (§2.2), but only an organisation key
    // grants one it does not hold.
    let body = json!({"name": "verbatim", "workspace_id": ws, "scopes": ["workspace_users.read"]});
    let (s, v) = server
        .as_admin()
        .post("/api-keys/workspace/service", body.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    let got = as_minter.post("/api-keys/workspace/service", body).await;
    assert_forbidden(got, "an unenforced scope the minter lacks");
    // Repointing the shared integration with the minter: refused.
    let repoint = json!({"configurations": {"custom_host": "http://127.0.0.1:1/v1"}});
    let got = as_minter.put("/integrations/shared", repoint.clone()).await;
    assert_forbidden(got, "repoint");
    // Even holding organisation scopes (a key minted before this fix), a workspace key never
    // changes organisation objects or provisioning.
    for scope in [
        "organisation_integrations.update",
        "organisation_integrations.delete",
        "workspaces.delete",
        "organisation_service_api_keys.create",
    ] {
        grant_legacy_scope(&server, "minter", scope).await;
    }
    let got = as_minter.put("/integrations/shared", repoint).await;
    assert_forbidden(got, "repoint with a legacy scope");
    let got = as_minter
        .put(
            "/integrations/shared/models",
            json!({"allow_all_models": false}),
        )
        .await;
    assert_forbidden(got, "models of an organisation integration");
    let cut = json!({"workspaces": [{"id": ws, "enabled": false}]});
    let got = as_minter.put("/integrations/shared/workspaces", cut).await;
    assert_forbidden(got, "provisioning");
    let got = as_minter.delete("/integrations/shared").await;
    assert_forbidden(got, "delete an organisation integration");
    let got = as_minter
        .call(
            "DELETE",
            &format!("/admin/workspaces/{ws}"),
            Some(json!({"force_delete": true})),
        )
        .await;
    assert_forbidden(got, "delete its workspace");
    // Its own workspace's integration it may manage, but not send the stored key elsewhere.
    server.admin("POST", "/integrations", Some(json!({"name": "own", "slug": "own-int", "ai_provider_id": "openai",
        "workspace_id": ws, "key": "sk-org-set-000000000", "configurations": {"custom_host": mock.url}}))).await;
    grant_legacy_scope(&server, "minter", "workspace_integrations.update").await;
    let elsewhere = json!({"configurations": {"custom_host": "http://127.0.0.1:1/v1"}});
    let got = as_minter
        .put("/integrations/own-int", elsewhere.clone())
        .await;
    assert_forbidden(got, "repoint a workspace integration without its key");
    let mut with_key = elsewhere;
    with_key["key"] = json!("sk-its-own-000000000");
    let (s, v) = as_minter.put("/integrations/own-int", with_key).await;
    assert_eq!(s, 200, "with a key of its own: {v}");
    let after = server.admin("GET", "/integrations/shared", None).await;
    assert_eq!(after["configurations"], before["configurations"]);
    assert_eq!(after["allow_all_models"], before["allow_all_models"]);
    let access = server
        .admin("GET", "/integrations/shared/workspaces", None)
        .await;
    assert!(
        access["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == ws.as_str() && a["enabled"] == true),
        "{access}"
    );
    assert!(
        server
            .admin("GET", &format!("/admin/workspaces/{ws}"), None)
            .await["id"]
            == ws.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_get_route_checks_its_read_scope() {
    let (_mock, server, ws, data_key) = harness::with_tenant("reads").await;
    let (_, unrelated) = scoped_key(&server, &ws, "unrelated", &["configs.create"]).await;
    let (key_id, _) = scoped_key(&server, &ws, "target", &["completions.write"]).await;
    let cfg = server
        .admin(
            "POST",
            "/configs",
            Some(json!({"name": "c", "workspace_id": ws, "config": {"provider": "@reads"}})),
        )
        .await;
    let vk = server.admin("POST", "/virtual-keys", Some(json!({"name": "vk", "provider": "openai", "key": "sk-vk-000000000", "workspace_id": ws}))).await;
    let pol = server
        .admin(
            "POST",
            "/policies/usage-limits",
            Some(json!({"name": "p", "workspace_id": ws, "type": "cost", "credit_limit": 10})),
        )
        .await;
    let routes = [
        "/admin/workspaces".to_owned(),
        format!("/admin/workspaces/{ws}"),
        "/integrations".to_owned(),
        "/integrations/reads".to_owned(),
        "/integrations/reads/workspaces".to_owned(),
        "/integrations/reads/models".to_owned(),
        "/providers".to_owned(),
        format!("/providers/reads?workspace_id={ws}"),
        "/virtual-keys".to_owned(),
        format!(
            "/virtual-keys/{}?workspace_id={ws}",
            vk["slug"].as_str().unwrap()
        ),
        "/configs".to_owned(),
        format!("/configs/{}", cfg["slug"].as_str().unwrap()),
        "/api-keys".to_owned(),
        format!("/api-keys/{key_id}"),
        "/admin/notifications".to_owned(),
        "/policies/usage-limits".to_owned(),
        format!("/policies/usage-limits/{}", pol["id"].as_str().unwrap()),
        format!("/analytics/graphs/requests?{RANGE}"),
        format!("/analytics/groups/ai-models?{RANGE}"),
        format!("/analytics/summary/cache?{RANGE}"),
    ];
    let mut wrong = Vec::new();
    for path in &routes {
        for (who, key) in [
            ("completions.write", &data_key),
            ("configs.create", &unrelated),
        ] {
            let (s, v) = server.with_key(key).get(path).await;
            if s != 403 || v["data"]["errorCode"] != "AB03" {
                wrong.push(format!("{who} GET {path}: {s} {v}"));
            }
        }
        let (s, v) = server.as_admin().get(path).await;
        if s != 200 {
            wrong.push(format!("admin GET {path}: {s} {v}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisation_key_with_a_workspace_id_is_refused() {
    let server = harness::start().await;
    let ws = server
        .admin("POST", "/admin/workspaces", Some(json!({"name": "w"})))
        .await;
    let body =
        json!({"name": "org-with-ws", "workspace_id": ws["id"], "scopes": ["workspaces.list"]});
    let (s, v) = server
        .as_admin()
        .post("/api-keys/organisation/service", body)
        .await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("workspace_id") && msg.contains("/api-keys/workspace/service"),
        "{msg}"
    );
    let keys = server.admin("GET", "/api-keys", None).await;
    assert!(
        !keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "org-with-ws"),
        "nothing was created"
    );
    // Nor is a workspace_id dropped on update.
    let org = server
        .admin(
            "POST",
            "/api-keys/organisation/service",
            Some(json!({"name": "org", "scopes": ["workspaces.list"]})),
        )
        .await;
    let path = format!("/api-keys/{}", org["id"].as_str().unwrap());
    let (s, v) = server
        .as_admin()
        .put(&path, json!({"workspace_id": ws["id"]}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(server.admin("GET", &path, None).await["workspace_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cannot_reset_or_remove_its_own_limits() {
    let (mock, server, ws, _) = harness::with_tenant("own").await;
    let (id, key) = ws_key(&server, &ws, "self", json!({"scopes": ["completions.write", "workspace_service_api_keys.update"],
        "usage_limits": {"type": "tokens", "credit_limit": 100}, "rate_limits": [{"type": "requests", "unit": "rpd", "value": 1000}]})).await;
    exhaust(&server, &key, "own").await;
    let as_self = server.with_key(&key);
    for body in [
        json!({"reset_usage": true}),
        json!({"usage_limits": null}),
        json!({"rate_limits": []}),
        json!({"defaults": {"metadata": {"department": "other"}}}),
        json!({"alert_emails": ["me@example.com"]}),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
    ] {
        let got = as_self.put(&format!("/api-keys/{id}"), body.clone()).await;
        assert_forbidden(got, &format!("self {body}"));
    }
    // Nor through a key it mints: that key acts for it.
    let (ws2, _) = server.tenant(&mock.url, "own2").await;
    let scopes = json!([
        "completions.write",
        "workspace_service_api_keys.create",
        "workspace_service_api_keys.update"
    ]);
    let (_, lead) = ws_key(&server, &ws2, "lead", json!({"scopes": scopes})).await;
    // The parent's budget is set by a workspace key (the lead), which may lift it; a key the
    // parent minted may not.
    let body = json!({"name": "parent", "workspace_id": ws2, "scopes": scopes, "usage_limits": {"type": "tokens", "credit_limit": 100}});
    let as_lead = server.with_key(&lead);
    let (s, v) = as_lead.post("/api-keys/workspace/service", body).await;
    assert_eq!(s, 200, "{v}");
    let (pid, parent) = (v["id"].as_str().unwrap(), v["key"].as_str().unwrap());
    let body = json!({"name": "proxy", "workspace_id": ws2, "scopes": ["workspace_service_api_keys.update"]});
    let (s, v) = server
        .with_key(parent)
        .post("/api-keys/workspace/service", body)
        .await;
    assert_eq!(s, 200, "{v}");
    let proxy = v["key"].as_str().unwrap();
    let got = server
        .with_key(proxy)
        .put(&format!("/api-keys/{pid}"), json!({"usage_limits": null}))
        .await;
    assert_forbidden(got, "a minted key lifting its minter's budget");
    let (s, v) = as_lead
        .put(&format!("/api-keys/{pid}"), json!({"reset_usage": true}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat(&server, &key, "own").await, 412, "still refused");
    // Its name is its own to change.
    let (s, v) = as_self
        .put(&format!("/api-keys/{id}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200, "{v}");
    // The organisation admin can reset it.
    server.reset_usage(&format!("/api-keys/{id}")).await;
    assert_eq!(chat(&server, &key, "own").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_key_cannot_lift_limits_set_by_the_organisation() {
    let (_mock, server, ws, _) = harness::with_tenant("gov").await;
    let budget = json!({"type": "cost", "credit_limit": 5});
    server
        .admin(
            "PUT",
            &format!("/admin/workspaces/{ws}"),
            Some(json!({"usage_limits": budget})),
        )
        .await;
    server
        .admin(
            "PUT",
            &format!("/providers/gov?workspace_id={ws}"),
            Some(json!({"usage_limits": budget})),
        )
        .await;
    let pol = server
        .admin(
            "POST",
            "/policies/usage-limits",
            Some(json!({"name": "p", "workspace_id": ws, "type": "cost", "credit_limit": 10})),
        )
        .await;
    let pol = pol["id"].as_str().unwrap();
    let (org_set_id, _) = ws_key(
        &server,
        &ws,
        "org-set",
        json!({"scopes": ["completions.write"], "usage_limits": budget}),
    )
    .await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team-admin",
        &[
            "workspaces.update",
            "providers.update",
            "providers.delete",
            "workspace_service_api_keys.create",
            "workspace_service_api_keys.update",
            "completions.write",
        ],
    )
    .await;
    // Each: method, path, body.
    let workspace = format!("/admin/workspaces/{ws}");
    let provider = format!("/providers/gov?workspace_id={ws}");
    let org_key = format!("/api-keys/{org_set_id}");
    let policy = format!("/policies/usage-limits/{pol}");
    let attempts = [
        ("PUT", workspace.clone(), json!({"usage_limits": null})),
        ("PUT", workspace.clone(), json!({"reset_usage": true})),
        (
            "PUT",
            workspace.clone(),
            json!({"rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]}),
        ),
        ("PUT", provider.clone(), json!({"usage_limits": null})),
        ("PUT", provider.clone(), json!({"reset_usage": true})),
        ("DELETE", provider.clone(), json!({})),
        ("PUT", org_key.clone(), json!({"usage_limits": null})),
        ("PUT", org_key.clone(), json!({"reset_usage": true})),
        ("PUT", policy.clone(), json!({"usage_limits": null})),
        ("PUT", policy.clone(), json!({"reset_usage": true})),
        ("DELETE", policy.clone(), json!({})),
    ];
    let as_team = server.with_key(&team);
    for (method, path, body) in &attempts {
        let got = as_team.call(method, path, Some(body.clone())).await;
        assert_forbidden(got, &format!("{method} {path} {body}"));
    }
    let w = server
        .admin("GET", &format!("/admin/workspaces/{ws}"), None)
        .await;
    assert_eq!(w["usage_limits"][0]["credit_limit"], 5, "{w}");
    let p = server
        .admin("GET", &format!("/providers/gov?workspace_id={ws}"), None)
        .await;
    assert_eq!(p["usage_limits"]["credit_limit"], 5, "{p}");
    // Limits the workspace set itself stay its own to manage.
    let body = json!({"name": "child", "workspace_id": ws, "scopes": ["completions.write"], "usage_limits": {"type": "cost", "credit_limit": 2}});
    let (s, v) = as_team.post("/api-keys/workspace/service", body).await;
    assert_eq!(s, 200, "{v}");
    let child = v["id"].as_str().unwrap();
    let (s, v) = as_team
        .put(&format!("/api-keys/{child}"), json!({"reset_usage": true}))
        .await;
    assert_eq!(s, 200, "{v}");
    // The organisation admin can do every one of these.
    for (method, path, body) in attempts
        .iter()
        .filter(|a| a.2 != json!({"reset_usage": true}))
    {
        let (s, v) = server
            .as_admin()
            .call(method, path, Some(body.clone()))
            .await;
        assert_eq!(s, 200, "admin {method} {path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_cannot_be_edited_once_set() {
    let (_mock, server, ws, _) = harness::with_tenant("rl").await;
    let (key_id, _) = scoped_key(&server, &ws, "k", &["completions.write"]).await;
    let vk = server.admin("POST", "/virtual-keys", Some(json!({"name": "vk", "provider": "openai", "key": "sk-vk-000000000", "workspace_id": ws}))).await;
    let vk = vk["slug"].as_str().unwrap();
    let pol = server
        .admin(
            "POST",
            "/policies/usage-limits",
            Some(json!({"name": "p", "workspace_id": ws, "type": "cost", "credit_limit": 10})),
        )
        .await;
    let pol = pol["id"].as_str().unwrap();
    let limit = |v: u64| json!([{"type": "requests", "unit": "rpm", "value": v}]);
    // Each: the path and how a body carries `rate_limits`.
    let access = |r: Value| json!({"workspaces": [{"id": ws, "enabled": true, "rate_limits": r}]});
    let plain = |r: Value| json!({"rate_limits": r});
    type Wrap<'a> = &'a dyn Fn(Value) -> Value;
    let targets: [(String, Wrap); 6] = [
        (format!("/api-keys/{key_id}"), &plain),
        (format!("/providers/rl?workspace_id={ws}"), &plain),
        (format!("/virtual-keys/{vk}?workspace_id={ws}"), &plain),
        (format!("/admin/workspaces/{ws}"), &plain),
        ("/integrations/rl/workspaces".to_owned(), &access),
        (format!("/policies/usage-limits/{pol}"), &plain),
    ];
    let srv = &server;
    for (path, wrap) in &targets {
        let put = |body: Value| async move { srv.as_admin().put(path, body).await };
        assert_eq!(put(wrap(limit(5))).await.0, 200, "{path}: set");
        let (s, v) = put(wrap(limit(6))).await;
        assert_eq!(s, 400, "{path}: an edit is refused: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot be edited"),
            "{path}: {v}"
        );
        assert_eq!(
            put(wrap(limit(5))).await.0,
            200,
            "{path}: the same value changes nothing"
        );
        assert_eq!(put(wrap(json!([]))).await.0, 200, "{path}: removal");
        assert_eq!(put(wrap(limit(6))).await.0, 200, "{path}: re-adding");
    }
    let k = server
        .admin("GET", &format!("/api-keys/{key_id}"), None)
        .await;
    assert_eq!(k["rate_limits"][0]["value"], 6, "{k}");
    let a = server
        .admin("GET", "/integrations/rl/workspaces", None)
        .await;
    let a = a["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == ws.as_str())
        .unwrap()
        .clone();
    assert_eq!(a["rate_limits"]["value"], 6, "{a}");
}

/// The provisioning of `ws` in `GET /integrations/{slug}/workspaces`.
async fn access_of(server: &Server, slug: &str, ws: &str) -> Value {
    let all = server
        .admin("GET", &format!("/integrations/{slug}/workspaces"), None)
        .await;
    all["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == ws)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workspaces_grants_existing_ones_and_override_sets_their_limits() {
    let mock = mock::start().await;
    let server = harness::start().await;
    let mut wss = Vec::new();
    for name in ["a", "b"] {
        let w = server
            .admin("POST", "/admin/workspaces", Some(json!({"name": name})))
            .await;
        wss.push(w["id"].as_str().unwrap().to_owned());
    }
    server
        .admin(
            "POST",
            "/integrations",
            Some(
                json!({"name": "all", "slug": "all", "ai_provider_id": "openai",
        "key": "sk-all-000000000", "configurations": {"custom_host": mock.url}}),
            ),
        )
        .await;
    // One workspace already has its own limits.
    server
        .admin(
            "PUT",
            "/integrations/all/workspaces",
            Some(json!({"workspaces": [{"id": wss[0], "enabled": true,
        "usage_limits": [{"type": "cost", "credit_limit": 10}]}]})),
        )
        .await;
    // "All Workspaces": existing workspaces get access (and a provider) too.
    server
        .admin(
            "PUT",
            "/integrations/all/workspaces",
            Some(json!({"global_workspace_access": {"enabled": true,
        "rate_limits": [{"type": "requests", "unit": "rpm", "value": 50}]}})),
        )
        .await;
    let b = access_of(&server, "all", &wss[1]).await;
    assert_eq!(b["enabled"], true, "{b}");
    assert_eq!(b["rate_limits"]["value"], 50, "{b}");
    let a = access_of(&server, "all", &wss[0]).await;
    assert_eq!(
        a["usage_limits"]["credit_limit"], 10,
        "without the override, existing limits stay: {a}"
    );
    let (_, key) = ws_key(
        &server,
        &wss[1],
        "user",
        json!({"scopes": ["completions.write"]}),
    )
    .await;
    assert_eq!(
        chat(&server, &key, "all").await,
        200,
        "the granted workspace is served"
    );
    // "Apply to every workspace where this integration is enabled", through the Portkey SDK.
    let script = r#"
import os
from portkey_ai import Portkey
admin = Portkey(api_key=os.environ["ADMIN"], base_url=os.environ["BASE"])
admin.integrations.workspaces.update(slug="all", override_existing_workspaces_access=True,
    global_workspace_access={"enabled": True, "usage_limits": [{"type": "tokens", "credit_limit": 5000}],
                             "rate_limits": [{"type": "requests", "unit": "rpm", "value": 70}]})
"#;
    let out = tokio::process::Command::new(harness::python())
        .arg("-c")
        .arg(script)
        .env("ADMIN", &server.admin_key)
        .env("BASE", format!("{}/v1", server.url))
        .output()
        .await
        .unwrap();
    if out.status.success() {
        for ws in &wss {
            let a = access_of(&server, "all", ws).await;
            assert_eq!(a["usage_limits"]["credit_limit"], 5000, "{a}");
            assert_eq!(a["usage_limits"]["type"], "tokens", "{a}");
            assert_eq!(a["rate_limits"]["value"], 70, "{a}");
        }
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named"),
            "the SDK call failed: {err}"
        );
        eprintln!("portkey SDK not installed (set TG_PYTHON); checking over HTTP only");
    }
    // The same over HTTP, with the spec's spelling of the flag.
    server.admin("PUT", "/integrations/all/workspaces", Some(json!({"override_existing_workspace_access": true,
        "global_workspace_access": {"enabled": true, "usage_limits": [{"type": "cost", "credit_limit": 3}], "rate_limits": []}}))).await;
    for ws in &wss {
        let a = access_of(&server, "all", ws).await;
        assert_eq!(a["usage_limits"]["credit_limit"], 3, "{a}");
        assert!(a["rate_limits"].is_null(), "{a}");
    }
    // "All Workspaces" at creation grants the existing workspaces too.
    server
        .admin(
            "POST",
            "/integrations",
            Some(
                json!({"name": "born", "slug": "born", "ai_provider_id": "openai",
        "key": "sk-born-000000000", "configurations": {"custom_host": mock.url},
        "global_workspace_access": {"enabled": true}}),
            ),
        )
        .await;
    for ws in &wss {
        assert_eq!(
            access_of(&server, "born", ws).await["enabled"],
            true,
            "{ws}"
        );
    }
    // A workspace created later gets the same.
    let c = server
        .admin("POST", "/admin/workspaces", Some(json!({"name": "c"})))
        .await;
    let a = access_of(&server, "all", c["id"].as_str().unwrap()).await;
    assert_eq!(a["usage_limits"]["credit_limit"], 3, "{a}");
}

/// Mints a workspace key with `minter`; returns (id, secret).
async fn mint(
    server: &Server,
    minter: &str,
    ws: &str,
    name: &str,
    scopes: Value,
) -> (String, String) {
    let body = json!({"name": name, "workspace_id": ws, "scopes": scopes});
    let (s, v) = server
        .with_key(minter)
        .post("/api-keys/workspace/service", body)
        .await;
    assert_eq!(s, 200, "mint {name}: {v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// Review finding 1: a key minted by a workspace key is bound by its minter's budget, policies,
/// expiry and scopes, and stops when the minter is deleted (before: the minted key had none of
/// them: served with 200 past the minter's exhausted budget, kept scopes the organisation took
/// from its minter, and outlived it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_key_is_bound_by_its_minter() {
    let (_mock, server, ws, _) = harness::with_tenant("chain").await;
    let scopes = json!([
        "completions.write",
        "workspace_service_api_keys.create",
        "workspace_service_api_keys.update"
    ]);
    let (_, w) = ws_key(
        &server,
        &ws,
        "minter",
        json!({"scopes": scopes,
        "usage_limits": {"type": "tokens", "credit_limit": 100}}),
    )
    .await;
    exhaust(&server, &w, "chain").await;
    // The exact attack: the exhausted minter mints a key without limits.
    let (_, m) = mint(&server, &w, &ws, "escape", scopes.clone()).await;
    assert_eq!(
        chat(&server, &m, "chain").await,
        412,
        "the minter's budget binds"
    );
    // The minter's rate limits count the minted key's requests.
    let (_, r) = ws_key(
        &server,
        &ws,
        "rated",
        json!({"scopes": scopes,
        "rate_limits": [{"type": "requests", "unit": "rpd", "value": 2}]}),
    )
    .await;
    let (_, rm) = mint(&server, &r, &ws, "rated child", scopes.clone()).await;
    assert_eq!(chat(&server, &r, "chain").await, 200);
    assert_eq!(chat(&server, &rm, "chain").await, 200);
    assert_eq!(
        chat(&server, &rm, "chain").await,
        429,
        "the minter's rate limit binds"
    );
    // A grandchild too, and a policy on the minter covers what it minted.
    let (w2_id, w2) = ws_key(&server, &ws, "minter2", json!({"scopes": scopes})).await;
    let (_, m2) = mint(&server, &w2, &ws, "child", scopes.clone()).await;
    let (m3_id, m3) = mint(&server, &m2, &ws, "grandchild", scopes.clone()).await;
    assert_eq!(chat(&server, &m3, "chain").await, 200);
    server
        .admin("POST", "/policies/usage-limits", Some(json!({"name": "w2",
            "conditions": [{"key": "api_key", "value": w2_id}], "type": "tokens", "credit_limit": 100})))
        .await;
    exhaust(&server, &m3, "chain").await;
    assert_eq!(
        chat(&server, &m2, "chain").await,
        412,
        "the policy on the minter binds"
    );
    // Narrowing the minter narrows what it minted: it can neither mint nor grant back.
    server
        .admin(
            "PUT",
            &format!("/api-keys/{w2_id}"),
            Some(json!({"scopes": ["completions.write"]})),
        )
        .await;
    let body = json!({"name": "more", "workspace_id": ws, "scopes": ["completions.write"]});
    let as_m2 = server.with_key(&m2);
    let got = as_m2.post("/api-keys/workspace/service", body).await;
    assert_forbidden(got, "mint after the minter lost the scope");
    let got = as_m2
        .put(&format!("/api-keys/{w2_id}"), json!({"scopes": scopes}))
        .await;
    assert_forbidden(got, "grant the scopes back");
    let got = as_m2
        .put(&format!("/api-keys/{m3_id}"), json!({"name": "x"}))
        .await;
    assert_forbidden(got, "use a scope the minter lost");
    // The minter's expiry binds, and deleting the minter stops what it minted.
    let (x_id, x) = ws_key(&server, &ws, "minter3", json!({"scopes": scopes})).await;
    let (_, mx) = mint(&server, &x, &ws, "child3", scopes.clone()).await;
    let (_, mx2) = mint(&server, &mx, &ws, "grandchild3", scopes.clone()).await;
    assert_eq!(chat(&server, &mx2, "chain").await, 200);
    server
        .admin(
            "PUT",
            &format!("/api-keys/{x_id}"),
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(chat(&server, &mx, "chain").await, 401, "the minter expired");
    server
        .admin(
            "PUT",
            &format!("/api-keys/{x_id}"),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(chat(&server, &mx2, "chain").await, 200);
    server
        .admin("DELETE", &format!("/api-keys/{x_id}"), None)
        .await;
    assert_eq!(
        chat(&server, &mx, "chain").await,
        401,
        "the minter was deleted"
    );
    assert_eq!(chat(&server, &mx2, "chain").await, 401, "two levels down");
    let (s, _) = server.with_key(&mx).get("/api-keys").await;
    assert_eq!(s, 401, "on the control plane too");
}

/// Review finding 2: a workspace key cannot send an organisation-entered credential elsewhere by
/// changing the Azure resource_name (or any configuration) without giving the key itself, and
/// resource_name / deployment_name must be plain names everywhere (before: the PUT was 200 and
/// the credential went to `https://attacker.example/x.openai.azure.com/...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_key_cannot_redirect_an_organisation_credential_through_configurations() {
    let (_mock, server, ws, _) = harness::with_tenant("azure-base").await;
    server
        .admin(
            "POST",
            "/integrations",
            Some(
                json!({"name": "az", "slug": "az", "ai_provider_id": "azure-openai",
            "workspace_id": ws, "key": "sk-org-entered-1234567890",
            "configurations": {"resource_name": "company", "deployment_name": "gpt-4o.v1"}}),
            ),
        )
        .await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &[
            "workspace_integrations.create",
            "workspace_integrations.update",
            "workspace_integrations.read",
            "virtual_keys.create",
        ],
    )
    .await;
    let as_team = server.with_key(&team);
    for c in [
        json!({"resource_name": "attacker"}),
        json!({"deployment_name": "other"}),
        json!({"api_version": "2024-01-01"}),
    ] {
        let got = as_team
            .put("/integrations/az", json!({"configurations": c}))
            .await;
        assert_forbidden(got, &format!("reconfigure {c}"));
    }
    let i = server.admin("GET", "/integrations/az", None).await;
    assert_eq!(i["configurations"]["resource_name"], "company", "{i}");
    // Not plain names: refused for anyone, on integrations and virtual keys.
    for (field, bad) in [
        ("resource_name", "attacker.example/x"),
        ("resource_name", "a.b"),
        ("deployment_name", "x/../../y"),
        ("deployment_name", "d?x=1"),
        ("deployment_name", ".."),
    ] {
        let body = json!({"key": "sk-mine-1234567890", "configurations": {field: bad}});
        let (s, v) = as_team.put("/integrations/az", body.clone()).await;
        assert_eq!(s, 400, "{field}={bad}: {v}");
        let (s, v) = server.as_admin().put("/integrations/az", body).await;
        assert_eq!(s, 400, "admin {field}={bad}: {v}");
        let camel = if field == "resource_name" {
            "resourceName"
        } else {
            "deploymentName"
        };
        let vk =
            json!({"name": "vk", "provider": "azure-openai", "key": "sk-1234567890", camel: bad});
        let (s, v) = as_team.post("/virtual-keys", vk).await;
        assert_eq!(s, 400, "virtual key {camel}={bad}: {v}");
    }
    // With its own key the workspace may reconfigure, and then it is its credential.
    let body = json!({"key": "sk-mine-1234567890", "configurations": {"resource_name": "mine"}});
    let (s, v) = as_team.put("/integrations/az", body).await;
    assert_eq!(s, 200, "{v}");
    let body = json!({"configurations": {"deployment_name": "gpt-4o"}});
    let (s, v) = as_team.put("/integrations/az", body).await;
    assert_eq!(s, 200, "{v}");
}

/// Review finding 3: a slug cannot shadow another integration's (or provider's) id. Lookups take
/// the id first, and a new slug equal to an id or shaped like one is refused (before: a workspace
/// key made an integration whose slug was the organisation integration's id, and the admin's
/// `PUT /integrations/<id>` changed the workspace's integration instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slug_cannot_shadow_an_id() {
    let (mock, server, ws, _) = harness::with_tenant("shadowed").await;
    let org = server.admin("GET", "/integrations/shadowed", None).await;
    let org_id = org["id"].as_str().unwrap().to_owned();
    let prov = server
        .admin(
            "GET",
            &format!("/providers/shadowed?workspace_id={ws}"),
            None,
        )
        .await;
    let prov_id = prov["id"].as_str().unwrap().to_owned();
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &[
            "workspace_integrations.create",
            "providers.create",
            "virtual_keys.create",
        ],
    )
    .await;
    let uuid = "6f1f0c2e-8d4b-4c1a-9a55-0123456789ab";
    let as_team = server.with_key(&team);
    for slug in [org_id.as_str(), uuid] {
        let body = json!({"name": "evil", "slug": slug, "ai_provider_id": "openai", "key": "sk-1234567890",
            "configurations": {"custom_host": mock.url}});
        let (s, v) = as_team.post("/integrations", body).await;
        assert_eq!(s, 400, "integration slug {slug}: {v}");
    }
    for slug in [prov_id.as_str(), uuid] {
        let body = json!({"name": "evil", "slug": slug, "integration_id": "shadowed"});
        let (s, v) = as_team.post("/providers", body).await;
        assert_eq!(s, 400, "provider slug {slug}: {v}");
        let body =
            json!({"name": "evil", "slug": slug, "provider": "openai", "key": "sk-1234567890"});
        let (s, v) = as_team.post("/virtual-keys", body).await;
        assert_eq!(s, 400, "virtual key slug {slug}: {v}");
    }
    // A shadowing slug stored before the rule: the id still finds the organisation's.
    let (s, v) = as_team.post("/integrations", json!({"name": "ws own", "slug": "ws-own", "ai_provider_id": "openai", "key": "sk-1234567890", "configurations": {"custom_host": mock.url}})).await;
    assert_eq!(s, 200, "{v}");
    let mut own = (**server
        .state()
        .integrations
        .values()
        .find(|i| i.slug == "ws-own")
        .unwrap())
    .clone();
    own.slug = org_id.clone();
    server
        .commit(None, vec![Change::Upsert(Entity::Integration(own))])
        .await
        .unwrap();
    server
        .admin(
            "PUT",
            &format!("/integrations/{org_id}"),
            Some(json!({"name": "renamed by admin"})),
        )
        .await;
    let org = server.state().integrations[&org_id].clone();
    assert_eq!(org.name, "renamed by admin");
}

/// Review finding 4: a workspace key cannot add a second provider on an integration whose
/// provider in its workspace carries limits the organisation set (before: 200, and the new
/// provider reached the same credential without them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_provider_cannot_escape_organisation_limits() {
    let (_mock, server, ws, _) = harness::with_tenant("capped").await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &["providers.create", "completions.write"],
    )
    .await;
    // Without limits on the provisioned provider, the workspace may add its own.
    let body = json!({"name": "mine", "slug": "mine", "integration_id": "capped"});
    let as_team = server.with_key(&team);
    let (s, v) = as_team.post("/providers", body).await;
    assert_eq!(s, 200, "{v}");
    server
        .admin(
            "PUT",
            &format!("/providers/capped?workspace_id={ws}"),
            Some(json!({"usage_limits": {"type": "tokens", "credit_limit": 100}})),
        )
        .await;
    let body = json!({"name": "escape", "slug": "escape", "integration_id": "capped"});
    let got = as_team.post("/providers", body.clone()).await;
    assert_forbidden(got, "a provider beside an organisation-limited one");
    let mut body = body;
    body["workspace_id"] = json!(ws);
    let (s, v) = server.as_admin().post("/providers", body).await;
    assert_eq!(s, 200, "the organisation may: {v}");
}

/// Review finding 5: deleting a workspace integration deletes its providers, so it needs the
/// authority to delete each, organisation-set limits included (before: 200, the limited
/// provider went with it, and recreating the integration gave a provider without a budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_integration_cannot_drop_organisation_limits() {
    let (mock, server, ws, _) = harness::with_tenant("base5").await;
    server
        .admin("POST", "/integrations", Some(json!({"name": "own", "slug": "own5", "ai_provider_id": "openai",
            "workspace_id": ws, "key": "sk-1234567890", "configurations": {"custom_host": mock.url}})))
        .await;
    server
        .admin(
            "PUT",
            &format!("/providers/own5?workspace_id={ws}"),
            Some(json!({"usage_limits": {"type": "tokens", "credit_limit": 100}})),
        )
        .await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &["workspace_integrations.delete", "providers.delete"],
    )
    .await;
    let got = server.with_key(&team).delete("/integrations/own5").await;
    assert_forbidden(
        got,
        "delete an integration with an organisation-limited provider",
    );
    let p = server
        .admin("GET", &format!("/providers/own5?workspace_id={ws}"), None)
        .await;
    assert_eq!(p["usage_limits"]["credit_limit"], 100, "{p}");
    let (s, v) = server.as_admin().delete("/integrations/own5").await;
    assert_eq!(s, 200, "the organisation may: {v}");
}

/// Review finding 6: pricing (pricing_config, base_model_slug, meter_unpriced_at_zero) and the
/// allow-list are the organisation's, even on a workspace's own integration (before: a workspace
/// key zero-priced its models and cost budgets the organisation set stopped counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_key_cannot_change_pricing_or_the_allow_list() {
    let (mock, server, ws, _) = harness::with_tenant("base6").await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &[
            "workspace_integrations.create",
            "workspace_integrations.update",
            "workspace_integrations.read",
        ],
    )
    .await;
    let body = json!({"name": "own", "slug": "own6", "ai_provider_id": "openai", "key": "sk-1234567890",
        "configurations": {"custom_host": mock.url}});
    let as_team = server.with_key(&team);
    let (s, v) = as_team.post("/integrations", body).await;
    assert_eq!(s, 200, "{v}");
    let zero = json!({"type": "static", "pay_as_you_go": {"request_token": {"price": 0}, "response_token": {"price": 0}}});
    let attempts = [
        json!({"models": [{"slug": "gpt-4o", "enabled": true, "pricing_config": zero}]}),
        json!({"models": [{"slug": "gpt-4o", "enabled": true, "base_model_slug": "gpt-4o-mini"}]}),
        json!({"allow_all_models": false}),
    ];
    for body in &attempts {
        let got = as_team.put("/integrations/own6/models", body.clone()).await;
        assert_forbidden(got, &format!("models {body}"));
    }
    let flag = json!({"configurations": {"meter_unpriced_at_zero": true}});
    let got = as_team.put("/integrations/own6", flag).await;
    assert_forbidden(got, "meter_unpriced_at_zero");
    let body = json!({"name": "free", "slug": "free6", "ai_provider_id": "openai", "key": "sk-1234567890",
        "configurations": {"custom_host": mock.url, "meter_unpriced_at_zero": true}});
    let got = as_team.post("/integrations", body).await;
    assert_forbidden(got, "meter_unpriced_at_zero on create");
    // The organisation may; then the workspace cannot remove the entry either.
    let (s, v) = server
        .as_admin()
        .put("/integrations/own6/models", attempts[0].clone())
        .await;
    assert_eq!(s, 200, "{v}");
    let got = as_team
        .delete("/integrations/own6/models?slugs=gpt-4o")
        .await;
    assert_forbidden(got, "delete a priced entry");
    // Unchanged values are no change: renaming stays the workspace's.
    let (s, v) = as_team
        .put("/integrations/own6", json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200, "{v}");
}

/// Review finding 8: a config the organisation forced on a key (its defaults `{config_id,
/// allow_config_override: false}`) is changed or deleted by an organisation key only (before: the
/// bound key itself, or any workspace key with configs.update, rewrote or deleted it with 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_config_is_changed_by_the_organisation_only() {
    let (_mock, server, ws, _) = harness::with_tenant("forced").await;
    let cfg = server
        .admin(
            "POST",
            "/configs",
            Some(json!({"name": "forced", "workspace_id": ws,
            "config": {"provider": "@forced"}})),
        )
        .await;
    let slug = cfg["slug"].as_str().unwrap().to_owned();
    let scopes = json!([
        "completions.write",
        "configs.create",
        "configs.update",
        "configs.delete",
        "configs.read"
    ]);
    let (_, bound) = ws_key(
        &server,
        &ws,
        "bound",
        json!({"scopes": scopes,
        "defaults": {"config_id": slug, "allow_config_override": false}}),
    )
    .await;
    let (_, other) = ws_key(&server, &ws, "other", json!({"scopes": scopes})).await;
    for key in [&bound, &other] {
        for body in [
            json!({"status": "archived"}),
            json!({"config": {"provider": "@elsewhere"}}),
        ] {
            let got = server
                .with_key(key)
                .put(&format!("/configs/{slug}"), body.clone())
                .await;
            assert_forbidden(got, &format!("update {body}"));
        }
        let got = server
            .with_key(key)
            .delete(&format!("/configs/{slug}"))
            .await;
        assert_forbidden(got, "delete");
    }
    // A config of the workspace's own stays its own.
    let as_other = server.with_key(&other);
    let (s, v) = as_other
        .post(
            "/configs",
            json!({"name": "own", "config": {"provider": "@forced"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let own = v["slug"].as_str().unwrap();
    let (s, v) = as_other
        .put(&format!("/configs/{own}"), json!({"status": "archived"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = server
        .as_admin()
        .put(&format!("/configs/{slug}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200, "the organisation may: {v}");
}

/// Review finding 9: a workspace key reading an organisation integration sees its own
/// workspace's usage only (before: the integration-wide current_usage and workspace_count,
/// other workspaces' traffic included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integration_shows_a_workspace_only_its_own_usage() {
    let (_mock, server, _, key_a) = harness::with_tenant("shared9").await;
    let ws_b = harness::create_workspace(&server.url, "team b9").await;
    server
        .admin(
            "PUT",
            "/integrations/shared9/workspaces",
            Some(json!({"workspaces": [{"id": ws_b, "enabled": true}]})),
        )
        .await;
    let (_, key_b) = scoped_key(
        &server,
        &ws_b,
        "b",
        &["completions.write", "workspace_integrations.read"],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(chat(&server, &key_a, "shared9").await, 200);
    }
    assert_eq!(chat(&server, &key_b, "shared9").await, 200);
    // Usage is folded when each attempt settles: wait for all four.
    let id = server.admin("GET", "/integrations/shared9", None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _all_folded = harness::eventually(std::time::Duration::from_millis(25), || async {
        let t = server
            .state()
            .usage_of(tollgate::domain::EntityKind::Integration, &id);
        t.requests == 4
    })
    .await;
    let (s, v) = server.with_key(&key_b).get("/integrations/shared9").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["current_usage"]["requests"], 1, "{v}");
    assert_eq!(v["workspace_count"], 1, "{v}");
    let all = server.admin("GET", "/integrations/shared9", None).await;
    assert_eq!(all["current_usage"]["requests"], 4, "{all}");
    assert_eq!(all["workspace_count"], 2, "{all}");
}

/// Review finding 10: alert emails the organisation set on a key without limits are governed
/// like its limits (before: a workspace key with workspace_service_api_keys.update replaced them
/// with 200, and the organisation's recipients stopped hearing of the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_key_cannot_change_organisation_alert_emails() {
    let (_mock, server, ws, _) = harness::with_tenant("alerts10").await;
    let (id, _) = ws_key(
        &server,
        &ws,
        "watched",
        json!({"scopes": ["completions.write"],
        "alert_emails": ["security@example.com"]}),
    )
    .await;
    let (_, team) = scoped_key(&server, &ws, "team", &["workspace_service_api_keys.update"]).await;
    for emails in [json!([]), json!(["me@example.com"])] {
        let got = server
            .with_key(&team)
            .put(&format!("/api-keys/{id}"), json!({"alert_emails": emails}))
            .await;
        assert_forbidden(got, &format!("alert_emails {emails}"));
    }
    let k = server.admin("GET", &format!("/api-keys/{id}"), None).await;
    assert_eq!(k["alert_emails"], json!(["security@example.com"]), "{k}");
}

/// Review finding 11: a virtual key is changed or deleted with `virtual_keys.*` whichever route
/// reaches it (before: `providers.update` / `providers.delete` alone changed and deleted one
/// through `/providers/<slug>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_key_needs_virtual_key_scopes_on_the_providers_route() {
    let (_mock, server, ws, _) = harness::with_tenant("vk11").await;
    server
        .admin(
            "POST",
            "/virtual-keys",
            Some(
                json!({"name": "vk", "slug": "vk11-key", "provider": "openai",
            "key": "sk-1234567890", "workspace_id": ws}),
            ),
        )
        .await;
    let (_, team) = scoped_key(
        &server,
        &ws,
        "team",
        &["providers.update", "providers.delete", "providers.read"],
    )
    .await;
    let as_team = server.with_key(&team);
    let got = as_team
        .put("/providers/vk11-key", json!({"name": "renamed"}))
        .await;
    assert_forbidden(got, "update a virtual key with providers.update");
    let got = as_team.delete("/providers/vk11-key").await;
    assert_forbidden(got, "delete a virtual key with providers.delete");
    // Its own kind stays reachable with providers.*.
    let (s, v) = as_team
        .put("/providers/vk11", json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, vk_admin) = scoped_key(
        &server,
        &ws,
        "vk admin",
        &["providers.update", "virtual_keys.update"],
    )
    .await;
    let (s, v) = server
        .with_key(&vk_admin)
        .put("/providers/vk11-key", json!({"name": "renamed"}))
        .await;
    assert_eq!(s, 200, "{v}");
}
