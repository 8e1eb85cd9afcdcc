-- Embedded usage store (SQLite), version 1. The same tables as the ClickHouse schema:
-- raw events, idempotent on event_id, and rollups per minute and per day by dimension.
-- Money is exact: cost_pico is US dollars x 10^12 (the event's decimal(38,12)) as an integer.
-- An integer is an i64, $9.2 M: a rollup cell stops there; sums over events add
-- cost_pico / 1000000 and cost_pico % 1000000 apart (SQLite's sum fails past an i64).
CREATE TABLE IF NOT EXISTS usage_events (
  event_id TEXT PRIMARY KEY,
  ts INTEGER NOT NULL,                 -- ms since epoch, UTC
  organisation_id TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  api_key_id TEXT NOT NULL,
  provider_id TEXT NOT NULL,
  provider_slug TEXT NOT NULL,
  integration_id TEXT NOT NULL,
  ai_provider TEXT NOT NULL,
  department TEXT,
  user TEXT,
  metadata TEXT NOT NULL,              -- JSON object of strings
  model TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  status_code INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_tokens INTEGER NOT NULL,
  cost_pico INTEGER NOT NULL,
  priced INTEGER NOT NULL,
  usage_source TEXT NOT NULL,
  latency_ms INTEGER NOT NULL,
  upstream_latency_ms INTEGER NOT NULL,
  streamed INTEGER NOT NULL,
  attempt_index INTEGER NOT NULL,
  trace_id TEXT NOT NULL,
  config_id TEXT
) WITHOUT ROWID;                        -- event ids are time-ordered (UUIDv7): rows append at the end
CREATE INDEX IF NOT EXISTS usage_events_ts ON usage_events (ts);

CREATE TABLE IF NOT EXISTS usage_rollup (
  grain TEXT NOT NULL,                 -- 'minute' | 'day'
  bucket INTEGER NOT NULL,             -- bucket start, ms since epoch, UTC
  dimension TEXT NOT NULL,             -- api_key | workspace | department | integration | provider | model
  value TEXT NOT NULL,
  requests INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cached_tokens INTEGER NOT NULL,
  cost_pico INTEGER NOT NULL,
  latency_ms_sum INTEGER NOT NULL,
  PRIMARY KEY (grain, bucket, dimension, value)
) WITHOUT ROWID;

-- Where each consumer of the log has got to; written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS consumer_offsets (
  consumer TEXT PRIMARY KEY,
  next_offset INTEGER NOT NULL
);

-- Every notification attempt made for a limit event, one row per event and channel.
CREATE TABLE IF NOT EXISTS notifications (
  limit_event_id TEXT NOT NULL,
  channel TEXT NOT NULL,               -- email | webhook
  kind TEXT NOT NULL,                  -- threshold_crossed | exhausted | reset
  budget TEXT NOT NULL,
  recipients TEXT NOT NULL,            -- comma-separated addresses, or the webhook URL
  status TEXT NOT NULL,                -- delivered | failed
  attempts INTEGER NOT NULL,
  error TEXT,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (limit_event_id, channel)
);
