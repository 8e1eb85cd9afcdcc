//! The web console as an attacker tries it: forms posted without (or with another session's)
//! CSRF token, a sign-in forged from another site, a workspace session reaching for another
//! workspace, the session cookie's flags, secrets in pages or assets, keys in URLs, sign-in
//! guessing, sessions that outlive their key, sign-out or their time, and hostile input.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, COOKIE, SET_COOKIE};
use serde_json::json;

use crate::harness::{self, eventually, Server};

/// A browser without a browser: keeps the console's cookies, follows no redirects.
pub(crate) struct Browser {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
    /// Extra headers sent on every request (e.g. `x-forwarded-proto`).
    extra: Vec<(&'static str, &'static str)>,
}

pub(crate) struct Page {
    pub status: u16,
    headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The value of the hidden field `name` on this page.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body))
            + marker.len();
        self.body[at..].split('"').next().unwrap().to_owned()
    }

    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or("")
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser::at(&server.url)
    }

    /// A browser for the console at `base` (a server's URL).
    pub(crate) fn at(base: &str) -> Browser {
        Browser {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            extra: vec![],
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let mut req = req;
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(COOKIE, jar.join("; "));
        }
        for (k, v) in &self.extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let headers = resp.headers().clone();
        for c in headers.get_all(SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), v.into());
            }
        }
        Page {
            status: resp.status().as_u16(),
            headers,
            body: resp.text().await.unwrap(),
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.client.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    pub(crate) async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/console/login").await;
        let token = form.field("_signin");
        self.post("/console/login", &[("_signin", &token), ("api_key", key)])
            .await
    }

    /// The CSRF token of the signed-in session (from any page).
    async fn csrf(&mut self) -> String {
        self.get("/console/keys").await.field("_csrf")
    }
}

/// The text of the element with `id` on a page (a figure of the overview).
fn figure(body: &str, id: &str) -> String {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &body[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..].split('<').next().unwrap().to_owned()
}

pub(crate) fn signed_in(p: &Page) -> bool {
    p.status == 303 && p.location() == "/console"
}

async fn key_count(server: &Server) -> usize {
    server.state().api_keys.len()
}

#[tokio::test]
async fn a_form_without_this_sessions_csrf_token_changes_nothing() {
    let server = harness::start().await;
    let ws = harness::create_workspace(&server.url, "team").await;
    let mut a = Browser::new(&server);
    assert!(signed_in(&a.sign_in(&server.admin_key).await));
    let mut b = Browser::new(&server);
    assert!(signed_in(&b.sign_in(&server.admin_key).await));
    let before = key_count(&server).await;
    let form = |csrf: &'static str| {
        vec![
            ("_csrf", csrf),
            ("name", "sneaky"),
            ("key_type", "workspace/service"),
            ("scopes", "completions.write"),
        ]
    };
    let mut none = form("");
    none.retain(|(k, _)| *k != "_csrf");
    none.push(("workspace_id", &ws));
    let refused = a.post("/console/keys", &none).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("CSRF"));
    let mut wrong = form("not-the-token");
    wrong.push(("workspace_id", &ws));
    assert_eq!(a.post("/console/keys", &wrong).await.status, 403);
    // Another session's token is not this session's.
    let theirs = b.csrf().await;
    let mut other = vec![("_csrf", theirs.as_str())];
    other.extend(form("").into_iter().skip(1));
    other.push(("workspace_id", &ws));
    assert_eq!(a.post("/console/keys", &other).await.status, 403);
    // Sign-out and every other action need it too.
    assert_eq!(a.post("/console/logout", &[]).await.status, 403);
    assert_eq!(key_count(&server).await, before, "nothing was created");
    // With its own token the same form works: the refusals were the token's.
    let mine = a.csrf().await;
    let mut ok = vec![("_csrf", mine.as_str())];
    ok.extend(form("").into_iter().skip(1));
    ok.push(("workspace_id", &ws));
    let made = a.post("/console/keys", &ok).await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("shown this once"));
    assert_eq!(key_count(&server).await, before + 1);
}

