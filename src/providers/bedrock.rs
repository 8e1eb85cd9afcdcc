//! Filled in by the bedrock adapter.
