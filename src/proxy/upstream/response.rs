//! A whole (non-stream) answer: read within the attempt's time and `max_upstream_body_bytes`,
//! metered from its `usage` (or an estimate when the provider gave none), and delivered once its
//! usage event is durable.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::attempt::Call;
use super::wire::Wire;
use super::{Answer, Exec};
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::providers::Garbled;
use crate::proxy::{meter, DataError, Reply};

impl Exec {
    /// Reads the answer whole and delivers it, metered.
    ///
    /// Its future is inside every request's (in the box of each routing node, see
    /// `Exec::try_node`), so it is kept small: an `async` block rather than an `async fn` (whose
    /// future holds its arguments twice, as captured and as the body's locals), and the rare
    /// answers that cannot be delivered are futures boxed on their own path, not states of this
    /// one (the largest of those set the size of every request's future before).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn's future would hold the call and the response twice"
    )]
    pub(super) fn whole<'a>(
        &'a mut self,
        call: Call<'a>,
        resp: reqwest::Response,
        timeout: Duration,
    ) -> impl Future<Output = Result<Answer, DataError>> + 'a {
        async move {
            let status = resp.status();
            let counted = resp
                .headers()
                .get("x-amzn-bedrock-input-token-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let mut headers = HeaderMap::new();
            for h in [CONTENT_TYPE, RETRY_AFTER] {
                if let Some(v) = resp.headers().get(&h) {
                    headers.insert(h, v.clone());
                }
            }
            let cap = self.plane.settings.max_upstream_body_bytes;
            let read = tokio::time::timeout(
                timeout.saturating_sub(call.started.elapsed()),
                read_capped(resp, cap),
            )
            .await;
            let body = match read {
                Ok(Ok(b)) => b,
                Ok(Err(BodyError::TooLarge { received })) => {
                    return Box::pin(self.too_large(call, received, cap)).await;
                }
                Ok(Err(BodyError::Broken)) | Err(_) => {
                    let err = DataError::new(
                        StatusCode::BAD_GATEWAY,
                        "api_error",
                        Some("upstream_body"),
                        "the provider's response was cut off",
                    );
                    return Box::pin(self.undelivered(call, TokenUsage::default(), err)).await;
                }
            };
            // An unreadable answer is still work the provider bills: estimated like text from
            // what arrived (about a character a byte).
            let received = body.len();
            let (body, reported) = match self.in_callers_protocol(status, body, call.model, counted)
            {
                Ok(b) => b,
                Err(Garbled(why)) => {
                    tracing::warn!(trace_id = %self.ctx.trace_id, provider = %call.target.provider.slug, error = %why, "provider answer not in its protocol");
                    let usage = self.estimated(received);
                    let err = super::attempt::garbled_error(&why);
                    return Box::pin(self.undelivered(call, usage, err)).await;
                }
            };
            let (usage, source) = self.usage_of(status, &body, reported);
            let (attempt, reservation) = call.measured(status.as_u16(), usage, source);
            self.finish(attempt, reservation).await?;
            if !self.wire.passes_through() || !headers.contains_key(CONTENT_TYPE) {
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
    }

    /// An answer over the cap (`received` bytes had arrived): not delivered, but the provider
    /// did the work and bills it, so an estimate of what arrived is metered.
    async fn too_large(
        &mut self,
        call: Call<'_>,
        received: usize,
        cap: usize,
    ) -> Result<Answer, DataError> {
        tracing::warn!(trace_id = %self.ctx.trace_id, provider = %call.target.provider.slug, cap, "upstream body over max_upstream_body_bytes; not delivered");
        let usage = self.estimated(received);
        let err = DataError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            Some("upstream_body_too_large"),
            format!("the provider's response is larger than this gateway accepts (max_upstream_body_bytes = {cap} bytes); it was not delivered"),
        );
        self.undelivered(call, usage, err).await
    }

    /// A whole answer in the caller's protocol, with the usage the provider reported: a
    /// success translated, an error's message carried into the caller's error shape.
    fn in_callers_protocol(
        &self,
        status: StatusCode,
        body: Bytes,
        model: &str,
        counted: Option<u64>,
    ) -> Result<(Bytes, Option<TokenUsage>), Garbled> {
        if self.wire == Wire::OpenAi {
            let usage = meter::usage_of_body(&body);
            return Ok((body, usage));
        }
        let request = &self.body.json;
        if status.is_success() {
            let estimate = self.prompt_estimate;
            return self.wire.whole(&body, model, request, counted, estimate);
        }
        let usage = self
            .wire
            .whole(&body, model, request, counted, self.prompt_estimate)
            .ok()
            .and_then(|(_, u)| u);
        let body = self.wire.error_body(status.as_u16(), &body).unwrap_or(body);
        Ok((body, usage))
    }

    /// The usage of a whole answer: the provider's, else (for a success) an estimate.
    fn usage_of(
        &self,
        status: StatusCode,
        body: &[u8],
        reported: Option<TokenUsage>,
    ) -> (TokenUsage, UsageSource) {
        match reported {
            Some(u) => (u, UsageSource::Provider),
            None if status.is_success() => (
                self.estimated(meter::completion_chars(body)),
                UsageSource::Estimated,
            ),
            None => (TokenUsage::default(), UsageSource::Provider),
        }
    }

    /// The estimated usage of an answer with `chars` characters of output.
    fn estimated(&self, chars: usize) -> TokenUsage {
        TokenUsage {
            prompt: self.prompt_estimate,
            completion: meter::tokens_for_chars(chars),
            cached: 0,
            cache_write: 0,
        }
    }
}

/// Why a non-stream upstream body could not be read whole.
pub(super) enum BodyError {
    /// The connection broke off.
    Broken,
    /// It is larger than the cap: reading stopped there (`received` bytes had arrived).
    TooLarge { received: usize },
}

/// Reads a body of at most `cap` bytes, chunk by chunk: a larger one is never buffered past the
/// cap (a declared `Content-Length` over it is refused before reading).
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Bytes, BodyError> {
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
