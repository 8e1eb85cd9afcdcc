//! An OpenAI chat-completions body carried into an Anthropic Messages body.
//!
//! What maps: system and developer messages (hoisted into `system`, wherever they stand), user
//! and assistant turns (consecutive turns of one role merged: Anthropic wants them to
//! alternate), assistant `tool_calls` (`tool_use` blocks), `tool` messages (`tool_result` blocks
//! opening the next user turn), images (a `data:` URL as a base64 source, an http(s) URL as a
//! url source), `cache_control` on content parts (kept, for prompt caching), `tools`,
//! `tool_choice`, `parallel_tool_calls: false`, `stop`, `temperature`, `top_p`, `top_k`,
//! `max_completion_tokens` / `max_tokens` (else [`super::DEFAULT_MAX_TOKENS`]), `user`
//! (`metadata.user_id`), `stream`, and Anthropic's own `thinking`.
//!
//! What is refused ([`Unsupported`], naming the parameter): `n > 1`, `logprobs`,
//! `top_logprobs`, `audio` and audio modalities, `response_format` other than `text` (Anthropic's
//! structured outputs are a beta with another shape: refused rather than half-mapped), non-zero
//! `presence_penalty` / `frequency_penalty`, `logit_bias`, `prediction`, `reasoning_effort`,
//! `functions` / `function_call` (the legacy tool API), audio and file content parts, and any
//! parameter this module does not know. Ignored as harmless: `stream_options` (usage is always
//! in Anthropic's stream), `store`, `metadata`, `service_tier`, `seed` (best effort in OpenAI's
//! own terms), message `name`s.

use serde_json::{json, Map, Value};

use super::{tool_list, DEFAULT_MAX_TOKENS};
use crate::providers::chat_parts::base64_data_url;
use crate::providers::Unsupported;

/// The Messages body for `chat` sent to `model`, streaming when `stream`.
pub fn chat_request(
    chat: &Map<String, Value>,
    model: &str,
    stream: bool,
) -> Result<Value, Unsupported> {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("max_tokens".into(), json!(max_tokens(chat)?));
    let (system, messages) = messages(chat)?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    for (key, value) in chat {
        parameter(key, value, chat, &mut out)?;
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(out))
}

/// One top-level parameter: mapped into `out`, ignored, or refused.
fn parameter(
    key: &str,
    value: &Value,
    chat: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Unsupported> {
    let refuse = |why: &str| Err(Unsupported(format!("{key}: {why}")));
    match key {
        "model" | "messages" | "max_tokens" | "max_completion_tokens" | "stream" => {}
        "stream_options" | "store" | "metadata" | "service_tier" | "seed" => {}
        "temperature" | "top_p" | "top_k" if value.is_null() => {}
        "temperature" | "top_p" | "top_k" if value.is_number() => {
            out.insert(key.into(), value.clone());
        }
        "temperature" | "top_p" | "top_k" => return refuse("must be a number"),
        "thinking" => {
            out.insert(key.into(), value.clone());
        }
        "stop" => {
            if let Some(stops) = stop_sequences(value)? {
                out.insert("stop_sequences".into(), stops);
            }
        }
        "user" => match value {
            Value::Null => {}
            Value::String(u) => {
                out.insert("metadata".into(), json!({"user_id": u}));
            }
            _ => return refuse("must be a string"),
        },
        "tools" => {
            if let Some(tools) = tools(value)? {
                out.insert("tools".into(), tools);
            }
        }
        "tool_choice" | "parallel_tool_calls" => {
            // Both become `tool_choice`; it is built once, when `tools` are present (Anthropic
            // refuses a tool_choice without tools).
            if key == "tool_choice" || !chat.contains_key("tool_choice") {
                if let Some(choice) = tool_choice(chat)? {
                    out.insert("tool_choice".into(), choice);
                }
            }
        }
        _ => without_equivalent(key, value)?,
    }
    Ok(())
}

/// A parameter Anthropic has no equivalent for: fine at its neutral value (what OpenAI SDKs
/// send by default), refused otherwise.
fn without_equivalent(key: &str, value: &Value) -> Result<(), Unsupported> {
    let neutral = value.is_null()
        || match key {
            "n" => value.as_u64() == Some(1),
            "logprobs" => value == &json!(false),
            "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
            "logit_bias" => value.as_object().is_some_and(Map::is_empty),
            "response_format" => value["type"] == "text",
            "modalities" => value
                .as_array()
                .is_some_and(|m| m.iter().all(|x| x == "text")),
            _ => false,
        };
    let why = match key {
        _ if neutral => return Ok(()),
        "n" => "Anthropic returns one choice only (n must be 1)",
        "logprobs" | "top_logprobs" => "Anthropic returns no log probabilities",
        "presence_penalty" | "frequency_penalty" => "Anthropic has no penalties",
        "logit_bias" => "Anthropic has no logit bias",
        "response_format" => "only {\"type\": \"text\"} on Anthropic",
        "audio" | "modalities" => "Anthropic answers in text only",
        _ => "not supported on Anthropic",
    };
    Err(Unsupported(format!("{key}: {why}")))
}

fn max_tokens(chat: &Map<String, Value>) -> Result<u64, Unsupported> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match chat.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Unsupported(format!("{key}: must be a positive integer")))
            }
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

