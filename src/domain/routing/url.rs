//! Upstream base URLs (`custom_host`, set on integrations, virtual keys and config targets with
//! their own `api_key`): exactly `http(s)://host[:port][/path]`, and, under
//! `upstream_private_hosts = deny`, no host in a private, loopback, link-local or unspecified
//! range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

/// Whether upstream hosts may be private addresses (the `upstream_private_hosts` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrivateHosts {
    /// Any host: self-hosted models on private networks are a main use.
    #[default]
    Allow,
    /// No loopback, link-local, private (RFC 1918, ULA) or unspecified address: a literal one is
    /// refused where it is set (and again per request), a name is refused when it resolves to
    /// one (see `proxy::client`).
    Deny,
}

/// Checks an upstream base URL: `http://` or `https://`, a host (a name, an IPv4 address or a
/// bracketed IPv6 one), an optional port and an optional path. Nothing that would make the host
/// ambiguous (userinfo `user@`, a backslash) or add to every call behind the URL (a query `?`, a
/// fragment `#`) is accepted. Returns the URL without trailing `/`.
pub fn parse_url(v: &Value, at: &str) -> Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{at}: must be a URL string"))?;
    let shape = format!("{at}: must be http(s)://host[:port][/path]");
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{at}: must start with http:// or https://"))?;
    for (c, what) in [
        ('?', "a query (?)"),
        ('#', "a fragment (#)"),
        ('@', "userinfo (user@host)"),
        ('\\', "a backslash"),
    ] {
        if s.contains(c) {
            return Err(format!("{shape}; {what} is not accepted"));
        }
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{shape}; whitespace and control characters are not accepted"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if host_of(authority).is_none() {
        return Err(format!("{shape}; {authority:?} is not host[:port]"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// The host of a URL [`parse_url`] accepted (an IPv6 address without its brackets).
pub fn host_of_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    host_of(rest.split('/').next()?)
}

/// The host of `host[:port]`, when both parts are well formed.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            host.parse::<Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (host, port)
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    let host_ok = !host.is_empty() && host.chars().all(name_char);
    let port_ok = port.is_none_or(|p| {
        p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    (host_ok && port_ok).then_some(host)
}

/// Whether `ip` is loopback, link-local, private (RFC 1918, IPv6 unique local) or unspecified
/// (including `0.0.0.0/8`, which Linux connects to the local host); IPv4-mapped IPv6 addresses
/// count as their IPv4 address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => private_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => private_v4(v4),
            None => {
                a.is_loopback()
                    || a.is_unspecified()
                    || a.is_unique_local()
                    || a.is_unicast_link_local()
            }
        },
    }
}

fn private_v4(a: Ipv4Addr) -> bool {
    a.is_loopback() || a.is_private() || a.is_link_local() || a.octets()[0] == 0
}

/// Refuses a URL whose host is a literal private address when `policy` denies them (a name is
/// checked when it resolves). The error names the field and the setting.
pub fn check_private_host(url: &str, policy: PrivateHosts, at: &str) -> Result<(), String> {
    if policy == PrivateHosts::Allow {
        return Ok(());
    }
    let literal = host_of_url(url).and_then(|h| h.parse::<IpAddr>().ok());
    match literal {
        Some(ip) if is_private(ip) => Err(private_refusal(at, ip)),
        _ => Ok(()),
    }
}

/// Why a private address is refused.
pub fn private_refusal(at: &str, ip: IpAddr) -> String {
    format!(
        "{at}: {ip} is a loopback, link-local, private or unspecified address, which this gateway refuses (upstream_private_hosts = deny)"
    )
}

