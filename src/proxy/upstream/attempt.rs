//! One upstream attempt: the call, what becomes of its answer (streamed on, read whole, or an
//! error in the envelope) and its usage event, which every answer waits for.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;

use super::{private_host_error, Answer, Exec, Payload};
use crate::domain::catalog::Protocol;
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::ledger::governor::Reservation;
use crate::providers::bedrock;
use crate::proxy::meter::{self, Attempt};
use crate::proxy::route::Target;
use crate::proxy::target::Auth;
use crate::proxy::{client, stream, DataError, Reply};
use crate::telemetry::UpstreamFailure;

/// An attempt under way: what its usage event will say about it, and the reservation it settles.
pub(super) struct Call<'a> {
    pub(super) target: &'a Target,
    pub(super) model: &'a str,
    pub(super) index: u32,
    pub(super) event_id: String,
    pub(super) started: Instant,
    pub(super) reservation: Reservation,
}

impl<'a> Call<'a> {
    /// What the attempt measured, now that it is over: answered `status`, with `usage`.
    pub(super) fn measured(
        self,
        status: u16,
        usage: TokenUsage,
        source: UsageSource,
    ) -> (Attempt<'a>, Reservation) {
        let attempt = Attempt {
            target: self.target,
            model: self.model,
            status,
            usage,
            source,
            upstream: self.started.elapsed(),
            streamed: false,
            index: self.index,
            event_id: self.event_id,
        };
        (attempt, self.reservation)
    }
}

impl Exec {
    /// One upstream attempt, metered.
    pub(super) async fn attempt(
        &mut self,
        target: &Target,
        model: &str,
        payload: Payload,
        timeout_ms: Option<u64>,
        reservation: Reservation,
    ) -> Result<Answer, DataError> {
        let index = self.attempts;
        self.attempts += 1;
        let timeout =
            timeout_ms.map_or(self.plane.settings.upstream_timeout, Duration::from_millis);
        let call = Call {
            target,
            model,
            index,
            // Time-ordered (v7): the store's primary-key index then grows at its end instead of at random.
            event_id: uuid::Uuid::now_v7().to_string(),
            started: Instant::now(),
            reservation,
        };
        let body = match payload {
            Payload::One(body) => body,
            Payload::Each(bodies) => return Box::pin(self.each(call, bodies, timeout)).await,
        };
        let resp = match self.send(target, body, timeout).await {
            Ok(r) => r,
            // The error paths are boxed (see `Exec::whole`).
            Err(Unsent::Http(e)) => return Box::pin(self.unanswered(call, e, timeout)).await,
            Err(unsent @ Unsent::Credential(_)) => {
                tracing::warn!(trace_id = %self.ctx.trace_id, provider = %call.target.provider.slug, error = %unsent.error(timeout).message, "no provider credential");
                self.plane
                    .metrics
                    .upstream_failure(UpstreamFailure::Connect);
                let err = unsent.error(timeout);
                let usage = TokenUsage::default();
                return Box::pin(self.error_answer(call, usage, UsageSource::Provider, err)).await;
            }
        };
        let status = resp.status();
        if let Err(err) = self.answered(target, status) {
            return Box::pin(self.undelivered(call, TokenUsage::default(), err)).await;
        }
        if status.is_server_error() {
            self.plane
                .metrics
                .upstream_failure(UpstreamFailure::Status5xx);
        } else if status.is_client_error() {
            self.plane
                .metrics
                .upstream_failure(UpstreamFailure::Status4xx);
        }
        if self.body.stream && status.is_success() && is_stream(resp.headers()) {
            return Ok(self.stream_on(call, resp));
        }
        self.whole(call, resp, timeout).await
    }