fn stop_sequences(v: &Value) -> Result<Option<Value>, Unsupported> {
    let bad = || Unsupported("stop: must be a string or a list of strings".into());
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(json!([s]))),
        Value::Array(list) if list.iter().all(Value::is_string) => {
            Ok((!list.is_empty()).then(|| v.clone()))
        }
        _ => Err(bad()),
    }
}

fn tools(v: &Value) -> Result<Option<Value>, Unsupported> {
    let Some(list) = tool_list(v)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t["type"] != "function" {
            return Err(Unsupported(format!(
                "tools[{i}].type: only function tools on Anthropic"
            )));
        }
        let f = &t["function"];
        let name = f["name"]
            .as_str()
            .ok_or_else(|| Unsupported(format!("tools[{i}].function.name: missing")))?;
        let schema = match &f["parameters"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            p => p.clone(),
        };
        let mut tool = json!({"name": name, "input_schema": schema});
        if let Some(d) = f["description"].as_str() {
            tool["description"] = json!(d);
        }
        if !t["cache_control"].is_null() {
            tool["cache_control"] = t["cache_control"].clone();
        }
        out.push(tool);
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

/// Anthropic's `tool_choice` from OpenAI's `tool_choice` and `parallel_tool_calls`, when the
/// request has tools.
fn tool_choice(chat: &Map<String, Value>) -> Result<Option<Value>, Unsupported> {
    let has_tools = chat
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if !has_tools {
        return Ok(None);
    }
    let mut choice =
        match chat.get("tool_choice").unwrap_or(&Value::Null) {
            Value::Null => json!({"type": "auto"}),
            Value::String(s) => match s.as_str() {
                "auto" => json!({"type": "auto"}),
                "none" => json!({"type": "none"}),
                "required" => json!({"type": "any"}),
                _ => return Err(Unsupported(format!("tool_choice: unknown value {s:?}"))),
            },
            v => match v["function"]["name"].as_str() {
                Some(name) if v["type"] == "function" => json!({"type": "tool", "name": name}),
                _ => return Err(Unsupported(
                    "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}"
                        .into(),
                )),
            },
        };
    if chat.get("parallel_tool_calls") == Some(&json!(false)) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Ok(Some(choice))
}

/// The `system` blocks and the alternating `messages` of a chat's `messages`.
fn messages(chat: &Map<String, Value>) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let list = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported("messages: required, a list".into()))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}]{field}");
        let (role, blocks) = match m["role"].as_str() {
            Some("system" | "developer") => {
                system.extend(content_blocks(&m["content"], &at(".content"), false)?);
                continue;
            }
            Some("user") => (
                "user",
                content_blocks(&m["content"], &at(".content"), true)?,
            ),
            Some("assistant") => ("assistant", assistant_blocks(m, &at)?),
            Some("tool") => ("user", vec![tool_result(m, &at)?]),
            Some(r) => {
                return Err(Unsupported(format!(
                    "{}: role {r:?} is not supported on Anthropic",
                    at(".role")
                )))
            }
            None => return Err(Unsupported(format!("{}: missing", at(".role")))),
        };
        match turns.last_mut() {
            // Anthropic refuses a turn without content; such a turn says nothing, so it goes.
            _ if blocks.is_empty() => {}
            Some((last, prior)) if *last == role => prior.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// Text (and, where `images`, image) blocks of a message's `content`: a string or a list of
/// parts. Empty text is left out (Anthropic refuses empty text blocks).
fn content_blocks(content: &Value, at: &str, images: bool) -> Result<Vec<Value>, Unsupported> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                let mut block = match p["type"].as_str() {
                    Some("text") => match p["text"].as_str() {
                        Some("") => continue,
                        Some(t) => json!({"type": "text", "text": t}),
                        None => return Err(Unsupported(format!("{at}.text: missing"))),
                    },
                    Some("refusal") => match p["refusal"].as_str() {
                        Some(t) if !t.is_empty() => json!({"type": "text", "text": t}),
                        _ => continue,
                    },
                    Some("image_url") if images => image(&p["image_url"], &at)?,
                    Some(t) => {
                        return Err(Unsupported(format!(
                            "{at}.type: {t:?} content is not supported here on Anthropic"
                        )))
                    }
                    None => return Err(Unsupported(format!("{at}.type: missing"))),
                };
                if !p["cache_control"].is_null() {
                    block["cache_control"] = p["cache_control"].clone();
                }
                out.push(block);
            }
            Ok(out)
        }
        _ => Err(Unsupported(format!(
            "{at}: must be a string or a list of parts"
        ))),
    }
}

