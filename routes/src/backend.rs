//! Pod backends: their address syntax, the list of distinct pods a document routes to, and the rewrite that
//! points each at the agent's local forwarder and adds what the agent itself needs in the file (the generation
//! marker and the canary router).

use crate::model::{self, DynamicConfig};
use crate::MARKER_PREFIX;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// Host of the canary router: a request to a public entrypoint with this Host and [`CANARY_PATH`] is answered
/// by Traefik itself (its ping service), with the generation marker's header. `.invalid` is reserved (RFC
/// 2606), so no real site can be shadowed.
pub const CANARY_HOST: &str = "canary.polaredge.invalid";
/// Path of the canary router.
pub const CANARY_PATH: &str = "/.polaredge/canary";
/// Response header that names the generation Traefik serves (set by the marker middleware).
pub const GENERATION_HEADER: &str = "X-Polaredge-Generation";
/// Request header of the marker middleware that carries the number of the write (see [`Marker`]). A request
/// header reaches only the canary's ping service, so the number never leaves the edge.
pub const WRITE_HEADER: &str = "X-Polaredge-Write";

/// What names one write of the routes file in Traefik: the generation it serves and the number of the write.
/// The same generation written again (a deleted file repaired) gets a new number, so the agent can tell that
/// Traefik read this write, not an earlier one it still holds while a deletion is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker<'a> {
    /// First 16 hex digits of the upload's SHA-256.
    pub generation: &'a str,
    /// A number the writer never used before for a file Traefik may have read.
    pub write: u64,
}

/// Why a backend address was refused. `text` is the address or URL as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Port 0.
    PortZero(SocketAddr),
    /// An address that is no pod's: `what` names it ("the unspecified address", ...).
    NotAPod {
        /// The address.
        ip: IpAddr,
        /// What kind of address it is.
        what: &'static str,
    },
    /// The port is not a number in 1-65535.
    BadPort {
        /// The address or URL.
        text: String,
        /// The port as written.
        port: String,
    },
    /// A host name where a pod IP address belongs.
    HostName(String),
    /// `IP` without `:port`.
    NoPort(String),
    /// A URL without `scheme://`.
    NoScheme(String),
    /// A scheme other than http, https or h2c.
    BadScheme(String),
    /// A URL part a backend never carries: user info, query, fragment or path (named).
    Extra {
        /// The URL.
        url: String,
        /// The part, e.g. "no query string".
        part: &'static str,
    },
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::PortZero(addr) => write!(f, "{addr}: port 0 is not a port (1-65535)"),
            BackendError::NotAPod { ip, what } => write!(f, "{ip} is {what}, not a pod"),
            BackendError::BadPort { text, port } => write!(f, "{text:?}: port {port:?} is not a number in 1-65535"),
            BackendError::HostName(text) => write!(
                f,
                "{text:?}: backends must be pod IP addresses, not host names (the agent cannot resolve cluster DNS)"
            ),
            BackendError::NoPort(text) => write!(f, "{text:?} has no port; write IP:port (IPv6 as [addr]:port)"),
            BackendError::NoScheme(url) => write!(f, "{url:?} has no scheme (http:// or https://)"),
            BackendError::BadScheme(url) => write!(f, "{url:?}: scheme must be http, https or h2c"),
            BackendError::Extra { url, part } => write!(f, "{url:?}: backend URLs carry {part}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// Checks that `addr` can be a pod: no port 0, no unspecified, broadcast or multicast address.
pub fn check_pod_address(addr: SocketAddr) -> Result<SocketAddr, BackendError> {
    if addr.port() == 0 {
        return Err(BackendError::PortZero(addr));
    }
    let ip = addr.ip();
    let reason = match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    };
    match reason {
        Some(what) => Err(BackendError::NotAPod { ip, what }),
        None => Ok(addr),
    }
}

/// Parses a TCP backend, `IP:port` (IPv6 as `[addr]:port`).
pub fn parse_ip_port(text: &str) -> Result<SocketAddr, BackendError> {
    let addr = text.parse::<SocketAddr>().map_err(|_| match text.rsplit_once(':') {
        Some((host, port)) if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => {
            BackendError::BadPort { text: text.to_string(), port: port.to_string() }
        }
        Some(_) => BackendError::HostName(text.to_string()),
        None => BackendError::NoPort(text.to_string()),
    })?;
    check_pod_address(addr)
}

