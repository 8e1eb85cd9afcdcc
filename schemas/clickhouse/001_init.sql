-- ClickHouse usage store, version 1. Applied by `tollgate migrate` (idempotent) into the
-- configured database. Runs on ClickHouse 18.16 (Debian) and current releases: no
-- LowCardinality, no TTL/CODEC, no DateTime64; times are ms since epoch (Int64) with a
-- materialized DateTime for Grafana; money is Decimal(38,12), exact.

-- Raw usage events. The aggregator inserts each event_id once (it asks which ids of a batch are
-- already here before inserting, and a batch is one atomic INSERT); ReplacingMergeTree on
-- (ts, event_id) would fold any duplicate that got past it anyway.
CREATE TABLE IF NOT EXISTS usage_events (
  event_id String,
  ts Int64,
  time DateTime MATERIALIZED toDateTime(intDiv(ts, 1000)),
  date Date MATERIALIZED toDate(toDateTime(intDiv(ts, 1000))),
  organisation_id String,
  workspace_id String,
  api_key_id String,
  provider_id String,
  provider_slug String,
  integration_id String,
  ai_provider String,
  department Nullable(String),
  user Nullable(String),
  metadata_keys Array(String),
  metadata_values Array(String),
  model String,
  endpoint String,
  status_code UInt16,
  prompt_tokens UInt64,
  completion_tokens UInt64,
  cached_tokens UInt64,
  cost_usd Decimal(38, 12),
  priced UInt8,
  usage_source String,
  latency_ms UInt32,
  upstream_latency_ms UInt32,
  streamed UInt8,
  attempt_index UInt32,
  trace_id String,
  config_id Nullable(String),
  -- The budget windows the event counted toward, as '<budget key>@<window start ms>'.
  budgets Array(String),
  kafka_partition Int32,
  kafka_offset Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(date)
ORDER BY (ts, event_id);

-- Rollups per minute and per day by key, workspace, department, integration, provider and model,
-- summed by the engine from each inserted block of new events.
CREATE TABLE IF NOT EXISTS usage_rollup (
  grain String,
  bucket Int64,
  dimension String,
  value String,
  requests UInt64,
  errors UInt64,
  prompt_tokens UInt64,
  completion_tokens UInt64,
  cached_tokens UInt64,
  cost_usd Decimal(38, 12),
  latency_ms_sum UInt64
) ENGINE = SummingMergeTree((requests, errors, prompt_tokens, completion_tokens, cached_tokens, cost_usd, latency_ms_sum))
PARTITION BY (grain, toYYYYMM(toDate(toDateTime(intDiv(bucket, 1000)))))
ORDER BY (grain, dimension, value, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_rollup_minute_mv TO usage_rollup AS
SELECT
  'minute' AS grain,
  intDiv(ts, 60000) * 60000 AS bucket,
  d.1 AS dimension,
  d.2 AS value,
  toUInt64(1) AS requests,
  toUInt64(status_code >= 400) AS errors,
  prompt_tokens,
  completion_tokens,
  cached_tokens,
  cost_usd,
  toUInt64(latency_ms) AS latency_ms_sum
FROM usage_events
ARRAY JOIN
  arrayFilter(x -> x.2 != '', [
    ('api_key', api_key_id), ('workspace', workspace_id), ('department', ifNull(department, '')),
    ('integration', integration_id), ('provider', provider_slug), ('model', model)]) AS d;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_rollup_day_mv TO usage_rollup AS
SELECT
  'day' AS grain,
  intDiv(ts, 86400000) * 86400000 AS bucket,
  d.1 AS dimension,
  d.2 AS value,
  toUInt64(1) AS requests,
  toUInt64(status_code >= 400) AS errors,
  prompt_tokens,
  completion_tokens,
  cached_tokens,
  cost_usd,
  toUInt64(latency_ms) AS latency_ms_sum
FROM usage_events
ARRAY JOIN
  arrayFilter(x -> x.2 != '', [
    ('api_key', api_key_id), ('workspace', workspace_id), ('department', ifNull(department, '')),
    ('integration', integration_id), ('provider', provider_slug), ('model', model)]) AS d;

-- Usage per budget window, for the limit-state events the aggregators publish.
CREATE TABLE IF NOT EXISTS budget_usage (
  budget String,
  cost_usd Decimal(38, 12),
  tokens UInt64,
  requests UInt64
) ENGINE = SummingMergeTree((cost_usd, tokens, requests))
ORDER BY budget;

CREATE MATERIALIZED VIEW IF NOT EXISTS budget_usage_mv TO budget_usage AS
SELECT b AS budget, cost_usd, prompt_tokens + completion_tokens AS tokens, toUInt64(1) AS requests
FROM usage_events
ARRAY JOIN budgets AS b;

-- Limit state as the aggregators publish it: the usage of each budget window after every batch
-- that touched it (kind 'usage'), and threshold crossings and exhaustions (for dashboards).
CREATE TABLE IF NOT EXISTS limit_events (
  event_id String,
  ts Int64,
  time DateTime MATERIALIZED toDateTime(intDiv(ts, 1000)),
  kind String,
  budget String,
  owner_kind String,
  workspace_id String,
  window_start Int64,
  budget_type String,
  credit_limit Decimal(38, 12),
  used Decimal(38, 12)
) ENGINE = ReplacingMergeTree()
ORDER BY (budget, window_start, ts, event_id);

-- Every notification attempt made for a limit event, one row per event and channel.
CREATE TABLE IF NOT EXISTS notifications (
  limit_event_id String,
  channel String,
  kind String,
  budget String,
  recipients String,
  status String,
  attempts UInt32,
  error Nullable(String),
  created_at Int64
) ENGINE = ReplacingMergeTree()
ORDER BY (limit_event_id, channel);

-- Where each consumer that keeps its position here has got to (the notifier).
CREATE TABLE IF NOT EXISTS consumer_offsets (
  consumer String,
  next_offset UInt64,
  updated_at UInt64
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY consumer;
