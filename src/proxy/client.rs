//! The HTTP client for provider calls. Redirects are never followed (a provider credential goes
//! only to its integration's host), and under `upstream_private_hosts = deny` a host name is
//! resolved by [`GuardedResolver`], which refuses the name when any address it resolves to is
//! loopback, link-local, private or unspecified: the connection is never made. Literal addresses
//! are not resolved; they are checked where they are set and per request
//! ([`crate::domain::routing::check_private_host`]). Under `deny` no proxy from the environment
//! is used, since a proxy would resolve names where they cannot be checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::routing::{is_private, PrivateHosts};
use crate::settings::Settings;

/// The client provider calls go through.
pub fn upstream(settings: &Settings) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        // A provider credential goes only to its integration's host: a redirect would carry
        // it (Azure's `api-key`, custom headers) and the body elsewhere, so none is followed.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    match settings.upstream_private_hosts {
        PrivateHosts::Allow => builder.build(),
        // A proxy (`HTTPS_PROXY`, ...) would resolve names where they cannot be checked.
        PrivateHosts::Deny => builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver))
            .build(),
    }
}

/// Resolves with the system resolver, refusing names that resolve to a private address.
struct GuardedResolver;

/// A host name resolved to an address `upstream_private_hosts = deny` refuses.
#[derive(Debug, thiserror::Error)]
#[error("the provider's host {host} resolves to {ip}, a loopback, link-local, private or unspecified address, which this gateway refuses (upstream_private_hosts = deny)")]
pub struct PrivateHostRefused {
    host: String,
    ip: IpAddr,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
                let ip = bad.ip();
                return Err(Box::new(PrivateHostRefused { host, ip }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The refusal behind a failed call, when the resolver refused its host.
pub fn refused_host(e: &reqwest::Error) -> Option<&PrivateHostRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<PrivateHostRefused>() {
            return Some(refused);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let refused = GuardedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost is refused");
        let refused = refused.downcast_ref::<PrivateHostRefused>().unwrap();
        assert!(refused.ip.is_loopback(), "{refused}");
        assert!(refused
            .to_string()
            .contains("upstream_private_hosts = deny"));
    }

    #[tokio::test]
    async fn a_refused_name_fails_the_call_before_connecting() {
        let mut s = Settings::default();
        s.set("upstream_private_hosts", "deny").unwrap();
        let client = upstream(&s).unwrap();
        let err = client
            .get("http://localhost:9/v1")
            .send()
            .await
            .unwrap_err();
        assert!(refused_host(&err).is_some(), "{err:?}");
    }
}
