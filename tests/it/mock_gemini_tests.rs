//! The Gemini adapter against the Gemini / Vertex mocks, and the Vertex JWT grant against the
//! Python token endpoint (an independent JWT implementation verifying our assertion).

use serde_json::{json, Value};
use tollgate::domain::pricing::TokenUsage;
use tollgate::providers::gemini::{self, EmbedApi};
use tollgate::providers::{Event, StreamTranslator};

use super::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chat(extra: Value) -> serde_json::Map<String, Value> {
    let mut body = json!({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body.as_object().unwrap().clone()
}

async fn post(url: String, auth: (&str, &str), body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header(auth.0, auth.1)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The stream's frames through [`gemini::ChatStream`]: (joined text, frames, usage).
async fn translate_stream(resp: reqwest::Response) -> (String, Vec<Value>, Option<TokenUsage>) {
    let raw = resp.text().await.unwrap().replace("\r\n", "\n");
    let mut t = gemini::ChatStream::new("m", true);
    let mut out = Vec::new();
    for event in raw.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let data = event.strip_prefix("data: ").unwrap();
        t.event(
            Event {
                name: None,
                data: data.as_bytes(),
            },
            &mut out,
        )
        .unwrap();
    }
    t.finish(&mut out);
    let frames: Vec<Value> = out
        .iter()
        .map(|b| std::str::from_utf8(b).unwrap())
        .filter(|s| !s.contains("[DONE]"))
        .map(|s| serde_json::from_str(s.trim().strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let text = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, frames, t.usage())
}

#[tokio::test]
async fn gemini_chat_plain_and_streaming() {
    let mock = start().await;
    let body = gemini::chat_request(&chat(json!({"max_tokens": 50}))).unwrap();
    let url = format!(
        "{}{}",
        mock.gemini_url(),
        gemini::model_path("gemini-2.5-flash", false)
    );
    let resp = post(url, ("x-goog-api-key", GEMINI_KEY), &body).await;
    assert_eq!(resp.status(), 200);
    let (out, usage) =
        gemini::chat_response(&resp.bytes().await.unwrap(), "gemini-2.5-flash").unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], TEXT);
    assert_eq!(usage, Some(BILLED));
    let (path, sent) = mock.seen.bodies.lock()[0].clone();
    assert_eq!(path, "gemini-2.5-flash:generateContent");
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );

    let url = format!(
        "{}{}",
        mock.gemini_url(),
        gemini::model_path("gemini-2.5-flash", true)
    );
    let resp = post(url, ("x-goog-api-key", GEMINI_KEY), &body).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, frames, usage) = translate_stream(resp).await;
    assert_eq!(text, TEXT);
    assert_eq!(usage, Some(BILLED));
    assert_eq!(
        frames.last().unwrap()["usage"]["completion_tokens"],
        CANDIDATES + THOUGHTS
    );
}

#[tokio::test]
async fn gemini_behaviours() {
    let mock = start().await;
    let body = gemini::chat_request(&chat(json!({}))).unwrap();
    let call = |model: &str, stream: bool| {
        let url = format!("{}{}", mock.gemini_url(), gemini::model_path(model, stream));
        post(url, ("x-goog-api-key", GEMINI_KEY), &body)
    };
    let r = call("fail-429", false).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "RESOURCE_EXHAUSTED"
    );
    assert_eq!(call("fail-500", true).await.status(), 500);
    let r = call("garbage", false).await;
    assert!(gemini::chat_response(&r.bytes().await.unwrap(), "m").is_err());
    let r = call("no-usage", false).await;
    assert_eq!(
        gemini::chat_response(&r.bytes().await.unwrap(), "m")
            .unwrap()
            .1,
        None
    );
    let r = call("blocked", false).await;
    let (out, u) = gemini::chat_response(&r.bytes().await.unwrap(), "m").unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(u.unwrap().prompt, PROMPT);
    let r = call("tool-call", false).await;
    let (out, _) = gemini::chat_response(&r.bytes().await.unwrap(), "m").unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );

    let (_, frames, usage) = translate_stream(call("tool-call", true).await).await;
    assert_eq!(frames[1]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(usage, Some(BILLED));
    let (_, _, usage) = translate_stream(call("no-usage", true).await).await;
    assert_eq!(usage, None);
    // A stream cut inside an event: its last data is not JSON.
    let raw = call("truncated", true).await.text().await.unwrap();
    let last = raw
        .replace("\r\n", "\n")
        .rsplit("\n\n")
        .next()
        .unwrap()
        .to_owned();
    let mut t = gemini::ChatStream::new("m", false);
    let data = last.strip_prefix("data: ").unwrap();
    assert!(!t.ended_cleanly());
    assert!(t
        .event(
            Event {
                name: None,
                data: data.as_bytes()
            },
            &mut Vec::new()
        )
        .is_err());
}

