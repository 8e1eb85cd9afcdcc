//! The control plane: admin commands. Each validates its input against the current state,
//! builds the new entity snapshots and commits them as config events. Views (the JSON the SDK
//! reads) are in [`views`]. HTTP is not known here; errors are [`ControlError`] values.

pub mod api_keys;
pub mod audit_logs;
pub mod configs;
pub mod integrations;
pub mod policies;
pub mod providers;
pub mod views;
pub mod workspaces;

use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value};

use crate::crypto::Sealer;
use crate::domain::limits::{
    parse_rate_limits, parse_usage_limit, LimitOwner, RateLimit, UsageLimit,
};
use crate::domain::{ApiKey, Authority, Millis, State, DEFAULT_WORKSPACE_SLUG};
use crate::ledger::{Ledger, LedgerError};
use crate::settings::Settings;
use crate::store::UsageStore;

/// Why an admin command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(Box<LedgerError>),
}

impl From<LedgerError> for ControlError {
    fn from(e: LedgerError) -> Self {
        ControlError::Internal(Box::new(e))
    }
}

impl From<crate::store::StoreError> for ControlError {
    fn from(e: crate::store::StoreError) -> Self {
        ControlError::from(LedgerError::Store(e))
    }
}

/// What admin commands use: the ledger (state and the one way to change it), the credential
/// sealer, the settings they check against, and the usage store (the audit trail).
pub struct Control {
    ledger: Arc<Ledger>,
    sealer: Sealer,
    settings: Arc<Settings>,
    store: Arc<dyn UsageStore>,
}

impl Control {
    pub fn new(
        ledger: Arc<Ledger>,
        sealer: Sealer,
        settings: Arc<Settings>,
        store: Arc<dyn UsageStore>,
    ) -> Self {
        Control {
            ledger,
            sealer,
            settings,
            store,
        }
    }
}

pub type Result<T> = std::result::Result<T, ControlError>;

fn invalid(m: impl Into<String>) -> ControlError {
    ControlError::Invalid(m.into())
}

/// The authenticated caller of an admin endpoint.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: std::sync::Arc<ApiKey>,
}

impl Caller {
    /// The caller as the actor of the changes it commits (the audit trail).
    pub fn actor(&self) -> crate::domain::Actor {
        crate::domain::Actor::of(&self.key)
    }

