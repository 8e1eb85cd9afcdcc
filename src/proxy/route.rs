//! Which upstream a request goes to: the routing plan from headers, the key's defaults and the
//! model name (§1.3), and the resolution of a plan leaf to a concrete target with its decrypted
//! credential (in memory only, for the duration of the attempt).

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;

use super::{DataError, RequestBody};
use crate::crypto::Sealer;
use crate::domain::routing::azure_name_ok;
use crate::domain::routing::{Leaf, Node};
use crate::domain::{ApiKey, Integration, Millis, Provider, State};

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

/// A resolved upstream for one attempt.
#[derive(Clone)]
pub struct Target {
    pub provider: std::sync::Arc<Provider>,
    pub integration: std::sync::Arc<Integration>,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Headers carrying the credential and provider settings.
    pub headers: HeaderMap,
    /// Extra query string (Azure's `api-version`).
    pub query: Option<String>,
}

/// The OpenAI-compatible base URL of providers that have one.
fn default_base(ai_provider: &str) -> Option<&'static str> {
    Some(match ai_provider {
        "openai" => "https://api.openai.com/v1",
        "groq" => "https://api.groq.com/openai/v1",
        "together-ai" => "https://api.together.xyz/v1",
        "mistral-ai" => "https://api.mistral.ai/v1",
        "deepseek" => "https://api.deepseek.com/v1",
        "fireworks-ai" => "https://api.fireworks.ai/inference/v1",
        _ => return None,
    })
}

fn config_str<'a>(i: &'a Integration, k: &str) -> Option<&'a str> {
    i.configurations
        .get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Resolves a leaf in the key's workspace and checks the provider may be used now.
pub fn resolve(
    state: &State,
    sealer: &Sealer,
    workspace_id: &str,
    leaf: &Leaf,
    now: Millis,
) -> Result<Target, DataError> {
    let slug = match leaf {
        Leaf::VirtualKey(s) | Leaf::Provider(s) => s,
        Leaf::Byok { provider, .. } => {
            return Err(DataError::bad_request(format!(
                "config targets with a raw api_key ({provider}) are not accepted here; store the key as a provider or virtual key"
            )))
        }
    };
    let (provider, integration) = usable(state, workspace_id, slug, now)?;
    let secret = match &integration.key {
        Some(sealed) => Some(
            sealer
                .open(sealed, crate::crypto::seal_scope(integration), &integration.id)
                .map_err(|_| DataError::internal(format!("the credential of provider {slug} cannot be decrypted (was the master key changed?)")))?,
        ),
        None => None,
    };
    let azure = integration.ai_provider_id == "azure-openai";
    let base_url = base_url(integration, slug, azure)?;
    let headers = headers(integration, slug, azure, secret)?;
    let query = azure.then(|| {
        format!(
            "api-version={}",
            config_str(integration, "api_version").unwrap_or("2024-10-21")
        )
    });
    Ok(Target {
        provider: provider.clone(),
        integration: integration.clone(),
        base_url,
        headers,
        query,
    })
}

/// The provider `slug` names in the workspace and its integration, if they may be used now.
fn usable<'s>(
    state: &'s State,
    workspace_id: &str,
    slug: &str,
    now: Millis,
) -> Result<(&'s Arc<Provider>, &'s Arc<Integration>), DataError> {
    let provider = state.provider(slug, Some(workspace_id)).ok_or_else(|| {
        DataError::bad_request(format!(
            "provider or virtual key {slug} not found in this workspace"
        ))
    })?;
    if provider.expires_at.is_some_and(|e| e <= now) {
        return Err(DataError::new(
            StatusCode::PRECONDITION_FAILED,
            "invalid_request_error",
            Some("provider_expired"),
            format!("provider {slug} has expired"),
        ));
    }
    let integration = state
        .integrations
        .get(&provider.integration_id)
        .ok_or_else(|| DataError::bad_request(format!("provider {slug} has no integration")))?;
    if !integration.serves_workspace(workspace_id) {
        return Err(DataError::forbidden(
            "integration_not_provisioned",
            format!(
                "integration {} is not enabled for this workspace",
                integration.slug
            ),
        ));
    }
    Ok((provider, integration))
}

/// The integration's base URL. The host is the integration's, never the request's: nothing a
/// request carries redirects a stored credential (configs refuse custom_host on such targets;
/// see `domain::routing`).
fn base_url(integration: &Integration, slug: &str, azure: bool) -> Result<String, DataError> {
    let host = config_str(integration, "custom_host");
    Ok(match (host, azure) {
        (Some(h), _) => h.trim_end_matches('/').to_owned(),
        (None, true) => match (config_str(integration, "resource_name"), config_str(integration, "deployment_name")) {
            // Names stored before they were validated are checked again: they form the URL.
            (Some(r), Some(d)) if azure_name_ok("resource_name", r) && azure_name_ok("deployment_name", d) => {
                format!("https://{r}.openai.azure.com/openai/deployments/{d}")
            }
            _ => return Err(DataError::bad_request(format!("provider {slug}: azure-openai needs custom_host, or a valid resource_name and deployment_name"))),
        },
        (None, false) => default_base(&integration.ai_provider_id)
            .ok_or_else(|| DataError::bad_request(format!(
                "provider {slug}: {} has no OpenAI-compatible endpoint built in; set configurations.custom_host",
                integration.ai_provider_id
            )))?
            .to_owned(),
    })
}

/// The headers of a call: the credential (`secret`, marked sensitive), then the provider
/// settings and the integration's custom headers.
fn headers(
    integration: &Integration,
    slug: &str,
    azure: bool,
    secret: Option<String>,
) -> Result<HeaderMap, DataError> {
    let mut headers = HeaderMap::new();
    if let Some(secret) = secret {
        let (name, value) = if azure {
            (HeaderName::from_static("api-key"), secret)
        } else {
            (AUTHORIZATION, format!("Bearer {secret}"))
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            DataError::internal(format!(
                "provider {slug}: the stored key is not a valid header value"
            ))
        })?;
        v.set_sensitive(true);
        headers.insert(name, v);
    }
    for (k, name) in [
        ("openai_organization", "openai-organization"),
        ("openai_project", "openai-project"),
    ] {
        if let Some(v) = config_str(integration, k).and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(custom) = integration
        .configurations
        .get("custom_headers")
        .and_then(Value::as_object)
    {
        for (k, v) in custom {
            if let (Ok(n), Some(Ok(v))) = (
                HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                headers.insert(n, v);
            }
        }
    }
    Ok(headers)
}
