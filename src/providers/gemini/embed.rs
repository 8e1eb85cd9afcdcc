//! OpenAI embeddings into Gemini's `embedContent` (one string) / `batchEmbedContents` (a list),
//! or Vertex AI's `predict` (`{"instances": [{"content": ...}]}`), and their answers back into
//! an OpenAI embeddings list.
//!
//! `dimensions` becomes `outputDimensionality`; `encoding_format: base64` is honoured on the
//! way back (little-endian f32, as OpenAI sends). Token-id inputs are refused (Gemini embeds
//! text only). Usage: Vertex reports `statistics.token_count` per prediction; the Gemini API
//! reports none (then `usage` is omitted and `None` returned: the data plane estimates).

use serde_json::{json, Map, Value};

use super::path_segment;
use crate::domain::pricing::TokenUsage;
use crate::providers::{Garbled, Unsupported};

/// Which embeddings protocol the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedApi {
    /// The Gemini API: `embedContent` / `batchEmbedContents`.
    Gemini,
    /// Vertex AI: `predict`.
    Vertex,
}

/// An upstream embeddings call: the path after the base URL and the JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub path: String,
    pub body: Value,
}

/// What an OpenAI embeddings body asks for: the texts, whether `input` was one string, and
/// the `dimensions`.
struct Inputs<'a> {
    texts: Vec<&'a str>,
    single: bool,
    dims: Option<u64>,
}

fn inputs(req: &Map<String, Value>) -> Result<Inputs<'_>, Unsupported> {
    let known = ["input", "model", "dimensions", "encoding_format", "user"];
    if let Some(key) = req.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Unsupported(format!(
            "{key} is not supported by Gemini embeddings"
        )));
    }
    match req.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(f) if f == "float" || f == "base64" => {}
        Some(f) => return Err(Unsupported(format!("encoding_format {f} is not supported"))),
    }
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .filter(|d| *d > 0)
                .ok_or_else(|| Unsupported("dimensions must be a positive integer".into()))?,
        ),
    };
    let token_ids = || Unsupported("input: Gemini embeds text only (not token ids)".into());
    let (texts, single) = match req.get("input") {
        Some(Value::String(s)) => (vec![s.as_str()], true),
        Some(Value::Array(items)) if !items.is_empty() => (
            items
                .iter()
                .map(|v| v.as_str().ok_or_else(token_ids))
                .collect::<Result<Vec<_>, _>>()?,
            false,
        ),
        _ => {
            return Err(Unsupported(
                "input must be a string or a non-empty array of strings".into(),
            ))
        }
    };
    Ok(Inputs {
        texts,
        single,
        dims,
    })
}

/// The upstream call for an OpenAI embeddings body (`model` is the provider's model id).
pub fn embed_request(
    req: &Map<String, Value>,
    model: &str,
    api: EmbedApi,
) -> Result<EmbedRequest, Unsupported> {
    let Inputs {
        texts,
        single,
        dims,
    } = inputs(req)?;
    let model = super::bare_model(model);
    let seg = path_segment(model);
    // One `EmbedContentRequest` of the Gemini API.
    let request = |t: &str| {
        let mut v =
            json!({ "model": format!("models/{model}"), "content": { "parts": [{ "text": t }] } });
        if let Some(d) = dims {
            v["outputDimensionality"] = json!(d);
        }
        v
    };
    Ok(match (api, texts.as_slice()) {
        (EmbedApi::Gemini, [text]) if single => EmbedRequest {
            path: format!("/models/{seg}:embedContent"),
            body: request(text),
        },
        (EmbedApi::Gemini, _) => EmbedRequest {
            path: format!("/models/{seg}:batchEmbedContents"),
            body: json!({ "requests": texts.iter().map(|t| request(t)).collect::<Vec<_>>() }),
        },
        (EmbedApi::Vertex, _) => {
            let instances: Vec<Value> = texts.iter().map(|t| json!({ "content": t })).collect();
            let mut body = json!({ "instances": instances });
            if let Some(d) = dims {
                body["parameters"] = json!({ "outputDimensionality": d });
            }
            EmbedRequest {
                path: format!("/models/{seg}:predict"),
                body,
            }
        }
    })
}

/// The OpenAI embeddings list for an `embedContent`, `batchEmbedContents` or `predict` answer
/// (told apart by their shape), and the prompt tokens when the upstream counted them.
/// `base64` is whether the caller asked for `encoding_format: base64`.
pub fn embed_response(
    body: &[u8],
    model: &str,
    base64: bool,
) -> Result<(Value, Option<TokenUsage>), Garbled> {
    let resp: Value = serde_json::from_slice(body).map_err(|e| {
        Garbled(format!(
            "Gemini answered with something that is not JSON: {e}"
        ))
    })?;
    let (vectors, counted) = vectors(&resp)?;
    let tokens = resp
        .get("usageMetadata")
        .and_then(|m| m.get("promptTokenCount"))
        .and_then(Value::as_u64)
        .or(counted);
    let data = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(json!({ "object": "embedding", "index": i, "embedding": crate::providers::embedding(Some(v), base64)? }))
        })
        .collect::<Result<Vec<_>, Garbled>>()?;
    let mut out = json!({ "object": "list", "data": data, "model": model });
    if let Some(t) = tokens {
        out["usage"] = json!({ "prompt_tokens": t, "total_tokens": t });
    }
    let usage = tokens.map(|t| TokenUsage {
        prompt: t,
        ..TokenUsage::default()
    });
    Ok((out, usage))
}