#[tokio::test]
async fn a_sign_in_forged_from_another_site_is_refused() {
    let server = harness::start().await;
    let mut b = Browser::new(&server);
    // No sign-in token (a cross-site form cannot read or set the cookie).
    let p = b
        .post(
            "/console/login",
            &[("_signin", "guess"), ("api_key", &server.admin_key)],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(!b.cookies.contains_key("tg_session"));
    // A token that is not the cookie's.
    b.get("/console/login").await;
    let p = b
        .post(
            "/console/login",
            &[("_signin", "guess"), ("api_key", &server.admin_key)],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(!b.cookies.contains_key("tg_session"));
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_behind_tls() {
    let server = harness::start().await;
    let mut b = Browser::new(&server);
    let p = b.sign_in(&server.admin_key).await;
    let set: Vec<&str> = p
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set.iter().find(|c| c.starts_with("tg_session=")).unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(session.contains(flag), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "plain HTTP: a Secure cookie would never come back"
    );
    let mut tls = Browser::new(&server);
    tls.extra.push(("x-forwarded-proto", "https"));
    let p = tls.sign_in(&server.admin_key).await;
    let set: Vec<&str> = p
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        set.iter()
            .any(|c| c.starts_with("tg_session=") && c.contains("; Secure")),
        "{set:?}"
    );
    // The secret never comes back: not in a cookie, not on a page.
    assert!(!set.iter().any(|c| c.contains(&server.admin_key)));
    let home = b.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(!home.body.contains(&server.admin_key));
}

#[tokio::test]
async fn every_console_answer_carries_the_strict_policy() {
    let server = harness::start().await;
    let mut b = Browser::new(&server);
    let mut pages = vec![b.get("/console/login").await, b.get("/console").await];
    b.sign_in(&server.admin_key).await;
    for path in [
        "/console",
        "/console/keys",
        "/console/analytics",
        "/console/assets/console.js",
        "/console/keys/nope",
    ] {
        pages.push(b.get(path).await);
    }
    for p in &pages {
        let csp = p.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(p.headers["x-frame-options"], "DENY");
        assert_eq!(p.headers["x-content-type-options"], "nosniff");
        assert!(
            !p.body.contains("<script>") && !p.body.contains(" style=\""),
            "no inline script or style"
        );
    }
}

/// A workspace key with admin scopes over its own workspace.
async fn workspace_admin(server: &Server, ws: &str) -> String {
    let scopes = [
        "completions.write",
        "workspaces.read",
        "workspaces.list",
        "workspace_service_api_keys.create",
        "workspace_service_api_keys.read",
        "workspace_service_api_keys.update",
        "workspace_service_api_keys.delete",
        "workspace_service_api_keys.list",
        "configs.create",
        "configs.read",
        "configs.list",
        "configs.update",
        "providers.list",
        "providers.read",
        "workspace_integrations.list",
        "workspace_integrations.read",
        "analytics.view",
    ];
    let k = server
        .admin(
            "POST",
            "/api-keys/workspace/service",
            Some(json!({"name": "ws admin", "workspace_id": ws, "scopes": scopes})),
        )
        .await;
    k["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_workspace_session_sees_and_changes_only_its_workspace() {
    let mock = crate::mock::start().await;
    let server = harness::start().await;
    let (mine, _) = server.tenant(&mock.url, "mine").await;
    let (theirs, their_key) = server.tenant(&mock.url, "theirs").await;
    let their_id = server
        .state()
        .api_keys
        .values()
        .find(|k| k.workspace_id.as_deref() == Some(theirs.as_str()) && k.name == "svc")
        .map(|k| k.id.clone())
        .unwrap();
    // Traffic in both workspaces, so the analytics pages have something to leak.
    let body =
        json!({"model": "@theirs/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        harness::post_chat(&server, &their_key, &[], &body).await.0,
        200
    );
    let admin = workspace_admin(&server, &mine).await;
    let mut b = Browser::new(&server);
    assert!(signed_in(&b.sign_in(&admin).await));
    let keys = b.get("/console/keys").await;
    assert_eq!(keys.status, 200);
    assert!(
        !keys.body.contains(&their_id),
        "another workspace's key is listed"
    );
    assert!(
        keys.body.contains(&format!("workspace {mine}")),
        "the session says which workspace"
    );
    let p = b.get(&format!("/console/keys/{their_id}")).await;
    assert_eq!(p.status, 404, "{}", p.body);
    // The lists' new search narrows what the key may list; it never widens it.
    let (s, _, v) = harness::call(
        "GET",
        &format!("{}/v1/api-keys?search={their_id}", server.url),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((s, v["total"].as_u64()), (200, Some(0)), "{v}");
    let p = b.get(&format!("/console/keys?search={their_id}")).await;
    assert!(p.body.contains("No keys match."), "{}", p.body);
    let csrf = b.csrf().await;
    let before = server.state().api_keys[&their_id].clone();
    for path in ["", "/reset", "/delete"] {
        let p = b
            .post(
                &format!("/console/keys/{their_id}{path}"),
                &[("_csrf", &csrf), ("name", "taken over")],
            )
            .await;
        assert_eq!(p.status, 404, "{path}: {}", p.body);
    }
    assert_eq!(
        *server.state().api_keys[&their_id],
        *before,
        "their key is unchanged"
    );
    // Making a key in their workspace is refused, whatever the form says.
    let n = key_count(&server).await;
    let p = b
        .post(
            "/console/keys",
            &[
                ("_csrf", &csrf),
                ("name", "x"),
                ("key_type", "workspace/service"),
                ("workspace_id", &theirs),
                ("scopes", "completions.write"),
            ],
        )
        .await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert_eq!(key_count(&server).await, n);
    // Their spend is not in the analytics or the overview, and naming their workspace is refused.
    let slug = server.state().workspaces[&theirs].slug.clone();
    let a = b.get(&format!("/console/analytics?workspace={slug}")).await;
    assert!(
        a.body
            .contains("workspace key can only act on its own workspace"),
        "{}",
        a.body
    );
    let csv = b
        .get("/console/analytics.csv?table=groups&by=workspace")
        .await;
    assert_eq!(csv.status, 200);
    assert!(!csv.body.contains(&theirs), "{}", csv.body);
    let home = b.get("/console").await;
    assert_eq!(figure(&home.body, "spend-today"), "$0", "their spend shows");
    // Another workspace's page, and the organisation-only alerts, stay closed.
    assert_eq!(
        b.get(&format!("/console/workspaces/{theirs}")).await.status,
        404
    );
    let alerts = b.get("/console/alerts").await;
    assert!(alerts.body.contains("organisation key"), "{}", alerts.body);
}

#[tokio::test]
async fn a_key_in_a_url_or_header_is_no_session_and_data_plane_keys_cannot_sign_in() {
    let mock = crate::mock::start().await;
    let server = harness::start().await;
    let (_, data_key) = server.tenant(&mock.url, "t").await;
    let mut b = Browser::new(&server);
    let p = b
        .get(&format!("/console?api_key={}", server.admin_key))
        .await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));
    let req = b
        .client
        .get(format!("{}/console", server.url))
        .header("x-portkey-api-key", &server.admin_key);
    let p = b.send(req).await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));
    let p = b.sign_in(&data_key).await;
    assert_eq!(p.status, 403, "{}", p.body);
    assert!(p.body.contains("no admin scopes"));
    let p = b.sign_in("tg_not_a_real_key").await;
    assert_eq!(p.status, 401);
    assert!(!b.cookies.contains_key("tg_session"));
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let server = harness::start_with(|s| s.set("console_signins_per_minute", "3").unwrap()).await;
    // Only failures count: signing in again and again locks no one out.
    for _ in 0..5 {
        assert!(signed_in(
            &Browser::new(&server).sign_in(&server.admin_key).await
        ));
    }
    let mut b = Browser::new(&server);
    let mut statuses = vec![];
    for _ in 0..4 {
        statuses.push(b.sign_in("tg_wrong_guess").await.status);
    }
    // A minute boundary may fall between the attempts: then the count starts over once.
    assert!(
        statuses.contains(&429) || statuses == [401; 4],
        "{statuses:?}"
    );
    if statuses.contains(&429) {
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            3,
            "{statuses:?}"
        );
        // Even the right key is refused while the allowance is spent.
        let p = b.sign_in(&server.admin_key).await;
        if p.status == 429 {
            assert!(p.headers.contains_key("retry-after"));
            assert!(!b.cookies.contains_key("tg_session"));
        }
    }
}

