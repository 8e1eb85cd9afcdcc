//! Tests of the answer and usage translation (answers shaped as in Google's API reference).

use serde_json::{json, Value};

use super::*;

#[test]
fn usage_counts_thoughts_as_output_and_tool_prompts_as_input() {
    let u = usage(
        &json!({"promptTokenCount": 100, "cachedContentTokenCount": 40,
        "candidatesTokenCount": 7, "thoughtsTokenCount": 30, "toolUsePromptTokenCount": 5,
        "totalTokenCount": 142}),
    );
    assert_eq!(
        u,
        TokenUsage {
            prompt: 105,
            completion: 37,
            cached: 40,
            cache_write: 0
        }
    );
    assert_eq!(usage(&json!({})), TokenUsage::default());
    assert_eq!(
        usage(&json!({"promptTokenCount": "x"})),
        TokenUsage::default()
    );
}

#[test]
fn text_answer() {
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think", "thought": true}, {"text": "Hello"}, {"text": " there"}]},
            "finishReason": "STOP", "index": 0, "safetyRatings": []}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "thoughtsTokenCount": 3,
            "cachedContentTokenCount": 4, "totalTokenCount": 15},
        "modelVersion": "gemini-2.5-flash", "responseId": "abc",
    });
    let (out, u) = chat_response(body.to_string().as_bytes(), "gemini-2.5-flash").unwrap();
    assert_eq!(out["id"], "chatcmpl-abc");
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "gemini-2.5-flash");
    assert_eq!(
        out["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop", "logprobs": null}])
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
               "prompt_tokens_details": {"cached_tokens": 4},
               "completion_tokens_details": {"reasoning_tokens": 3}})
    );
    assert_eq!(
        u,
        Some(TokenUsage {
            prompt: 10,
            completion: 5,
            cached: 4,
            cache_write: 0
        })
    );
}

#[test]
fn function_calls_and_finish_reasons() {
    let body = json!({"candidates": [
        {"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            {"functionCall": {"id": "given", "name": "time", "args": {}}}]}, "finishReason": "STOP"},
        {"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        {"finishReason": "SAFETY", "index": 2},
        {"content": {"parts": [{"text": "x"}]}, "finishReason": "RECITATION", "index": 3},
    ]});
    let (out, u) = chat_response(body.to_string().as_bytes(), "m").unwrap();
    assert!(u.is_none() && out.get("usage").is_none());
    let c = &out["choices"];
    let calls = &c[0]["message"]["tool_calls"];
    assert_eq!(c[0]["finish_reason"], "tool_calls");
    assert_eq!(c[0]["message"]["content"], Value::Null);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(
        calls[0]["function"],
        json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(calls[1]["id"], "given");
    assert_eq!(c[1]["finish_reason"], "length");
    assert_eq!(c[2]["finish_reason"], "content_filter");
    assert_eq!(c[2]["message"]["content"], "");
    assert_eq!(c[3]["finish_reason"], "content_filter");
}

#[test]
fn blocked_prompt() {
    let body = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}});
    let (out, u) = chat_response(body.to_string().as_bytes(), "m").unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(
        out["choices"][0]["message"]["refusal"],
        "Gemini blocked the prompt (SAFETY)"
    );
    assert_eq!(u.unwrap().prompt, 8);
}

#[test]
fn garbled_answers() {
    for body in [
        &b"<html>"[..],
        b"[]",
        b"{}",
        br#"{"candidates": 3}"#,
        br#"{"candidates": [{"content": {"parts": {}}}]}"#,
        br#"{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}"#,
    ] {
        assert!(
            chat_response(body, "m").is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn thought_signatures_ride_in_the_tool_call_id_and_come_back() {
    let body = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "CiQB0e2Kb+/x"}]},
        "finishReason": "STOP"}]});
    let (out, _) = chat_response(body.to_string().as_bytes(), "m").unwrap();
    let call = out["choices"][0]["message"]["tool_calls"][0].clone();
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("call_") && id.contains("__ts__"), "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );

    let next = json!({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "done"},
    ]});
    let req = crate::providers::gemini::chat_request(next.as_object().unwrap()).unwrap();
    assert_eq!(
        req["contents"][1]["parts"][0],
        json!({"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "CiQB0e2Kb+/x"})
    );
    assert_eq!(
        req["contents"][2]["parts"][0]["functionResponse"]["name"],
        "f"
    );
}
