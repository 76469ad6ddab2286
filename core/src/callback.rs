//! Where callbacks may go, and how a receiver can tell a callback came from Sluice.
//!
//! A callback URL is the client's choice, and the queue worker POSTs to it from inside the
//! operator's network: without a policy, a client could make Sluice call loopback admin ports,
//! cloud metadata services or anything else only Sluice can reach. [`CallbackPolicy`] decides
//! for one host name and one address; the gateway applies it at submit time to every address
//! the name resolves to, and the worker again when it delivers, to the addresses it connects to
//! (so a name that resolves elsewhere by then gains nothing).
//!
//! An address is refused when, in this order:
//! 1. the host or the address matches a `deny` entry;
//! 2. there are `allow` entries and neither the host nor the address matches one;
//! 3. it is link-local (cloud metadata services live there: `169.254.169.254`,
//!    `fd00:ec2::254`), unspecified, multicast or broadcast, and no `allow` CIDR covers it;
//! 4. it is loopback or private (RFC 1918, CGNAT, unique local) and neither `allow_private`
//!    nor an `allow` CIDR covers it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One `allow`/`deny` entry: a host name (`example.com`; `.example.com` or `*.example.com` for
/// its subdomains too) or an address block (`10.0.0.0/8`, `192.0.2.7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackRule {
    Host { name: String, subdomains: bool },
    Net(IpNet),
}

impl FromStr for CallbackRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty callback rule".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let (name, subdomains) = match s.strip_prefix("*.").or_else(|| s.strip_prefix('.')) {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        // `192.0.2.7.` is the address, not a host name that looks like one; an address has no
        // subdomains.
        if let Ok(ip) = name.parse::<IpAddr>() {
            return match subdomains {
                false => Ok(Self::Net(IpNet::from(ip))),
                true => Err(format!("{s:?}: an address has no subdomains")),
            };
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            return Err(format!(
                "{s:?} is neither a host name nor an address or CIDR block"
            ));
        }
        Ok(Self::Host { name, subdomains })
    }
}

impl fmt::Display for CallbackRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host {
                name,
                subdomains: true,
            } => write!(f, ".{name}"),
            Self::Host { name, .. } => f.write_str(name),
            Self::Net(net) => write!(f, "{net}"),
        }
    }
}

impl CallbackRule {
    fn matches_host(&self, host: &str) -> bool {
        match self {
            Self::Host { name, subdomains } => {
                host == name
                    || (*subdomains
                        && host
                            .strip_suffix(name.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            Self::Net(_) => false,
        }
    }

    fn covers(&self, ip: IpAddr) -> bool {
        matches!(self, Self::Net(net) if net.contains(&ip))
    }
}

/// Why a callback target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefusal {
    #[error("{target} is denied by the callback deny list ({rule})")]
    Denied { target: String, rule: String },
    #[error("{target} is not on the callback allow list")]
    NotAllowed { target: String },
    #[error(
        "{target} is a {kind} address, where callbacks may not go (cloud metadata services live there)"
    )]
    Forbidden { target: String, kind: &'static str },
    #[error(
        "{target} is a {kind} address; callbacks go there only if the operator allows private \
         addresses"
    )]
    Private { target: String, kind: &'static str },
}

/// Where callbacks may go. The default refuses private and loopback addresses too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    pub allow: Vec<CallbackRule>,
    pub deny: Vec<CallbackRule>,
    /// Loopback and private addresses are allowed (`sluice up` on a laptop calls back to
    /// `127.0.0.1`).
    pub allow_private: bool,
}

/// The IPv4 address an IPv6 one stands for, where it embeds one that the network may reach
/// as IPv4: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`,
/// `64:ff9b:1::/48`) and 6to4 (`2002:aabb:ccdd::`). Otherwise the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let tail = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    match s {
        // IPv4-compatible (deprecated), but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => tail(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => tail(hi, lo),
        [0x64, 0xff9b, 1, ..] => tail(s[6], s[7]),
        [0x2002, hi, lo, ..] => tail(hi, lo),
        _ => ip,
    }
}

