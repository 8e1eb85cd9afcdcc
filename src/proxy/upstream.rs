//! Executing a routing plan: targets tried per strategy (single, fallback, loadbalance), retries on
//! the configured statuses, one metered usage event per upstream attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

use super::meter::{self, Attempt};
use super::refusals::Refusal;
use super::route::{self, Plan, Target};
use super::{client, stream};
use super::{set_header, DataError, Reply, RequestBody, RequestCtx};
use crate::domain::budget::RequestPath;
use crate::domain::pricing::TokenUsage;
use crate::domain::routing::{check_private_host, Mode, Node, Params};
use crate::domain::{Endpoint, Millis, UsageSource};
use crate::ledger::governor::{Estimate, Reservation};
use crate::proxy::DataPlane;
use crate::telemetry::UpstreamFailure;

/// The answer of one target (possibly after retries): what fallback looks at.
struct Answer {
    status: u16,
    reply: Reply,
}

enum Outcome {
    Answer(Answer),
    /// A gateway-side refusal (unknown provider, model not allowed, ...): stops any fallback.
    Stop(DataError),
}

/// One request's execution.
struct Exec {
    core: Arc<DataPlane>,
    ctx: RequestCtx,
    body: RequestBody,
    path: &'static str,
    attempts: u32,
    /// Estimated prompt tokens, for usage the provider does not report.
    prompt_estimate: u64,
    /// An upper bound of the prompt's tokens, for reservations (measured once per request).
    prompt_max: u64,
    upstream_time: Duration,
    last_option: String,
    last_provider: String,
}

/// Runs the plan and answers the client.
pub async fn run(
    core: Arc<DataPlane>,
    ctx: RequestCtx,
    plan: Plan,
    body: RequestBody,
) -> Result<Reply, DataError> {
    let path = match ctx.endpoint {
        Endpoint::ChatCompletions => "/chat/completions",
        Endpoint::Completions => "/completions",
        Endpoint::Embeddings => "/embeddings",
    };
    let prompt_estimate = meter::estimate_prompt(&body.json);
    let prompt_max = meter::max_prompt_tokens(&body.json);
    let mut exec = Exec {
        core,
        ctx,
        body,
        path,
        attempts: 0,
        prompt_estimate,
        prompt_max,
        upstream_time: Duration::ZERO,
        last_option: String::new(),
        last_provider: String::new(),
    };
    let outcome = exec.try_node(&plan.root).await;
    let overhead = exec
        .ctx
        .started
        .elapsed()
        .saturating_sub(exec.upstream_time);
    exec.core.metrics.gateway_overhead.observe(overhead);
    match outcome {
        Outcome::Stop(e) => Err(e),
        Outcome::Answer(a) => Ok(exec.decorate(a.reply)),
    }
}

impl Exec {
    fn try_node<'a>(&'a mut self, node: &'a Node) -> BoxFuture<'a, Outcome> {
        async move {
            match &node.mode {
                None => self.try_leaf(node).await,
                Some(Mode::Single) => self.try_node(&node.targets[0]).await,
                Some(Mode::Loadbalance) => {
                    let i = Node::pick_weighted(&node.targets, rand::thread_rng().gen::<f64>());
                    self.try_node(&node.targets[i]).await
                }
                Some(Mode::Fallback { on_status_codes }) => {
                    let last = node.targets.len() - 1;
                    for (i, t) in node.targets.iter().enumerate() {
                        match self.try_node(t).await {
                            Outcome::Answer(a)
                                if i < last && Node::falls_back_on(on_status_codes, a.status) =>
                            {
                                continue
                            }
                            other => return other,
                        }
                    }
                    Outcome::Stop(DataError::internal("fallback had no targets"))
                }
            }
        }
        .boxed()
    }

    /// The model a target is asked for: the node's `override_params.model`, else the request's.
    fn model_for(&self, node: &Node) -> Result<String, DataError> {
        let model = node
            .override_params
            .get("model")
            .or_else(|| self.body.json.get("model"));
        match model.and_then(Value::as_str) {
            Some("portkey-default") | None => Err(DataError::bad_request(
                "model is required (the config's override_params.model is not set either)",
            )),
            Some(m) if !is_model_id(m) => Err(DataError::bad_request(format!(
                "model {m:?} is not a model id: ?, #, \\, whitespace, control characters and . or .. path segments are not accepted"
            ))),
            Some(m) => Ok(m.to_owned()),
        }
    }

