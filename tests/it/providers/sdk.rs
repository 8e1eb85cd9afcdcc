//! The real `anthropic` SDK on `/v1/messages` (as Claude Code calls it) and the real `openai` SDK
//! on chat, each on native upstreams: answers, exact metering of every attempt at the shipped
//! price table's rates, and errors in the caller's SDK's own classes.

use serde_json::{json, Value};
use tollgate::domain::pricing::TokenUsage;

use super::{
    anthropic_fields, bedrock_fields, billed_once, gemini_fields, metered, native_tenant, unbilled,
};
use crate::mock_bedrock::SECRET_ACCESS_KEY;
use crate::{harness, mock, mock_anthropic, mock_bedrock, mock_gemini};

const CLAUDE: &str = "claude-3-7-sonnet-20250219";
const BEDROCK_CLAUDE: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";
const NOVA: &str = "amazon.nova-pro-v1:0";
const GEMINI: &str = "gemini-2.0-flash-001";
const GPT: &str = "gpt-4o-mini";
const VERTEX_GEMINI: &str = "gemini-2.0-flash";
const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-english-v3";
const GEMINI_EMBED: &str = "gemini-embedding-001";
const VERTEX_EMBED: &str = "text-embedding-004";

async fn run(part: &str, server: &harness::Server, upstreams: Value) -> Value {
    let stdout = harness::run_sdk(
        "anthropic_sdk.py",
        &[
            ("TOLLGATE_URL", &server.url),
            ("PART", part),
            ("UPSTREAMS", &upstreams.to_string()),
        ],
    )
    .await;
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .expect("the script printed its result")
}

