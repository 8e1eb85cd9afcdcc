//! The providers Tollgate can call: each `ai_provider_id`, the wire protocol it speaks, its
//! default base URL and the credential fields an integration of it needs (with the names
//! Portkey's gateway uses, so existing setups carry over). Secret fields are sealed at rest,
//! write-only and masked on reads (see `control::integrations`).

use serde_json::{Map, Value};

/// The wire protocol of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI's HTTP API (`/chat/completions`, `/embeddings`, ...), bearer key.
    OpenAi,
    /// Azure OpenAI: OpenAI's body under `/openai/deployments/{deployment}`, `api-key` header
    /// (or an Entra ID bearer token) and an `api-version` query.
    Azure,
    /// Anthropic Messages (`/v1/messages`), `x-api-key` and `anthropic-version`.
    Anthropic,
    /// AWS Bedrock Converse / InvokeModel, SigV4-signed.
    Bedrock,
    /// Google Gemini API (`generateContent`), API key.
    Gemini,
    /// Google Vertex AI (`generateContent`, Anthropic `rawPredict`), service-account OAuth2.
    Vertex,
}

impl Protocol {
    /// The name the catalog shows.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::Azure => "azure-openai",
            Protocol::Anthropic => "anthropic-messages",
            Protocol::Bedrock => "bedrock-converse",
            Protocol::Gemini => "gemini",
            Protocol::Vertex => "vertex-ai",
        }
    }
}

/// A credential or setting an integration's `configurations` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// Sealed at rest, never returned (only masked).
    pub secret: bool,
    pub required: Need,
    pub description: &'static str,
}

/// When a field must be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Always,
    Optional,
    /// Required when `aws_auth_type` is `assumedRole`.
    ForAssumedRole,
    /// One of `custom_host` or the fields that form the URL must be given (Azure).
    UnlessCustomHost,
}

/// Whether the integration's `key` is the provider's credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    Required,
    /// Self-hosted servers often take none.
    Optional,
    /// The credential is in `configurations` (Bedrock, Vertex).
    Unused,
}

/// One provider of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ProviderKind {
    pub id: &'static str,
    pub name: &'static str,
    pub protocol: Protocol,
    /// `None` when the base URL comes from the configurations (`custom_host`, Azure's
    /// resource, Bedrock's and Vertex's region).
    pub base_url: Option<&'static str>,
    pub key: KeyUse,
    pub fields: &'static [Field],
    pub embeddings: bool,
}

const fn field(
    name: &'static str,
    secret: bool,
    required: Need,
    description: &'static str,
) -> Field {
    Field {
        name,
        secret,
        required,
        description,
    }
}

/// An OpenAI-format server the operator runs: its URL is the integration's, a key optional.
const fn self_hosted(id: &'static str, name: &'static str) -> ProviderKind {
    ProviderKind {
        id,
        name,
        protocol: Protocol::OpenAi,
        base_url: None,
        key: KeyUse::Optional,
        fields: SELF_HOSTED,
        embeddings: true,
    }
}

const fn openai_compatible(
    id: &'static str,
    name: &'static str,
    base: &'static str,
    embeddings: bool,
) -> ProviderKind {
    ProviderKind {
        id,
        name,
        protocol: Protocol::OpenAi,
        base_url: Some(base),
        key: KeyUse::Required,
        fields: &[],
        embeddings,
    }
}

const SELF_HOSTED: &[Field] = &[field(
    "custom_host",
    false,
    Need::Always,
    "the server's OpenAI-compatible base URL, e.g. http://gpu-1:8000/v1",
)];

const AZURE: &[Field] = &[
    field("resource_name", false, Need::UnlessCustomHost, "the Azure OpenAI resource (https://{resource_name}.openai.azure.com)"),
    field("deployment_id", false, Need::UnlessCustomHost, "the default deployment (deployment_name is accepted too)"),
    field("api_version", false, Need::Optional, "the api-version query (default 2024-10-21)"),
    field("deployments", false, Need::Optional, "a model -> deployment map: [{\"model\": \"gpt-4o\", \"deployment_id\": \"prod-4o\"}] or {\"gpt-4o\": \"prod-4o\"}"),
    field("azure_auth_mode", false, Need::Optional, "apiKey (the key in api-key, default) or entra (the key is an Entra ID bearer token)"),
];

