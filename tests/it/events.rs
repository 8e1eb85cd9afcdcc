//! A server's usage events of one trace, read straight from its store file (`usage.sqlite`).

use std::time::Duration;

use crate::harness::{eventually_some, Server};

/// The `columns` (four, SQL) of every usage event of `trace`, read straight from the store file of
/// `server`.
pub fn usage_events<A, B, C, D>(server: &Server, columns: &str, trace: &str) -> Vec<(A, B, C, D)>
where
    A: rusqlite::types::FromSql,
    B: rusqlite::types::FromSql,
    C: rusqlite::types::FromSql,
    D: rusqlite::types::FromSql,
{
    let db = rusqlite::Connection::open(server.dir.path().join("usage.sqlite")).unwrap();
    let mut stmt = db
        .prepare(&format!(
            "SELECT {columns} FROM usage_events WHERE trace_id = ?"
        ))
        .unwrap();
    stmt.query_map([trace], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits (up to [`crate::harness::PATIENCE`]) until the store has caught up and holds a usage event of `trace`;
/// returns its [`usage_events`].
pub async fn wait_for_usage_events<A, B, C, D>(
    server: &Server,
    columns: &str,
    trace: &str,
) -> Vec<(A, B, C, D)>
where
    A: rusqlite::types::FromSql,
    B: rusqlite::types::FromSql,
    C: rusqlite::types::FromSql,
    D: rusqlite::types::FromSql,
{
    let found = eventually_some(Duration::from_millis(25), || async move {
        server.store_caught_up().await;
        Some(usage_events(server, columns, trace)).filter(|e| !e.is_empty())
    })
    .await;
    found.unwrap_or_else(|| panic!("no usage event for {trace}"))
}