    /// Refuses unless the caller's key carries `scope`.
    pub fn require(&self, scope: &str) -> Result<()> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(ControlError::Forbidden(format!(
                "this API key lacks the {scope} scope"
            )))
        }
    }

    /// The caller's level: an organisation key, or a key pinned to one workspace.
    pub fn authority(&self) -> Authority {
        match self.key.workspace_id {
            Some(_) => Authority::Workspace,
            None => Authority::Organisation,
        }
    }

    /// Refuses a workspace key whatever its scopes: `what` (an organisation object, a
    /// workspace's own limits, provisioning) is changed with an organisation key only.
    pub fn require_organisation(&self, what: &str) -> Result<()> {
        match self.authority() {
            Authority::Organisation => Ok(()),
            Authority::Workspace => Err(ControlError::Forbidden(format!(
                "{what} needs an organisation key; a workspace key cannot, whatever its scopes"
            ))),
        }
    }

    /// Refuses unless the caller may change, remove or reset the limits of an object: never
    /// its own (`own`: the object is the caller's key), and limits set by a higher level
    /// (`set_by`; `None` while the object has none) only from that level.
    pub fn may_govern(&self, own: bool, set_by: Option<Authority>) -> Result<()> {
        if own {
            return Err(ControlError::Forbidden(
                "a key cannot change, remove or reset its own limits, defaults, expiry or alerts; ask a key with authority over it".into(),
            ));
        }
        if set_by.is_some_and(|s| s > self.authority()) {
            return Err(ControlError::Forbidden(
                "these limits were set with an organisation key; only an organisation key can change, remove or reset them".into(),
            ));
        }
        Ok(())
    }

    /// Checks an update of an object's governed fields (`before` → `after`: its limits, and
    /// whatever else governance reads) and returns who has set them now. An unchanged value
    /// needs no authority; `had_limits` says whether `set_by` meant anything before.
    pub fn govern<T: PartialEq>(
        &self,
        own: bool,
        set_by: Authority,
        had_limits: bool,
        before: &T,
        after: &T,
    ) -> Result<Authority> {
        if before == after {
            return Ok(set_by);
        }
        self.may_govern(own, had_limits.then_some(set_by))?;
        Ok(self.authority())
    }

    /// The workspace an operation applies to: a workspace key is pinned to its own; an organisation
    /// key names one (id or slug) or gets the default workspace.
    pub fn workspace_for(&self, state: &State, requested: Option<&str>) -> Result<String> {
        if let Some(own) = &self.key.workspace_id {
            return match requested.map(|r| state.workspace(r).map(|w| w.id.clone())) {
                None => Ok(own.clone()),
                Some(Some(id)) if &id == own => Ok(id),
                Some(_) => Err(ControlError::Forbidden(
                    "a workspace key can only act on its own workspace".into(),
                )),
            };
        }
        let wanted = requested.unwrap_or(DEFAULT_WORKSPACE_SLUG);
        state
            .workspace(wanted)
            .map(|w| w.id.clone())
            .ok_or_else(|| ControlError::NotFound(format!("workspace {wanted} not found")))
    }

    /// For list endpoints: the workspace to filter on, if any.
    pub fn workspace_filter(
        &self,
        state: &State,
        requested: Option<&str>,
    ) -> Result<Option<String>> {
        match (&self.key.workspace_id, requested) {
            (Some(_), r) => self.workspace_for(state, r).map(Some),
            (None, Some(r)) => self.workspace_for(state, Some(r)).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Whether the caller may see an object of `workspace_id`.
    pub fn sees(&self, workspace_id: Option<&str>) -> bool {
        match (&self.key.workspace_id, workspace_id) {
            (None, _) => true,
            (Some(own), Some(ws)) => own == ws,
            (Some(_), None) => false,
        }
    }
}

/// Field access on a JSON request body, with the contract's leniencies: null means unset,
/// and a field of the wrong type is a 400 naming it.
pub struct Body<'a>(pub &'a Map<String, Value>);

impl<'a> Body<'a> {
    pub fn of(v: &'a Value) -> Result<Self> {
        v.as_object()
            .map(Body)
            .ok_or_else(|| invalid("the request body must be a JSON object"))
    }

    pub fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid(format!("{k} must be a string"))),
        }
    }

    pub fn required_str(&self, k: &str) -> Result<&'a str> {
        self.str(k)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(format!("{k} is required")))
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Some(n.as_u64() == Some(1)))
            }
            Some(Value::String(s)) => parse_bool(s)
                .map(Some)
                .ok_or_else(|| invalid(format!("{k} must be a boolean"))),
            Some(_) => Err(invalid(format!("{k} must be a boolean"))),
        }
    }

    pub fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(invalid(format!("{k} must be an object"))),
        }
    }

    pub fn string_list(&self, k: &str) -> Result<Option<Vec<String>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{k} must be a list of strings")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(invalid(format!("{k} must be a list of strings"))),
        }
    }

    /// An ISO timestamp; `Some(None)` when the field is present and null (clears it).
    pub fn timestamp(&self, k: &str) -> Result<Option<Option<Millis>>> {
        match self.0.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Millis::parse_iso(s)
                .map(|m| Some(Some(m)))
                .ok_or_else(|| invalid(format!("{k} must be an ISO-8601 timestamp"))),
            Some(_) => Err(invalid(format!("{k} must be an ISO-8601 timestamp"))),
        }
    }
}

/// A new budget from a request's `usage_limits`; it counts usage from `now` on.
pub fn new_budget(v: Option<&Value>, now: Millis) -> Result<Option<UsageLimit>> {
    let mut l = parse_usage_limit(v.unwrap_or(&Value::Null)).map_err(invalid)?;
    if let Some(l) = &mut l {
        l.set_at = now;
    }
    Ok(l)
}

