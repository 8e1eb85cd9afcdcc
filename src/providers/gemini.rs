//! Filled in by the gemini adapter.
