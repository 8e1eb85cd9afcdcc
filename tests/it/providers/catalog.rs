//! The provider catalog, and integrations checked against it: unknown providers and missing
//! credential fields are a 400 naming what is missing; secret fields are sealed, write-only and
//! masked.

use serde_json::json;

use crate::harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_lists_every_provider_with_its_fields() {
    let server = harness::start().await;
    let (status, _, v) = harness::call(
        "GET",
        &format!("{}/v1/ai-providers", server.url),
        Some(&server.admin_key),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    for id in [
        "openai",
        "azure-openai",
        "anthropic",
        "bedrock",
        "google",
        "vertex-ai",
        "x-ai",
        "ollama",
        "vllm",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let bedrock = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "bedrock")
        .unwrap();
    let secret = bedrock["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "aws_secret_access_key")
        .unwrap();
    assert_eq!(secret["secret"], true);
    let (status, _, _) = harness::call(
        "GET",
        &format!("{}/v1/ai-providers", server.url),
        None,
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_need_a_known_provider_and_its_fields() {
    let server = harness::start().await;
    let create = |body: serde_json::Value| {
        let url = format!("{}/v1/integrations", server.url);
        let key = server.admin_key.clone();
        async move { harness::call("POST", &url, Some(&key), Some(body)).await }
    };
    let (status, _, v) = create(json!({"name": "x", "ai_provider_id": "no-such-ai"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("no-such-ai"), "{v}");
    let (status, _, v) = create(json!({"name": "b", "ai_provider_id": "bedrock", "configurations": {"aws_region": "us-east-1"}})).await;
    assert_eq!(status, 400, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("aws_access_key_id") && text.contains("aws_secret_access_key"),
        "{v}"
    );
    let (status, _, v) = create(json!({"name": "r", "ai_provider_id": "bedrock", "configurations": {
        "aws_auth_type": "assumedRole", "aws_region": "us-east-1", "aws_access_key_id": "AKID", "aws_secret_access_key": "s3cr3t-value-0001"}})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("aws_role_arn"), "{v}");
    let (status, _, v) = create(json!({"name": "v", "ai_provider_id": "vertex-ai", "configurations": {"vertex_region": "us-central1"}})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("vertex_service_account_json"), "{v}");
    let (status, _, v) = create(json!({"name": "a", "ai_provider_id": "anthropic"})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("key"), "{v}");
    // An Azure custom_host that names a deployment beside a model map: one or the other.
    let (status, _, v) = create(
        json!({"name": "az", "ai_provider_id": "azure-openai", "key": "az-key-0123456789",
        "configurations": {"custom_host": "https://private.example/openai/deployments/dep",
                           "deployments": {"gpt-4o": "prod-4o"}}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string().contains("custom_host names a deployment"),
        "{v}"
    );
    // Bedrock and Vertex credentials are not a single key: no virtual key for them.
    let vk = json!({"name": "vk", "provider": "bedrock", "key": "AKID"});
    let (status, _, v) = harness::call(
        "POST",
        &format!("{}/v1/virtual-keys", server.url),
        Some(&server.admin_key),
        Some(vk),
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_fields_are_sealed_never_shown_and_never_in_events() {
    let server = harness::start().await;
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    server.admin("POST", "/integrations", Some(json!({"name": "aws", "slug": "aws", "ai_provider_id": "bedrock", "configurations": {
        "aws_region": "us-east-1", "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": secret}}))).await;
    let v = server.admin("GET", "/integrations/aws", None).await;
    let text = v.to_string();
    assert!(
        !text.contains(secret) && !text.contains("AKIAIOSFODNN7EXAMPLE"),
        "{v}"
    );
    assert!(
        v["configurations"]["aws_secret_access_key"]
            .as_str()
            .unwrap()
            .contains('*'),
        "{v}"
    );
    assert_eq!(v["configurations"]["aws_region"], "us-east-1");
    // Nor in the event log, where admin changes are written.
    let log = std::fs::read_dir(server.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir());
    for dir in log {
        for f in walk(&dir.path()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                f.display()
            );
        }
    }
    // An update that gives a new secret replaces it; one that leaves it out keeps it.
    server
        .admin(
            "PUT",
            "/integrations/aws",
            Some(json!({"configurations": {"aws_region": "eu-west-1"}})),
        )
        .await;
    let v = server.admin("GET", "/integrations/aws", None).await;
    assert!(
        v["configurations"]["aws_secret_access_key"].is_string(),
        "{v}"
    );
    assert_eq!(v["configurations"]["aws_region"], "eu-west-1");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
