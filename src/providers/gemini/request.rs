//! An OpenAI chat-completions body into a Gemini `GenerateContentRequest`.
//!
//! - `system` / `developer` messages become `systemInstruction` (text only, in order);
//!   `user` / `assistant` become `contents` with role `user` / `model`; consecutive turns of
//!   one role are merged (Gemini wants the responses to parallel calls in one turn).
//! - Content parts: text; `image_url` and `input_audio` as `inlineData` (a `data:` URL or
//!   base64) or `fileData` (an `http(s)://` or `gs://` URL, its MIME type guessed from the
//!   extension, else refused).
//! - Assistant `tool_calls` become `functionCall` parts; `tool` messages become
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

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::providers::Unsupported;

/// Schema keywords removed before a schema goes to Gemini, which answers 400 to them.
pub const DROPPED_SCHEMA_KEYS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "additionalProperties",
    "unevaluatedProperties",
    "patternProperties",
    "strict",
    "examples",
    "const",
    "default",
];

const IGNORED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];

fn unsupported(msg: impl Into<String>) -> Unsupported {
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

/// `systemInstruction` parts and `contents`.
fn messages_to_contents(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let (turn_role, parts) = match role {
            "system" | "developer" => {
                system.extend(text_parts(m.get("content"), i)?);
                continue;
            }
            "user" => ("user", user_parts(m.get("content"), i)?),
            "assistant" => ("model", assistant_parts(m, i, &mut call_names)?),
            "tool" => ("user", vec![tool_response(m, i, &call_names)?]),
            other => {
                return Err(unsupported(format!(
                    "messages[{i}].role {other:?} is not supported by Gemini"
                )))
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((r, p)) if *r == turn_role => p.extend(parts),
            _ => contents.push((turn_role, parts)),
        }
    }
    let contents = contents
        .into_iter()
        .map(|(role, parts)| json!({ "role": role, "parts": parts }))
        .collect();
    Ok((system, contents))
}

/// Text-only content (system messages): a string or an array of `text` parts.
fn text_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Unsupported> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "text": s })]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(json!({ "text": t })),
                    _ => Err(unsupported(format!(
                        "messages[{i}].content: only text parts are supported here"
                    ))),
                },
            )
            .collect(),
        Some(_) => Err(unsupported(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Unsupported> {
    let Some(Value::Array(parts)) = content else {
        return text_parts(content, i);
    };
    parts
        .iter()
        .map(|p| content_part(p, i))
        .collect::<Result<_, _>>()
}

fn content_part(p: &Value, i: usize) -> Result<Value, Unsupported> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => match p.get("text") {
            Some(Value::String(t)) => Ok(json!({ "text": t })),
            _ => Err(unsupported(format!(
                "messages[{i}].content: a text part needs its text"
            ))),
        },
        "image_url" => {
            let url = p
                .get("image_url")
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    unsupported(format!("messages[{i}].content: image_url needs a url"))
                })?;
            url_part(url, i)
        }
        "input_audio" => {
            let audio = p.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => Ok(
                    json!({ "inlineData": { "mimeType": format!("audio/{format}"), "data": data } }),
                ),
                _ => Err(unsupported(format!(
                    "messages[{i}].content: input_audio needs data and format"
                ))),
            }
        }
        other => Err(unsupported(format!(
            "messages[{i}].content: part type {other:?} is not supported by Gemini"
        ))),
    }
}

/// A `data:` URL inline, an `http(s)://` or `gs://` URL by reference.
fn url_part(url: &str, i: usize) -> Result<Value, Unsupported> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or(("", ""));
        let Some(mime) = meta.strip_suffix(";base64").filter(|m| !m.is_empty()) else {
            return Err(unsupported(format!(
                "messages[{i}].content: a data URL must be base64 with a MIME type (data:image/png;base64,...)"
            )));
        };
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    let lower = url.to_ascii_lowercase();
    if !["http://", "https://", "gs://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return Err(unsupported(format!(
            "messages[{i}].content: an image URL must be data:, http(s):// or gs://"
        )));
    }
    let mime = guess_mime(&lower).ok_or_else(|| {
        unsupported(format!(
            "messages[{i}].content: cannot tell the MIME type of {url:?} from its extension (Gemini needs one); send it as a data: URL"
        ))
    })?;
    Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }))
}

