//! The agent's configuration file (YAML), its defaults, and the commented template `init` writes.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Everything `polaredge-agent run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its state: Traefik's files, the last good routes, ACME certificates.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The WireGuard side.
    pub wireguard: Wireguard,
    /// Port of the control API inside the tunnel (on `wireguard.address`).
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Port of the client's relay inside the tunnel (on `wireguard.client_address`).
    #[serde(default = "default_relay_port")]
    pub relay_port: u16,
    /// Traefik's public entrypoints: name -> listen address.
    #[serde(default = "default_entrypoints")]
    pub entrypoints: BTreeMap<String, String>,
    /// Let's Encrypt (or another ACME CA); without it routers cannot ask for certificates.
    #[serde(default)]
    pub acme: Option<Acme>,
    /// The Traefik binary.
    #[serde(default)]
    pub traefik: Traefik,
    /// Unix socket for `polaredge-agent status` (root only).
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Largest accepted upload, in bytes.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: usize,
    /// Limits of the public connections carried through the tunnel.
    #[serde(default)]
    pub streams: Streams,
    /// Public TCP and UDP ports the agent serves itself for Services of type LoadBalancer.
    #[serde(default)]
    pub l4: L4Config,
}

/// Where and which public TCP and UDP ports the agent may open for Services of type LoadBalancer, and the limits
/// of their UDP flows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L4Config {
    /// The address they are bound on.
    #[serde(default = "default_l4_address")]
    pub address: IpAddr,
    /// Allowed ports, each `N` or `LOW-HIGH`; the entrypoints' and WireGuard's ports are never allowed.
    #[serde(default = "default_l4_ports")]
    pub ports: Vec<String>,
    /// Most UDP flows (public client addresses) at once over all UDP ports; more are dropped and counted.
    #[serde(default = "default_udp_max_flows")]
    pub udp_max_flows: usize,
    /// A UDP flow that carries nothing either way for this many seconds ends.
    #[serde(default = "default_udp_idle_timeout_s")]
    pub udp_idle_timeout_s: u64,
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            address: default_l4_address(),
            ports: default_l4_ports(),
            udp_max_flows: default_udp_max_flows(),
            udp_idle_timeout_s: default_udp_idle_timeout_s(),
        }
    }
}

fn default_udp_max_flows() -> usize {
    tunnel::UdpTuning::default().max_flows
}
fn default_udp_idle_timeout_s() -> u64 {
    tunnel::UdpTuning::default().idle_timeout.as_secs()
}

impl L4Config {
    /// The allowed ports as inclusive ranges.
    pub fn ranges(&self) -> Result<Vec<(u16, u16)>, String> {
        self.ports
            .iter()
            .map(|text| {
                let (low, high) = text.split_once('-').unwrap_or((text, text));
                match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                    (Ok(low), Ok(high)) if low >= 1 && low <= high => Ok((low, high)),
                    _ => Err(format!("l4.ports: {text:?} is not a port or a range LOW-HIGH within 1-65535")),
                }
            })
            .collect()
    }
}

fn default_l4_address() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_l4_ports() -> Vec<String> {
    vec!["1-65535".into()]
}

/// Limits of the streams carried through the tunnel (Traefik's backend connections).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Most tunnel connections at once; connection requests beyond it are refused and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A stream the client's relay does not answer within this many milliseconds fails (Traefik answers 502).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A stream that carries nothing for this many seconds is closed; 0 keeps idle streams open.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            idle_timeout_s: default_idle_timeout_s(),
        }
    }
}

impl Streams {
    /// These limits applied to the tunnel's TCP tuning.
    pub fn apply(&self, tcp: &mut tunnel::TcpTuning) {
        tcp.max_connections = self.max_connections;
        tcp.connect_timeout = std::time::Duration::from_millis(self.connect_timeout_ms);
        tcp.idle_timeout = (self.idle_timeout_s > 0).then(|| std::time::Duration::from_secs(self.idle_timeout_s));
    }
}

