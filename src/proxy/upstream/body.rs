//! What is sent upstream: the model a target is asked for, and the request body with the
//! target's `override_params` laid over it.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use super::wire::Wire;
use super::{Exec, Payload};
use crate::domain::catalog::Protocol;
use crate::domain::routing::{Node, Params};
use crate::domain::Endpoint;
use crate::proxy::route::Target;
use crate::proxy::DataError;

impl Exec {
    /// The model a target is asked for: the node's `override_params.model`, else the request's.
    pub(super) fn model_for(&self, node: &Node) -> Result<String, DataError> {
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

    /// The body sent to `node`'s target: the request with the node's `override_params` laid
    /// over it (for OpenAI-format upstreams asking a stream for its usage), in the upstream's
    /// protocol; and the path under the base URL when the body decides it.
    pub(super) fn upstream_body(
        &self,
        node: &Node,
        wire: Wire,
        target: &Target,
        model: &str,
    ) -> Result<(Payload, Option<String>), DataError> {
        // Passed through: serialized from the request itself.
        let native = wire == Wire::Messages && target.protocol == Protocol::Anthropic;
        if wire != Wire::OpenAi && !native {
            // Only the Messages-to-chat translation reads the model from the map (the others
            // take it apart): without overrides the others translate the request as it is.
            let reads_model = matches!(wire, Wire::MessagesToChat | Wire::MessagesVia(_));
            let merged = if node.override_params.is_empty() && !reads_model {
                Cow::Borrowed(&self.body.json)
            } else {
                let mut merged = self.body.json.clone();
                for (k, v) in node.override_params.entries() {
                    merged.insert(k.clone(), v.clone());
                }
                merged.insert("model".into(), Value::String(model.to_owned()));
                Cow::Owned(merged)
            };
            let (mut body, path) = wire
                .body(target.protocol, &merged, model, self.body.stream)
                .map_err(|e| DataError::bad_request(e.0))?;
            // Anthropic-native on Bedrock: the beta flags go in the body, not a header.
            let beta = self
                .ctx
                .anthropic_beta
                .as_ref()
                .and_then(|v| v.to_str().ok());
            if let (Wire::Messages, Protocol::Bedrock, Some(beta)) = (wire, target.protocol, beta) {
                crate::providers::bedrock::set_anthropic_beta(&mut body, beta);
            }
            let completion_cap = target.takes_max_completion_tokens(model);
            if let (Wire::MessagesToChat, true, Some(chat)) =
                (wire, completion_cap, body.as_object_mut())
            {
                if let Some(max) = chat.remove("max_tokens") {
                    chat.insert("max_completion_tokens".into(), max);
                }
            }
            let encode = |v: &Value| {
                serde_json::to_vec(v)
                    .map(Bytes::from)
                    .map_err(|e| DataError::internal(format!("encoding the upstream body: {e}")))
            };
            let payload = match body {
                Value::Array(calls) if calls.len() > 1 => {
                    Payload::Each(calls.iter().map(encode).collect::<Result<_, _>>()?)
                }
                Value::Array(calls) => Payload::One(encode(&calls[0])?),
                body => Payload::One(encode(&body)?),
            };
            return Ok((payload, path));
        }
        Ok((Payload::One(self.overlay_body(node)?), None))
    }

    /// [`Exec::upstream_body`] for a body passed through (an OpenAI-format upstream, or
    /// Anthropic's to Anthropic): serialized straight from the request (never copied), asking
    /// an OpenAI stream for its usage.
    fn overlay_body(&self, node: &Node) -> Result<Bytes, DataError> {
        // Always ask for usage so a stream can be metered; the extra chunk is hidden from clients
        // that did not ask for it. (The Responses API reports usage in its `response.completed`
        // event unasked.)
        let asks = !matches!(
            self.ctx.endpoint,
            Endpoint::Embeddings | Endpoint::Responses | Endpoint::Messages
        );
        let stream_options = (self.body.stream && asks).then(|| {
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
        serde_json::to_vec(&json)
            .map(Bytes::from)
            .map_err(|e| DataError::internal(format!("encoding the upstream body: {e}")))
    }
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
