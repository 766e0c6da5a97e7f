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