/// An Anthropic message usage object as the SDK parsed it, for `u`.
fn anthropic_usage(v: &Value, u: TokenUsage) {
    assert_eq!(
        v["input_tokens"].as_u64().unwrap()
            + v["cache_read_input_tokens"].as_u64().unwrap_or(0)
            + v["cache_creation_input_tokens"].as_u64().unwrap_or(0),
        u.prompt,
        "{v}"
    );
    assert_eq!(v["output_tokens"].as_u64(), Some(u.completion), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_on_messages_to_anthropic_bedrock_and_openai_format() {
    let ant = mock_anthropic::start().await;
    let bdr = mock_bedrock::start().await;
    let oai = mock::start().await;
    let server = harness::start().await;
    let ant_key = native_tenant(&server, "sdk-ant", "anthropic", anthropic_fields(&ant.url)).await;
    let bdr_key = native_tenant(
        &server,
        "sdk-bdr",
        "bedrock",
        bedrock_fields(&bdr, SECRET_ACCESS_KEY),
    )
    .await;
    let oai_key = native_tenant(
        &server,
        "sdk-oai",
        "openai",
        json!({"key": "sk-mock-provider-key-0123456789", "configurations": {"custom_host": oai.url}}),
    )
    .await;
    let upstreams = json!([
        {"name": "ant", "slug": "sdk-ant", "key": ant_key, "model": CLAUDE, "fail": "fail-429",
         "route": "model", "auth": "x-api-key"},
        {"name": "bdr", "slug": "sdk-bdr", "key": bdr_key, "model": BEDROCK_CLAUDE,
         "fail": "anthropic.fail-throttle", "route": "model", "auth": "bearer"},
        {"name": "oai", "slug": "sdk-oai", "key": oai_key, "model": GPT, "fail": "fail-429",
         "route": "header", "auth": "x-api-key"},
    ]);
    let r = run("anthropic", &server, upstreams).await;

    // Answers, as the SDK parsed them.
    let texts = [
        ("ant", mock_anthropic::TEXT, mock_anthropic::TEXT),
        ("bdr", mock_bedrock::TEXT, mock_bedrock::TEXT),
        ("oai", "Hello from the mock!", "w0 w1 w2 "),
    ];
    for (name, whole, streamed) in texts {
        let u = &r[name];
        assert_eq!(
            (u["plain"]["type"].as_str(), u["plain"]["role"].as_str()),
            (Some("message"), Some("assistant")),
            "{name}: {u}"
        );
        assert_eq!(u["plain"]["text"], whole, "{name}");
        assert_eq!(u["plain"]["stop_reason"], "end_turn", "{name}");
        assert_eq!(u["stream"]["text"], streamed, "{name}");
        assert_eq!(u["stream"]["final_text"], streamed, "{name}");
        assert_eq!(u["stream"]["stop_reason"], "end_turn", "{name}");
        assert_eq!(u["tool"]["stop_reason"], "tool_use", "{name}: {u}");
        assert_eq!(u["tool"]["name"], "lookup", "{name}");
        assert_eq!(u["rate_limited"]["class"], "RateLimitError", "{name}");
        assert_eq!(u["rate_limited"]["status"], 429, "{name}");
        assert_eq!(u["rate_limited"]["body"]["type"], "error", "{name}: {u}");
        assert_eq!(
            u["rate_limited"]["body"]["error"]["type"], "rate_limit_error",
            "{name}"
        );
        // count_tokens: Anthropic's and Bedrock's counters (each checks the body it is sent);
        // the gateway's own estimate of the same prompt for an OpenAI-format provider.
        let Value::Object(prompt) = json!({"messages": [{"role": "user", "content": "hi"}]}) else {
            unreachable!()
        };
        let count = match name {
            "ant" => mock_anthropic::COUNT_TOKENS,
            "bdr" => mock_bedrock::COUNT_PER_MESSAGE,
            _ => tollgate::proxy::meter::estimate_prompt(&prompt),
        };
        assert_eq!(u["count_tokens"].as_u64(), Some(count), "{name}: {u}");
    }
    assert_eq!(r["ant"]["tool"]["id"], mock_anthropic::TOOL_ID);
    assert_eq!(r["ant"]["tool"]["input"], mock_anthropic::tool_input());
    assert_eq!(r["bdr"]["tool"]["input"], json!({"q": "mock"}));
    assert_eq!(r["oai"]["tool"]["id"], mock::TOOL_CALL_ID);
    assert_eq!(
        r["oai"]["tool"]["input"],
        serde_json::from_str::<Value>(mock::TOOL_ARGUMENTS).unwrap()
    );
    assert_eq!(r["ant"]["tool"]["after_text"], mock_anthropic::TEXT);
    assert_eq!(r["bdr"]["tool"]["after_text"], mock_bedrock::TEXT);
    assert_eq!(r["oai"]["tool"]["after_text"], "Hello from the mock!");
    anthropic_usage(&r["ant"]["plain"]["usage"], mock_anthropic::billed());
    anthropic_usage(&r["ant"]["stream"]["usage"], mock_anthropic::billed());
    anthropic_usage(&r["bdr"]["plain"]["usage"], mock_bedrock::USAGE);
    anthropic_usage(&r["bdr"]["stream"]["usage"], mock_bedrock::USAGE);
    for case in ["plain", "stream"] {
        let usage = &r["oai"][case]["usage"];
        assert_eq!(
            (
                usage["input_tokens"].as_u64(),
                usage["output_tokens"].as_u64()
            ),
            (Some(12), Some(7)),
            "{usage}"
        );
    }
    // The provider's own words reach the caller, whatever its error shape was.
    let said = |name: &str| {
        r[name]["rate_limited"]["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(said("ant"), "mock rate_limit_error");
    assert_eq!(
        said("bdr"),
        "Too many requests, please wait before trying again."
    );
    assert_eq!(said("oai"), "mock 429 Too Many Requests");

    // What the upstreams were sent: the tool_result turn reached each in its own protocol, the
    // key reached Anthropic as x-api-key (the caller's Tollgate key, never).
    let sent = ant.seen.bodies.lock().clone();
    assert_eq!(sent[3]["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(
        sent[3]["messages"][2]["content"][0]["tool_use_id"],
        mock_anthropic::TOOL_ID
    );
    for h in ant.seen.headers.lock().iter() {
        assert_eq!(h["x-api-key"], "sk-ant-test-0123456789");
    }
    let invoked = bdr.seen_by("bedrock").await;
    assert!(
        invoked.iter().all(|s| s["signature"] == "ok"),
        "{invoked:?}"
    );
    let actions: Vec<_> = invoked.iter().map(|s| s["action"].clone()).collect();
    assert_eq!(
        actions,
        [
            "invoke",
            "invoke-with-response-stream",
            "invoke",
            "invoke",
            "count-tokens",
            "invoke"
        ]
        .map(Value::from),
        "InvokeModel for every call, CountTokens for the count"
    );
    assert_eq!(
        invoked[3]["body"]["messages"][2]["content"][0]["tool_use_id"],
        "toolu_bdrk_mock1"
    );
    let chats = oai.seen.bodies.lock().clone();
    assert_eq!(chats.len(), 5, "{chats:?}");
    assert_eq!(chats[3]["messages"][2]["role"], "tool", "{}", chats[3]);
    assert_eq!(chats[3]["messages"][2]["tool_call_id"], mock::TOOL_CALL_ID);
    assert_eq!(chats[1]["stream_options"]["include_usage"], true);

    // Every attempt metered once, exactly as billed; the 429s with nothing; count_tokens never.
    let cases = [
        ("plain", false),
        ("stream", true),
        ("tool", false),
        ("tool-result", false),
    ];
    for (i, (case, streamed)) in cases.into_iter().enumerate() {
        let at = ("anthropic", CLAUDE);
        billed_once(
            &server,
            &format!("ant-{case}"),
            at,
            "messages",
            streamed,
            mock_anthropic::billed(),
        )
        .await;
        let at = ("bedrock", BEDROCK_CLAUDE);
        billed_once(
            &server,
            &format!("bdr-{case}"),
            at,
            "messages",
            streamed,
            mock_bedrock::USAGE,
        )
        .await;
        let usage = TokenUsage {
            prompt: mock::prompt_tokens(&chats[i]),
            completion: mock::COMPLETION_TOKENS,
            ..TokenUsage::default()
        };
        billed_once(
            &server,
            &format!("oai-{case}"),
            ("openai", GPT),
            "messages",
            streamed,
            usage,
        )
        .await;
    }
    for name in ["ant", "bdr", "oai"] {
        unbilled(&server, &format!("{name}-429"), 429).await;
        assert!(metered(&server, &format!("{name}-count"), 0)
            .await
            .is_empty());
    }

    // The gateway's own refusals, as the SDK's classes with Anthropic's error body.
    let e = &r["unknown_provider"];
    assert_eq!(
        (e["class"].as_str(), e["status"].as_u64()),
        (Some("BadRequestError"), Some(400)),
        "{e}"
    );
    assert_eq!(e["body"]["type"], "error");
    assert_eq!(e["body"]["error"]["type"], "invalid_request_error");
    assert!(
        e["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody"),
        "{e}"
    );
    for e in [&r["bad_key"], &r["bad_key_count"]] {
        assert_eq!(
            (e["class"].as_str(), e["status"].as_u64()),
            (Some("AuthenticationError"), Some(401)),
            "{e}"
        );
        assert_eq!(e["body"]["type"], "error");
        assert_eq!(e["body"]["error"]["type"], "authentication_error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_and_embeddings_to_anthropic_bedrock_gemini_and_vertex() {
    let ant = mock_anthropic::start().await;
    let bdr = mock_bedrock::start().await;
    let gem = mock_gemini::start().await;
    let token = mock_gemini::start_vertex_token(3600).await;
    let server = harness::start().await;
    let ant_key = native_tenant(&server, "oa-ant", "anthropic", anthropic_fields(&ant.url)).await;
    let bdr_key = native_tenant(
        &server,
        "oa-bdr",
        "bedrock",
        bedrock_fields(&bdr, SECRET_ACCESS_KEY),
    )
    .await;
    let fields = gemini_fields(&gem, mock_gemini::GEMINI_KEY);
    let gem_key = native_tenant(&server, "oa-gem", "google", fields).await;
    let fields = json!({"configurations": {"custom_host": gem.vertex_url("google"),
        "vertex_project_id": "mock-project", "vertex_region": "us-central1",
        "vertex_service_account_json": token.service_account_json}});
    let vtx_key = native_tenant(&server, "oa-vtx", "vertex-ai", fields).await;
    let upstreams = json!([
        {"name": "ant", "slug": "oa-ant", "key": ant_key, "model": CLAUDE, "embed": []},
        {"name": "bdr", "slug": "oa-bdr", "key": bdr_key, "model": NOVA,
         "embed": [[TITAN, "hello"], [COHERE, ["a", "b"]]]},
        {"name": "gem", "slug": "oa-gem", "key": gem_key, "model": GEMINI,
         "embed": [[GEMINI_EMBED, "hello"], [GEMINI_EMBED, ["a", "b"]]]},
        {"name": "vtx", "slug": "oa-vtx", "key": vtx_key, "model": VERTEX_GEMINI,
         "embed": [[VERTEX_EMBED, ["a", "b"]]]},
    ]);
    let r = run("openai", &server, upstreams).await;

    let gemini = mock_gemini::BILLED;
    let upstreams = [
        (
            "ant",
            ("anthropic", CLAUDE),
            mock_anthropic::TEXT,
            mock_anthropic::billed(),
        ),
        (
            "bdr",
            ("bedrock", NOVA),
            mock_bedrock::TEXT,
            mock_bedrock::USAGE,
        ),
        ("gem", ("google", GEMINI), mock_gemini::TEXT, gemini),
        (
            "vtx",
            ("vertex-ai", VERTEX_GEMINI),
            mock_gemini::TEXT,
            gemini,
        ),
    ];
    for (name, at, text, usage) in upstreams {
        let u = &r[name];
        assert_eq!(u["chat"]["text"], text, "{name}: {u}");
        assert_eq!(u["chat"]["finish_reason"], "stop", "{name}");
        assert_eq!(u["stream"]["text"], text, "{name}");
        assert_eq!(u["stream"]["last_has_usage"], true, "{name}: {u}");
        for usage_json in [&u["chat"]["usage"], &u["stream"]["usage_chunks"][0]] {
            assert_eq!(
                usage_json["prompt_tokens"].as_u64(),
                Some(usage.prompt),
                "{name}: {u}"
            );
            assert_eq!(
                usage_json["completion_tokens"].as_u64(),
                Some(usage.completion),
                "{name}"
            );
            assert_eq!(
                usage_json["prompt_tokens_details"]["cached_tokens"].as_u64(),
                Some(usage.cached),
                "{name}"
            );
        }
        assert_eq!(
            u["stream"]["usage_chunks"].as_array().unwrap().len(),
            1,
            "{name}"
        );
        for (case, streamed) in [
            ("chat", false),
            ("chat-stream", true),
            ("chat-tools", false),
        ] {
            let trace = format!("{name}-{case}");
            billed_once(&server, &trace, at, "chat.completions", streamed, usage).await;
        }
    }
    // Tools: Anthropic's mock calls the tool; Bedrock's and Gemini's answer text (their tool
    // calls are proven in their own tests) but were sent the tool in their protocols.
    let t = &r["ant"]["tools"];
    assert_eq!(t["finish_reason"], "tool_calls", "{t}");
    assert_eq!(t["tool_calls"][0]["name"], "lookup");
    assert_eq!(
        t["tool_calls"][0]["arguments"],
        mock_anthropic::tool_input()
    );
    assert_eq!(ant.seen.bodies.lock()[2]["tools"][0]["name"], "lookup");
    assert_eq!(r["bdr"]["tools"]["text"], mock_bedrock::TEXT);
    let converse = bdr.seen_by("bedrock").await;
    let actions: Vec<_> = converse.iter().map(|s| s["action"].clone()).collect();
    assert_eq!(
        actions,
        [
            "converse",
            "converse-stream",
            "converse",
            "invoke",
            "invoke"
        ]
        .map(Value::from)
    );
    assert_eq!(
        converse[2]["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "lookup"
    );
    assert_eq!(r["gem"]["tools"]["text"], mock_gemini::TEXT);
    let (_, body) = gem.seen.bodies.lock()[2].clone();
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["name"], "lookup",
        "{body}"
    );

    // Embeddings: one vector per input, metered from the provider's count (Titan's body,
    // Cohere's header, Vertex's statistics) or estimated where Gemini reports none.
    let e = &r["ant"]["embed_refused"];
    assert_eq!(
        (e["class"].as_str(), e["status"].as_u64()),
        (Some("BadRequestError"), Some(400)),
        "{e}"
    );
    assert!(metered(&server, "ant-embed-refused", 0).await.is_empty());
    let provider_counted = [
        ("bdr", 0, ("bedrock", TITAN), 1, mock_bedrock::TITAN_TOKENS),
        (
            "bdr",
            1,
            ("bedrock", COHERE),
            2,
            2 * mock_bedrock::COHERE_TOKENS,
        ),
        (
            "vtx",
            0,
            ("vertex-ai", VERTEX_EMBED),
            2,
            2 * mock_gemini::EMBED_TOKENS,
        ),
    ];
    for (name, i, at, vectors, tokens) in provider_counted {
        let got = &r[name]["embed"][i];
        assert_eq!(
            got["vectors"].as_array().unwrap().len(),
            vectors,
            "{name}: {got}"
        );
        assert_eq!(got["prompt_tokens"].as_u64(), Some(tokens), "{name}: {got}");
        let usage = TokenUsage {
            prompt: tokens,
            ..TokenUsage::default()
        };
        billed_once(
            &server,
            &format!("{name}-embed-{i}"),
            at,
            "embeddings",
            false,
            usage,
        )
        .await;
    }
    for (i, vectors) in [(0, 1), (1, 2)] {
        let got = &r["gem"]["embed"][i];
        assert_eq!(got["vectors"].as_array().unwrap().len(), vectors, "{got}");
        let m = metered(&server, &format!("gem-embed-{i}"), 1).await;
        assert_eq!((m.len(), m[0].source.as_str()), (1, "estimated"), "{m:?}");
        assert_eq!(
            Some(m[0].usage.prompt),
            got["prompt_tokens"].as_u64(),
            "{m:?}"
        );
        assert_eq!(m[0].cost, super::priced("google", GEMINI_EMBED, m[0].usage));
    }
}
