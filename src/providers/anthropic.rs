//! Filled in by the anthropic adapter.
