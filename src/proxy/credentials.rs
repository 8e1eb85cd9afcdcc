//! Credentials obtained by exchange and cached until shortly before they expire: a role's
//! temporary AWS credentials (STS AssumeRole) and a service account's Google access token. One
//! exchange at a time per integration; a credential in its last minutes is still used while a
//! background refresh fetches the next, so requests do not stall on a refresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::target::{AwsAuth, Target};
use crate::providers::bedrock::{self, Credentials};
use crate::providers::gemini::{self, ServiceAccount};

/// How long before expiry a credential is refreshed in the background.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// The longest a credential exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The cached exchanged credentials of every integration.
#[derive(Default)]
pub struct Exchanged {
    aws: Cache<Arc<Credentials>>,
    google: Cache<Arc<str>>,
}

/// Why no credential could be had (the message never carries a secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExchangeError(pub String);

impl Exchanged {
    /// The AWS credentials to sign with: the integration's own, or the role's (assumed and cached).
    pub async fn aws(
        &self,
        http: &reqwest::Client,
        target: &Target,
        aws: &Arc<AwsAuth>,
    ) -> Result<Arc<Credentials>, ExchangeError> {
        let Some(role) = &aws.role else {
            return Ok(Arc::new(aws.base.clone()));
        };
        let key = cache_key(target);
        let (http, aws) = (http.clone(), aws.clone());
        let arn = role.arn.clone();
        self.aws
            .get(key, move || async move {
                let role = aws
                    .role
                    .as_ref()
                    .ok_or_else(|| ExchangeError("no role".into()))?;
                let session = format!("tollgate-{}", uuid::Uuid::new_v4().simple());
                let fetched = bedrock::assume_role(
                    &http,
                    &role.sts_endpoint,
                    &aws.base,
                    &aws.region,
                    &role.arn,
                    role.external_id.as_deref(),
                    &session,
                    SystemTime::now(),
                );
                let (creds, expires) = tokio::time::timeout(EXCHANGE_TIMEOUT, fetched)
                    .await
                    .map_err(|_| ExchangeError(format!("STS AssumeRole of {arn} timed out")))?
                    .map_err(|e| ExchangeError(format!("STS AssumeRole of {arn} failed: {e}")))?;
                let left = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                Ok((Arc::new(creds), left))
            })
            .await
    }

    /// A Google access token for the service account.
    pub async fn google(
        &self,
        http: &reqwest::Client,
        target: &Target,
        sa: &Arc<ServiceAccount>,
    ) -> Result<Arc<str>, ExchangeError> {
        let (http, sa) = (http.clone(), sa.clone());
        self.google
            .get(cache_key(target), move || async move {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let (token, expires_in) =
                    tokio::time::timeout(EXCHANGE_TIMEOUT, gemini::fetch_token(&http, &sa, now))
                        .await
                        .map_err(|_| {
                            ExchangeError("the service account's token exchange timed out".into())
                        })?
                        .map_err(|e| {
                            ExchangeError(format!(
                                "the service account's token exchange failed: {e}"
                            ))
                        })?;
                Ok((Arc::from(token.as_str()), Duration::from_secs(expires_in)))
            })
            .await
    }

    /// Forgets the integration's exchanged credential (the provider refused it as expired).
    pub fn forget(&self, target: &Target) {
        let key = cache_key(target);
        self.aws.entries.lock().remove(&key);
        self.google.entries.lock().remove(&key);
    }
}

/// An integration's credential changes with the integration: its id and last update.
fn cache_key(target: &Target) -> String {
    format!(
        "{}@{}",
        target.integration.id, target.integration.updated_at.0
    )
}

/// How long a credential said to live `ttl` is used: not to its last moment, which the
/// provider's clock (or a lifetime rounded down) may already have passed. A tenth of its life is
/// given up, at most a minute.
fn usable_for(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 10).min(Duration::from_secs(60)))
}

/// What an exchange came to: the value and when it stops being usable, or why it failed.
type Outcome<T> = Option<Result<(T, Instant), String>>;

struct Entry<T> {
    value: Option<(T, Instant)>,
    /// The exchange under way, which callers without a usable value wait for.
    pending: Option<tokio::sync::watch::Receiver<Outcome<T>>>,
}

