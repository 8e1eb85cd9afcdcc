//! What an attempt speaks: the pairing of the caller's protocol (the front door) and the
//! upstream's ([`Protocol`]), and for each pairing the upstream path, the body sent, and how a
//! whole answer, a stream and an error come back. OpenAI to OpenAI-format (and Anthropic to
//! Anthropic) passes the body through; every other pairing translates with
//! [`crate::providers`].

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::domain::catalog::Protocol;
use crate::domain::pricing::TokenUsage;
use crate::domain::Endpoint;
use crate::providers::{anthropic, bedrock, gemini, Garbled, StreamTranslator, Unsupported};
use crate::proxy::DataError;

/// The shape of the upstream exchange of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's API on both sides (OpenAI-format providers, Azure): passed through.
    OpenAi,
    /// An OpenAI caller, an Anthropic Messages upstream (Anthropic, or Claude on Vertex's
    /// rawPredict).
    ChatToAnthropic,
    /// An OpenAI caller, Bedrock Converse.
    ChatToBedrock,
    /// An OpenAI caller, Gemini or Vertex `generateContent`.
    ChatToGemini,
    /// An Anthropic caller and an Anthropic-native upstream (Anthropic, Bedrock InvokeModel,
    /// Vertex rawPredict): passed through.
    Messages,
    /// An Anthropic caller, translated to OpenAI's chat and on to an OpenAI-format provider.
    MessagesToChat,
    /// An Anthropic caller, translated to OpenAI's chat and on to a non-Anthropic model of
    /// Bedrock (Converse) or Gemini/Vertex.
    MessagesVia(Inner),
    /// OpenAI embeddings on Bedrock (Titan, Cohere through InvokeModel).
    EmbedBedrock,
    /// OpenAI embeddings on Gemini (`embedContent`, `batchEmbedContents`) or Vertex (`predict`).
    EmbedGoogle(gemini::EmbedApi),
}

/// The second leg of [`Wire::MessagesVia`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    Bedrock,
    Gemini,
}

/// Whether `model` on Bedrock or Vertex is one of Anthropic's (served by InvokeModel or
/// rawPredict with Anthropic's own body).
fn anthropic_model(protocol: Protocol, model: &str) -> bool {
    match protocol {
        Protocol::Bedrock => model.contains("anthropic."),
        Protocol::Vertex => model.starts_with("claude"),
        Protocol::Anthropic => true,
        _ => false,
    }
}

impl Wire {
    /// The pairing for a request to `endpoint` on an upstream speaking `protocol`, or a 400 for
    /// one the provider does not serve.
    pub fn of(endpoint: Endpoint, protocol: Protocol, model: &str) -> Result<Wire, DataError> {
        let unsupported = |what: &str| {
            DataError::bad_request(format!(
                "{what} is not supported by this provider ({})",
                protocol.name()
            ))
        };
        Ok(match (endpoint, protocol) {
            (Endpoint::Messages, p) if anthropic_model(p, model) => Wire::Messages,
            (Endpoint::Messages, Protocol::OpenAi | Protocol::Azure) => Wire::MessagesToChat,
            (Endpoint::Messages, Protocol::Bedrock) => Wire::MessagesVia(Inner::Bedrock),
            (Endpoint::Messages, _) => Wire::MessagesVia(Inner::Gemini),
            (_, Protocol::OpenAi | Protocol::Azure) => Wire::OpenAi,
            (Endpoint::ChatCompletions, Protocol::Anthropic) => Wire::ChatToAnthropic,
            (Endpoint::ChatCompletions, Protocol::Vertex) if anthropic_model(protocol, model) => {
                Wire::ChatToAnthropic
            }
            (Endpoint::ChatCompletions, Protocol::Bedrock) => Wire::ChatToBedrock,
            (Endpoint::ChatCompletions, Protocol::Gemini | Protocol::Vertex) => Wire::ChatToGemini,
            (Endpoint::Embeddings, Protocol::Bedrock) => Wire::EmbedBedrock,
            (Endpoint::Embeddings, Protocol::Gemini) => Wire::EmbedGoogle(gemini::EmbedApi::Gemini),
            (Endpoint::Embeddings, Protocol::Vertex) => Wire::EmbedGoogle(gemini::EmbedApi::Vertex),
            (Endpoint::Responses, _) => return Err(unsupported("/v1/responses")),
            (Endpoint::Completions, _) => {
                return Err(unsupported("/v1/completions (legacy text completions)"))
            }
            (Endpoint::Embeddings, Protocol::Anthropic) => {
                return Err(unsupported("/v1/embeddings"))
            }
        })
    }

