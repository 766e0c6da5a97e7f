//! A typed model of the part of Traefik's dynamic configuration (file provider) that POLAREDGE accepts.
//!
//! Every struct denies unknown fields, so a typo or an unsupported feature is an error at upload time instead
//! of a route that silently does something else, and every map refuses a name given twice. Field names follow
//! Traefik's YAML (camelCase).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// Deserializes a map whose keys must be unique. Plain maps keep the last of two equal keys, which would let a
/// second `routers.app` silently replace the first; Traefik's own reader does the same.
fn unique_keys<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<BTreeMap<String, V>, D::Error> {
    struct Unique<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map with unique keys")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate key {key:?}: each name may appear once (a later one would silently replace it)"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(PhantomData))
}

/// A whole dynamic configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// HTTP routers, services and middlewares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    /// TCP routers and services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    /// UDP routers and services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Udp>,
    /// TLS options and certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// POLAREDGE's own, not Traefik's: public TCP ports the agent itself listens on (Services of type
    /// LoadBalancer), left out of the file Traefik reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4>,
}

/// Public ports the agent serves itself, each forwarded to a Service's pods through the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4 {
    /// TCP port (as text: JSON keys are strings) -> where its connections go.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub tcp: BTreeMap<String, L4Service>,
    /// UDP port (as text) -> where its flows go (each public client address is a flow; see `tunnel::flow`).
    /// `proxyProtocol` does not apply.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub udp: BTreeMap<String, L4Service>,
}

impl L4 {
    /// Both sections with their protocol's name: `("tcp", ports)`, `("udp", ports)`.
    pub fn by_protocol(&self) -> [(&'static str, &BTreeMap<String, L4Service>); 2] {
        [("tcp", &self.tcp), ("udp", &self.udp)]
    }
}

/// One public TCP or UDP port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4Service {
    /// The Kubernetes Service it is for, `namespace/name` (for logs and status).
    pub service: String,
    /// Pod endpoints as `IP:port`; connections (UDP: flows) go to them in turn. Empty: connections are closed
    /// at once (UDP: datagrams are dropped).
    #[serde(default)]
    pub servers: Vec<String>,
    /// PROXY protocol version (1 or 2) to send the pod first, carrying the public client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<u8>,
}

/// `http:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Http {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, HttpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, HttpService>,
    /// Middlewares by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub middlewares: BTreeMap<String, Middleware>,
    /// Transports (TLS settings towards backends) by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub servers_transports: BTreeMap<String, ServersTransport>,
}

/// An HTTP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouter {
    /// Matcher expression, e.g. `Host(`a.example`) && PathPrefix(`/`)`.
    pub rule: String,
    /// Name of a service in the same file.
    pub service: String,
    /// Entrypoints; empty means every public entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    /// Names of middlewares in the same file, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<String>,
    /// Explicit priority; higher wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// TLS termination at the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
}

/// TLS settings of a router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouterTls {
    /// ACME resolver for the router's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_resolver: Option<String>,
    /// Name of TLS options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// Explicit certificate domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<Domain>,
    /// TCP only: pass TLS through to the backend untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
}

/// A certificate's domains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Domain {
    /// Main name.
    pub main: String,
    /// Alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
}

/// An HTTP service: a load balancer over pod endpoints, or a weighted split over other services of the
/// document (Gateway API backendRefs with weights). Exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpService {
    /// The load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<HttpLoadBalancer>,
    /// A weighted round robin over load-balancer services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted: Option<Weighted>,
}

impl HttpService {
    /// A load-balancer service.
    pub fn balanced(load_balancer: HttpLoadBalancer) -> HttpService {
        HttpService { load_balancer: Some(load_balancer), weighted: None }
    }

    /// The servers of a load-balancer service (none for a weighted one).
    pub fn servers(&self) -> &[HttpServer] {
        self.load_balancer.as_ref().map_or(&[], |lb| &lb.servers)
    }
}

/// `weighted` service: requests go to the named services in proportion to their weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Weighted {
    /// The services and their weights.
    pub services: Vec<WeightedService>,
}

/// One member of a weighted service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedService {
    /// A load-balancer service of the same document.
    pub name: String,
    /// Relative weight; 0 sends it nothing.
    pub weight: u32,
}

/// Servers of an HTTP service and how to balance them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpLoadBalancer {
    /// Backend servers. Empty is allowed: Traefik answers 503, as for a Service with no ready endpoint.
    #[serde(default)]
    pub servers: Vec<HttpServer>,
    /// Forward the client's Host header (Traefik's default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_host_header: Option<bool>,
    /// Sticky sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Name of a servers transport in the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_transport: Option<String>,
}

/// One backend of an HTTP service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpServer {
    /// `http://IP:port` or `https://IP:port` of a pod.
    pub url: String,
    /// Relative weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Sticky sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sticky {
    /// Cookie-based stickiness.
    pub cookie: StickyCookie,
}