/// The kind of an address no callback may reach by default.
fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() || a >= 240 {
                Some("reserved")
            } else if v4.octets() == [100, 100, 100, 200] || v4.octets() == [168, 63, 129, 16] {
                // Alibaba Cloud's metadata service; Azure's host endpoint.
                Some("cloud metadata")
            } else if ((a, b) == (192, 0) && v4.octets()[2] == 0) || (a == 198 && (b & 0xfe) == 18)
            {
                // IETF protocol assignments; benchmarking.
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if first == 0x2001 && v6.segments()[1] == 0 {
                // Teredo: reaches whatever IPv4 address it wraps.
                Some("Teredo")
            } else if first == 0x0100 && v6.segments()[1..4] == [0, 0, 0] {
                Some("discard-only")
            } else {
                None
            }
        }
    }
}

/// The kind of a loopback or private address.
fn private_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (CGNAT)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.segments()[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else {
                None
            }
        }
    }
}

impl CallbackPolicy {
    /// Whether the host name alone is denied (checked before it is resolved).
    pub fn check_name(&self, host: &str) -> Result<(), CallbackRefusal> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.deny.iter().find(|r| r.matches_host(&host)) {
            Some(rule) => Err(CallbackRefusal::Denied {
                target: host,
                rule: rule.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a callback to `host` (as written in the URL) may go to `ip`, one of the
    /// addresses it resolves to (for an address in the URL, that address).
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), CallbackRefusal> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = canonical(ip);
        let target = if host.parse::<IpAddr>().is_ok() {
            ip.to_string()
        } else {
            format!("{host} ({ip})")
        };
        if let Some(rule) = self
            .deny
            .iter()
            .find(|r| r.matches_host(&host) || r.covers(ip))
        {
            return Err(CallbackRefusal::Denied {
                target,
                rule: rule.to_string(),
            });
        }
        let listed = self
            .allow
            .iter()
            .any(|r| r.matches_host(&host) || r.covers(ip));
        if !self.allow.is_empty() && !listed {
            return Err(CallbackRefusal::NotAllowed { target });
        }
        let covered = self.allow.iter().any(|r| r.covers(ip));
        if let Some(kind) = forbidden_kind(ip).filter(|_| !covered) {
            return Err(CallbackRefusal::Forbidden { target, kind });
        }
        if let Some(kind) = private_kind(ip).filter(|_| !covered && !self.allow_private) {
            return Err(CallbackRefusal::Private { target, kind });
        }
        Ok(())
    }
}

/// Headers of a signed callback: when it was signed (Unix seconds) and the signature,
/// `v1=<hex HMAC-SHA256 of the signed message>` under the operator's signing key.
pub const SIGNATURE_TIMESTAMP_HEADER: &str = "x-sluice-timestamp";
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";

/// What a callback signature covers: the timestamp, the call id, the function's name and its
/// status (the `X-Call-Id`, `X-Function-Name` and `X-Function-Status` headers), each followed by
/// a newline, then the body. Signing more than the body keeps a signed callback from being
/// passed off as another call's, or another function's.
pub fn signed_message(
    timestamp: u64,
    call_id: &str,
    function_name: &str,
    status: u16,
    body: &[u8],
) -> Vec<u8> {
    let mut message = format!("{timestamp}\n{call_id}\n{function_name}\n{status}\n").into_bytes();
    message.extend_from_slice(body);
    message
}

/// Carried on each callback and async submission it makes: how many callbacks led to this call.
/// A callback that points back at a gateway's async route makes a chain; past
/// [`MAX_CALLBACK_HOPS`] the gateway refuses the submission, so a loop ends.
pub const HOPS_HEADER: &str = "x-sluice-hops";
pub const MAX_CALLBACK_HOPS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules(list: &[&str]) -> Vec<CallbackRule> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn by_default_only_public_addresses_are_allowed() {
        let p = CallbackPolicy::default();
        assert!(p.check("example.com", ip("93.184.215.14")).is_ok());
        assert!(p.check("2606:2800::1", ip("2606:2800::1")).is_ok());
        for (host, addr) in [
            ("169.254.169.254", "169.254.169.254"),
            ("metadata.google.internal", "169.254.169.254"),
            ("fd00:ec2::254", "fd00:ec2::254"),
            ("0.0.0.0", "0.0.0.0"),
            ("x", "224.0.0.1"),
            ("x", "255.255.255.255"),
            ("x", "fe80::1"),
            ("x", "ff02::1"),
            ("x", "::"),
            ("x", "100.100.100.200"),
            ("x", "168.63.129.16"),
            ("x", "198.18.0.1"),
            ("x", "192.0.0.8"),
            // IPv6 forms that wrap an IPv4 address: NAT64, 6to4, compatible; and Teredo.
            ("x", "64:ff9b::a9fe:a9fe"),
            ("x", "64:ff9b:1::a9fe:a9fe"),
            ("x", "2002:a9fe:a9fe::1"),
            ("x", "::169.254.169.254"),
            ("x", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            ("x", "fec0::1"),
        ] {
            assert!(
                matches!(
                    p.check(host, ip(addr)),
                    Err(CallbackRefusal::Forbidden { .. })
                ),
                "{addr}"
            );
        }
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:0a00:0001::",
        ] {
            assert!(
                matches!(p.check("x", ip(addr)), Err(CallbackRefusal::Private { .. })),
                "{addr}"
            );
        }
    }