    async fn try_leaf(&mut self, node: &Node) -> Outcome {
        let Some(leaf) = &node.leaf else {
            return Outcome::Stop(DataError::internal("config leaf without a target"));
        };
        let target = {
            let state = self.core.ledger.state();
            route::resolve(
                &state,
                &self.core.sealer,
                &self.ctx.workspace_id,
                leaf,
                Millis::now(),
            )
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => return Outcome::Stop(e),
        };
        let policy = self.core.settings.upstream_private_hosts;
        if let Err(why) = check_private_host(&target.base_url, policy, "the provider's host") {
            return Outcome::Stop(private_host_error(why));
        }
        let model = match self.model_for(node) {
            Ok(m) => m,
            Err(e) => return Outcome::Stop(e),
        };
        if !target.integration.allows_model(&model) {
            return Outcome::Stop(DataError::forbidden(
                "model_not_allowed",
                format!(
                    "model {model} is not enabled for provider {}",
                    target.provider.slug
                ),
            ));
        }
        // Always ask for usage so a stream can be metered; the extra chunk is hidden from clients
        // that did not ask for it.
        let stream_options =
            (self.body.stream && self.ctx.endpoint != Endpoint::Embeddings).then(|| {
                let given = node
                    .override_params
                    .get("stream_options")
                    .or_else(|| self.body.json.get("stream_options"));
                let mut o = given
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                o.insert("include_usage".into(), Value::Bool(true));
                Value::Object(o)
            });
        let json = Overlay {
            base: &self.body.json,
            overrides: &node.override_params,
            stream_options,
        };
        let bytes = match serde_json::to_vec(&json) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                return Outcome::Stop(DataError::internal(format!(
                    "encoding the upstream body: {e}"
                )))
            }
        };
        self.last_option = node.path.clone();
        self.last_provider = target.integration.ai_provider_id.clone();
        let (retries, retry_on) = node
            .retry
            .as_ref()
            .map_or((0, &[][..]), |r| (r.attempts, &r.on_status_codes[..]));
        let mut n = 0;
        loop {
            let reservation = match self.admit(&target, &model, &node.override_params) {
                Ok(r) => r,
                Err(Refusal {
                    error,
                    target_specific: true,
                }) => {
                    let status = error.status.as_u16();
                    return Outcome::Answer(Answer {
                        status,
                        reply: error_reply(&error),
                    });
                }
                Err(Refusal { error, .. }) => return Outcome::Stop(error),
            };
            let timeout = node.request_timeout_ms;
            let answer = self
                .attempt(&target, &model, bytes.clone(), timeout, reservation)
                .await;
            match answer {
                Ok(a) if n < retries && retry_on.contains(&a.status) => {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(50 << n.min(5))).await;
                }
                Ok(a) => return Outcome::Answer(a),
                Err(e) => return Outcome::Stop(e),
            }
        }
    }

    /// Admission for one attempt: every budget and rate limit on the path, with this attempt's
    /// [`Exec::estimate`] reserved.
    fn admit(
        &self,
        target: &Target,
        model: &str,
        overrides: &crate::domain::routing::Params,
    ) -> Result<Reservation, Refusal> {
        let path = RequestPath {
            api_key_id: &self.ctx.key.id,
            workspace_id: &self.ctx.workspace_id,
            provider_id: &target.provider.id,
            provider_slug: &target.provider.slug,
            integration_id: &target.integration.id,
            model,
            metadata: Some(&self.ctx.metadata),
        };
        let estimate = self.estimate(target, model, overrides)?;
        self.core
            .ledger
            .admit(&path, estimate, Millis::now())
            .map_err(Refusal::from)
    }

    /// The most an attempt may use and cost, from the body actually sent upstream (the target's
    /// `override_params` laid over the request): an upper bound of its prompt plus the most output
    /// it may bill (every choice), priced as the target prices the model. A 400 when the body's
    /// output fields pass their bounds ([`meter::check_output_bounds`]).
    fn estimate(
        &self,
        target: &Target,
        model: &str,
        overrides: &crate::domain::routing::Params,
    ) -> Result<Estimate, Refusal> {
        meter::check_output_bounds(&self.body.json, overrides).map_err(|why| Refusal {
            error: DataError::bad_request(why),
            target_specific: false,
        })?;
        let completion = match self.ctx.endpoint {
            Endpoint::Embeddings => 0,
            _ => meter::max_output_tokens(&self.body.json, overrides, DEFAULT_MAX_OUTPUT_TOKENS),
        };
        let prompt = if meter::overrides_prompt(overrides) {
            meter::max_prompt_tokens_sent(&self.body.json, overrides)
        } else {
            self.prompt_max
        };
        let usage = TokenUsage {
            prompt,
            completion,
            cached: 0,
        };
        let (price, pricing) = meter::pricing_of(&self.core.prices, target, model);
        Ok(Estimate {
            max_cost: price.map_or(rust_decimal::Decimal::ZERO, |p| p.cost_usd(usage)),
            max_tokens: prompt.saturating_add(completion),
            pricing,
        })
    }

    /// One upstream attempt, metered.
    async fn attempt(
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
                    reply: error_reply(&err),
                });
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            // Not followed (see `crate::proxy::client`): the credential stays with its integration's host.
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
            reply: error_reply(&err),
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
        self.core.ledger.record_usage(event, Some(reservation)).await.map_err(|e| {
            tracing::error!(trace_id = %self.ctx.trace_id, error = %e, "usage event could not be recorded");
            DataError::internal("the request's usage could not be recorded; it was not acknowledged")
        })
    }

    /// Adds the trace and routing headers.
    fn decorate(&self, mut reply: Reply) -> Reply {
        let h = match &mut reply {
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => headers,
        };
        set_header(h, "x-portkey-trace-id", &self.ctx.trace_id);
        set_header(
            h,
            "x-portkey-retry-attempt-count",
            &self.attempts.saturating_sub(1).to_string(),
        );
        set_header(h, "x-portkey-last-used-option-index", &self.last_option);
        set_header(h, "x-portkey-cache-status", "DISABLED");
        set_header(h, "x-portkey-provider", &self.last_provider);
        reply
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

/// The upstream body: the request with a node's `override_params` laid over it (override wins)
/// and, for streams, `stream_options` with `include_usage` forced on. It is serialized straight
/// from the request, which is never copied (prompts can be large).
struct Overlay<'a> {
    base: &'a serde_json::Map<String, Value>,
    overrides: &'a Params,
    stream_options: Option<Value>,
}

