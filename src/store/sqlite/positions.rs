//! Consumers' positions in the logs (`consumer_offsets`): written in the same transaction as the
//! rows they cover, so a restart resumes exactly after what was stored; read and rewound without
//! a running store by `tollgate log`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::StoreError;

/// Records, inside the transaction that stored a batch, that `consumer` has read its log up to
/// `next` (so the rows and the position commit together).
pub(super) fn set_offset(
    tx: &rusqlite::Transaction<'_>,
    consumer: &str,
    next: u64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO consumer_offsets VALUES (?1, ?2)
         ON CONFLICT (consumer) DO UPDATE SET next_offset = excluded.next_offset",
        params![consumer, next as i64],
    )
}

/// Where `consumer` has read up to (0 when never).
pub(super) fn offset(conn: &mut Connection, consumer: &str) -> Result<u64, StoreError> {
    let off: Option<i64> = conn
        .query_row(
            "SELECT next_offset FROM consumer_offsets WHERE consumer = ?",
            [consumer],
            |r| r.get(0),
        )
        .optional()?;
    Ok(off.unwrap_or(0) as u64)
}

/// The consumers' positions in a store file, read without starting a store (for `tollgate log`).
pub fn read_offsets(path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT consumer, next_offset FROM consumer_offsets")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(c, o)| (c, u64::try_from(o).unwrap_or(0)))
        .collect())
}

/// Moves a consumer's position back to `to` (events after it are ingested again; the store
/// drops the ones it has by `event_id`).
pub fn rewind_offset(path: &Path, consumer: &str, to: u64) -> Result<(), StoreError> {
    let conn = Connection::open(path)?;
    conn.execute(
        "UPDATE consumer_offsets SET next_offset = ?2 WHERE consumer = ?1 AND next_offset > ?2",
        params![consumer, to as i64],
    )?;
    Ok(())
}
