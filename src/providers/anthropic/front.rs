//! The `/v1/messages` front door to OpenAI-format providers: an Anthropic Messages body carried
//! into an OpenAI chat body, and the chat completion carried back into an Anthropic message.
//!
//! What maps: `system` (a string, or text blocks joined by newlines), text and image blocks,
//! `tool_use` blocks (assistant `tool_calls`), `tool_result` blocks (`tool` messages, placed
//! right after the assistant turn as OpenAI requires), `tools`, `tool_choice`
//! (`disable_parallel_tool_use` as `parallel_tool_calls: false`), `stop_sequences`,
//! `max_tokens`, `temperature`, `top_p`, `top_k` (passed on: OpenAI-format providers that know
//! it use it, the others refuse it themselves), `metadata.user_id` (`user`), `stream` (with
//! `stream_options.include_usage`, so the stream reports usage to meter).
//!
//! What is refused ([`Unsupported`]): server tools (web search, code execution, ...),
//! `mcp_servers`, `container`, document and other non-text, non-image blocks, images inside
//! tool results. Dropped as harmless: `thinking` (and earlier thinking blocks: a model without
//! extended thinking answers without it; Claude Code sends it by default), `service_tier`,
//! `cache_control` marks (prompt caching is the provider's own business in OpenAI's format),
//! and other top-level parameters this module does not know (Anthropic-side features newer
//! than this module, mostly betas; an OpenAI-format provider could not carry them anyway).
//!
//! Back: a provider's `reasoning_content` is not carried into `thinking` blocks: those carry
//! Anthropic's signature, and a client sending an unsigned one back to Anthropic (after a
//! fallback, say) would be refused.

use serde_json::{json, Map, Value};

use super::tool_list;
use crate::domain::pricing::TokenUsage;
use crate::providers::{Garbled, Unsupported};

