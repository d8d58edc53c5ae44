//! Which push endpoints the server will ever contact. An endpoint is
//! attacker input (anyone signed in can subscribe any URL), so it is checked
//! against the browser push services and the operator's own lists before it
//! is stored, and again before every send.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use url::{Host, Url};

use super::PushError;

/// The push services of Chrome/Edge (FCM), Firefox, Safari and Windows.
pub const BROWSER_PUSH_SERVICES: &[&str] = &[
    "fcm.googleapis.com",
    "android.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.push.apple.com",
    "*.notify.windows.com",
];

/// Longer than any real push endpoint, short enough to bound what we store.
const MAX_ENDPOINT_CHARS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `host` (any port) or `host:port`.
    Exact { host: String, port: Option<u16> },
    /// `*.domain`: any host under `domain`, not `domain` itself, on any
    /// port or only on `port`.
    Under { suffix: String, port: Option<u16> },
}

impl HostPattern {
    /// `host`, `host:port` or `*.domain`; anything else (a scheme, a path)
    /// is refused rather than read as something the operator did not mean.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() || text.contains(['/', '@', '?', '#']) {
            return None;
        }
        if let Some(domain) = text.strip_prefix("*.") {
            return Some(Self::Under {
                suffix: format!(".{domain}"),
                port: None,
            });
        }
        // Let the URL parser split host and port (it knows IPv6 brackets).
        let url = Url::parse(&format!("http://{text}")).ok()?;
        Some(Self::Exact {
            host: url.host_str()?.to_string(),
            port: url.port(),
        })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Exact {
                host: wanted,
                port: wanted_port,
            } => wanted == host && wanted_port.is_none_or(|wanted| wanted == port),
            Self::Under {
                suffix,
                port: wanted_port,
            } => {
                host.ends_with(suffix.as_str())
                    && wanted_port.is_none_or(|wanted| wanted == port)
                    && !matches!(Host::parse(host), Ok(Host::Ipv4(_) | Host::Ipv6(_)))
            }
        }
    }
}

/// The hosts the operator allows, over https and over plain http.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    secure: Vec<HostPattern>,
    insecure: Vec<HostPattern>,
}

impl EndpointPolicy {
    pub fn new(allowed_hosts: &[String], insecure_hosts: &[String]) -> Self {
        // The browsers' own services are reached on the https port only.
        let browsers = BROWSER_PUSH_SERVICES
            .iter()
            .filter_map(|host| HostPattern::parse(host))
            .map(|pattern| match pattern {
                HostPattern::Exact { host, .. } => HostPattern::Exact {
                    host,
                    port: Some(443),
                },
                HostPattern::Under { suffix, .. } => HostPattern::Under {
                    suffix,
                    port: Some(443),
                },
            });
        let secure = browsers.chain(operator_patterns(allowed_hosts)).collect();
        let insecure = operator_patterns(insecure_hosts).collect();
        Self { secure, insecure }
    }

    /// The endpoint as a URL, if the server may contact it.
    pub fn check(&self, endpoint: &str) -> Result<Url, PushError> {
        let refuse = |why: &str| PushError::EndpointNotAllowed(why.to_string());
        if endpoint.len() > MAX_ENDPOINT_CHARS {
            return Err(PushError::InvalidSubscription(format!(
                "the endpoint is longer than {MAX_ENDPOINT_CHARS} characters"
            )));
        }
        let url = Url::parse(endpoint).map_err(|error| {
            PushError::InvalidSubscription(format!("the endpoint is not an absolute URL: {error}"))
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("an endpoint may not carry a user name or password"));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(refuse("the endpoint has no host"));
        };
        let host = host.to_ascii_lowercase();
        let patterns = match url.scheme() {
            "https" => &self.secure,
            "http" => &self.insecure,
            _ => return Err(refuse("push endpoints must be https URLs")),
        };
        if patterns.iter().any(|pattern| pattern.matches(&host, port)) {
            return Ok(url);
        }
        Err(if url.scheme() == "http" {
            refuse("plain http endpoints are accepted only for the operator's local push services")
        } else {
            PushError::EndpointNotAllowed(format!(
                "{host} is not a known browser push service; the operator can allow it with BACKCHANNEL_PUSH_ALLOWED_HOSTS"
            ))
        })
    }
}

fn operator_patterns(entries: &[String]) -> impl Iterator<Item = HostPattern> + '_ {
    entries
        .iter()
        .filter(|entry| !entry.trim().is_empty())
        .filter_map(|entry| {
            let pattern = HostPattern::parse(entry);
            if pattern.is_none() {
                tracing::warn!(%entry, "ignoring a push host entry: write host, host:port or *.domain");
            }
            pattern
        })
}

