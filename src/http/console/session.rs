//! Console sessions: an API key exchanged at sign-in for a random session id, kept server-side.
//!
//! The browser holds only the session id, in an HttpOnly, SameSite=Strict cookie (Secure when
//! the request came over TLS), never the key. The server keeps, per session, the hash of the
//! key's secret (never the secret), its CSRF token and its end; the map is keyed by the hash of
//! the session id, so a memory dump holds neither. Each request authenticates the key again
//! from its hash ([`auth::authenticate_hash`]), so deleting, expiring or narrowing a key ends or
//! narrows its sessions at once. Sessions live in the process that made them: behind a load
//! balancer over several gateways, pin a console client to one (sticky sessions).
//!
//! Sign-in attempts are counted per client address per minute (`console_signins_per_minute`);
//! the sign-in form carries its own CSRF token (a cookie and a field that must match), so
//! another site cannot sign a browser in with the attacker's key.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use maud::{html, Markup};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::form::Form;
use super::layout;
use crate::control::Caller;
use crate::domain::Millis;
use crate::http::AppState;
use crate::proxy::auth;
use crate::settings::Settings;

const COOKIE: &str = "tg_session";
const SIGNIN_COOKIE: &str = "tg_signin";
/// At most this many sessions are held; past it the one ending soonest goes.
const MAX_SESSIONS: usize = 100_000;
/// At most this many client addresses are counted; past it the counts start over.
const MAX_CLIENTS: usize = 100_000;

/// The address of the client of a request, put in its extensions by the connection (console
/// routes only).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

struct Entry {
    key_hash: String,
    csrf: String,
    ends: Millis,
}

/// Every console session of this process, and the sign-in attempts per client address.
pub struct Sessions {
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
    attempts: Mutex<HashMap<IpAddr, (i64, u32)>>,
    ttl_ms: i64,
    per_minute: u32,
}

impl Sessions {
    pub fn new(settings: &Settings) -> Self {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            ttl_ms: i64::try_from(settings.console_session_ttl.as_millis()).unwrap_or(i64::MAX),
            per_minute: settings.console_signins_per_minute,
        }
    }

    /// A new session for the key whose secret hashes to `key_hash`: its id and CSRF token.
    fn open(&self, key_hash: String, now: Millis) -> (String, String) {
        let (id, csrf) = (random_token(), random_token());
        let mut all = self.sessions.lock();
        all.retain(|_, e| e.ends > now);
        if all.len() >= MAX_SESSIONS {
            if let Some(k) = all.iter().min_by_key(|(_, e)| e.ends).map(|(k, _)| *k) {
                all.remove(&k);
            }
        }
        let entry = Entry {
            key_hash,
            csrf: csrf.clone(),
            ends: Millis(now.0.saturating_add(self.ttl_ms)),
        };
        all.insert(digest(&id), entry);
        (id, csrf)
    }

    /// The key hash and CSRF token of a live session.
    fn find(&self, id: &str, now: Millis) -> Option<(String, String)> {
        let mut all = self.sessions.lock();
        let k = digest(id);
        match all.get(&k) {
            Some(e) if e.ends > now => Some((e.key_hash.clone(), e.csrf.clone())),
            Some(_) => {
                all.remove(&k);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        self.sessions.lock().remove(&digest(id));
    }

    /// Whether `ip` has spent this minute's allowance of failed sign-ins.
    fn refused(&self, ip: IpAddr, now: Millis) -> bool {
        let minute = now.0.div_euclid(60_000);
        self.attempts
            .lock()
            .get(&client(ip))
            .is_some_and(|(m, n)| *m == minute && *n >= self.per_minute)
    }

    /// Counts a failed sign-in from `ip`. Past [`MAX_CLIENTS`] addresses in one minute the
    /// counts start over (they cannot grow without bound).
    fn failed(&self, ip: IpAddr, now: Millis) {
        let minute = now.0.div_euclid(60_000);
        let ip = client(ip);
        let mut all = self.attempts.lock();
        if all.len() >= MAX_CLIENTS && !all.contains_key(&ip) {
            all.retain(|_, (m, _)| *m == minute);
            if all.len() >= MAX_CLIENTS {
                all.clear();
            }
        }
        let (m, n) = all.entry(ip).or_insert((minute, 0));
        if *m != minute {
            (*m, *n) = (minute, 0);
        }
        *n = n.saturating_add(1);
    }
}

/// The client an address counts for: itself for IPv4, its /64 for IPv6 (one host is handed a
/// whole /64, so counting single addresses would give it 2^64 allowances).
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the console's paths; `max_age` 0 removes.
fn set_cookie(name: &str, value: &str, max_age_s: i64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let v = format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The signed-in person of a console request: the caller (the key, authenticated again) and the
/// session's CSRF token, which every form of the page carries.
pub struct Signed {
    pub caller: Caller,
    pub csrf: String,
}

impl Signed {
    /// The live session the request's cookie names, its key authenticated again; a session whose
    /// key no longer authenticates (deleted, expired, revoked) is ended.
    fn of(headers: &HeaderMap, app: &AppState) -> Option<Signed> {
        let id = cookie(headers, COOKIE)?;
        let now = Millis::now();
        let (key_hash, csrf) = app.console.find(id, now)?;
        let key = auth::authenticate_hash(&app.ledger.state(), &key_hash, now);
        let Ok(key) = key else {
            app.console.close(id);
            return None;
        };
        Some(Signed {
            caller: Caller { key },
            csrf,
        })
    }

    /// The workspace the signed-in key is pinned to, if any.
    pub fn workspace(&self) -> Option<&str> {
        self.caller.key.workspace_id.as_deref()
    }
}

/// No live session: a page sends the browser to sign in; a fragment answers 401. Either way a
/// dead session's cookie is removed.
pub struct SignIn {
    fragment: bool,
    tls: bool,
}

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        let mut resp = if self.fragment {
            (StatusCode::UNAUTHORIZED, "signed out").into_response()
        } else {
            Redirect::to("/console/login").into_response()
        };
        resp.headers_mut()
            .append(header::SET_COOKIE, set_cookie(COOKIE, "", 0, self.tls));
        resp
    }
}