/// Splits `http://IP:port` / `https://IP:port` / `h2c://IP:port` (HTTP/2 without TLS, for gRPC pods) into
/// scheme and address.
pub fn parse_http_backend(url: &str) -> Result<(&str, SocketAddr), BackendError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| BackendError::NoScheme(url.to_string()))?;
    if !matches!(scheme, "http" | "https" | "h2c") {
        return Err(BackendError::BadScheme(url.to_string()));
    }
    let extra = |part| Err(BackendError::Extra { url: url.to_string(), part });
    if rest.contains('@') {
        return extra("no user info (`user@`)");
    }
    if rest.contains('?') {
        return extra("no query string");
    }
    if rest.contains('#') {
        return extra("no fragment");
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return extra("no path");
    }
    let addr = match rest.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let (host, port) = match rest.rsplit_once(':') {
                // `[v6]` alone has colons inside the brackets only.
                Some((host, port)) if !port.contains(']') => (host, Some(port)),
                _ => (rest, None),
            };
            let ip: IpAddr = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| BackendError::HostName(url.to_string()))?;
            let port = match port {
                None if scheme == "https" => 443,
                None => 80,
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| BackendError::BadPort { text: url.to_string(), port: p.to_string() })?,
            };
            SocketAddr::new(ip, port)
        }
    };
    Ok((scheme, check_pod_address(addr)?))
}

/// Every distinct pod endpoint the document routes to (all of them TCP).
pub fn backends(config: &DynamicConfig) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    if let Some(http) = &config.http {
        for service in http.services.values() {
            out.extend(service.servers().iter().filter_map(|s| parse_http_backend(&s.url).ok().map(|(_, a)| a)));
        }
    }
    if let Some(tcp) = &config.tcp {
        for service in tcp.services.values() {
            out.extend(service.load_balancer.servers.iter().filter_map(|s| parse_ip_port(&s.address).ok()));
        }
    }
    out
}

/// Every distinct pod endpoint of the `l4` ports, TCP and UDP (the client's relays allow them too).
pub fn l4_backends(config: &DynamicConfig) -> BTreeSet<SocketAddr> {
    config
        .l4
        .iter()
        .flat_map(|l4| l4.tcp.values().chain(l4.udp.values()))
        .flat_map(|service| service.servers.iter().filter_map(|s| parse_ip_port(s).ok()))
        .collect()
}

