//! SigV4 request signing with the `aws-sigv4` crate, for Bedrock (`bedrock`) and STS (`sts`).
//!
//! The signer is given the URL exactly as it will be sent (its path already percent-encoded
//! once, see [`super::model_path`]) and every header that will be sent; it signs them all
//! (`host` is added to the map from the URL so what is signed is what is sent) and adds
//! `X-Amz-Date`, `X-Amz-Security-Token` (temporary credentials) and `Authorization`. With the
//! crate's default settings, as every AWS SDK uses for non-S3 services: the canonical URI is the
//! path encoded a second time (`%3A` -> `%253A`), the payload hash is over the body, and no
//! `x-amz-content-sha256` header is added (only S3 wants it).

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, HOST};

use super::Credentials;

/// Why a request could not be signed. Never carries a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign: the URL {0:?} is not an absolute http(s) URL with a host")]
    Url(String),
    #[error("cannot sign: header {0} is not visible ASCII")]
    Header(String),
    #[error("cannot sign: {0}")]
    Signer(String),
}

/// Signs the request in place (replacing any earlier signature): adds `host` (when absent), `x-amz-date`, `x-amz-security-token`
/// (when the credentials have a session token) and `authorization`. `now` is the signing time
/// (AWS refuses a signature more than 15 minutes off its clock).
#[expect(
    clippy::too_many_arguments,
    reason = "the signature the data plane was promised"
)]
pub fn sign(
    method: &str,
    url: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), SignError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| SignError::Url(url.to_owned()))?;
    let host = match (parsed.scheme(), parsed.host_str()) {
        ("http" | "https", Some(h)) if !h.is_empty() => match parsed.port() {
            Some(port) => format!("{h}:{port}"),
            None => h.to_owned(),
        },
        _ => return Err(SignError::Url(url.to_owned())),
    };
    // A map signed before (a retry) keeps nothing of that signature.
    for stale in ["authorization", "x-amz-date", "x-amz-security-token"] {
        headers.remove(stale);
    }
    if !headers.contains_key(HOST) {
        let value = HeaderValue::from_str(&host).map_err(|_| SignError::Url(url.to_owned()))?;
        headers.insert(HOST, value);
    }
    let identity: Identity = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        creds.session_token.clone(),
        None,
        "tollgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Signer(e.to_string()))?;
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let value = value
            .to_str()
            .map_err(|_| SignError::Header(name.as_str().to_owned()))?;
        pairs.push((name.as_str(), value));
    }
    let signable = SignableRequest::new(method, url, pairs.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| SignError::Signer(e.to_string()))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params.into())
        .map_err(|e| SignError::Signer(e.to_string()))?
        .into_parts();
    let (added, _query) = instructions.into_parts();
    for header in added {
        let mut value = HeaderValue::from_str(header.value())
            .map_err(|_| SignError::Header(header.name().to_owned()))?;
        value.set_sensitive(header.sensitive());
        headers.insert(HeaderName::from_static(header.name()), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    /// Signs a Bedrock runtime `POST` of `{}` in us-east-1 at `at`.
    fn post(url: &str, h: &mut HeaderMap, creds: &Credentials, at: SystemTime) {
        sign("POST", url, h, b"{}", creds, "us-east-1", "bedrock", at).unwrap();
    }

    /// Signs an empty `POST` of `url` with `h`: what the signer says.
    fn refusal(url: &str, h: &mut HeaderMap) -> Result<(), SignError> {
        sign(
            "POST",
            url,
            h,
            b"",
            &creds(None),
            "r",
            "bedrock",
            suite_time(),
        )
    }

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test suite's date.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    /// The AWS SigV4 test suite's `get-vanilla` case: the published signature.
    #[test]
    fn matches_the_aws_test_suite() {
        let mut h = HeaderMap::new();
        sign(
            "GET",
            "https://example.amazonaws.com/",
            &mut h,
            b"",
            &creds(None),
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(h["host"], "example.amazonaws.com");
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(!h.contains_key("x-amz-content-sha256"));
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        post(
            "http://127.0.0.1:9999/model/a.b-v1%3A0/converse",
            &mut h,
            &creds(Some("TOKEN")),
            suite_time(),
        );
        assert_eq!(h["host"], "127.0.0.1:9999");
        assert_eq!(h["x-amz-security-token"], "TOKEN");
        assert!(h["x-amz-security-token"].is_sensitive());
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{auth}"
        );
        assert!(!auth.contains("wJalr"));
    }

    #[test]
    fn signing_again_replaces_the_old_signature() {
        let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse";
        let mut fresh = HeaderMap::new();
        post(url, &mut fresh, &creds(None), suite_time());
        let mut again = HeaderMap::new();
        let earlier = suite_time() - Duration::from_secs(600);
        post(url, &mut again, &creds(Some("T")), earlier);
        post(url, &mut again, &creds(None), suite_time());
        assert_eq!(again, fresh);
    }

    #[test]
    fn refuses_urls_without_a_host() {
        for url in [
            "/model/x/converse",
            "file:///etc/passwd",
            "not a url",
            "http://",
        ] {
            let mut h = HeaderMap::new();
            let e = refusal(url, &mut h);
            assert!(matches!(e, Err(SignError::Url(_))), "{url}: {e:?}");
        }
    }

    #[test]
    fn refuses_non_ascii_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-odd", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let e = refusal("https://h.example/", &mut h);
        assert_eq!(e, Err(SignError::Header("x-odd".into())));
    }
}
