//! SSRF guard: keeps webhook deliveries away from private, loopback and reserved addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// True for addresses a webhook must never reach unless private targets are allowed:
/// loopback, private, link-local, multicast, unspecified, broadcast, CGNAT, documentation,
/// benchmarking and other reserved ranges, IPv6 unique-local / site-local, and IPv6 forms
/// that embed a blocked IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo).
pub fn is_blocked_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()                      // 127/8
        || ip.is_private()                // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()             // 169.254/16
        || ip.is_multicast()              // 224/4
        || ip.is_broadcast()              // 255.255.255.255
        || ip.is_documentation()          // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || a == 0                         // 0/8 ("this network"; Linux routes 0.0.0.0 to localhost)
        || a >= 240                       // 240/4 reserved
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 CGNAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24 IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
}

/// IPv6 networks blocked outright, as (network, prefix length).
const BLOCKED_V6_NETS: [(Ipv6Addr, u32); 8] = [
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // deprecated site-local
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),  // unique-local
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48), // benchmarking
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),  // discard-only
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
];

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return true;
    }
    // Addresses that carry an IPv4 address inside: judge them by that address, because
    // the packets (via dual-stack sockets, NAT64 gateways or tunnels) end up there.
    if let Some(v4) = embedded_v4(&ip) {
        return is_blocked_v4(v4);
    }
    BLOCKED_V6_NETS.iter().any(|&(net, len)| {
        let mask = u128::MAX << (128 - len);
        (u128::from(ip) & mask) == (u128::from(net) & mask)
    })
}

fn embedded_v4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match ip.segments() {
        // ::ffff:a.b.c.d IPv4-mapped
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // ::a.b.c.d IPv4-compatible (deprecated, but some stacks still route it)
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        // 64:ff9b::/96 well-known NAT64 prefix
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 2002:AABB:CCDD::/48 6to4
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // 2001:0::/32 Teredo: the client's IPv4 address is stored bit-inverted
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(low))),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("URL scheme must be http or https")]
    Scheme,
    #[error("URL has no host")]
    NoHost,
    #[error(
        "target address {0} is not allowed (private, loopback, link-local or otherwise reserved)"
    )]
    Blocked(IpAddr),
    #[error("DNS resolution failed: {0}")]
    Dns(String),
}

/// Checks the URL's scheme, and when the host is an IP literal, the literal itself (reqwest
/// does not call the resolver for literals). Host names are left to [`GuardedResolver`].
pub fn check_url(url: &url::Url, allow_private: bool) -> Result<(), GuardError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(GuardError::Scheme);
    }
    let ip = match url.host() {
        None => return Err(GuardError::NoHost),
        Some(url::Host::Domain("")) => return Err(GuardError::NoHost),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if !allow_private && is_blocked_ip(ip) {
        return Err(GuardError::Blocked(ip));
    }
    Ok(())
}

/// For deliveries through an egress proxy, which resolves the target's name itself (Hookline
/// never connects to the target): resolves the name here and refuses it when any of its
/// addresses is blocked, since the proxy may pick any of them. The proxy's own lookup can
/// still differ (DNS rebinding), which is why the proxy should refuse private ranges too.
pub async fn check_name_for_proxy(url: &url::Url, allow_private: bool) -> Result<(), GuardError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        // IP literals were judged by `check_url`.
        return Ok(());
    };
    if allow_private {
        return Ok(());
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| GuardError::Dns(format!("{host}: {e}")))?
        .collect();
    if resolved.is_empty() {
        return Err(GuardError::Dns(format!("{host} has no addresses")));
    }
    match resolved.iter().find(|sa| is_blocked_ip(sa.ip())) {
        Some(sa) => Err(GuardError::Blocked(sa.ip())),
        None => Ok(()),
    }
}

