//! `/v1/messages/count_tokens`: counted by the provider the plan routes to when it has a
//! counter for the model (Anthropic, and Claude on Bedrock and Vertex), else the gateway's own
//! estimate (the one it meters a provider's silence with). Counting is free at every provider,
//! so nothing is admitted, reserved or metered; the key, the routing and the model allow-list
//! apply as on `/v1/messages`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::attempt::{garbled_error, json_reply};
use super::response::read_capped;
use super::wire::Wire;
use super::Exec;
use crate::domain::catalog::Protocol;
use crate::domain::routing::{Mode, Node};
use crate::domain::Endpoint;
use crate::providers::{anthropic, bedrock, gemini, Garbled};
use crate::proxy::route::Target;
use crate::proxy::{meter, set_header, DataError, Reply};

/// The largest counter answer read (a count is a few bytes; an error a few KiB).
const COUNT_BODY_MAX: usize = 64 << 10;

/// The leaf a count goes to: the first target of a fallback, a weighted pick of a loadbalance.
fn counting_leaf(node: &Node) -> &Node {
    match &node.mode {
        None => node,
        Some(Mode::Loadbalance) => {
            let i = Node::pick_weighted(&node.targets, rand::random::<f64>());
            counting_leaf(&node.targets[i])
        }
        Some(Mode::Single | Mode::Fallback { .. }) => counting_leaf(&node.targets[0]),
    }
}

impl Exec {
    /// Counts the request's input tokens at the plan's target.
    pub(super) async fn count(&mut self, root: &Node) -> Result<Reply, DataError> {
        let leaf = counting_leaf(root);
        let (target, model) = self.target_for(leaf)?;
        // Free, but governed: a key its limits stop is stopped here too, and request rate
        // limits count it (the provider's counter has its own quota, shared by the integration).
        let _admitted = self.admit_free(&target, &model).map_err(|r| r.error)?;
        let mut merged = self.body.json.clone();
        for (k, v) in leaf.override_params.entries() {
            merged.insert(k.clone(), v.clone());
        }
        merged.insert("model".into(), Value::String(model.clone()));
        if Wire::of(Endpoint::Messages, target.protocol, &model)? != Wire::Messages {
            return Ok(self.counted(meter::estimate_prompt(&merged)));
        }
        let body = anthropic::count_tokens_body(&merged);
        let (path, body) = match target.protocol {
            Protocol::Bedrock => {
                let max_tokens = merged.get("max_tokens").and_then(Value::as_u64);
                let beta = self
                    .ctx
                    .anthropic_beta
                    .as_ref()
                    .and_then(|v| v.to_str().ok());
                bedrock::count_tokens_request(&model, &body, max_tokens, beta)
            }
            Protocol::Vertex => (
                gemini::VERTEX_ANTHROPIC_COUNT_TOKENS_PATH.to_owned(),
                gemini::vertex_count_tokens_body(body),
            ),
            _ => ("/messages/count_tokens".to_owned(), Value::Object(body)),
        };
        self.path = path;
        let bytes = serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(|e| DataError::internal(format!("encoding the count request: {e}")))?;
        let timeout = leaf
            .request_timeout_ms
            .map_or(self.plane.settings.upstream_timeout, Duration::from_millis);
        let resp = self
            .send(&target, bytes, timeout)
            .await
            .map_err(|e| e.error(timeout))?;
        self.counter_answer(&target, resp).await
    }

    /// A count in Anthropic's shape.
    fn counted(&self, tokens: u64) -> Reply {
        let body = Bytes::from(json!({"input_tokens": tokens}).to_string());
        self.traced(json_reply(StatusCode::OK, body, None))
    }

    /// `reply` with the request's trace id.
    fn traced(&self, mut reply: Reply) -> Reply {
        if let Reply::Full { headers, .. } = &mut reply {
            set_header(headers, "x-portkey-trace-id", &self.ctx.trace_id);
        }
        reply
    }

    /// The counter's answer: a count in Anthropic's shape, or its error as it came (the route
    /// carries it into Anthropic's error shape).
    async fn counter_answer(
        &self,
        target: &Target,
        resp: reqwest::Response,
    ) -> Result<Reply, DataError> {
        let status = resp.status();
        self.answered(target, status)?;
        let retry_after = resp.headers().get(RETRY_AFTER).cloned();
        let body = match read_capped(resp, COUNT_BODY_MAX).await {
            Ok(body) => body,
            // A refusal keeps its status (and Retry-After) even when its body is unreadable.
            Err(_) if !status.is_success() => Bytes::new(),
            Err(_) => {
                return Err(DataError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    Some("upstream_body"),
                    "the provider's token count was cut off or too large",
                ))
            }
        };
        if !status.is_success() {
            return Ok(self.traced(json_reply(status, body, retry_after)));
        }
        let tokens = match target.protocol {
            Protocol::Bedrock => bedrock::count_tokens_response(&body),
            _ => anthropic::counted_tokens(&body),
        };
        tokens.map(|n| self.counted(n)).map_err(|Garbled(why)| {
            tracing::warn!(trace_id = %self.ctx.trace_id, provider = %target.provider.slug, error = %why, "token count not in its protocol");
            garbled_error(&why)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_goes_to_the_first_target_of_a_fallback() {
        let plan = Node::parse_text(
            r#"{"strategy": {"mode": "fallback"}, "targets": [
                {"provider": "@first"}, {"provider": "@second"}]}"#,
        )
        .unwrap();
        let leaf = counting_leaf(&plan);
        assert_eq!(leaf.path, plan.targets[0].path);
        assert!(leaf.leaf.is_some());
    }
}