struct Cache<T> {
    entries: Arc<Mutex<HashMap<String, Entry<T>>>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: Arc::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Cache<T> {
    /// The cached value of `key` while it is fresh. One in its last [`REFRESH_AHEAD`] is returned
    /// while a refresh runs; without a usable one the caller waits for the (single) exchange,
    /// which runs in its own task so that a caller going away does not abandon it.
    async fn get<F, Fut>(&self, key: String, fetch: F) -> Result<T, ExchangeError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, Duration), ExchangeError>> + Send + 'static,
    {
        let now = Instant::now();
        let (usable, pending) = {
            let mut entries = self.entries.lock();
            let e = entries.entry(key.clone()).or_insert(Entry {
                value: None,
                pending: None,
            });
            let usable = e.value.clone().filter(|(_, exp)| *exp > now);
            let due = usable
                .as_ref()
                .is_none_or(|(_, exp)| exp.saturating_duration_since(now) < REFRESH_AHEAD);
            if due && e.pending.is_none() {
                e.pending = Some(self.start(key, fetch));
            }
            (usable, e.pending.clone())
        };
        if let Some((v, _)) = usable {
            return Ok(v);
        }
        let Some(mut pending) = pending else {
            return Err(ExchangeError("no exchange under way".into()));
        };
        let outcome = pending
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ExchangeError("the credential exchange ended without an answer".into()))?
            .clone();
        match outcome {
            Some(Ok((v, _))) => Ok(v),
            Some(Err(why)) => Err(ExchangeError(why)),
            None => Err(ExchangeError(
                "the credential exchange ended without an answer".into(),
            )),
        }
    }

    /// Runs `fetch` in a task that stores what it brings under `key`.
    fn start<F, Fut>(&self, key: String, fetch: F) -> tokio::sync::watch::Receiver<Outcome<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, Duration), ExchangeError>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let entries = self.entries.clone();
        tokio::spawn(async move {
            let outcome = fetch()
                .await
                .map(|(v, ttl)| (v, Instant::now() + usable_for(ttl)))
                .map_err(|e| e.0);
            if let Some(e) = entries.lock().get_mut(&key) {
                if let Ok(ok) = &outcome {
                    e.value = Some(ok.clone());
                }
                e.pending = None;
            }
            let _ = tx.send(Some(outcome));
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counted(
        n: &Arc<AtomicUsize>,
        ttl: Duration,
    ) -> impl FnOnce() -> std::future::Ready<Result<(usize, Duration), ExchangeError>> {
        let n = n.clone();
        move || std::future::ready(Ok((n.fetch_add(1, Ordering::SeqCst) + 1, ttl)))
    }

    #[tokio::test]
    async fn a_fresh_value_is_reused_and_an_expired_one_fetched_again() {
        let cache = Cache::<usize>::default();
        let n = Arc::new(AtomicUsize::new(0));
        let long = Duration::from_secs(3600);
        assert_eq!(cache.get("k".into(), counted(&n, long)).await.unwrap(), 1);
        assert_eq!(cache.get("k".into(), counted(&n, long)).await.unwrap(), 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Expired (a zero lifetime): the next caller waits for a new exchange.
        let cache = Cache::<usize>::default();
        assert_eq!(
            cache
                .get("k".into(), counted(&n, Duration::ZERO))
                .await
                .unwrap(),
            2
        );
        assert_eq!(cache.get("k".into(), counted(&n, long)).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_value_near_expiry_is_used_while_the_next_is_fetched() {
        let cache = Cache::<usize>::default();
        let n = Arc::new(AtomicUsize::new(0));
        let soon = REFRESH_AHEAD / 2;
        assert_eq!(cache.get("k".into(), counted(&n, soon)).await.unwrap(), 1);
        // Still usable: answered at once with the old value, a refresh starts.
        assert_eq!(
            cache
                .get("k".into(), counted(&n, Duration::from_secs(3600)))
                .await
                .unwrap(),
            1
        );
        let mut waited = 0;
        while cache
            .entries
            .lock()
            .get("k")
            .is_some_and(|e| e.pending.is_some())
            && waited < 1000
        {
            tokio::task::yield_now().await;
            waited += 1;
        }
        assert_eq!(cache.get("k".into(), counted(&n, soon)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_exchange_is_an_error_and_retried_by_the_next_caller() {
        let cache = Cache::<usize>::default();
        let failing = || std::future::ready(Err(ExchangeError("STS said no".into())));
        assert_eq!(
            cache.get("k".into(), failing).await.unwrap_err().0,
            "STS said no"
        );
        let n = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache
                .get("k".into(), counted(&n, Duration::from_secs(60 * 60)))
                .await
                .unwrap(),
            1
        );
    }
}
