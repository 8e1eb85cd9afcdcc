//! A plan leaf resolved to a concrete upstream for one attempt: the provider, its integration,
//! the wire protocol (from the catalog), the base URL (always the integration's, never the
//! request's) and the credential, decrypted in memory only for the attempt.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::Value;

use super::DataError;
use crate::crypto::{seal_scope, secret_id, Sealer};
use crate::domain::catalog::{self, Protocol};
use crate::domain::routing::{azure_deployment, azure_name_ok, has_azure_map, Leaf};
use crate::domain::{Integration, Millis, Provider, State};
use crate::providers::bedrock::Credentials;
use crate::providers::gemini::ServiceAccount;

/// A resolved upstream for one attempt.
#[derive(Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub integration: Arc<Integration>,
    pub protocol: Protocol,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Headers carrying the credential (marked sensitive) and provider settings.
    pub headers: HeaderMap,
    /// Extra query string (Azure's `api-version`).
    pub query: Option<String>,
    /// A credential that is not a header: signed or exchanged per attempt.
    pub auth: Auth,
}

/// The `api-version` of an Azure integration that sets none.
const AZURE_API_VERSION: &str = "2024-10-21";

impl Target {
    /// Whether the upstream names the output cap `max_completion_tokens` (OpenAI's current
    /// name) rather than `max_tokens`: OpenAI's own API, Azure from `api-version` 2024-09-01,
    /// and OpenAI's reasoning models wherever `openai` points (they refuse `max_tokens`). An
    /// `openai` integration with a `custom_host` is often another OpenAI-compatible server,
    /// which may know `max_tokens` only (and an ignored cap is output no one bounded).
    pub fn takes_max_completion_tokens(&self, model: &str) -> bool {
        takes_max_completion_tokens(&self.integration, model)
    }
}

fn takes_max_completion_tokens(i: &Integration, model: &str) -> bool {
    let reasoning = ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p));
    match i.ai_provider_id.as_str() {
        "openai" => reasoning || config_str(i, "custom_host").is_none(),
        "azure-openai" => {
            reasoning || config_str(i, "api_version").unwrap_or(AZURE_API_VERSION) >= "2024-09-01"
        }
        _ => false,
    }
}

/// How an attempt authenticates beyond [`Target::headers`].
#[derive(Clone)]
pub enum Auth {
    /// The credential is in the headers (or there is none).
    Headers,
    /// AWS SigV4 with these credentials, or with a role assumed from them.
    Aws(Arc<AwsAuth>),
    /// A Google OAuth2 access token from this service account.
    Google(Arc<ServiceAccount>),
}

/// An integration's AWS credentials.
pub struct AwsAuth {
    pub base: Credentials,
    pub region: String,
    pub role: Option<AwsRole>,
}

/// `aws_auth_type: assumedRole`: the role assumed (STS AssumeRole) with the base credentials.
pub struct AwsRole {
    pub arn: String,
    pub external_id: Option<String>,
    pub sts_endpoint: String,
}

fn config_str<'a>(i: &'a Integration, k: &str) -> Option<&'a str> {
    i.configurations
        .get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Resolves a leaf in the key's workspace for `model` and checks the provider may be used now.
pub fn resolve(
    state: &State,
    sealer: &Sealer,
    workspace_id: &str,
    leaf: &Leaf,
    model: &str,
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
    let open = Opener {
        sealer,
        integration,
        slug,
    };
    // Integrations stored before the catalog (any id with a custom_host) speak OpenAI's API.
    let protocol =
        catalog::kind(&integration.ai_provider_id).map_or(Protocol::OpenAi, |k| k.protocol);
    let secret = open.key()?;
    let base_url = base_url(integration, slug, protocol, model)?;
    let mut headers = headers(integration, slug, protocol, secret)?;
    let auth = match protocol {
        Protocol::Bedrock => Auth::Aws(Arc::new(aws_auth(integration, &open)?)),
        Protocol::Vertex => Auth::Google(Arc::new(service_account(&open)?)),
        _ => Auth::Headers,
    };
    let query = (protocol == Protocol::Azure).then(|| {
        format!(
            "api-version={}",
            config_str(integration, "api_version").unwrap_or(AZURE_API_VERSION)
        )
    });
    if protocol == Protocol::Anthropic {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(crate::providers::anthropic::VERSION),
        );
    }
    Ok(Target {
        provider: provider.clone(),
        integration: integration.clone(),
        protocol,
        base_url,
        headers,
        query,
        auth,
    })
}

