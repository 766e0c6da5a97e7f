//! The client's configuration: its key and tunnel address, the agents (edge hosts) it serves, and how it
//! renders.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The config file (YAML). The private key may instead come from `POLAREDGE_PRIVATE_KEY` (the Secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// File holding the client's WireGuard private key.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The client's tunnel address with prefix.
    #[serde(default = "default_address")]
    pub address: String,
    /// The edge hosts.
    pub agents: Vec<AgentPeer>,
    /// UDP port to bind for the tunnels (0: any).
    #[serde(default)]
    pub listen_port: u16,
    /// Persistent keepalive towards the agents, in seconds (the cluster is behind NAT).
    #[serde(default = "default_keepalive")]
    pub keepalive: u16,
    /// Tunnel port the relay listens on.
    #[serde(default = "default_relay_port")]
    pub relay_port: u16,
    /// ACME resolver name on the agents for TLS hosts; empty for Traefik's default certificate.
    #[serde(default = "default_resolver")]
    pub cert_resolver: String,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[serde(default = "default_ops")]
    pub ops_listen: SocketAddr,
    /// Most streams per agent tunnel at once; more are refused and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long the relay waits for a pod to accept a connection, in milliseconds.
    #[serde(default = "default_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
}

/// One edge host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPeer {
    /// A name for logs and metrics.
    pub name: String,
    /// The agent's public WireGuard address.
    pub endpoint: SocketAddr,
    /// The agent's public key.
    pub public_key: String,
    /// The agent's control API inside the tunnel.
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// The agent's public address shown in Ingress status.
    #[serde(default)]
    pub public_address: Option<String>,
}

fn default_max_connections() -> usize {
    tunnel::core::DEFAULT_MAX_CONNECTIONS
}
fn default_dial_timeout_ms() -> u64 {
    5000
}
fn default_address() -> String {
    protocol::defaults::client_cidr()
}
fn default_keepalive() -> u16 {
    25
}
fn default_relay_port() -> u16 {
    protocol::defaults::RELAY_PORT
}
fn default_resolver() -> String {
    protocol::defaults::ACME_RESOLVER.into()
}
fn default_ops() -> SocketAddr {
    std::env::var("POLAREDGE_OPS_LISTEN")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "0.0.0.0:9090".parse().unwrap())
}
fn default_api() -> SocketAddr {
    SocketAddr::new(protocol::defaults::AGENT_ADDRESS, protocol::defaults::API_PORT)
}

/// Reads the config file.
pub fn load(path: &Path) -> Result<ClientConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let mut config: ClientConfig =
        serde_yaml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    if let Some(key) = &mut config.private_key_file {
        if key.is_relative() {
            *key = path.parent().unwrap_or(Path::new(".")).join(&*key);
        }
    }
    check_agents(&config.agents).map_err(|e| format!("config {}: {e}", path.display()))?;
    Ok(config)
}

