//! Addresses and ports both sides assume unless configured otherwise.

use std::net::{IpAddr, Ipv4Addr};

/// The agent's address inside the tunnel.
pub const AGENT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1));
/// The client's address inside the tunnel.
pub const CLIENT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 2));
/// Prefix length of the tunnel network (10.88.0.0/30).
pub const TUNNEL_PREFIX: u8 = 30;
/// The agent's control API port, on [`AGENT_ADDRESS`].
pub const API_PORT: u16 = 9000;
/// The client's relay port, on [`CLIENT_ADDRESS`].
pub const RELAY_PORT: u16 = 7000;
/// The agent's public WireGuard UDP port.
pub const WIREGUARD_PORT: u16 = 51820;
/// Name of the agent's ACME certificate resolver, which routers name.
pub const ACME_RESOLVER: &str = "acme";

/// `10.88.0.1/30`: the agent's tunnel address with prefix, as configs write it.
pub fn agent_cidr() -> String {
    format!("{AGENT_ADDRESS}/{TUNNEL_PREFIX}")
}

/// `10.88.0.2/30`.
pub fn client_cidr() -> String {
    format!("{CLIENT_ADDRESS}/{TUNNEL_PREFIX}")
}

/// Prefix length of the tunnel network when the client runs as several replicas, each with a key and a tunnel
/// address of its own (10.88.0.0/24: the agent at .1, replica `n` at .2 + n).
pub const REPLICAS_PREFIX: u8 = 24;

/// Most client replicas with addresses of their own (the agent's tunnel serves at most 16 peers).
pub const MAX_REPLICAS: usize = 16;

/// Replica `n`'s tunnel address: 10.88.0.2 for replica 0 (the single client's address), 10.88.0.3 for 1, ...;
/// `None` from [`MAX_REPLICAS`] on.
pub fn replica_address(n: usize) -> Option<IpAddr> {
    let IpAddr::V4(first) = CLIENT_ADDRESS else { return None };
    let n = u8::try_from(n).ok().filter(|&n| usize::from(n) < MAX_REPLICAS)?;
    let [a, b, c, d] = first.octets();
    Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d + n)))
}

/// `10.88.0.1/24`: the agent's tunnel address with prefix when it serves several replicas.
pub fn agent_replicas_cidr() -> String {
    format!("{AGENT_ADDRESS}/{REPLICAS_PREFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_the_single_clients_address() {
        assert_eq!(replica_address(0), Some(CLIENT_ADDRESS));
        assert_eq!(replica_address(1).unwrap().to_string(), "10.88.0.3");
        assert_eq!(replica_address(15).unwrap().to_string(), "10.88.0.17");
        assert_eq!(replica_address(16), None);
        assert_eq!(agent_replicas_cidr(), "10.88.0.1/24");
    }
}
