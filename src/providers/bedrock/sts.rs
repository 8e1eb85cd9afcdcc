//! STS AssumeRole: temporary credentials for an integration configured with a role to assume.
//!
//! A SigV4-signed (service `sts`) form POST of `Action=AssumeRole&Version=2011-06-15&RoleArn=..
//! &RoleSessionName=..[&ExternalId=..]&DurationSeconds=3600` to the STS endpoint; the answer is
//! XML: `AssumeRoleResponse/AssumeRoleResult/Credentials/{AccessKeyId, SecretAccessKey,
//! SessionToken, Expiration}`, or on failure `ErrorResponse/Error/{Code, Message}`. The answer
//! is read up to [`MAX_ANSWER`] bytes and parsed with `quick-xml`. Caching and refreshing the
//! credentials before `Expiration` is the data plane's.

use std::time::SystemTime;

use quick_xml::events::Event as Xml;
use quick_xml::Reader;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

use super::sign::{sign, SignError};
use super::Credentials;

/// The most bytes of an STS answer read (real ones are about 2 KiB).
pub const MAX_ANSWER: usize = 64 << 10;
/// How long the temporary credentials are asked for (STS's default).
pub const DURATION_SECONDS: u32 = 3600;
/// How deep the answer's XML may nest (STS's answers nest 4 deep).
const MAX_DEPTH: usize = 16;

/// Why AssumeRole gave no credentials. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    #[error("STS AssumeRole: {0}")]
    Sign(#[from] SignError),
    #[error("STS AssumeRole: the request failed: {0}")]
    Transport(String),
    /// STS's own error answer (e.g. `AccessDenied`, `ExpiredToken`).
    #[error("STS AssumeRole refused ({status}): {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("STS AssumeRole: the answer is not STS's: {0}")]
    Garbled(String),
}

/// The STS endpoint of a region.
pub fn default_sts_endpoint(region: &str) -> String {
    format!("https://sts.{region}.amazonaws.com")
}

/// Assumes `role_arn` with the `base` credentials: the temporary credentials and when they
/// expire. `endpoint` is the STS base URL (see [`default_sts_endpoint`]); `now` signs.
#[expect(
    clippy::too_many_arguments,
    reason = "the signature the data plane was promised"
)]
pub async fn assume_role(
    http: &reqwest::Client,
    endpoint: &str,
    base: &Credentials,
    region: &str,
    role_arn: &str,
    external_id: Option<&str>,
    session_name: &str,
    now: SystemTime,
) -> Result<(Credentials, SystemTime), StsError> {
    let duration = DURATION_SECONDS.to_string();
    let mut form = vec![
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("DurationSeconds", duration.as_str()),
    ];
    if let Some(id) = external_id {
        form.push(("ExternalId", id));
    }
    let body =
        serde_urlencoded::to_string(&form).map_err(|e| StsError::Transport(e.to_string()))?;
    let url = if endpoint.ends_with('/') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/")
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    sign(
        "POST",
        &url,
        &mut headers,
        body.as_bytes(),
        base,
        region,
        "sts",
        now,
    )?;
    let mut resp = http
        .post(&url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| StsError::Transport(e.without_url().to_string()))?;
    let status = resp.status();
    let mut answer = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| StsError::Transport(e.without_url().to_string()))?
    {
        if answer.len() + chunk.len() > MAX_ANSWER {
            return Err(StsError::Garbled(format!(
                "an answer over {MAX_ANSWER} bytes"
            )));
        }
        answer.extend_from_slice(&chunk);
    }
    let answer = String::from_utf8(answer).map_err(|_| StsError::Garbled("not UTF-8".into()))?;
    if !status.is_success() {
        return Err(refusal(status.as_u16(), &answer));
    }
    parse_credentials(&answer)
}

