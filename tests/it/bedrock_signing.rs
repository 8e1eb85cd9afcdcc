//! Our SigV4 signer, event-stream decoder and STS client against the Bedrock mock, whose
//! signature check is botocore's: a request signed by `providers::bedrock::sign` is accepted,
//! a tampered one is refused; the mock's event streams decode and translate with the usage it
//! billed; AssumeRole's temporary credentials work until they expire.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Value};
use tollgate::providers::bedrock::{
    self, assume_role, converse_response, embed_request, embed_response, invoke_chunk, model_path,
    ConverseStream, Credentials, EventStreamDecoder, StsError,
};
use tollgate::providers::{Event, StreamTranslator};

use super::*;

const REGION: &str = "us-east-1";
const CLAUDE: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";

/// Signs and sends one Bedrock request; `tamper` changes the body after signing.
async fn call(
    mock: &MockBedrock,
    creds: &Credentials,
    model: &str,
    action: &str,
    body: &Value,
    tamper: bool,
) -> reqwest::Response {
    let url = format!("{}{}", mock.url, model_path(model, action));
    let mut body = serde_json::to_vec(body).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    bedrock::sign(
        "POST",
        &url,
        &mut headers,
        &body,
        creds,
        REGION,
        "bedrock",
        SystemTime::now(),
    )
    .unwrap();
    if tamper {
        body.push(b' ');
    }
    reqwest::Client::new()
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A Converse call of `model` with [`hello`], signed with `creds`.
async fn converse(mock: &MockBedrock, creds: &Credentials, model: &str) -> reqwest::Response {
    call(mock, creds, model, "converse", &hello(), false).await
}

/// A ConverseStream answer of `model` to [`hello`], decoded and translated (see [`translate`]).
async fn converse_stream(mock: &MockBedrock, model: &str) -> Result<(Vec<Bytes>, bool), String> {
    let resp = call(
        mock,
        &base_credentials(),
        model,
        "converse-stream",
        &hello(),
        false,
    )
    .await;
    translate(
        &resp.bytes().await.unwrap(),
        &mut ConverseStream::new("m", true),
    )
}

/// AWS's error type header (`x-amzn-errortype`) of an answer.
fn error_type(resp: &reqwest::Response) -> &str {
    resp.headers()["x-amzn-errortype"].to_str().unwrap()
}

/// AssumeRole of `role` at the mock's STS, signed with `creds`, at `now`.
async fn assume(
    mock: &MockBedrock,
    creds: &Credentials,
    role: &str,
    external_id: Option<&str>,
    session: &str,
    now: SystemTime,
) -> Result<(Credentials, SystemTime), StsError> {
    let http = reqwest::Client::new();
    assume_role(
        &http,
        &mock.url,
        creds,
        REGION,
        role,
        external_id,
        session,
        now,
    )
    .await
}

fn hello() -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 50}})
}

/// Decodes an event-stream body and runs it through a translator; the frames, and whether the
/// body ended inside a frame.
fn translate(body: &[u8], t: &mut dyn StreamTranslator) -> Result<(Vec<Bytes>, bool), String> {
    let mut decoder = EventStreamDecoder::new(1 << 20);
    let mut out = Vec::new();
    for piece in body.chunks(7) {
        decoder.push(piece);
        while let Some(m) = decoder.next().map_err(|e| e.0)? {
            t.event(
                Event {
                    name: Some(&m.event_type),
                    data: &m.payload,
                },
                &mut out,
            )
            .map_err(|e| e.0)?;
        }
    }
    let partial = decoder.has_partial();
    if !partial {
        t.finish(&mut out);
    }
    Ok((out, partial))
}

