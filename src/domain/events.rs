//! The events everything is a fold of. Their wire form (Avro) lives in `crate::codec`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::entities::*;
use super::time::Millis;

/// The kinds of control-plane entity; also the key prefix on the compacted config topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Organisation,
    Workspace,
    Integration,
    Provider,
    Config,
    ApiKey,
    Policy,
}

impl EntityKind {
    pub const ALL: [EntityKind; 7] = [
        EntityKind::Organisation,
        EntityKind::Workspace,
        EntityKind::Integration,
        EntityKind::Provider,
        EntityKind::Config,
        EntityKind::ApiKey,
        EntityKind::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Organisation => "organisation",
            EntityKind::Workspace => "workspace",
            EntityKind::Integration => "integration",
            EntityKind::Provider => "provider",
            EntityKind::Config => "config",
            EntityKind::ApiKey => "api_key",
            EntityKind::Policy => "policy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A whole entity, as carried by an upsert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Entity {
    Organisation(Organisation),
    Workspace(Workspace),
    Integration(Integration),
    Provider(Provider),
    Config(RouteConfig),
    ApiKey(ApiKey),
    Policy(UsagePolicy),
}

impl Entity {
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::Organisation(_) => EntityKind::Organisation,
            Entity::Workspace(_) => EntityKind::Workspace,
            Entity::Integration(_) => EntityKind::Integration,
            Entity::Provider(_) => EntityKind::Provider,
            Entity::Config(_) => EntityKind::Config,
            Entity::ApiKey(_) => EntityKind::ApiKey,
            Entity::Policy(_) => EntityKind::Policy,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Entity::Organisation(e) => &e.id,
            Entity::Workspace(e) => &e.id,
            Entity::Integration(e) => &e.id,
            Entity::Provider(e) => &e.id,
            Entity::Config(e) => &e.id,
            Entity::ApiKey(e) => &e.id,
            Entity::Policy(e) => &e.id,
        }
    }

    /// The entity's display name.
    pub fn name(&self) -> &str {
        match self {
            Entity::Organisation(e) => &e.name,
            Entity::Workspace(e) => &e.name,
            Entity::Integration(e) => &e.name,
            Entity::Provider(e) => &e.name,
            Entity::Config(e) => &e.name,
            Entity::ApiKey(e) => &e.name,
            Entity::Policy(e) => &e.name,
        }
    }

    /// The workspace the entity belongs to (a workspace belongs to itself; organisation-wide
    /// objects to none).
    pub fn workspace_id(&self) -> Option<String> {
        match self {
            Entity::Organisation(_) => None,
            Entity::Workspace(e) => Some(e.id.clone()),
            Entity::Integration(e) => e.workspace_id.clone(),
            Entity::Provider(e) => Some(e.workspace_id.clone()),
            Entity::Config(e) => Some(e.workspace_id.clone()),
            Entity::ApiKey(e) => e.workspace_id.clone(),
            Entity::Policy(e) => e.workspace_id.clone(),
        }
    }

    /// The entity as JSON (its shape on the config topic).
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Entity::Organisation(x) => serde_json::to_value(x),
            Entity::Workspace(x) => serde_json::to_value(x),
            Entity::Integration(x) => serde_json::to_value(x),
            Entity::Provider(x) => serde_json::to_value(x),
            Entity::Config(x) => serde_json::to_value(x),
            Entity::ApiKey(x) => serde_json::to_value(x),
            Entity::Policy(x) => serde_json::to_value(x),
        }
    }
}

/// What a config event does.
#[expect(
    clippy::large_enum_variant,
    reason = "config events are rare admin changes: an inline entity's size does not matter, \
              and boxing it would only add noise at every construction site"
)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Create or replace the entity with this snapshot.
    Upsert(Entity),
    /// Remove the entity.
    Delete { kind: EntityKind, id: String },
}

/// An admin change: one entity's new state (or its removal), and who made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigEvent {
    pub event_id: String,
    pub at: Millis,
    pub change: Change,
    /// Who made the change and what it did (the audit trail).
    #[serde(default)]
    pub audit: Box<super::audit::Audit>,
}

