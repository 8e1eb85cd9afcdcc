//! The mock AWS Bedrock runtime + STS (`tests/mocks/bedrock_mock.py`, a Python process that
//! checks every SigV4 signature with botocore's signer). [`start`] spawns it on a free port and
//! kills it on drop. Behaviour is chosen by the model id (see the script's docstring):
//! `fail-throttle`, `fail-500`, `garbage`, `truncate`, `stream-exception`, `tool`; STS
//! credentials expire after the `ttl-<seconds>` named in the RoleSessionName (else 3600 s), and a
//! role ARN ending in `/needs-external-id` wants ExternalId [`EXTERNAL_ID`].

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate::domain::pricing::TokenUsage;
use tollgate::providers::bedrock::Credentials;

/// The base access key the mock knows.
pub const ACCESS_KEY_ID: &str = "AKIDTOLLGATEMOCK";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "tollgate-mock-secret-access-key";
/// The external id a `/needs-external-id` role wants.
pub const EXTERNAL_ID: &str = "ext-123";
/// A role the mock STS lets the base key assume.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/tollgate-bedrock";
/// What every chat answer (Converse, ConverseStream, InvokeModel) bills: inputTokens 11,
/// cacheReadInputTokens 5, cacheWriteInputTokens 3, outputTokens 7.
pub const USAGE: TokenUsage = TokenUsage {
    prompt: 11 + 5 + 3,
    completion: 7,
    cached: 5,
    cache_write: 3,
};
/// The raw Converse counts behind [`USAGE`].
pub const INPUT_TOKENS: u64 = 11;
/// Tokens `CountTokens` counts a message.
pub const COUNT_PER_MESSAGE: u64 = 6;
/// Tokens Titan bills per text.
pub const TITAN_TOKENS: u64 = 5;
/// Tokens Cohere bills per text (in the `X-Amzn-Bedrock-Input-Token-Count` header).
pub const COHERE_TOKENS: u64 = 4;
/// The text every chat answer says.
pub const TEXT: &str = "Hello from the Bedrock mock.";

/// A running mock; killed on drop.
pub struct MockBedrock {
    /// `http://127.0.0.1:PORT`: the Bedrock runtime base URL and the STS endpoint.
    pub url: String,
    _child: Child,
}

/// The base credentials the mock knows.
pub fn base_credentials() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: SECRET_ACCESS_KEY.into(),
        session_token: None,
    }
}

/// The Python with botocore: `TG_PYTHON`, else the venv scripts/test.sh makes, else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TG_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/tollgate/venv/bin/python"))
        .filter(|p| p.exists());
    venv.unwrap_or_else(|| PathBuf::from("python3"))
}

/// Starts the mock on a free port.
pub async fn start() -> MockBedrock {
    start_with(&[]).await
}

/// Starts the mock with extra environment (e.g. `BEDROCK_MOCK_STS_TTL`).
pub async fn start_with(env: &[(&str, &str)]) -> MockBedrock {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mocks/bedrock_mock.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(["--port", "0"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Bedrock mock (python with botocore; see tests/sdk/requirements.txt)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the Bedrock mock printed no port in 30 s")
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Bedrock mock said {line:?}"));
    MockBedrock {
        url: format!("http://127.0.0.1:{port}"),
        _child: child,
    }
}

impl MockBedrock {
    /// Every request the mock saw: `{method, path, model, action, service, access_key_id,
    /// signature ("ok" or the AWS error type), body, headers}`.
    pub async fn seen(&self) -> Vec<Value> {
        let resp = reqwest::get(format!("{}/_seen", self.url)).await.unwrap();
        resp.json().await.unwrap()
    }

    /// The requests seen for `service` (`bedrock`, the runtime, or `sts`).
    pub async fn seen_by(&self, service: &str) -> Vec<Value> {
        let seen = self.seen().await;
        seen.into_iter()
            .filter(|s| s["service"] == service)
            .collect()
    }

    /// Forgets the requests seen so far.
    pub async fn clear_seen(&self) {
        reqwest::Client::new()
            .delete(format!("{}/_seen", self.url))
            .send()
            .await
            .unwrap();
    }
}

#[path = "bedrock_signing.rs"]
mod signing;