impl FromRequestParts<Arc<AppState>> for Signed {
    type Rejection = SignIn;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, SignIn> {
        Signed::of(&parts.headers, app).ok_or(SignIn {
            fragment: parts.headers.contains_key("x-console-fragment"),
            tls: over_tls(&parts.headers),
        })
    }
}

/// A form posted from a console page by a signed-in person, its CSRF token checked.
pub struct Submitted {
    pub signed: Signed,
    pub form: Form,
}

impl FromRequest<Arc<AppState>> for Submitted {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<AppState>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = Form::read(Request::from_parts(parts, body), app).await?;
        if !equal(form.one("_csrf"), &signed.csrf) {
            return Err(forbidden_csrf());
        }
        Ok(Submitted { signed, form })
    }
}

fn forbidden_csrf() -> Response {
    let page = layout::bare(
        "Refused",
        html! { p.error role="alert" { "This form was not sent from this console session (missing or wrong CSRF token). Reload the page and try again." } },
    );
    (StatusCode::FORBIDDEN, page).into_response()
}

/// `GET /console/login`: the sign-in form, with a fresh sign-in token in a cookie and a field.
pub async fn login_form(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if Signed::of(&headers, &app).is_some() {
        return Redirect::to("/console").into_response();
    }
    signin_page(&headers, StatusCode::OK, None)
}

fn signin_page(headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let token = random_token();
    let mut resp = (status, login_markup(&token, error)).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGNIN_COOKIE, &token, 600, over_tls(headers)),
    );
    resp
}