#[tokio::test]
async fn gemini_api_key_is_required() {
    let mock = start().await;
    let body = gemini::chat_request(&chat(json!({}))).unwrap();
    let url = format!("{}{}", mock.gemini_url(), gemini::model_path("m", false));
    let r = post(url.clone(), ("x-other", "1"), &body).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "PERMISSION_DENIED"
    );
    let r = post(url.clone(), ("x-goog-api-key", "wrong"), &body).await;
    assert_eq!(r.status(), 400);
    let r = post(format!("{url}?key={GEMINI_KEY}"), ("x-other", "1"), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.seen.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn gemini_embeddings() {
    let mock = start().await;
    for (input, n) in [(json!("one"), 1), (json!(["a", "b", "c"]), 3)] {
        let req = json!({"model": "text-embedding-004", "input": input, "dimensions": 4});
        let call = gemini::embed_request(
            req.as_object().unwrap(),
            "text-embedding-004",
            EmbedApi::Gemini,
        )
        .unwrap();
        let r = post(
            format!("{}{}", mock.gemini_url(), call.path),
            ("x-goog-api-key", GEMINI_KEY),
            &call.body,
        )
        .await;
        assert_eq!(r.status(), 200);
        let (out, usage) =
            gemini::embed_response(&r.bytes().await.unwrap(), "text-embedding-004", false).unwrap();
        assert_eq!(out["data"].as_array().unwrap().len(), n);
        assert_eq!(out["data"][0]["embedding"], json!([0.25, -0.5, 1.0, 0.25]));
        assert_eq!(usage, None);
    }
}

#[tokio::test]
async fn vertex_grant_is_verified_and_its_token_works() {
    let mock = start().await;
    let tokens = start_vertex_token(3600).await;
    let sa = gemini::parse_service_account(&tokens.service_account_json).unwrap();
    assert_eq!(sa.token_uri, tokens.url);
    let http = reqwest::Client::new();
    let (token, expires_in) = gemini::fetch_token(&http, &sa, now()).await.unwrap();
    assert_eq!(expires_in, 3600);
    assert!(token_is_valid(&token));
    let bearer = format!("Bearer {token}");

    let body = gemini::chat_request(&chat(json!({}))).unwrap();
    let url = format!(
        "{}{}",
        mock.vertex_url("google"),
        gemini::model_path("gemini-2.5-pro", false)
    );
    let r = post(url.clone(), ("authorization", &bearer), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gemini::chat_response(&r.bytes().await.unwrap(), "m")
            .unwrap()
            .1,
        Some(BILLED)
    );
    let r = post(url, ("authorization", "Bearer ya29.forged"), &body).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "UNAUTHENTICATED"
    );

    let req = json!({"input": ["a", "b"]});
    let call = gemini::embed_request(
        req.as_object().unwrap(),
        "text-embedding-005",
        EmbedApi::Vertex,
    )
    .unwrap();
    let r = post(
        format!("{}{}", mock.vertex_url("google"), call.path),
        ("authorization", &bearer),
        &call.body,
    )
    .await;
    let (out, usage) =
        gemini::embed_response(&r.bytes().await.unwrap(), "text-embedding-005", false).unwrap();
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(usage.unwrap().prompt, 2 * EMBED_TOKENS);

    let messages = json!({"model": "claude-sonnet-4@20250514", "max_tokens": 10,
                          "messages": [{"role": "user", "content": "Hi"}]});
    let body = gemini::vertex_anthropic_body(messages.as_object().unwrap());
    for stream in [false, true] {
        let path = gemini::vertex_anthropic_path("claude-sonnet-4@20250514", stream);
        let r = post(
            format!("{}{path}", mock.vertex_url("anthropic")),
            ("authorization", &bearer),
            &body,
        )
        .await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("Claude on Vertex!") || text.contains("Claude on Vertex"),
            "{text}"
        );
    }
    let url = format!(
        "{}{}",
        mock.vertex_url("anthropic"),
        gemini::VERTEX_ANTHROPIC_COUNT_TOKENS_PATH
    );
    let r = post(url, ("authorization", &bearer), &messages).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"input_tokens": 3}));
    assert_eq!(tokens.stats().await, json!({"issued": 1, "refused": 0}));
}

