-- ClickHouse usage store, version 2: the audit trail, one row per config event, consumed from
-- the config topic by the aggregators (so it outlives the topic's compaction). Inserted once per
-- event_id (the aggregator asks which ids are here first); ReplacingMergeTree folds any duplicate
-- that got past it, and queries read FINAL. Runs on ClickHouse 18.16: no LowCardinality, no
-- Nullable in the key. Empty strings mean none. Never the entity itself: no secrets.
CREATE TABLE IF NOT EXISTS audit_log (
  event_id String,
  ts Int64,
  time DateTime MATERIALIZED toDateTime(intDiv(ts, 1000)),
  actor_key_id String,
  actor_name String,
  actor_created_by String,
  actor_workspace_id String,
  action String,
  resource_type String,
  resource_id String,
  resource_name String,
  workspace_id String,
  changed_fields Array(String)
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDate(toDateTime(intDiv(ts, 1000))))
ORDER BY (ts, event_id);
