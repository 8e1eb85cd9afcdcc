//! Google as an upstream: the Gemini API with a key, Vertex AI with a service account (its JWT
//! verified by PyJWT in the token mock, the token cached and refreshed), Claude on Vertex for
//! `/v1/messages`, and what blocked, broken and unauthorised answers become.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    billed_once, chat, chat_stream, credentials_error, cut_chat_stream, cut_messages_stream,
    gemini_fields, json_of, message_stream, messages, metered, native_tenant, openai_error, post,
    post_status, priced, sse_events, streamed, tool_args, unbilled,
};
use crate::harness::{self, Server};
use crate::mock_gemini::{
    self, GeminiMock, VertexToken, BILLED, CANDIDATES, CLAUDE_USAGE, GEMINI_KEY, PROMPT, TEXT,
    THOUGHTS,
};
use tollgate::domain::pricing::TokenUsage;

const FLASH: &str = "gemini-2.0-flash-001";
/// A Claude model Vertex prices with cache read and write rates.
const CLAUDE: &str = "claude-sonnet-4@20250514";

/// What Claude on Vertex bills: input, cache read and cache write are all prompt.
fn claude_billed() -> TokenUsage {
    let (input, output, read, write) = CLAUDE_USAGE;
    TokenUsage {
        prompt: input + read + write,
        completion: output,
        cached: read,
        cache_write: write,
    }
}

async fn gemini_tenant(slug: &str, key: &str) -> (GeminiMock, Server, String) {
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    let key = native_tenant(&server, slug, "google", gemini_fields(&mock, key)).await;
    (mock, server, key)
}

/// A Vertex integration for `publisher`'s models at `mock`, with `account` (a key file's JSON).
async fn vertex_tenant(
    server: &Server,
    slug: &str,
    mock: &GeminiMock,
    publisher: &str,
    account: &str,
) -> String {
    let fields = json!({"configurations": {"custom_host": mock.vertex_url(publisher),
        "vertex_project_id": "mock-project", "vertex_region": "us-central1",
        "vertex_service_account_json": account}});
    native_tenant(server, slug, "vertex-ai", fields).await
}