#[tokio::test]
async fn vertex_grant_refuses_a_wrong_signature_or_issuer() {
    let tokens = start_vertex_token(3600).await;
    let other = start_vertex_token(3600).await;
    let http = reqwest::Client::new();
    let sa = gemini::parse_service_account(&tokens.service_account_json).unwrap();
    // Another account's key, presented as this one: the signature does not verify.
    let mut forged = gemini::parse_service_account(&other.service_account_json).unwrap();
    forged.client_email = sa.client_email.clone();
    forged.private_key_id = sa.private_key_id.clone();
    forged.token_uri = sa.token_uri.clone();
    let e = gemini::fetch_token(&http, &forged, now())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("invalid_grant") && msg.contains("Signature"),
        "{msg}"
    );
    assert!(!msg.contains("PRIVATE KEY"), "{msg}");
    let mut wrong_iss = sa.clone();
    wrong_iss.client_email = "someone@else.iam.gserviceaccount.com".into();
    let e = gemini::fetch_token(&http, &wrong_iss, now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    // An assertion issued two hours ago has expired.
    let e = gemini::fetch_token(&http, &sa, now() - 7200)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(tokens.stats().await, json!({"issued": 0, "refused": 3}));
}

#[tokio::test]
async fn vertex_token_expires_and_a_fresh_one_works() {
    let mock = start().await;
    let tokens = start_vertex_token(1).await;
    let sa = gemini::parse_service_account(&tokens.service_account_json).unwrap();
    let http = reqwest::Client::new();
    let body = gemini::chat_request(&chat(json!({}))).unwrap();
    let url = format!(
        "{}{}",
        mock.vertex_url("google"),
        gemini::model_path("gemini-2.5-pro", false)
    );
    let (token, expires_in) = gemini::fetch_token(&http, &sa, now()).await.unwrap();
    assert_eq!(expires_in, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = post(
        url.clone(),
        ("authorization", &format!("Bearer {token}")),
        &body,
    )
    .await;
    assert_eq!(r.status(), 401);
    let (token, _) = gemini::fetch_token(&http, &sa, now()).await.unwrap();
    let r = post(url, ("authorization", &format!("Bearer {token}")), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(tokens.stats().await["issued"], 2);
}

#[tokio::test]
async fn the_adapters_bodies_are_ones_gemini_takes() {
    let mock = start().await;
    let url = format!(
        "{}{}",
        mock.gemini_url(),
        gemini::model_path("tool-call", false)
    );
    let tools = json!({
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
            "additionalProperties": false, "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "temperature": 0.2, "stop": ["x"], "seed": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema":
            {"type": "object", "additionalProperties": false, "properties": {}}}},
    });
    let body = gemini::chat_request(&chat(tools.clone())).unwrap();
    let r = post(url.clone(), ("x-goog-api-key", GEMINI_KEY), &body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (out, _) = gemini::chat_response(&r.bytes().await.unwrap(), "m").unwrap();
    let call = out["choices"][0]["message"]["tool_calls"][0].clone();

    // The next turn: the call and its result, as an OpenAI client sends them back.
    let mut turn = chat(tools);
    let messages = turn["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "", "tool_calls": [call.clone()]}));
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"c\": 21}"}));
    let body = gemini::chat_request(&turn).unwrap();
    let r = post(url.clone(), ("x-goog-api-key", GEMINI_KEY), &body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // What Gemini refuses, the mock refuses too.
    let mut raw = body.clone();
    raw["tools"][0]["functionDeclarations"][0]["parameters"]["additionalProperties"] = json!(false);
    let r = post(url.clone(), ("x-goog-api-key", GEMINI_KEY), &raw).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("additionalProperties"));
    let r = post(
        url,
        ("x-goog-api-key", GEMINI_KEY),
        &json!({"contents": [{"role": "user", "parts": [{"text": ""}]}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
}
