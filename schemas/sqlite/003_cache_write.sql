-- Embedded usage store, version 3: usage events carry cache_write_tokens (the part of
-- prompt_tokens written to the provider's cache, billed at its own rate; usage_event.v2).
-- Applied once: the store adds the column when usage_events lacks it.
ALTER TABLE usage_events ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