#[tokio::test]
async fn a_session_ends_with_sign_out_its_time_and_its_key() {
    let server = harness::start_with(|s| s.set("console_session_ttl_ms", "1500").unwrap()).await;
    let ws = harness::create_workspace(&server.url, "team").await;
    // Sign-out ends the session on the server: the old cookie opens nothing.
    let mut b = Browser::new(&server);
    b.sign_in(&server.admin_key).await;
    let cookie = b.cookies["tg_session"].clone();
    let csrf = b.csrf().await;
    let out = b.post("/console/logout", &[("_csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/console/login"));
    b.cookies.insert("tg_session".into(), cookie);
    assert_eq!(b.get("/console").await.location(), "/console/login");
    // It ends at its time.
    let mut t = Browser::new(&server);
    t.sign_in(&server.admin_key).await;
    assert_eq!(t.get("/console/keys").await.status, 200);
    let ended = eventually(Duration::from_millis(100), || {
        let mut probe = Browser::new(&server);
        probe.cookies = t.cookies.clone();
        async move { probe.get("/console/keys").await.location() == "/console/login" }
    })
    .await;
    assert!(ended, "the session outlived console_session_ttl_ms");
    // Deleting its key ends it at once.
    let admin = workspace_admin(&server, &ws).await;
    let mut k = Browser::new(&server);
    assert!(signed_in(&k.sign_in(&admin).await));
    assert_eq!(k.get("/console/keys").await.status, 200);
    let id = server.key_named("ws admin").id.clone();
    server
        .admin("DELETE", &format!("/api-keys/{id}"), None)
        .await;
    let ended = k.get("/console/keys").await;
    assert_eq!(ended.location(), "/console/login");
    assert!(
        !k.cookies.contains_key("tg_session"),
        "the dead session's cookie is removed"
    );
    // And the sign-in page is served, not a redirect back (a loop until the session's end).
    k.cookies.insert("tg_session".into(), "stale".into());
    let form = k.get("/console/login").await;
    assert_eq!(form.status, 200, "{}", form.location());
}

#[tokio::test]
async fn no_page_or_asset_shows_a_secret_and_names_are_escaped() {
    let mock = crate::mock::start().await;
    let server = harness::start().await;
    let (ws, data_key) = server.tenant(&mock.url, "t").await;
    let hostile = "<script>alert(1)</script>";
    server
        .admin(
            "POST",
            "/integrations",
            Some(
                json!({"name": hostile, "slug": "hostile", "ai_provider_id": "anthropic",
        "key": "sk-ant-very-secret-credential-42"}),
            ),
        )
        .await;
    server
        .admin(
            "PUT",
            &format!("/admin/workspaces/{ws}"),
            Some(json!({"name": hostile})),
        )
        .await;
    let body = json!({"model": "@t/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        harness::post_chat(&server, &data_key, &[], &body).await.0,
        200
    );
    let mut b = Browser::new(&server);
    b.sign_in(&server.admin_key).await;
    let key_id = server.key_named("svc").id.clone();
    let paths = [
        "/console".to_owned(),
        "/console/analytics".into(),
        "/console/keys".into(),
        format!("/console/keys/{key_id}"),
        "/console/integrations?tab=connected".into(),
        "/console/integrations/hostile".into(),
        "/console/integrations/t".into(),
        "/console/workspaces".into(),
        format!("/console/workspaces/{ws}"),
        "/console/providers".into(),
        "/console/configs".into(),
        "/console/alerts".into(),
        "/console/audit".into(),
        "/console/analytics.csv?table=groups&by=key".into(),
        "/console/assets/console.js".into(),
        "/console/assets/console.css".into(),
        "/favicon.ico".into(),
    ];
    let secrets = [
        server.admin_key.as_str(),
        data_key.as_str(),
        "sk-ant-very-secret-credential-42",
        "sk-upstream-secret-1234567890",
    ];
    for path in &paths {
        let p = b.get(path).await;
        assert_eq!(p.status, 200, "{path}: {}", p.body);
        for s in secrets {
            assert!(!p.body.contains(s), "{path} shows a secret");
        }
        assert!(!p.body.contains(hostile), "{path} renders a name as markup");
    }
    let ws_page = b.get("/console/workspaces").await;
    assert!(ws_page
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[tokio::test]
async fn hostile_forms_get_clear_errors_and_change_nothing() {
    let server = harness::start_with(|s| s.set("max_body_bytes", "4096").unwrap()).await;
    let ws = harness::create_workspace(&server.url, "team").await;
    let mut b = Browser::new(&server);
    b.sign_in(&server.admin_key).await;
    let csrf = b.csrf().await;
    let n = key_count(&server).await;
    let configs = server.state().configs.len();
    let big = "x".repeat(10_000);
    let p = b
        .post("/console/keys", &[("_csrf", &csrf), ("name", &big)])
        .await;
    assert_eq!(p.status, 413);
    // A budget below the minimum: the API's words, next to the field, the form kept.
    let p = b
        .post(
            "/console/keys",
            &[
                ("_csrf", &csrf),
                ("name", "k"),
                ("key_type", "workspace/service"),
                ("workspace_id", &ws),
                ("scopes", "completions.write"),
                ("budget_on", "on"),
                ("credit_limit", "0.5"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert!(p.body.contains("id=\"err-credit_limit\""), "{}", p.body);
    let p = b
        .post(
            "/console/keys",
            &[
                ("_csrf", &csrf),
                ("name", "k"),
                ("key_type", "workspace/service"),
                ("workspace_id", &ws),
                ("metadata", "{not json"),
            ],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("id=\"err-metadata\""), "{}", p.body);
    let p = b
        .post(
            "/console/configs",
            &[
                ("_csrf", &csrf),
                ("name", "c"),
                ("workspace_id", &ws),
                ("config", "[1,"),
            ],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(
        p.body.contains("id=\"err-config\"") && p.body.contains("[1,"),
        "the text is kept: {}",
        p.body
    );
    let p = b
        .post(
            "/console/integrations",
            &[
                ("_csrf", &csrf),
                ("name", "x"),
                ("ai_provider_id", "no-such"),
            ],
        )
        .await;
    assert_eq!(p.status, 400, "{}", p.body);
    assert_eq!(key_count(&server).await, n);
    assert_eq!(server.state().configs.len(), configs);
    // A page number past the end of numbers is the last page, not a panic.
    let p = b
        .get("/console/keys?current_page=18446744073709551615")
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    // A range of a century is not drawn as 47,000 bars; a malformed one gets the API's words.
    for page in ["/console", "/console/analytics"] {
        let p = b
            .get(&format!("{page}?from=1970-01-01&to=2100-01-01"))
            .await;
        assert!(
            p.body.contains("at most 400 days") && p.body.len() < 20_000,
            "{page}"
        );
        let p = b.get(&format!("{page}?from=yesterday&to=2100-01-01")).await;
        assert!(
            p.body.contains("is not an ISO-8601 timestamp"),
            "{page}: {}",
            p.body
        );
    }
}

#[tokio::test]
async fn a_budget_set_by_the_organisation_is_not_lifted_from_a_workspace_session() {
    let server = harness::start().await;
    let ws = harness::create_workspace(&server.url, "team").await;
    let governed = server
        .admin("POST", "/api-keys/workspace/service", Some(json!({"name": "governed", "workspace_id": ws,
            "scopes": ["completions.write"], "usage_limits": {"credit_limit": 5}, "rate_limits": [{"type": "requests", "unit": "rpm", "value": 10}]})))
        .await;
    let id = governed["id"].as_str().unwrap().to_owned();
    let before = server.state().api_keys[&id].clone();
    let admin = workspace_admin(&server, &ws).await;
    let mut w = Browser::new(&server);
    assert!(signed_in(&w.sign_in(&admin).await));
    let csrf = w.csrf().await;
    for form in [
        vec![("_csrf", csrf.as_str()), ("remove_budget", "on")],
        vec![("_csrf", csrf.as_str()), ("remove_rate", "on")],
    ] {
        let p = w.post(&format!("/console/keys/{id}"), &form).await;
        assert_eq!(p.status, 403, "{}", p.body);
        assert!(
            p.body.contains("set with an organisation key"),
            "{}",
            p.body
        );
    }
    assert_eq!(
        w.post(&format!("/console/keys/{id}/reset"), &[("_csrf", &csrf)])
            .await
            .status,
        403
    );
    assert_eq!(
        *server.state().api_keys[&id],
        *before,
        "the limits still bind"
    );
    // The organisation removes it, and sets a new one: never an edit in place.
    let mut o = Browser::new(&server);
    o.sign_in(&server.admin_key).await;
    let csrf = o.csrf().await;
    let p = o
        .post(
            &format!("/console/keys/{id}"),
            &[("_csrf", &csrf), ("remove_budget", "on")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(server.state().api_keys[&id].usage_limits.is_none());
    let p = o
        .post(
            &format!("/console/keys/{id}"),
            &[("_csrf", &csrf), ("budget_on", "on"), ("credit_limit", "7")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let limit = server.state().api_keys[&id].usage_limits.clone().unwrap();
    assert_eq!(limit.credit_limit, rust_decimal::Decimal::from(7));
}

#[tokio::test]
async fn a_form_of_too_many_fields_or_bytes_is_refused_before_it_is_used() {
    // The API's body limit (10 MiB by default) is far above any console form: a form of a
    // million repeated fields once cost time quadratic in their number on a serving thread.
    let server = harness::start().await;
    let mut b = Browser::new(&server);
    b.sign_in(&server.admin_key).await;
    let csrf = b.csrf().await;
    let many: Vec<(&str, &str)> = std::iter::once(("_csrf", csrf.as_str()))
        .chain(std::iter::repeat_n(("model", "a"), 6_000))
        .collect();
    let p = b.post("/console/integrations/x/models", &many).await;
    assert_eq!(p.status, 413, "{}", p.body);
    let big = "x".repeat(2 << 20);
    let p = b
        .post("/console/keys", &[("_csrf", &csrf), ("name", &big)])
        .await;
    assert_eq!(p.status, 413);
    assert_eq!(key_count(&server).await, 1, "only the admin key");
}

/// The integration `up`'s access for workspace `ws`: (enabled, its budget's limit, its rate limit).
fn access_of(server: &Server, ws: &str) -> Option<(bool, Option<String>, Option<u64>)> {
    let state = server.state();
    let a = state.integration("up")?.workspaces.get(ws)?.clone();
    Some((
        a.enabled,
        a.usage_limits.map(|u| u.credit_limit.to_string()),
        a.rate_limits.first().map(|r| r.value),
    ))
}

#[tokio::test]
async fn saving_provisioning_leaves_what_the_form_did_not_show_or_change() {
    let server = harness::start().await;
    let a = harness::create_workspace(&server.url, "A").await;
    let b_ws = harness::create_workspace(&server.url, "B").await;
    server.admin("POST", "/integrations", Some(json!({"name": "up", "slug": "up", "ai_provider_id": "openai",
        "key": "sk-x-0123456789", "global_workspace_access": {"enabled": true,
        "usage_limits": [{"credit_limit": 100}], "rate_limits": [{"type": "requests", "unit": "rpm", "value": 60}]}}))).await;
    server
        .admin(
            "PUT",
            "/integrations/up/workspaces",
            Some(json!({"workspaces": [{"id": b_ws, "enabled": false}]})),
        )
        .await;
    let global = server
        .state()
        .integration("up")
        .unwrap()
        .global_workspace_access
        .clone();
    assert_eq!(
        access_of(&server, &a),
        Some((true, Some("100".into()), Some(60)))
    );
    let mut br = Browser::new(&server);
    br.sign_in(&server.admin_key).await;
    let page = br.get("/console/integrations/up").await;
    assert!(
        page.body.contains("name=\"global_was\""),
        "the page says All Workspaces is on"
    );
    let csrf = page.field("_csrf");
    // What the page posts when only workspace A's row gets a reset (B shown unticked, as it is).
    let reset = format!("w.{a}.reset_usage");
    let p = br
        .post(
            "/console/integrations/up/workspaces",
            &[
                ("_csrf", &csrf),
                ("shown", &a),
                ("was", &a),
                ("enabled", &a),
                (reset.as_str(), "on"),
                ("shown", &b_ws),
                ("global_was", "on"),
                ("global_on", "on"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        server
            .state()
            .integration("up")
            .unwrap()
            .global_workspace_access,
        global,
        "All Workspaces keeps its limits"
    );
    assert_eq!(
        access_of(&server, &b_ws).map(|x| x.0),
        Some(false),
        "B stays off"
    );
    // "Apply to every workspace where this integration is enabled" reaches the rows left as
    // they were: A's own limits give way to the global ones.
    server
        .admin(
            "PUT",
            "/integrations/up/workspaces",
            Some(json!({"workspaces": [{"id": a, "enabled": true,
        "usage_limits": null, "rate_limits": []}]})),
        )
        .await;
    server
        .admin(
            "PUT",
            "/integrations/up/workspaces",
            Some(json!({"workspaces": [{"id": a, "enabled": true,
        "usage_limits": [{"credit_limit": 7}]}]})),
        )
        .await;
    assert_eq!(access_of(&server, &a), Some((true, Some("7".into()), None)));
    let p = br
        .post(
            "/console/integrations/up/workspaces",
            &[
                ("_csrf", &csrf),
                ("shown", &a),
                ("was", &a),
                ("enabled", &a),
                ("shown", &b_ws),
                ("global_was", "on"),
                ("global_on", "on"),
                ("apply_all", "on"),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(
        access_of(&server, &a),
        Some((true, Some("100".into()), Some(60)))
    );
    assert_eq!(
        access_of(&server, &b_ws).map(|x| x.0),
        Some(false),
        "B stays off"
    );
}

#[tokio::test]
async fn an_analytics_only_key_sees_figures_not_the_names_of_what_it_may_not_list() {
    let mock = crate::mock::start().await;
    let server = harness::start().await;
    let (_, data_key) = server.tenant(&mock.url, "t").await;
    let body = json!({"model": "@t/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        harness::post_chat(&server, &data_key, &[], &body).await.0,
        200
    );
    server.admin("POST", "/api-keys/workspace/service", Some(json!({"name": "secretly-named", "workspace_id": server.state()
        .workspaces.values().find(|w| w.name == "team t").unwrap().id, "scopes": ["completions.write"], "usage_limits": {"credit_limit": 5}}))).await;
    let viewer = server
        .admin(
            "POST",
            "/api-keys/organisation/service",
            Some(json!({"name": "finance", "scopes": ["analytics.view"]})),
        )
        .await;
    let mut b = Browser::new(&server);
    assert!(signed_in(&b.sign_in(viewer["key"].as_str().unwrap()).await));
    let svc = server.key_named("svc").id.clone();
    let home = b.get("/console").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains(&svc), "the figures are there, by id");
    for name in ["secretly-named", ">svc<", "team t", "Bootstrap admin key"] {
        assert!(!home.body.contains(name), "the overview names {name}");
    }
    let csv = b.get("/console/analytics.csv?table=groups&by=key").await;
    assert!(csv.body.contains(&format!("{svc},{svc},")), "{}", csv.body);
}