const BEDROCK: &[Field] = &[
    field(
        "aws_auth_type",
        false,
        Need::Optional,
        "accessKey (default) or assumedRole",
    ),
    field(
        "aws_access_key_id",
        true,
        Need::Always,
        "the access key id (for assumedRole: of the base credentials)",
    ),
    field(
        "aws_secret_access_key",
        true,
        Need::Always,
        "the secret access key",
    ),
    field(
        "aws_session_token",
        true,
        Need::Optional,
        "a session token for temporary credentials",
    ),
    field(
        "aws_region",
        false,
        Need::Always,
        "the region, e.g. us-east-1",
    ),
    field(
        "aws_role_arn",
        false,
        Need::ForAssumedRole,
        "the role to assume (STS AssumeRole)",
    ),
    field(
        "aws_external_id",
        false,
        Need::Optional,
        "the external id the role's trust policy asks for",
    ),
    field(
        "aws_sts_endpoint",
        false,
        Need::Optional,
        "the STS endpoint (default https://sts.{region}.amazonaws.com)",
    ),
];

const VERTEX: &[Field] = &[
    field(
        "vertex_project_id",
        false,
        Need::Always,
        "the Google Cloud project",
    ),
    field(
        "vertex_region",
        false,
        Need::Always,
        "the region, e.g. us-central1 (or global)",
    ),
    field(
        "vertex_service_account_json",
        true,
        Need::Always,
        "the service account's JSON key (client_email, private_key, token_uri)",
    ),
];

/// Every provider Tollgate can call.
pub const CATALOG: &[ProviderKind] = &[
    openai_compatible("openai", "OpenAI", "https://api.openai.com/v1", true),
    ProviderKind {
        id: "azure-openai",
        name: "Azure OpenAI",
        protocol: Protocol::Azure,
        base_url: None,
        key: KeyUse::Required,
        fields: AZURE,
        embeddings: true,
    },
    ProviderKind {
        id: "anthropic",
        name: "Anthropic",
        protocol: Protocol::Anthropic,
        base_url: Some("https://api.anthropic.com/v1"),
        key: KeyUse::Required,
        fields: &[],
        embeddings: false,
    },
    ProviderKind {
        id: "bedrock",
        name: "AWS Bedrock",
        protocol: Protocol::Bedrock,
        base_url: None,
        key: KeyUse::Unused,
        fields: BEDROCK,
        embeddings: true,
    },
    ProviderKind {
        id: "google",
        name: "Google Gemini",
        protocol: Protocol::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com/v1beta"),
        key: KeyUse::Required,
        fields: &[],
        embeddings: true,
    },
    ProviderKind {
        id: "vertex-ai",
        name: "Google Vertex AI",
        protocol: Protocol::Vertex,
        base_url: None,
        key: KeyUse::Unused,
        fields: VERTEX,
        embeddings: true,
    },
    openai_compatible("groq", "Groq", "https://api.groq.com/openai/v1", false),
    openai_compatible(
        "together-ai",
        "Together AI",
        "https://api.together.xyz/v1",
        true,
    ),
    openai_compatible(
        "mistral-ai",
        "Mistral AI",
        "https://api.mistral.ai/v1",
        true,
    ),
    openai_compatible("deepseek", "DeepSeek", "https://api.deepseek.com/v1", false),
    openai_compatible(
        "fireworks-ai",
        "Fireworks AI",
        "https://api.fireworks.ai/inference/v1",
        true,
    ),
    openai_compatible("x-ai", "xAI", "https://api.x.ai/v1", false),
    openai_compatible(
        "perplexity-ai",
        "Perplexity",
        "https://api.perplexity.ai",
        false,
    ),
    openai_compatible(
        "openrouter",
        "OpenRouter",
        "https://openrouter.ai/api/v1",
        true,
    ),
    openai_compatible("cerebras", "Cerebras", "https://api.cerebras.ai/v1", false),
    openai_compatible(
        "deepinfra",
        "DeepInfra",
        "https://api.deepinfra.com/v1/openai",
        true,
    ),
    self_hosted("ollama", "Ollama (self-hosted)"),
    self_hosted("vllm", "vLLM (self-hosted)"),
    self_hosted("openai-compatible", "Any OpenAI-compatible server"),
];

/// The catalog entry of `ai_provider_id`.
pub fn kind(ai_provider_id: &str) -> Option<&'static ProviderKind> {
    CATALOG.iter().find(|k| k.id == ai_provider_id)
}

