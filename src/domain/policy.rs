//! The outbound target policy (`TCC_ALLOWED_TARGETS`): which hosts the coordinator may call.
//!
//! A policy is `*` (the default) or a comma-separated list of host names (`pay.example`),
//! wildcards (`*.internal.example`: any name under it, not the name itself), IP addresses and
//! CIDR blocks (`10.0.0.0/8`, `fd00::/8`). Link-local and cloud metadata addresses
//! (169.254.0.0/16, 100.100.100.200, fe80::/10, fd00:ec2::254, and every IPv6 spelling that
//! carries one of those IPv4 addresses: mapped, compatible, NAT64, 6to4, Teredo) are refused
//! unless an IP or CIDR entry of the list covers them: neither `*` nor a host name lets one
//! through.
//!
//! The policy is applied twice: to every URL a request names (task URLs, participant links,
//! callbacks, webhooks), where a refusal is a 422 naming the field; and at call time, to the URL
//! and then to every address its name resolves to, so that a name pointing at a refused address
//! is never connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::domain::TargetUrl;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Any,
    Name(String),
    /// `*.example.com`, kept as `.example.com`.
    Under(String),
    Net(IpNet),
}

/// Which targets may be called (`TCC_ALLOWED_TARGETS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    entries: Vec<Entry>,
}

impl Default for TargetPolicy {
    /// `*`: any host, link-local and metadata addresses excepted.
    fn default() -> Self {
        TargetPolicy {
            entries: vec![Entry::Any],
        }
    }
}

impl FromStr for TargetPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for raw in s.split(',') {
            let item = raw.trim();
            if item.is_empty() {
                return Err(format!(
                    "{s:?} has an empty entry (entries are separated by single commas)"
                ));
            }
            entries.push(parse_entry(item)?);
        }
        Ok(TargetPolicy { entries })
    }
}

fn parse_entry(item: &str) -> Result<Entry, String> {
    if item == "*" {
        return Ok(Entry::Any);
    }
    if let Ok(net) = item.parse::<IpNet>() {
        return Ok(Entry::Net(net.trunc()));
    }
    let bare = item.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Entry::Net(IpNet::from(canonical(ip))));
    }
    let (under, name) = match item.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "{item:?} is not a host name, a *.wildcard, an IP address or a CIDR block (examples: pay.example, *.internal.example, 10.0.0.7, 10.0.0.0/8, fd00::/8, *)"
        ));
    }
    let name = name.to_ascii_lowercase();
    Ok(if under {
        Entry::Under(format!(".{name}"))
    } else {
        Entry::Name(name)
    })
}

/// An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 addresses an IPv6 address may carry in a standard spelling: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), IPv4-translated (`::ffff:0:a.b.c.d`),
/// NAT64 (`64:ff9b::/96`; under the local-use `64:ff9b:1::/48`, each layout of RFC 6052 that
/// fits in it: /48, /56, /64, /96), 6to4 (`2002:aabb:ccdd::/48`) and Teredo's client
/// (`2001::/32`, the last 32 bits inverted).
fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let b = v6.octets();
    match v6.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo]
        | [0, 0, 0, 0, 0xffff, 0, hi, lo]
        | [0, 0, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => vec![v4(hi, lo)],
        // RFC 6052 §2.2: bits 64–71 are zero, and the address sits around them.
        [0x64, 0xff9b, 1, ..] => vec![
            Ipv4Addr::new(b[6], b[7], b[9], b[10]),
            Ipv4Addr::new(b[7], b[9], b[10], b[11]),
            Ipv4Addr::new(b[9], b[10], b[11], b[12]),
            Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        ],
        [0x2002, hi, lo, ..] => vec![v4(hi, lo)],
        [0x2001, 0, _, _, _, _, hi, lo] => vec![v4(!hi, !lo)],
        _ => Vec::new(),
    }
}

/// Where cloud metadata services answer, and link-local addresses generally: 169.254.0.0/16
/// (169.254.169.254 on most clouds, 169.254.170.23 for EKS Pod Identity), 100.100.100.200
/// (Alibaba), 192.0.0.192 (Oracle Cloud Classic), fe80::/10, fd00:ec2::/32 (AWS over IPv6: the
/// instance metadata at ::254, EKS Pod Identity at ::23), and every IPv6 spelling that carries
/// one of those IPv4 addresses.
fn metadata(ip: IpAddr) -> bool {
    const ALIBABA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    const ORACLE: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 192);
    let v4_metadata = |v4: Ipv4Addr| v4.is_link_local() || v4 == ALIBABA || v4 == ORACLE;
    match ip {
        IpAddr::V4(v4) => v4_metadata(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80
                || (s[0], s[1]) == (0xfd00, 0x0ec2)
                || embedded_v4(v6).into_iter().any(v4_metadata)
        }
    }
}

impl TargetPolicy {
    /// Whether the policy is the default `*` alone.
    pub fn is_any(&self) -> bool {
        self.entries == [Entry::Any]
    }

