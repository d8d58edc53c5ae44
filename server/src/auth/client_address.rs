//! Which address a request comes from, for every per-address limit.
//!
//! Behind a TLS-terminating proxy every request arrives from the proxy, so
//! per-address limits would count the whole community as one client. The
//! proxy names the real client in `X-Forwarded-For`, but anyone can send
//! that header: it is read only when the direct peer is a proxy the operator
//! trusts (`--trusted-proxies`), and then from the right, where the trusted
//! proxies appended what they saw. The first address from the right that is
//! not a trusted proxy is the client; whatever lies left of it was written
//! by the client itself and is ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed: single addresses or CIDR
/// ranges. Empty by default: the header is then ignored entirely.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated addresses (`10.0.0.1`, `::1`) and ranges (`10.0.0.0/8`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let network = match part.parse::<IpNet>() {
                Ok(network) => network,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{part:?} is neither an IP address nor a CIDR range"))?,
            };
            networks.push(network);
        }
        Ok(Self { networks })
    }
}

/// The address of the client that sent `request`: its direct peer, or, when
/// that peer is a trusted proxy, the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
///
/// Every per-address limit (logins, sign-ups, sync connections) should call
/// this, so they all agree on who the client is. An `X-Forwarded-For` entry
/// that does not parse ends the walk: the address right of it (a trusted
/// proxy's report) is used, never anything the client could have written.
/// IPv4-mapped IPv6 addresses are reported as IPv4. A request without a peer
/// address (only built by hand in tests) is `0.0.0.0`.
pub fn client_address(request: &HttpRequest, trusted: &TrustedProxies) -> IpAddr {
    let Some(peer) = request.peer_addr().map(|peer| canonical(peer.ip())) else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    if !trusted.contains(peer) {
        return peer;
    }
    // Several header lines form one list, in order.
    let forwarded: Vec<&str> = request
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(address) = parse_forwarded(entry) else {
            break;
        };
        client = address;
        if !trusted.contains(address) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as
/// some proxies write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(canonical)
}

/// `::ffff:192.0.2.1` is `192.0.2.1`: a dual-stack listener reports IPv4
/// peers that way, and limits must not count one client twice.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn address(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn request(peer: &str, forwarded: &[&str]) -> HttpRequest {
        let mut request = TestRequest::default().peer_addr(SocketAddr::new(address(peer), 40_000));
        for value in forwarded {
            request = request.append_header(("X-Forwarded-For", *value));
        }
        request.to_http_request()
    }

    fn trusted(text: &str) -> TrustedProxies {
        text.parse().unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let request = request("198.51.100.9", &["203.0.113.5"]);
        assert_eq!(
            client_address(&request, &TrustedProxies::default()),
            address("198.51.100.9")
        );
    }

    #[test]
    fn a_peer_that_is_not_a_trusted_proxy_is_the_client_whatever_it_forwards() {
        let request = request("198.51.100.9", &["203.0.113.5"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.0/8")),
            address("198.51.100.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let request = request("10.0.0.2", &["203.0.113.5"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.2")),
            address("203.0.113.5")
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client_not_what_the_client_wrote() {
        // The client sent "1.2.3.4" itself; the outer proxy appended what it
        // saw (203.0.113.5), the inner one the outer proxy (10.0.0.3).
        let request = request("10.0.0.2", &["1.2.3.4, 203.0.113.5", "10.0.0.3"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.0/8")),
            address("203.0.113.5")
        );
    }

    #[test]
    fn an_entry_that_does_not_parse_stops_at_the_last_trusted_report() {
        let request = request("10.0.0.2", &["203.0.113.5, not-an-address, 10.0.0.3"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.0/8")),
            address("10.0.0.3")
        );
    }

    #[test]
    fn ports_and_mapped_ipv4_addresses_are_understood() {
        let request = request("::ffff:10.0.0.2", &["[2001:db8::1]:4711"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.2")),
            address("2001:db8::1")
        );
        let request = self::request("10.0.0.2", &["203.0.113.5:4711"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.2")),
            address("203.0.113.5")
        );
    }

    #[test]
    fn a_request_through_proxies_only_is_the_left_most_proxy() {
        let request = request("10.0.0.2", &["10.0.0.7"]);
        assert_eq!(
            client_address(&request, &trusted("10.0.0.0/8")),
            address("10.0.0.7")
        );
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_ranges_and_refuse_anything_else() {
        let parsed = trusted(" 10.0.0.0/8, 192.0.2.1 ,::1");
        assert!(parsed.contains(address("10.9.8.7")));
        assert!(parsed.contains(address("192.0.2.1")));
        assert!(!parsed.contains(address("192.0.2.2")));
        assert!(parsed.contains(address("::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.example".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().is_ok_and(|p| p.is_empty()));
    }
}
