//! One upstream attempt: the call, its answer (streamed or whole) and its usage event.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::{private_host_error, Answer, Exec};
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::proxy::govern::Reservation;
use crate::proxy::meter::{self, Attempt};
use crate::proxy::route::Target;
use crate::proxy::{client, stream, DataError, Reply};
use crate::telemetry::UpstreamFailure;

impl Exec {
    /// One upstream attempt, metered.
    pub(super) async fn attempt(
        &mut self,
        target: &Target,
        model: &str,
        body: Bytes,
        timeout_ms: Option<u64>,
        reservation: Reservation,
    ) -> Result<Answer, DataError> {
        let index = self.attempts;
        self.attempts += 1;
        // Time-ordered (v7): the store's primary-key index then grows at its end instead of at random.
        let event_id = uuid::Uuid::now_v7().to_string();
        let mut url = format!("{}{}", target.base_url, self.path);
        if let Some(q) = &target.query {
            url = format!("{url}?{q}");
        }
        let timeout = timeout_ms.map_or(self.core.settings.upstream_timeout, Duration::from_millis);
        let started = Instant::now();
        let sent = self
            .core
            .http
            .post(url)
            .headers(target.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_timeout() {
                    UpstreamFailure::Timeout
                } else {
                    UpstreamFailure::Connect
                };
                let err = match client::refused_host(&e) {
                    // Refused by `upstream_private_hosts = deny` before connecting.
                    Some(refused) => private_host_error(refused.to_string()),
                    None if e.is_timeout() => DataError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "api_error",
                        Some("upstream_unavailable"),
                        format!(
                            "the provider did not answer within {} ms",
                            timeout.as_millis()
                        ),
                    ),
                    None => DataError::new(
                        StatusCode::BAD_GATEWAY,
                        "api_error",
                        Some("upstream_unavailable"),
                        "the provider could not be reached",
                    ),
                };
                tracing::warn!(trace_id = %self.ctx.trace_id, provider = %target.provider.slug, error = %e.without_url(), "upstream attempt failed");
                self.core.metrics.upstream_failure(why);
                let status = err.status.as_u16();
                self.finish(
                    target,
                    model,
                    status,
                    TokenUsage::default(),
                    UsageSource::Provider,
                    started,
                    index,
                    event_id,
                    reservation,
                )
                .await?;
                return Ok(Answer {
                    status,
                    reply: err.reply(),
                });
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            // Not followed (see `Core`'s client): the credential stays with its integration's host.
            let err = DataError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("upstream_redirect"),
                "the provider answered with a redirect, which is not followed: a provider credential is only sent to the host its integration names",
            );
            let none = TokenUsage::default();
            return self
                .failed(
                    target,
                    model,
                    started,
                    index,
                    event_id,
                    reservation,
                    none,
                    err,
                )
                .await;
        }
        if status.is_server_error() {
            self.core
                .metrics
                .upstream_failure(UpstreamFailure::Status5xx);
        } else if status.is_client_error() {
            self.core
                .metrics
                .upstream_failure(UpstreamFailure::Status4xx);
        }
        let streaming = self.body.stream
            && status.is_success()
            && resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/event-stream"));
        if streaming {
            self.upstream_time += started.elapsed();
            let job = stream::Job {
                core: self.core.clone(),
                ctx: self.ctx.clone(),
                target_model: model.to_owned(),
                prompt_estimate: self.prompt_estimate,
                reservation,
                client_wants_usage: self.body.client_wants_usage,
                index,
                event_id,
                started,
            };
            let frames = stream::spawn(job, target, resp);
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert("cache-control", HeaderValue::from_static("no-cache"));
            return Ok(Answer {
                status: status.as_u16(),
                reply: Reply::Stream { headers, frames },
            });
        }
        let mut headers = HeaderMap::new();
        for h in [CONTENT_TYPE, RETRY_AFTER] {
            if let Some(v) = resp.headers().get(&h) {
                headers.insert(h, v.clone());
            }
        }
        let cap = self.core.settings.max_upstream_body_bytes;
        let read = tokio::time::timeout(
            timeout.saturating_sub(started.elapsed()),
            read_capped(resp, cap),
        )
        .await;
        let body = match read {
            Ok(Ok(b)) => b,
            Ok(Err(BodyError::TooLarge { received })) => {
                tracing::warn!(trace_id = %self.ctx.trace_id, provider = %target.provider.slug, cap, "upstream body over max_upstream_body_bytes; not delivered");
                // The provider did the work and bills it: meter an estimate of what arrived.
                let usage = TokenUsage {
                    prompt: self.prompt_estimate,
                    completion: meter::tokens_for_chars(received),
                    cached: 0,
                };
                let err = DataError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    Some("upstream_body_too_large"),
                    format!("the provider's response is larger than this gateway accepts (max_upstream_body_bytes = {cap} bytes); it was not delivered"),
                );
                return self
                    .failed(
                        target,
                        model,
                        started,
                        index,
                        event_id,
                        reservation,
                        usage,
                        err,
                    )
                    .await;
            }
            Ok(Err(BodyError::Broken)) | Err(_) => {
                let err = DataError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    Some("upstream_body"),
                    "the provider's response was cut off",
                );
                let none = TokenUsage::default();
                return self
                    .failed(
                        target,
                        model,
                        started,
                        index,
                        event_id,
                        reservation,
                        none,
                        err,
                    )
                    .await;
            }
        };
        let (usage, source) = match meter::usage_of_body(&body) {
            Some(u) => (u, UsageSource::Provider),
            None if status.is_success() => (
                TokenUsage {
                    prompt: self.prompt_estimate,
                    completion: meter::tokens_for_chars(meter::completion_chars(&body)),
                    cached: 0,
                },
                UsageSource::Estimated,
            ),
            None => (TokenUsage::default(), UsageSource::Provider),
        };
        self.finish(
            target,
            model,
            status.as_u16(),
            usage,
            source,
            started,
            index,
            event_id,
            reservation,
        )
        .await?;
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(Answer {
            status: status.as_u16(),
            reply: Reply::Full {
                status,
                headers,
                body,
            },
        })
    }

    /// An attempt whose answer cannot be delivered (`err`, a 502): metered as such, with `usage`
    /// (an estimate when the provider did work), then answered in the OpenAI envelope.
    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &mut self,
        target: &Target,
        model: &str,
        started: Instant,
        index: u32,
        event_id: String,
        reservation: Reservation,
        usage: TokenUsage,
        err: DataError,
    ) -> Result<Answer, DataError> {
        self.core.metrics.upstream_failure(UpstreamFailure::Body);
        let status = err.status.as_u16();
        let source = UsageSource::Estimated;
        self.finish(
            target,
            model,
            status,
            usage,
            source,
            started,
            index,
            event_id,
            reservation,
        )
        .await?;
        Ok(Answer {
            status,
            reply: err.reply(),
        })
    }

    /// Records the attempt's usage event; the answer waits for it to be durable.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &mut self,
        target: &Target,
        model: &str,
        status: u16,
        usage: TokenUsage,
        source: UsageSource,
        started: Instant,
        index: u32,
        event_id: String,
        reservation: Reservation,
    ) -> Result<(), DataError> {
        let elapsed = started.elapsed();
        self.upstream_time += elapsed;
        self.core.metrics.upstream_time.observe(elapsed);
        let attempt = Attempt {
            target,
            model,
            status,
            usage,
            source,
            upstream_ms: elapsed.as_millis().min(u128::from(u32::MAX)) as u32,
            streamed: false,
            index,
            event_id,
        };
        let event = meter::usage_event(&self.core.prices, &self.ctx, attempt);
        self.core.record_usage(event, Some(reservation)).await.map_err(|e| {
            tracing::error!(trace_id = %self.ctx.trace_id, error = %e, "usage event could not be recorded");
            DataError::internal("the request's usage could not be recorded; it was not acknowledged")
        })
    }
}

/// Why a non-stream upstream body could not be read whole.
enum BodyError {
    /// The connection broke off.
    Broken,
    /// It is larger than the cap: reading stopped there (`received` bytes had arrived).
    TooLarge { received: usize },
}

/// Reads a body of at most `cap` bytes, chunk by chunk: a larger one is never buffered past the
/// cap (a declared `Content-Length` over it is refused before reading).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        // Metered as if the cap had arrived: the estimate stays bounded by the cap.
        return Err(BodyError::TooLarge { received: cap });
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| BodyError::Broken)? {
        if buf.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge {
                received: buf.len() + chunk.len(),
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
