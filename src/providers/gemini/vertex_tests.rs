//! Tests of the service account and its assertion.
//!
//! The key below is a TEST-ONLY RSA key generated for these unit tests: it protects nothing and
//! belongs to no account. (The integration tests generate a fresh one per run.)

use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde_json::json;

use super::*;

const TEST_ONLY_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDSrGtXL16BVRNT\nd+Msg+7Kfm9jv3RR6qEAF/T2ux4RHVoybDL7mKFJH+QXXK8Df7ozgx0Qwef/fmsO\nSWs167zkMovt5aV50ymTFyQkApws6NERi7k4OIkfNBisKnV5wDDBIRcGKDeMp0sC\nCQEygnMzsUYxJR6tue+0FTG4z+V2++p/n3a+MLpDiKj87RcsGEJfu0nfNJuK6KXP\nz/UOofvcenZaE0d4VRXBTtOXVly5MKz9N/x3Czzc/0vE2K1wHCw7wSmvWQ5dHCVz\nm0X5ZuBqMtu4butlRTYMMZM/ROIYFnS2VaJMKyxL72ILo9pjf/wkVmJXYlf1dRcK\nnd8wsuyfAgMBAAECggEAU4v5DZxFeDjK70EOIGs52agGeKJGeO35Z1YY2XgfVl4z\nlOd/2HMREzTIedNRvKt8pk0Ky8h6PsJdpk7La5jPUhgRkgiOdR+ezyxQMs+uK8kw\nkCq/C2KwTmWUm0JDUEM9knmS7egpD2iQwH/dr7A4C3n0Ai1cWzzvqJT3IPmhYGuS\nlrBWlwoKyy0J9QQ37M47uHZHkgx5xmvZothp64SVgIbA7RtQBR2CZL6Cz9OG3IxA\n9XQDLenXO/Lya2zmnZSlzGHv1Ng8YnQVldZZAtJ54pFt2xxctBB10Vb9n4j05VRx\nnNYA5CRvQSxY4HrjDoaFetjEL70/VI457FT9NuRkwQKBgQDyjI1KpOtk5YnWoxvF\nnzfA55vlyFff94uluAJ4Cxemf6oa26+UihPuR8pYVHOR5SDOb6cIFTQtZaMhN1N2\nB5bHbwCG5+Ld62wqy2eW7r5/SvxEd3t+A0pQQOaxdAdMJTDxgyvcBe0dLGKnN5AC\nj+84TDakx5d1JjlmYyyT4cpKDwKBgQDeW1VWFdY6TqadOD9QPXILFfVFtXcueeor\nTsPO4yEMFnaND1vJx0DdENLK+78MyGiLG29rT6WkTQr6t8N8xE9h/gZF2Nsjl81U\n4h7GGUKpcxoj2LJrY4tqyj2OLrMXX83S7rCul/vfl15L8wdCaJlpyFeKQhoMnVZ1\nHZLjDsAEcQKBgQDVb/e50uzOCevE9B2xRw3h9C5NA4LItOavewC5MFGsk7VWEzIs\nDWHCkmwuVIqqvS2kW75pr3cN592oki4gtEbr0vNsw8vxK4UxF3Nd71O1YoAho98J\nIc4YVzRqvcbaK/Qo4xwKbzCcNn3N1mgkyRJiwTZoxLa0QWHLhsQokk3X4wKBgE9U\n2q9p/xKyePNi3APuyD94SBfk1G66hHeLFIU9t86uPQG61w64jkXQ+MP+6XzQC6yF\nz0zED978tcwZwB9FkuTtUqOc6SJbyKBeRIh8/rGiJVNgvtddnqItIaUWuELApZh6\nHINOKkjtonEKdi6VTxbUqZbkWpLhl7UVJhDodE2hAoGBALxfX43o8745TVxpvLxd\n3oEzzzO2SedxtLfJ1CszIpqWjKl4xgh59xKWzfprvyBiE+Xs29FDfj17NCSagbSS\npwaYoQIiJ3/AtBemTOGv5UZOScjxNmbbSGPALpvD1XMhYiSvm4uquJHuxpbct2vd\nrlF6TcID8Lf1GBVp8TRBVdCk\n-----END PRIVATE KEY-----\n";
const TEST_ONLY_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0qxrVy9egVUTU3fjLIPu\nyn5vY790UeqhABf09rseER1aMmwy+5ihSR/kF1yvA3+6M4MdEMHn/35rDklrNeu8\n5DKL7eWledMpkxckJAKcLOjREYu5ODiJHzQYrCp1ecAwwSEXBig3jKdLAgkBMoJz\nM7FGMSUerbnvtBUxuM/ldvvqf592vjC6Q4io/O0XLBhCX7tJ3zSbiuilz8/1DqH7\n3Hp2WhNHeFUVwU7Tl1ZcuTCs/Tf8dws83P9LxNitcBwsO8Epr1kOXRwlc5tF+Wbg\najLbuG7rZUU2DDGTP0TiGBZ0tlWiTCssS+9iC6PaY3/8JFZiV2JX9XUXCp3fMLLs\nnwIDAQAB\n-----END PUBLIC KEY-----\n";