    /// Whether the answer passes through as the upstream sent it.
    pub fn passes_through(self) -> bool {
        matches!(self, Wire::OpenAi | Wire::Messages)
    }

    /// The path under the target's base URL (with a query where the protocol puts one there).
    pub fn path(self, endpoint: Endpoint, protocol: Protocol, model: &str, stream: bool) -> String {
        match (self, protocol) {
            (Wire::OpenAi | Wire::MessagesToChat, _) => match endpoint {
                Endpoint::Completions => "/completions".into(),
                Endpoint::Embeddings => "/embeddings".into(),
                Endpoint::Responses => "/responses".into(),
                Endpoint::ChatCompletions | Endpoint::Messages => "/chat/completions".into(),
            },
            (Wire::EmbedBedrock, _) => bedrock::model_path(model, "invoke"),
            // The path depends on the input (one text or a batch): [`Wire::body`] gives it.
            (Wire::EmbedGoogle(_), _) => String::new(),
            (_, Protocol::Anthropic) => "/messages".into(),
            (Wire::Messages, Protocol::Bedrock) => bedrock::model_path(
                model,
                if stream {
                    "invoke-with-response-stream"
                } else {
                    "invoke"
                },
            ),
            (_, Protocol::Bedrock) => bedrock::model_path(
                model,
                if stream {
                    "converse-stream"
                } else {
                    "converse"
                },
            ),
            (Wire::Messages | Wire::ChatToAnthropic, _) => {
                gemini::vertex_anthropic_path(model, stream)
            }
            _ => gemini::model_path(model, stream),
        }
    }

    /// The body sent upstream, from the caller's (with the node's overrides laid over it).
    pub fn body(
        self,
        protocol: Protocol,
        merged: &Map<String, Value>,
        model: &str,
        stream: bool,
    ) -> Result<(Value, Option<String>), Unsupported> {
        match self {
            Wire::EmbedGoogle(api) => {
                let r = gemini::embed_request(merged, model, api)?;
                return Ok((r.body, Some(r.path)));
            }
            // Every InvokeModel call's body, in order (Titan embeds one text a call, Cohere 96).
            Wire::EmbedBedrock => {
                return Ok((Value::Array(bedrock::embed_requests(model, merged)?), None));
            }
            _ => {}
        }
        let body = match self {
            Wire::OpenAi => Value::Object(merged.clone()),
            Wire::ChatToAnthropic => {
                match (protocol, anthropic::chat_request(merged, model, stream)?) {
                    (Protocol::Vertex, Value::Object(body)) => gemini::vertex_anthropic_body(&body),
                    (_, body) => body,
                }
            }
            Wire::ChatToBedrock => bedrock::converse_request(merged)?,
            Wire::ChatToGemini => gemini::chat_request(merged)?,
            Wire::Messages => match protocol {
                Protocol::Bedrock => bedrock::invoke_anthropic_body(merged),
                Protocol::Vertex => gemini::vertex_anthropic_body(merged),
                _ => Value::Object(merged.clone()),
            },
            Wire::MessagesToChat => {
                let mut chat = anthropic::messages_to_chat(merged)?;
                if stream {
                    chat.insert(
                        "stream_options".into(),
                        serde_json::json!({"include_usage": true}),
                    );
                }
                Value::Object(chat)
            }
            Wire::MessagesVia(inner) => {
                let chat = anthropic::messages_to_chat(merged)?;
                match inner {
                    Inner::Bedrock => bedrock::converse_request(&chat)?,
                    Inner::Gemini => gemini::chat_request(&chat)?,
                }
            }
            Wire::EmbedBedrock | Wire::EmbedGoogle(_) => Value::Null,
        };
        Ok((body, None))
    }

