//! The frames of an OpenAI caller's chat stream, written alike by every translation into it
//! (Anthropic, Bedrock ConverseStream, Gemini): each frame is one SSE event `data: {json}\n\n`;
//! content goes in `chat.completion.chunk`s; a clean end is the usage chunk the client asked for
//! (no choices) and then `data: [DONE]`; a failed stream ends with an error frame and no
//! `[DONE]`.

use bytes::Bytes;
use serde_json::{json, Value};

/// A frame of an OpenAI caller's stream: `data: {json}\n\n`.
pub fn data_frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A `chat.completion.chunk` frame with `choices`.
pub fn chunk_frame(id: &str, created: u64, model: &str, choices: Value) -> Bytes {
    data_frame(&json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }))
}

/// The error frame that ends a failed stream: `{"error": {"message", "type"}}`.
pub fn error_frame(message: &str, kind: &str) -> Bytes {
    data_frame(&json!({ "error": { "message": message, "type": kind } }))
}

/// The frames that close a complete stream: the usage chunk when there is `usage` to send (the
/// client asked for it and the provider reported it), then `data: [DONE]`.
pub fn close(out: &mut Vec<Bytes>, (id, created, model): (&str, u64, &str), usage: Option<Value>) {
    if let Some(usage) = usage {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
        });
        chunk["usage"] = usage;
        out.push(data_frame(&chunk));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
}

/// Seconds since the Unix epoch, for the `created` field of OpenAI objects (0 if the clock is
/// before 1970).
pub fn created_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_sends_the_usage_chunk_only_when_there_is_usage() {
        let mut out = Vec::new();
        close(&mut out, ("c", 7, "m"), Some(json!({"total_tokens": 3})));
        close(&mut out, ("c", 7, "m"), None);
        assert_eq!(
            out,
            [
                "data: {\"choices\":[],\"created\":7,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion.chunk\",\"usage\":{\"total_tokens\":3}}\n\n",
                "data: [DONE]\n\n",
                "data: [DONE]\n\n",
            ]
            .map(|f: &'static str| Bytes::from_static(f.as_bytes()))
        );
    }
}
