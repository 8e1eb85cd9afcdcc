//! Tests of the Converse translation, both directions (the request's in `converse`, the
//! answer's in `response`).

use serde_json::{json, Map, Value};

use super::*;
use crate::domain::pricing::TokenUsage;
use crate::providers::bedrock::response::converse_response;

fn chat(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn a_full_request_translates() {
    let req = converse_request(&chat(json!({
        "model": "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"png\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a picture"},
            {"role": "user", "content": "thanks"}
        ],
        "max_tokens": 100,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": "Looks up", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}
        }}],
        "tool_choice": "required"
    })))
    .unwrap();
    assert_eq!(
        req,
        json!({
            "system": [{"text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "What is this?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
                ]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "lookup", "input": {"q": "png"}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "a picture"}]}},
                    {"text": "thanks"}
                ]}
            ],
            "inferenceConfig": {"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "lookup", "description": "Looks up",
                    "inputSchema": {"json": {"type": "object", "properties": {"q": {"type": "string"}}}}}}],
                "toolChoice": {"any": {}}
            }
        })
    );
}

#[test]
fn tool_choice_forms() {
    let base = |choice: Value| {
        converse_request(&chat(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": choice
        })))
    };
    assert_eq!(
        base(json!("auto")).unwrap()["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    assert_eq!(
        base(json!({"type": "function", "function": {"name": "f"}})).unwrap()["toolConfig"]
            ["toolChoice"],
        json!({"tool": {"name": "f"}})
    );
    assert_eq!(
        base(json!("auto")).unwrap()["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        json!({"type": "object", "properties": {}})
    );
    assert!(base(json!("none")).unwrap().get("toolConfig").is_none());
    assert!(base(json!(7)).is_err());
}

#[test]
fn what_converse_cannot_carry_is_refused() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (k, v) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("presence_penalty", json!(0.5)),
        ("response_format", json!({"type": "json_object"})),
        ("seed", json!(1)),
        ("reasoning_effort", json!("high")),
        ("max_tokens", json!(-1)),
        ("stop", json!(3)),
    ] {
        let e = converse_request(&chat(json!({"messages": msgs, k: v}))).unwrap_err();
        assert!(e.0.contains(k), "{k}: {e}");
    }
    // Harmless defaults pass.
    let ok = converse_request(&chat(json!({
        "messages": msgs, "n": 1, "logprobs": false, "presence_penalty": 0, "user": "u", "top_k": 5
    })))
    .unwrap();
    assert_eq!(ok["additionalModelRequestFields"], json!({"top_k": 5}));
    for bad in [
        json!({"messages": "hi"}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}}]}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        json!({"messages": [{"role": "function", "content": "x"}]}),
        json!({"messages": [{"role": "tool", "content": "x"}]}),
        json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{nope"}}]}]}),
        json!({"messages": msgs, "tools": [{"type": "retrieval"}]}),
        json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "x"}
        ]}),
    ] {
        assert!(converse_request(&chat(bad.clone())).is_err(), "{bad}");
    }
}

/// The Converse response example of AWS's API reference, with a tool use and cache counts.
#[test]
fn a_response_translates_with_cache_usage() {
    let body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Let me look."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "lookup", "input": {"q": "x"}}}
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 342,
                  "cacheReadInputTokens": 200, "cacheWriteInputTokens": 100},
        "metrics": {"latencyMs": 420}
    });
    let (out, usage) = converse_response(body.to_string().as_bytes(), "m").unwrap();
    assert_eq!(
        usage,
        TokenUsage {
            prompt: 330,
            completion: 12,
            cached: 200,
            cache_write: 100
        }
    );
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "m");
    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me look.");
    assert_eq!(choice["message"]["tool_calls"][0]["id"], "tooluse_1");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"q":"x"}"#
    );
    assert_eq!(out["usage"]["prompt_tokens"], 330);
    assert_eq!(out["usage"]["total_tokens"], 342);
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 200);
}

#[test]
fn stop_reasons_map() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("content_filtered", "content_filter"),
    ] {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
            "stopReason": stop,
            "usage": {"inputTokens": 1, "outputTokens": 1}
        });
        let (out, u) = converse_response(body.to_string().as_bytes(), "m").unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], finish);
        assert_eq!(
            u,
            TokenUsage {
                prompt: 1,
                completion: 1,
                cached: 0,
                cache_write: 0
            }
        );
    }
}

#[test]
fn garbled_responses_are_refused() {
    for body in [
        "not json",
        "{}",
        r#"{"output": {"message": {"content": "x"}}, "usage": {"inputTokens": 1, "outputTokens": 1}}"#,
        r#"{"output": {"message": {"content": []}}}"#,
        r#"{"output": {"message": {"content": []}}, "usage": {"inputTokens": -1, "outputTokens": 1}}"#,
        r#"{"output": {"message": {"content": []}}, "usage": {"outputTokens": 1}}"#,
        r#"{"output": {"message": {"content": [{"toolUse": {"name": "f"}}]}}, "usage": {"inputTokens": 1, "outputTokens": 1}}"#,
    ] {
        assert!(converse_response(body.as_bytes(), "m").is_err(), "{body}");
    }
}