/// Applies an update's `usage_limits` and `reset_usage` to a budget. Budgets are immutable once
/// set: an absent or identical value changes nothing, `null` (or `[]`) removes the budget, a
/// different one is refused; `reset_usage: true` restarts the count from `now`.
pub fn update_budget(
    current: &mut Option<UsageLimit>,
    given: Option<&Value>,
    reset: bool,
    now: Millis,
) -> Result<()> {
    if let Some(v) = given {
        match (new_budget(Some(v), now)?, current.as_ref()) {
            (None, _) => *current = None,
            (Some(new), None) => *current = Some(new),
            (Some(mut new), Some(old)) => {
                new.set_at = old.set_at;
                new.reset_at = old.reset_at;
                if &new != old {
                    return Err(invalid(
                        "a budget cannot be edited once set; remove it (usage_limits: null) and set a new one, or use reset_usage",
                    ));
                }
            }
        }
    }
    if reset {
        match current {
            Some(l) => l.reset_at = Some(now),
            None => return Err(invalid("reset_usage: there is no budget to reset")),
        }
    }
    Ok(())
}

/// Applies an update's `rate_limits`. Like budgets, a rate limit cannot be edited once set:
/// absent (or null) changes nothing; `[]` removes them all; a list may keep, drop or add limits,
/// but one for a type and unit already limited must keep its value.
pub fn update_rate_limits(
    current: &mut Vec<RateLimit>,
    given: Option<&Value>,
    owner: LimitOwner,
) -> Result<()> {
    let Some(v) = given.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let new = parse_rate_limits(v, owner).map_err(invalid)?;
    let edited = new.iter().find_map(|n| {
        current
            .iter()
            .find(|c| c.kind == n.kind && c.unit == n.unit && *c != n)
    });
    if let Some(old) = edited {
        let shown = serde_json::to_value(old).unwrap_or(Value::Null);
        return Err(invalid(format!(
            "a rate limit cannot be edited once set ({shown} is in place); remove it (rate_limits: [] or a list without it) and set a new one"
        )));
    }
    *current = new;
    Ok(())
}

/// `true`/`false` in any case, as Python sends them in query strings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Checks a user-chosen slug (`^[a-zA-Z0-9_-]+$`, at most 100 characters).
pub fn check_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 100
        && slug
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then_some(())
        .ok_or_else(|| invalid(format!("slug {slug:?} must match ^[a-zA-Z0-9_-]+$")))
}

/// Checks a slug chosen for a new integration or provider: the shape of [`check_slug`], and
/// never an id (`taken_as_id`: an existing object has it as its id) nor shaped like one (a
/// UUID): lookups take ids first, and a slug must not stand for another object.
pub fn check_new_slug(slug: &str, taken_as_id: bool) -> Result<()> {
    check_slug(slug)?;
    if taken_as_id || uuid::Uuid::try_parse(slug).is_ok() {
        return Err(invalid(format!(
            "slug {slug:?} is shaped like an id, or is one: choose a name"
        )));
    }
    Ok(())
}

/// A readable unique slug: `prefix` + the name's letters and digits + a random suffix.
pub fn make_slug(prefix: &str, name: &str) -> String {
    let base: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let base: String = base.chars().take(40).collect();
    let suffix: String = (0..6)
        .map(|_| {
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::thread_rng().gen_range(0..36)])
        })
        .collect();
    match (prefix.is_empty(), base.is_empty()) {
        (true, true) => suffix,
        (true, false) => format!("{base}-{suffix}"),
        (false, true) => format!("{prefix}{suffix}"),
        (false, false) => format!("{prefix}{base}-{suffix}"),
    }
}

/// A new random id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Pagination from `current_page`/`currentPage` and `page_size`/`pageSize` (zero-based pages).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub current: usize,
    pub size: usize,
}