fn default_max_connections() -> usize {
    tunnel::core::DEFAULT_MAX_CONNECTIONS
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_idle_timeout_s() -> u64 {
    900
}

/// The WireGuard side of the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wireguard {
    /// Public UDP address, e.g. `0.0.0.0:51820` or `[::]:51820` (both families).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the agent's private key (mode 0600).
    pub private_key_file: PathBuf,
    /// The client's public key.
    pub client_public_key: String,
    /// Optional file holding a preshared key.
    #[serde(default)]
    pub preshared_key_file: Option<PathBuf>,
    /// The agent's tunnel address with prefix.
    #[serde(default = "default_address")]
    pub address: String,
    /// The client's tunnel address.
    #[serde(default = "default_client_address")]
    pub client_address: IpAddr,
    /// Further client replicas, each with a key and a tunnel address of its own (inside `address`'s subnet,
    /// e.g. a /24). Every replica keeps its tunnel up; public connections take the live ones in turn, so a
    /// replica that dies costs no request. Uploads are accepted from whichever leads (fencing by term).
    #[serde(default)]
    pub replicas: Vec<Replica>,
}

/// One more client replica (see [`Wireguard::replicas`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// The replica's public key.
    pub public_key: String,
    /// The replica's tunnel address.
    pub address: IpAddr,
}

impl Wireguard {
    /// Every client replica's (key, tunnel address), the first being `client_public_key`/`client_address`.
    pub fn clients(&self) -> Vec<(&str, IpAddr)> {
        let mut all = vec![(self.client_public_key.as_str(), self.client_address)];
        all.extend(self.replicas.iter().map(|r| (r.public_key.as_str(), r.address)));
        all
    }
}

/// ACME settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// Contact email registered with the CA.
    pub email: String,
    /// CA directory URL; Let's Encrypt production when absent ([`LETS_ENCRYPT_STAGING`] for trials).
    #[serde(default)]
    pub ca_server: Option<String>,
    /// How the CA validates a name: an HTTP request on the `web` entrypoint, or a TLS handshake on `websecure`.
    #[serde(default)]
    pub challenge: Challenge,
    /// A PEM file of CA certificates to trust for the ACME server itself (a private CA, or a test CA such as
    /// pebble); Traefik gets it as `LEGO_CA_CERTIFICATES`.
    #[serde(default)]
    pub ca_certificates: Option<PathBuf>,
    /// How long the CA's certificates are valid, in hours, when not 90 days (e.g. Let's Encrypt's 6-day
    /// certificates: 160): Traefik derives from it when to renew (a third of the duration before expiry for 90
    /// days, 20 minutes for under a day).
    #[serde(default)]
    pub certificates_duration_hours: Option<u32>,
    /// The certificates' key type. ECDSA P-256 by default (Traefik's own default is RSA 4096, whose key
    /// generation takes seconds on a small ARM host and whose handshakes cost more).
    #[serde(default)]
    pub key_type: KeyType,
}

/// Key types Traefik's ACME resolver can request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    /// ECDSA P-256.
    #[default]
    EC256,
    /// ECDSA P-384.
    EC384,
    /// RSA 2048.
    RSA2048,
    /// RSA 4096.
    RSA4096,
    /// RSA 8192.
    RSA8192,
}

impl KeyType {
    /// Traefik's name for it.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EC256 => "EC256",
            KeyType::EC384 => "EC384",
            KeyType::RSA2048 => "RSA2048",
            KeyType::RSA4096 => "RSA4096",
            KeyType::RSA8192 => "RSA8192",
        }
    }
}

/// Let's Encrypt's staging directory: untrusted certificates, generous rate limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The ACME challenge type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Challenge {
    /// HTTP-01 on the `web` entrypoint (port 80 must reach the edge).
    #[default]
    Http,
    /// TLS-ALPN-01 on the `websecure` entrypoint (port 443 only).
    TlsAlpn,
}

/// Where Traefik comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traefik {
    /// Path of the binary; looked up in PATH when it has no slash.
    #[serde(default = "default_traefik_binary")]
    pub binary: PathBuf,
    /// Expected SHA-256 of the binary (hex), checked by `check` and at start.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Traefik's log level.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

impl Default for Traefik {
    fn default() -> Self {
        Traefik { binary: default_traefik_binary(), sha256: None, log_level: default_log_level() }
    }
}

