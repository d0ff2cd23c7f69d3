//! Who a request came from, and which URL clients are told to use: decided by the server's
//! configuration and the socket, never by what a client writes in its headers.
//!
//! Contract:
//! - [`client_ip`]: the TCP peer's address, unless the peer is inside one of the
//!   `--trusted-proxy` networks. Then `X-Forwarded-For` is read right to left (each proxy
//!   appends the address it saw), skipping addresses that are themselves trusted proxies; the
//!   first untrusted address is the client. An unparsable entry stops the walk, and the last
//!   address established (the peer, or a trusted proxy) is the client.
//! - [`public_base`]: `--public-url` without a trailing slash, else
//!   `{scheme}://{advertised address}` ([`advertised_base`]), `https` when TLS is on. The `Host`
//!   header is never used.
//! - [`TrustedProxy`] parses `CIDR` or a bare address (one host), and names the bad value.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// A network whose members' `X-Forwarded-For` is believed (`--trusted-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub IpNet);

/// A `--trusted-proxy` value that is neither a CIDR nor an address.
#[derive(Debug, thiserror::Error)]
#[error("trusted proxy {value:?} is neither a CIDR (10.0.0.0/8, fd00::/8) nor an IP address")]
pub struct BadTrustedProxy {
    /// The value given.
    pub value: String,
}

impl FromStr for TrustedProxy {
    type Err = BadTrustedProxy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| BadTrustedProxy {
                value: s.to_owned(),
            })
    }
}

fn is_trusted(trusted: &[TrustedProxy], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|t| t.0.contains(&ip))
}

/// The client's address: see the module contract.
pub fn client_ip(trusted: &[TrustedProxy], headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let mut client = peer.ip().to_canonical();
    if !is_trusted(trusted, client) {
        return client;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// `{scheme}://{listen}` for a listener bound at `listen`. An unspecified address (`0.0.0.0`,
/// `::`) is replaced by this machine's host name, since no client can connect to it.
pub fn advertised_base(listen: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if listen.ip().is_unspecified() {
        let host = rustix::system::uname();
        let host = host.nodename().to_string_lossy();
        return format!("{scheme}://{host}:{}", listen.port());
    }
    format!("{scheme}://{listen}")
}

/// The base of every URL handed to clients: see the module contract.
pub fn public_base(public_url: Option<&str>, listen: SocketAddr, tls: bool) -> String {
    match public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => advertised_base(listen, tls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse::<TrustedProxy>().unwrap()];
        assert_eq!(
            client_ip(&trusted, &headers("203.0.113.9"), peer),
            peer.ip()
        );
    }

    #[test]
    fn forwarded_for_is_walked_right_to_left_through_trusted_proxies() {
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let trusted = [
            "10.0.0.0/8".parse::<TrustedProxy>().unwrap(),
            "192.0.2.1".parse().unwrap(),
        ];
        let h = headers("198.51.100.1, 203.0.113.9, 192.0.2.1");
        assert_eq!(
            client_ip(&trusted, &h, peer),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let h = headers("203.0.113.9, garbage");
        assert_eq!(client_ip(&trusted, &h, peer), peer.ip());
    }

    #[test]
    fn bad_trusted_proxy_names_the_value() {
        let e = "10.0.0.0/33".parse::<TrustedProxy>().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
    }

    #[test]
    fn public_base_never_comes_from_a_header() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(public_base(None, listen, true), "https://127.0.0.1:8080");
        assert_eq!(
            public_base(Some("https://u.example/"), listen, false),
            "https://u.example"
        );
    }
}
