//! See [`super`]: the audit trail. Every admin change is recorded with the key that made it (and
//! that key's creator), what it did and in which workspace, and `GET /v1/audit-logs` serves it:
//! filtered, paginated, newest first, a workspace key seeing only its own workspace, no secret in
//! any row; the trail is the same after a restart.

use serde_json::{json, Value};

use super::common::scoped_key;
use crate::harness::{self, call, Server, ADMIN_KEY};

/// The provider key of the test integration: it must never reach the audit trail.
const PROVIDER_SECRET: &str = "sk-audit-provider-secret-7f3a9c21";

async fn as_key(
    url: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, _, v) = call(method, &format!("{url}/v1{path}"), Some(key), body).await;
    (s, v)
}

/// `GET /v1/audit-logs?<query>` with `key`, which must succeed.
async fn audit(url: &str, key: &str, query: &str) -> Value {
    let (s, v) = as_key(url, key, "GET", &format!("/audit-logs?{query}"), None).await;
    assert_eq!(s, 200, "audit-logs?{query}: {v}");
    assert_eq!(v["object"], "list");
    v
}

fn rows(v: &Value) -> Vec<Value> {
    v["data"].as_array().unwrap().clone()
}

/// Every secret the state holds: sealed credentials and key hashes, found in the entities' JSON.
fn secrets(server: &Server) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("sealed" | "key_hash", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let state = server.state();
    let mut out = vec![PROVIDER_SECRET.to_owned(), ADMIN_KEY.to_owned()];
    for i in state.integrations.values() {
        walk(&serde_json::to_value(&**i).unwrap(), &mut out);
    }
    for k in state.api_keys.values() {
        walk(&serde_json::to_value(&**k).unwrap(), &mut out);
    }
    assert!(
        out.len() > 4,
        "the state holds sealed credentials and key hashes"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_with_actor_creator_action_and_workspace() {
    let server = harness::start().await;
    let url = server.url.clone();
    let ws_a = harness::create_workspace(&server.url, "audit a").await;
    let ws_b = harness::create_workspace(&server.url, "audit b").await;
    server
        .admin(
            "POST",
            "/integrations",
            Some(json!({"name": "audited", "slug": "audited",
        "ai_provider_id": "openai", "key": PROVIDER_SECRET,
        "configurations": {"custom_host": "http://127.0.0.1:9/v1"}})),
        )
        .await;
    let (team_id, team) = scoped_key(
        &server,
        &ws_a,
        "team a admin",
        &[
            "configs.create",
            "configs.update",
            "configs.delete",
            "configs.list",
            "audit_logs.list",
        ],
    )
    .await;
    let (_, blind) = scoped_key(&server, &ws_a, "no audit scope", &["configs.list"]).await;

    // The workspace key creates, renames and deletes a config in its workspace; the admin makes
    // one in the other workspace.
    let (s, c) = as_key(
        &url,
        &team,
        "POST",
        "/configs",
        Some(json!({"name": "team cfg",
        "config": {"provider": "@audited"}})),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    let cfg = c["id"].as_str().unwrap().to_owned();
    let (s, v) = as_key(
        &url,
        &team,
        "PUT",
        &format!("/configs/{cfg}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = as_key(&url, &team, "DELETE", &format!("/configs/{cfg}"), None).await;
    assert_eq!(s, 200, "{v}");
    let other = server
        .admin(
            "POST",
            "/configs",
            Some(json!({"name": "b cfg", "workspace_id": ws_b,
        "config": {"provider": "@audited"}})),
        )
        .await;
    let other = other["id"].as_str().unwrap().to_owned();

    // Read right after the changes (read-your-writes): newest first, actor, creator, action.
    let configs = audit(&url, ADMIN_KEY, "resource_type=config").await;
    assert_eq!(configs["total"], 4, "{configs}");
    let got: Vec<(String, String, Value)> = rows(&configs)
        .iter()
        .map(|r| {
            assert_eq!(r["object"], "audit-log");
            assert!(r["timestamp"].as_str().unwrap().ends_with('Z'), "{r}");
            (
                r["action"].as_str().unwrap().to_owned(),
                r["resource_id"].as_str().unwrap().to_owned(),
                r["actor"]["key_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "created".to_owned(),
                other.clone(),
                json!("admin-bootstrap")
            ),
            ("deleted".to_owned(), cfg.clone(), json!(team_id)),
            ("updated".to_owned(), cfg.clone(), json!(team_id)),
            ("created".to_owned(), cfg.clone(), json!(team_id)),
        ]
    );
    let by_team = &rows(&configs)[1];
    assert_eq!(by_team["actor"]["name"], "team a admin");
    assert_eq!(
        by_team["actor"]["created_by"], "admin-bootstrap",
        "the actor's creator"
    );
    assert_eq!(by_team["actor"]["workspace_id"], json!(ws_a));
    assert_eq!(by_team["workspace_id"], json!(ws_a));
    assert_eq!(
        by_team["resource_name"], "renamed",
        "a deletion names what was deleted"
    );
    assert_eq!(
        rows(&configs)[2]["changed_fields"],
        json!(["name", "version_id"])
    );
    assert_eq!(rows(&configs)[0]["workspace_id"], json!(ws_b));
    assert_eq!(rows(&configs)[0]["actor"]["created_by"], Value::Null);

    // The bootstrap is the system's: no actor.
    let boot = audit(&url, ADMIN_KEY, "resource_type=organisation").await;
    assert_eq!(boot["total"], 1);
    assert_eq!(rows(&boot)[0]["actor"], Value::Null);
    assert_eq!(rows(&boot)[0]["action"], "created");

    // A workspace key sees its own workspace's entries only, and cannot widen.
    let mine = audit(&url, &team, "page_size=1000").await;
    assert!(
        rows(&mine).iter().all(|r| r["workspace_id"] == json!(ws_a)),
        "{mine}"
    );
    assert!(
        rows(&mine)
            .iter()
            .any(|r| r["resource_id"] == json!(team_id) && r["action"] == "created"),
        "its own key's creation, by the admin, in its workspace: {mine}"
    );
    assert_eq!(mine["total"].as_u64().unwrap() as usize, rows(&mine).len());
    assert!(!rows(&mine).iter().any(|r| r["resource_id"] == json!(other)));
    let (s, v) = as_key(
        &url,
        &team,
        "GET",
        &format!("/audit-logs?workspace_id={ws_b}"),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = as_key(&url, &blind, "GET", "/audit-logs", None).await;
    assert_eq!(s, 403, "without audit_logs.list: {v}");

    // Filters.
    let by_actor = audit(&url, ADMIN_KEY, &format!("actor={team_id}")).await;
    assert_eq!(by_actor["total"], 3, "{by_actor}");
    let deleted = audit(&url, ADMIN_KEY, "action=deleted&resource_type=config").await;
    assert_eq!(deleted["total"], 1);
    let of_cfg = audit(&url, ADMIN_KEY, &format!("resource_id={cfg}")).await;
    assert_eq!(of_cfg["total"], 3);
    let in_b = audit(&url, ADMIN_KEY, &format!("workspace_id={ws_b}")).await;
    assert!(rows(&in_b).iter().any(|r| r["resource_id"] == json!(other)));
    assert!(rows(&in_b).iter().all(|r| r["workspace_id"] == json!(ws_b)));
    let future = audit(&url, ADMIN_KEY, "start_time=2100-01-01T00:00:00Z").await;
    assert_eq!(future["total"], 0);
    let past = audit(&url, ADMIN_KEY, "end_time=2000-01-01T00:00:00Z").await;
    assert_eq!(past["total"], 0);
    let all = audit(
        &url,
        ADMIN_KEY,
        "start_time=2000-01-01T00:00:00Z&end_time=2100-01-01T00:00:00Z&page_size=1000",
    )
    .await;
    assert!(all["total"].as_u64().unwrap() >= 12, "{all}");
    for bad in [
        "resource_type=nope",
        "action=exploded",
        "start_time=yesterday",
        "page_size=0",
        "start_time=2030-01-01T00:00:00Z&end_time=2020-01-01T00:00:00Z",
    ] {
        let (s, v) = as_key(&url, ADMIN_KEY, "GET", &format!("/audit-logs?{bad}"), None).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }

    // Pagination: pages partition the list, snake_case or camelCase.
    let first = audit(&url, ADMIN_KEY, "page_size=3&current_page=0").await;
    let second = audit(&url, ADMIN_KEY, "pageSize=3&currentPage=1").await;
    assert_eq!(first["total"], all["total"]);
    let ids = |v: &Value| rows(v).iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    let whole = ids(&all);
    assert_eq!([ids(&first), ids(&second)].concat(), whole[..6].to_vec());

    // No secret in any row: neither in what is served nor in the store's table.
    let secrets = secrets(&server);
    let served = all.to_string();
    let raw = raw_audit_table(&server);
    assert!(raw.contains(&cfg), "the raw table was read");
    for s in secrets.iter().chain([&team, &blind]) {
        assert!(
            !served.contains(s.as_str()),
            "a secret is served in the audit logs"
        );
        assert!(
            !raw.contains(s.as_str()),
            "a secret is stored in the audit_log table"
        );
    }
}

/// Every cell of the SQLite `audit_log` table, as text.
fn raw_audit_table(server: &Server) -> String {
    let path = server.dir.path().join("usage.sqlite");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("SELECT * FROM audit_log").unwrap();
    let n = stmt.column_count();
    let mut out = String::new();
    let mut q = stmt.query([]).unwrap();
    while let Some(row) = q.next().unwrap() {
        for i in 0..n {
            let v: rusqlite::types::Value = row.get(i).unwrap();
            out.push_str(&format!("{v:?}\t"));
        }
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_is_the_same_after_a_restart() {
    use crate::process::{signal, spawn};
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path()).await;
    let ws = harness::create_workspace(&p.url, "kept").await;
    harness::admin_call(
        &p.url,
        "PUT",
        &format!("/admin/workspaces/{ws}"),
        Some(json!({"name": "kept 2"})),
    )
    .await;
    let k = harness::completions_key(&p.url, &ws, "k").await;
    let k = k["id"].as_str().unwrap().to_owned();
    harness::admin_call(&p.url, "DELETE", &format!("/api-keys/{k}"), None).await;
    let before = audit(&p.url, ADMIN_KEY, "page_size=1000").await;
    let of_key = audit(&p.url, ADMIN_KEY, &format!("resource_id={k}")).await;
    assert_eq!(
        rows(&of_key)
            .iter()
            .map(|r| r["action"].clone())
            .collect::<Vec<_>>(),
        vec![json!("deleted"), json!("created")]
    );
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success(), "SIGTERM exits cleanly");

    let mut p = spawn(dir.path()).await;
    assert_eq!(audit(&p.url, ADMIN_KEY, "page_size=1000").await, before);
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success());
}

/// The config log loses its tail (a cut after the audit trail took it in): the server starts,
/// the trail keeps the change it recorded, and later changes are recorded too (the trail reads
/// on from the log's end rather than waiting past it or refusing to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_reads_on_after_the_config_log_lost_its_tail() {
    use crate::process::{signal, spawn};
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(dir.path()).await;
    let ws = harness::create_workspace(&p.url, "lost").await;
    assert_eq!(
        audit(&p.url, ADMIN_KEY, &format!("resource_id={ws}")).await["total"],
        1
    );
    let mut p = p;
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success());
    let log = dir.path().join("log/config.log");
    crate::binary::cut_tail(&log, 5);

    let mut p = spawn(dir.path()).await;
    let (s, _, _) = call(
        "GET",
        &format!("{}/v1/admin/workspaces/{ws}", p.url),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(s, 404, "the log lost the workspace's creation");
    assert_eq!(
        audit(&p.url, ADMIN_KEY, &format!("resource_id={ws}")).await["total"],
        1,
        "the trail keeps the change it recorded"
    );
    let again = harness::create_workspace(&p.url, "again").await;
    let got = audit(&p.url, ADMIN_KEY, &format!("resource_id={again}")).await;
    assert_eq!(got["total"], 1, "a later change is recorded: {got}");
    signal(&p, "TERM");
    assert!(p.child.wait().unwrap().success());
}
