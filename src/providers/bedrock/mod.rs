//! AWS Bedrock: the Converse / ConverseStream protocol (any model, OpenAI chat in and out),
//! InvokeModel for Anthropic models when the caller speaks Anthropic's `/v1/messages`, the
//! Titan and Cohere embedding models, SigV4 signing, the AWS binary event stream, and STS
//! AssumeRole for integrations with an assumed role.
//!
//! - [`sign()`]: SigV4 (the `aws-sigv4` crate) over a request as it will be sent.
//! - [`converse`]: `converse_request` (OpenAI chat -> Converse); [`response`]:
//!   `converse_response` (Converse -> OpenAI chat, the usage and its cache counts).
//! - [`stream`]: [`ConverseStream`], ConverseStream events -> OpenAI chunks.
//! - [`eventstream`]: [`EventStreamDecoder`], bytes -> event-stream messages (the
//!   `aws-smithy-eventstream` crate checks the frame's CRCs).
//! - [`invoke`]: the Anthropic Messages body for InvokeModel and the unwrapping of
//!   `invoke-with-response-stream` chunks (the Anthropic translation is
//!   [`crate::providers::anthropic`]'s).
//! - [`embed`]: Titan and Cohere embeddings <-> OpenAI embeddings.
//! - [`sts`]: [`assume_role`], the only I/O here.

pub mod converse;
pub mod embed;
pub mod eventstream;
pub mod invoke;
pub mod response;
pub mod sign;
pub mod stream;
pub mod sts;

pub use converse::converse_request;
pub use embed::{embed_request, embed_requests, embed_response, EmbedFamily, Embedded};
pub use eventstream::{EventStreamDecoder, Message};
pub use invoke::{
    anthropic_event_type, count_tokens_request, count_tokens_response, invoke_anthropic_body,
    invoke_chunk, set_anthropic_beta,
};
pub use response::converse_response;
pub use sign::{sign, SignError};
pub use stream::ConverseStream;
pub use sts::{assume_role, default_sts_endpoint, StsError};

use std::fmt;

/// AWS credentials: an access key (long-lived, or temporary from STS with a session token).
/// `Debug` shows the access key id only; the secret and the token never leave this struct
/// except into a signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The Bedrock runtime endpoint of a region.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The path of a model action (`converse`, `converse-stream`, `invoke`,
/// `invoke-with-response-stream`): `/model/{model}/{action}` with the model id percent-encoded
/// once (every byte but RFC 3986's unreserved ones), so `:` and the `/` of an inference-profile
/// ARN stay inside one path segment. Sign the URL exactly as built: [`sign()`] encodes it a
/// second time for the canonical request, as AWS's non-S3 services expect.
pub fn model_path(model: &str, action: &str) -> String {
    format!("/model/{}/{action}", encode_segment(model))
}

/// Percent-encodes everything but `A-Z a-z 0-9 - . _ ~`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error type and message of an AWS JSON error answer (Bedrock's non-2xx bodies are
/// `{"message": ...}`, the type in the `x-amzn-ErrorType` header as `Type:namespace-url`), for
/// the caller's error body. The message is cut to 500 characters; a body that is not AWS's
/// gives `UnknownError` and an empty message.
pub fn aws_error(error_type_header: Option<&str>, body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| v.get(*n).and_then(serde_json::Value::as_str))
            .map(str::to_owned)
    };
    let kind = error_type_header
        .map(|h| h.split(':').next().unwrap_or_default().trim().to_owned())
        .filter(|k| !k.is_empty())
        .or_else(|| {
            field(["__type", "code"]).map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| "UnknownError".into());
    let message = field(["message", "Message"])
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_encode_the_id_once() {
        assert_eq!(
            model_path("anthropic.claude-3-7-sonnet-20250219-v1:0", "converse"),
            "/model/anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse"
        );
        assert_eq!(
            model_path(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude",
                "converse-stream"
            ),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude/converse-stream"
        );
        assert_eq!(
            default_base_url("eu-west-1"),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn aws_errors_parse() {
        assert_eq!(
            aws_error(
                Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.service/"),
                br#"{"message":"Too many requests"}"#
            ),
            ("ThrottlingException".into(), "Too many requests".into())
        );
        assert_eq!(
            aws_error(
                None,
                br#"{"__type":"com.amazon#ValidationException","Message":"bad"}"#
            ),
            ("ValidationException".into(), "bad".into())
        );
        assert_eq!(
            aws_error(None, b"<html>"),
            ("UnknownError".into(), String::new())
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("FwoGZXIvYXdzE".into()),
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKIDEXAMPLE"));
        assert!(!d.contains("wJalr") && !d.contains("FwoG"), "{d}");
    }
}