/// A reqwest DNS resolver that resolves with tokio and drops blocked addresses, so the check
/// applies to the address actually connected to (defeats DNS rebinding). When every address
/// is blocked, resolution fails with an error whose message contains "blocked target".
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest substitutes the URL's port (or the scheme default).
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(GuardError::Dns(format!("{host} has no addresses")).into());
            }
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|sa| allow_private || !is_blocked_ip(sa.ip()))
                .collect();
            if allowed.is_empty() {
                let ips: Vec<String> = resolved.iter().map(|sa| sa.ip().to_string()).collect();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "blocked target: {host} resolves only to private or reserved addresses ({})",
                        ips.join(", ")
                    ),
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These addresses are only classified here; no traffic is ever sent to them.
    #[test]
    fn is_blocked_ip_table() {
        let cases: &[(&str, bool)] = &[
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("93.184.216.34", false),
            ("172.15.255.255", false),
            ("172.32.0.1", false),
            ("100.63.255.255", false),
            ("100.128.0.1", false),
            ("198.17.255.255", false),
            ("198.20.0.1", false),
            ("192.0.1.1", false),
            ("223.255.255.255", false),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("10.0.0.1", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("255.255.255.255", true),
            ("240.0.0.1", true),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("192.0.0.8", true),
            ("192.0.2.1", true),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("198.18.0.1", true),
            ("198.19.255.255", true),
            ("2001:4860:4860::8888", false),
            ("2606:4700:4700::1111", false),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::808:808", false),
            ("2002:808:808::1", false),
            ("fe7f::1", false),
            ("::", true),
            ("::1", true),
            ("fe80::1", true),
            ("febf:ffff::1", true),
            ("fec0::1", true),
            ("fc00::1", true),
            ("fd12:3456::1", true),
            ("ff02::1", true),
            ("2001:db8::1", true),
            ("3fff::1", true),
            ("3fff:fff::1", true),
            ("3fff:1000::1", false),
            ("2001:2::1", true),
            ("100::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.1.2.3", true),
            ("::ffff:169.254.169.254", true),
            ("::127.0.0.1", true),
            ("::192.168.0.1", true),
            ("64:ff9b::7f00:1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b:1::1", true),
            ("2002:7f00:1::1", true),
            ("2002:a00:1::1", true),
            // Teredo, client 127.0.0.1 stored inverted as 80ff:fffe.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", true),
            // Teredo, client 8.8.8.8 stored inverted as f7f7:f7f7.
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", false),
        ];
        for (ip, blocked) in cases {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(is_blocked_ip(parsed), *blocked, "{ip}");
        }
    }

    #[test]
    fn check_url_table() {
        // (url, allow_private, Ok?, error fragment)
        let cases: &[(&str, bool, Result<(), &str>)] = &[
            ("https://example.com/hook", false, Ok(())),
            ("http://example.com:8080/hook", false, Ok(())),
            ("https://localhost/hook", false, Ok(())), // left to the resolver
            ("https://8.8.8.8/hook", false, Ok(())),
            ("https://[2001:4860:4860::8888]/", false, Ok(())),
            ("http://127.0.0.1:9000/", false, Err("127.0.0.1")),
            ("http://127.0.0.1:9000/", true, Ok(())),
            ("http://127.1/", false, Err("127.0.0.1")),
            ("http://2130706433/", false, Err("127.0.0.1")),
            ("http://0x7f.0.0.1/", false, Err("127.0.0.1")),
            ("http://0/", false, Err("0.0.0.0")),
            (
                "http://169.254.169.254/latest/meta-data",
                false,
                Err("169.254.169.254"),
            ),
            ("http://[::1]/", false, Err("::1")),
            ("http://[::ffff:127.0.0.1]/", false, Err("::ffff:127.0.0.1")),
            ("http://[fd00::1]/", true, Ok(())),
            ("ftp://example.com/", false, Err("scheme")),
            ("file:///etc/passwd", false, Err("scheme")),
            ("gopher://127.0.0.1/", true, Err("scheme")),
            ("unix:/var/run/docker.sock", false, Err("scheme")),
        ];
        for (raw, allow_private, want) in cases {
            let url = url::Url::parse(raw).unwrap();
            match (check_url(&url, *allow_private), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{raw}: {e}")
                }
                (got, _) => panic!("{raw}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn blocked_error_message() {
        let e = GuardError::Blocked("10.0.0.1".parse().unwrap());
        assert_eq!(
            e.to_string(),
            "target address 10.0.0.1 is not allowed (private, loopback, link-local or otherwise reserved)"
        );
    }

    #[tokio::test]
    async fn resolver_filters_localhost() {
        let name = || "localhost".parse::<Name>().unwrap();

        let err = GuardedResolver {
            allow_private: false,
        }
        .resolve(name())
        .await
        .err()
        .expect("localhost must be blocked");
        assert!(err.to_string().contains("blocked target"), "{err}");

        let addrs: Vec<SocketAddr> = GuardedResolver {
            allow_private: true,
        }
        .resolve(name())
        .await
        .unwrap()
        .collect();
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(addrs.iter().any(|a| a.ip() == localhost), "{addrs:?}");
    }

    #[tokio::test]
    async fn names_for_a_proxy_are_resolved_and_judged_here() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let err = check_name_for_proxy(&url("http://localhost:9/"), false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, GuardError::Blocked(ip) if ip.is_loopback()),
            "{err}"
        );
        // Allowed private targets and IP literals need no lookup here.
        check_name_for_proxy(&url("http://localhost:9/"), true)
            .await
            .unwrap();
        check_name_for_proxy(&url("http://8.8.8.8/"), false)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn resolver_passes_public_literals_without_network() {
        // An IP literal "resolves" locally, so this exercises the filter without DNS traffic.
        let name = "8.8.8.8".parse::<Name>().unwrap();
        let addrs: Vec<SocketAddr> = GuardedResolver {
            allow_private: false,
        }
        .resolve(name)
        .await
        .unwrap()
        .collect();
        assert_eq!(addrs, vec!["8.8.8.8:0".parse::<SocketAddr>().unwrap()]);
    }
}