#[tokio::test]
async fn botocore_accepts_our_signature_and_refuses_a_tampered_one() {
    let mock = start().await;
    let resp = converse(&mock, &base_credentials(), CLAUDE).await;
    assert_eq!(resp.status(), 200);
    let (chat, usage) = converse_response(&resp.bytes().await.unwrap(), CLAUDE).unwrap();
    assert_eq!(usage, USAGE);
    assert_eq!(chat["choices"][0]["message"]["content"], TEXT);

    let resp = call(
        &mock,
        &base_credentials(),
        CLAUDE,
        "converse",
        &hello(),
        true,
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert!(error_type(&resp).starts_with("InvalidSignatureException"));
    let err: Value = resp.json().await.unwrap();
    assert!(err["message"]
        .as_str()
        .unwrap()
        .starts_with("The request signature we calculated does not match"));

    let wrong = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..base_credentials()
    };
    let resp = converse(&mock, &wrong, CLAUDE).await;
    assert_eq!(resp.status(), 403);
    let unknown = Credentials {
        access_key_id: "AKIDUNKNOWN".into(),
        ..base_credentials()
    };
    let resp = converse(&mock, &unknown, CLAUDE).await;
    assert_eq!(resp.status(), 403);

    // An inference-profile ARN: `:` and `/` encoded once in the path, twice in the signature.
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0";
    let resp = converse(&mock, &base_credentials(), arn).await;
    assert_eq!(resp.status(), 200);

    // Upstream failures in AWS's shape.
    let resp = converse(&mock, &base_credentials(), "m-fail-throttle").await;
    assert_eq!(resp.status(), 429);
    assert!(error_type(&resp).starts_with("ThrottlingException"));
    let resp = converse(&mock, &base_credentials(), "m-garbage").await;
    assert_eq!(resp.status(), 200);
    assert!(converse_response(&resp.bytes().await.unwrap(), "m").is_err());

    let seen = mock.seen().await;
    let verdicts: Vec<&str> = seen
        .iter()
        .map(|s| s["signature"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "ok",
            "InvalidSignatureException",
            "InvalidSignatureException",
            "UnrecognizedClientException",
            "ok",
            "ok",
            "ok"
        ]
    );
    assert_eq!(seen[4]["model"], arn);
    assert_eq!(seen[0]["body"], hello());
}