    /// A whole success answer in the caller's protocol, with the provider's usage when it gave
    /// one. `request` is the caller's body and `counted` the input tokens a Bedrock answer's
    /// `X-Amzn-Bedrock-Input-Token-Count` header gave (embeddings read them). An embeddings
    /// answer without the provider's count says `prompt_estimate`, what the attempt is metered
    /// with (OpenAI's embeddings answer always has `usage`).
    pub fn whole(
        self,
        body: &Bytes,
        model: &str,
        request: &Map<String, Value>,
        counted: Option<u64>,
        prompt_estimate: u64,
    ) -> Result<(Bytes, Option<TokenUsage>), Garbled> {
        // `to_vec` writes bytes straight; `to_string` goes through `fmt` (measured slower).
        let encode = |(v, u): (Value, Option<TokenUsage>)| (Bytes::from(json_bytes(&v)), u);
        Ok(match self {
            Wire::OpenAi => (body.clone(), crate::proxy::meter::usage_of_body(body)),
            Wire::Messages => (body.clone(), anthropic::messages_usage(body)),
            Wire::ChatToAnthropic => {
                let (bytes, usage) = anthropic::chat_response(body)?;
                (Bytes::from(bytes), usage)
            }
            Wire::ChatToBedrock => {
                let (v, u) = bedrock::converse_response(body, model)?;
                encode((v, Some(u)))
            }
            Wire::ChatToGemini => encode(gemini::chat_response(body, model)?),
            Wire::MessagesToChat => encode(anthropic::chat_to_messages_response(body)?),
            Wire::EmbedBedrock => {
                return embed_each(&[body], model, request, counted, prompt_estimate)
            }
            Wire::EmbedGoogle(_) => encode(
                match gemini::embed_response(body, model, base64(request))? {
                    (v, None) => estimated_usage(v, prompt_estimate),
                    counted => counted,
                },
            ),
            Wire::MessagesVia(inner) => {
                let (chat, usage) = match inner {
                    Inner::Bedrock => {
                        let (v, u) = bedrock::converse_response(body, model)?;
                        (v, Some(u))
                    }
                    Inner::Gemini => gemini::chat_response(body, model)?,
                };
                let (messages, _) = anthropic::chat_to_messages_response(&json_bytes(&chat))?;
                (Bytes::from(json_bytes(&messages)), usage)
            }
        })
    }

    /// The translator of a stream, or `None` for the OpenAI pass-through (its own fast path).
    pub fn translator(
        self,
        model: &str,
        client_wants_usage: bool,
    ) -> Option<Box<dyn StreamTranslator>> {
        let to_messages = |first: Box<dyn StreamTranslator>| -> Box<dyn StreamTranslator> {
            Box::new(crate::providers::Chain::new(
                first,
                Box::new(anthropic::MessagesStream::new(model)),
            ))
        };
        Some(match self {
            Wire::OpenAi => return None,
            Wire::Messages => Box::new(anthropic::PassStream::new()),
            Wire::ChatToAnthropic => {
                Box::new(anthropic::ChatStream::new(model, client_wants_usage))
            }
            Wire::ChatToBedrock => {
                Box::new(bedrock::ConverseStream::new(model, client_wants_usage))
            }
            Wire::ChatToGemini => Box::new(gemini::ChatStream::new(model, client_wants_usage)),
            Wire::MessagesToChat => Box::new(anthropic::MessagesStream::new(model)),
            Wire::MessagesVia(Inner::Bedrock) => {
                to_messages(Box::new(bedrock::ConverseStream::new(model, true)))
            }
            Wire::MessagesVia(Inner::Gemini) => {
                to_messages(Box::new(gemini::ChatStream::new(model, true)))
            }
            // Embeddings never stream.
            Wire::EmbedBedrock | Wire::EmbedGoogle(_) => return None,
        })
    }

    /// An error answer of the upstream in the caller's protocol: passed through where the
    /// shapes match, else its message carried into OpenAI's envelope (an Anthropic caller's
    /// errors are rendered in Anthropic's shape at the front door).
    pub fn error_body(self, status: u16, body: &[u8]) -> Option<Bytes> {
        if self.passes_through() || self == Wire::MessagesToChat {
            return None;
        }
        let message =
            provider_message(body).unwrap_or_else(|| format!("the provider answered {status}"));
        let kind = match status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        let envelope = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        Some(Bytes::from(envelope.to_string()))
    }
}