/// At least one agent, each with a name of its own (names label metrics and status decisions).
fn check_agents(agents: &[AgentPeer]) -> Result<(), String> {
    if agents.is_empty() {
        return Err("no agents listed".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for agent in agents {
        if agent.name.is_empty() || !names.insert(agent.name.as_str()) {
            return Err(format!("agent name {:?} is empty or used twice; each agent needs its own", agent.name));
        }
    }
    Ok(())
}

/// Several agents from `POLAREDGE_AGENTS`: a YAML (or JSON) list as the config file's `agents`.
pub fn agents_from_text(text: &str) -> Result<Vec<AgentPeer>, String> {
    let agents: Vec<AgentPeer> = serde_yaml::from_str(text).map_err(|e| {
        format!("POLAREDGE_AGENTS: {e} (a list of agents: name, endpoint IP:port, public_key, optional api, public_address)")
    })?;
    check_agents(&agents).map_err(|e| format!("POLAREDGE_AGENTS: {e}"))?;
    Ok(agents)
}

/// The client's private key: `POLAREDGE_PRIVATE_KEY`, else the key file.
pub fn private_key(config: &ClientConfig) -> Result<tunnel::PrivateKey, String> {
    if let Ok(text) = std::env::var("POLAREDGE_PRIVATE_KEY") {
        return text.parse().map_err(|e| format!("POLAREDGE_PRIVATE_KEY: {e}"));
    }
    let path =
        config.private_key_file.as_ref().ok_or("no private key: set private_key_file or POLAREDGE_PRIVATE_KEY")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", path.display()))
}

/// Who this replica is inside the tunnels.
pub struct Identity {
    /// The WireGuard key.
    pub key: tunnel::PrivateKey,
    /// The tunnel address with prefix.
    pub address: String,
    /// Each replica has a key of its own, so every replica keeps its tunnels and relays up (a hot standby) and
    /// only uploads wait for leadership. With one key shared by all replicas, only the leader may hold tunnels.
    pub own_key: bool,
}

/// This replica's identity. `replica_keys` (`POLAREDGE_REPLICA_KEYS`): one private key per line, line `n` for
/// the replica whose `pod_name` ends in `-n` (a StatefulSet's pods), with tunnel address 10.88.0.(2 + n)/24;
/// without it, the one client key and the configured address.
pub fn identity(config: &ClientConfig, replica_keys: Option<&str>, pod_name: Option<&str>) -> Result<Identity, String> {
    let Some(text) = replica_keys.filter(|t| !t.trim().is_empty()) else {
        return Ok(Identity { key: private_key(config)?, address: config.address.clone(), own_key: false });
    };
    let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if keys.len() > protocol::defaults::MAX_REPLICAS {
        return Err(format!(
            "POLAREDGE_REPLICA_KEYS lists {} keys; at most {} replicas are served",
            keys.len(),
            protocol::defaults::MAX_REPLICAS
        ));
    }
    let pod = pod_name.unwrap_or_default();
    let ordinal = pod.rsplit_once('-').and_then(|(_, n)| n.parse::<usize>().ok()).ok_or_else(|| {
        format!(
            "POLAREDGE_REPLICA_KEYS is set, but the pod name {pod:?} (POD_NAME) ends in no replica number: run the \
             client as a StatefulSet (pods name-0, name-1, ...) or drop the variable"
        )
    })?;
    let key = keys.get(ordinal).ok_or_else(|| {
        format!(
            "replica {ordinal} ({pod}) has no key: POLAREDGE_REPLICA_KEYS lists {} (one per replica; scale the \
             StatefulSet to at most that many or add keys, and the agents' wireguard.replicas with them)",
            keys.len()
        )
    })?;
    let key = key.parse().map_err(|e| format!("POLAREDGE_REPLICA_KEYS line {}: {e}", ordinal + 1))?;
    let address = protocol::defaults::replica_address(ordinal).expect("ordinal below MAX_REPLICAS");
    Ok(Identity { key, address: format!("{address}/{}", protocol::defaults::REPLICAS_PREFIX), own_key: true })
}

/// A config from the environment, as the Deployment sets it from the Secret that `polaredge-agent init` prints:
/// `POLAREDGE_PRIVATE_KEY`, and either `POLAREDGE_AGENTS` (several edges: see [`agents_from_text`]) or one
/// agent as `POLAREDGE_AGENT_PUBLIC_KEY`, `POLAREDGE_AGENT_ENDPOINT` (host:port) and optionally
/// `POLAREDGE_AGENT_ADDRESS` and `POLAREDGE_PUBLIC_ADDRESS`; optionally `POLAREDGE_CLIENT_ADDRESS` and
/// `POLAREDGE_CERT_RESOLVER`.
pub fn from_env() -> Result<ClientConfig, String> {
    if std::env::var_os("POLAREDGE_REPLICA_KEYS").is_none() {
        std::env::var("POLAREDGE_PRIVATE_KEY")
            .map_err(|_| "neither POLAREDGE_PRIVATE_KEY nor POLAREDGE_REPLICA_KEYS is set".to_string())?;
    }
    let agents = match std::env::var("POLAREDGE_AGENTS") {
        Ok(list) if !list.trim().is_empty() => agents_from_text(&list)?,
        _ => vec![agent_from_env()?],
    };
    Ok(ClientConfig {
        private_key_file: None,
        address: std::env::var("POLAREDGE_CLIENT_ADDRESS").unwrap_or_else(|_| default_address()),
        agents,
        listen_port: 0,
        keepalive: default_keepalive(),
        relay_port: default_relay_port(),
        cert_resolver: std::env::var("POLAREDGE_CERT_RESOLVER").unwrap_or_else(|_| default_resolver()),
        ops_listen: default_ops(),
        max_connections: default_max_connections(),
        dial_timeout_ms: default_dial_timeout_ms(),
    })
}

/// The one agent the single-agent variables name.
fn agent_from_env() -> Result<AgentPeer, String> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            format!("{name} is not set, and neither is POLAREDGE_AGENTS (see deploy/ and `polaredge-agent init`)")
        })
    };
    let endpoint_text = var("POLAREDGE_AGENT_ENDPOINT")?;
    let endpoint = std::net::ToSocketAddrs::to_socket_addrs(&endpoint_text)
        .map_err(|e| format!("POLAREDGE_AGENT_ENDPOINT {endpoint_text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("POLAREDGE_AGENT_ENDPOINT {endpoint_text:?} resolves to nothing"))?;
    let api = match std::env::var("POLAREDGE_AGENT_ADDRESS") {
        Ok(ip) => SocketAddr::new(
            ip.parse().map_err(|_| format!("POLAREDGE_AGENT_ADDRESS {ip:?} is not an IP"))?,
            protocol::defaults::API_PORT,
        ),
        Err(_) => default_api(),
    };
    Ok(AgentPeer {
        name: "edge".into(),
        endpoint,
        public_key: var("POLAREDGE_AGENT_PUBLIC_KEY")?,
        api,
        public_address: std::env::var("POLAREDGE_PUBLIC_ADDRESS").ok().or_else(|| Some(endpoint.ip().to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_takes_the_key_and_address_of_its_number() {
        let config: ClientConfig = serde_yaml::from_str("agents: []").unwrap();
        // Without replica keys every replica uses the one client key (here: none configured).
        let error = identity(&config, None, Some("polaredge-client-1")).err().unwrap();
        assert!(error.contains("private_key_file"), "{error}");

        let keys = [tunnel::PrivateKey::generate(), tunnel::PrivateKey::generate()];
        let text = format!("{}\n{}\n", keys[0], keys[1]);
        for (n, key) in keys.iter().enumerate() {
            let me = identity(&config, Some(&text), Some(&format!("polaredge-client-{n}"))).unwrap();
            assert!(me.own_key);
            assert_eq!(me.key.public_key(), key.public_key());
            assert_eq!(me.address, format!("10.88.0.{}/24", 2 + n));
        }
        let error = identity(&config, Some(&text), Some("polaredge-client-2")).err().unwrap();
        assert!(error.contains("replica 2") && error.contains("lists 2"), "{error}");
        let error = identity(&config, Some(&text), Some("polaredge-client-7d9f8b-x2x4")).err().unwrap();
        assert!(error.contains("StatefulSet"), "{error}");
        let error = identity(&config, Some("not a key\n"), Some("c-0")).err().unwrap();
        assert!(error.starts_with("POLAREDGE_REPLICA_KEYS line 1"), "{error}");
    }

    #[test]
    fn several_agents_come_as_a_yaml_list_with_distinct_names() {
        let key = tunnel::PrivateKey::generate().public_key().to_string();
        let text = format!(
            "- {{name: fra, endpoint: \"198.51.100.1:51820\", public_key: \"{key}\", public_address: edge1.example}}\n\
             - {{name: ams, endpoint: \"198.51.100.2:51820\", public_key: \"{key}\"}}\n"
        );
        let agents = agents_from_text(&text).unwrap();
        assert_eq!(agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["fra", "ams"]);
        assert_eq!(agents[0].public_address.as_deref(), Some("edge1.example"));
        assert_eq!(agents[1].api, default_api());
        let twice = text.replace("ams", "fra");
        assert!(agents_from_text(&twice).unwrap_err().contains("used twice"));
        assert!(agents_from_text("[]").unwrap_err().contains("no agents"));
        assert!(agents_from_text("- {name: x}").unwrap_err().starts_with("POLAREDGE_AGENTS: "));
    }
}