fn account_json() -> String {
    json!({
        "type": "service_account", "project_id": "p", "private_key_id": "kid-1",
        "private_key": TEST_ONLY_PRIVATE_KEY, "client_email": "sa@p.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token",
    })
    .to_string()
}

#[test]
fn parses_and_redacts() {
    let sa = parse_service_account(&account_json()).unwrap();
    assert_eq!(sa.client_email, "sa@p.iam.gserviceaccount.com");
    assert_eq!(sa.token_uri, "http://127.0.0.1:9/token");
    let dbg = format!("{sa:?}");
    assert!(
        !dbg.contains("PRIVATE KEY") && dbg.contains("<redacted>"),
        "{dbg}"
    );
}

#[test]
fn names_missing_fields() {
    let e =
        parse_service_account(r#"{"type": "service_account", "private_key_id": "x"}"#).unwrap_err();
    assert_eq!(
        e,
        "vertex_service_account_json lacks client_email, private_key"
    );
    assert!(parse_service_account("nope")
        .unwrap_err()
        .contains("not JSON"));
    assert!(parse_service_account(r#"{"type": "authorized_user"}"#)
        .unwrap_err()
        .contains("authorized_user"));
    let bad_key = json!({"client_email": "a", "private_key_id": "k", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"});
    let e = parse_service_account(&bad_key.to_string()).unwrap_err();
    assert!(
        e.contains("not an RSA private key") && !e.contains("AAAA"),
        "{e}"
    );
    let mut no_uri: Value = serde_json::from_str(&account_json()).unwrap();
    no_uri.as_object_mut().unwrap().remove("token_uri");
    let sa = parse_service_account(&no_uri.to_string()).unwrap();
    assert_eq!(sa.token_uri, GOOGLE_TOKEN_URI);
}

#[test]
fn assertion_is_a_valid_rs256_jwt() {
    let sa = parse_service_account(&account_json()).unwrap();
    let now = 1_800_000_000;
    let jwt = assertion(&sa, now).unwrap();
    let header = decode_header(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("kid-1"));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let mut v = Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["http://127.0.0.1:9/token"]);
    v.validate_exp = false;
    let key = DecodingKey::from_rsa_pem(TEST_ONLY_PUBLIC_KEY.as_bytes()).unwrap();
    let claims = decode::<Value>(&jwt, &key, &v).unwrap().claims;
    assert_eq!(
        claims,
        json!({"iss": "sa@p.iam.gserviceaccount.com", "scope": CLOUD_PLATFORM_SCOPE,
               "aud": "http://127.0.0.1:9/token", "iat": now, "exp": now + 3600})
    );
}

#[test]
fn anthropic_on_vertex() {
    let req = json!({"model": "claude-x", "max_tokens": 5, "messages": []});
    let body = vertex_anthropic_body(req.as_object().unwrap());
    assert_eq!(
        body,
        json!({"max_tokens": 5, "messages": [], "anthropic_version": "vertex-2023-10-16"})
    );
    assert_eq!(
        vertex_anthropic_path("claude-sonnet-4@20250514", true),
        "/models/claude-sonnet-4@20250514:streamRawPredict"
    );
    assert_eq!(
        vertex_anthropic_path("claude-sonnet-4@20250514", false),
        "/models/claude-sonnet-4@20250514:rawPredict"
    );
}

#[tokio::test]
async fn token_errors_carry_the_oauth_error_not_the_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 16384];
        let _ = s.read(&mut buf).await;
        let body = r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
    });
    let mut sa = parse_service_account(&account_json()).unwrap();
    sa.token_uri = format!("http://{addr}/token");
    let e = fetch_token(&reqwest::Client::new(), &sa, 1_800_000_000)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, TokenError::OAuth { status: 400, error, .. } if error == "invalid_grant"),
        "{e:?}"
    );
    assert!(
        msg.contains("Invalid JWT Signature") && !msg.contains("PRIVATE"),
        "{msg}"
    );
}
