//! Anthropic as an upstream: OpenAI callers translated (plain, streaming, tools, errors), and
//! the `/v1/messages` front door passed through.

use serde_json::json;

use super::{
    anthropic_fields, chat_stream, cut_chat_stream, cut_messages_stream, message_stream, metered,
    native_tenant, post, priced, sse_events, tool_args,
};
use crate::{harness, mock_anthropic};

const MODEL: &str = "claude-3-7-sonnet-20250219";

async fn setup(slug: &str) -> (mock_anthropic::MockAnthropic, harness::Server, String) {
    let mock = mock_anthropic::start().await;
    let server = harness::start().await;
    let key = native_tenant(&server, slug, "anthropic", anthropic_fields(&mock.url)).await;
    (mock, server, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_to_anthropic_is_translated_and_metered_with_cache_rates() {
    let (mock, server, key) = setup("ant").await;
    let body = json!({"model": format!("@ant/{MODEL}"), "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/chat/completions", &key, "ant-plain", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], mock_anthropic::TEXT);
    let sent = mock.seen.bodies.lock()[0].clone();
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "be brief"}])
    );
    assert_eq!(sent["model"], MODEL);
    assert!(
        sent["max_tokens"].is_u64(),
        "max_tokens is filled in: {sent}"
    );
    let headers = mock.seen.headers.lock()[0].clone();
    assert_eq!(headers["x-api-key"], "sk-ant-test-0123456789");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    let billed = mock_anthropic::billed();
    let m = metered(&server, "ant-plain", 1).await;
    assert_eq!(m[0].usage, billed);
    assert_eq!(m[0].source, "provider");
    assert_eq!(m[0].cost, priced("anthropic", MODEL, billed));
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(billed.prompt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_to_anthropic_becomes_chunks_with_usage_last() {
    let (_mock, server, key) = setup("ants").await;
    let body = json!({"model": format!("@ants/{MODEL}"), "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]});
    let (status, headers, text) =
        post(&server, "/chat/completions", &key, "ant-stream", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (content, usage) = chat_stream(&text);
    assert_eq!(content, mock_anthropic::TEXT);
    assert_eq!(tool_args(&sse_events(&text)), mock_anthropic::tool_input());
    let billed = mock_anthropic::billed();
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        Some(billed.prompt),
        "{text}"
    );
    let m = metered(&server, "ant-stream", 1).await;
    assert_eq!((m[0].usage, m[0].streamed), (billed, true));
    assert_eq!(m[0].cost, priced("anthropic", MODEL, billed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_front_door_passes_through_to_anthropic() {
    let (mock, server, key) = setup("antm").await;
    let body = json!({"model": format!("@antm/{MODEL}"), "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/messages", &key, "antm-plain", &body).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], mock_anthropic::TEXT);
    assert_eq!(mock.seen.bodies.lock()[0]["model"], MODEL);
    let stream = json!({"model": format!("@antm/{MODEL}"), "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/messages", &key, "antm-stream", &stream).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(message_stream(&text), mock_anthropic::TEXT);
    let billed = mock_anthropic::billed();
    for trace in ["antm-plain", "antm-stream"] {
        let m = metered(&server, trace, 1).await;
        assert_eq!(
            (m[0].usage, m[0].endpoint.as_str()),
            (billed, "messages"),
            "{trace}"
        );
        assert_eq!(m[0].cost, priced("anthropic", MODEL, billed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_errors_reach_each_caller_in_its_own_shape() {
    let (_mock, server, key) = setup("ante").await;
    let body = json!({"model": "@ante/fail-429", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, text) = post(&server, "/chat/completions", &key, "ante-1", &body).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(headers["retry-after"], mock_anthropic::RETRY_AFTER);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    let body = json!({"model": "@ante/fail-429", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/messages", &key, "ante-2", &body).await;
    assert_eq!(status, 429);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error")),
        "{v}"
    );
    // The gateway's own refusals on /v1/messages are in Anthropic's shape too.
    let (status, _, text) = post(
        &server,
        "/messages",
        &key,
        "ante-3",
        &json!({"model": "@nobody/x", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    // n > 1 cannot be carried: a 400 naming it, nothing sent, nothing metered.
    let (status, _, text) = post(&server, "/chat/completions", &key, "ante-4", &json!({"model": format!("@ante/{MODEL}"), "n": 2, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(status, 400);
    assert!(text.contains('n'), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_or_garbled_anthropic_stream_ends_with_an_error_and_is_still_metered() {
    let (_mock, server, key) = setup("antt").await;
    for (model, trace) in [
        ("truncated", "antt-cut"),
        ("garbage", "antt-garbage"),
        ("stream-error", "antt-error"),
    ] {
        let body = json!({"model": format!("@antt/{model}"), "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let m = cut_chat_stream(&server, &key, trace, &body).await;
        assert_eq!(m.status, 200, "{model}");
    }
    // The Anthropic caller of a cut stream gets Anthropic's error event, not a message_stop.
    let body = json!({"model": "@antt/truncated", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    cut_messages_stream(&server, &key, "antt-msg", &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_anthropics_count_and_its_errors_pass_on_unmetered() {
    let (mock, server, key) = setup("cnt").await;
    // A config's override_params reach the counter only where it takes them (not `temperature`
    // or `max_tokens`, which Anthropic refuses there); `anthropic-beta` goes along.
    let config = json!({"provider": "@cnt", "override_params": {"temperature": 0.5, "max_tokens": 9,
        "system": "be brief"}});
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages/count_tokens", server.url))
        .header("x-api-key", &key)
        .header("x-portkey-config", config.to_string())
        .header("anthropic-beta", "token-counting-2024-11-01")
        .header("x-portkey-trace-id", "cnt-ok")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, json!({"input_tokens": mock_anthropic::COUNT_TOKENS}));
    let sent = mock.seen.bodies.lock()[0].clone();
    assert_eq!(
        sent,
        json!({"model": MODEL, "system": "be brief", "tools": body["tools"],
            "messages": [{"role": "user", "content": "hi"}]})
    );
    let headers = mock.seen.headers.lock()[0].clone();
    assert_eq!(headers["x-api-key"], "sk-ant-test-0123456789");
    assert_eq!(headers["anthropic-beta"], "token-counting-2024-11-01");
    // Anthropic's refusal reaches the caller as it was, with its Retry-After.
    let body = json!({"model": "@cnt/fail-429", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, text) =
        post(&server, "/messages/count_tokens", &key, "cnt-429", &body).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(headers["retry-after"], mock_anthropic::RETRY_AFTER);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    // The gateway's own refusals in Anthropic's shape, before anything is sent.
    let body = json!({"model": "@nope/x", "messages": []});
    let (status, _, text) = post(&server, "/messages/count_tokens", &key, "cnt-bad", &body).await;
    assert_eq!(status, 400, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    // A governed key cannot point the count (and the stored Anthropic key) at its own host.
    let attacker = mock_anthropic::start().await;
    let config = json!({"provider": "@cnt", "custom_host": format!("{}/v1", attacker.url)});
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages/count_tokens", server.url))
        .header("x-api-key", &key)
        .header("x-portkey-config", config.to_string())
        .header("x-portkey-trace-id", "cnt-host")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        attacker.seen.headers.lock().is_empty(),
        "the attacker's host got a call"
    );
    assert_eq!(mock.seen.bodies.lock().len(), 2);
    for trace in ["cnt-ok", "cnt-429", "cnt-bad", "cnt-host"] {
        assert!(metered(&server, trace, 0).await.is_empty(), "{trace}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_openai_format_providers_name_the_output_cap_as_each_takes_it() {
    let oai = crate::mock::start().await;
    let server = harness::start().await;
    let fields = json!({"key": "sk-mock-provider-key-0123456789", "configurations": {"custom_host": oai.url}});
    let openai = native_tenant(&server, "capo", "openai", fields.clone()).await;
    let groq = native_tenant(&server, "capg", "groq", fields).await;
    // OpenAI's reasoning models refuse `max_tokens`: wherever `openai` points they are sent
    // `max_completion_tokens`. Other models behind a `custom_host` (often another
    // OpenAI-compatible server) keep `max_tokens`; OpenAI's own host takes the new name for
    // every model (the rule is unit-tested in `proxy::target`).
    for (model, trace, cap) in [
        ("o3-mini", "cap-o3", "max_completion_tokens"),
        ("gpt-4o", "cap-4o", "max_tokens"),
    ] {
        let body = json!({"model": format!("@capo/{model}"), "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, text) = post(&server, "/messages", &openai, trace, &body).await;
        assert_eq!(status, 200, "{trace}: {text}");
        let sent = oai.seen.bodies.lock().last().unwrap().clone();
        assert_eq!(sent[cap], 64, "{sent}");
        let other = ["max_tokens", "max_completion_tokens"]
            .into_iter()
            .find(|c| *c != cap);
        assert!(sent.get(other.unwrap()).is_none(), "{sent}");
        assert_eq!(metered(&server, trace, 1).await[0].status, 200);
    }
    // Another OpenAI-format provider knows `max_tokens` only.
    let body = json!({"model": "@capg/llama-3.3-70b-versatile", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/messages", &groq, "cap-groq", &body).await;
    assert_eq!(status, 200, "{text}");
    let sent = oai.seen.bodies.lock().last().unwrap().clone();
    assert_eq!(sent["max_tokens"], 64, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
}

/// A client that leaves a translated or passed-through Anthropic stream after its first chunk:
/// the gateway reads the provider's stream to its end and meters what Anthropic billed (the
/// output tokens come last, in `message_delta`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_is_metered_what_anthropic_billed() {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    let (mock, server, key) = setup("antl").await;
    let model = format!("@antl/{MODEL}-slow-stream");
    harness::leave_stream_after_first_chunk(&server.url, &key, &model, "antl-chat").await;
    let body = json!({"model": model, "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.url))
        .header("x-api-key", &key)
        .header("x-portkey-trace-id", "antl-msg")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.bytes_stream().next().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: "), "{first:?}");
    let billed = mock_anthropic::billed();
    let at = format!("{MODEL}-slow-stream");
    for trace in ["antl-chat", "antl-msg"] {
        let m = metered(&server, trace, 1).await;
        assert_eq!(
            (m[0].usage, m[0].source.as_str(), m[0].streamed),
            (billed, "provider", true),
            "{trace}"
        );
        assert_eq!(m[0].model, at);
    }
    assert_eq!(mock.seen.streams_finished.load(Ordering::SeqCst), 2);
}
