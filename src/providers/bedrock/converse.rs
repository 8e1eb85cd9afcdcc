//! OpenAI chat completions -> Bedrock Converse (`POST /model/{id}/converse` and
//! `converse-stream`): the request.
//!
//! Request: `system`/`developer` messages become `system: [{text}]`; user, assistant and tool
//! messages become `messages: [{role, content: [block]}]` with blocks `text`, `image` (bytes
//! from a base64 `data:` URL; Bedrock cannot fetch an http URL, so that is refused), `toolUse`
//! (an assistant's `tool_calls`) and `toolResult` (a `tool` message, sent as the user's turn).
//! Consecutive messages of one role are merged, as Converse wants turns to alternate. Sampling
//! goes to `inferenceConfig {maxTokens, temperature, topP, stopSequences}`, `top_k` to
//! `additionalModelRequestFields`, tools to `toolConfig {tools: [{toolSpec}], toolChoice}`.
//!
//! The answer's way back is [`super::response`].

use serde_json::{json, Map, Value};

use crate::providers::chat_parts::{self, NotText, IGNORED_PARAMS};
use crate::providers::Unsupported;

/// The Converse request body for an OpenAI chat-completions body.
pub fn converse_request(chat: &Map<String, Value>) -> Result<Value, Unsupported> {
    let mut out = Map::new();
    let mut inference = Map::new();
    for (key, value) in chat {
        match key.as_str() {
            "messages" | "tools" | "tool_choice" => {}
            "max_tokens" | "max_completion_tokens" if !value.is_null() => {
                inference.insert("maxTokens".into(), uint(key, value)?);
            }
            "temperature" | "top_p" if !value.is_null() => {
                let name = if key == "temperature" {
                    "temperature"
                } else {
                    "topP"
                };
                inference.insert(name.into(), number(key, value)?);
            }
            "stop" => {
                if let Some(stops) = stop_sequences(value)? {
                    inference.insert("stopSequences".into(), stops);
                }
            }
            "top_k" if !value.is_null() => {
                out.insert(
                    "additionalModelRequestFields".into(),
                    json!({ "top_k": uint(key, value)? }),
                );
            }
            "n" if value.is_null() || value.as_u64() == Some(1) => {}
            "logprobs" if value.is_null() || value == &Value::Bool(false) => {}
            "frequency_penalty" | "presence_penalty"
                if value.is_null() || value.as_f64() == Some(0.0) => {}
            "response_format" if value.is_null() || value.get("type") == Some(&json!("text")) => {}
            "seed" | "logit_bias" | "top_logprobs" if value.is_null() => {}
            k if IGNORED_PARAMS.contains(&k) => {}
            "max_tokens" | "max_completion_tokens" | "temperature" | "top_p" | "top_k" => {}
            _ => {
                return Err(Unsupported(format!(
                    "Bedrock Converse does not support `{key}`"
                )))
            }
        }
    }
    let (system, messages) = messages(chat.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let has_tool_blocks = messages.iter().any(|m| {
        m["content"].as_array().is_some_and(|c| {
            c.iter()
                .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        })
    });
    out.insert("messages".into(), Value::Array(messages));
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    match tool_config(chat, has_tool_blocks)? {
        Some(config) => {
            out.insert("toolConfig".into(), config);
        }
        None if has_tool_blocks => {
            return Err(Unsupported(
                "Bedrock needs `tools` when the messages hold tool calls or tool results".into(),
            ))
        }
        None => {}
    }
    Ok(Value::Object(out))
}

fn uint(key: &str, v: &Value) -> Result<Value, Unsupported> {
    v.as_u64()
        .map(Value::from)
        .ok_or_else(|| Unsupported(format!("`{key}` must be a non-negative integer")))
}

fn number(key: &str, v: &Value) -> Result<Value, Unsupported> {
    v.as_f64()
        .map(|f| json!(f))
        .ok_or_else(|| Unsupported(format!("`{key}` must be a number")))
}

fn stop_sequences(v: &Value) -> Result<Option<Value>, Unsupported> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(json!([s]))),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(Some(Value::Array(a.clone()))),
        _ => Err(Unsupported(
            "`stop` must be a string or a list of strings".into(),
        )),
    }
}

/// `(system blocks, messages)`, consecutive turns of one role merged.
fn messages(v: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported("`messages` must be a list".into()))?;
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(m.get("content"), i)?);
                continue;
            }
            "user" => ("user", user_blocks(m.get("content"), i)?),
            "assistant" => ("assistant", assistant_blocks(m, i)?),
            "tool" => ("user", vec![tool_result(m, i)?]),
            other => {
                return Err(Unsupported(format!(
                    "messages[{i}]: role `{other}` is not supported on Bedrock"
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last.get_mut("content").and_then(Value::as_array_mut) {
                    content.extend(blocks);
                }
            }
            _ => out.push(json!({ "role": role, "content": blocks })),
        }
    }
    Ok((system, out))
}

