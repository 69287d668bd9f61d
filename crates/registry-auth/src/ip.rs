//! Client addresses: CIDR lists (IPv4 and IPv6) and the address a request comes from, which is
//! the peer's unless the peer is a trusted proxy, in which case `Forwarded` / `X-Forwarded-For`
//! are walked from the right, past trusted proxies, to the first address that is not one.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

use crate::Error;

/// A list of address ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRanges(Vec<IpNet>);

impl std::fmt::Display for IpRanges {
    /// Comma-separated CIDRs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl IpRanges {
    /// Every address, IPv4 and IPv6.
    pub fn all() -> IpRanges {
        IpRanges(vec![
            "0.0.0.0/0".parse().expect("valid"),
            "::/0".parse().expect("valid"),
        ])
    }

    /// No address.
    pub fn none() -> IpRanges {
        IpRanges(Vec::new())
    }

    /// Every address any of `ranges` holds.
    pub fn union<'a>(ranges: impl IntoIterator<Item = &'a IpRanges>) -> IpRanges {
        IpRanges(
            ranges
                .into_iter()
                .flat_map(|r| r.0.iter().copied())
                .collect(),
        )
    }

    /// Parses ranges (`10.0.0.0/8`, `2001:db8::/32`, or a single address), one per item.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<IpRanges, Error> {
        items
            .iter()
            .map(|s| {
                let s = s.as_ref().trim();
                IpNet::from_str(s)
                    .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| Error::setting(s, "an IP address or CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(IpRanges)
    }

    /// Whether `ip` is in one of the ranges (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether every address is in the list.
    pub fn is_everything(&self) -> bool {
        let v4 = self
            .0
            .iter()
            .any(|n| matches!(n, IpNet::V4(n) if n.prefix_len() == 0));
        let v6 = self
            .0
            .iter()
            .any(|n| matches!(n, IpNet::V6(n) if n.prefix_len() == 0));
        v4 && v6
    }
}

/// One client as limits count clients: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64); IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The address a request comes from. `forwarded` and `x_forwarded_for` are the headers' values
/// (several instances joined with `,`); they are believed only as far as the chain of trusted
/// proxies reaches. `None` when a trusted proxy names the client with something that is not an
/// address (`unknown`, an obfuscated identifier).
pub fn client_address(
    peer: IpAddr,
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
    trusted: &IpRanges,
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let hops: Vec<Option<IpAddr>> = match (forwarded, x_forwarded_for) {
        (Some(f), _) => f
            .split(',')
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v))
            })
            .collect(),
        (None, Some(x)) => x.split(',').map(parse_node).collect(),
        (None, None) => return Some(peer),
    };
    let mut client = Some(peer);
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) if trusted.contains(ip) => client = Some(ip),
            other => return other,
        }
    }
    client
}

/// An address as a forwarding header writes it: bare, quoted, `[v6]:port` or `v4:port`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| IpAddr::V6(a).to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(s: &[&str]) -> IpRanges {
        IpRanges::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_table() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["0.0.0.0/0", "::/0"], "203.0.113.9", true),
            (&["0.0.0.0/0", "::/0"], "2001:db8::1", true),
            (&["0.0.0.0/0"], "2001:db8::1", false),
            (&["0.0.0.0/32"], "127.0.0.1", false),
            (&["0.0.0.0/32"], "0.0.0.1", false),
            (&["0.0.0.0/32"], "::1", false),
            (&["127.0.0.1/32"], "127.0.0.1", true),
            (&["127.0.0.1/32"], "127.0.0.2", false),
            (&["127.0.0.1"], "127.0.0.1", true),
            (&["10.0.0.0/8"], "10.255.255.255", true),
            (&["10.0.0.0/8"], "11.0.0.0", false),
            (&["10.1.2.3/8"], "10.9.9.9", true), // host bits are ignored
            (&["10.0.0.0/8"], "::ffff:10.1.1.1", true), // IPv4-mapped
            (&["2001:db8::/32"], "2001:db8:ffff::1", true),
            (&["2001:db8::/32"], "2001:db9::1", false),
            (&["::1"], "::1", true),
            (&[], "127.0.0.1", false),
        ];
        for (list, addr, expected) in cases {
            assert_eq!(
                ranges(list).contains(ip(addr)),
                *expected,
                "{list:?} contains {addr}"
            );
        }
        assert!(IpRanges::all().is_everything());
        assert!(!ranges(&["0.0.0.0/0"]).is_everything());
        assert!(IpRanges::parse(&["10.0.0.0/33"]).is_err());
        assert!(IpRanges::parse(&["example.com"]).is_err());
    }

    #[test]
    fn forwarded_only_from_trusted_proxies() {
        let proxies = ranges(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // An untrusted peer's headers are ignored.
        assert_eq!(
            client_address(ip("127.0.0.2"), None, Some("10.0.0.1"), &proxies),
            Some(ip("127.0.0.2"))
        );
        // Trusted: the right-most untrusted hop is the client.
        assert_eq!(
            client_address(peer, None, Some("1.2.3.4, 10.0.0.5"), &proxies),
            Some(ip("1.2.3.4"))
        );
        // A spoofed left part is not believed past the first untrusted hop.
        assert_eq!(
            client_address(peer, None, Some("10.0.0.9, 5.6.7.8, 10.0.0.5"), &proxies),
            Some(ip("5.6.7.8"))
        );
        assert_eq!(
            client_address(
                peer,
                Some("for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\""),
                Some("9.9.9.9"),
                &proxies
            ),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            client_address(peer, Some("for=\"192.0.2.43:47011\""), None, &proxies),
            Some(ip("192.0.2.43"))
        );
        assert_eq!(
            client_address(peer, Some("for=unknown"), None, &proxies),
            None
        );
        // Only proxies in the chain: the left-most is the client.
        assert_eq!(
            client_address(peer, None, Some("10.0.0.7"), &proxies),
            Some(ip("10.0.0.7"))
        );
        assert_eq!(client_address(peer, None, None, &proxies), Some(peer));
    }
}
