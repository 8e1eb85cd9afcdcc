//! The ClickHouse schema: the versioned DDL files of `schemas/clickhouse/`, applied in order and
//! recorded in `schema_migrations`.

use super::ClickhouseStore;
use crate::domain::Millis;
use crate::settings::ClickhouseSettings;
use crate::store::StoreError;

/// The versioned DDL files, applied in order by `migrate`.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../../schemas/clickhouse/001_init.sql")),
    (2, include_str!("../../../schemas/clickhouse/002_audit.sql")),
    (
        3,
        include_str!("../../../schemas/clickhouse/003_cache_write.sql"),
    ),
];

impl ClickhouseStore {
    /// Creates the database and applies the DDL versions not applied yet, in order. Idempotent:
    /// every statement is `IF NOT EXISTS`, and applied versions are recorded.
    pub async fn migrate(s: &ClickhouseSettings) -> Result<Vec<u32>, StoreError> {
        Self::server(s)?
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", s.database))
            .execute()
            .await?;
        let c = Self::new(s)?.client;
        c.query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at Int64)
             ENGINE = MergeTree() ORDER BY version",
        )
        .execute()
        .await?;
        let done: Vec<u32> = c
            .query("SELECT version FROM schema_migrations")
            .fetch_all()
            .await?;
        let mut applied = Vec::new();
        for (version, ddl) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            for statement in statements(ddl) {
                c.query(&statement).execute().await?;
            }
            c.query("INSERT INTO schema_migrations VALUES (?, ?)")
                .bind(version)
                .bind(Millis::now().0)
                .execute()
                .await?;
            applied.push(*version);
        }
        Ok(applied)
    }
}

/// The statements of a DDL file: comments dropped, split on `;`.
fn statements(ddl: &str) -> Vec<String> {
    let text: String = ddl
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_statements_split_without_comments() {
        let s = statements("-- a\nCREATE TABLE a (x Int8); -- b\n\nCREATE TABLE b (y Int8);\n");
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x Int8)", "CREATE TABLE b (y Int8)"]
        );
        assert!(statements(MIGRATIONS[0].1).len() >= 7);
    }
}