    fn covered(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.entries.iter().any(|e| match e {
            Entry::Net(net) => net.contains(&ip),
            _ => false,
        })
    }

    fn name_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            Entry::Any => true,
            Entry::Name(n) => *n == name,
            Entry::Under(suffix) => name.ends_with(suffix.as_str()),
            Entry::Net(_) => false,
        })
    }

    /// An address may be connected to: covered by an IP or CIDR entry, or, when it is not
    /// link-local, by `*`.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.covered(ip) || (!metadata(ip) && self.entries.contains(&Entry::Any))
    }

    /// Whether a URL may be called, as far as its text tells (the addresses a host name resolves
    /// to are judged by [`TargetPolicy::resolved_allowed`] when it is called); why not otherwise.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        self.check_parsed(&parsed)
    }

    /// Whether `target`, parsed where it entered, may be called (`check_url` without parsing it
    /// again).
    pub fn check_target(&self, target: &TargetUrl) -> Result<(), String> {
        self.check_parsed(target.url())
    }

    fn check_parsed(&self, parsed: &url::Url) -> Result<(), String> {
        match parsed.host() {
            None => Err("has no host".into()),
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) => {
                if self.name_allowed(name) {
                    Ok(())
                } else {
                    Err(format!(
                        "names the host {name:?}, which TCC_ALLOWED_TARGETS does not allow"
                    ))
                }
            }
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.ip_allowed(ip) {
            Ok(())
        } else if metadata(ip) {
            Err(format!(
                "names {ip}, a link-local or cloud metadata address, which is refused unless TCC_ALLOWED_TARGETS lists it as an IP or CIDR"
            ))
        } else {
            Err(format!(
                "names the address {ip}, which TCC_ALLOWED_TARGETS does not allow"
            ))
        }
    }

    /// A host name allowed by the policy resolved to `ip`: may it be connected to? A name is
    /// trusted to the policy's names, not to link-local addresses (unless listed as IPs).
    pub fn resolved_allowed(&self, ip: IpAddr) -> bool {
        self.covered(ip) || !metadata(ip)
    }
}

/// What a request names that the policy refuses, as field errors (422), by JSON Pointer.
pub mod refusals {
    use super::TargetPolicy;
    use crate::domain::job::Callbacks;
    use crate::domain::request::{FieldError, Hold, JobFields, NewJob, NewTaskKind, Registration};

    /// The policy's verdict on one URL, kept as a field error at `pointer` (written only when it
    /// is refused) if it says no.
    fn refuse(
        out: &mut Vec<FieldError>,
        pointer: impl FnOnce() -> String,
        verdict: Result<(), String>,
    ) {
        if let Err(why) = verdict {
            out.push(FieldError::new(pointer(), why));
        }
    }

    /// A job document's task URLs, participant links, callbacks and webhook.
    pub fn job(policy: &TargetPolicy, new: &NewJob) -> Vec<FieldError> {
        let mut out = fields(policy, &new.fields);
        for (i, t) in new.tasks.iter().enumerate() {
            match &t.kind {
                NewTaskKind::Try(spec) => refuse(
                    &mut out,
                    || format!("/tasks/{i}/taskURL"),
                    policy.check_target(&spec.task_url),
                ),
                NewTaskKind::Link(link) => refuse(
                    &mut out,
                    || format!("/tasks/{i}/participantLink/uri"),
                    policy.check_target(&link.uri),
                ),
                NewTaskKind::Callbacks {
                    try_spec,
                    callbacks,
                } => {
                    if let Some(spec) = try_spec {
                        refuse(
                            &mut out,
                            || format!("/tasks/{i}/taskURL"),
                            policy.check_target(&spec.task_url),
                        );
                    }
                    own_urls(policy, &mut out, &format!("/tasks/{i}"), callbacks);
                }
            }
        }
        out
    }

    /// A task's own confirm and cancel URLs, under `prefix`.
    pub fn own_urls(
        policy: &TargetPolicy,
        out: &mut Vec<FieldError>,
        prefix: &str,
        callbacks: &Callbacks,
    ) {
        refuse(
            out,
            || format!("{prefix}/confirmURL"),
            policy.check_target(&callbacks.confirm_url),
        );
        refuse(
            out,
            || format!("{prefix}/cancelURL"),
            policy.check_target(&callbacks.cancel_url),
        );
    }

    /// The job-level URLs (what `PUT /jobs/{id}` may change).
    pub fn fields(policy: &TargetPolicy, fields: &JobFields) -> Vec<FieldError> {
        let mut out = Vec::new();
        let urls = [
            ("/jobSuccessURL", fields.job_success_url.as_deref()),
            ("/jobFailedURL", fields.job_failed_url.as_deref()),
            (
                "/contact/webhook",
                fields.contact.as_ref().and_then(|c| c.webhook.as_deref()),
            ),
        ];
        for (pointer, url) in urls {
            if let Some(u) = url {
                refuse(&mut out, || pointer.to_string(), policy.check_url(u));
            }
        }
        out
    }