    /// What every answer's status says before its body is read: an exchanged credential the
    /// provider no longer takes (401/403: expired early, revoked) is forgotten, so the next
    /// call exchanges anew; a redirect is refused, not followed (see `crate::proxy::client`),
    /// so the credential stays with its integration's host.
    pub(super) fn answered(&self, target: &Target, status: StatusCode) -> Result<(), DataError> {
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            self.plane.exchanged.forget(target);
        }
        if status.is_redirection() {
            return Err(DataError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("upstream_redirect"),
                "the provider answered with a redirect, which is not followed: a provider credential is only sent to the host its integration names",
            ));
        }
        Ok(())
    }

    /// Posts the body to the target's endpoint with its credential: in its headers, signed
    /// (SigV4) or exchanged for a token first.
    pub(super) async fn send(
        &self,
        target: &Target,
        body: Bytes,
        timeout: Duration,
    ) -> Result<reqwest::Response, Unsent> {
        let mut url = format!("{}{}", target.base_url, self.path);
        if let Some(q) = &target.query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(q);
        }
        let mut headers = target.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if target.protocol == Protocol::Anthropic {
            if let Some(beta) = &self.ctx.anthropic_beta {
                headers.insert("anthropic-beta", beta.clone());
            }
        }
        let plane = &self.plane;
        match &target.auth {
            Auth::Headers => {}
            Auth::Aws(aws) => {
                let creds = plane
                    .exchanged
                    .aws(&plane.http, target, aws)
                    .await
                    .map_err(|e| Unsent::Credential(e.0))?;
                bedrock::sign(
                    "POST",
                    &url,
                    &mut headers,
                    &body,
                    &creds,
                    &aws.region,
                    "bedrock",
                    SystemTime::now(),
                )
                .map_err(|e| Unsent::Credential(format!("the request could not be signed: {e}")))?;
            }
            Auth::Google(sa) => {
                let token = plane
                    .exchanged
                    .google(&plane.http, target, sa)
                    .await
                    .map_err(|e| Unsent::Credential(e.0))?;
                let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    Unsent::Credential("the provider's token is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        plane
            .http
            .post(url)
            .headers(headers)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(Unsent::Http)
    }

    /// An attempt that got no answer (a refused host, a timeout, no connection): metered with no
    /// usage, answered in the envelope.
    async fn unanswered(
        &mut self,
        call: Call<'_>,
        e: reqwest::Error,
        timeout: Duration,
    ) -> Result<Answer, DataError> {
        let why = if e.is_timeout() {
            UpstreamFailure::Timeout
        } else {
            UpstreamFailure::Connect
        };
        let err = unanswered_error(&e, timeout);
        tracing::warn!(trace_id = %self.ctx.trace_id, provider = %call.target.provider.slug, error = %e.without_url(), "upstream attempt failed");
        self.plane.metrics.upstream_failure(why);
        self.error_answer(call, TokenUsage::default(), UsageSource::Provider, err)
            .await
    }

    /// An attempt whose answer cannot be delivered (`err`, a 502): metered as such, with `usage`
    /// (an estimate when the provider did work), then answered in the OpenAI envelope.
    pub(super) async fn undelivered(
        &mut self,
        call: Call<'_>,
        usage: TokenUsage,
        err: DataError,
    ) -> Result<Answer, DataError> {
        self.plane.metrics.upstream_failure(UpstreamFailure::Body);
        self.error_answer(call, usage, UsageSource::Estimated, err)
            .await
    }

    /// Records the attempt as answered with `err`, then answers with it.
    pub(super) async fn error_answer(
        &mut self,
        call: Call<'_>,
        usage: TokenUsage,
        source: UsageSource,
        err: DataError,
    ) -> Result<Answer, DataError> {
        let status = err.status.as_u16();
        let (attempt, reservation) = call.measured(status, usage, source);
        self.finish(attempt, reservation).await?;
        Ok(Answer {
            status,
            reply: err.reply(),
        })
    }

    /// A stream: handed to a metering task, which records its usage event when it ends.
    fn stream_on(&mut self, call: Call<'_>, resp: reqwest::Response) -> Answer {
        self.upstream_time += call.started.elapsed();
        let status = resp.status().as_u16();
        let framing = if call.target.protocol != Protocol::Bedrock {
            stream::Framing::Sse
        } else if self.wire == super::wire::Wire::Messages {
            stream::Framing::AwsChunks
        } else {
            stream::Framing::AwsEvents
        };
        let job = stream::Job {
            translator: self
                .wire
                .translator(call.model, self.body.client_wants_usage),
            framing,
            plane: self.plane.clone(),
            ctx: self.ctx.clone(),
            target_model: call.model.to_owned(),
            prompt_estimate: self.prompt_estimate,
            reservation: call.reservation,
            client_wants_usage: self.body.client_wants_usage,
            index: call.index,
            event_id: call.event_id,
            started: call.started,
        };
        let frames = stream::spawn(job, call.target, resp);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        Answer {
            status,
            reply: Reply::Stream { headers, frames },
        }
    }

    /// Records the attempt's usage event; the answer waits for it to be durable. The event is
    /// made at the call (see [`meter::record`]), so the future holds only the append.
    pub(super) fn finish<'s>(
        &'s mut self,
        attempt: Attempt<'_>,
        reservation: Reservation,
    ) -> impl Future<Output = Result<(), DataError>> + 's {
        self.upstream_time += attempt.upstream;
        let this: &'s Exec = self;
        let recorded = meter::record(&this.plane, &this.ctx, attempt, reservation);
        async move {
            recorded.await.map_err(|e| {
                tracing::error!(trace_id = %this.ctx.trace_id, error = %e, "usage event could not be recorded");
                DataError::internal("the request's usage could not be recorded; it was not acknowledged")
            })
        }
    }
}

/// Why an attempt was not sent.
pub(super) enum Unsent {
    /// No answer (a refused host, a timeout, no connection).
    Http(reqwest::Error),
    /// No credential could be had (an exchange failed, signing failed).
    Credential(String),
}

impl Unsent {
    /// The client's error for a call not sent (or not answered within `timeout`).
    pub(super) fn error(&self, timeout: Duration) -> DataError {
        match self {
            Unsent::Http(e) => unanswered_error(e, timeout),
            Unsent::Credential(why) => DataError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("provider_credentials"),
                why.clone(),
            ),
        }
    }
}

/// The client's error for a provider answer not in its protocol.
pub(super) fn garbled_error(why: &str) -> DataError {
    DataError::new(
        StatusCode::BAD_GATEWAY,
        "api_error",
        Some("upstream_body"),
        format!("the provider's response could not be read: {why}"),
    )
}

/// A whole JSON answer with `status`, and the provider's `Retry-After` when it gave one.
pub(super) fn json_reply(
    status: StatusCode,
    body: Bytes,
    retry_after: Option<HeaderValue>,
) -> crate::proxy::Reply {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(r) = retry_after {
        headers.insert(reqwest::header::RETRY_AFTER, r);
    }
    crate::proxy::Reply::Full {
        status,
        headers,
        body,
    }
}

/// Whether the provider answered with a stream: server-sent events, or AWS's event stream.
fn is_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.starts_with("text/event-stream")
                || c.starts_with("application/vnd.amazon.eventstream")
        })
}

/// The answer to a call that got none.
fn unanswered_error(e: &reqwest::Error, timeout: Duration) -> DataError {
    match client::refused_host(e) {
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
    }
}