fn login_markup(token: &str, error: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            form.signin method="post" action="/console/login" {
                h1 { "Sign in to Tollgate" }
                p { "Use an organisation admin key, or a workspace key with admin scopes (you then see only its workspace)." }
                input type="hidden" name="_signin" value=(token);
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="off" required
                    aria-describedby=[error.map(|_| "signin-error")];
                @if let Some(e) = error { p #signin-error .error role="alert" { (e) } }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `POST /console/login`: exchanges the key for a session.
pub async fn login(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let now = Millis::now();
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.0.ip());
    if app.console.refused(ip, now) {
        let mut r = signin_page(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many sign-in attempts from this address; wait a minute and try again."),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return r;
    }
    let form = match Form::read(req, &app).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let expected = cookie(&headers, SIGNIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !equal(form.one("_signin"), expected) {
        return signin_page(
            &headers,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or was not sent from this console; try again."),
        );
    }
    let presented = form.one("api_key").trim();
    let hash = auth::key_hash(presented);
    let key = match auth::authenticate_hash(&app.ledger.state(), &hash, now) {
        Ok(k) => k,
        Err(e) => {
            app.console.failed(ip, now);
            return signin_page(&headers, StatusCode::UNAUTHORIZED, Some(e.message()));
        }
    };
    if !key.scopes.iter().any(|s| !is_data_plane_scope(s)) {
        app.console.failed(ip, now);
        return signin_page(
            &headers,
            StatusCode::FORBIDDEN,
            Some("This key has no admin scopes; sign in with an admin key or a workspace key with admin scopes."),
        );
    }
    // A browser signing in again leaves its earlier session behind: end it.
    if let Some(old) = cookie(&headers, COOKIE) {
        app.console.close(old);
    }
    let (id, _) = app.console.open(hash, now);
    let tls = over_tls(&headers);
    let ttl_s = app.settings.console_session_ttl.as_secs() as i64;
    let mut resp = Redirect::to("/console").into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(COOKIE, &id, ttl_s, tls));
    h.append(header::SET_COOKIE, set_cookie(SIGNIN_COOKIE, "", 0, tls));
    resp
}

fn is_data_plane_scope(s: &str) -> bool {
    crate::domain::scopes::DATA_PLANE_SCOPES.contains(&s)
}

/// `POST /console/logout`: ends the session (server-side too) and removes its cookie.
pub async fn logout(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let submitted = Submitted::from_request(req, &app).await;
    if let Err(r) = submitted {
        return r;
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        app.console.close(id);
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(COOKIE, "", 0, over_tls(&headers)),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl_ms: u64, per_minute: u32) -> Sessions {
        Sessions::new(&Settings {
            console_session_ttl: std::time::Duration::from_millis(ttl_ms),
            console_signins_per_minute: per_minute,
            ..Settings::default()
        })
    }

    #[test]
    fn a_session_ends_at_its_ttl_and_on_sign_out() {
        let s = sessions(1_000, 10);
        let (id, csrf) = s.open("h".into(), Millis(10_000));
        assert_eq!(s.find(&id, Millis(10_999)), Some(("h".into(), csrf)));
        assert_eq!(s.find(&id, Millis(11_000)), None);
        let (id, _) = s.open("h".into(), Millis(20_000));
        s.close(&id);
        assert_eq!(s.find(&id, Millis(20_001)), None);
        assert_eq!(s.find("not-a-session", Millis(20_001)), None);
    }

    #[test]
    fn failed_sign_ins_are_limited_per_client_per_minute() {
        let s = sessions(1_000, 3);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t = Millis(120_000);
        for _ in 0..3 {
            assert!(!s.refused(a, t));
            s.failed(a, t);
        }
        assert!(s.refused(a, Millis(t.0 + 59_999)));
        assert!(!s.refused(b, t), "another address has its own allowance");
        assert!(
            !s.refused(a, Millis(t.0 + 60_000)),
            "a new minute starts over"
        );
        // One IPv6 host holds a /64: its addresses share one allowance.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        for n in 0..3 {
            s.failed(v6(n), t);
        }
        assert!(s.refused(v6(999), t));
        assert!(!s.refused(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]), t));
    }

    #[test]
    fn cookies_are_read_by_name_and_set_with_the_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tg_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "tg"), None);
        let v = set_cookie(COOKIE, "v", 60, true);
        assert_eq!(
            v.to_str().unwrap(),
            "tg_session=v; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}
