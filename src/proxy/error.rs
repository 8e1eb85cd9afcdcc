//! The data plane's error: a refusal or failure, and the one rendering of it in the OpenAI error
//! envelope.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

use super::Reply;

/// A refusal or failure on the data plane, rendered in the OpenAI error envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub status: StatusCode,
    /// What the client is told.
    pub message: String,
    /// OpenAI `type`: `invalid_request_error`, `authentication_error`, `permission_error`, ...
    pub kind: &'static str,
    /// OpenAI `code`, e.g. `invalid_api_key`, `model_not_allowed`.
    pub code: Option<&'static str>,
    /// When a refusal says to come back (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl DataError {
    /// An error of any status, OpenAI `type` and `code`.
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

    /// A 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    /// A 401 `authentication_error` (`invalid_api_key`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// A 403 `permission_error` with its `code`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some(code),
            message,
        )
    }

    /// A 500 `server_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message,
        )
    }

    /// The OpenAI error envelope, the one body every data-plane error is written with (an SSE
    /// error frame carries it too).
    pub fn envelope(&self) -> Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// The data plane's error answer: the status, [`DataError::headers`] and the
    /// [`DataError::envelope`] as the body.
    pub fn answer(&self, mark: GatewayException) -> (StatusCode, HeaderMap, Bytes) {
        let body = Bytes::from(self.envelope().to_string());
        (self.status, self.headers(mark), body)
    }

    /// The headers of an error answer on either plane: a JSON content type,
    /// `x-portkey-gateway-exception` as `mark` says, and `Retry-After` with
    /// `x-should-retry: false` for refusals that say when to come back.
    pub fn headers(&self, mark: GatewayException) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let marked = match mark {
            GatewayException::Always => true,
            GatewayException::OnServerError => self.status.is_server_error(),
        };
        if marked {
            h.insert(
                HeaderName::from_static("x-portkey-gateway-exception"),
                HeaderValue::from_static("true"),
            );
        }
        if let Some(s) = self.retry_after_secs {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
            h.insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        h
    }

    /// A gateway-made answer standing in for a target's (a fallback may still move on from it).
    pub fn reply(&self) -> Reply {
        let (status, headers, body) = self.answer(GatewayException::Always);
        Reply::Full {
            status,
            headers,
            body,
        }
    }
}

/// When an error answer carries `x-portkey-gateway-exception: true`, saying the gateway made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayException {
    /// Always: an answer standing in for a provider's, which the client must tell from the
    /// provider's own errors.
    Always,
    /// On a 5xx: a request's final error, so SDKs do not retry a request refused on purpose.
    OnServerError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rendering_marks_as_asked_and_says_when_to_retry() {
        let mut e = DataError::forbidden("model_not_allowed", "no");
        let (status, h, body) = e.answer(GatewayException::Always);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-portkey-gateway-exception"], "true");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, e.envelope());
        assert_eq!(body["error"]["code"], "model_not_allowed");
        let h = e.headers(GatewayException::OnServerError);
        assert!(h.get("x-portkey-gateway-exception").is_none());
        assert!(h.get("retry-after").is_none());
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        e.retry_after_secs = Some(5);
        let h = e.headers(GatewayException::OnServerError);
        assert_eq!(h["x-portkey-gateway-exception"], "true");
        assert_eq!(h["retry-after"], "5");
        assert_eq!(h["x-should-retry"], "false");
    }
}
