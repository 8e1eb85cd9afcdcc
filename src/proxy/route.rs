//! Which upstream a request goes to: the routing plan from headers, the key's defaults and the
//! model name (§1.3). A plan leaf becomes a concrete upstream in [`super::target`].

use reqwest::header::HeaderMap;
use serde_json::Value;
use std::sync::Arc;

pub use super::target::{resolve, Target};
use super::{DataError, RequestBody};
use crate::domain::routing::{Leaf, Node};
use crate::domain::{ApiKey, State};

/// A parsed routing plan and the saved config it came from. A saved config's plan is shared with
/// the state that parsed it once; an inline one is parsed per request (bounded in size).
#[derive(Debug, Clone)]
pub struct Plan {
    pub root: Arc<Node>,
    pub config_id: Option<String>,
}

impl Plan {
    fn leaf(leaf: Leaf) -> Plan {
        Plan {
            root: Arc::new(Node::leaf(leaf)),
            config_id: None,
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A config reference: inline JSON, or a saved config's slug or id in the key's workspace.
fn config_plan(state: &State, workspace_id: &str, reference: &str) -> Result<Plan, DataError> {
    if reference.starts_with('{') {
        let root = Node::parse_text(reference)
            .map_err(|e| DataError::bad_request(format!("invalid x-portkey-config: {e}")))?;
        return Ok(Plan {
            root: Arc::new(root),
            config_id: None,
        });
    }
    let c = state
        .config(reference)
        .filter(|c| c.workspace_id == workspace_id && c.status == "active")
        .ok_or_else(|| {
            DataError::bad_request(format!("config {reference} not found in this workspace"))
        })?;
    let root = match state.config_plan(&c.id) {
        Some(Ok(root)) => root.clone(),
        Some(Err(e)) => return Err(DataError::bad_request(format!("config {}: {e}", c.slug))),
        None => {
            return Err(DataError::internal(format!(
                "config {} has no plan",
                c.slug
            )))
        }
    };
    Ok(Plan {
        root,
        config_id: Some(c.slug.clone()),
    })
}

/// The SDK sends its `custom_host` argument as this header. Every route here uses a stored
/// credential, which only goes to the host its integration names, so a request-chosen host is
/// refused rather than silently ignored.
fn refuse_request_host(headers: &HeaderMap) -> Result<(), DataError> {
    match header(headers, "x-portkey-custom-host") {
        None => Ok(()),
        Some(_) => Err(DataError::bad_request(
            "x-portkey-custom-host is not accepted: requests here use stored provider credentials, which are only sent to the host their integration names (set by an admin)",
        )),
    }
}

/// Builds the routing plan (§1.3 precedence) and strips an `@slug/` prefix from `model`.
pub fn plan(
    state: &State,
    key: &ApiKey,
    workspace_id: &str,
    headers: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Plan, DataError> {
    let prefixed = body
        .model()
        .and_then(|m| m.strip_prefix('@'))
        .and_then(|m| m.split_once('/'))
        .map(|(s, m)| (s.to_owned(), m.to_owned()));
    if let Some((_, model)) = &prefixed {
        body.json
            .insert("model".into(), Value::String(model.clone()));
    }
    refuse_request_host(headers)?;
    let header_config = header(headers, "x-portkey-config");
    let config = match (key.default_config(), header_config) {
        (Some(default), _) if !key.allows_config_override() => Some(default),
        (_, Some(h)) => Some(h),
        (default, None) => default,
    };
    if let Some(reference) = config {
        return config_plan(state, workspace_id, reference);
    }
    if let Some(vk) = header(headers, "x-portkey-virtual-key") {
        return Ok(Plan::leaf(Leaf::VirtualKey(vk.to_owned())));
    }
    if let Some(p) = header(headers, "x-portkey-provider") {
        if let Some(slug) = p.strip_prefix('@') {
            return Ok(Plan::leaf(Leaf::Provider(slug.to_owned())));
        }
        if prefixed.is_none() {
            return Err(DataError::bad_request(format!(
                "provider {p:?} with your own provider key is not accepted here; use a provider \"@slug\", a virtual key or a config"
            )));
        }
    }
    if let Some((slug, _)) = prefixed {
        return Ok(Plan::leaf(Leaf::Provider(slug)));
    }
    Err(DataError::bad_request(
        "no route: send x-portkey-config, x-portkey-virtual-key or x-portkey-provider: @slug, or use model \"@provider-slug/model\"",
    ))
}
