//! Google Gemini: the Gemini API (`generativelanguage.googleapis.com`, an API key) and Vertex AI
//! (`{region}-aiplatform.googleapis.com`, a service account's OAuth2 access token), which speak
//! the same `generateContent` protocol.
//!
//! - [`request`]: an OpenAI chat body into a `GenerateContentRequest` (its messages in
//!   `contents`, its schemas cleaned in `schema`).
//! - [`response`]: a `GenerateContentResponse` into a `chat.completion`, and `usageMetadata`
//!   into [`TokenUsage`](crate::domain::pricing::TokenUsage).
//! - [`stream`]: `streamGenerateContent?alt=sse` into `chat.completion.chunk` frames.
//! - [`embed`]: OpenAI embeddings into `embedContent` / `batchEmbedContents` (Gemini) and
//!   `predict` (Vertex), and back.
//! - [`vertex`]: the service account, its RS256 JWT assertion and the token exchange; the body
//!   and paths of Anthropic models on Vertex (`rawPredict`).
//!
//! URLs: the data plane joins a base (the default below, or the integration's `custom_host`)
//! with a path from [`model_path`] / [`embed::EmbedRequest::path`].

mod contents;
pub mod embed;
pub mod request;
pub mod response;
mod schema;
pub mod stream;
pub mod vertex;

pub use embed::{embed_request, embed_response, EmbedApi, EmbedRequest};
pub use request::chat_request;
pub use response::{chat_response, usage};
pub use stream::ChatStream;
pub use vertex::{
    assertion, fetch_token, parse_service_account, vertex_anthropic_body, vertex_anthropic_path,
    vertex_count_tokens_body, ServiceAccount, TokenError, VERTEX_ANTHROPIC_COUNT_TOKENS_PATH,
};

/// The Gemini API's base URL (API key in the `x-goog-api-key` header).
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The header that carries a Gemini API key.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

/// The Vertex publisher of a model: `anthropic` for Claude models (served by `rawPredict` in
/// Anthropic's own protocol), `google` for everything else (Gemini, `generateContent`).
pub fn vertex_publisher(model: &str) -> &'static str {
    if bare_model(model).starts_with("claude") {
        "anthropic"
    } else {
        "google"
    }
}

/// A model id without the `models/` prefix Google's own names carry (`models/gemini-2.5-pro`).
pub(crate) fn bare_model(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

/// Vertex AI's base URL for a publisher's models (`google` for Gemini, `anthropic` for Claude)
/// in a project and region; region `global` is served by the host without a region prefix.
/// Check the inputs with [`validate_vertex_location`] first: they become part of the URL.
pub fn vertex_base_url(project: &str, region: &str, publisher: &str) -> String {
    let host = if region == "global" {
        "aiplatform.googleapis.com".to_owned()
    } else {
        format!("{region}-aiplatform.googleapis.com")
    };
    format!("https://{host}/v1/projects/{project}/locations/{region}/publishers/{publisher}")
}

/// Checks a Vertex project id and region before they are put into a URL: each must be non-empty
/// and only lowercase letters, digits and `-` (what Google allows in both).
pub fn validate_vertex_location(project: &str, region: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !ok(project) {
        return Err(format!(
            "vertex_project_id {project:?} is not a project id (lowercase letters, digits and '-')"
        ));
    }
    if !ok(region) {
        return Err(format!(
            "vertex_region {region:?} is not a region (lowercase letters, digits and '-', e.g. us-central1 or global)"
        ));
    }
    Ok(())
}

/// The `status` and `message` of a Google error answer (`{"error": {"code", "message",
/// "status"}}`), for a clear upstream error; `None` when the body is not one.
pub fn upstream_error(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let status = e
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("UNKNOWN");
    let message = e.get("message").and_then(|s| s.as_str())?;
    Some((status.to_owned(), message.chars().take(1000).collect()))
}

/// The path (after the base URL) of a model's `generateContent`, or of its SSE stream.
pub fn model_path(model: &str, stream: bool) -> String {
    let action = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    format!("/models/{}:{action}", path_segment(bare_model(model)))
}

/// `s` as one URL path segment: unreserved characters and `@` (Vertex model versions) kept,
/// everything else percent-encoded, so a model name cannot add segments or a query.
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            vertex_base_url("my-proj", "us-central1", "google"),
            "https://us-central1-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-central1/publishers/google"
        );
        assert_eq!(
            vertex_base_url("p", "global", "anthropic"),
            "https://aiplatform.googleapis.com/v1/projects/p/locations/global/publishers/anthropic"
        );
        assert_eq!(
            model_path("gemini-2.5-flash", false),
            "/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            model_path("gemini-2.5-flash", true),
            "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            model_path("a/b?c", false),
            "/models/a%2Fb%3Fc:generateContent"
        );
        assert_eq!(
            model_path("models/gemini-2.5-pro", false),
            "/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(vertex_publisher("claude-sonnet-4@20250514"), "anthropic");
        assert_eq!(vertex_publisher("gemini-2.5-pro"), "google");
    }

    #[test]
    fn google_errors() {
        let body = br#"{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            upstream_error(body),
            Some((
                "RESOURCE_EXHAUSTED".into(),
                "Resource has been exhausted".into()
            ))
        );
        assert_eq!(upstream_error(b"<html>"), None);
        assert_eq!(upstream_error(br#"{"error": "x"}"#), None);
    }

    #[test]
    fn locations_are_checked() {
        assert!(validate_vertex_location("my-proj-1", "europe-west4").is_ok());
        assert!(validate_vertex_location("p", "global").is_ok());
        let e = validate_vertex_location("evil.com/x", "us").unwrap_err();
        assert!(e.contains("vertex_project_id"), "{e}");
        let e = validate_vertex_location("p", "us-central1.evil").unwrap_err();
        assert!(e.contains("vertex_region"), "{e}");
        assert!(validate_vertex_location("", "us").is_err());
        assert!(validate_vertex_location("P", "us").is_err());
    }
}
