//! OpenAI's Responses API passed through (`/v1/responses`), plain and streaming, metered from its
//! own `usage` (input, cached input, output with reasoning); refused on providers without it.

use serde_json::json;

use super::{metered, native_tenant, post, priced};
use crate::{harness, mock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_pass_through_and_are_metered_from_their_usage() {
    let mock = mock::start().await;
    let server = harness::start().await;
    let key = native_tenant(
        &server,
        "oai",
        "openai",
        json!({"key": "sk-openai-0123456789", "configurations": {"custom_host": mock.url}}),
    )
    .await;
    let (input, cached, output, _) = mock::RESPONSES_USAGE;
    let billed = tollgate::domain::pricing::TokenUsage {
        prompt: input,
        completion: output,
        cached,
        cache_write: 0,
    };
    let body = json!({"model": "@oai/gpt-4o", "input": "hello", "instructions": "be brief"});
    let (status, _, text) = post(&server, "/responses", &key, "resp-plain", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["object"], "response",
        "passed through as the provider sent it"
    );
    let stream = json!({"model": "@oai/gpt-4o", "input": "hello", "stream": true});
    let (status, _, text) = post(&server, "/responses", &key, "resp-stream", &stream).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("event: response.completed"), "{text}");
    // No `stream_options` was added for the Responses API (the mock refuses it, as OpenAI does).
    assert!(mock
        .seen
        .bodies
        .lock()
        .iter()
        .all(|b| b.get("stream_options").is_none()));
    for trace in ["resp-plain", "resp-stream"] {
        let m = metered(&server, trace, 1).await;
        assert_eq!(
            (m[0].usage, m[0].source.as_str(), m[0].endpoint.as_str()),
            (billed, "provider", "responses"),
            "{trace}"
        );
        assert_eq!(m[0].cost, priced("openai", "gpt-4o", billed), "{trace}");
    }
    // A provider without the Responses API: a 400 naming it, nothing sent.
    let ant = native_tenant(
        &server,
        "ant",
        "anthropic",
        json!({"key": "sk-ant-0123456789", "configurations": {"custom_host": mock.url}}),
    )
    .await;
    let sent = mock.seen.bodies.lock().len();
    let (status, _, text) = post(
        &server,
        "/responses",
        &ant,
        "resp-ant",
        &json!({"model": "@ant/claude-3-7-sonnet-20250219", "input": "hi"}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("/v1/responses"), "{text}");
    assert_eq!(mock.seen.bodies.lock().len(), sent);
}
