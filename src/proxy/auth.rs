//! Who is calling: the §1.3 key resolution rules. `x-portkey-api-key` wins; otherwise
//! `x-api-key` (what the Anthropic SDK and Claude Code send) or `Authorization: Bearer` count
//! only when they hold a Tollgate key (so the Portkey SDK's literal `OPENAI_API_KEY`
//! placeholder, or a provider key, is never mistaken for one).

use reqwest::header::{HeaderMap, AUTHORIZATION};

use super::DataError;
use crate::crypto;
use crate::domain::{ApiKey, Millis, State};

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Unknown,
    Expired,
    /// A key above it (the one that minted it, or that one's minter) was deleted or expired.
    Revoked,
}

impl AuthError {
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => {
                "missing API key: send x-portkey-api-key or Authorization: Bearer <key>"
            }
            AuthError::Unknown => "invalid API key",
            AuthError::Expired => "this API key has expired",
            AuthError::Revoked => {
                "the key that created this API key (or one above it) was deleted or has expired"
            }
        }
    }
}

/// The presented Tollgate key, if any (never the provider key in `Authorization`).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers
        .get("x-portkey-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        if !k.is_empty() {
            return Some(k);
        }
    }
    let anthropic = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| k.starts_with(crypto::KEY_PREFIX));
    if anthropic.is_some() {
        return anthropic;
    }
    let bearer = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let token = bearer
        .strip_prefix("Bearer ")
        .or_else(|| bearer.strip_prefix("bearer "))?
        .trim();
    token.starts_with(crypto::KEY_PREFIX).then_some(token)
}

/// Looks the key up by hash; the stored hash is compared in constant time. A key is bound by
/// the keys above it (see [`ApiKey::ancestors`]): one deleted or expired stops it, and it holds
/// only the scopes every one of them still holds (an organisation that narrows a key narrows
/// what it minted).
pub fn authenticate(
    state: &State,
    headers: &HeaderMap,
    now: Millis,
) -> Result<std::sync::Arc<ApiKey>, AuthError> {
    let presented = presented_key(headers).ok_or(AuthError::Missing)?;
    authenticate_hash(state, &crypto::hash_api_key(presented), now)
}

/// The hash of a presented key's secret: what a console session keeps instead of the secret.
pub fn key_hash(presented: &str) -> String {
    crypto::hash_api_key(presented)
}

/// [`authenticate`] for a key known by the hash of its secret (a console session's key): the
/// same checks, so a session ends with its key's deletion, expiry or revocation.
pub fn authenticate_hash(
    state: &State,
    hash: &str,
    now: Millis,
) -> Result<std::sync::Arc<ApiKey>, AuthError> {
    let key = state.api_key_by_hash(hash).ok_or(AuthError::Unknown)?;
    if !crypto::hashes_equal(&key.key_hash, hash) {
        return Err(AuthError::Unknown);
    }
    if key.is_expired(now) {
        return Err(AuthError::Expired);
    }
    let ancestors = state.key_ancestors(key).ok_or(AuthError::Revoked)?;
    if ancestors.iter().any(|a| a.is_expired(now)) {
        return Err(AuthError::Revoked);
    }
    let held = |s: &String| ancestors.iter().all(|a| a.has_scope(s));
    if key.scopes.iter().all(held) {
        return Ok(key.clone());
    }
    let mut narrowed = ApiKey::clone(key);
    narrowed.scopes.retain(held);
    Ok(std::sync::Arc::new(narrowed))
}

/// Data-plane access: a workspace key with `completions.write`.
pub fn authorize_data_plane(key: &ApiKey) -> Result<(), DataError> {
    if !key.kind.is_workspace() {
        return Err(DataError::forbidden(
            "admin_key_on_data_plane",
            "organisation (admin) keys cannot call data-plane endpoints; use a workspace key",
        ));
    }
    if !key.has_scope("completions.write") {
        return Err(DataError::forbidden(
            "missing_scope",
            "this API key lacks the completions.write scope",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn placeholder_authorization_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer OPENAI_API_KEY"),
        );
        assert_eq!(presented_key(&h), None);
        h.insert("x-portkey-api-key", HeaderValue::from_static("tg_abc"));
        assert_eq!(presented_key(&h), Some("tg_abc"));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tg_xyz"));
        assert_eq!(presented_key(&h), Some("tg_xyz"));
        h.insert("x-portkey-api-key", HeaderValue::from_static(""));
        assert_eq!(presented_key(&h), Some("tg_xyz"));
    }
}