/// The vectors of an answer, and the tokens Vertex counted (when every prediction has its
/// `statistics.token_count`).
fn vectors(resp: &Value) -> Result<(Vec<&Value>, Option<u64>), Garbled> {
    if let Some(e) = resp.get("embedding") {
        return Ok((
            vec![e.get("values").ok_or_else(|| garbled("embedding.values"))?],
            None,
        ));
    }
    if let Some(Value::Array(list)) = resp.get("embeddings") {
        let values = list
            .iter()
            .map(|e| {
                e.get("values")
                    .ok_or_else(|| garbled("embeddings[].values"))
            })
            .collect::<Result<_, _>>()?;
        return Ok((values, None));
    }
    let Some(Value::Array(predictions)) = resp.get("predictions") else {
        return Err(Garbled(
            "Gemini's embeddings answer has no embedding, embeddings or predictions".into(),
        ));
    };
    let mut sum = Some(0u64);
    let mut values = Vec::with_capacity(predictions.len());
    for p in predictions {
        let e = p
            .get("embeddings")
            .ok_or_else(|| garbled("predictions[].embeddings"))?;
        values.push(
            e.get("values")
                .ok_or_else(|| garbled("predictions[].embeddings.values"))?,
        );
        let count = e
            .get("statistics")
            .and_then(|s| s.get("token_count"))
            .and_then(Value::as_u64);
        sum = sum.zip(count).map(|(a, b)| a.saturating_add(b));
    }
    Ok((values, sum))
}

fn garbled(field: &str) -> Garbled {
    Garbled(format!("Gemini's embeddings answer lacks {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn gemini_single_and_batch() {
        let r = embed_request(
            &req(json!({"model": "text-embedding-004", "input": "hi", "dimensions": 8})),
            "text-embedding-004",
            EmbedApi::Gemini,
        )
        .unwrap();
        assert_eq!(r.path, "/models/text-embedding-004:embedContent");
        assert_eq!(
            r.body,
            json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 8})
        );
        let r = embed_request(&req(json!({"input": ["a", "b"]})), "e", EmbedApi::Gemini).unwrap();
        assert_eq!(r.path, "/models/e:batchEmbedContents");
        assert_eq!(
            r.body,
            json!({"requests": [
                {"model": "models/e", "content": {"parts": [{"text": "a"}]}},
                {"model": "models/e", "content": {"parts": [{"text": "b"}]}},
            ]})
        );
    }

    #[test]
    fn vertex_predict() {
        let r = embed_request(
            &req(json!({"input": ["a", "b"], "dimensions": 256})),
            "text-embedding-005",
            EmbedApi::Vertex,
        )
        .unwrap();
        assert_eq!(r.path, "/models/text-embedding-005:predict");
        assert_eq!(
            r.body,
            json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 256}})
        );
    }

    #[test]
    fn refusals() {
        for (body, needle) in [
            (json!({"input": [[1, 2]]}), "text only"),
            (json!({"input": []}), "input"),
            (json!({"input": "x", "dimensions": 0}), "dimensions"),
            (
                json!({"input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!({"input": "x", "input_type": "query"}), "input_type"),
        ] {
            let e = embed_request(&req(body), "m", EmbedApi::Gemini).unwrap_err();
            assert!(e.0.contains(needle), "{e}");
        }
    }

    #[test]
    fn answers() {
        let (v, u) =
            embed_response(br#"{"embedding": {"values": [0.5, -1]}}"#, "m", false).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([0.5, -1]));
        assert_eq!(v["model"], "m");
        assert!(u.is_none() && v.get("usage").is_none());

        let (v, _) = embed_response(
            br#"{"embeddings": [{"values": [1]}, {"values": [2]}]}"#,
            "m",
            false,
        )
        .unwrap();
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][1]["embedding"], json!([2]));

        let body = br#"{"predictions": [
            {"embeddings": {"values": [0.25], "statistics": {"token_count": 4, "truncated": false}}},
            {"embeddings": {"values": [0.5], "statistics": {"token_count": 6, "truncated": false}}}]}"#;
        let (v, u) = embed_response(body, "m", true).unwrap();
        assert_eq!(u.unwrap().prompt, 10);
        assert_eq!(v["usage"]["prompt_tokens"], 10);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(0.25f32.to_le_bytes());
        assert_eq!(v["data"][0]["embedding"], json!(b64));
    }

    #[test]
    fn garbled_answers() {
        for body in [
            &b"nope"[..],
            br#"{}"#,
            br#"{"embedding": {}}"#,
            br#"{"embedding": {"values": ["x"]}}"#,
            br#"{"predictions": [{}]}"#,
        ] {
            assert!(embed_response(body, "m", false).is_err());
        }
    }
}