    /// A participant registration's link, or its own URLs.
    pub fn registration(policy: &TargetPolicy, reg: &Registration) -> Vec<FieldError> {
        let mut out = Vec::new();
        match &reg.hold {
            Hold::Link(link) => refuse(&mut out, || "/uri".into(), policy.check_target(&link.uri)),
            Hold::Callbacks(callbacks) => own_urls(policy, &mut out, "", callbacks),
        }
        out
    }

    /// The Atomikos-compatible link set, by each link's place in the request (already parsed:
    /// every `uri` is a URL).
    pub fn link_set(policy: &TargetPolicy, request: &serde_json::Value) -> Vec<FieldError> {
        let mut out = Vec::new();
        let links = request["participantLinks"].as_array().into_iter().flatten();
        for (i, link) in links.enumerate() {
            if let Some(uri) = link["uri"].as_str() {
                refuse(
                    &mut out,
                    || format!("/participantLinks/{i}/uri"),
                    policy.check_url(uri),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> TargetPolicy {
        s.parse().expect("a policy")
    }

    #[test]
    fn the_default_allows_any_host_but_not_link_local_addresses() {
        let p = TargetPolicy::default();
        assert!(p.is_any());
        for ok in [
            "http://127.0.0.1:9000/try",
            "https://pay.example/x",
            "http://[::1]:8080/",
            "http://10.1.2.3/",
        ] {
            assert_eq!(p.check_url(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.1.1:8080/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            // Metadata services beyond link-local, and IPv6 spellings that carry 169.254.169.254.
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://100.100.100.200/latest/meta-data/",
            "http://[::169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[::ffff:0:a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
            // The second pass: EKS Pod Identity, Oracle, NAT64 /48 layout.
            "http://[fd00:ec2::23]/",
            "http://192.0.0.192/",
            "http://[64:ff9b:1:a9fe:a9:fe00::]/",
        ] {
            let e = p.check_url(refused).expect_err(refused);
            assert!(e.contains("link-local"), "{refused}: {e}");
            let host = url::Url::parse(refused).ok().and_then(|u| match u.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            });
            let ip = host.expect("an IP host");
            assert!(!p.resolved_allowed(ip), "{ip} after DNS");
            // Listed explicitly, it may be called.
            let listed = policy(&format!("*, {ip}"));
            assert_eq!(listed.check_url(refused), Ok(()), "{refused} listed");
        }
        // Neighbours of those are ordinary addresses.
        for ok in [
            "http://100.100.100.201/",
            "http://[fd00:ec3::254]/",
            "http://[2002:a01:203::]/",
            "http://[64:ff9b::a01:203]/",
        ] {
            assert_eq!(p.check_url(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn link_local_is_allowed_only_when_listed_as_an_ip_or_cidr() {
        let p = policy("*, 169.254.169.254");
        assert_eq!(p.check_url("http://169.254.169.254/"), Ok(()));
        assert_eq!(p.check_url("http://[::ffff:169.254.169.254]/"), Ok(()));
        assert!(p.check_url("http://169.254.169.253/").is_err());
        let p = policy("fe80::/10");
        assert_eq!(p.check_url("http://[fe80::1]/"), Ok(()));
        assert!(p.check_url("http://10.0.0.1/").is_err(), "not listed");
        // A resolved name: link-local only when listed.
        let p = policy("*.internal.example");
        assert!(!p.resolved_allowed("169.254.169.254".parse().expect("ip")));
        assert!(!p.resolved_allowed("::ffff:169.254.169.254".parse().expect("ip")));
        assert!(p.resolved_allowed("10.0.0.1".parse().expect("ip")));
        assert!(
            policy("*, 169.254.0.0/16").resolved_allowed("169.254.169.254".parse().expect("ip"))
        );
    }

    #[test]
    fn names_wildcards_ips_and_cidrs() {
        let p = policy("pay.example, *.internal.example, 10.0.0.0/8, 2001:db8::/32");
        for ok in [
            "http://pay.example/x",
            "http://PAY.example:8443/x",
            "http://shop.internal.example/x",
            "http://a.b.internal.example/x",
            "http://10.200.0.1/x",
            "http://[2001:db8::5]/x",
        ] {
            assert_eq!(p.check_url(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://internal.example/x",
            "http://evilinternal.example/x",
            "http://pay.example.attacker.test/x",
            "http://11.0.0.1/x",
            "http://127.0.0.1/x",
            "http://[2001:db9::1]/x",
        ] {
            assert!(p.check_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_bad_policy_names_the_entry() {
        for (bad, part) in [
            ("pay.example,,x.example", "empty entry"),
            ("http://pay.example", "\"http://pay.example\""),
            ("10.0.0.0/33", "\"10.0.0.0/33\""),
            ("*.", "\"*.\""),
            ("a b", "\"a b\""),
        ] {
            let e = bad.parse::<TargetPolicy>().expect_err(bad);
            assert!(e.contains(part), "{bad}: {e}");
        }
    }
}
