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
//!   the data plane passes as `header_tokens` (summed over the calls); without it the count is
//!   estimated (a token per 4 bytes of text, rounded up) and flagged.

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
    /// The OpenAI `list` of `embedding` objects, with `usage`.
    pub body: Value,
    pub usage: TokenUsage,
    /// Whether `usage` is an estimate (Cohere without the token-count header).
    pub estimated: bool,
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
/// `encoding_format` `float` only (Bedrock answers floats), `model` and `user` ignored, and
/// anything else refused.
pub fn embed_requests(model: &str, body: &Map<String, Value>) -> Result<Vec<Value>, Unsupported> {
    let input = body
        .get("input")
        .ok_or_else(|| Unsupported("`input` is required".into()))?;
    let mut calls = embed_request(model, input)?;
    for (key, value) in body {
        match key.as_str() {
            "input" | "model" | "user" => {}
            "encoding_format" if value.is_null() || value == "float" => {}
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
/// `input` being the same OpenAI `input`.
pub fn embed_response(
    model: &str,
    input: &Value,
    bodies: &[&[u8]],
    header_tokens: Option<u64>,
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
                vectors.push(vector(v.get("embedding"))?);
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
                    vectors.push(vector(Some(e))?);
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
    let (prompt, estimated) = match (family, header_tokens) {
        (EmbedFamily::Titan, _) => (counted, false),
        (EmbedFamily::Cohere, Some(n)) => (n, false),
        (EmbedFamily::Cohere, None) => (
            texts.iter().map(|t| (t.len() as u64).div_ceil(4)).sum(),
            true,
        ),
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e }))
        .collect();
    let usage = TokenUsage {
        prompt,
        ..TokenUsage::default()
    };
    Ok(Embedded {
        body: json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": prompt, "total_tokens": prompt },
        }),
        usage,
        estimated,
    })
}

fn vector(v: Option<&Value>) -> Result<Value, Garbled> {
    match v {
        Some(Value::Array(xs)) if xs.iter().all(Value::is_number) => Ok(Value::Array(xs.clone())),
        _ => Err(Garbled("Bedrock embedding is not a list of numbers".into())),
    }
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
        let out = embed_response("amazon.titan-embed-text-v2:0", &input, &[b1, b2], None).unwrap();
        assert_eq!(out.usage.prompt, 7);
        assert!(!out.estimated);
        assert_eq!(out.body["data"][1]["index"], 1);
        assert_eq!(out.body["data"][1]["embedding"], json!([0.3, 0.4]));
        assert_eq!(out.body["usage"]["prompt_tokens"], 7);
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
        let est = embed_response("cohere.embed-english-v3", &input, &[body], None).unwrap();
        assert_eq!((est.usage.prompt, est.estimated), (3, true));
        let exact = embed_response("cohere.embed-english-v3", &input, &[body], Some(4)).unwrap();
        assert_eq!((exact.usage.prompt, exact.estimated), (4, false));
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
            json!({"input": "a", "encoding_format": "base64"}),
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
        assert!(embed_response(m, &input, &[one], None).is_err(), "too few");
        assert!(embed_response(m, &input, &[one, b"nope"], None).is_err());
        assert!(embed_response(
            m,
            &input,
            &[one, br#"{"embedding": ["x"], "inputTextTokenCount": 1}"#],
            None
        )
        .is_err());
        assert!(embed_response(m, &input, &[one, br#"{"embedding": [1]}"#], None).is_err());
    }
}