/// The sticky cookie.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StickyCookie {
    /// Cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Secure flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// HttpOnly flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_only: Option<bool>,
    /// SameSite value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<String>,
}

/// Active health checks of a service's servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Request path.
    pub path: String,
    /// Interval, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Timeout, e.g. `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A middleware: exactly one of the supported kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Middleware {
    /// Removes path prefixes before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<StripPrefix>,
    /// Redirects to another scheme (http -> https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_scheme: Option<RedirectScheme>,
    /// Adds request or response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Redirects by rewriting the whole request URL with a regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_regex: Option<RedirectRegex>,
    /// Replaces the whole path before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path: Option<ReplacePath>,
    /// Rewrites the path with a regular expression before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path_regex: Option<ReplacePathRegex>,
    /// Turns error answers into another status (and another service's body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Errors>,
}

impl Middleware {
    /// How many kinds are set (a valid middleware has exactly one).
    pub fn kinds(&self) -> usize {
        usize::from(self.strip_prefix.is_some())
            + usize::from(self.redirect_scheme.is_some())
            + usize::from(self.headers.is_some())
            + usize::from(self.redirect_regex.is_some())
            + usize::from(self.replace_path.is_some())
            + usize::from(self.replace_path_regex.is_some())
            + usize::from(self.errors.is_some())
    }
}

/// `redirectRegex` middleware: the request URL (`scheme://host[:port]/path?query`) matched against `regex`
/// and rewritten to `replacement` (`${1}` for groups).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectRegex {
    /// A Go (RE2) regular expression.
    pub regex: String,
    /// The target URL.
    pub replacement: String,
    /// 301/308 instead of 302/307.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
}

/// `replacePath` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplacePath {
    /// The new path.
    pub path: String,
}

/// `replacePathRegex` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplacePathRegex {
    /// A Go (RE2) regular expression on the path.
    pub regex: String,
    /// The new path (`${1}` for groups).
    pub replacement: String,
}

/// `errors` middleware: answers in the `status` ranges are replaced by `service`'s answer to `query`, with
/// the status rewritten by `status_rewrites` (range -> status).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Errors {
    /// Status ranges, e.g. `500-599`.
    pub status: Vec<String>,
    /// The service that answers instead: one of the document, or `ping@internal` (the only internal service
    /// an upload may name).
    pub service: String,
    /// The path asked of `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Status range -> the status the client gets.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub status_rewrites: BTreeMap<String, u16>,
}

/// `stripPrefix` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StripPrefix {
    /// Prefixes to remove.
    pub prefixes: Vec<String>,
}

/// `redirectScheme` middleware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectScheme {
    /// Target scheme.
    pub scheme: String,
    /// 301/308 instead of 302/307.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
    /// Target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// `headers` middleware (custom headers only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    /// Headers added to the request.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Headers added to the response.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_response_headers: BTreeMap<String, String>,
}

/// TLS towards backends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServersTransport {
    /// SNI and verification name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Skip certificate verification (self-signed pod certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// `tcp:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tcp {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, TcpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, TcpService>,
}

/// A TCP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouter {
    /// Matcher, e.g. `HostSNI(`*`)`.
    pub rule: String,
    /// Name of a TCP service in the same file.
    pub service: String,
    /// Entrypoints; empty means every public entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
    /// Explicit priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// TLS termination or passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
}

/// A TCP service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpService {
    /// The load balancer.
    pub load_balancer: TcpLoadBalancer,
}

/// Servers of a TCP or UDP service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpLoadBalancer {
    /// Backends as `IP:port`.
    #[serde(default)]
    pub servers: Vec<TcpServer>,
}

/// One TCP or UDP backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpServer {
    /// `IP:port` of a pod.
    pub address: String,
}

/// `udp:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Udp {
    /// Routers by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub routers: BTreeMap<String, UdpRouter>,
    /// Services by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, TcpService>,
}

/// A UDP router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UdpRouter {
    /// Name of a UDP service in the same file.
    pub service: String,
    /// Entrypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_points: Vec<String>,
}

/// `tls:` section: options, and certificates from the cluster's TLS Secrets (hosts without one use ACME).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tls {
    /// TLS options by name.
    #[serde(default, deserialize_with = "unique_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, TlsOptions>,
    /// Certificates Traefik picks by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<TlsCertificate>,
}

/// A certificate with its key, inline PEM (Traefik's `certFile`/`keyFile` take the content as well as a path;
/// the agent accepts content only).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsCertificate {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: String,
    /// The private key, PEM.
    pub key_file: String,
}

impl fmt::Debug for TlsCertificate {
    // Never print a private key, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert_file", &format_args!("<{} bytes>", self.cert_file.len()))
            .field("key_file", &format_args!("<redacted>"))
            .finish()
    }
}

/// One set of TLS options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsOptions {
    /// e.g. `VersionTLS12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// e.g. `VersionTLS13`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<String>,
    /// Refuse clients without SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_strict: Option<bool>,
}
