//! Tests of the chat request translation.

use serde_json::{json, Map, Value};

use super::*;

fn req(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn messages_system_and_config() {
    let out = chat_request(&req(json!({
        "model": "gemini-2.5-flash", "stream": true, "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/cat.JPG?s=1"}},
                {"type": "image_url", "image_url": {"url": "gs://b/doc.pdf"}}]},
        ],
        "max_completion_tokens": 100, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "n": 2,
        "stop": "END", "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "response_format": {"type": "json_object"}, "user": "u1", "parallel_tool_calls": true,
    })))
    .unwrap();
    assert_eq!(
        out,
        json!({
            "systemInstruction": {"parts": [{"text": "Be terse."}, {"text": "No emoji."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello"}]},
                {"role": "user", "parts": [{"text": "Look"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/cat.JPG?s=1"}},
                    {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/doc.pdf"}}]},
            ],
            "generationConfig": {
                "maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "topK": 40,
                "candidateCount": 2, "stopSequences": ["END"], "seed": 7,
                "presencePenalty": 0.1, "frequencyPenalty": 0.2,
                "responseMimeType": "application/json",
            },
        })
    );
}

#[test]
fn tools_calls_and_results() {
    let out = chat_request(&req(json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
            "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "additionalProperties": false, "required": ["city"],
                "properties": {"city": {"type": ["string", "null"], "default": "x"},
                               "additionalProperties": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    })))
    .unwrap();
    assert_eq!(
        out["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "weather", "response": {"content": "sunny"}}}]},
        ])
    );
    assert_eq!(
        out["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "Weather",
            "parameters": {"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "nullable": true},
                // A property that happens to be called like a keyword is kept.
                "additionalProperties": {"type": "string"}}}}]}])
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
}

#[test]
fn tool_choice_modes() {
    for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
        let out = chat_request(&req(json!({
            "messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
        })))
        .unwrap();
        assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], mode);
    }
}

#[test]
fn json_schema_response_format() {
    let out = chat_request(&req(json!({
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true,
            "schema": {"type": "object", "additionalProperties": false,
                       "properties": {"a": {"type": "integer"}}}}},
        "reasoning_effort": "low",
    })))
    .unwrap();
    assert_eq!(
        out["generationConfig"],
        json!({"responseMimeType": "application/json",
               "responseSchema": {"type": "object", "properties": {"a": {"type": "integer"}}},
               "thinkingConfig": {"thinkingBudget": 1024}})
    );
}

#[test]
fn refusals_name_the_parameter() {
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (json!({"messages": user, "logprobs": true}), "logprobs"),
        (json!({"messages": user, "top_logprobs": 2}), "top_logprobs"),
        (
            json!({"messages": user, "logit_bias": {"1": 2}}),
            "logit_bias",
        ),
        (
            json!({"messages": user, "tools": [{"type": "web_search"}]}),
            "tools[0]",
        ),
        (json!({"messages": user, "max_tokens": -1}), "max_tokens"),
        (
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"$ref": "#/$defs/x"}}}]}),
            "$ref",
        ),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            "nope",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url",
            "image_url": {"url": "https://x.test/image"}}]}]}),
            "MIME type",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url",
            "image_url": {"url": "file:///etc/passwd"}}]}]}),
            "data:, http",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}),
            "\"file\"",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function":
            {"name": "f", "arguments": "[1]"}}]}]}),
            "arguments",
        ),
        (
            json!({"messages": [{"role": "system", "content": "only"}]}),
            "at least one",
        ),
        (json!({"messages": "x"}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "robot",
        ),
    ];
    for (body, needle) in cases {
        let e = chat_request(&req(body.clone())).unwrap_err();
        assert!(e.0.contains(needle), "{body}: {e}");
    }
}

#[test]
fn hostile_schema_nesting_is_bounded() {
    let mut schema = json!({"type": "string"});
    for _ in 0..200 {
        schema = json!({"type": "array", "items": schema});
    }
    let body = json!({"messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]});
    let e = chat_request(&req(body)).unwrap_err();
    assert!(e.0.contains("nests too deeply"), "{e}");
}

#[test]
fn empty_text_is_dropped_and_max_completion_tokens_wins() {
    let out = chat_request(&req(json!({
        "messages": [
            {"role": "system", "content": ""},
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        ],
        "max_tokens": 10, "max_completion_tokens": 20,
    })))
    .unwrap();
    assert!(out.get("systemInstruction").is_none());
    assert_eq!(
        out["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]})
    );
    assert_eq!(out["generationConfig"], json!({"maxOutputTokens": 20}));
}
