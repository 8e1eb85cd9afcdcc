//! OpenAI embeddings <-> Bedrock's embedding models, called with InvokeModel
//! (`POST /model/{id}/invoke`):
//!
//! - Titan (`amazon.titan-embed-text-v1`, `-v2:0`, `amazon.titan-embed-g1-text-02`): one text
//!   per call, `{inputText}` -> `{embedding, inputTextTokenCount}`. A list input is one call per
//!   text, in order; the data plane sends them (sequentially or not) and hands the answers back
//!   in the same order. The token count is Titan's own.
//! - Cohere (`cohere.embed-*`): up to [`COHERE_BATCH`] texts per call,
//!   `{texts, input_type: "search_document"}` -> `{embeddings: [[...]]}`. Cohere's body has no
//!   token count: Bedrock's `X-Amzn-Bedrock-Input-Token-Count` response header has it, which
//!   the data plane passes as `header_tokens` (summed over the calls); without it there is no
//!   count (the data plane estimates one).

use serde_json::{json, Map, Value};

use crate::domain::pricing::TokenUsage;
use crate::providers::{Garbled, Unsupported};

/// Texts per Cohere call (Bedrock's limit for Cohere Embed).
pub const COHERE_BATCH: usize = 96;
/// Texts per OpenAI embeddings request (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

/// Which request shape an embedding model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedFamily {
    Titan,
    Cohere,
}

impl EmbedFamily {
    /// The family of a Bedrock model id (a cross-region prefix like `us.` allowed), if it embeds.
    pub fn of(model: &str) -> Option<EmbedFamily> {
        let id = model
            .strip_prefix("us.")
            .or_else(|| model.strip_prefix("eu."))
            .unwrap_or(model);
        if id.starts_with("amazon.titan-embed") {
            Some(EmbedFamily::Titan)
        } else if id.starts_with("cohere.embed") {
            Some(EmbedFamily::Cohere)
        } else {
            None
        }
    }
}

/// What an embeddings answer becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// The OpenAI `list` of `embedding` objects, with `usage` when Bedrock counted.
    pub body: Value,
    /// What Bedrock counted; `None` for Cohere without the token-count header.
    pub usage: Option<TokenUsage>,
}

fn texts(input: &Value) -> Result<Vec<&str>, Unsupported> {
    let list = match input {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                Unsupported("Bedrock embeddings take `input` as text (not token ids)".into())
            })?,
        _ => {
            return Err(Unsupported(
                "`input` must be a string or a list of strings".into(),
            ))
        }
    };
    if list.is_empty() || list.len() > MAX_INPUTS {
        return Err(Unsupported(format!(
            "`input` must hold 1 to {MAX_INPUTS} texts"
        )));
    }
    Ok(list)
}

/// The InvokeModel bodies for an OpenAI embeddings `input`, to be sent in order.
pub fn embed_request(model: &str, input: &Value) -> Result<Vec<Value>, Unsupported> {
    let texts = texts(input)?;
    match EmbedFamily::of(model) {
        Some(EmbedFamily::Titan) => Ok(texts.iter().map(|t| json!({ "inputText": t })).collect()),
        Some(EmbedFamily::Cohere) => Ok(texts
            .chunks(COHERE_BATCH)
            .map(|batch| json!({ "texts": batch, "input_type": "search_document" }))
            .collect()),
        None => Err(Unsupported(format!(
            "`{model}` is not a Bedrock embedding model (Titan or Cohere)"
        ))),
    }
}

/// The InvokeModel bodies for a whole OpenAI embeddings request: [`embed_request`] of its
/// `input`, with `dimensions` carried to Titan v2 (256, 512 or 1024) and refused elsewhere,
/// `encoding_format` `float` or `base64` (see [`embed_response`]), `model` and `user` ignored, and
/// anything else refused.
pub fn embed_requests(model: &str, body: &Map<String, Value>) -> Result<Vec<Value>, Unsupported> {
    let input = body
        .get("input")
        .ok_or_else(|| Unsupported("`input` is required".into()))?;
    let mut calls = embed_request(model, input)?;
    for (key, value) in body {
        match key.as_str() {
            "input" | "model" | "user" => {}
            "encoding_format" if value.is_null() || value == "float" || value == "base64" => {}
            "dimensions" if value.is_null() => {}
            "dimensions" if model.contains("titan-embed-text-v2") => {
                let Some(d @ (256 | 512 | 1024)) = value.as_u64() else {
                    return Err(Unsupported(
                        "Titan v2 takes `dimensions` 256, 512 or 1024".into(),
                    ));
                };
                for call in &mut calls {
                    call["dimensions"] = Value::from(d);
                }
            }
            _ => {
                return Err(Unsupported(format!(
                    "Bedrock embeddings do not support `{key}` for {model}"
                )))
            }
        }
    }
    Ok(calls)
}

