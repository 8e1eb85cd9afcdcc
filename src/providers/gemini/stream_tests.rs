//! Tests of the stream translation, with event sequences shaped as `streamGenerateContent`
//! sends them (cumulative `usageMetadata`, the finish reason on the last candidate chunk).

use serde_json::{json, Value};

use super::*;
use crate::providers::testing::translate;

fn run(events: &[Value], wants_usage: bool) -> (Vec<Value>, ChatStream) {
    let mut t = ChatStream::new("gemini-2.5-flash", wants_usage);
    let frames = translate(&mut t, events.iter().map(|e| (None, e)));
    (frames, t)
}

#[test]
fn text_stream_with_usage() {
    let events = [
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": true}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "thoughtsTokenCount": 2, "totalTokenCount": 11}, "responseId": "r1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "thoughtsTokenCount": 2}}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 2,
                                 "cachedContentTokenCount": 3, "totalTokenCount": 13}}),
    ];
    let (f, t) = run(&events, true);
    assert_eq!(f.len(), 5, "{f:?}");
    assert_eq!(f[0]["id"], "chatcmpl-r1");
    assert_eq!(f[0]["object"], "chat.completion.chunk");
    assert_eq!(
        f[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(f[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(f[1]["id"], "chatcmpl-r1");
    assert_eq!(f[2]["choices"][0]["delta"], json!({"content": "lo"}));
    assert_eq!(f[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(f[3]["choices"], json!([]));
    assert_eq!(f[3]["usage"]["prompt_tokens"], 9);
    assert_eq!(f[3]["usage"]["completion_tokens"], 4);
    assert_eq!(f[3]["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(f[4], "[DONE]");
    assert_eq!(
        t.usage(),
        Some(TokenUsage {
            prompt: 9,
            completion: 4,
            cached: 3,
            cache_write: 0
        })
    );
    assert_eq!(t.chars(), 8, "answer text and thoughts");
    assert!(t.ended_cleanly());
}

#[test]
fn function_call_stream_without_usage_chunk() {
    let events = [
        json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "time", "args": {}}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 6}}),
    ];
    let (f, t) = run(&events, false);
    assert_eq!(f.len(), 2);
    let c = &f[0]["choices"][0];
    assert_eq!(c["delta"]["role"], "assistant");
    assert_eq!(c["delta"]["tool_calls"][0]["index"], 0);
    assert_eq!(
        c["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(c["delta"]["tool_calls"][1]["index"], 1);
    assert_eq!(c["delta"]["tool_calls"][1]["function"]["name"], "time");
    assert!(c["delta"].get("content").is_none());
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(f[1], "[DONE]");
    assert_eq!(t.usage().unwrap().completion, 6);
}

#[test]
fn blocked_and_error_events() {
    let (f, _) = run(
        &[
            json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 4}}),
        ],
        true,
    );
    assert_eq!(f[0]["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(f[1]["usage"]["prompt_tokens"], 4);

    let (f, t) = run(
        &[json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})],
        true,
    );
    assert_eq!(
        f[0],
        json!({"error": {"message": "overloaded", "type": "UNAVAILABLE", "code": 503}})
    );
    assert_eq!(f[1], "[DONE]");
    assert!(t.usage().is_none());
}

#[test]
fn garbled_events() {
    let mut t = ChatStream::new("m", false);
    let mut out = Vec::new();
    for bad in [
        &b"{not json"[..],
        b"42",
        br#"{"candidates": [{"index": 99}]}"#,
        br#"{"candidates": {}}"#,
    ] {
        assert!(t
            .event(
                Event {
                    name: None,
                    data: bad
                },
                &mut out
            )
            .is_err());
    }
    assert!(t
        .event(
            Event {
                name: None,
                data: b"  "
            },
            &mut out
        )
        .is_ok());
    assert!(out.is_empty());
}

#[test]
fn a_stream_without_finish_did_not_end_cleanly() {
    let (_, t) = run(
        &[json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})],
        false,
    );
    assert!(!t.ended_cleanly());
    let (_, t) = run(&[], false);
    assert!(!t.ended_cleanly());
    let (_, t) = run(
        &[json!({"promptFeedback": {"blockReason": "SAFETY"}})],
        false,
    );
    assert!(t.ended_cleanly());
}
