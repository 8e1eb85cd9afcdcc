//! An OpenAI chat-completions body into a Gemini `GenerateContentRequest`.
//!
//! - `system` / `developer` messages become `systemInstruction` (text only, in order);
//!   `user` / `assistant` become `contents` with role `user` / `model`; consecutive turns of
//!   one role are merged (Gemini wants the responses to parallel calls in one turn).
//! - Content parts: text; `image_url` and `input_audio` as `inlineData` (a `data:` URL or
//!   base64) or `fileData` (an `http(s)://` or `gs://` URL, its MIME type guessed from the
//!   extension, else refused).
//! - Assistant `tool_calls` become `functionCall` parts (with the `thoughtSignature` their id
//!   carries, see [`super::response::thought_signature`]); `tool` messages become
//!   `functionResponse` parts in a `user` turn, named by looking the `tool_call_id` up among
//!   the earlier calls. The response is the tool's content parsed as a JSON object, else
//!   `{"content": <text>}` (Gemini wants an object).
//! - `tools` become `functionDeclarations`. Their `parameters` (and a `json_schema` response
//!   format) are cleaned for Gemini's OpenAPI-subset `Schema`: the keywords it rejects
//!   ([`DROPPED_SCHEMA_KEYS`]: `$schema`, `additionalProperties`, ...) are removed and a
//!   `type: [T, "null"]` becomes `type: T, nullable: true`; a `$ref` is refused.
//! - `tool_choice` becomes `toolConfig.functionCallingConfig` (`AUTO`, `NONE`, `ANY`, `ANY`
//!   with `allowedFunctionNames`).
//! - Sampling and limits go to `generationConfig`; `reasoning_effort` to
//!   `thinkingConfig.thinkingBudget` (low 1,024, medium 8,192, high 24,576 tokens).
//!
//! Refused (they cannot be carried): `logprobs` / `top_logprobs` (Gemini's `responseLogprobs`
//! answers in another shape that is not translated back), `logit_bias`, `functions`,
//! `audio` / `modalities`, `prediction`, a non-function tool, and every parameter not listed
//! here. Ignored (harmless): `stream`, `stream_options`, `user`, `metadata`, `store`,
//! `service_tier`, `parallel_tool_calls` (Gemini decides alone how many calls to make).

use serde_json::{json, Map, Value};

use super::contents::messages_to_contents;
use super::schema::clean_schema;
pub use super::schema::DROPPED_SCHEMA_KEYS;
use crate::providers::chat_parts::IGNORED_PARAMS;
use crate::providers::Unsupported;

pub(super) fn unsupported(msg: impl Into<String>) -> Unsupported {
    Unsupported(msg.into())
}

/// The `generateContent` body for an OpenAI chat body (the model goes into the URL, not here).
pub fn chat_request(chat: &Map<String, Value>) -> Result<Value, Unsupported> {
    let messages = chat
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| unsupported("messages: an array of messages is required"))?;
    let (system, contents) = messages_to_contents(messages)?;
    if contents.is_empty() {
        return Err(unsupported(
            "messages: Gemini needs at least one user or assistant message",
        ));
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if let Some(tools) = chat.get("tools").filter(|t| !t.is_null()) {
        out.insert("tools".into(), tools_to_gemini(tools)?);
    }
    if let Some(choice) = chat.get("tool_choice").filter(|t| !t.is_null()) {
        out.insert("toolConfig".into(), tool_choice(choice)?);
    }
    let config = generation_config(chat)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn tools_to_gemini(tools: &Value) -> Result<Value, Unsupported> {
    let tools = tools
        .as_array()
        .ok_or_else(|| unsupported("tools must be an array"))?;
    let mut decls = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(format!(
                "tools[{i}]: only function tools are supported by Gemini"
            )));
        }
        let f = t.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported(format!("tools[{i}].function.name is required")))?;
        let mut decl = Map::new();
        decl.insert("name".into(), json!(name));
        if let Some(d) = f.and_then(|f| f.get("description")).and_then(Value::as_str) {
            decl.insert("description".into(), json!(d));
        }
        if let Some(p) = f.and_then(|f| f.get("parameters")).filter(|p| !p.is_null()) {
            let field = format!("tools[{i}].function.parameters");
            decl.insert("parameters".into(), clean_schema(p, &field, 0)?);
        }
        decls.push(Value::Object(decl));
    }
    Ok(json!([{ "functionDeclarations": decls }]))
}

