-- Embedded usage store, version 2: the audit trail, one row per config event (idempotent on
-- event_id), fed from the config log by the store sink. Never the entity itself: no secrets.
CREATE TABLE IF NOT EXISTS audit_log (
  event_id TEXT PRIMARY KEY,
  ts INTEGER NOT NULL,                 -- ms since epoch, UTC
  actor_key_id TEXT,                   -- NULL: the system (bootstrap) or an older event
  actor_name TEXT,
  actor_created_by TEXT,
  actor_workspace_id TEXT,
  action TEXT NOT NULL,                -- created | updated | deleted
  resource_type TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  resource_name TEXT,
  workspace_id TEXT,
  changed_fields TEXT NOT NULL         -- JSON array of top-level field names
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts);
