//! Public TCP ports the agent serves itself: the snapshot's `l4` section (Services of type LoadBalancer with
//! POLAREDGE's class). Each port's connections go through the tunnel to the Service's pods in turn, led by the
//! relay preamble and, when the Service asks, a PROXY protocol header with the public client's address. No
//! Traefik in the path, so adding or removing a port never restarts anything or touches other routes; a
//! port whose pods or PROXY setting change keeps its listening socket and its open connections.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tunnel::driver::Forwarding;
use tunnel::{Preamble, StreamCounters, Tunnel};

/// Where one port's connections go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortPlan {
    /// `namespace/name` of the Service.
    pub service: String,
    /// Its pod endpoints, used in turn.
    pub servers: Vec<SocketAddr>,
    /// PROXY protocol version to send first, if any.
    pub proxy_protocol: Option<u8>,
}

/// The `l4` section of a validated snapshot, by port.
pub fn plan(config: &routes::model::DynamicConfig) -> BTreeMap<u16, PortPlan> {
    let Some(l4) = &config.l4 else { return BTreeMap::new() };
    l4.tcp
        .iter()
        .filter_map(|(port, service)| {
            Some((
                port.parse().ok()?,
                PortPlan {
                    service: service.service.clone(),
                    servers: service.servers.iter().filter_map(|s| s.parse().ok()).collect(),
                    proxy_protocol: service.proxy_protocol,
                },
            ))
        })
        .collect()
}

struct Port {
    plan: Arc<RwLock<PortPlan>>,
    _forwarding: Forwarding,
}

/// The open ports.
pub struct Ports {
    tunnel: Arc<Tunnel>,
    relay: SocketAddr,
    address: IpAddr,
    active: BTreeMap<u16, Port>,
    /// Counters of every connection to these ports, kept by the driver.
    pub metrics: Arc<StreamCounters>,
}

/// The bytes a connection from `client` to `local` starts with, or `None` when the port has no pod.
fn preamble(plan: &PortPlan, next: &AtomicUsize, client: SocketAddr, local: SocketAddr) -> Option<Vec<u8>> {
    if plan.servers.is_empty() {
        return None;
    }
    let pod = plan.servers[next.fetch_add(1, Ordering::Relaxed) % plan.servers.len()];
    let mut bytes = protocol::relay::encode(pod);
    if let Some(version) = plan.proxy_protocol {
        bytes.extend(protocol::proxy::header(version, client, local));
    }
    Some(bytes)
}

impl Ports {
    /// Ports bound on `address`, whose connections reach the client's relay at `relay`.
    pub fn new(tunnel: Arc<Tunnel>, relay: SocketAddr, address: IpAddr) -> Ports {
        Ports { tunnel, relay, address, active: BTreeMap::new(), metrics: Arc::new(StreamCounters::default()) }
    }

    /// Opens the ports of `wanted` that are not open and updates the plans of those that are. All or nothing:
    /// if a port cannot be bound, the ports this call opened are closed again and no plan changed.
    pub fn ensure(&mut self, wanted: &BTreeMap<u16, PortPlan>) -> io::Result<()> {
        let mut opened = BTreeMap::new();
        for (&port, plan) in wanted.iter().filter(|(port, _)| !self.active.contains_key(port)) {
            let shared = Arc::new(RwLock::new(plan.clone()));
            let (reader, next) = (Arc::clone(&shared), Arc::new(AtomicUsize::new(0)));
            let make =
                move |client, local| preamble(&reader.read().unwrap_or_else(|p| p.into_inner()), &next, client, local);
            let forwarding = tunnel::driver::listen(SocketAddr::new(self.address, port))
                .and_then(|listener| {
                    self.tunnel.forward_from(
                        listener,
                        self.relay,
                        Preamble::PerConnection(Arc::new(make)),
                        Arc::clone(&self.metrics),
                    )
                })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot serve TCP port {port} for Service {} on {}: {e}", plan.service, self.address),
                    )
                })?;
            opened.insert(port, Port { plan: shared, _forwarding: forwarding });
        }
        for (port, plan) in wanted {
            if let Some(open) = self.active.get(port) {
                *open.plan.write().unwrap_or_else(|p| p.into_inner()) = plan.clone();
            }
        }
        self.active.append(&mut opened);
        Ok(())
    }

    /// Closes the ports not in `ports` (their open connections keep going).
    pub fn retain(&mut self, ports: &BTreeSet<u16>) {
        self.active.retain(|port, _| ports.contains(port));
    }

    /// Port -> its plan, for /status.
    pub fn listening(&self) -> Vec<(u16, PortPlan)> {
        self.active.iter().map(|(port, p)| (*port, p.plan.read().unwrap_or_else(|e| e.into_inner()).clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_in_turn_with_the_proxy_header_after_the_preamble() {
        let plan = PortPlan {
            service: "db/pg".into(),
            servers: vec!["10.1.0.1:5432".parse().unwrap(), "10.1.0.2:5432".parse().unwrap()],
            proxy_protocol: Some(1),
        };
        let next = AtomicUsize::new(0);
        let (client, local) = ("203.0.113.7:40000".parse().unwrap(), "198.51.100.1:5432".parse().unwrap());
        let first = preamble(&plan, &next, client, local).unwrap();
        let second = preamble(&plan, &next, client, local).unwrap();
        assert_eq!(first, b"PE1 10.1.0.1:5432\nPROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\n");
        assert!(second.starts_with(b"PE1 10.1.0.2:5432\n"));
        assert!(preamble(&PortPlan::default(), &next, client, local).is_none(), "no pod: closed at once");
    }
}
