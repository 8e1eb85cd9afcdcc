//! Azure OpenAI as an upstream: a model → deployment map behind a private endpoint, the
//! integration's `api-version`, the key as `api-key` or (Entra ID) a bearer token; chat,
//! streaming, embeddings and `/v1/messages` metered at Azure's prices.

use serde_json::json;
use tollgate::domain::pricing::TokenUsage;

use super::{billed_once, chat, chat_stream, json_of, native_tenant, post, post_status, streamed};
use crate::{harness, mock};

const KEY: &str = "az-secret-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_goes_to_its_deployment_with_the_integrations_api_version() {
    let oai = mock::start().await;
    let server = harness::start().await;
    // The mock's root stands in for a private endpoint (`https://<resource>.openai.azure.com`).
    let host = oai.url.trim_end_matches("/v1").to_owned();
    let fields = json!({"key": KEY, "configurations": {"custom_host": host,
        "api_version": "2024-12-01-preview", "deployment_id": "ignored-with-a-map",
        "deployments": [{"model": "gpt-4o", "deployment_id": "prod-4o"},
                        {"model": "gpt-35-turbo", "deployment_id": "turbo"},
                        {"model": "text-embedding-3-small", "deployment_id": "embed"}]}});
    let key = native_tenant(&server, "az", "azure-openai", fields).await;
    let fields = json!({"key": "entra-token-0123456789", "configurations": {"custom_host": host,
        "azure_auth_mode": "entra", "deployments": {"gpt-4o-mini": "cheap"}}});
    let entra = native_tenant(&server, "aze", "azure-openai", fields).await;

    let v = json_of(
        &post_status(
            &server,
            "/chat/completions",
            &key,
            "az-plain",
            &chat("az", "gpt-4o"),
            200,
        )
        .await,
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the mock!"
    );
    let text = post_status(
        &server,
        "/chat/completions",
        &key,
        "az-stream",
        &streamed(chat("az", "gpt-4o")),
        200,
    )
    .await;
    let (said, usage) = chat_stream(&text);
    assert_eq!(said, "w0 w1 w2 ", "{text}");
    assert_eq!(usage["completion_tokens"], mock::COMPLETION_TOKENS);
    let body = json!({"model": "@az/text-embedding-3-small", "input": "hi"});
    let v = json_of(&post_status(&server, "/embeddings", &key, "az-embed", &body, 200).await);
    assert_eq!(v["data"][0]["embedding"], json!([0.25, -0.5, 1.0]));
    // /v1/messages is translated to chat.
    let body = json!({"model": "@az/gpt-35-turbo", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]});
    let v = json_of(&post_status(&server, "/messages", &key, "az-msg", &body, 200).await);
    assert_eq!(v["content"][0]["text"], "Hello from the mock!", "{v}");
    let v = json_of(
        &post_status(
            &server,
            "/chat/completions",
            &entra,
            "aze",
            &chat("aze", "gpt-4o-mini"),
            200,
        )
        .await,
    );
    assert_eq!(v["object"], "chat.completion");
    // Entra without a map entry nor a default deployment: a clear 400, nothing sent.
    let (status, _, text) = post(
        &server,
        "/chat/completions",
        &entra,
        "aze-none",
        &chat("aze", "gpt-4o"),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("deployment"), "{text}");

    let calls = oai.seen.azure.lock().clone();
    let api_key = format!("api-key: {KEY}");
    let want = [
        ("prod-4o", "2024-12-01-preview", api_key.as_str()),
        ("prod-4o", "2024-12-01-preview", &api_key),
        ("embed", "2024-12-01-preview", &api_key),
        ("turbo", "2024-12-01-preview", &api_key),
        (
            "cheap",
            "2024-10-21",
            "authorization: Bearer entra-token-0123456789",
        ),
    ];
    let got: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|(d, v, c)| (d.as_str(), v.as_str(), c.as_str()))
        .collect();
    assert_eq!(got, want);
    // Azure's max_completion_tokens for /v1/messages (as OpenAI's).
    let sent = oai.seen.bodies.lock()[3].clone();
    assert_eq!(sent["max_completion_tokens"], 20, "{sent}");

    let chat_usage = TokenUsage {
        prompt: 13,
        completion: mock::COMPLETION_TOKENS,
        ..TokenUsage::default()
    };
    let at = ("azure-openai", "gpt-4o");
    billed_once(
        &server,
        "az-plain",
        at,
        "chat.completions",
        false,
        chat_usage,
    )
    .await;
    billed_once(
        &server,
        "az-stream",
        at,
        "chat.completions",
        true,
        chat_usage,
    )
    .await;
    let embedded = TokenUsage {
        prompt: 4,
        ..TokenUsage::default()
    };
    let at = ("azure-openai", "text-embedding-3-small");
    billed_once(&server, "az-embed", at, "embeddings", false, embedded).await;
    let at = ("azure-openai", "gpt-4o-mini");
    billed_once(&server, "aze", at, "chat.completions", false, chat_usage).await;
}