/// The temporary credentials of an AssumeRole answer.
pub fn parse_credentials(xml: &str) -> Result<(Credentials, SystemTime), StsError> {
    const CREDS: &str = "AssumeRoleResponse/AssumeRoleResult/Credentials/";
    let leaves = leaves(xml)?;
    let get = |name: &str| {
        let path = format!("{CREDS}{name}");
        leaves
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StsError::Garbled(format!("no {name} in the answer")))
    };
    let expiration = get("Expiration")?;
    let expires =
        time::OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339)
            .map_err(|_| StsError::Garbled(format!("Expiration {expiration:?} is not a date")))?;
    let creds = Credentials {
        access_key_id: get("AccessKeyId")?,
        secret_access_key: get("SecretAccessKey")?,
        session_token: Some(get("SessionToken")?),
    };
    Ok((creds, SystemTime::from(expires)))
}

/// An STS error answer as [`StsError::Refused`] (`code` `Unknown` when it is not STS's XML).
fn refusal(status: u16, xml: &str) -> StsError {
    let leaves = leaves(xml).unwrap_or_default();
    let get = |name: &str| {
        leaves
            .iter()
            .find(|(p, _)| p == &format!("ErrorResponse/Error/{name}"))
            .map(|(_, v)| v.trim().chars().take(500).collect::<String>())
    };
    StsError::Refused {
        status,
        code: get("Code").unwrap_or_else(|| "Unknown".into()),
        message: get("Message").unwrap_or_default(),
    }
}

/// Every text-holding element as (`path/of/local/names`, text), in document order.
fn leaves(xml: &str) -> Result<Vec<(String, String)>, StsError> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut text = String::new();
    let garbled = |e: &dyn std::fmt::Display| StsError::Garbled(format!("XML: {e}"));
    loop {
        match reader.read_event().map_err(|e| garbled(&e))? {
            Xml::Start(e) => {
                if path.len() >= MAX_DEPTH {
                    return Err(StsError::Garbled("XML nested too deep".into()));
                }
                path.push(e.local_name().as_ref().to_owned());
                text.clear();
            }
            Xml::End(_) => {
                if !text.is_empty() {
                    out.push((path.join("/"), std::mem::take(&mut text)));
                }
                path.pop();
            }
            Xml::Text(t) => text.push_str(&t.xml10_content()),
            Xml::CData(t) => text.push_str(&t.xml10_content()),
            Xml::GeneralRef(r) => {
                let entity = format!("&{};", r.xml10_content());
                let resolved = quick_xml::escape::unescape(&entity).map_err(|e| garbled(&e))?;
                text.push_str(&resolved);
            }
            Xml::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The AssumeRole answer of AWS's API reference.
    const ANSWER: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
  <SourceIdentity>Alice</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/demo/TestAR</Arn>
      <AssumedRoleId>ARO123EXAMPLE123:TestAR</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <SessionToken>AQoDYXdzEPT//////////wEXAMPLEtc764&amp;bNrC</SessionToken>
      <Expiration>2019-11-09T13:34:41Z</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>"#;

    #[test]
    fn parses_the_documented_answer() {
        let (c, exp) = parse_credentials(ANSWER).unwrap();
        assert_eq!(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(
            c.secret_access_key,
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
        );
        assert_eq!(
            c.session_token.as_deref(),
            Some("AQoDYXdzEPT//////////wEXAMPLEtc764&bNrC")
        );
        assert_eq!(
            exp,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_573_306_481)
        );
    }

    #[test]
    fn errors_keep_code_and_message() {
        let xml = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
    <Message>User is not authorized to perform: sts:AssumeRole &quot;x&quot;</Message></Error>
  <RequestId>1</RequestId></ErrorResponse>"#;
        assert_eq!(
            refusal(403, xml),
            StsError::Refused {
                status: 403,
                code: "AccessDenied".into(),
                message: "User is not authorized to perform: sts:AssumeRole \"x\"".into()
            }
        );
        assert!(
            matches!(refusal(502, "<html>oops"), StsError::Refused { ref code, .. } if code == "Unknown")
        );
    }

    #[test]
    fn garbled_answers() {
        for xml in [
            "",
            "not xml",
            "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>A</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>",
            &ANSWER.replace("2019-11-09T13:34:41Z", "tomorrow"),
            &ANSWER.replace("</Credentials>", ""),
            &"<a>".repeat(100),
        ] {
            let e = parse_credentials(xml).unwrap_err();
            assert!(matches!(e, StsError::Garbled(_)), "{xml}: {e:?}");
            assert!(!format!("{e}").contains("wJalr"));
        }
    }
}
