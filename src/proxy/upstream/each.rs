//! One attempt made of several calls: Bedrock embeddings of more texts than one InvokeModel call
//! takes (Titan embeds one text a call, Cohere 96). The calls go out a few at a time and every
//! one is let finish, so what Bedrock bills is known: the attempt is metered once, with the sum
//! of the calls' counts, whether all succeeded or not. The first failure (in input order) is the
//! answer; otherwise the vectors in input order.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

use super::attempt::{garbled_error, json_reply, Call};
use super::response::read_capped;
use super::{wire, Answer, Exec};
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::providers::Garbled;
use crate::proxy::{DataError, Reply};

/// Calls in flight at once for one attempt.
const IN_FLIGHT: usize = 8;

/// An attempt's answer and what it is metered with.
type Metered = (StatusCode, Reply, TokenUsage, UsageSource);

/// What one call came to.
enum Done {
    /// Answered with `status` (success or not), its body read whole.
    Answered {
        status: StatusCode,
        retry_after: Option<HeaderValue>,
        /// Bedrock's `X-Amzn-Bedrock-Input-Token-Count`.
        counted: Option<u64>,
        body: Bytes,
    },
    /// Not answered, or its body not read.
    Failed(DataError),
}

impl Done {
    /// The input tokens Bedrock bills for this call: its count header, else Titan's
    /// `inputTextTokenCount`; nothing for a failed call.
    fn billed(&self) -> u64 {
        match self {
            Done::Answered {
                status,
                counted,
                body,
                ..
            } if status.is_success() => counted.unwrap_or_else(|| {
                serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v["inputTextTokenCount"].as_u64())
                    .unwrap_or(0)
            }),
            _ => 0,
        }
    }
}

impl Exec {
    /// The attempt `call`, made of one InvokeModel call per body.
    pub(super) async fn each(
        &mut self,
        call: Call<'_>,
        bodies: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, DataError> {
        let cap = self.plane.settings.max_upstream_body_bytes;
        let this: &Exec = self;
        let done: Vec<Done> = stream::iter(bodies)
            .map(|body| this.one(call.target, body, timeout, cap))
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let billed = TokenUsage {
            prompt: done.iter().map(Done::billed).sum(),
            ..TokenUsage::default()
        };
        let failed = done.iter().position(|d| match d {
            Done::Answered { status, .. } => !status.is_success(),
            Done::Failed(_) => true,
        });
        let answer = match failed {
            Some(i) => Ok(self.failure(done.into_iter().nth(i), billed)),
            None => self.vectors(&done, call.model),
        };
        let (status, reply, usage, source) = match answer {
            Ok(answered) => answered,
            Err(Garbled(why)) => {
                tracing::warn!(trace_id = %self.ctx.trace_id, provider = %call.target.provider.slug, error = %why, "provider answer not in its protocol");
                let err = garbled_error(&why);
                (err.status, err.reply(), billed, UsageSource::Provider)
            }
        };
        let (attempt, reservation) = call.measured(status.as_u16(), usage, source);
        self.finish(attempt, reservation).await?;
        Ok(Answer {
            status: status.as_u16(),
            reply,
        })
    }

    /// One call, answered and read (within `timeout` and `cap`), or failed.
    async fn one(
        &self,
        target: &crate::proxy::route::Target,
        body: Bytes,
        timeout: Duration,
        cap: usize,
    ) -> Done {
        let resp = match self.send(target, body, timeout).await {
            Ok(r) => r,
            Err(unsent) => return Done::Failed(unsent.error(timeout)),
        };
        let status = resp.status();
        if let Err(refused) = self.answered(target, status) {
            return Done::Failed(refused);
        }
        let counted = resp
            .headers()
            .get("x-amzn-bedrock-input-token-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let retry_after = resp.headers().get(RETRY_AFTER).cloned();
        match tokio::time::timeout(timeout, read_capped(resp, cap)).await {
            Ok(Ok(body)) => Done::Answered {
                status,
                retry_after,
                counted,
                body,
            },
            _ => Done::Failed(DataError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("upstream_body"),
                "the provider's response was cut off or too large",
            )),
        }
    }

    /// The answer of the first failed call (the provider's error in the caller's shape, or the
    /// gateway's), metered with what the other calls `billed`.
    fn failure(&self, done: Option<Done>, billed: TokenUsage) -> Metered {
        let (status, reply) = match done {
            Some(Done::Answered {
                status,
                retry_after,
                body,
                ..
            }) => {
                let body = self.wire.error_body(status.as_u16(), &body).unwrap_or(body);
                (status, json_reply(status, body, retry_after))
            }
            Some(Done::Failed(err)) => (err.status, err.reply()),
            None => {
                let err = DataError::internal("a failed call went missing");
                (err.status, err.reply())
            }
        };
        (status, reply, billed, UsageSource::Provider)
    }

    /// Every call succeeded: the vectors in input order, with Bedrock's count.
    fn vectors(&self, done: &[Done], model: &str) -> Result<Metered, Garbled> {
        let mut bodies = Vec::with_capacity(done.len());
        let mut counted = Some(0u64);
        for d in done {
            if let Done::Answered {
                counted: c, body, ..
            } = d
            {
                bodies.push(&body[..]);
                counted = counted.zip(*c).map(|(a, b)| a.saturating_add(b));
            }
        }
        let (body, usage) = wire::embed_each(
            &bodies,
            model,
            &self.body.json,
            counted,
            self.prompt_estimate,
        )?;
        let status = StatusCode::OK;
        let reply = json_reply(status, body, None);
        // No count from Bedrock (Cohere without the header): estimated, as the answer says.
        Ok(match usage {
            Some(u) => (status, reply, u, UsageSource::Provider),
            None => {
                let estimate = TokenUsage {
                    prompt: self.prompt_estimate,
                    ..TokenUsage::default()
                };
                (status, reply, estimate, UsageSource::Estimated)
            }
        })
    }
}
