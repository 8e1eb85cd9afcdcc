#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: failing loudly is the point"
)]
//! Integration tests: the real server (in-process or as a process), the real Python SDKs as
//! clients, a real usage store and log on disk; only the LLM provider is a mock.

mod alerts;
mod binary;
mod console;
mod distributed;
mod events;
mod governance;
mod harness;
mod http;
mod logs;
mod mock;
mod mock_anthropic;
mod mock_bedrock;
mod mock_gemini;
mod process;
mod providers;
mod sdk;
mod security;
mod stores;
mod stream;
