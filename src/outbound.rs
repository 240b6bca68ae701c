//! Every outbound HTTP call (participants, callbacks, webhooks) goes through a client made
//! here, or (plain `http://` participants) on hyper's connections made with [`PolicyDns`]: redirects
//! are never followed, proxy variables are ignored, and host names are resolved by
//! [`PolicyResolver`] (reqwest's) or [`PolicyDns`] (hyper's), which drop the addresses
//! `TCC_ALLOWED_TARGETS` refuses, so that a name resolving to one (the cloud metadata address,
//! say) is never connected to. URLs with an IP literal, which neither resolves, are checked
//! before each call: by [`check`], or by `TargetPolicy::check_target` for a URL kept parsed
//! since it entered (a participant's).

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::policy::TargetPolicy;

/// A call the policy refuses: nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetRefused(pub String);

/// Resolves with the system's resolver, then keeps only the addresses the policy allows.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: Arc<TargetPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let allowed = allowed_addresses(&policy, name.as_str()).await?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The same resolver for hyper's connector (`PolicyResolver` is reqwest's): the participant
/// client calls plain `http://` participants through hyper directly.
#[derive(Debug, Clone)]
pub struct PolicyDns {
    policy: Arc<TargetPolicy>,
}

impl PolicyDns {
    pub fn new(policy: Arc<TargetPolicy>) -> Self {
        PolicyDns { policy }
    }
}

type DnsError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for PolicyDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = DnsError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, DnsError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), DnsError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            allowed_addresses(&policy, name.as_str())
                .await
                .map(Vec::into_iter)
        })
    }
}

/// `host`'s addresses by the system's resolver, less those the policy refuses; refused when it
/// resolves to none but those.
async fn allowed_addresses(policy: &TargetPolicy, host: &str) -> Result<Vec<SocketAddr>, DnsError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let allowed: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| policy.resolved_allowed(a.ip()))
        .collect();
    if allowed.is_empty() && !found.is_empty() {
        let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
        return Err(Box::new(TargetRefused(format!(
            "{host} resolves only to addresses TCC_ALLOWED_TARGETS refuses ({}): link-local and metadata addresses are called only when listed as an IP or CIDR",
            shown.join(", ")
        ))));
    }
    Ok(allowed)
}

/// A client builder for outbound calls under `policy`: no redirects, the filtering resolver, and
/// no proxy (`HTTP_PROXY` and its kin are ignored): a proxy is handed host names unresolved, so
/// the resolver that enforces the policy would never see them.
pub fn client_builder(policy: Arc<TargetPolicy>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver { policy }))
}

/// Whether `url` may be called (before anything is sent): its host by name, or its IP literal.
pub fn check(policy: &TargetPolicy, url: &str) -> Result<(), TargetRefused> {
    policy
        .check_url(url)
        .map_err(|why| TargetRefused(format!("{url} {why}")))
}

/// The policy's refusal inside an HTTP client's error (from the resolver), if that is what it
/// was.
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<TargetRefused>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}