/// The document Traefik gets: every pod backend replaced by its local forwarder, plus the marker middleware
/// `gen-<generation>` (with the write's number in [`WRITE_HEADER`]) that tells the agent, through Traefik's
/// API, that this exact write of the file is live, and, when
/// `canary_entry_point` is given, a router on it that answers [`CANARY_HOST`]`/`[`CANARY_PATH`] with the
/// marker's header: proof that Traefik serves this generation on a public entrypoint.
pub fn rewrite(
    config: &DynamicConfig,
    forwarders: &BTreeMap<SocketAddr, SocketAddr>,
    marker: Marker<'_>,
    canary_entry_point: Option<&str>,
) -> DynamicConfig {
    let Marker { generation, write } = marker;
    let mut out = config.clone();
    out.l4 = None; // the agent serves those ports itself; Traefik would refuse the section
    let local = |addr: SocketAddr| forwarders.get(&addr).copied();
    let http = out.http.get_or_insert_with(Default::default);
    for service in http.services.values_mut() {
        for server in service.load_balancer.iter_mut().flat_map(|lb| lb.servers.iter_mut()) {
            if let Ok((scheme, addr)) = parse_http_backend(&server.url) {
                if let Some(forwarder) = local(addr) {
                    server.url = format!("{scheme}://{forwarder}");
                }
            }
        }
    }
    let name = format!("{MARKER_PREFIX}{generation}");
    let mut headers = model::Headers::default();
    headers.custom_response_headers.insert(GENERATION_HEADER.into(), generation.into());
    headers.custom_request_headers.insert(WRITE_HEADER.into(), write.to_string());
    http.middlewares.insert(name.clone(), model::Middleware { headers: Some(headers), ..Default::default() });
    if let Some(entry_point) = canary_entry_point {
        http.routers.insert(
            name.clone(),
            model::HttpRouter {
                rule: format!("Host(`{CANARY_HOST}`) && Path(`{CANARY_PATH}`)"),
                // Traefik's own ping handler: answers 200 "OK" without touching any backend.
                service: "ping@internal".into(),
                entry_points: vec![entry_point.into()],
                middlewares: vec![name],
                priority: Some(i64::from(i32::MAX)),
                tls: None,
            },
        );
    }
    if let Some(tcp) = &mut out.tcp {
        for service in tcp.services.values_mut() {
            for server in &mut service.load_balancer.servers {
                if let Some(forwarder) = parse_ip_port(&server.address).ok().and_then(local) {
                    server.address = forwarder.to_string();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    const GOOD: &str = r#"
http:
  routers:
    app:
      rule: "Host(`app.test`)"
      service: app
      entryPoints: [web]
      middlewares: [strip]
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://10.1.2.3:8080"
          - url: "https://[fd00::5]"
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/api"]
tcp:
  routers:
    db:
      rule: "HostSNI(`*`)"
      service: db
  services:
    db:
      loadBalancer:
        servers:
          - address: "10.1.2.4:5432"
"#;

    #[test]
    fn a_good_document_parses_and_lists_its_backends() {
        let config = crate::parse(&json(GOOD), &policy()).unwrap();
        let backends: Vec<String> = backends(&config).iter().map(|a| a.to_string()).collect();
        assert_eq!(backends, ["10.1.2.3:8080", "10.1.2.4:5432", "[fd00::5]:443"]);
    }

    #[test]
    fn rewrite_points_backends_at_forwarders_and_adds_the_marker_and_the_canary() {
        let config = crate::parse(&json(GOOD), &policy()).unwrap();
        let forwarders: BTreeMap<SocketAddr, SocketAddr> = backends(&config)
            .into_iter()
            .enumerate()
            .map(|(i, a)| (a, SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16))))
            .collect();
        let marker = Marker { generation: "abc123", write: 7 };
        let out = rewrite(&config, &forwarders, marker, Some("web"));
        let http = out.http.as_ref().unwrap();
        let urls: Vec<&str> = http.services["app"].servers().iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:40000", "https://127.0.0.1:40002"]);
        assert_eq!(out.tcp.as_ref().unwrap().services["db"].load_balancer.servers[0].address, "127.0.0.1:40001");
        let headers = http.middlewares["gen-abc123"].headers.as_ref().unwrap();
        assert_eq!(headers.custom_response_headers[GENERATION_HEADER], "abc123");
        assert_eq!(headers.custom_request_headers[WRITE_HEADER], "7");
        let canary = &http.routers["gen-abc123"];
        assert_eq!(
            (canary.service.as_str(), canary.entry_points.as_slice()),
            ("ping@internal", &["web".to_string()][..])
        );
        assert!(!rewrite(&config, &forwarders, marker, None).http.unwrap().routers.contains_key("gen-abc123"));
        // The output reads back to the same thing.
        let text = serde_json::to_string(&out).unwrap();
        assert_eq!(serde_json::from_str::<DynamicConfig>(&text).unwrap(), out);
    }

    fn doc(url: &str) -> String {
        format!("http:\n  routers:\n    a: {{rule: x, service: s}}\n  services:\n    s:\n      loadBalancer:\n        servers: [{{url: \"{url}\"}}]\n")
    }

    fn tcp(address: &str) -> String {
        format!("tcp:\n  routers:\n    a: {{rule: x, service: s}}\n  services:\n    s:\n      loadBalancer:\n        servers: [{{address: \"{address}\"}}]\n")
    }

    #[test]
    fn each_refused_backend_names_the_real_reason() {
        refused_for(&doc("http://my-svc.default:80"), "not host names");
        refused_for(&doc("http://10.0.0.1:80/x"), "no path");
        refused_for(&doc("ftp://10.0.0.1:21"), "scheme");
        refused_for(&doc("http://user@10.0.0.1:80"), "no user info");
        refused_for(&doc("http://10.0.0.1:80?x"), "no query string");
        refused_for(&doc("http://10.0.0.1:80#x"), "no fragment");
        refused_for(&doc("http://10.0.0.1:99999"), "port \"99999\" is not a number in 1-65535");
        refused_for(&doc("http://10.0.0.1:0"), "port 0");
        refused_for(&doc("http://0.0.0.0:80"), "unspecified");
        refused_for(&doc("http://[::]:80"), "unspecified");
        refused_for(&doc("http://255.255.255.255:80"), "broadcast");
        refused_for(&doc("http://224.0.0.1:80"), "multicast");
        refused_for(&tcp("db:5432"), "not host names");
        refused_for(&tcp("10.0.0.1"), "no port");
        refused_for(&tcp("10.0.0.1:0"), "port 0");
        refused_for(&tcp("10.0.0.1:70000"), "not a number in 1-65535");
        assert!(crate::parse(&json(&doc("https://[fd00::1]")), &policy()).is_ok());
        assert!(crate::parse(&json(&doc("http://10.0.0.1:8080/")), &policy()).is_ok());
    }
}