/// A JSON value's bytes (a `Value` always serializes).
fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Bedrock embeddings answered by one or more InvokeModel calls (`bodies`, in the order of
/// [`bedrock::embed_requests`]), in OpenAI's shape with Bedrock's count (`counted`: the sum of
/// the calls' `X-Amzn-Bedrock-Input-Token-Count`), else `prompt_estimate` (Cohere without the
/// header).
pub fn embed_each(
    bodies: &[&[u8]],
    model: &str,
    request: &Map<String, Value>,
    counted: Option<u64>,
    prompt_estimate: u64,
) -> Result<(Bytes, Option<TokenUsage>), Garbled> {
    let input = request.get("input").unwrap_or(&Value::Null);
    let e = bedrock::embed_response(model, input, bodies, counted, base64(request))?;
    let (v, usage) = match e.usage {
        None => estimated_usage(e.body, prompt_estimate),
        counted => (e.body, counted),
    };
    Ok((Bytes::from(json_bytes(&v)), usage))
}

/// An embeddings answer the provider did not count, saying the estimate it is metered with
/// (OpenAI's embeddings answer always has `usage`); no usage is reported.
fn estimated_usage(mut v: Value, prompt_estimate: u64) -> (Value, Option<TokenUsage>) {
    v["usage"] = serde_json::json!({"prompt_tokens": prompt_estimate,
        "total_tokens": prompt_estimate});
    (v, None)
}

/// Whether the caller asked for embeddings as base64 (`encoding_format: base64`).
fn base64(request: &Map<String, Value>) -> bool {
    request.get("encoding_format").and_then(Value::as_str) == Some("base64")
}

/// The message of a provider's error body, in any of the shapes providers use: OpenAI's and
/// Google's `error.message`, Anthropic's `error.message`, AWS's `message` / `Message`.
pub(crate) fn provider_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.get("Message"))
        .or_else(|| v.get("error").filter(|e| e.is_string()))?
        .as_str()?;
    Some(text.chars().take(2_000).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairings_follow_the_front_door_and_the_model() {
        use Endpoint::{ChatCompletions as Chat, Embeddings, Messages, Responses};
        use Protocol::*;
        let pairings = [
            (Chat, OpenAi, "gpt-4o", Wire::OpenAi),
            (Chat, Anthropic, "claude", Wire::ChatToAnthropic),
            (Messages, Anthropic, "claude", Wire::Messages),
            (
                Chat,
                Vertex,
                "claude-sonnet-4@20250514",
                Wire::ChatToAnthropic,
            ),
            (Chat, Vertex, "gemini-2.0-flash", Wire::ChatToGemini),
            (Chat, Bedrock, "anthropic.claude-3-7", Wire::ChatToBedrock),
            (
                Messages,
                Bedrock,
                "anthropic.claude-3-7-sonnet-20250219-v1:0",
                Wire::Messages,
            ),
            (Messages, Bedrock, "us.anthropic.claude-3-7", Wire::Messages),
            (
                Messages,
                Bedrock,
                "amazon.nova-pro-v1:0",
                Wire::MessagesVia(Inner::Bedrock),
            ),
            (
                Messages,
                Vertex,
                "claude-3-7-sonnet@20250219",
                Wire::Messages,
            ),
            (
                Messages,
                Gemini,
                "gemini-2.0-flash",
                Wire::MessagesVia(Inner::Gemini),
            ),
            (Messages, Azure, "gpt-4o", Wire::MessagesToChat),
            (Responses, Azure, "gpt-4o", Wire::OpenAi),
            (
                Embeddings,
                Bedrock,
                "amazon.titan-embed-text-v2:0",
                Wire::EmbedBedrock,
            ),
            (
                Embeddings,
                Vertex,
                "text-embedding-005",
                Wire::EmbedGoogle(gemini::EmbedApi::Vertex),
            ),
        ];
        for (endpoint, protocol, model, want) in pairings {
            let got = Wire::of(endpoint, protocol, model).unwrap();
            assert_eq!(got, want, "{endpoint:?} {protocol:?} {model}");
        }
        assert!(Wire::of(Responses, Anthropic, "claude").is_err());
        assert!(Wire::of(Embeddings, Anthropic, "claude").is_err());
    }

    #[test]
    fn provider_errors_keep_their_message() {
        let e = |b: &str| provider_message(b.as_bytes());
        assert_eq!(
            e(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
                .as_deref(),
            Some("Overloaded")
        );
        assert_eq!(
            e(r#"{"message":"The security token included in the request is invalid."}"#).as_deref(),
            Some("The security token included in the request is invalid.")
        );
        assert_eq!(e(r#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}"#).as_deref(), Some("Resource exhausted"));
        assert_eq!(e("<html>"), None);
        let body = Wire::ChatToAnthropic.error_body(529, b"not json").unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(Wire::OpenAi.error_body(500, b"{}"), None);
    }
}
