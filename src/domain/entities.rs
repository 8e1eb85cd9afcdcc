//! The control-plane entities. Each is stored whole in its config event (snapshot semantics,
//! so a compacted log keyed by entity keeps exactly the latest state of each).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::limits::{RateLimit, UsageLimit};
use super::time::Millis;

/// String metadata, e.g. `{"department": "engineering", "_user": "u1"}`.
pub type Metadata = BTreeMap<String, String>;

/// The one organisation this deployment serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

/// The level of the key that set an entity's limits. Only a key of that level or above may
/// change, remove or reset them (see `control::Caller::may_govern`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    Workspace,
    /// Also what an entity stored before the level was recorded reads as: the safe side.
    #[default]
    Organisation,
}

/// The slug of the workspace every organisation starts with.
pub const DEFAULT_WORKSPACE_SLUG: &str = "ws-default";

/// A workspace: the unit that owns keys, providers and configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    /// `{metadata, input_guardrails, output_guardrails, user_api_key_config}`, kept verbatim.
    pub defaults: Map<String, Value>,
    pub usage_limits: Option<UsageLimit>,
    pub rate_limits: Vec<RateLimit>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Workspace {
    /// `defaults.metadata` as string pairs (non-string values are ignored).
    pub fn default_metadata(&self) -> Metadata {
        string_map(self.defaults.get("metadata"))
    }
}

/// Keeps the string-valued entries of a JSON object.
pub fn string_map(v: Option<&Value>) -> Metadata {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A provider credential encrypted at rest (see `crypto::Sealer`); base64 of nonce ‖ ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub sealed: String,
    /// A short masked rendering safe to show (`sk-****wxyz`).
    pub masked: String,
}

/// One model entry of an integration's model provisioning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub slug: String,
    pub enabled: bool,
    pub is_custom: bool,
    pub is_finetune: bool,
    pub base_model_slug: Option<String>,
    pub pricing_config: Option<Value>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// An integration's access grant and limits for one workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceAccess {
    pub workspace_id: String,
    pub enabled: bool,
    pub usage_limits: Option<UsageLimit>,
    pub rate_limits: Vec<RateLimit>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A shared provider credential (e.g. the company's OpenAI key) and where it may be used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    /// `openai`, `azure-openai`, `groq`, ...
    pub ai_provider_id: String,
    /// Set for workspace-scoped integrations (and the implicit ones behind virtual keys).
    pub workspace_id: Option<String>,
    pub key: Option<SealedSecret>,
    /// The secret fields of `configurations` (the catalog's, e.g. `aws_secret_access_key`),
    /// sealed like `key` and never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SealedSecret>,
    /// Provider-specific settings; `custom_host` and `custom_headers` for any provider.
    pub configurations: Map<String, Value>,
    pub allow_all_models: bool,
    pub models: BTreeMap<String, ModelEntry>,
    pub workspaces: BTreeMap<String, WorkspaceAccess>,
    pub global_workspace_access: Option<Value>,
    /// True for the integration created implicitly by a virtual key.
    pub implicit: bool,
    /// Who last entered `key` or changed `configurations`: a workspace key changes the
    /// configurations of a credential the organisation entered only by giving a key itself.
    #[serde(default)]
    pub credential_set_by: Authority,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Integration {
    /// Whether `model` may be called through this integration.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allow_all_models || self.models.get(model).is_some_and(|m| m.enabled)
    }

    /// Whether a credential is stored: the key or a secret field.
    pub fn has_credential(&self) -> bool {
        self.key.is_some() || !self.secrets.is_empty()
    }

    /// Whether a workspace may use this integration.
    pub fn serves_workspace(&self, workspace_id: &str) -> bool {
        match &self.workspace_id {
            Some(ws) => ws == workspace_id,
            None => self.workspaces.get(workspace_id).is_some_and(|a| a.enabled),
        }
    }
}

/// Whether a provider was created as a legacy virtual key or through the model catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderOrigin {
    Catalog,
    VirtualKey,
    /// Auto-created by workspace provisioning.
    Provisioned,
}

