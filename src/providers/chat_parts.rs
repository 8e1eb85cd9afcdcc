//! Reading an OpenAI chat request alike in the translations out of it: the parameters no
//! provider is sent and text-only content (Bedrock Converse, Gemini), an image part's URL and a
//! base64 `data:` URL (Bedrock, and Anthropic's). Each translation words its own refusals.

use serde_json::Value;

/// OpenAI chat parameters that change nothing upstream (or are the data plane's): accepted, not
/// sent.
pub const IGNORED_PARAMS: &[&str] = &[
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

/// Why content is not text only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotText {
    /// A list with a part that is not a `text` part with its text.
    Part,
    /// Neither a string nor a list.
    Shape,
}

/// The texts of text-only content (a system message, an assistant's text, a tool result): none
/// for no content, the string, or the text of each part (all `text` parts).
pub fn texts(content: Option<&Value>) -> Result<Vec<&str>, NotText> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(
                |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                    _ => Err(NotText::Part),
                },
            )
            .collect(),
        Some(_) => Err(NotText::Shape),
    }
}

/// The URL of an `image_url` part: `{"image_url": {"url": ...}}`, or the URL given bare.
pub fn image_url(part: &Value) -> Option<&str> {
    part.get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
}

/// The media type and the data of a `data:<media type>;base64,<data>` URL.
pub fn base64_data_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("data:")?.split_once(";base64,")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn texts_of_text_only_content() {
        assert_eq!(texts(None), Ok(vec![]));
        assert_eq!(texts(Some(&json!(null))), Ok(vec![]));
        assert_eq!(texts(Some(&json!(""))), Ok(vec![""]));
        let parts = json!([{"type": "text", "text": "a"}, {"type": "text", "text": ""}]);
        assert_eq!(texts(Some(&parts)), Ok(vec!["a", ""]));
        let image = json!([{"type": "image_url", "image_url": {"url": "https://x"}}]);
        assert_eq!(texts(Some(&image)), Err(NotText::Part));
        assert_eq!(texts(Some(&json!([{"type": "text"}]))), Err(NotText::Part));
        assert_eq!(texts(Some(&json!(5))), Err(NotText::Shape));
    }

    #[test]
    fn base64_data_urls() {
        let png = "data:image/png;base64,iVBO";
        assert_eq!(base64_data_url(png), Some(("image/png", "iVBO")));
        assert_eq!(base64_data_url("data:image/png,iVBO"), None);
        assert_eq!(base64_data_url("https://x/a.png"), None);
    }

    #[test]
    fn image_url_nested_or_bare() {
        let nested = json!({"type": "image_url", "image_url": {"url": "https://x"}});
        assert_eq!(image_url(&nested), Some("https://x"));
        assert_eq!(
            image_url(&json!({"image_url": "https://y"})),
            Some("https://y")
        );
        assert_eq!(image_url(&json!({"image_url": {"url": 5}})), None);
        assert_eq!(image_url(&json!({})), None);
    }
}