/// Text-only content (system messages, tool results): a string or text parts.
fn text_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Unsupported> {
    if matches!(content, Some(Value::String(s)) if s.is_empty()) {
        return Ok(Vec::new());
    }
    let texts = chat_parts::texts(content).map_err(|e| {
        Unsupported(match e {
            NotText::Part => format!("messages[{i}]: only text parts are allowed here"),
            NotText::Shape => format!("messages[{i}].content must be a string or a list"),
        })
    })?;
    Ok(texts.into_iter().map(|t| json!({ "text": t })).collect())
}

fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Unsupported> {
    let Some(Value::Array(parts)) = content else {
        return text_blocks(content, i);
    };
    parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text") {
                Some(Value::String(t)) => Ok(json!({ "text": t })),
                _ => Err(Unsupported(format!(
                    "messages[{i}]: a text part without text"
                ))),
            },
            Some("image_url") => image_block(p, i),
            other => Err(Unsupported(format!(
                "messages[{i}]: content part `{}` is not supported on Bedrock",
                other.unwrap_or("?")
            ))),
        })
        .collect()
}

/// An `image_url` part as an image block: only `data:image/...;base64,` URLs.
fn image_block(part: &Value, i: usize) -> Result<Value, Unsupported> {
    let url = chat_parts::image_url(part).unwrap_or_default();
    let refuse = || {
        Unsupported(format!(
            "messages[{i}]: Bedrock takes images as base64 `data:` URLs (png, jpeg, gif, webp) only"
        ))
    };
    let (media_type, data) = chat_parts::base64_data_url(url).ok_or_else(refuse)?;
    let kind = media_type.strip_prefix("image/").ok_or_else(refuse)?;
    let format = match kind {
        "png" => "png",
        "jpeg" | "jpg" => "jpeg",
        "gif" => "gif",
        "webp" => "webp",
        _ => return Err(refuse()),
    };
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, Unsupported> {
    let mut blocks = text_blocks(m.get("content"), i)?;
    let calls = match m.get("tool_calls") {
        None | Some(Value::Null) => return Ok(blocks),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(Unsupported(format!(
                "messages[{i}].tool_calls must be a list"
            )))
        }
    };
    for call in calls {
        let f = call.get("function");
        let (Some(id), Some(name)) = (
            call.get("id").and_then(Value::as_str),
            f.and_then(|f| f.get("name")).and_then(Value::as_str),
        ) else {
            return Err(Unsupported(format!(
                "messages[{i}]: a tool call needs an id and a name"
            )));
        };
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = match args.trim() {
            "" => json!({}),
            a => serde_json::from_str(a).map_err(|_| {
                Unsupported(format!(
                    "messages[{i}]: tool call {id}'s arguments are not JSON"
                ))
            })?,
        };
        blocks.push(json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }));
    }
    Ok(blocks)
}

fn tool_result(m: &Value, i: usize) -> Result<Value, Unsupported> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Unsupported(format!("messages[{i}]: a tool message needs tool_call_id")))?;
    let mut content = text_blocks(m.get("content"), i)?;
    if content.is_empty() {
        content.push(json!({ "text": "" }));
    }
    Ok(json!({ "toolResult": { "toolUseId": id, "content": content } }))
}

fn tool_config(
    chat: &Map<String, Value>,
    has_tool_blocks: bool,
) -> Result<Option<Value>, Unsupported> {
    let tools = match chat.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) if t.is_empty() => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(Unsupported("`tools` must be a list".into())),
    };
    let choice = match chat.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({ "auto": {} })),
        Some(Value::String(s)) if s == "required" => Some(json!({ "any": {} })),
        Some(Value::String(s)) if s == "none" => {
            if has_tool_blocks {
                return Err(Unsupported(
                    "`tool_choice: none` with tool calls in the history is not supported on Bedrock"
                        .into(),
                ));
            }
            return Ok(None);
        }
        Some(c) => match c
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => Some(json!({ "tool": { "name": name } })),
            None => return Err(Unsupported("`tool_choice` is not one Bedrock knows".into())),
        },
    };
    let specs = tools
        .iter()
        .map(|t| {
            let f = t
                .get("function")
                .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| Unsupported("Bedrock supports only `function` tools".into()))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Unsupported("a tool needs a function name".into()))?;
            let schema = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            let mut spec = json!({ "name": name, "inputSchema": { "json": schema } });
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                spec["description"] = json!(d);
            }
            Ok(json!({ "toolSpec": spec }))
        })
        .collect::<Result<Vec<_>, Unsupported>>()?;
    let mut config = json!({ "tools": specs });
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(Some(config))
}

#[cfg(test)]
#[path = "converse_tests.rs"]
mod tests;