    #[test]
    fn private_addresses_when_allowed_but_never_metadata() {
        let p = CallbackPolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(p.check("localhost", ip("127.0.0.1")).is_ok());
        assert!(p.check("x", ip("::ffff:10.0.0.1")).is_ok());
        assert!(p.check("x", ip("169.254.169.254")).is_err());
        assert!(p.check("x", ip("fd00:ec2::254")).is_err());
    }

    #[test]
    fn allow_and_deny_lists_take_hosts_and_cidrs() {
        let p = CallbackPolicy {
            allow: rules(&[
                "hooks.example.com",
                ".corp.example",
                "10.20.0.0/16",
                "169.254.7.7",
            ]),
            deny: rules(&["bad.corp.example", "10.20.30.0/24"]),
            allow_private: false,
        };
        assert!(p.check("hooks.example.com", ip("93.184.215.14")).is_ok());
        assert!(p.check("a.b.corp.example", ip("93.184.215.15")).is_ok());
        assert!(p.check("corp.example", ip("93.184.215.15")).is_ok());
        assert!(matches!(
            p.check("evilcorp.example", ip("93.184.215.15")),
            Err(CallbackRefusal::NotAllowed { .. })
        ));
        assert!(matches!(
            p.check("other.example.com", ip("93.184.215.14")),
            Err(CallbackRefusal::NotAllowed { .. })
        ));
        // An allowed CIDR opens private and link-local addresses it covers.
        assert!(p.check("x", ip("10.20.1.1")).is_ok());
        assert!(p.check("x", ip("169.254.7.7")).is_ok());
        // An allowed name does not: it may resolve anywhere.
        assert!(matches!(
            p.check("hooks.example.com", ip("127.0.0.1")),
            Err(CallbackRefusal::Private { .. })
        ));
        // Deny wins over allow.
        assert!(matches!(
            p.check("x", ip("10.20.30.4")),
            Err(CallbackRefusal::Denied { .. })
        ));
        assert!(matches!(
            p.check("BAD.corp.example.", ip("93.184.215.15")),
            Err(CallbackRefusal::Denied { .. })
        ));
    }

    #[test]
    fn rules_parse_or_say_what_is_wrong() {
        assert_eq!(
            "*.Example.com".parse::<CallbackRule>().unwrap().to_string(),
            ".example.com"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<CallbackRule>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "::1".parse::<CallbackRule>().unwrap().to_string(),
            "::1/128"
        );
        // Found by the fuzzer: an address with a trailing dot is the address.
        for spelled in ["82.2.2.2.", "82.2.2.2..", "82.2.2.2"] {
            assert_eq!(
                spelled.parse::<CallbackRule>().unwrap().to_string(),
                "82.2.2.2/32"
            );
        }
        assert!("*.82.2.2.2".parse::<CallbackRule>().is_err());
        for bad in ["", "a b", "exa mple.com", "x/33", "http://x", "a..b"] {
            assert!(bad.parse::<CallbackRule>().is_err(), "{bad:?}");
        }
    }
}
