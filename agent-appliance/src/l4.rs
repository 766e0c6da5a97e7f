//! Public TCP and UDP ports the agent serves itself: the snapshot's `l4` section (Services of type
//! LoadBalancer with POLAREDGE's class). Each TCP port's connections go through the tunnel to the Service's
//! pods in turn, led by the relay preamble and, when the Service asks, a PROXY protocol header with the public
//! client's address. Each UDP port's public clients are flows (`tunnel::flow`), each sent to a pod in turn and
//! kept on it while it is active. No Traefik in the path, so adding or removing a port never restarts anything
//! or touches other routes; a port whose pods or PROXY setting change keeps its socket and its open connections
//! and flows.

use protocol::api::Transport;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tunnel::driver::Forwarding;
use tunnel::{FlowCounters, Preamble, StreamCounters, Tunnel, UdpExposure};

/// A public port: its transport and number.
pub type PortKey = (Transport, u16);

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
pub fn plan(config: &routes::model::DynamicConfig) -> BTreeMap<PortKey, PortPlan> {
    let Some(l4) = &config.l4 else { return BTreeMap::new() };
    let sections = [(Transport::Tcp, &l4.tcp), (Transport::Udp, &l4.udp)];
    sections
        .into_iter()
        .flat_map(|(transport, ports)| {
            ports.iter().filter_map(move |(port, service)| {
                Some((
                    (transport, port.parse().ok()?),
                    PortPlan {
                        service: service.service.clone(),
                        servers: service.servers.iter().filter_map(|s| s.parse().ok()).collect(),
                        proxy_protocol: service.proxy_protocol.filter(|_| transport == Transport::Tcp),
                    },
                ))
            })
        })
        .collect()
}

/// What keeps a port open; dropping it closes the port.
enum Serving {
    Tcp(#[allow(dead_code)] Forwarding),
    Udp(#[allow(dead_code)] UdpExposure),
}

struct Port {
    plan: Arc<RwLock<PortPlan>>,
    _serving: Serving,
}

/// The open ports.
pub struct Ports {
    tunnel: Arc<Tunnel>,
    /// The relay of every client replica (TCP streams take the live ones in turn; UDP flows go to the first).
    relays: Vec<SocketAddr>,
    address: IpAddr,
    active: BTreeMap<PortKey, Port>,
    /// Counters of every connection to the TCP ports, kept by the driver.
    pub metrics: Arc<StreamCounters>,
    /// Counters of every flow of the UDP ports, kept by the driver.
    pub udp_metrics: Arc<FlowCounters>,
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

/// The pod a new UDP flow goes to, or `None` when the port has no pod.
fn pick(plan: &PortPlan, next: &AtomicUsize) -> Option<SocketAddr> {
    if plan.servers.is_empty() {
        return None;
    }
    Some(plan.servers[next.fetch_add(1, Ordering::Relaxed) % plan.servers.len()])
}

impl Ports {
    /// Ports bound on `address`, whose connections and flows reach the client's relay at `relay` (its TCP and
    /// UDP relay ports share the number).
    pub fn new(tunnel: Arc<Tunnel>, relays: Vec<SocketAddr>, address: IpAddr) -> Ports {
        Ports {
            tunnel,
            relays,
            address,
            active: BTreeMap::new(),
            metrics: Arc::new(StreamCounters::default()),
            udp_metrics: Arc::new(FlowCounters::default()),
        }
    }

    fn open(&self, (transport, port): PortKey, plan: &Arc<RwLock<PortPlan>>) -> io::Result<Serving> {
        let (reader, next) = (Arc::clone(plan), Arc::new(AtomicUsize::new(0)));
        let address = SocketAddr::new(self.address, port);
        match transport {
            Transport::Tcp => {
                let make = move |client, local| {
                    preamble(&reader.read().unwrap_or_else(|p| p.into_inner()), &next, client, local)
                };
                let listener = tunnel::driver::listen(address)?;
                let preamble = Preamble::PerConnection(Arc::new(make));
                Ok(Serving::Tcp(self.tunnel.forward_from(
                    listener,
                    self.relays.clone(),
                    preamble,
                    Arc::clone(&self.metrics),
                )?))
            }
            Transport::Udp => {
                let socket = UdpSocket::bind(address)?;
                let choose = move |_client| pick(&reader.read().unwrap_or_else(|p| p.into_inner()), &next);
                let counters = Arc::clone(&self.udp_metrics);
                Ok(Serving::Udp(self.tunnel.expose_udp(socket, self.relays[0], Arc::new(choose), counters)?))
            }
        }
    }

    /// Opens the ports of `wanted` that are not open and updates the plans of those that are. All or nothing:
    /// if a port cannot be bound, the ports this call opened are closed again and no plan changed.
    pub fn ensure(&mut self, wanted: &BTreeMap<PortKey, PortPlan>) -> io::Result<()> {
        let mut opened = BTreeMap::new();
        for (&key, plan) in wanted.iter().filter(|(key, _)| !self.active.contains_key(key)) {
            let shared = Arc::new(RwLock::new(plan.clone()));
            let serving = self.open(key, &shared).map_err(|e| {
                let (transport, port) = key;
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot serve {} port {port} for Service {} on {}: {e}",
                        transport.to_string().to_uppercase(),
                        plan.service,
                        self.address
                    ),
                )
            })?;
            opened.insert(key, Port { plan: shared, _serving: serving });
        }
        for (port, plan) in wanted {
            if let Some(open) = self.active.get(port) {
                *open.plan.write().unwrap_or_else(|p| p.into_inner()) = plan.clone();
            }
        }
        self.active.append(&mut opened);
        Ok(())
    }

    /// Closes the ports not in `ports` (their open TCP connections keep going; their UDP flows end).
    pub fn retain(&mut self, ports: &BTreeSet<PortKey>) {
        self.active.retain(|key, _| ports.contains(key));
    }

    /// Port -> its plan, for /status.
    pub fn listening(&self) -> Vec<(PortKey, PortPlan)> {
        self.active.iter().map(|(key, p)| (*key, p.plan.read().unwrap_or_else(|e| e.into_inner()).clone())).collect()
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
