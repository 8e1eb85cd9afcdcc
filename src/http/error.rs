//! The one HTTP error type. Control-plane errors carry both envelopes (Portkey's
//! `{success:false, data:{message, errorCode}}` and OpenAI's `{error:{...}}`); data-plane errors
//! carry the OpenAI envelope, rendered by [`DataError::answer`] (the same rendering a fallback
//! target's refusal gets). Every 5xx carries `x-portkey-gateway-exception` so SDKs don't retry
//! a request that was refused on purpose, and every error carries the trace id when there is one.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::control::ControlError;
use crate::ledger::LedgerError;
use crate::proxy::{DataError, GatewayException};

/// Which API a failed request belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// The admin API (Portkey's and OpenAI's envelopes).
    Control,
    /// The OpenAI-compatible API (OpenAI's envelope).
    Data,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub plane: Plane,
    pub error: DataError,
    pub trace_id: Option<String>,
}

impl ApiError {
    /// A control-plane error; the OpenAI `type` follows from the status.
    pub fn control(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            413 => "invalid_request_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            plane: Plane::Control,
            error: DataError::new(status, kind, None, message),
            trace_id: None,
        }
    }

    /// A data-plane error, with the request's trace id when known.
    pub fn data(error: DataError, trace_id: Option<String>) -> Self {
        ApiError {
            plane: Plane::Data,
            error,
            trace_id,
        }
    }

    /// A 404 naming `what`.
    pub fn not_found(plane: Plane, what: &str) -> Self {
        let e = DataError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            format!("{what} not found"),
        );
        ApiError {
            plane,
            error: e,
            trace_id: None,
        }
    }
}

/// Portkey's admin error codes.
fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 => "AB01",
        401 => "AB05",
        403 => "AB03",
        404 => "AB08",
        409 => "AB07",
        402 => "AB09",
        429 => "AB06",
        _ => "AB04",
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Internal(inner) if matches!(**inner, LedgerError::NotReadBack(_)) => {
                tracing::warn!(error = %inner, "admin change not read back in time");
                return ApiError::control(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the change was made, but this gateway has not caught up with it yet; read it again shortly instead of repeating it",
                );
            }
            ControlError::Internal(inner) => {
                tracing::error!(error = %inner, "admin command failed");
                return ApiError::control(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the change was not made",
                );
            }
        };
        ApiError::control(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = &self.error;
        let (status, mut headers, body) = match self.plane {
            Plane::Data => e.answer(GatewayException::OnServerError),
            Plane::Control => {
                let code = error_code(e.status);
                let body = json!({"success": false, "data": {"message": e.message, "errorCode": code},
                                  "error": {"message": e.message, "type": e.kind, "code": code}});
                let headers = e.headers(GatewayException::OnServerError);
                (e.status, headers, Bytes::from(body.to_string()))
            }
        };
        if let Some(t) = self
            .trace_id
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            headers.insert("x-portkey-trace-id", t);
        }
        (status, headers, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_not_read_back_is_not_called_unmade() {
        let late = ApiError::from(ControlError::from(LedgerError::NotReadBack(
            std::time::Duration::from_secs(30),
        )));
        assert_eq!(late.error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            late.error.message.contains("was made"),
            "{}",
            late.error.message
        );
        let failed = ApiError::from(ControlError::from(LedgerError::Log(
            crate::log::LogError::WriterGone("config"),
        )));
        assert_eq!(failed.error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed.error.message.contains("not made"));
    }
}
