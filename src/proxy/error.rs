//! The data plane's error: a refusal or failure, and the one rendering of it in the OpenAI error
//! envelope.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde_json::Value;

/// A refusal or failure on the data plane, rendered in the OpenAI error envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type`: `invalid_request_error`, `authentication_error`, `permission_error`, ...
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

impl DataError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        DataError {
            status,
            message: message.into(),
            kind,
            code,
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            message,
        )
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some(code),
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message,
        )
    }

    /// The OpenAI error envelope, the one body every data-plane error is written with.
    pub fn envelope(&self) -> Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// `Retry-After` and `x-should-retry: false` for refusals that say when to come back.
    pub fn add_retry_headers(&self, h: &mut HeaderMap) {
        if let Some(s) = self.retry_after_secs {
            h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from(s));
            h.insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
    }
}
