//! Vertex AI: the service account, the OAuth2 JWT-bearer grant that turns it into an access
//! token, and Anthropic models on Vertex.
//!
//! The grant (Google's "OAuth 2.0 for server to server applications"): a JWT signed RS256 with
//! the account's private key (header `{alg: RS256, typ: JWT, kid: private_key_id}`, claims
//! `{iss: client_email, scope: cloud-platform, aud: token_uri, iat, exp: iat + 3600}`) is POSTed
//! as `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>` to the
//! account's `token_uri`, which answers `{access_token, expires_in, token_type: Bearer}`.
//! Signing uses the `jsonwebtoken` crate (ring underneath). Caching the token and refreshing it
//! before `expires_in` runs out is the data plane's.
//!
//! The private key never appears in `Debug` output or in an error.

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

/// The OAuth2 scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The JWT-bearer grant type (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, for an account JSON without `token_uri`.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The `anthropic_version` Anthropic models on Vertex require in the body.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// How long an assertion is valid (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// The most of a token endpoint's answer that is read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// The fields of a service-account key file (`vertex_service_account_json`) the grant needs.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub client_email: String,
    /// The RSA private key, PEM (PKCS#8 `BEGIN PRIVATE KEY`, as Google issues it, or PKCS#1).
    pub private_key: String,
    pub private_key_id: String,
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the service account's private_key is not an RSA private key in PEM form")]
    Key,
    #[error("the token endpoint could not be reached: {0}")]
    Http(#[source] reqwest::Error),
    #[error("the token endpoint refused the service account ({status}): {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint answered {status} without an OAuth error")]
    Status { status: u16 },
    #[error("the token endpoint's answer is not a token: {0}")]
    Garbled(String),
}

/// Reads a service-account key file. Every missing field is named; `token_uri` defaults to
/// Google's; the key is checked to be an RSA PEM key (its text is never in the error).
pub fn parse_service_account(json: &str) -> Result<ServiceAccount, String> {
    let v: Value = serde_json::from_str(json)
        .map_err(|_| "vertex_service_account_json is not JSON".to_owned())?;
    let obj = v
        .as_object()
        .ok_or_else(|| "vertex_service_account_json is not a JSON object".to_owned())?;
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        if t != "service_account" {
            return Err(format!(
                "vertex_service_account_json has type {t:?}; a service_account key is needed"
            ));
        }
    }
    let field = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    let fields = ["client_email", "private_key", "private_key_id"];
    let missing: Vec<&str> = fields.into_iter().filter(|k| field(k).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!(
            "vertex_service_account_json lacks {}",
            missing.join(", ")
        ));
    }
    let token_uri = field("token_uri").unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned());
    if !(token_uri.starts_with("https://") || token_uri.starts_with("http://")) {
        return Err("vertex_service_account_json token_uri is not an http(s) URL".to_owned());
    }
    let sa = ServiceAccount {
        client_email: field("client_email").unwrap_or_default(),
        private_key: field("private_key").unwrap_or_default(),
        private_key_id: field("private_key_id").unwrap_or_default(),
        token_uri,
    };
    EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|_| {
        "vertex_service_account_json private_key is not an RSA private key in PEM form".to_owned()
    })?;
    Ok(sa)
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The signed JWT assertion for the account at `now_unix` (seconds), valid one hour.
pub fn assertion(sa: &ServiceAccount, now_unix: u64) -> Result<String, TokenError> {
    let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|_| TokenError::Key)?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(sa.private_key_id.clone());
    let claims = Claims {
        iss: &sa.client_email,
        scope: CLOUD_PLATFORM_SCOPE,
        aud: &sa.token_uri,
        iat: now_unix,
        exp: now_unix.saturating_add(ASSERTION_LIFETIME_SECS),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| TokenError::Key)
}

/// Exchanges the account's assertion for an access token at its `token_uri`: the token and
/// how many seconds it lives.
pub async fn fetch_token(
    http: &reqwest::Client,
    sa: &ServiceAccount,
    now_unix: u64,
) -> Result<(String, u64), TokenError> {
    let jwt = assertion(sa, now_unix)?;
    let form = serde_urlencoded::to_string([("grant_type", JWT_BEARER_GRANT), ("assertion", &jwt)])
        .map_err(|_| TokenError::Key)?;
    let mut resp = http
        .post(&sa.token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(form)
        .send()
        .await
        .map_err(|e| TokenError::Http(e.without_url()))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TokenError::Http(e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(TokenError::Garbled("the answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let v: Option<Value> = serde_json::from_slice(&body).ok();
    if !(200..300).contains(&status) {
        let error = v.as_ref().and_then(|v| v.get("error"));
        // Google's OAuth errors are `{"error": "invalid_grant", "error_description": ...}`.
        return match error.and_then(Value::as_str) {
            Some(e) => Err(TokenError::OAuth {
                status,
                error: e.chars().take(200).collect(),
                description: v
                    .as_ref()
                    .and_then(|v| v.get("error_description"))
                    .and_then(Value::as_str)
                    .map(|d| d.chars().take(500).collect()),
            }),
            None => Err(TokenError::Status { status }),
        };
    }
    let v = v.ok_or_else(|| TokenError::Garbled("not JSON".into()))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Garbled("no access_token".into()))?;
    let expires_in = v
        .get("expires_in")
        .and_then(Value::as_u64)
        .ok_or_else(|| TokenError::Garbled("no expires_in".into()))?;
    Ok((token.to_owned(), expires_in))
}

/// An Anthropic Messages body as Anthropic models on Vertex take it: no `model` (it is in the
/// URL) and `anthropic_version: vertex-2023-10-16` (unless the caller set one).
pub fn vertex_anthropic_body(messages_req: &Map<String, Value>) -> Value {
    let mut body = messages_req.clone();
    body.remove("model");
    body.entry("anthropic_version")
        .or_insert_with(|| Value::from(VERTEX_ANTHROPIC_VERSION));
    Value::Object(body)
}

/// The path (after [`super::vertex_base_url`] with publisher `anthropic`) of an Anthropic
/// model's `rawPredict`, or `streamRawPredict` (Anthropic's own SSE events).
pub fn vertex_anthropic_path(model: &str, stream: bool) -> String {
    let action = if stream {
        "streamRawPredict"
    } else {
        "rawPredict"
    };
    format!(
        "/models/{}:{action}",
        super::path_segment(super::bare_model(model))
    )
}

/// The path (after the `anthropic` publisher's base) of Vertex's Claude token counter, which
/// takes an Anthropic `count_tokens` body with the model in it (unlike `rawPredict`), and
/// answers `{"input_tokens": N}`.
pub const VERTEX_ANTHROPIC_COUNT_TOKENS_PATH: &str = "/models/count-tokens:rawPredict";

/// The body of Vertex's Claude token counter: an Anthropic `count_tokens` body, its model named
/// as Vertex names it (without a `models/` prefix).
pub fn vertex_count_tokens_body(mut counted: Map<String, Value>) -> Value {
    if let Some(Value::String(m)) = counted.get_mut("model") {
        *m = super::bare_model(m).to_owned();
    }
    Value::Object(counted)
}

#[cfg(test)]
#[path = "vertex_tests.rs"]
mod tests;