impl Change {
    /// The kind and id of the entity changed.
    pub fn target(&self) -> (EntityKind, &str) {
        match self {
            Change::Upsert(e) => (e.kind(), e.id()),
            Change::Delete { kind, id } => (*kind, id.as_str()),
        }
    }
}

impl ConfigEvent {
    /// The entity key: compaction keeps the latest event per key.
    pub fn key(&self) -> String {
        let (kind, id) = self.change.target();
        format!("{}:{}", kind.as_str(), id)
    }
}

/// Whether token counts came from the provider or were estimated by us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    Provider,
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// The data-plane endpoint a usage event was made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    #[serde(rename = "chat.completions")]
    ChatCompletions,
    #[serde(rename = "completions")]
    Completions,
    #[serde(rename = "embeddings")]
    Embeddings,
    /// Anthropic's `/v1/messages`.
    #[serde(rename = "messages")]
    Messages,
    /// OpenAI's Responses API, `/v1/responses`.
    #[serde(rename = "responses")]
    Responses,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::ChatCompletions,
            Self::Completions,
            Self::Embeddings,
            Self::Messages,
            Self::Responses,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

/// One upstream attempt, metered. Made once at admission (the `event_id`) and completed after the
/// attempt; delivery is at-least-once and every consumer dedupes on `event_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub event_id: String,
    pub at: Millis,
    pub organisation_id: String,
    pub workspace_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub provider_slug: String,
    pub integration_id: String,
    /// `openai`, `groq`, ...
    pub ai_provider: String,
    pub department: Option<String>,
    pub user: Option<String>,
    pub metadata: Metadata,
    pub model: String,
    pub endpoint: Endpoint,
    pub status_code: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Exact cost in US dollars.
    pub cost_usd: Decimal,
    /// False when the model had no price (cost is then 0).
    pub priced: bool,
    pub usage_source: UsageSource,
    /// From admission to the end of the attempt.
    pub latency_ms: u32,
    /// Time spent waiting on the provider.
    pub upstream_latency_ms: u32,
    pub streamed: bool,
    pub attempt_index: u32,
    pub trace_id: String,
    pub config_id: Option<String>,
    /// The part of `prompt_tokens` written to the provider's cache (billed at its own rate).
    #[serde(default)]
    pub cache_write_tokens: u64,
}

impl UsageEvent {
    /// The request path the event was metered on (for budgets and policies).
    pub fn path(&self) -> super::budget::RequestPath<'_> {
        super::budget::RequestPath {
            api_key_id: &self.api_key_id,
            workspace_id: &self.workspace_id,
            provider_id: &self.provider_id,
            provider_slug: &self.provider_slug,
            integration_id: &self.integration_id,
            model: &self.model,
            metadata: Some(&self.metadata),
        }
    }

    /// Saturating: recorded counts are bounded, but older events in a log may not be.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    pub fn is_error(&self) -> bool {
        self.status_code >= 400
    }
}

/// What happened to a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    ThresholdCrossed,
    Exhausted,
    Reset,
    /// The usage counted so far in the window (limit state, published by the aggregators in
    /// distributed mode after each batch; gateways fold it to enforce globally). Never notified.
    Usage,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::ThresholdCrossed,
        LimitKind::Exhausted,
        LimitKind::Reset,
        LimitKind::Usage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::ThresholdCrossed => "threshold_crossed",
            LimitKind::Exhausted => "exhausted",
            LimitKind::Reset => "reset",
            LimitKind::Usage => "usage",
        }
    }
}

/// A budget crossed its alert threshold, was exhausted, or started a new period: emitted once
/// per budget, window and kind (the state remembers which were emitted by folding these).
#[derive(Clone, Debug, PartialEq)]
pub struct LimitEvent {
    pub event_id: String,
    pub at: Millis,
    pub kind: LimitKind,
    /// The budget's key (`BudgetRef::key`).
    pub budget: String,
    pub owner_kind: String,
    pub workspace_id: Option<String>,
    pub api_key_id: Option<String>,
    pub window_start: Millis,
    pub budget_type: super::limits::BudgetKind,
    pub credit_limit: Decimal,
    pub alert_threshold: Option<Decimal>,
    pub used: Decimal,
    pub next_reset: Option<Millis>,
}

/// Any event on the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Config(ConfigEvent),
    Usage(UsageEvent),
    Limit(LimitEvent),
}