fn tool_choice(choice: &Value) -> Result<Value, Unsupported> {
    let config = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => json!({ "mode": "AUTO" }),
            "none" => json!({ "mode": "NONE" }),
            "required" => json!({ "mode": "ANY" }),
            other => {
                return Err(unsupported(format!(
                    "tool_choice {other:?} is not supported"
                )))
            }
        },
        Value::Object(_) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| unsupported("tool_choice: a function choice needs function.name"))?;
            json!({ "mode": "ANY", "allowedFunctionNames": [name] })
        }
        _ => return Err(unsupported("tool_choice must be a string or an object")),
    };
    Ok(json!({ "functionCallingConfig": config }))
}

fn generation_config(chat: &Map<String, Value>) -> Result<Map<String, Value>, Unsupported> {
    let mut g = Map::new();
    for (key, value) in chat {
        if value.is_null() || IGNORED_PARAMS.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            // `max_completion_tokens` (OpenAI's current name) wins over `max_tokens`.
            "max_completion_tokens" => {
                g.insert("maxOutputTokens".into(), uint(key, value)?);
            }
            "max_tokens" => {
                let limit = uint(key, value)?;
                g.entry("maxOutputTokens").or_insert(limit);
            }
            "temperature" => copy_number(&mut g, "temperature", key, value)?,
            "top_p" => copy_number(&mut g, "topP", key, value)?,
            "top_k" => {
                g.insert("topK".into(), uint(key, value)?);
            }
            "presence_penalty" => copy_number(&mut g, "presencePenalty", key, value)?,
            "frequency_penalty" => copy_number(&mut g, "frequencyPenalty", key, value)?,
            "seed" => {
                let seed = value
                    .as_i64()
                    .ok_or_else(|| unsupported("seed must be an integer"))?;
                g.insert("seed".into(), json!(seed));
            }
            "n" => {
                g.insert("candidateCount".into(), uint(key, value)?);
            }
            "stop" => {
                g.insert("stopSequences".into(), stop_sequences(value)?);
            }
            "response_format" => response_format(&mut g, value)?,
            "reasoning_effort" => {
                g.insert("thinkingConfig".into(), thinking(value)?);
            }
            "logprobs" if value == &json!(false) => {}
            "tools" | "tool_choice" => {}
            other => return Err(unsupported(format!("{other} is not supported by Gemini"))),
        }
    }
    Ok(g)
}

fn stop_sequences(value: &Value) -> Result<Value, Unsupported> {
    match value {
        Value::String(s) => Ok(json!([s])),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(value.clone()),
        _ => Err(unsupported("stop must be a string or an array of strings")),
    }
}

/// `reasoning_effort` as a thinking budget in tokens.
fn thinking(value: &Value) -> Result<Value, Unsupported> {
    let budget = match value.as_str() {
        Some("none" | "minimal") => 0,
        Some("low") => 1024,
        Some("medium") => 8192,
        Some("high") => 24576,
        _ => {
            return Err(unsupported(format!(
                "reasoning_effort {value} is not supported"
            )))
        }
    };
    Ok(json!({ "thinkingBudget": budget }))
}

fn uint(key: &str, value: &Value) -> Result<Value, Unsupported> {
    value
        .as_u64()
        .map(Value::from)
        .ok_or_else(|| unsupported(format!("{key} must be a non-negative integer")))
}

fn copy_number(
    g: &mut Map<String, Value>,
    to: &str,
    key: &str,
    value: &Value,
) -> Result<(), Unsupported> {
    if !value.is_number() {
        return Err(unsupported(format!("{key} must be a number")));
    }
    g.insert(to.into(), value.clone());
    Ok(())
}

fn response_format(g: &mut Map<String, Value>, value: &Value) -> Result<(), Unsupported> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            g.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let schema = value
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| unsupported("response_format.json_schema.schema is required"))?;
            g.insert("responseMimeType".into(), json!("application/json"));
            g.insert(
                "responseSchema".into(),
                clean_schema(schema, "response_format.json_schema.schema", 0)?,
            );
        }
        _ => {
            return Err(unsupported(
                "response_format.type must be text, json_object or json_schema",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
