//! The port picker: free loopback ports for the agent's own listeners, and a clear refusal when a configured
//! public port is already taken.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// A loopback port that is free right now (the kernel picks it). For a port another process (Traefik) will
/// bind; the tiny window between release and bind is acceptable on a host the agent owns.
pub fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Traefik's address syntax `":80"` / `"0.0.0.0:80"` / `"[::]:443"` as a socket address.
pub fn entrypoint_addr(address: &str) -> Result<SocketAddr, String> {
    let address = address.split('/').next().unwrap_or(address); // ":53/udp"
    let full = if address.starts_with(':') { format!("0.0.0.0{address}") } else { address.to_string() };
    full.parse().map_err(|_| format!("entrypoint address {address:?} is not [ip]:port"))
}

/// Fails with an explanation when a public entrypoint's port cannot be bound.
pub fn check_public(name: &str, address: &str) -> Result<(), String> {
    let addr = entrypoint_addr(address)?;
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "entrypoint {name} ({address}): port {} is already in use by another process; stop it or change \
             entrypoints.{name} in the config",
            addr.port()
        )),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "entrypoint {name} ({address}): not allowed to bind port {} (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE)",
            addr.port()
        )),
        Err(e) => Err(format!("entrypoint {name} ({address}): cannot bind: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_refused_by_name() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = check_public("web", &address).unwrap_err();
        assert!(err.contains("already in use") && err.contains("entrypoints.web"), "{err}");
        drop(taken);
        assert_eq!(check_public("web", &address), Ok(()));
    }

    #[test]
    fn traefik_address_forms() {
        assert_eq!(entrypoint_addr(":80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(entrypoint_addr("[::]:443").unwrap(), "[::]:443".parse().unwrap());
        assert!(entrypoint_addr("localhost:80").is_err());
    }
}
