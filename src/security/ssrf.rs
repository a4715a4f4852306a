//! The SSRF guard: tenants choose webhook URLs, so hookrelay must never become a way into the network it
//! runs in. Every address a request would go to is checked, and the connection is made to exactly the
//! addresses that were checked (the resolver hands them to the connector), so DNS rebinding cannot swap in
//! another address between the check and the connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::SecurityConfig;

/// Why a destination was refused; travels inside the HTTP client's error so the executor can tell it apart.
#[derive(Debug, Clone, thiserror::Error)]
#[error("blocked destination: {0}")]
pub struct Blocked(pub String);

/// What may be connected to.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    enabled: bool,
    allow: Vec<IpNet>,
    allow_hosts: Vec<String>,
    ports: Vec<u16>,
    any_port: bool,
}

impl AddressPolicy {
    pub fn new(cfg: &SecurityConfig) -> Self {
        Self {
            enabled: cfg.ssrf_guard,
            allow: cfg.allow_cidrs.clone(),
            allow_hosts: cfg
                .allow_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ports: cfg.allowed_ports.clone(),
            any_port: cfg.any_port,
        }
    }

    pub fn check_port(&self, port: u16) -> Result<(), Blocked> {
        if self.any_port || self.ports.contains(&port) {
            Ok(())
        } else {
            Err(Blocked(format!(
                "port {port} is not allowed (allowed: {:?}; see security.allowed_ports)",
                self.ports
            )))
        }
    }

    /// What a URL says of its destination: its port, and its address when it is written as one (host
    /// names are checked by the resolver, at every connection).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Blocked> {
        self.check_port(url.port_or_known_default().unwrap_or(0))?;
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(ip.into()),
            _ => Ok(()),
        }
    }

    /// Hosts on the allow-list skip the address check (their addresses are trusted by name).
    pub fn host_is_trusted(&self, host: &str) -> bool {
        !self.enabled
            || self
                .allow_hosts
                .iter()
                .any(|h| h == &host.to_ascii_lowercase())
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        if !self.enabled || self.allow.iter().any(|net| net.contains(&ip)) || is_public(ip) {
            Ok(())
        } else {
            Err(Blocked(format!(
                "{ip} is not a public address (allow it with security.allow_cidrs)"
            )))
        }
    }
}

/// True for globally routable unicast addresses; false for every special-purpose range (IANA registries),
/// including IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4) when the embedded address is not public.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let blocked = a == 0                                   // "this network"
        || a == 10                                         // private
        || (a == 100 && (64..128).contains(&b))            // CGNAT 100.64/10
        || a == 127                                        // loopback
        || (a == 169 && b == 254)                          // link-local
        || (a == 172 && (16..32).contains(&b))             // private
        || (a == 192 && b == 0 && c == 0)                  // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                  // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)                // 6to4 relay anycast
        || (a == 192 && b == 168)                          // private
        || (a == 198 && (b == 18 || b == 19))              // benchmarking
        || (a == 198 && b == 51 && c == 100)               // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)                // TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !blocked
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let blocked = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001)    // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x2001 && s[1] < 0x0200)                       // IETF protocol assignments 2001::/23 (Teredo…)
        || (s[0] == 0x2001 && s[1] == 0x0db8)                      // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000)                       // documentation 3fff::/20
        || (s[0] & 0xfe00) == 0xfc00                               // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80                               // link-local
        || (s[0] & 0xffc0) == 0xfec0                               // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00                               // multicast
        || (s[0] & 0xe000) != 0x2000; // outside global unicast 2000::/3
    !blocked
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64
/// (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(tail),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// A resolver for the HTTP client that drops every refused address and fails when none is left.
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.host_is_trusted(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
                .into_iter()
                .partition(|a| policy.check_ip(a.ip()).is_ok());
            if allowed.is_empty() {
                let list: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
                let why = format!(
                    "{host} resolves only to non-public addresses ({})",
                    list.join(", ")
                );
                return Err(Box::new(Blocked(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_special_purpose_range_by_literal_address() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "64:ff9b:1::1",
            "3fff::1",
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
        ] {
            assert!(!is_public(ip(a)), "{a} must be refused");
        }
    }

    #[test]
    fn admits_public_addresses_including_public_ones_embedded_in_ipv6() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(a)), "{a} must be allowed");
        }
    }

    fn policy(allow: &[&str], ports: &[u16]) -> AddressPolicy {
        AddressPolicy::new(&SecurityConfig {
            allow_cidrs: allow.iter().map(|c| c.parse().unwrap()).collect(),
            allowed_ports: ports.to_vec(),
            ..SecurityConfig::default()
        })
    }

    #[test]
    fn allow_lists_admit_exactly_what_they_list() {
        let p = policy(&["127.0.0.1/32", "10.1.0.0/16"], &[80, 443, 8080]);
        assert!(p.check_ip(ip("127.0.0.1")).is_ok());
        assert!(p.check_ip(ip("127.0.0.2")).is_err());
        assert!(p.check_ip(ip("10.1.200.3")).is_ok());
        assert!(p.check_ip(ip("10.2.0.1")).is_err());
        assert!(p.check_port(8080).is_ok());
        assert!(p.check_port(22).is_err());
        let default = policy(&[], &[80, 443]);
        assert!(default.check_port(443).is_ok() && default.check_port(8443).is_err());
        assert!(!default.host_is_trusted("internal.example"));
    }

    #[tokio::test]
    async fn a_hostname_resolving_to_a_blocked_address_is_refused() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver {
            policy: Arc::new(policy(&[], &[80])),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
        let allowed = GuardedResolver {
            policy: Arc::new(policy(&["127.0.0.0/8", "::1/128"], &[80])),
        };
        let addrs: Vec<SocketAddr> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
