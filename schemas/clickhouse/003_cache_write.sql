-- ClickHouse usage store, version 3: usage events carry cache_write_tokens (the part of
-- prompt_tokens written to the provider's cache, billed at its own rate; usage_event.v2).
-- The rollups keep their columns (cost already prices cache writes at their rate).
ALTER TABLE usage_events ADD COLUMN cache_write_tokens UInt64 DEFAULT 0;