/// A provider (and virtual key): a workspace's handle on an integration, addressed as `@slug`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub note: Option<String>,
    pub integration_id: String,
    pub workspace_id: String,
    pub origin: ProviderOrigin,
    pub usage_limits: Option<UsageLimit>,
    pub rate_limits: Vec<RateLimit>,
    /// Who set `usage_limits` / `rate_limits` (meaningful while there are any).
    #[serde(default)]
    pub limits_set_by: Authority,
    pub expires_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A saved routing config (`pc-…`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub workspace_id: String,
    pub config: Value,
    pub is_default: bool,
    pub status: String,
    pub version_id: String,
    pub owner_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The three kinds of API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyType {
    #[serde(rename = "organisation-service")]
    OrganisationService,
    #[serde(rename = "workspace-service")]
    WorkspaceService,
    #[serde(rename = "workspace-user")]
    WorkspaceUser,
}

impl ApiKeyType {
    /// From the `/api-keys/{type}/{sub_type}` path.
    pub fn from_path(kind: &str, sub: &str) -> Option<Self> {
        match (kind, sub) {
            ("organisation", "service") => Some(Self::OrganisationService),
            ("workspace", "service") => Some(Self::WorkspaceService),
            ("workspace", "user") => Some(Self::WorkspaceUser),
            _ => None,
        }
    }

    /// The combined string used in GET responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrganisationService => "organisation-service",
            Self::WorkspaceService => "workspace-service",
            Self::WorkspaceUser => "workspace-user",
        }
    }

    pub fn is_workspace(self) -> bool {
        !matches!(self, Self::OrganisationService)
    }
}

/// An API key. Only the hash of the secret is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub key_hash: String,
    pub masked: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: ApiKeyType,
    pub workspace_id: Option<String>,
    pub user_id: Option<String>,
    pub scopes: Vec<String>,
    /// `{config_id, metadata, allow_config_override}`, kept verbatim.
    pub defaults: Map<String, Value>,
    pub usage_limits: Option<UsageLimit>,
    pub rate_limits: Vec<RateLimit>,
    /// Who set `usage_limits`, `rate_limits` and `defaults` (meaningful while there are any).
    #[serde(default)]
    pub limits_set_by: Authority,
    pub alert_emails: Vec<String>,
    pub rotation_policy: Option<Value>,
    pub expires_at: Option<Millis>,
    pub creation_mode: String,
    /// The id of the key that created this one (the creator gets its alerts).
    pub created_by: Option<String>,
    /// The workspace keys above this one, nearest first: the workspace key that minted it, that
    /// key's minter, and so on up to the first organisation key (whose keys are the
    /// organisation's own grant), at most [`MAX_KEY_DEPTH`]. A key is bound by each of them:
    /// their budgets, rate limits, expiry, policies and scopes; one deleted stops it. Recorded
    /// at creation, so it outlives the keys it names (a deleted one leaves no record to ask).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// How many workspace keys may stand above a key (a minting chain longer than this is refused):
/// every request walks the chain, so it stays short.
pub const MAX_KEY_DEPTH: usize = 8;

impl ApiKey {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    pub fn default_config(&self) -> Option<&str> {
        self.defaults.get("config_id").and_then(Value::as_str)
    }

    pub fn allows_config_override(&self) -> bool {
        self.defaults
            .get("allow_config_override")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    pub fn default_metadata(&self) -> Metadata {
        string_map(self.defaults.get("metadata"))
    }
}

/// One condition of a policy: `key` is `workspace_id`, `api_key`, `provider`, `model` or
/// `metadata.<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    pub value: String,
}

/// A budget (and rate limits) over every request that matches its conditions, e.g.
/// `metadata.department = engineering`; with `group_by`, one budget per value of that key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsagePolicy {
    pub id: String,
    pub name: String,
    pub workspace_id: Option<String>,
    pub conditions: Vec<Condition>,
    pub group_by: Option<String>,
    pub usage_limits: Option<UsageLimit>,
    pub rate_limits: Vec<RateLimit>,
    /// Who set `usage_limits` / `rate_limits` (meaningful while there are any).
    #[serde(default)]
    pub limits_set_by: Authority,
    pub created_at: Millis,
    pub updated_at: Millis,
}