/// Opens an integration's sealed credentials.
struct Opener<'a> {
    sealer: &'a Sealer,
    integration: &'a Integration,
    slug: &'a str,
}

impl Opener<'_> {
    fn undecryptable(&self) -> DataError {
        DataError::internal(format!(
            "the credential of provider {} cannot be decrypted (was the master key changed?)",
            self.slug
        ))
    }

    /// The integration's `key`, if any.
    fn key(&self) -> Result<Option<String>, DataError> {
        let i = self.integration;
        i.key
            .as_ref()
            .map(|sealed| {
                self.sealer
                    .open(sealed, seal_scope(i), &i.id)
                    .map_err(|_| self.undecryptable())
            })
            .transpose()
    }

    /// A secret field of `configurations`, if set.
    fn secret(&self, field: &str) -> Result<Option<String>, DataError> {
        let i = self.integration;
        i.secrets
            .get(field)
            .map(|sealed| {
                self.sealer
                    .open(sealed, seal_scope(i), &secret_id(&i.id, field))
                    .map_err(|_| self.undecryptable())
            })
            .transpose()
    }

    /// A secret field the provider cannot be called without.
    fn required(&self, field: &str) -> Result<String, DataError> {
        self.secret(field)?.ok_or_else(|| {
            DataError::bad_request(format!(
                "provider {}: configurations.{field} is not set",
                self.slug
            ))
        })
    }
}

fn aws_auth(i: &Integration, open: &Opener<'_>) -> Result<AwsAuth, DataError> {
    let slug = open.slug;
    let region = config_str(i, "aws_region")
        .filter(|r| region_ok(r))
        .ok_or_else(|| {
            DataError::bad_request(format!(
                "provider {slug}: configurations.aws_region is not a valid AWS region"
            ))
        })?
        .to_owned();
    let base = Credentials {
        access_key_id: open.required("aws_access_key_id")?,
        secret_access_key: open.required("aws_secret_access_key")?,
        session_token: open.secret("aws_session_token")?,
    };
    let role = match config_str(i, "aws_auth_type") {
        Some("assumedRole") => Some(AwsRole {
            arn: config_str(i, "aws_role_arn")
                .ok_or_else(|| {
                    DataError::bad_request(format!(
                        "provider {slug}: configurations.aws_role_arn is not set"
                    ))
                })?
                .to_owned(),
            external_id: config_str(i, "aws_external_id").map(str::to_owned),
            sts_endpoint: config_str(i, "aws_sts_endpoint").map_or_else(
                || format!("https://sts.{region}.amazonaws.com"),
                |e| e.trim_end_matches('/').to_owned(),
            ),
        }),
        _ => None,
    };
    Ok(AwsAuth { base, region, role })
}

