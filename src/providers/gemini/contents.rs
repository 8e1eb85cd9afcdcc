//! OpenAI chat `messages` into Gemini `systemInstruction` parts and `contents` (see
//! [`super::request`] for the rules).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::request::unsupported;
use crate::providers::chat_parts::{self, NotText};
use crate::providers::Unsupported;

/// `systemInstruction` parts and `contents`.
pub(super) fn messages_to_contents(
    messages: &[Value],
) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let (turn_role, parts) = match role {
            "system" | "developer" => {
                system.extend(non_empty(text_parts(m.get("content"), i)?));
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
        let parts = non_empty(parts);
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

/// The parts without empty text parts, which Gemini refuses ("empty text parameter"); an
/// assistant turn with only tool calls often comes with `content: ""`.
fn non_empty(parts: Vec<Value>) -> Vec<Value> {
    parts
        .into_iter()
        .filter(|p| p.get("text").and_then(Value::as_str) != Some(""))
        .collect()
}

/// Text-only content (system messages): a string or an array of `text` parts.
fn text_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, Unsupported> {
    let texts = chat_parts::texts(content).map_err(|e| {
        unsupported(match e {
            NotText::Part => format!("messages[{i}].content: only text parts are supported here"),
            NotText::Shape => {
                format!("messages[{i}].content must be a string or an array of parts")
            }
        })
    })?;
    Ok(texts.into_iter().map(|t| json!({ "text": t })).collect())
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
            let url = chat_parts::image_url(p).ok_or_else(|| {
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
        let mut part = json!({ "functionCall": { "name": name, "args": args } });
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.insert(id.to_owned(), name.to_owned());
            if let Some(signature) = super::response::thought_signature(id) {
                part["thoughtSignature"] = json!(signature);
            }
        }
        parts.push(part);
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