async fn issued(token: &VertexToken) -> u64 {
    token.stats().await["issued"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_plain_and_streamed_bill_thoughts_as_output_at_the_shipped_price() {
    let (mock, server, key) = gemini_tenant("gem", GEMINI_KEY).await;
    let body = chat("gem", FLASH);
    let v =
        json_of(&post_status(&server, "/chat/completions", &key, "gem-plain", &body, 200).await);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"], TEXT,
        "thoughts are not content: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64(),
        Some(CANDIDATES + THOUGHTS),
        "{v}"
    );
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64(),
        Some(THOUGHTS)
    );

    // The mock's stream separates events with \r\n\r\n; the caller gets OpenAI's chunks.
    let body = streamed(body);
    let text = post_status(&server, "/chat/completions", &key, "gem-stream", &body, 200).await;
    let (said, usage) = chat_stream(&text);
    assert_eq!(said, TEXT, "{text}");
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(PROMPT), "{text}");
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        Some(CANDIDATES + THOUGHTS),
        "{text}"
    );

    let bodies = mock.seen.bodies.lock().clone();
    let actions: Vec<_> = bodies.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            format!("{FLASH}:generateContent"),
            format!("{FLASH}:streamGenerateContent")
        ]
    );
    for (_, b) in &bodies {
        assert_eq!(
            b["systemInstruction"]["parts"][0]["text"], "be brief",
            "{b}"
        );
        assert_eq!(b["contents"][0]["role"], "user", "{b}");
    }
    for (trace, streamed) in [("gem-plain", false), ("gem-stream", true)] {
        let at = ("google", FLASH);
        billed_once(&server, trace, at, "chat.completions", streamed, BILLED).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_tools_go_as_function_declarations_and_come_back_as_tool_calls() {
    let (mock, server, key) = gemini_tenant("gemt", GEMINI_KEY).await;
    let model = "gemini-tool-call";
    let mut body = chat("gemt", model);
    body["tools"] = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "additionalProperties": false}}}]);
    let v =
        json_of(&post_status(&server, "/chat/completions", &key, "gemt-plain", &body, 200).await);
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "weather", "{v}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let sent = mock.seen.bodies.lock()[0].1.clone();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["name"], "weather",
        "{sent}"
    );

    // The call sent back (with its signature, which Gemini wants) and its result.
    let mut next = chat("gemt", model);
    next["tools"] = body["tools"].clone();
    let messages = next["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny"}));
    let (status, _, text) = post(
        &server,
        "/chat/completions",
        &key,
        "gemt-stream",
        &streamed(next),
    )
    .await;
    assert_eq!(
        status, 200,
        "the function call went back with its thought signature: {text}"
    );
    assert_eq!(
        tool_args(&sse_events(&text)),
        json!({"city": "Paris"}),
        "{text}"
    );
    for trace in ["gemt-plain", "gemt-stream"] {
        assert_eq!(metered(&server, trace, 1).await[0].usage, BILLED, "{trace}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_blocked_wrong_key_garbage_and_truncation() {
    let (_mock, server, key) = gemini_tenant("gemx", GEMINI_KEY).await;
    // A prompt blocked before generation: content_filter, the prompt billed.
    let body = chat("gemx", "gemini-blocked");
    let v = json_of(
        &post_status(
            &server,
            "/chat/completions",
            &key,
            "gemx-blocked",
            &body,
            200,
        )
        .await,
    );
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    let m = metered(&server, "gemx-blocked", 1).await;
    assert_eq!(
        m[0].usage,
        TokenUsage {
            prompt: PROMPT,
            ..Default::default()
        }
    );
    let body = streamed(body);
    let text = post_status(
        &server,
        "/chat/completions",
        &key,
        "gemx-blocked-s",
        &body,
        200,
    )
    .await;
    let finish: Vec<_> = sse_events(&text)
        .iter()
        .filter_map(|(_, e)| e["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(finish, ["content_filter"], "{text}");
    metered(&server, "gemx-blocked-s", 1).await;

    // Not JSON: a 502, metered with an estimate.
    let body = chat("gemx", "gemini-garbage");
    post_status(
        &server,
        "/chat/completions",
        &key,
        "gemx-garbage",
        &body,
        502,
    )
    .await;
    let m = metered(&server, "gemx-garbage", 1).await;
    assert_eq!((m[0].status, m[0].source.as_str()), (502, "estimated"));
    // Streams that break: an event that is not JSON, a cut inside an event.
    for (trace, model) in [
        ("gemx-garbage-s", "gemini-garbage"),
        ("gemx-cut", "gemini-truncated"),
    ] {
        let m = cut_chat_stream(&server, &key, trace, &streamed(chat("gemx", model))).await;
        assert!(m.usage.prompt > 0, "{trace}: {m:?}");
    }

    // No usageMetadata: answered, and metered with an estimate.
    let body = chat("gemx", "gemini-no-usage");
    post_status(
        &server,
        "/chat/completions",
        &key,
        "gemx-nousage",
        &body,
        200,
    )
    .await;
    let m = metered(&server, "gemx-nousage", 1).await;
    assert_eq!(m[0].source, "estimated", "{m:?}");
    assert!(m[0].usage.prompt > 0 && m[0].usage.completion > 0, "{m:?}");
    // Google's 429 passes on in OpenAI's envelope.
    let body = chat("gemx", "gemini-fail-429");
    let text = post_status(&server, "/chat/completions", &key, "gemx-429", &body, 429).await;
    openai_error(&text, Some("rate_limit_error"), "");
    assert_eq!(metered(&server, "gemx-429", 1).await[0].status, 429);
    // A stream cut short on /v1/messages: Anthropic's error event, no message_stop.
    let body = messages("gemx", "gemini-truncated", true);
    cut_messages_stream(&server, &key, "gemx-msg-cut", &body).await;

    // A wrong key: Google's 400 in OpenAI's envelope, metered.
    let (_mock, server, key) = gemini_tenant("gemk", "not-the-key").await;
    let text = post_status(
        &server,
        "/chat/completions",
        &key,
        "gemk",
        &chat("gemk", FLASH),
        400,
    )
    .await;
    openai_error(&text, None, "API key not valid");
    assert!(!text.contains("not-the-key"), "{text}");
    assert_eq!(metered(&server, "gemk", 1).await[0].status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_on_messages_front_door_answers_in_anthropics_shape() {
    let (_mock, server, key) = gemini_tenant("gemm", GEMINI_KEY).await;
    let body = messages("gemm", FLASH, false);
    let v = json_of(&post_status(&server, "/messages", &key, "gemm-plain", &body, 200).await);
    assert_eq!(
        (v["type"].as_str(), v["content"][0]["text"].as_str()),
        (Some("message"), Some(TEXT)),
        "{v}"
    );
    let body = messages("gemm", FLASH, true);
    let text = post_status(&server, "/messages", &key, "gemm-stream", &body, 200).await;
    assert_eq!(message_stream(&text), TEXT);
    for (trace, streamed) in [("gemm-plain", false), ("gemm-stream", true)] {
        billed_once(
            &server,
            trace,
            ("google", FLASH),
            "messages",
            streamed,
            BILLED,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_fetches_a_token_with_a_verified_jwt_and_reuses_it() {
    let token = mock_gemini::start_vertex_token(3600).await;
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    let key = vertex_tenant(&server, "vtx", &mock, "google", &token.service_account_json).await;
    for i in 0..4 {
        let trace = format!("vtx-{i}");
        let body = if i % 2 == 0 {
            chat("vtx", FLASH)
        } else {
            streamed(chat("vtx", FLASH))
        };
        post_status(&server, "/chat/completions", &key, &trace, &body, 200).await;
    }
    let stats = token.stats().await;
    assert_eq!(
        stats,
        json!({"issued": 1, "refused": 0}),
        "one token serves every request"
    );
    let paths: Vec<_> = mock
        .seen
        .bodies
        .lock()
        .iter()
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let cost = priced("vertex-ai", FLASH, BILLED);
    for i in 0..4 {
        let m = metered(&server, &format!("vtx-{i}"), 1).await;
        assert_eq!((m[0].usage, m[0].cost), (BILLED, cost), "vtx-{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_vertex_token_is_fetched_again_and_requests_keep_succeeding() {
    // Tokens live 2 s (the mock's `exp` is in whole seconds: 1-2 s in fact).
    let token = mock_gemini::start_vertex_token(2).await;
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    let key = vertex_tenant(&server, "vtt", &mock, "google", &token.service_account_json).await;
    let body = chat("vtt", FLASH);
    post_status(&server, "/chat/completions", &key, "vtt-0", &body, 200).await;
    assert_eq!(issued(&token).await, 1);
    // Nothing asked for the token since, so no refresh ran; in 2.1 s it has expired.
    // (The one bounded wait: the expiry is the token mock's clock, which cannot be polled.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, text) = post(&server, "/chat/completions", &key, "vtt-1", &body).await;
    assert_eq!(
        status, 200,
        "an expired token is fetched anew before use: {text}"
    );
    assert_eq!(issued(&token).await, 2);
    // Inside the refresh-ahead window each request uses the cached token while the next is fetched.
    for i in 2..6 {
        let (trace, body) = (format!("vtt-{i}"), streamed(chat("vtt", FLASH)));
        post_status(&server, "/chat/completions", &key, &trace, &body, 200).await;
    }
    let refreshed = harness::eventually(Duration::from_millis(20), || async {
        issued(&token).await >= 3
    })
    .await;
    assert!(refreshed, "a token near expiry is refreshed ahead");
    assert_eq!(token.stats().await["refused"], 0);
    for i in 0..6 {
        assert_eq!(
            metered(&server, &format!("vtt-{i}"), 1).await[0].usage,
            BILLED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_on_vertex_serves_the_messages_front_door_metered_exactly() {
    let token = mock_gemini::start_vertex_token(3600).await;
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    let key = vertex_tenant(
        &server,
        "vtc",
        &mock,
        "anthropic",
        &token.service_account_json,
    )
    .await;
    let body = messages("vtc", CLAUDE, false);
    let v = json_of(&post_status(&server, "/messages", &key, "vtc-plain", &body, 200).await);
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "Hello from Claude on Vertex!");
    let body = messages("vtc", CLAUDE, true);
    let text = post_status(&server, "/messages", &key, "vtc-stream", &body, 200).await;
    assert_eq!(message_stream(&text), "Hello from Claude on Vertex!");
    let bodies = mock.seen.bodies.lock().clone();
    let actions: Vec<_> = bodies.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            format!("{CLAUDE}:rawPredict"),
            format!("{CLAUDE}:streamRawPredict")
        ]
    );
    for (_, b) in &bodies {
        assert_eq!(b["anthropic_version"], "vertex-2023-10-16", "{b}");
        assert!(b.get("model").is_none(), "{b}");
    }
    assert_eq!(issued(&token).await, 1);
    let billed = claude_billed();
    let cost = priced("vertex-ai", CLAUDE, billed);
    for (trace, streamed) in [("vtc-plain", false), ("vtc-stream", true)] {
        let at = ("vertex-ai", CLAUDE);
        billed_once(&server, trace, at, "messages", streamed, billed).await;
    }
    // An OpenAI caller reaches Claude on Vertex too: Anthropic's body on rawPredict (it was sent
    // to generateContent, which Vertex's Claude models do not serve).
    let body = chat("vtc", CLAUDE);
    let v = json_of(&post_status(&server, "/chat/completions", &key, "vtc-chat", &body, 200).await);
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from Claude on Vertex!",
        "{v}"
    );
    let body = streamed(body);
    let text = post_status(&server, "/chat/completions", &key, "vtc-chat-s", &body, 200).await;
    let (said, usage) = chat_stream(&text);
    assert_eq!(said, "Hello from Claude on Vertex!", "{text}");
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        Some(billed.prompt),
        "{text}"
    );
    let bodies = mock.seen.bodies.lock().clone();
    let actions: Vec<_> = bodies[2..].iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            format!("{CLAUDE}:rawPredict"),
            format!("{CLAUDE}:streamRawPredict")
        ]
    );
    assert_eq!(
        bodies[2].1["system"],
        json!([{"type": "text", "text": "be brief"}]),
        "{:?}",
        bodies[2]
    );
    for trace in ["vtc-chat", "vtc-chat-s"] {
        let m = metered(&server, trace, 1).await;
        assert_eq!((m[0].usage, m[0].cost), (billed, cost), "{trace}");
    }
    // count_tokens goes to Vertex's Claude counter (the model in its body), unmetered.
    let body = json!({"model": format!("@vtc/{CLAUDE}"), "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                     {"role": "user", "content": "count us"}]});
    let v = json_of(
        &post_status(
            &server,
            "/messages/count_tokens",
            &key,
            "vtc-count",
            &body,
            200,
        )
        .await,
    );
    assert_eq!(v, json!({"input_tokens": 9}));
    let bodies = mock.seen.bodies.lock().clone();
    assert_eq!(bodies[4].0, "count-tokens:rawPredict");
    assert_eq!(bodies[4].1["model"], CLAUDE, "{:?}", bodies[4]);
    assert!(bodies[4].1.get("max_tokens").is_none(), "{:?}", bodies[4]);
    assert!(metered(&server, "vtc-count", 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_service_account_key_is_a_clear_502_and_metered() {
    let token = mock_gemini::start_vertex_token(3600).await;
    let other = mock_gemini::start_vertex_token(3600).await;
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    // The account as the token endpoint knows it, but signed with another (a rotated-out) key.
    let mut account: Value = serde_json::from_str(&token.service_account_json).unwrap();
    let stranger: Value = serde_json::from_str(&other.service_account_json).unwrap();
    account["private_key"] = stranger["private_key"].clone();
    let key = vertex_tenant(&server, "vtb", &mock, "google", &account.to_string()).await;
    let body = chat("vtb", FLASH);
    let text = post_status(&server, "/chat/completions", &key, "vtb-chat", &body, 502).await;
    let message = credentials_error(&text);
    assert!(message.contains("token exchange failed"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    let body = streamed(body);
    post_status(&server, "/chat/completions", &key, "vtb-stream", &body, 502).await;
    assert_eq!(
        token.stats().await["refused"],
        2,
        "each attempt tried the exchange"
    );
    assert_eq!(
        mock.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    for trace in ["vtb-chat", "vtb-stream"] {
        unbilled(&server, trace, 502).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_vertex_refuses_is_its_401_and_forgotten() {
    let token =
        mock_gemini::start_vertex_token_signing(3600, "a-secret-vertex-does-not-know").await;
    let mock = mock_gemini::start().await;
    let server = harness::start().await;
    let key = vertex_tenant(&server, "vtr", &mock, "google", &token.service_account_json).await;
    for trace in ["vtr-1", "vtr-2"] {
        let body = chat("vtr", FLASH);
        let text = post_status(&server, "/chat/completions", &key, trace, &body, 401).await;
        let says = "invalid authentication credentials";
        openai_error(&text, Some("authentication_error"), says);
        unbilled(&server, trace, 401).await;
    }
    // The refused token was not kept: each request exchanged anew.
    assert_eq!(issued(&token).await, 2);
}
