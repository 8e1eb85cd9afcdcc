//! Console forms: the posted fields, and the API request bodies made of them. A body is what the
//! API would receive from an SDK; the control plane validates it, so a form's wrong value gets
//! the API's own words, shown next to its field ([`field_of`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::http::error::Plane;
use crate::http::extract::body_bytes;
use crate::http::AppState;

/// The largest console form: far above the largest page's (an integration's provisioning of a
/// thousand workspaces), far below the API's body limit.
pub const MAX_FORM_BYTES: usize = 1 << 20;
/// The most fields a console form may have.
pub const MAX_FORM_FIELDS: usize = 5_000;

/// The fields of a posted form, by name; a name may repeat (checkboxes, e-mail recipients), its
/// values in order. Looked up by hash, so a form's cost is linear in its size.
pub struct Form {
    fields: HashMap<String, Vec<String>>,
}

impl Form {
    /// Reads an `application/x-www-form-urlencoded` body: at most [`MAX_FORM_BYTES`] (and the
    /// API's body limit) and [`MAX_FORM_FIELDS`] fields.
    pub async fn read(req: Request, app: &Arc<AppState>) -> Result<Form, Response> {
        let bytes = body_bytes(req, app, Plane::Control)
            .await
            .map_err(IntoResponse::into_response)?;
        if bytes.len() > MAX_FORM_BYTES {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response());
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| (StatusCode::BAD_REQUEST, "the form could not be read").into_response())?;
        if pairs.len() > MAX_FORM_FIELDS {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form has too many fields",
            )
                .into_response());
        }
        Ok(Form::from_pairs(pairs))
    }

    fn from_pairs(pairs: Vec<(String, String)>) -> Form {
        let mut fields: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in pairs {
            fields.entry(k).or_default().push(v);
        }
        Form { fields }
    }

    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Form {
        Form::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// The last value of `name`, or `""`.
    pub fn one(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .and_then(|v| v.last())
            .map_or("", String::as_str)
    }

    /// The value of `name` trimmed, when not empty.
    pub fn text(&self, name: &str) -> Option<&str> {
        Some(self.one(name).trim()).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .get(name)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether a checkbox named `name` was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.all(name).any(|v| v == "on" || v == "true" || v == "1")
    }

    /// Puts `name`'s text into `body` as `key`, when given.
    pub fn put_text(&self, body: &mut Map<String, Value>, name: &str, key: &str) {
        if let Some(v) = self.text(name) {
            body.insert(key.into(), json!(v));
        }
    }

    /// The budget of a form's "Add Budget Limit" toggle, as the API's `UsageLimits`: `None`
    /// when the toggle is off.
    pub fn budget(&self, prefix: &str) -> Option<Value> {
        if !self.checked(&format!("{prefix}budget_on")) {
            return None;
        }
        let field = |n: &str| format!("{prefix}{n}");
        let mut b = Map::new();
        b.insert(
            "type".into(),
            json!(self.text(&field("budget_type")).unwrap_or("cost")),
        );
        b.insert(
            "credit_limit".into(),
            number(self.one(&field("credit_limit"))),
        );
        if let Some(t) = self.text(&field("alert_threshold")) {
            b.insert("alert_threshold".into(), number(t));
        }
        if let Some(r) = self.text(&field("periodic_reset")) {
            b.insert("periodic_reset".into(), json!(r));
        }
        Some(Value::Object(b))
    }

    /// The rate limit of a form's "Add Rate Limit" toggle, as the API's `[RateLimit]`.
    pub fn rate_limits(&self, prefix: &str) -> Option<Value> {
        if !self.checked(&format!("{prefix}rate_on")) {
            return None;
        }
        let field = |n: &str| self.one(&format!("{prefix}{n}")).trim().to_owned();
        Some(json!([{
            "type": Some(field("rate_type")).filter(|t| !t.is_empty()).unwrap_or_else(|| "requests".into()),
            "unit": Some(field("rate_unit")).filter(|t| !t.is_empty()).unwrap_or_else(|| "rpm".into()),
            "value": number(&field("rate_value")),
        }]))
    }

    /// E-mail recipients: each value of `name`, split at commas and white space (the chips the
    /// script adds, or the comma-separated text without it).
    pub fn emails(&self, name: &str) -> Vec<String> {
        self.all(name)
            .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A form's number as a JSON number; text that is not one stays text, so the API's validation
/// names the field and what it expects.
pub fn number(text: &str) -> Value {
    let t = text.trim();
    match serde_json::from_str::<Value>(t) {
        Ok(v @ Value::Number(_)) => v,
        _ => json!(t),
    }
}

/// A `datetime-local` value (read as UTC) as an ISO-8601 timestamp.
pub fn utc_time(text: &str) -> Option<String> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    Some(match t.len() {
        16 => format!("{t}:00Z"),
        19 => format!("{t}Z"),
        _ => t.to_owned(),
    })
}

/// Which of `fields` an API message is about: the first whose name it mentions.
pub fn field_of<'a>(message: &str, fields: &[&'a str]) -> Option<&'a str> {
    fields.iter().copied().find(|f| message.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_and_a_rate_limit_are_made_only_when_toggled_on() {
        let f = Form::of(&[
            ("budget_on", "on"),
            ("budget_type", "tokens"),
            ("credit_limit", "5000"),
            ("alert_threshold", "4000"),
            ("periodic_reset", "monthly"),
            ("rate_value", "10"),
        ]);
        assert_eq!(
            f.budget(""),
            Some(
                json!({"type": "tokens", "credit_limit": 5000, "alert_threshold": 4000, "periodic_reset": "monthly"})
            )
        );
        assert_eq!(f.rate_limits(""), None);
        let f = Form::of(&[("rate_on", "on"), ("rate_unit", "rph"), ("rate_value", "x")]);
        assert_eq!(
            f.rate_limits(""),
            Some(json!([{"type": "requests", "unit": "rph", "value": "x"}]))
        );
    }

    #[test]
    fn recipients_come_from_chips_and_comma_separated_text() {
        let f = Form::of(&[
            ("alert_emails", "a@x.io"),
            ("alert_emails", "b@x.io, c@x.io"),
            ("alert_emails", ""),
        ]);
        assert_eq!(f.emails("alert_emails"), ["a@x.io", "b@x.io", "c@x.io"]);
    }

    #[test]
    fn numbers_stay_exact_and_times_are_utc() {
        assert_eq!(number("12.345").to_string(), "12.345");
        assert_eq!(number("ten"), json!("ten"));
        assert_eq!(
            utc_time("2027-01-02T03:04").as_deref(),
            Some("2027-01-02T03:04:00Z")
        );
        assert_eq!(utc_time(" "), None);
        assert_eq!(
            field_of(
                "usage_limits.credit_limit must be at least 1",
                &["name", "credit_limit"]
            ),
            Some("credit_limit")
        );
    }
}