/// An image block from an `image_url` part: a `data:<type>;base64,<data>` URL or an http(s) URL.
fn image(part: &Value, at: &str) -> Result<Value, Unsupported> {
    let url = part["url"]
        .as_str()
        .or_else(|| part.as_str())
        .ok_or_else(|| Unsupported(format!("{at}.image_url.url: missing")))?;
    if url.starts_with("data:") {
        let (media_type, data) = base64_data_url(url)
            .ok_or_else(|| Unsupported(format!("{at}.image_url.url: a data URL must be base64")))?;
        return Ok(json!({"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(Unsupported(format!(
        "{at}.image_url.url: must be a data: or http(s) URL"
    )))
}

fn assistant_blocks(m: &Value, at: &dyn Fn(&str) -> String) -> Result<Vec<Value>, Unsupported> {
    let mut blocks = content_blocks(&m["content"], &at(".content"), false)?;
    let calls = match &m["tool_calls"] {
        Value::Null => return Ok(blocks),
        Value::Array(calls) => calls,
        _ => {
            return Err(Unsupported(format!(
                "{}: must be a list",
                at(".tool_calls")
            )))
        }
    };
    for (j, call) in calls.iter().enumerate() {
        let at = |f: &str| at(&format!(".tool_calls[{j}]{f}"));
        let id = call["id"]
            .as_str()
            .ok_or_else(|| Unsupported(format!("{}: missing", at(".id"))))?;
        let name = call["function"]["name"]
            .as_str()
            .ok_or_else(|| Unsupported(format!("{}: missing", at(".function.name"))))?;
        let input = match call["function"]["arguments"].as_str().map(str::trim) {
            None | Some("") => json!({}),
            Some(args) => serde_json::from_str::<Value>(args)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    Unsupported(format!("{}: not a JSON object", at(".function.arguments")))
                })?,
        };
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

fn tool_result(m: &Value, at: &dyn Fn(&str) -> String) -> Result<Value, Unsupported> {
    let id = m["tool_call_id"]
        .as_str()
        .ok_or_else(|| Unsupported(format!("{}: missing", at(".tool_call_id"))))?;
    let content = match &m["content"] {
        Value::String(s) => json!(s),
        c => Value::Array(content_blocks(c, &at(".content"), false)?),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Value, Unsupported> {
        chat_request(v.as_object().unwrap(), "claude-x", false)
    }

    #[test]
    fn a_plain_chat() {
        let out = req(json!({"model": "ignored", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop": "END", "user": "u-1",
            "stream_options": {"include_usage": true}, "n": 1}))
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS,
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"}})
        );
        let streamed = chat_request(
            json!({"messages": [], "max_tokens": 10, "max_completion_tokens": 20})
                .as_object()
                .unwrap(),
            "m",
            true,
        )
        .unwrap();
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["max_tokens"], 20);
    }

    #[test]
    fn tools_calls_and_results_alternate() {
        let out = req(json!({"messages": [
            {"role": "developer", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "user", "content": [{"type": "text", "text": "Please."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks"}],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": false, "stop": ["a", "b"]}))
        .unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "A"},
                {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "text", "text": "Please."},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"}]}])
        );
        assert_eq!(
            out["tools"],
            json!([{"name": "weather", "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn tool_choice_forms() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let choice = |c: Value| {
            req(json!({"messages": [], "tools": tools, "tool_choice": c}))
                .map(|o| o["tool_choice"].clone())
        };
        assert_eq!(choice(json!("auto")).unwrap(), json!({"type": "auto"}));
        assert_eq!(choice(json!("none")).unwrap(), json!({"type": "none"}));
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "f"}})).unwrap(),
            json!({"type": "tool", "name": "f"})
        );
        assert!(choice(json!("sometimes")).is_err());
        assert!(choice(json!({"type": "function"})).is_err());
        // No tools: no tool_choice (Anthropic refuses one alone); default input schema.
        let out = req(json!({"messages": [], "tool_choice": "auto"})).unwrap();
        assert!(out.get("tool_choice").is_none());
        let out =
            req(json!({"messages": [], "tools": tools, "parallel_tool_calls": false})).unwrap();
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            out["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn refuses_what_anthropic_cannot_carry() {
        let cases = [
            (json!({"n": 2}), "n:"),
            (json!({"logprobs": true}), "logprobs:"),
            (json!({"top_logprobs": 3}), "top_logprobs:"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format:",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format:",
            ),
            (json!({"audio": {"voice": "x"}}), "audio:"),
            (json!({"modalities": ["text", "audio"]}), "modalities:"),
            (json!({"presence_penalty": 0.5}), "presence_penalty:"),
            (json!({"logit_bias": {"1": 2}}), "logit_bias:"),
            (json!({"functions": []}), "functions:"),
            (json!({"frobnicate": 1}), "frobnicate:"),
            (json!({"max_tokens": 0}), "max_tokens:"),
            (json!({"max_tokens": "5"}), "max_tokens:"),
            (json!({"temperature": "hot"}), "temperature:"),
            (json!({"stop": 5}), "stop:"),
            (
                json!({"tools": [{"type": "code_interpreter"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "function", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
                "image_url.url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
                "base64",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
                "messages[0].tool_calls[0].id",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
        ];
        for (extra, expected) in cases {
            let mut body = json!({"messages": []});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let err = req(body).unwrap_err();
            assert!(err.0.contains(expected), "{err} should name {expected}");
        }
        assert!(chat_request(&Map::new(), "m", false)
            .unwrap_err()
            .0
            .contains("messages"));
        // Harmless defaults pass.
        let ok = json!({"messages": [], "n": null, "logprobs": false, "presence_penalty": 0,
            "response_format": {"type": "text"}, "modalities": ["text"], "seed": 3, "store": false,
            "logit_bias": {}, "metadata": {"a": "b"}, "service_tier": "auto"});
        assert!(req(ok).is_ok());
    }

    #[test]
    fn empty_text_is_left_out() {
        let out = req(json!({"messages": [{"role": "user", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "y"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "no"}]}])
        );
    }
}
