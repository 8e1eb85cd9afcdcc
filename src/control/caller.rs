//! The authenticated caller of an admin endpoint and the checks on what it may do: its scopes,
//! its level (organisation or workspace), the workspaces it sees, and who may govern limits.

use super::{ControlError, Result};
use crate::domain::{ApiKey, Authority, State, DEFAULT_WORKSPACE_SLUG};

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

    /// The workspace `requested` names (checked as in [`Caller::workspace_for`]), or else the
    /// caller's own, if it is pinned to one.
    pub fn named_workspace(
        &self,
        state: &State,
        requested: Option<&str>,
    ) -> Result<Option<String>> {
        match requested {
            Some(w) => self.workspace_for(state, Some(w)).map(Some),
            None => Ok(self.key.workspace_id.clone()),
        }
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

    /// For list endpoints: the workspace to filter on, if any, from the query's `workspace_id`.
    pub fn listed_workspace(
        &self,
        state: &State,
        q: &std::collections::HashMap<String, String>,
    ) -> Result<Option<String>> {
        self.workspace_filter(state, q.get("workspace_id").map(String::as_str))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
