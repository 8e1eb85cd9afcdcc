//! Streaming: the client that leaves mid-stream is still billed the provider's real usage, and a
//! provider that never reports usage yields an event marked `estimated`.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::harness;
use crate::mock;

/// The columns [`wait_for_event`] reads.
const COLUMNS: &str = "usage_source, prompt_tokens, completion_tokens, streamed";

/// Waits for the raw event columns of one trace, read straight from the store file.
async fn wait_for_event(server: &harness::Server, trace: &str) -> Vec<(String, i64, i64, i64)> {
    crate::events::wait_for_usage_events(server, COLUMNS, trace).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_still_bills_real_usage() {
    let (mock, server, _, key) = harness::with_tenant("s1").await;
    harness::leave_stream_after_first_chunk(&server.url, &key, "@s1/slow-stream", "leaver").await;
    let events = wait_for_event(&server, "leaver").await;
    assert_eq!(
        events,
        vec![("provider".to_owned(), 12, mock::COMPLETION_TOKENS as i64, 1)]
    );
    assert_eq!(
        mock.seen.streams_finished.load(Ordering::SeqCst),
        1,
        "the gateway read the provider's stream to the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_provider_usage_is_estimated_and_final_frame_follows_the_event() {
    let (_mock, server, _, key) = harness::with_tenant("s2").await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .header("x-portkey-api-key", key.as_str())
        .header("x-portkey-trace-id", "silent")
        .json(&json!({"model": "@s2/no-usage", "messages": [{"role": "user", "content": "12345678"}], "stream": true,
                      "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // By the time the client has [DONE], the event is in the log (and so in the state).
    let key_id = server.key_named("svc").id.clone();
    assert_eq!(
        server
            .state()
            .usage_of(tollgate::domain::EntityKind::ApiKey, &key_id)
            .requests,
        1
    );
    let events = wait_for_event(&server, "silent").await;
    // Prompt: 8 characters → 2 tokens + 4 for the message; completion: "w0 w1 w2 " → 9 chars → 3 tokens.
    assert_eq!(events, vec![("estimated".to_owned(), 6, 3, 1)]);
}