/// The OpenAI embeddings answer for the bodies of the calls [`embed_request`] made (same order),
/// `input` being the same OpenAI `input`; `base64` encodes the vectors as the caller's
/// `encoding_format: base64` asks (Bedrock answers floats).
pub fn embed_response(
    model: &str,
    input: &Value,
    bodies: &[&[u8]],
    header_tokens: Option<u64>,
    base64: bool,
) -> Result<Embedded, Garbled> {
    let texts = texts(input).map_err(|e| Garbled(e.0))?;
    let family = EmbedFamily::of(model)
        .ok_or_else(|| Garbled(format!("`{model}` is not a Bedrock embedding model")))?;
    let mut vectors = Vec::with_capacity(texts.len());
    let mut counted = 0u64;
    for body in bodies {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Garbled(format!("Bedrock embedding answer is not JSON: {e}")))?;
        match family {
            EmbedFamily::Titan => {
                vectors.push(crate::providers::embedding(v.get("embedding"), base64)?);
                counted = counted.saturating_add(
                    v.get("inputTextTokenCount")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| Garbled("Titan answer has no inputTextTokenCount".into()))?,
                );
            }
            EmbedFamily::Cohere => {
                let list = v
                    .get("embeddings")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Garbled("Cohere answer has no embeddings list".into()))?;
                for e in list {
                    vectors.push(crate::providers::embedding(Some(e), base64)?);
                }
            }
        }
    }
    if vectors.len() != texts.len() {
        return Err(Garbled(format!(
            "Bedrock answered {} embeddings for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    let prompt = match family {
        EmbedFamily::Titan => Some(counted),
        EmbedFamily::Cohere => header_tokens,
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e }))
        .collect();
    let mut body = json!({"object": "list", "data": data, "model": model});
    if let Some(p) = prompt {
        body["usage"] = json!({ "prompt_tokens": p, "total_tokens": p });
    }
    Ok(Embedded {
        body,
        usage: prompt.map(|prompt| TokenUsage {
            prompt,
            ..TokenUsage::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titan_is_one_call_per_text() {
        let input = json!(["a", "bb"]);
        let reqs = embed_request("amazon.titan-embed-text-v2:0", &input).unwrap();
        assert_eq!(
            reqs,
            vec![json!({"inputText": "a"}), json!({"inputText": "bb"})]
        );
        let b1 = br#"{"embedding": [0.1, 0.2], "inputTextTokenCount": 3}"#;
        let b2 = br#"{"embedding": [0.3, 0.4], "inputTextTokenCount": 4}"#;
        let out = embed_response(
            "amazon.titan-embed-text-v2:0",
            &input,
            &[b1, b2],
            None,
            false,
        )
        .unwrap();
        assert_eq!(out.usage.map(|u| u.prompt), Some(7));
        assert_eq!(out.body["data"][1]["index"], 1);
        assert_eq!(out.body["data"][1]["embedding"], json!([0.3, 0.4]));
        assert_eq!(out.body["usage"]["prompt_tokens"], 7);
        // The `openai` SDK asks for base64 by default: little-endian f32s.
        let out = embed_response(
            "amazon.titan-embed-text-v2:0",
            &input,
            &[b1, b2],
            None,
            true,
        )
        .unwrap();
        let b64 = out.body["data"][0]["embedding"].as_str().unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, [0.1f32, 0.2]);
    }

    #[test]
    fn cohere_batches_and_estimates_without_the_header() {
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let reqs = embed_request("cohere.embed-english-v3", &json!(many)).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0]["texts"].as_array().unwrap().len(), 96);
        assert_eq!(reqs[1]["input_type"], "search_document");
        let input = json!("hello world!");
        let body = br#"{"id": "x", "embeddings": [[1, 2]], "texts": ["hello world!"], "response_type": "embeddings_floats"}"#;
        let est = embed_response("cohere.embed-english-v3", &input, &[body], None, false).unwrap();
        assert_eq!(est.usage, None);
        assert!(est.body.get("usage").is_none());
        let exact =
            embed_response("cohere.embed-english-v3", &input, &[body], Some(4), false).unwrap();
        assert_eq!(exact.usage.map(|u| u.prompt), Some(4));
    }

    #[test]
    fn whole_requests() {
        let body = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let v2 = "amazon.titan-embed-text-v2:0";
        let calls = embed_requests(
            v2,
            &body(json!({"model": v2, "input": ["a"], "dimensions": 256, "encoding_format": "float", "user": "u"})),
        )
        .unwrap();
        assert_eq!(calls, vec![json!({"inputText": "a", "dimensions": 256})]);
        for bad in [
            json!({"input": "a", "dimensions": 300}),
            json!({"input": "a", "encoding_format": "int8"}),
            json!({"input": "a", "extra": 1}),
            json!({}),
        ] {
            assert!(embed_requests(v2, &body(bad.clone())).is_err(), "{bad}");
        }
        let v1 = "amazon.titan-embed-text-v1";
        assert!(embed_requests(v1, &body(json!({"input": "a", "dimensions": 256}))).is_err());
    }

    #[test]
    fn bad_inputs_and_answers() {
        assert!(embed_request("amazon.titan-embed-text-v1", &json!([1, 2])).is_err());
        assert!(embed_request("amazon.titan-embed-text-v1", &json!([])).is_err());
        assert!(embed_request("anthropic.claude", &json!("x")).is_err());
        let input = json!(["a", "b"]);
        let one = br#"{"embedding": [0.1], "inputTextTokenCount": 1}"#;
        let m = "amazon.titan-embed-text-v1";
        assert!(
            embed_response(m, &input, &[one], None, false).is_err(),
            "too few"
        );
        assert!(embed_response(m, &input, &[one, b"nope"], None, false).is_err());
        assert!(embed_response(
            m,
            &input,
            &[one, br#"{"embedding": ["x"], "inputTextTokenCount": 1}"#],
            None,
            false
        )
        .is_err());
        assert!(embed_response(m, &input, &[one, br#"{"embedding": [1]}"#], None, false).is_err());
    }
}
