//! AWS Bedrock as an upstream, through the Python mock that checks every SigV4 signature with
//! botocore: OpenAI callers on Converse / ConverseStream, Anthropic callers on InvokeModel (for
//! Anthropic's models) or translated through Converse, access keys and assumed roles (STS, its
//! cache and refresh, external ids), and what broken answers become.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    bedrock_fields, billed_once, chat, chat_stream, credentials_error, cut_chat_stream,
    cut_messages_stream, json_of, message_stream, metered, native_tenant, openai_error, post,
    post_status, sse_events, streamed, tool_args, unbilled,
};
use crate::harness::{self, Server};
use crate::mock_bedrock::{self, MockBedrock, ACCESS_KEY_ID, SECRET_ACCESS_KEY, TEXT, USAGE};

/// A model with a shipped price (cache read and write rates included).
const NOVA: &str = "amazon.nova-pro-v1:0";
/// Anthropic's model on Bedrock, served by InvokeModel.
const CLAUDE: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";

/// The integration fields of an assumed-role Bedrock integration at `mock`.
fn assumed_role(mock: &MockBedrock, role: &str, external_id: Option<&str>) -> Value {
    let mut v = bedrock_fields(mock, SECRET_ACCESS_KEY);
    let c = &mut v["configurations"];
    c["aws_auth_type"] = json!("assumedRole");
    c["aws_role_arn"] = json!(role);
    c["aws_sts_endpoint"] = json!(mock.url);
    if let Some(id) = external_id {
        c["aws_external_id"] = json!(id);
    }
    v
}

async fn setup(slug: &str) -> (MockBedrock, Server, String) {
    let mock = mock_bedrock::start().await;
    let server = harness::start().await;
    let fields = bedrock_fields(&mock, SECRET_ACCESS_KEY);
    let key = native_tenant(&server, slug, "bedrock", fields).await;
    (mock, server, key)
}

/// [`super::messages`] with a system prompt.
fn messages(slug: &str, model: &str, stream: bool) -> Value {
    let mut body = super::messages(slug, model, stream);
    body["system"] = json!("be brief");
    body
}

/// The requests the mock saw for the runtime (not STS).
async fn runtime_seen(mock: &MockBedrock) -> Vec<Value> {
    mock.seen_by("bedrock").await
}