/// The OpenAI chat body for an Anthropic Messages body (`model` kept as given; the gateway sets
/// the provider's model).
pub fn messages_to_chat(req: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    let mut out = Map::new();
    let mut messages = Vec::new();
    if let Some(system) = system(req.get("system"))? {
        messages.push(json!({"role": "system", "content": system}));
    }
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported("messages: required, a list".into()))?;
    for (i, m) in turns.iter().enumerate() {
        turn(m, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    for (key, value) in req {
        parameter(key, value, &mut out)?;
    }
    Ok(out)
}

fn parameter(key: &str, value: &Value, out: &mut Map<String, Value>) -> Result<(), Unsupported> {
    match key {
        "model" | "max_tokens" | "temperature" | "top_p" | "top_k" => {
            out.insert(key.into(), value.clone());
        }
        "stop_sequences" if !value.is_null() => {
            out.insert("stop".into(), value.clone());
        }
        "metadata" => {
            if let Some(u) = value["user_id"].as_str() {
                out.insert("user".into(), json!(u));
            }
        }
        "stream" if value == &json!(true) => {
            out.insert("stream".into(), json!(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        "tools" => {
            if let Some(tools) = tools(value)? {
                out.insert("tools".into(), tools);
            }
        }
        "tool_choice" => tool_choice(value, out)?,
        "mcp_servers" | "container" if !value.is_null() => {
            return Err(Unsupported(format!(
                "{key}: not supported by OpenAI-format providers"
            )))
        }
        _ => {}
    }
    Ok(())
}

fn system(v: Option<&Value>) -> Result<Option<Value>, Unsupported> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(json!(s))),
        Some(Value::Array(blocks)) => {
            let texts = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    b["text"]
                        .as_str()
                        .filter(|_| b["type"] == "text")
                        .ok_or_else(|| {
                            Unsupported(format!("system[{i}]: only text blocks in system"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((!texts.is_empty()).then(|| json!(texts.join("\n"))))
        }
        Some(_) => Err(Unsupported(
            "system: must be a string or text blocks".into(),
        )),
    }
}

/// One Anthropic turn as OpenAI messages: an assistant turn is one message; a user turn is its
/// tool results (one `tool` message each, first) and then one user message with the rest.
fn turn(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Unsupported> {
    let role = match m["role"].as_str() {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(Unsupported(format!(
                "messages[{i}].role: must be user or assistant"
            )))
        }
    };
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(Unsupported(format!(
                "messages[{i}].content: must be a string or blocks"
            )))
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match (role, b["type"].as_str()) {
            (_, Some("text")) => match b["text"].as_str() {
                Some(t) => parts.push(json!({"type": "text", "text": t})),
                None => return Err(Unsupported(format!("{at}.text: missing"))),
            },
            ("user", Some("image")) => parts.push(image(&b["source"], &at)?),
            ("user", Some("tool_result")) => out.push(tool_result(b, &at)?),
            ("assistant", Some("tool_use")) => calls.push(tool_call(b, &at)?),
            ("assistant", Some("thinking" | "redacted_thinking")) => {}
            (_, t) => {
                return Err(Unsupported(format!(
                    "{at}.type: {} blocks are not supported by OpenAI-format providers",
                    t.unwrap_or("untyped")
                )))
            }
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant",
            "content": if text.is_empty() { Value::Null } else { json!(text.concat()) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" => only["text"].clone(),
            _ => Value::Array(parts),
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn image(source: &Value, at: &str) -> Result<Value, Unsupported> {
    let url = match source["type"].as_str() {
        Some("base64") => match (source["media_type"].as_str(), source["data"].as_str()) {
            (Some(mt), Some(data)) => format!("data:{mt};base64,{data}"),
            _ => {
                return Err(Unsupported(format!(
                    "{at}.source: media_type and data required"
                )))
            }
        },
        Some("url") => source["url"]
            .as_str()
            .ok_or_else(|| Unsupported(format!("{at}.source.url: missing")))?
            .to_owned(),
        _ => {
            return Err(Unsupported(format!(
                "{at}.source.type: base64 or url images only"
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_result(b: &Value, at: &str) -> Result<Value, Unsupported> {
    let id = b["tool_use_id"]
        .as_str()
        .ok_or_else(|| Unsupported(format!("{at}.tool_use_id: missing")))?;
    let content = match &b["content"] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut text = Vec::with_capacity(parts.len());
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push(t),
                    _ => {
                        return Err(Unsupported(format!(
                            "{at}.content: only text in tool results for OpenAI-format providers"
                        )))
                    }
                }
            }
            text.join("\n")
        }
        _ => {
            return Err(Unsupported(format!(
                "{at}.content: must be a string or blocks"
            )))
        }
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn tool_call(b: &Value, at: &str) -> Result<Value, Unsupported> {
    let (Some(id), Some(name)) = (b["id"].as_str(), b["name"].as_str()) else {
        return Err(Unsupported(format!(
            "{at}: tool_use needs an id and a name"
        )));
    };
    let args = match &b["input"] {
        Value::Null => "{}".to_owned(),
        v => v.to_string(),
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
}

fn tools(v: &Value) -> Result<Option<Value>, Unsupported> {
    let Some(list) = tool_list(v)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let custom = t["type"].is_null() || t["type"] == "custom";
        let (true, Some(name)) = (custom, t["name"].as_str()) else {
            return Err(Unsupported(format!(
                "tools[{i}]: only custom tools (name, input_schema) for OpenAI-format providers"
            )));
        };
        let mut f = json!({"name": name, "parameters": t["input_schema"]});
        if let Some(d) = t["description"].as_str() {
            f["description"] = json!(d);
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

fn tool_choice(v: &Value, out: &mut Map<String, Value>) -> Result<(), Unsupported> {
    let choice = match v["type"].as_str() {
        None if v.is_null() => return Ok(()),
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match v["name"].as_str() {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(Unsupported("tool_choice.name: missing".into())),
        },
        _ => {
            return Err(Unsupported(
                "tool_choice.type: auto, any, tool or none".into(),
            ))
        }
    };
    out.insert("tool_choice".into(), choice);
    if v["disable_parallel_tool_use"] == json!(true) {
        out.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}

/// The Anthropic message for an OpenAI `chat.completion` body, and the usage it reports (`None`
/// when the body has no `usage`, for the caller to estimate).
pub fn chat_to_messages_response(body: &[u8]) -> Result<(Value, Option<TokenUsage>), Garbled> {
    let chat: Value = serde_json::from_slice(body)
        .map_err(|e| Garbled(format!("provider answer is not JSON: {e}")))?;
    let choice = chat["choices"]
        .get(0)
        .ok_or_else(|| Garbled("provider answer has no choices".into()))?;
    let msg = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| Garbled("provider answer's choice has no message".into()))?;
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for (i, call) in msg["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        content.push(tool_use(call, i)?);
    }
    let u = chat
        .get("usage")
        .filter(|u| u.is_object())
        .map(openai_usage);
    let out = json!({
        "id": message_id(&chat["id"]),
        "type": "message",
        "role": "assistant",
        "model": chat["model"],
        "content": content,
        "stop_reason": stop_reason(&choice["finish_reason"]),
        "stop_sequence": null,
        "usage": anthropic_usage(u.unwrap_or_default()),
    });
    Ok((out, u))
}

fn tool_use(call: &Value, i: usize) -> Result<Value, Garbled> {
    let f = &call["function"];
    let (Some(id), Some(name)) = (call["id"].as_str(), f["name"].as_str()) else {
        return Err(Garbled(format!("tool_calls[{i}] has no id or name")));
    };
    let input = match f["arguments"].as_str().map(str::trim) {
        None | Some("") => json!({}),
        Some(args) => serde_json::from_str::<Value>(args)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| Garbled(format!("tool_calls[{i}] arguments are not a JSON object")))?,
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// `msg_` and the provider's id (Anthropic SDKs show the id; a prefix keeps it recognisable).
pub(super) fn message_id(id: &Value) -> String {
    match id.as_str() {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{id}"),
        None => "msg_gateway".to_owned(),
    }
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
pub(super) fn stop_reason(finish: &Value) -> Value {
    match finish.as_str() {
        None => Value::Null,
        Some("length") => json!("max_tokens"),
        Some("tool_calls" | "function_call") => json!("tool_use"),
        Some("content_filter") => json!("refusal"),
        Some(_) => json!("end_turn"),
    }
}

/// The gateway's usage from an OpenAI `usage` object.
pub(super) fn openai_usage(u: &Value) -> TokenUsage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    TokenUsage {
        prompt: n(&u["prompt_tokens"]),
        completion: n(&u["completion_tokens"]),
        cached: n(&u["prompt_tokens_details"]["cached_tokens"]),
        cache_write: 0,
    }
}

/// Anthropic's `usage` for the gateway's: `input_tokens` is the prompt without cache reads.
pub(super) fn anthropic_usage(u: TokenUsage) -> Value {
    let cached = u.cached.min(u.prompt);
    json!({"input_tokens": u.prompt - cached, "output_tokens": u.completion,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: Value) -> Result<Value, Unsupported> {
        messages_to_chat(v.as_object().unwrap()).map(Value::Object)
    }

    #[test]
    fn a_conversation_with_tools() {
        let out = chat(json!({"model": "claude-x", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}, "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "..", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"}]}]}))
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "claude-x", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9,
                "stop": ["END"], "user": "u-1", "stream": true, "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object"}}}],
                "tool_choice": "required", "parallel_tool_calls": false,
                "messages": [
                    {"role": "system", "content": "Be brief.\nBe kind."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": [{"type": "text", "text": "And this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "ok"}]})
        );
    }

    #[test]
    fn tool_choice_forms() {
        let choice = |c: Value| {
            chat(json!({"messages": [], "tool_choice": c})).map(|o| o["tool_choice"].clone())
        };
        assert_eq!(choice(json!({"type": "auto"})).unwrap(), json!("auto"));
        assert_eq!(choice(json!({"type": "none"})).unwrap(), json!("none"));
        assert_eq!(
            choice(json!({"type": "tool", "name": "f"})).unwrap(),
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(choice(json!({"type": "tool"})).is_err());
        assert!(choice(json!({"type": "maybe"})).is_err());
        let plain = chat(json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}], "stream": false})).unwrap();
        assert_eq!(plain.get("stream"), None);
        assert_eq!(
            plain["messages"][0],
            json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
    }

    #[test]
    fn refuses_what_openai_format_cannot_carry() {
        let cases = [
            (
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0]",
            ),
            (json!({"mcp_servers": [{"url": "x"}]}), "mcp_servers"),
            (json!({"system": [{"type": "image"}]}), "system[0]"),
            (json!({"system": 5}), "system"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "source.type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]}]}),
                "only text in tool results",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
                "tool_use_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b"}]}]}),
                "tool_use blocks",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "robot", "content": [{"type": "text", "text": "x"}]}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "text: missing",
            ),
        ];
        for (extra, expected) in cases {
            let mut body = json!({"messages": []});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let err = chat(body).unwrap_err();
            assert!(err.0.contains(expected), "{err} should name {expected}");
        }
        assert!(messages_to_chat(&Map::new()).is_err());
    }

    #[test]
    fn a_completion_becomes_a_message() {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Sure.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_tokens_details": {"cached_tokens": 60}}});
        let (out, u) = chat_to_messages_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            out,
            json!({"id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x",
                "content": [{"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 40, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 60}})
        );
        assert_eq!(
            u,
            Some(TokenUsage {
                prompt: 100,
                completion: 20,
                cached: 60,
                cache_write: 0
            })
        );
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("content_filter", "refusal"),
        ] {
            assert_eq!(stop_reason(&json!(finish)), json!(stop));
        }
        let (out, u) = chat_to_messages_response(
            br#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(u, None);
        assert_eq!(out["content"], json!([]));
        assert_eq!(out["id"], "msg_gateway");
        assert_eq!(out["usage"]["input_tokens"], 0);
    }

    #[test]
    fn garbled_completions() {
        for body in [
            &b"oops"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"finish_reason":"stop"}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f"}}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{oops"}}]}}]}"#,
        ] {
            assert!(chat_to_messages_response(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