fn service_account(open: &Opener<'_>) -> Result<ServiceAccount, DataError> {
    let json = open.required("vertex_service_account_json")?;
    crate::providers::gemini::parse_service_account(&json).map_err(|e| {
        DataError::bad_request(format!(
            "provider {}: configurations.vertex_service_account_json: {e}",
            open.slug
        ))
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

/// The integration's base URL for `model`. The host is the integration's, never the
/// request's: nothing a request carries redirects a stored credential (configs refuse
/// custom_host on such targets; see `domain::routing`).
fn base_url(
    i: &Integration,
    slug: &str,
    protocol: Protocol,
    model: &str,
) -> Result<String, DataError> {
    let missing = |what: &str| {
        DataError::bad_request(format!(
            "provider {slug}: {} needs {what}",
            i.ai_provider_id
        ))
    };
    if let Some(h) = config_str(i, "custom_host") {
        let host = h.trim_end_matches('/');
        // Azure behind a private endpoint: the host replaces the resource's, and a model map
        // still picks the deployment. Without a map the host is the deployment's URL itself.
        if protocol == Protocol::Azure && has_azure_map(&i.configurations) {
            return Ok(format!(
                "{host}/openai/deployments/{}",
                mapped(i, slug, model)?
            ));
        }
        return Ok(host.to_owned());
    }
    Ok(match protocol {
        Protocol::Azure => {
            // Names stored before they were validated are checked again: they form the URL.
            let resource =
                config_str(i, "resource_name").filter(|r| azure_name_ok("resource_name", r));
            let Some(r) = resource else {
                return Err(missing("custom_host or a valid resource_name"));
            };
            format!(
                "https://{r}.openai.azure.com/openai/deployments/{}",
                mapped(i, slug, model)?
            )
        }
        Protocol::Bedrock => {
            let region = config_str(i, "aws_region")
                .filter(|r| region_ok(r))
                .ok_or_else(|| missing("a valid aws_region"))?;
            crate::providers::bedrock::default_base_url(region)
        }
        Protocol::Vertex => {
            let (Some(project), Some(region)) = (
                config_str(i, "vertex_project_id"),
                config_str(i, "vertex_region"),
            ) else {
                return Err(missing("vertex_project_id and vertex_region"));
            };
            let publisher = if model.starts_with("claude") {
                "anthropic"
            } else {
                "google"
            };
            crate::providers::gemini::validate_vertex_location(project, region)
                .map_err(|e| DataError::bad_request(format!("provider {slug}: {e}")))?;
            crate::providers::gemini::vertex_base_url(project, region, publisher)
        }
        _ => catalog::kind(&i.ai_provider_id)
            .and_then(|k| k.base_url)
            .ok_or_else(|| missing("configurations.custom_host (it has no endpoint built in)"))?
            .to_owned(),
    })
}

/// Whether `r` can be an AWS region (it forms the endpoint's host): `[a-z0-9-]`, at most 32.
fn region_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The Azure deployment serving `model` (see [`azure_deployment`]), or a 400 naming what is
/// missing: a model the map does not name, or no deployment at all.
fn mapped<'a>(i: &'a Integration, slug: &str, model: &str) -> Result<&'a str, DataError> {
    // Names stored before they were validated are checked again: they form the URL.
    if let Some(d) = azure_deployment(&i.configurations, model) {
        return match azure_name_ok("deployment_name", d) {
            true => Ok(d),
            false => Err(DataError::bad_request(format!(
                "provider {slug}: the deployment of {model} is not a plain name"
            ))),
        };
    }
    Err(DataError::bad_request(
        if has_azure_map(&i.configurations) {
            format!("provider {slug} has no deployment for model {model} (its deployments map names the models it serves)")
        } else {
            format!("provider {slug}: azure-openai needs a deployment (deployment_id, or a deployments map)")
        },
    ))
}

/// The headers of a call: the credential (`secret`, marked sensitive) in the header its
/// protocol uses, then the provider settings and the integration's custom headers.
fn headers(
    i: &Integration,
    slug: &str,
    protocol: Protocol,
    secret: Option<String>,
) -> Result<HeaderMap, DataError> {
    let mut headers = HeaderMap::new();
    if let Some(secret) = secret {
        let entra = config_str(i, "azure_auth_mode") == Some("entra");
        let (name, value) = match protocol {
            Protocol::Azure if !entra => (HeaderName::from_static("api-key"), secret),
            Protocol::Anthropic => (HeaderName::from_static("x-api-key"), secret),
            Protocol::Gemini => (HeaderName::from_static("x-goog-api-key"), secret),
            _ => (AUTHORIZATION, format!("Bearer {secret}")),
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
        if let Some(v) = config_str(i, k).and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(custom) = i
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn azure(c: Value) -> Integration {
        Integration {
            id: "i".into(),
            slug: "az".into(),
            name: "az".into(),
            description: None,
            ai_provider_id: "azure-openai".into(),
            workspace_id: None,
            key: None,
            secrets: Default::default(),
            configurations: c.as_object().unwrap().clone(),
            allow_all_models: true,
            models: Default::default(),
            workspaces: Default::default(),
            global_workspace_access: None,
            implicit: false,
            credential_set_by: Default::default(),
            created_at: Millis(0),
            updated_at: Millis(0),
        }
    }

    #[test]
    fn azure_models_go_to_their_mapped_deployment_or_the_only_one() {
        let map = azure(json!({"resource_name": "acme", "deployment_id": "dflt",
            "deployments": {"gpt-4o": "prod-4o", "bad": "../x"}}));
        let url = |i: &Integration, m: &str| base_url(i, "az", Protocol::Azure, m);
        assert_eq!(
            url(&map, "gpt-4o").unwrap(),
            "https://acme.openai.azure.com/openai/deployments/prod-4o"
        );
        // A map names the models it serves: the default deployment would serve (and be priced
        // as) whatever model a caller names.
        assert!(url(&map, "gpt-4o-mini").is_err());
        let single =
            azure(json!({"resource_name": "acme", "deployment_id": "dflt", "deployments": {}}));
        assert_eq!(
            url(&single, "gpt-4o-mini").unwrap(),
            "https://acme.openai.azure.com/openai/deployments/dflt"
        );
        // A name that would climb out of the path is refused again here, whatever is stored.
        assert!(url(&map, "bad").is_err());
        let list = azure(json!({"resource_name": "acme",
            "deployments": [{"model": "gpt-4o", "deployment_id": "prod-4o"}]}));
        assert_eq!(
            url(&list, "gpt-4o").unwrap(),
            "https://acme.openai.azure.com/openai/deployments/prod-4o"
        );
        assert!(
            url(&list, "unmapped").is_err(),
            "no deployment for the model"
        );
        let host = azure(json!({"custom_host": "http://mock:1/v1/"}));
        assert_eq!(url(&host, "any").unwrap(), "http://mock:1/v1");
        // A private endpoint with a model map: the host replaces the resource's.
        let private = azure(json!({"custom_host": "https://private.example/",
            "deployments": {"gpt-4o": "prod-4o", "bad": "../x"}, "deployment_id": "dflt"}));
        assert_eq!(
            url(&private, "gpt-4o").unwrap(),
            "https://private.example/openai/deployments/prod-4o"
        );
        assert!(url(&private, "other").is_err());
        assert!(
            url(&private, "bad").is_err(),
            "a deployment name that is a path"
        );
    }

    #[test]
    fn the_output_cap_is_named_as_the_upstream_takes_it() {
        let openai = |c: Value| Integration {
            ai_provider_id: "openai".into(),
            ..azure(c)
        };
        let cases = [
            (openai(json!({})), "gpt-4o", true),
            (
                openai(json!({"custom_host": "http://vllm:8000/v1"})),
                "llama-3",
                false,
            ),
            (
                openai(json!({"custom_host": "http://proxy/v1"})),
                "o3-mini",
                true,
            ),
            (azure(json!({"resource_name": "r"})), "gpt-4o", true),
            (azure(json!({"api_version": "2024-06-01"})), "gpt-4o", false),
            (azure(json!({"api_version": "2024-06-01"})), "o1", true),
            (
                azure(json!({"api_version": "2025-01-01-preview"})),
                "gpt-4o",
                true,
            ),
        ];
        for (i, model, completion) in cases {
            assert_eq!(
                takes_max_completion_tokens(&i, model),
                completion,
                "{model} {:?}",
                i.configurations
            );
        }
        let groq = Integration {
            ai_provider_id: "groq".into(),
            ..azure(json!({}))
        };
        assert!(!takes_max_completion_tokens(&groq, "o3"));
    }

    #[test]
    fn regions_form_hosts_only_when_plain() {
        assert!(region_ok("us-east-1"));
        for bad in [
            "",
            "us-east-1.evil.com",
            "US-EAST-1",
            "us/east",
            &"a".repeat(33),
        ] {
            assert!(!region_ok(bad), "{bad}");
        }
    }
}