/// `scheme://host[:port]` of an endpoint: the VAPID audience (RFC 8292 §2),
/// with the port when it is not the scheme's default.
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The subscription's keys, checked (`p256dh` an uncompressed P-256 point,
/// `auth` 16 bytes) and returned as unpadded base64url, the only form the
/// `web-push` crate reads, whatever padding the client sent.
pub fn check_keys(p256dh: &str, auth: &str) -> Result<(String, String), PushError> {
    let invalid = |why: &str| PushError::InvalidSubscription(why.to_string());
    let point = decode_base64url(p256dh).ok_or_else(|| invalid("keys.p256dh is not base64url"))?;
    if point.len() != 65 || point[0] != 4 || p256::PublicKey::from_sec1_bytes(&point).is_err() {
        return Err(invalid(
            "keys.p256dh is not an uncompressed P-256 public key",
        ));
    }
    let secret = decode_base64url(auth).ok_or_else(|| invalid("keys.auth is not base64url"))?;
    if secret.len() != 16 {
        return Err(invalid("keys.auth must be 16 bytes"));
    }
    Ok((
        URL_SAFE_NO_PAD.encode(point),
        URL_SAFE_NO_PAD.encode(secret),
    ))
}

fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EndpointPolicy {
        EndpointPolicy::new(
            &["push.example.org".into(), "*.corp.example".into()],
            &["127.0.0.1".into(), "localhost:9000".into()],
        )
    }

    fn allowed(endpoint: &str) -> bool {
        policy().check(endpoint).is_ok()
    }

    #[test]
    fn browser_push_services_are_allowed_over_https() {
        assert!(allowed("https://fcm.googleapis.com/fcm/send/abc"));
        assert!(allowed(
            "https://updates.push.services.mozilla.com/wpush/v2/x"
        ));
        assert!(allowed("https://web.push.apple.com/QGx"));
        assert!(allowed("https://wns2-by3p.notify.windows.com/w/?token=x"));
    }

    #[test]
    fn operator_hosts_extend_the_list() {
        assert!(allowed("https://push.example.org/x"));
        assert!(allowed("https://a.corp.example/x"));
        assert!(!allowed("https://corp.example/x"));
        assert!(!allowed("https://evilpush.example.org/x"));
    }

    #[test]
    fn browser_push_services_only_on_the_https_port() {
        assert!(!allowed("https://fcm.googleapis.com:8443/fcm/send/abc"));
        assert!(!allowed("https://web.push.apple.com:444/QGx"));
        assert!(allowed("https://fcm.googleapis.com:443/fcm/send/abc"));
    }

    #[test]
    fn operator_entries_with_a_scheme_or_path_are_ignored() {
        let policy = EndpointPolicy::new(
            &["https://push.example.org".into(), "a.example/x".into()],
            &[],
        );
        assert!(policy.check("https://push.example.org/x").is_err());
        assert!(policy.check("https://https/x").is_err());
        assert!(policy.check("https://a.example/x").is_err());
    }

    #[test]
    fn plain_http_only_for_insecure_hosts() {
        assert!(allowed("http://127.0.0.1:4567/push/1"));
        assert!(allowed("http://localhost:9000/push/1"));
        assert!(!allowed("http://localhost:9001/push/1"));
        assert!(!allowed("http://fcm.googleapis.com/fcm/send/abc"));
        assert!(!allowed("http://10.0.0.1/push"));
    }

    #[test]
    fn private_addresses_and_other_schemes_are_refused() {
        for endpoint in [
            "https://127.0.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://192.168.1.10/x",
            "file:///etc/passwd",
            "ftp://fcm.googleapis.com/x",
            "https://user:pw@fcm.googleapis.com/x",
            "https://fcm.googleapis.com.evil.example/x",
        ] {
            assert!(
                matches!(
                    policy().check(endpoint),
                    Err(PushError::EndpointNotAllowed(_))
                ),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn relative_or_garbage_endpoints_are_invalid() {
        assert!(matches!(
            policy().check("/push/1"),
            Err(PushError::InvalidSubscription(_))
        ));
        assert!(matches!(
            policy().check("not a url"),
            Err(PushError::InvalidSubscription(_))
        ));
    }

    #[test]
    fn the_audience_keeps_a_non_default_port() {
        let url = Url::parse("http://127.0.0.1:4567/push/1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(origin(&url), "http://127.0.0.1:4567");
        let url =
            Url::parse("https://fcm.googleapis.com/fcm/send/a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(origin(&url), "https://fcm.googleapis.com");
    }

    #[test]
    fn keys_must_be_a_p256_point_and_sixteen_bytes() {
        let point = URL_SAFE_NO_PAD.encode(
            p256::SecretKey::from_slice(&[7_u8; 32])
                .unwrap_or_else(|e| panic!("{e}"))
                .public_key()
                .to_sec1_bytes(),
        );
        let auth = URL_SAFE_NO_PAD.encode([1_u8; 16]);
        assert_eq!(
            check_keys(&point, &auth).ok(),
            Some((point.clone(), auth.clone()))
        );
        let padded = format!("{auth}==");
        assert_eq!(
            check_keys(&point, &padded).ok().map(|keys| keys.1),
            Some(auth.clone())
        );
        assert!(check_keys(&point, &URL_SAFE_NO_PAD.encode([1_u8; 15])).is_err());
        assert!(check_keys(&URL_SAFE_NO_PAD.encode([4_u8; 65]), &auth).is_err());
        assert!(check_keys("!!!", &auth).is_err());
    }
}