fn default_state_dir() -> PathBuf {
    "/var/lib/polaredge".into()
}
fn default_api_port() -> u16 {
    protocol::defaults::API_PORT
}
fn default_relay_port() -> u16 {
    protocol::defaults::RELAY_PORT
}
fn default_entrypoints() -> BTreeMap<String, String> {
    [("web".to_string(), ":80".to_string()), ("websecure".to_string(), ":443".to_string())].into()
}
fn default_admin_socket() -> PathBuf {
    "/run/polaredge-agent.sock".into()
}
fn default_max_upload() -> usize {
    8 << 20
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], protocol::defaults::WIREGUARD_PORT))
}
fn default_address() -> String {
    protocol::defaults::agent_cidr()
}
fn default_client_address() -> IpAddr {
    protocol::defaults::CLIENT_ADDRESS
}
fn default_traefik_binary() -> PathBuf {
    "traefik".into()
}
fn default_log_level() -> String {
    "ERROR".into()
}

/// Why a config file was refused: the file, and what is wrong with it.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: ConfigProblem,
}

/// What is wrong with a config file.
#[derive(Debug)]
pub enum ConfigProblem {
    /// It cannot be read.
    Read(std::io::Error),
    /// It is not YAML of the config's shape (an unknown field, a wrong type); the parser's message names the
    /// field and line.
    Yaml(serde_yaml::Error),
    /// An entrypoint is named `traefik`, the agent's loopback admin entrypoint.
    ReservedEntrypoint,
    /// `l4.udp_max_flows` or `l4.udp_idle_timeout_s` is 0.
    UdpLimits,
    /// `streams.max_connections` or `streams.connect_timeout_ms` is 0.
    StreamLimits,
    /// An `l4.ports` entry is not a port or a range.
    L4Ports(String),
    /// `max_upload_bytes` is outside what the agent accepts.
    UploadSize(usize),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display();
        match &self.problem {
            ConfigProblem::Read(e) => write!(f, "cannot read config {path}: {e}"),
            ConfigProblem::Yaml(e) => write!(f, "config {path}: {e}"),
            ConfigProblem::ReservedEntrypoint => write!(
                f,
                "config {path}: entrypoint name \"traefik\" is reserved for the agent's loopback admin entrypoint"
            ),
            ConfigProblem::UdpLimits => {
                write!(f, "config {path}: l4.udp_max_flows and l4.udp_idle_timeout_s must be above 0")
            }
            ConfigProblem::StreamLimits => {
                write!(f, "config {path}: streams.max_connections and streams.connect_timeout_ms must be above 0")
            }
            ConfigProblem::L4Ports(e) => write!(f, "config {path}: {e}"),
            ConfigProblem::UploadSize(n) => write!(
                f,
                "config {path}: max_upload_bytes {n} is outside {MIN_UPLOAD_BYTES}..={MAX_UPLOAD_BYTES} (the default \
                 8 MiB holds tens of thousands of routes)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            ConfigProblem::Read(e) => Some(e),
            ConfigProblem::Yaml(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for String {
    fn from(error: ConfigError) -> String {
        error.to_string()
    }
}

/// Reads and checks a config file; relative paths in it are taken relative to the file's folder.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let refused = |problem| ConfigError { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| refused(ConfigProblem::Read(e)))?;
    let mut config: AgentConfig = serde_yaml::from_str(&text).map_err(|e| refused(ConfigProblem::Yaml(e)))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| if p.is_relative() { base.join(p) } else { p.to_path_buf() };
    config.state_dir = resolve(&config.state_dir);
    config.admin_socket = resolve(&config.admin_socket);
    config.wireguard.private_key_file = resolve(&config.wireguard.private_key_file);
    config.wireguard.preshared_key_file = config.wireguard.preshared_key_file.as_deref().map(resolve);
    if let Some(acme) = &mut config.acme {
        acme.ca_certificates = acme.ca_certificates.as_deref().map(resolve);
    }
    // A bare name is looked up in PATH; anything with a slash is a path.
    if config.traefik.binary.components().count() > 1 {
        config.traefik.binary = resolve(&config.traefik.binary);
    }
    if config.entrypoints.contains_key("traefik") {
        return Err(refused(ConfigProblem::ReservedEntrypoint));
    }
    if config.l4.udp_max_flows == 0 || config.l4.udp_idle_timeout_s == 0 {
        return Err(refused(ConfigProblem::UdpLimits));
    }
    if config.streams.max_connections == 0 || config.streams.connect_timeout_ms == 0 {
        return Err(refused(ConfigProblem::StreamLimits));
    }
    config.l4.ranges().map_err(|e| refused(ConfigProblem::L4Ports(e)))?;
    if !(MIN_UPLOAD_BYTES..=MAX_UPLOAD_BYTES).contains(&config.max_upload_bytes) {
        return Err(refused(ConfigProblem::UploadSize(config.max_upload_bytes)));
    }
    Ok(config)
}

/// Smallest `max_upload_bytes`: less could not hold a useful config.
pub const MIN_UPLOAD_BYTES: usize = 1024;
/// Largest `max_upload_bytes`: an upload is held in memory several times over while it is applied.
pub const MAX_UPLOAD_BYTES: usize = 256 << 20;

/// The commented config `polaredge-agent init` writes, for client replicas with keys `client_public_keys`
/// (at least one; the first is replica 0's).
pub fn template(client_public_keys: &[String], state_dir: &Path, key_file: &str, listen: SocketAddr) -> String {
    let client_public_key = client_public_keys.first().map_or("", String::as_str);
    let (address, replicas) = if client_public_keys.len() > 1 {
        let mut list = String::from(
            "  # The other client replicas (a StatefulSet's pods 1, 2, ...), each with a key and address of its own:\n  \
             # every replica keeps its tunnel up and relays public connections.\n  replicas:\n",
        );
        for (n, key) in client_public_keys.iter().enumerate().skip(1) {
            let address = protocol::defaults::replica_address(n).map_or_else(String::new, |a| a.to_string());
            list.push_str(&format!("    - {{public_key: \"{key}\", address: {address}}}\n"));
        }
        (protocol::defaults::agent_replicas_cidr(), list)
    } else {
        (protocol::defaults::agent_cidr(), String::new())
    };
    format!(
        r#"# polaredge-agent configuration. Reference: README.md ("Installing the agent").

# Where the agent keeps Traefik's files, the last good routes and ACME certificates.
state_dir: {state_dir}

wireguard:
  # Public UDP address the cluster's client connects to. "[::]:51820" serves IPv4 and IPv6.
  listen: "{listen}"
  # The agent's private key (mode 0600), relative to this file.
  private_key_file: {key_file}
  # The client's public key (its private key is in the Kubernetes Secret that `init` printed).
  client_public_key: "{client_public_key}"
  # preshared_key_file: psk.key
  # Tunnel addresses: the agent's (with prefix) and the client's (replica 0's).
  address: {address}
  client_address: 10.88.0.2
{replicas}
# Control API (upload, status, metrics) inside the tunnel, and the client's relay port.
api_port: 9000
relay_port: 7000

# Traefik's public entrypoints: name -> address.
entrypoints:
  web: ":80"
  websecure: ":443"

# Certificates from Let's Encrypt for TLS routers without a TLS Secret (resolver name "acme"):
# acme:
#   email: ops@example.com
#   # ca_server: https://acme-staging-v02.api.letsencrypt.org/directory   # staging, for trials
#   # challenge: http        # or tls-alpn (only port 443 reaches the edge)
#   # ca_certificates: /etc/polaredge/acme-ca.pem   # trust a private ACME server's CA
#   # certificates_duration_hours: 160   # a CA with short-lived certificates (default: 90 days)
#   # key_type: EC256      # or EC384, RSA2048, RSA4096, RSA8192

traefik:
  # Path of the Traefik binary, or a name looked up in PATH.
  binary: traefik
  # sha256: <hex>   # refuse to run any other binary
  log_level: ERROR

# admin_socket: /run/polaredge-agent.sock
# max_upload_bytes: 8388608

# Public connections carried through the tunnel to the cluster.
# streams:
#   max_connections: 16384     # more at once are refused (polaredge_tunnel_refused_over_cap_total)
#   connect_timeout_ms: 5000   # the client must answer a new stream this fast, or Traefik answers 502
#   idle_timeout_s: 900        # streams that carry nothing this long are closed (0: never)

# Public TCP and UDP ports for Services of type LoadBalancer (class polaredge.io/edge).
# l4:
#   address: 0.0.0.0
#   ports: ["1-65535"]         # the ports a snapshot may open (the edge's own are never allowed)
#   udp_max_flows: 16384       # UDP client addresses at once; more are dropped (polaredge_l4_udp_flows_total)
#   udp_idle_timeout_s: 60     # a UDP flow silent this long ends (raise it for long-idle protocols)
"#,
        state_dir = state_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_loads_with_its_defaults() {
        let dir = std::env::temp_dir().join(format!("pe-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        let public: Vec<String> = (0..3).map(|_| tunnel::PrivateKey::generate().public_key().to_string()).collect();
        std::fs::write(&path, template(&public[..1], Path::new("/var/lib/polaredge"), "agent.key", default_listen()))
            .unwrap();
        let config = load(&path).unwrap();
        assert_eq!(config.wireguard.address, "10.88.0.1/30");
        assert!(config.wireguard.replicas.is_empty());
        std::fs::write(&path, template(&public, Path::new("/var/lib/polaredge"), "agent.key", default_listen()))
            .unwrap();
        let config = load(&path).unwrap();
        assert_eq!(config.wireguard.address, "10.88.0.1/24", "room for the replicas' addresses");
        let clients: Vec<(String, String)> =
            config.wireguard.clients().iter().map(|(k, a)| (k.to_string(), a.to_string())).collect();
        assert_eq!(
            clients,
            [(&public[0], "10.88.0.2"), (&public[1], "10.88.0.3"), (&public[2], "10.88.0.4")]
                .map(|(k, a)| (k.clone(), a.to_string()))
        );
        assert_eq!(config.api_port, 9000);
        assert_eq!(config.wireguard.private_key_file, dir.join("agent.key"));
        assert_eq!(config.entrypoints["websecure"], ":443");
        assert!(config.acme.is_none());
        assert_eq!((config.streams.max_connections, config.streams.connect_timeout_ms), (16_384, 5000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_the_reserved_entrypoint_are_refused() {
        let dir = std::env::temp_dir().join(format!("pe-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, "wireguard: {private_key_file: k, client_public_key: x}\napi_prot: 1\n").unwrap();
        let unknown = load(&path).unwrap_err();
        assert!(matches!(unknown.problem, ConfigProblem::Yaml(_)), "{unknown:?}");
        assert!(unknown.to_string().contains("unknown field `api_prot`"), "{unknown}");
        std::fs::write(
            &path,
            "wireguard: {private_key_file: k, client_public_key: x}\nentrypoints: {traefik: \":1\"}\n",
        )
        .unwrap();
        let reserved = load(&path).unwrap_err();
        assert!(matches!(reserved.problem, ConfigProblem::ReservedEntrypoint), "{reserved:?}");
        assert!(reserved.to_string().contains("reserved"));
        std::fs::write(
            &path,
            "wireguard: {private_key_file: k, client_public_key: x}\nstreams: {max_connections: 0}\n",
        )
        .unwrap();
        let streams = load(&path).unwrap_err();
        assert!(matches!(streams.problem, ConfigProblem::StreamLimits), "{streams:?}");
        assert!(streams.to_string().contains("streams.max_connections"));
        std::fs::write(&path, "wireguard: {private_key_file: k, client_public_key: x}\nl4: {udp_idle_timeout_s: 0}\n")
            .unwrap();
        let udp = load(&path).unwrap_err();
        assert!(matches!(udp.problem, ConfigProblem::UdpLimits), "{udp:?}");
        assert!(udp.to_string().contains("l4.udp_max_flows and l4.udp_idle_timeout_s"));
        std::fs::write(&path, "wireguard: {private_key_file: k, client_public_key: x}\nl4: {udp_max_flows: 64}\n")
            .unwrap();
        let config = load(&path).unwrap();
        assert_eq!((config.l4.udp_max_flows, config.l4.udp_idle_timeout_s), (64, 60));
        // Near the integer maximum this used to overflow the HTTP server's arithmetic.
        let huge =
            format!("wireguard: {{private_key_file: k, client_public_key: x}}\nmax_upload_bytes: {}\n", usize::MAX);
        std::fs::write(&path, huge).unwrap();
        let upload = load(&path).unwrap_err();
        assert!(matches!(upload.problem, ConfigProblem::UploadSize(n) if n == usize::MAX), "{upload:?}");
        assert!(upload.to_string().contains("max_upload_bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