impl serde::Serialize for Overlay<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let replaced = |k: &str| k == "stream_options" && self.stream_options.is_some();
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.base {
            if !self.overrides.contains_key(k) && !replaced(k) {
                m.serialize_entry(k, v)?;
            }
        }
        for (k, v) in self.overrides.entries() {
            if !replaced(k) {
                m.serialize_entry(k, v)?;
            }
        }
        if let Some(o) = &self.stream_options {
            m.serialize_entry("stream_options", o)?;
        }
        m.end()
    }
}

/// Whether `m` could be a model id. Azure, Bedrock and Vertex style APIs put the model into the
/// URL path (the adapters here take the path from the integration today): characters that would
/// end or climb out of a path segment are refused for every provider, so no adapter can be made
/// to send a credential to another path.
fn is_model_id(m: &str) -> bool {
    let bad_char = |c: char| matches!(c, '?' | '#' | '\\') || c.is_whitespace() || c.is_control();
    !m.chars().any(bad_char) && !m.split('/').any(|seg| seg == "." || seg == "..")
}

/// A provider host `upstream_private_hosts = deny` refuses (a literal address, or a name that
/// resolved to one): nothing was sent.
fn private_host_error(why: String) -> DataError {
    DataError::forbidden("upstream_host_not_allowed", why)
}

/// The output allowance reserved for a request that sets no `max_tokens`.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

/// A gateway-made error answer in the OpenAI envelope (used where fallback may still move on).
pub fn error_reply(e: &DataError) -> Reply {
    let body = e.envelope();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        "x-portkey-gateway-exception",
        HeaderValue::from_static("true"),
    );
    e.add_retry_headers(&mut headers);
    Reply::Full {
        status: e.status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_lets_overrides_win_and_forces_stream_usage() {
        let base = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": 1,
                          "stream_options": {"include_usage": false, "x": 1}});
        let overrides = json!({"model": "b", "max_tokens": 5});
        let overrides = Params::from(overrides.as_object().unwrap().clone());
        let o = Overlay {
            base: base.as_object().unwrap(),
            overrides: &overrides,
            stream_options: Some(json!({"include_usage": true, "x": 1})),
        };
        let out: Value = serde_json::from_slice(&serde_json::to_vec(&o).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"model": "b", "messages": [{"role": "user", "content": "hi"}], "temperature": 1,
                               "max_tokens": 5, "stream_options": {"include_usage": true, "x": 1}})
        );
        let plain = Overlay {
            base: base.as_object().unwrap(),
            overrides: &Default::default(),
            stream_options: None,
        };
        let out: Value = serde_json::from_slice(&serde_json::to_vec(&plain).unwrap()).unwrap();
        assert_eq!(out, base);
    }
}