/// A chat request with every block kind, translated by `converse_request`, is one the mock's
/// Converse validation (after AWS's API reference) accepts.
#[tokio::test]
async fn translated_requests_are_valid_converse() {
    let mock = start().await;
    let Value::Object(chat) = json!({
        "model": CLAUDE,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"png\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a picture"},
            {"role": "user", "content": "thanks"}
        ],
        "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "stop": "END",
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}
    }) else {
        unreachable!()
    };
    let body = bedrock::converse_request(&chat).unwrap();
    let resp = call(
        &mock,
        &base_credentials(),
        "m-tool",
        "converse",
        &body,
        false,
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (answer, usage) = converse_response(&resp.bytes().await.unwrap(), CLAUDE).unwrap();
    assert_eq!(usage, USAGE);
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    // And an invalid one is the mock's 400, in AWS's shape.
    let resp = call(
        &mock,
        &base_credentials(),
        CLAUDE,
        "converse",
        &json!({"messages": []}),
        false,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .map(|h| h.to_str().unwrap().to_owned());
    let (kind, message) = bedrock::aws_error(kind.as_deref(), &resp.bytes().await.unwrap());
    assert_eq!(kind, "ValidationException");
    assert!(message.contains("messages"), "{message}");
}

#[tokio::test]
async fn converse_streams_decode_and_translate() {
    let mock = start().await;
    let body = json!({
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}]}
    });
    let resp = call(
        &mock,
        &base_credentials(),
        "anthropic.claude-tool-v1:0",
        "converse-stream",
        &body,
        false,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[CONTENT_TYPE],
        "application/vnd.amazon.eventstream"
    );
    let mut t = ConverseStream::new("m", true);
    let (frames, partial) = translate(&resp.bytes().await.unwrap(), &mut t).unwrap();
    assert!(!partial);
    assert_eq!(t.usage(), Some(USAGE));
    let text: String = frames
        .iter()
        .filter_map(|f| std::str::from_utf8(f).unwrap().strip_prefix("data: {"))
        .filter_map(|f| serde_json::from_str::<Value>(&format!("{{{f}")).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, TEXT);
    let all = frames
        .iter()
        .map(|f| std::str::from_utf8(f).unwrap())
        .collect::<String>();
    assert!(all.contains(r#""finish_reason":"tool_calls""#), "{all}");
    assert!(all.contains(r#""name":"lookup""#));
    assert!(all.ends_with("data: [DONE]\n\n"));

    let (_, partial) = converse_stream(&mock, "m-truncate").await.unwrap();
    assert!(partial, "a stream cut inside a frame is visible");

    let e = converse_stream(&mock, "m-garbage").await.unwrap_err();
    assert!(e.contains("event stream"), "{e}");

    let (frames, _) = converse_stream(&mock, "m-stream-exception").await.unwrap();
    let last = std::str::from_utf8(frames.last().unwrap()).unwrap();
    assert!(last.contains("modelStreamErrorException"), "{last}");
    assert_eq!(mock.seen().await.len(), 4);
    mock.clear_seen().await;
    assert!(mock.seen().await.is_empty());
}

#[tokio::test]
async fn anthropic_invoke_streams_unwrap() {
    let mock = start().await;
    let Value::Object(req) = json!({"model": CLAUDE, "stream": true, "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]})
    else {
        unreachable!()
    };
    let body = bedrock::invoke_anthropic_body(&req);
    let resp = call(
        &mock,
        &base_credentials(),
        CLAUDE,
        "invoke-with-response-stream",
        &body,
        false,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let mut decoder = EventStreamDecoder::new(1 << 20);
    decoder.push(&bytes);
    let mut events = Vec::new();
    while let Some(m) = decoder.next().unwrap() {
        assert_eq!(m.event_type, "chunk");
        events.push(serde_json::from_slice::<Value>(&invoke_chunk(&m.payload).unwrap()).unwrap());
    }
    assert!(!decoder.has_partial());
    assert_eq!(events[0]["type"], "message_start");
    assert_eq!(events[0]["message"]["usage"]["cache_read_input_tokens"], 5);
    assert_eq!(events.last().unwrap()["type"], "message_stop");

    let resp = call(&mock, &base_credentials(), CLAUDE, "invoke", &body, false).await;
    assert_eq!(resp.status(), 200);
    let msg: Value = resp.json().await.unwrap();
    assert_eq!(msg["usage"]["input_tokens"], INPUT_TOKENS);
    // The mock checks the body is Bedrock's: a raw Messages request (with model) is refused.
    let resp = call(
        &mock,
        &base_credentials(),
        CLAUDE,
        "invoke",
        &Value::Object(req),
        false,
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn embeddings_meter_what_the_mock_billed() {
    let mock = start().await;
    let input = json!(["one", "two", "three"]);
    for (model, expected) in [
        ("amazon.titan-embed-text-v2:0", 3 * TITAN_TOKENS),
        ("cohere.embed-english-v3", 3 * COHERE_TOKENS),
    ] {
        let mut bodies = Vec::new();
        let mut header_tokens = 0;
        for req in embed_request(model, &input).unwrap() {
            let resp = call(&mock, &base_credentials(), model, "invoke", &req, false).await;
            assert_eq!(resp.status(), 200, "{model}");
            header_tokens += resp.headers()["x-amzn-bedrock-input-token-count"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            bodies.push(resp.bytes().await.unwrap());
        }
        let refs: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
        let out = embed_response(model, &input, &refs, Some(header_tokens), false).unwrap();
        assert_eq!(out.usage.map(|u| u.prompt), Some(expected), "{model}");
        assert_eq!(out.body["data"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn assumed_roles_work_until_they_expire() {
    let mock = start().await;
    let now = SystemTime::now();
    let (temp, expires) = assume(
        &mock,
        &base_credentials(),
        ROLE_ARN,
        None,
        "tollgate-test",
        now,
    )
    .await
    .unwrap();
    assert!(temp.access_key_id.starts_with("ASIA"));
    assert!(temp.session_token.is_some());
    let left = expires.duration_since(now).unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3601),
        "{left:?}"
    );
    let resp = converse(&mock, &temp, CLAUDE).await;
    assert_eq!(resp.status(), 200);
    // The token must come along.
    let tokenless = Credentials {
        session_token: None,
        ..temp.clone()
    };
    assert_eq!(converse(&mock, &tokenless, CLAUDE).await.status(), 403);

    // Credentials that expire: refused as expired afterwards.
    let (short, _) = assume(
        &mock,
        &base_credentials(),
        ROLE_ARN,
        None,
        "tollgate-ttl-1",
        now,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = converse(&mock, &short, CLAUDE).await;
    assert_eq!(resp.status(), 403);
    assert!(error_type(&resp).starts_with("ExpiredTokenException"));

    // External ids, and STS's refusals with code and message (never the secret).
    let role = "arn:aws:iam::123456789012:role/needs-external-id";
    let e = assume(&mock, &base_credentials(), role, None, "tollgate-test", now)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StsError::Refused { status: 403, code, .. } if code == "AccessDenied"),
        "{e:?}"
    );
    assume(
        &mock,
        &base_credentials(),
        role,
        Some(EXTERNAL_ID),
        "tollgate-test",
        now,
    )
    .await
    .unwrap();
    let wrong = Credentials {
        secret_access_key: "nope".into(),
        ..base_credentials()
    };
    let e = assume(&mock, &wrong, ROLE_ARN, None, "tollgate-test", now)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StsError::Refused { code, .. } if code == "SignatureDoesNotMatch"),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("nope"));
    let sts = mock.seen_by("sts").await;
    assert_eq!(sts[0]["body"]["RoleSessionName"], "tollgate-test");
    assert_eq!(sts[0]["body"]["DurationSeconds"], "3600");
    assert_eq!(sts[3]["body"]["ExternalId"], EXTERNAL_ID);
}