/// Whether `value` is a valid Azure `resource_name` (`[A-Za-z0-9-]+`) or `deployment_name`
/// (`[A-Za-z0-9._-]+`, and not `.` or `..`): both are written into the host and path of the
/// upstream URL, where anything else (a `.` or `/` in the host, `@`, `?`, a dot segment) could
/// send the credential to another host or path.
pub fn azure_name_ok(field: &str, value: &str) -> bool {
    let extra: &[char] = match field {
        "resource_name" => &['-'],
        _ => &['.', '_', '-'],
    };
    !matches!(value, "" | "." | "..")
        && value.len() <= 256
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// Whether an Azure integration's `configurations` map models to deployments (a non-empty
/// `deployments`: an object `model -> deployment` or a list of `{model, deployment_id}`).
pub fn has_azure_map(c: &Map<String, Value>) -> bool {
    match c.get("deployments") {
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(list)) => !list.is_empty(),
        _ => false,
    }
}

/// The Azure deployment serving `model`: with a model map ([`has_azure_map`]) the map's, and
/// none for a model it does not name (a default deployment would serve, and be priced as, any
/// model the caller names); without one the integration's `deployment_id` (or
/// `deployment_name`).
pub fn azure_deployment<'a>(c: &'a Map<String, Value>, model: &str) -> Option<&'a str> {
    let name = |v: Option<&'a Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty());
    if !has_azure_map(c) {
        return name(c.get("deployment_id")).or_else(|| name(c.get("deployment_name")));
    }
    match c.get("deployments") {
        Some(Value::Object(m)) => name(m.get(model)),
        Some(Value::Array(list)) => list
            .iter()
            .find(|d| d.get("model").and_then(Value::as_str) == Some(model))
            .and_then(|d| name(d.get("deployment_id")).or_else(|| name(d.get("deployment_name")))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_scheme_host_port_path() {
        for ok in [
            "http://mock/v1/",
            "https://api.openai.com/v1",
            "http://127.0.0.1:8000",
            "http://[::1]:8080/v1",
            "http://vllm_box.internal:80/openai/v1",
        ] {
            assert!(parse_url(&json!(ok), "h").is_ok(), "{ok}");
        }
        assert_eq!(
            parse_url(&json!("http://mock/v1/"), "h").unwrap(),
            "http://mock/v1"
        );
        for (bad, needle) in [
            ("http://host/v1?api-version=1", "a query (?)"),
            ("http://host/v1#x", "a fragment (#)"),
            ("http://user@evil.example/v1", "userinfo"),
            ("http://good.example@evil.example", "userinfo"),
            ("http://good.example\\evil", "backslash"),
            ("http://host:/v1", "is not host[:port]"),
            ("http://host:0", "is not host[:port]"),
            ("http://host:99999", "is not host[:port]"),
            ("http://host:8x", "is not host[:port]"),
            ("http://[::1", "is not host[:port]"),
            ("http://[nothost]:80", "is not host[:port]"),
            ("http://ho%73t", "is not host[:port]"),
            ("http:///v1", "is not host[:port]"),
            ("http://", "is not host[:port]"),
            ("http://ho st", "whitespace"),
            ("ftp://host", "must start with"),
        ] {
            let e = parse_url(&json!(bad), "configurations.custom_host").unwrap_err();
            assert!(e.starts_with("configurations.custom_host: "), "{bad}: {e}");
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert_eq!(host_of_url("http://[::1]:8080/v1"), Some("::1"));
        assert_eq!(host_of_url("https://a.b:1"), Some("a.b"));
    }

    #[test]
    fn private_ranges() {
        for private in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::3",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.64.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn deny_refuses_literal_private_hosts_only() {
        let deny = PrivateHosts::Deny;
        for url in [
            "http://127.0.0.1:8000/v1",
            "http://[::1]",
            "http://169.254.169.254",
        ] {
            let e = check_private_host(url, deny, "custom_host").unwrap_err();
            assert!(e.contains("upstream_private_hosts = deny"), "{e}");
        }
        for url in [
            "http://localhost:8000",
            "https://api.openai.com/v1",
            "http://8.8.8.8",
        ] {
            assert_eq!(
                check_private_host(url, deny, "custom_host"),
                Ok(()),
                "{url}"
            );
        }
        assert_eq!(
            check_private_host("http://127.0.0.1", PrivateHosts::Allow, "h"),
            Ok(())
        );
    }
}