/// Whether `name` is a secret field of any provider (sealed, never shown).
pub fn is_secret_field(name: &str) -> bool {
    CATALOG
        .iter()
        .flat_map(|k| k.fields)
        .any(|f| f.secret && f.name == name)
}

impl ProviderKind {
    /// The fields `configurations` (with the sealed secrets' names in `secrets`) lacks, and
    /// whether the key is missing; empty when the integration can be called.
    pub fn missing(
        &self,
        c: &Map<String, Value>,
        secrets: &[&str],
        has_key: bool,
    ) -> Vec<&'static str> {
        let given =
            |n: &str| secrets.contains(&n) || c.get(n).is_some_and(|v| !v.is_null() && v != "");
        let assumed = c.get("aws_auth_type").and_then(Value::as_str) == Some("assumedRole");
        let mut out: Vec<&'static str> = self
            .fields
            .iter()
            .filter(|f| match f.required {
                Need::Always => !given(f.name),
                Need::ForAssumedRole => assumed && !given(f.name),
                Need::UnlessCustomHost => !given("custom_host") && !self.url_alternative_given(c),
                Need::Optional => false,
            })
            .map(|f| f.name)
            .collect();
        out.dedup();
        if self.key == KeyUse::Required && !has_key {
            out.insert(0, "key");
        }
        out
    }

    /// Azure's URL: `resource_name` and a deployment (`deployment_id`, `deployment_name`, or
    /// the `deployments` map).
    fn url_alternative_given(&self, c: &Map<String, Value>) -> bool {
        let s = |n: &str| {
            c.get(n)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        s("resource_name")
            && (s("deployment_id") || s("deployment_name") || c.contains_key("deployments"))
    }

    /// The catalog entry as `GET /v1/ai-providers` shows it.
    pub fn view(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "secret": f.secret, "description": f.description,
                    "required": match f.required {
                        Need::Always => "always",
                        Need::Optional => "optional",
                        Need::ForAssumedRole => "when aws_auth_type is assumedRole",
                        Need::UnlessCustomHost => "unless custom_host is set",
                    },
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id, "object": "ai-provider", "name": self.name,
            "protocol": self.protocol.name(), "default_base_url": self.base_url,
            "key": match self.key { KeyUse::Required => "required", KeyUse::Optional => "optional", KeyUse::Unused => "unused" },
            "configurations": fields, "embeddings": self.embeddings,
            "custom_host": "optional: replaces the base URL (a private endpoint, a proxy, a test mock)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_unique_and_every_secret_field_is_known() {
        let mut ids: Vec<_> = CATALOG.iter().map(|k| k.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CATALOG.len());
        assert!(is_secret_field("aws_secret_access_key"));
        assert!(is_secret_field("vertex_service_account_json"));
        assert!(!is_secret_field("aws_region"));
    }

    #[test]
    fn missing_names_what_each_provider_needs() {
        let m = |id: &str, c: Value, secrets: &[&str], key: bool| {
            kind(id)
                .unwrap()
                .missing(c.as_object().unwrap(), secrets, key)
        };
        assert_eq!(m("anthropic", json!({}), &[], false), ["key"]);
        assert!(m("anthropic", json!({}), &[], true).is_empty());
        assert_eq!(
            m("bedrock", json!({}), &[], false),
            ["aws_access_key_id", "aws_secret_access_key", "aws_region"]
        );
        let role = json!({"aws_auth_type": "assumedRole", "aws_region": "us-east-1"});
        assert_eq!(
            m(
                "bedrock",
                role,
                &["aws_access_key_id", "aws_secret_access_key"],
                false
            ),
            ["aws_role_arn"]
        );
        assert_eq!(
            m("azure-openai", json!({"resource_name": "r"}), &[], true),
            ["resource_name", "deployment_id"]
        );
        assert!(m(
            "azure-openai",
            json!({"resource_name": "r", "deployment_name": "d"}),
            &[],
            true
        )
        .is_empty());
        assert!(m(
            "azure-openai",
            json!({"custom_host": "http://x"}),
            &[],
            true
        )
        .is_empty());
        assert_eq!(m("vllm", json!({}), &[], false), ["custom_host"]);
        assert_eq!(
            m(
                "vertex-ai",
                json!({"vertex_region": "us-central1"}),
                &[],
                false
            ),
            ["vertex_project_id", "vertex_service_account_json"]
        );
    }
}
