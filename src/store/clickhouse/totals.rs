//! Totals read back for the gateway: usage per budget window, and per entity over a time range.

use clickhouse::Row;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::money::from_d12;
use super::ClickhouseStore;
use crate::store::StoreError;

/// Usage counted in one budget window (see [`ClickhouseStore::budget_usage`]).
#[derive(Row, Deserialize, Debug, Clone, PartialEq)]
pub struct BudgetUsage {
    pub budget: String,
    pub cost_usd: i128,
    pub tokens: u64,
}

impl BudgetUsage {
    /// The cost in dollars.
    pub fn cost(&self) -> Decimal {
        from_d12(self.cost_usd)
    }
}

impl ClickhouseStore {
    /// Usage counted so far in each of the given budget windows.
    pub async fn budget_usage(&self, windows: Vec<String>) -> Result<Vec<BudgetUsage>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT budget, sum(cost_usd) AS cost_usd, toUInt64(sum(tokens)) AS tokens
                 FROM budget_usage WHERE has(?, budget) GROUP BY budget",
            )
            .bind(windows)
            .fetch_all()
            .await?)
    }

    /// Requests, tokens and cost per API key, workspace, integration and provider, over the events
    /// with `from_ms <= ts < to_ms`. The range lets a caller re-read only recent days: `ts` leads
    /// the table's sort key, so a recent range reads only recent parts.
    pub async fn entity_totals(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(crate::domain::EntityKind, String, crate::domain::Totals)>, StoreError> {
        use crate::domain::EntityKind;
        #[derive(Row, Deserialize)]
        struct T {
            kind: String,
            id: String,
            requests: u64,
            tokens: u64,
            cost_usd: i128,
        }
        let rows: Vec<T> = self
            .client
            .query(
                "SELECT k.1 AS kind, k.2 AS id, toUInt64(count()) AS requests,
                   toUInt64(sum(prompt_tokens + completion_tokens)) AS tokens, sum(cost_usd) AS cost_usd
                 FROM usage_events
                 ARRAY JOIN [('api_key', api_key_id), ('workspace', workspace_id),
                   ('integration', integration_id), ('provider', provider_id)] AS k
                 WHERE ts >= ? AND ts < ? AND k.2 != ''
                 GROUP BY kind, id",
            )
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|t| {
                let kind = match t.kind.as_str() {
                    "api_key" => EntityKind::ApiKey,
                    "workspace" => EntityKind::Workspace,
                    "integration" => EntityKind::Integration,
                    "provider" => EntityKind::Provider,
                    _ => return None,
                };
                let totals = crate::domain::Totals {
                    requests: t.requests,
                    tokens: t.tokens,
                    cost_usd: from_d12(t.cost_usd),
                };
                Some((kind, t.id, totals))
            })
            .collect())
    }
}