impl Page {
    pub fn from_query(
        q: &std::collections::HashMap<String, String>,
        default_size: usize,
    ) -> Result<Page> {
        let num = |a: &str, b: &str| -> Result<Option<usize>> {
            match q.get(a).or_else(|| q.get(b)) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| invalid(format!("{a} must be a whole number"))),
            }
        };
        let current = num("current_page", "currentPage")?.unwrap_or(0);
        let size = num("page_size", "pageSize")?.unwrap_or(default_size);
        if size == 0 || size > 1000 {
            return Err(invalid("page_size must be between 1 and 1000"));
        }
        Ok(Page { current, size })
    }

    /// `{object:"list", total, data}` for a page of `items`.
    pub fn list(&self, items: Vec<Value>) -> Value {
        let total = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip(self.current.saturating_mul(self.size))
            .take(self.size)
            .collect();
        serde_json::json!({"object": "list", "total": total, "data": data})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        let s = make_slug("ws-", "Team Alpha!");
        assert!(s.starts_with("ws-team-alpha-"), "{s}");
        assert!(check_slug(&s).is_ok());
        assert!(check_slug("bad slug").is_err());
        assert!(check_slug("").is_err());
        assert!(make_slug("pc-", "").starts_with("pc-"));
    }

    #[test]
    fn budgets_are_immutable_but_resettable_and_removable() {
        let now = Millis(1_000);
        let v = serde_json::json!({"type": "cost", "credit_limit": 10});
        let mut b = new_budget(Some(&v), now).unwrap();
        assert_eq!(b.as_ref().unwrap().set_at, now);
        update_budget(&mut b, Some(&v), false, Millis(2_000)).unwrap();
        assert_eq!(
            b.as_ref().unwrap().set_at,
            now,
            "an identical value changes nothing"
        );
        let other = serde_json::json!({"type": "cost", "credit_limit": 11});
        assert!(update_budget(&mut b, Some(&other), false, Millis(2_000)).is_err());
        update_budget(&mut b, None, true, Millis(3_000)).unwrap();
        assert_eq!(b.as_ref().unwrap().reset_at, Some(Millis(3_000)));
        update_budget(&mut b, Some(&Value::Null), false, Millis(4_000)).unwrap();
        assert!(b.is_none());
        assert!(update_budget(&mut b, None, true, Millis(5_000)).is_err());
    }

    fn caller(workspace: Option<&str>) -> Caller {
        let mut k = crate::domain::state::tests::api_key_fixture(None);
        k.workspace_id = workspace.map(str::to_owned);
        Caller {
            key: std::sync::Arc::new(k),
        }
    }

    #[test]
    fn limits_answer_to_the_level_that_set_them() {
        let (org, ws) = (caller(None), caller(Some("ws")));
        let (o, w) = (Authority::Organisation, Authority::Workspace);
        assert!(ws.may_govern(false, Some(o)).is_err());
        assert!(ws.may_govern(false, Some(w)).is_ok());
        assert!(ws.may_govern(false, None).is_ok(), "no limits yet");
        assert!(org.may_govern(false, Some(o)).is_ok());
        assert!(org.may_govern(true, None).is_err(), "never its own");
        assert_eq!(ws.govern(false, o, true, &1, &1).unwrap(), o, "no change");
        assert!(ws.govern(false, o, true, &1, &2).is_err());
        assert_eq!(
            ws.govern(false, o, false, &0, &2).unwrap(),
            w,
            "now set by it"
        );
        assert_eq!(org.govern(false, w, true, &1, &2).unwrap(), o);
        assert!(ws.require_organisation("x").is_err());
        assert!(org.require_organisation("x").is_ok());
    }

    #[test]
    fn rate_limits_are_immutable_but_removable() {
        let rpm = |v: u64| serde_json::json!([{"type": "requests", "unit": "rpm", "value": v}]);
        let mut r = Vec::new();
        update_rate_limits(&mut r, Some(&rpm(5)), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, Some(&rpm(5)), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, None, LimitOwner::Other).unwrap();
        let err = update_rate_limits(&mut r, Some(&rpm(6)), LimitOwner::Other).unwrap_err();
        assert!(err.to_string().contains("cannot be edited"), "{err}");
        assert_eq!(r[0].value, 5);
        let both = serde_json::json!([{"type": "requests", "unit": "rpm", "value": 5},
            {"type": "tokens", "unit": "rph", "value": 1000}]);
        update_rate_limits(&mut r, Some(&both), LimitOwner::Other).unwrap();
        assert_eq!(
            r.len(),
            2,
            "adding a limit of another type or unit is not an edit"
        );
        update_rate_limits(&mut r, Some(&serde_json::json!([])), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, Some(&rpm(6)), LimitOwner::Other).unwrap();
        assert_eq!(r[0].value, 6, "removed, then set anew");
    }

    #[test]
    fn bools_from_python() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("FALSE"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