/// The AssumeRole calls the mock saw.
async fn sts_seen(mock: &MockBedrock) -> Vec<Value> {
    mock.seen_by("sts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_to_converse_is_signed_translated_and_metered_at_the_shipped_price() {
    let (mock, server, key) = setup("bdr").await;
    let body = chat("bdr", NOVA);
    let text = post_status(&server, "/chat/completions", &key, "bdr-plain", &body, 200).await;
    let v = json_of(&text);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(USAGE.prompt));
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64(),
        Some(USAGE.completion)
    );

    let body = streamed(chat("bdr", NOVA));
    let text = post_status(&server, "/chat/completions", &key, "bdr-stream", &body, 200).await;
    let (said, usage) = chat_stream(&text);
    assert_eq!(said, TEXT);
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        Some(USAGE.prompt),
        "{text}"
    );
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        Some(USAGE.completion),
        "{text}"
    );

    let seen = runtime_seen(&mock).await;
    let actions: Vec<_> = seen.iter().map(|s| s["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["converse", "converse-stream"]);
    for s in &seen {
        assert_eq!(s["signature"], "ok", "{s}");
        assert_eq!(s["model"], NOVA);
        assert_eq!(s["access_key_id"], ACCESS_KEY_ID);
        assert_eq!(s["body"]["system"], json!([{"text": "be brief"}]), "{s}");
        assert_eq!(s["body"]["messages"][0]["role"], "user");
    }
    for (trace, streamed) in [("bdr-plain", false), ("bdr-stream", true)] {
        let at = ("bedrock", NOVA);
        billed_once(&server, trace, at, "chat.completions", streamed, USAGE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_reach_converse_and_tool_calls_come_back_plain_and_streamed() {
    let (mock, server, key) = setup("bdt").await;
    let model = "amazon.nova-tool";
    let mut body = chat("bdt", model);
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let text = post_status(&server, "/chat/completions", &key, "bdt-plain", &body, 200).await;
    let v = json_of(&text);
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup", "{v}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"q": "mock"}));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let body = streamed(body);
    let text = post_status(&server, "/chat/completions", &key, "bdt-stream", &body, 200).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = sse_events(&text);
    assert_eq!(tool_args(&events), json!({"q": "mock"}), "{text}");
    let finish: Vec<_> = events
        .iter()
        .filter_map(|(_, e)| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"], "{text}");

    let seen = runtime_seen(&mock).await;
    for s in &seen {
        assert_eq!(s["signature"], "ok", "{s}");
        let spec = &s["body"]["toolConfig"]["tools"][0]["toolSpec"];
        assert_eq!(spec["name"], "lookup", "{s}");
        assert_eq!(spec["inputSchema"]["json"]["type"], "object", "{s}");
    }
    for trace in ["bdt-plain", "bdt-stream"] {
        let m = metered(&server, trace, 1).await;
        assert_eq!(m[0].usage, USAGE, "{trace}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_front_door_to_claude_on_bedrock_is_invoke_model() {
    let (mock, server, key) = setup("bdm").await;
    let body = messages("bdm", CLAUDE, false);
    let v = json_of(&post_status(&server, "/messages", &key, "bdm-plain", &body, 200).await);
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str()),
        (Some("message"), Some("assistant")),
        "{v}"
    );
    assert_eq!(v["content"][0]["text"], TEXT);
    assert_eq!(
        v["usage"]["cache_read_input_tokens"].as_u64(),
        Some(USAGE.cached)
    );

    let body = messages("bdm", CLAUDE, true);
    let text = post_status(&server, "/messages", &key, "bdm-stream", &body, 200).await;
    assert_eq!(message_stream(&text), TEXT);

    let seen = runtime_seen(&mock).await;
    let actions: Vec<_> = seen.iter().map(|s| s["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["invoke", "invoke-with-response-stream"]);
    for s in &seen {
        assert_eq!(s["signature"], "ok", "{s}");
        assert_eq!(s["body"]["anthropic_version"], "bedrock-2023-05-31", "{s}");
        assert!(
            s["body"].get("model").is_none() && s["body"].get("stream").is_none(),
            "{s}"
        );
    }
    for (trace, streamed) in [("bdm-plain", false), ("bdm-stream", true)] {
        billed_once(
            &server,
            trace,
            ("bedrock", CLAUDE),
            "messages",
            streamed,
            USAGE,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_front_door_to_other_bedrock_models_goes_through_converse() {
    let (mock, server, key) = setup("bdn").await;
    let body = messages("bdn", NOVA, false);
    let v = json_of(&post_status(&server, "/messages", &key, "bdn-plain", &body, 200).await);
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["type"], "text", "{v}");
    assert_eq!(v["content"][0]["text"], TEXT, "{v}");
    assert_eq!(v["stop_reason"], "end_turn", "{v}");

    let body = messages("bdn", NOVA, true);
    let text = post_status(&server, "/messages", &key, "bdn-stream", &body, 200).await;
    assert_eq!(message_stream(&text), TEXT, "{text}");

    let seen = runtime_seen(&mock).await;
    let actions: Vec<_> = seen.iter().map(|s| s["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["converse", "converse-stream"]);
    assert!(seen.iter().all(|s| s["signature"] == "ok"), "{seen:?}");
    for (trace, streamed) in [("bdn-plain", false), ("bdn-stream", true)] {
        billed_once(
            &server,
            trace,
            ("bedrock", NOVA),
            "messages",
            streamed,
            USAGE,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assumed_role_signs_with_its_temporary_keys_from_one_sts_call() {
    let mock = mock_bedrock::start().await;
    let server = harness::start().await;
    let fields = assumed_role(&mock, mock_bedrock::ROLE_ARN, None);
    let key = native_tenant(&server, "bdr-role", "bedrock", fields).await;
    for i in 0..4 {
        let (trace, body) = (format!("role-{i}"), chat("bdr-role", NOVA));
        post_status(&server, "/chat/completions", &key, &trace, &body, 200).await;
    }
    let sts = sts_seen(&mock).await;
    assert_eq!(sts.len(), 1, "one AssumeRole serves every request: {sts:?}");
    assert_eq!(sts[0]["signature"], "ok");
    assert_eq!(
        sts[0]["access_key_id"], ACCESS_KEY_ID,
        "AssumeRole is signed with the base keys"
    );
    assert_eq!(sts[0]["body"]["RoleArn"], mock_bedrock::ROLE_ARN);
    assert!(sts[0]["body"]["RoleSessionName"]
        .as_str()
        .unwrap()
        .starts_with("tollgate-"));
    let seen = runtime_seen(&mock).await;
    assert_eq!(seen.len(), 4);
    let temporary = seen[0]["access_key_id"].as_str().unwrap().to_owned();
    assert!(temporary.starts_with("ASIAMOCK"), "{temporary}");
    for s in &seen {
        assert_eq!(
            (s["signature"].as_str(), s["access_key_id"].as_str()),
            (Some("ok"), Some(temporary.as_str())),
            "{s}"
        );
        assert!(s["headers"]["x-amz-security-token"].is_string(), "{s}");
    }
    for i in 0..4 {
        assert_eq!(
            metered(&server, &format!("role-{i}"), 1).await[0].usage,
            USAGE
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_role_credentials_are_assumed_again_and_requests_keep_succeeding() {
    // The mock's temporary keys live 2 s (its Expiration is in whole seconds: 1-2 s in fact).
    let mock = mock_bedrock::start_with(&[("BEDROCK_MOCK_STS_TTL", "2")]).await;
    let server = harness::start().await;
    let fields = assumed_role(&mock, mock_bedrock::ROLE_ARN, None);
    let key = native_tenant(&server, "bdr-ttl", "bedrock", fields).await;
    let body = chat("bdr-ttl", NOVA);
    post_status(&server, "/chat/completions", &key, "ttl-0", &body, 200).await;
    let first = runtime_seen(&mock).await[0]["access_key_id"].clone();
    // Nothing asked for a credential since: no refresh ran, and in 2.1 s the first has expired.
    // (The one bounded wait: the expiry is the mock's clock, which nothing can be polled for.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    mock.clear_seen().await;
    let (status, _, text) = post(&server, "/chat/completions", &key, "ttl-1", &body).await;
    assert_eq!(
        status, 200,
        "an expired credential is exchanged anew before use: {text}"
    );
    assert_eq!(
        sts_seen(&mock).await.len(),
        1,
        "the expired keys were assumed again"
    );
    let second = runtime_seen(&mock).await[0].clone();
    assert_eq!(second["signature"], "ok", "{second}");
    assert_ne!(
        second["access_key_id"], first,
        "signed with the new temporary keys"
    );
    // Inside the refresh-ahead window every request is answered with the cached keys while a
    // refresh runs in the background: they keep succeeding, and new keys keep coming.
    for i in 2..6 {
        let trace = format!("ttl-{i}");
        post_status(&server, "/chat/completions", &key, &trace, &body, 200).await;
    }
    let refreshed = harness::eventually(Duration::from_millis(20), || async {
        sts_seen(&mock).await.len() >= 2
    })
    .await;
    assert!(refreshed, "credentials near expiry are refreshed ahead");
    assert!(runtime_seen(&mock)
        .await
        .iter()
        .all(|s| s["signature"] == "ok"));
    for i in 0..6 {
        assert_eq!(
            metered(&server, &format!("ttl-{i}"), 1).await[0].status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_wanting_an_external_id_works_with_it_and_fails_clearly_without() {
    let mock = mock_bedrock::start().await;
    let server = harness::start().await;
    let role = "arn:aws:iam::123456789012:role/needs-external-id";
    let with = assumed_role(&mock, role, Some(mock_bedrock::EXTERNAL_ID));
    let with_key = native_tenant(&server, "bdr-ext", "bedrock", with).await;
    let without = assumed_role(&mock, role, None);
    let without_key = native_tenant(&server, "bdr-noext", "bedrock", without).await;

    let body = chat("bdr-ext", NOVA);
    post_status(
        &server,
        "/chat/completions",
        &with_key,
        "ext-ok",
        &body,
        200,
    )
    .await;
    let sts = sts_seen(&mock).await;
    assert_eq!(sts[0]["body"]["ExternalId"], mock_bedrock::EXTERNAL_ID);

    let body = chat("bdr-noext", NOVA);
    let text = post_status(
        &server,
        "/chat/completions",
        &without_key,
        "ext-no",
        &body,
        502,
    )
    .await;
    let message = credentials_error(&text);
    assert!(
        message.contains("AssumeRole") && message.contains(role),
        "{message}"
    );
    assert!(!message.contains(SECRET_ACCESS_KEY), "{message}");
    // The same on /v1/messages, in Anthropic's shape.
    let body = messages("bdr-noext", CLAUDE, false);
    let text = post_status(&server, "/messages", &without_key, "ext-no-msg", &body, 502).await;
    assert_eq!(json_of(&text)["type"], "error", "{text}");
    // Nothing reached the runtime unsigned; each attempt is metered, with no usage.
    let seen = runtime_seen(&mock).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    for trace in ["ext-no", "ext-no-msg"] {
        unbilled(&server, trace, 502).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_the_providers_403_in_openais_envelope() {
    let mock = mock_bedrock::start().await;
    let server = harness::start().await;
    let fields = bedrock_fields(&mock, "not-the-secret-access-key");
    let key = native_tenant(&server, "bdr-bad", "bedrock", fields).await;
    let body = chat("bdr-bad", NOVA);
    let text = post_status(&server, "/chat/completions", &key, "bad-secret", &body, 403).await;
    let says = "signature we calculated does not match";
    openai_error(&text, Some("permission_error"), says);
    assert!(!text.contains("not-the-secret-access-key"), "{text}");
    assert_eq!(
        runtime_seen(&mock).await[0]["signature"],
        "InvalidSignatureException"
    );
    unbilled(&server, "bad-secret", 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_502s_or_error_frames_and_every_attempt_is_metered() {
    let (_mock, server, key) = setup("bdx").await;
    // A body that is not Converse's.
    let body = chat("bdx", "amazon.garbage");
    let text = post_status(
        &server,
        "/chat/completions",
        &key,
        "bdx-garbage",
        &body,
        502,
    )
    .await;
    openai_error(&text, None, "");
    let m = metered(&server, "bdx-garbage", 1).await;
    assert_eq!((m[0].status, m[0].source.as_str()), (502, "estimated"));
    assert!(
        m[0].usage.prompt > 0,
        "the prompt the provider read is estimated: {m:?}"
    );

    // Streams that break: a bad CRC, a cut inside a frame, an exception frame.
    for (trace, model) in [
        ("bdx-crc", "amazon.garbage"),
        ("bdx-cut", "amazon.truncate"),
        ("bdx-exc", "amazon.stream-exception"),
    ] {
        let m = cut_chat_stream(&server, &key, trace, &streamed(chat("bdx", model))).await;
        assert!(m.usage.prompt > 0, "{trace}: {m:?}");
    }
    // Throttled: AWS's 429 in OpenAI's envelope, metered.
    let body = chat("bdx", "amazon.fail-throttle");
    let text = post_status(&server, "/chat/completions", &key, "bdx-429", &body, 429).await;
    openai_error(&text, Some("rate_limit_error"), "Too many requests");
    assert_eq!(metered(&server, "bdx-429", 1).await[0].status, 429);
    // On /v1/messages (InvokeModel's stream cut short): an Anthropic error event, metered.
    let body = messages("bdx", "anthropic.claude-truncate", true);
    cut_messages_stream(&server, &key, "bdx-msg-cut", &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_a_list_is_one_call_a_text_on_titan_and_96_on_cohere_metered_once() {
    let (mock, server, key) = setup("bemb").await;
    const TITAN: &str = "amazon.titan-embed-text-v2:0";
    const COHERE: &str = "cohere.embed-english-v3";
    let texts = ["one", "two", "three"];
    let body = json!({"model": format!("@bemb/{TITAN}"), "input": texts});
    let v = json_of(&post_status(&server, "/embeddings", &key, "bemb-titan", &body, 200).await);
    // One vector a text, in input order (the mock's vector depends on the text).
    for (i, text) in texts.iter().enumerate() {
        let one = json!({"model": format!("@bemb/{TITAN}"), "input": text});
        let trace = format!("bemb-one-{text}");
        let alone = json_of(&post_status(&server, "/embeddings", &key, &trace, &one, 200).await);
        assert_eq!(v["data"][i]["index"], i);
        assert_eq!(
            v["data"][i]["embedding"], alone["data"][0]["embedding"],
            "{text}"
        );
    }
    let titan = mock_bedrock::TITAN_TOKENS;
    assert_eq!(v["usage"]["prompt_tokens"], 3 * titan);
    let usage = |prompt| tollgate::domain::pricing::TokenUsage {
        prompt,
        ..Default::default()
    };
    billed_once(
        &server,
        "bemb-titan",
        ("bedrock", TITAN),
        "embeddings",
        false,
        usage(3 * titan),
    )
    .await;

    // Cohere: 100 texts are two calls (96 + 4), counted by Bedrock's header.
    let many: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let body =
        json!({"model": format!("@bemb/{COHERE}"), "input": many, "encoding_format": "base64"});
    let v = json_of(&post_status(&server, "/embeddings", &key, "bemb-cohere", &body, 200).await);
    assert_eq!(v["data"].as_array().unwrap().len(), 100);
    assert!(
        v["data"][99]["embedding"].is_string(),
        "base64: {}",
        v["data"][99]
    );
    let cohere = 100 * mock_bedrock::COHERE_TOKENS;
    billed_once(
        &server,
        "bemb-cohere",
        ("bedrock", COHERE),
        "embeddings",
        false,
        usage(cohere),
    )
    .await;
    // (The calls go out together: the mock may see them in either order.)
    let mut calls: Vec<usize> = runtime_seen(&mock)
        .await
        .iter()
        .filter(|s| s["model"] == COHERE)
        .map(|s| s["body"]["texts"].as_array().unwrap().len())
        .collect();
    calls.sort_unstable();
    assert_eq!(calls, [4, 96]);

    // A call Bedrock refuses is the answer; the others it billed are metered, in one event.
    let body = json!({"model": format!("@bemb/{TITAN}"), "input": ["a", "throttle-me", "c"]});
    let (status, _, text) = post(&server, "/embeddings", &key, "bemb-429", &body).await;
    assert_eq!(status, 429, "{text}");
    openai_error(&text, None, "Too many requests");
    let m = metered(&server, "bemb-429", 1).await;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].status, m[0].usage), (429, usage(2 * titan)));
    assert_eq!(m[0].cost, super::priced("bedrock", TITAN, usage(2 * titan)));
}