fn guess_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => return None,
    })
}

fn assistant_parts(
    m: &Value,
    i: usize,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, Unsupported> {
    let mut parts = text_parts(m.get("content"), i)?;
    let calls = match m.get("tool_calls") {
        None | Some(Value::Null) => return Ok(parts),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(unsupported(format!(
                "messages[{i}].tool_calls must be an array"
            )))
        }
    };
    for (j, call) in calls.iter().enumerate() {
        let f = call.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let Some(name) = name else {
            return Err(unsupported(format!(
                "messages[{i}].tool_calls[{j}] needs function.name"
            )));
        };
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    unsupported(format!(
                        "messages[{i}].tool_calls[{j}].function.arguments is not a JSON object"
                    ))
                })?,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(unsupported(format!(
                    "messages[{i}].tool_calls[{j}].function.arguments is not a JSON object"
                )))
            }
        };
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.insert(id.to_owned(), name.to_owned());
        }
        parts.push(json!({ "functionCall": { "name": name, "args": args } }));
    }
    Ok(parts)
}

fn tool_response(
    m: &Value,
    i: usize,
    call_names: &HashMap<String, String>,
) -> Result<Value, Unsupported> {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    let name = call_names.get(id).ok_or_else(|| {
        unsupported(format!(
            "messages[{i}]: tool_call_id {id:?} matches no earlier assistant tool call (Gemini needs the function's name)"
        ))
    })?;
    let text: String = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(_)) => text_parts(m.get("content"), i)?
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let response = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({ "content": text }));
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
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

/// A JSON schema in Gemini's subset (see the module doc); `depth` bounds hostile nesting.
fn clean_schema(schema: &Value, field: &str, depth: usize) -> Result<Value, Unsupported> {
    if depth > 64 {
        return Err(unsupported(format!("{field}: the schema nests too deeply")));
    }
    match schema {
        Value::Object(map) => {
            if map.contains_key("$ref") {
                return Err(unsupported(format!(
                    "{field}: $ref is not supported by Gemini; inline the definition"
                )));
            }
            let mut out = Map::new();
            for (k, v) in map {
                if DROPPED_SCHEMA_KEYS.contains(&k.as_str()) || k == "$defs" || k == "definitions" {
                    continue;
                }
                let v = match k.as_str() {
                    // Property names are data, not keywords: clean the values only.
                    "properties" => match v {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(name, s)| {
                                    Ok((name.clone(), clean_schema(s, field, depth + 1)?))
                                })
                                .collect::<Result<_, Unsupported>>()?,
                        ),
                        other => other.clone(),
                    },
                    "type" => match v {
                        Value::Array(types) => {
                            let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                            if real.len() != 1 {
                                return Err(unsupported(format!(
                                    "{field}: a type list must be one type, optionally with \"null\""
                                )));
                            }
                            if real.len() != types.len() {
                                out.insert("nullable".into(), json!(true));
                            }
                            real[0].clone()
                        }
                        other => other.clone(),
                    },
                    _ => clean_schema(v, field, depth + 1)?,
                };
                out.insert(k.clone(), v);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|s| clean_schema(s, field, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
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
        if value.is_null() || IGNORED.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "max_tokens" | "max_completion_tokens" => {
                g.insert("maxOutputTokens".into(), uint(key, value)?);
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
                let stops = match value {
                    Value::String(s) => vec![json!(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err(unsupported("stop must be a string or an array of strings")),
                };
                g.insert("stopSequences".into(), Value::Array(stops));
            }
            "response_format" => response_format(&mut g, value)?,
            "reasoning_effort" => {
                let budget = match value.as_str() {
                    Some("none") | Some("minimal") => 0,
                    Some("low") => 1024,
                    Some("medium") => 8192,
                    Some("high") => 24576,
                    _ => {
                        return Err(unsupported(format!(
                            "reasoning_effort {value} is not supported"
                        )))
                    }
                };
                g.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
            }
            "logprobs" if value == &json!(false) => {}
            "tools" | "tool_choice" => {}
            other => return Err(unsupported(format!("{other} is not supported by Gemini"))),
        }
    }
    Ok(g)
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
