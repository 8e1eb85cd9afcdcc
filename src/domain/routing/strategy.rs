//! Strategy settings of a config node: its `strategy` (single, fallback, loadbalance) and its
//! `retry`, parsed and checked.

use serde_json::Value;

/// How a strategy node uses its targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Single,
    /// Try targets in order; move on when the status is in `on_status_codes` (or is not 2xx when unset).
    Fallback {
        on_status_codes: Option<Vec<u16>>,
    },
    Loadbalance,
}

/// Retry the same target on these statuses, `attempts` more times at most.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub on_status_codes: Vec<u16>,
}

/// The OSS gateway's retry defaults.
pub(super) const DEFAULT_RETRY_CODES: [u16; 5] = [429, 500, 502, 503, 504];
const MAX_RETRY_ATTEMPTS: u32 = 5;

pub(super) fn parse_mode(v: &Value, at: &str) -> Result<Mode, String> {
    let mode = v
        .get("mode")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}.strategy.mode: required"))?;
    match mode {
        "single" => Ok(Mode::Single),
        "loadbalance" => Ok(Mode::Loadbalance),
        "fallback" => {
            let codes = match v.get("on_status_codes") {
                None | Some(Value::Null) => None,
                Some(c) => Some(status_list(c, &format!("{at}.strategy.on_status_codes"))?),
            };
            Ok(Mode::Fallback {
                on_status_codes: codes,
            })
        }
        other => Err(format!(
            "{at}.strategy.mode: \"{other}\" is not supported (single, fallback, loadbalance)"
        )),
    }
}

pub(super) fn parse_retry(v: &Value, at: &str) -> Result<Retry, String> {
    let attempts = v
        .get("attempts")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{at}.retry.attempts: required, a whole number"))?;
    if attempts > u64::from(MAX_RETRY_ATTEMPTS) {
        return Err(format!("{at}.retry.attempts: at most {MAX_RETRY_ATTEMPTS}"));
    }
    let on_status_codes = match v.get("on_status_codes") {
        None | Some(Value::Null) => DEFAULT_RETRY_CODES.to_vec(),
        Some(c) => status_list(c, &format!("{at}.retry.on_status_codes"))?,
    };
    Ok(Retry {
        attempts: attempts as u32,
        on_status_codes,
    })
}

/// A status list, sorted and without repeats (so it is never longer than the 500 codes there are).
fn status_list(v: &Value, at: &str) -> Result<Vec<u16>, String> {
    let mut codes = v
        .as_array()
        .ok_or_else(|| format!("{at}: must be an array of status codes"))?
        .iter()
        .map(|c| {
            c.as_u64()
                .filter(|c| (100..=599).contains(c))
                .map(|c| c as u16)
                .ok_or_else(|| format!("{at}: {c} is not an HTTP status code"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}
