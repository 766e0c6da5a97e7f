//! UDP flows in the driver thread (framing and flow tables: [`crate::flow`]).
//!
//! Exposing side ([`super::Tunnel::expose_udp`]): a kernel UDP socket (a public port); each client address on
//! it is a flow, whose datagrams go framed into the tunnel from one tunnel UDP socket of ours to the relay.
//! Relay side ([`super::Tunnel::relay_udp`]): a tunnel UDP port; each flow gets a kernel UDP socket connected
//! to its target, whose answers go framed back to the exposing side. All of it in the driver's epoll loop;
//! datagrams are read into and sent from one scratch buffer, nothing is allocated per datagram.

use super::{FlowCounters, PickTarget, RelayTarget};
use crate::core::{Core, UdpTuning};
use crate::flow::{self, FlowTable, Frame, Refusal, MAX_HEADER};
use rustix::event::epoll;
use smoltcp::iface::SocketHandle;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Datagrams read from one kernel socket per wake-up, so one busy flow cannot starve the rest.
const BATCH: usize = 64;

/// IPv6 header + UDP header: what the tunnel's IP packet adds to a frame (IPv4 needs less).
const IP_UDP_OVERHEAD: usize = 40 + 8;

/// Kernel buffers of an exposed port's socket (all its clients share it) and of each relayed flow's.
const EXPOSED_SOCKET_BUFFER: usize = 4 << 20;
const FLOW_SOCKET_BUFFER: usize = 1 << 20;

struct Exposure {
    socket: UdpSocket,
    relay: SocketAddr,
    pick: PickTarget,
    counters: Arc<FlowCounters>,
}

/// A flow of an exposed port, keyed by (exposure, public client).
struct Exposed {
    id: u32,
    target: SocketAddr,
}

struct RelayPort {
    socket: SocketHandle,
    resolve: RelayTarget,
    counters: Arc<FlowCounters>,
}

/// A relayed flow's key: (tunnel port, the exposing side's endpoint, its flow id).
type RelayKey = (u16, SocketAddr, u32);

struct Relayed {
    socket: UdpSocket,
    token: u64,
    target: SocketAddr,
}

pub(crate) struct Datagrams {
    tuning: UdpTuning,
    /// Largest payload a frame can carry in one tunnel packet.
    max_payload: usize,
    /// The tunnel socket exposures send from and hear answers on (opened with the first exposure).
    out: Option<SocketHandle>,
    exposures: HashMap<u64, Exposure>,
    exposed: FlowTable<(u64, SocketAddr), Exposed>,
    by_flow: HashMap<u32, (u64, SocketAddr)>,
    next_flow: u32,
    relays: HashMap<u16, RelayPort>,
    relayed: FlowTable<RelayKey, Relayed>,
    by_token: HashMap<u64, RelayKey>,
    scratch: Box<[u8]>,
    /// Relay ports with datagrams waiting (kept to reuse its allocation).
    ready: Vec<(u16, SocketHandle)>,
}

impl Datagrams {
    pub(crate) fn new(tuning: UdpTuning, mtu: usize) -> Datagrams {
        let idle = smoltcp::time::Duration::from_micros(tuning.idle_timeout.as_micros() as u64);
        Datagrams {
            max_payload: mtu.saturating_sub(IP_UDP_OVERHEAD + MAX_HEADER),
            exposed: FlowTable::new(tuning.max_flows, idle),
            relayed: FlowTable::new(tuning.max_flows, idle),
            tuning,
            out: None,
            exposures: HashMap::new(),
            by_flow: HashMap::new(),
            next_flow: 1,
            relays: HashMap::new(),
            by_token: HashMap::new(),
            scratch: vec![0; MAX_HEADER + 65536].into_boxed_slice(),
            ready: Vec::new(),
        }
    }

    /// Whether epoll token `token` is one of ours.
    pub(crate) fn owns(&self, token: u64) -> bool {
        self.exposures.contains_key(&token) || self.by_token.contains_key(&token)
    }

    /// Whether any flow is open (the driver then sweeps idle ones every second).
    pub(crate) fn has_flows(&self) -> bool {
        !self.exposed.is_empty() || !self.relayed.is_empty()
    }

    pub(crate) fn expose(
        &mut self,
        core: &mut Core,
        epoll_fd: &OwnedFd,
        id: u64,
        exposure: (UdpSocket, SocketAddr, PickTarget, Arc<FlowCounters>),
    ) -> io::Result<()> {
        let (socket, relay, pick, counters) = exposure;
        if self.out.is_none() {
            let (handle, _) = core
                .udp_bind(0, self.tuning.buffer)
                .map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, e.to_string()))?;
            self.out = Some(handle);
        }
        socket.set_nonblocking(true)?;
        super::udp::enlarge_buffers(&socket, EXPOSED_SOCKET_BUFFER);
        epoll::add(epoll_fd, &socket, epoll::EventData::new_u64(id), epoll::EventFlags::IN)?;
        self.exposures.insert(id, Exposure { socket, relay, pick, counters });
        Ok(())
    }

    /// Stops exposure `id`: its socket closes and its flows end.
    pub(crate) fn stop_exposing(&mut self, id: u64) {
        if self.exposures.remove(&id).is_none() {
            return;
        }
        for (_, flow) in self.exposed.retain(|&(exposure, _), _| exposure != id) {
            self.by_flow.remove(&flow.id);
        }
    }

    pub(crate) fn relay(
        &mut self,
        core: &mut Core,
        port: u16,
        resolve: RelayTarget,
        counters: Arc<FlowCounters>,
    ) -> io::Result<()> {
        if port == 0 || self.relays.contains_key(&port) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("tunnel UDP port {port} is taken")));
        }
        let (socket, _) = core
            .udp_bind(port, self.tuning.buffer)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrNotAvailable, format!("tunnel UDP port {port}: {e}")))?;
        self.relays.insert(port, RelayPort { socket, resolve, counters });
        Ok(())
    }

    /// Stops relaying on tunnel `port`: its socket closes and its flows end.
    pub(crate) fn stop_relay(&mut self, core: &mut Core, port: u16) {
        let Some(relay) = self.relays.remove(&port) else { return };
        core.udp_close(relay.socket);
        for (_, flow) in self.relayed.retain(|&(p, _, _), _| p != port) {
            self.by_token.remove(&flow.token);
        }
    }

    /// A kernel socket of ours is readable: an exposed port (public datagrams) or a relayed flow (answers).
    pub(crate) fn kernel_ready(&mut self, core: &mut Core, token: u64, now: Instant) {
        if self.exposures.contains_key(&token) {
            self.read_public(core, token, now);
        } else if let Some(&key) = self.by_token.get(&token) {
            self.read_answers(core, key, now);
        }
    }

    fn read_public(&mut self, core: &mut Core, id: u64, now: Instant) {
        let Some(out) = self.out else { return };
        for _ in 0..BATCH {
            let exposure = &self.exposures[&id];
            let (len, client) = match exposure.socket.recv_from(&mut self.scratch[MAX_HEADER..]) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or an ICMP error left by an earlier answer to a client that has gone.
                Err(_) => return,
            };
            let counters = &exposure.counters;
            if len > self.max_payload {
                counters.too_large.fetch_add(1, Relaxed);
                continue;
            }
            let opened = self.exposed.get_or_open(&(id, client), now, || {
                let target = (exposure.pick)(client)?;
                let flow = next_free(&mut self.next_flow, &self.by_flow);
                Some(Exposed { id: flow, target })
            });
            let flow = match opened {
                Ok(flow) => flow,
                Err(refusal) => {
                    count_refusal(counters, refusal);
                    continue;
                }
            };
            if let Entry::Vacant(new) = self.by_flow.entry(flow.id) {
                new.insert((id, client));
                counters.flows_opened.fetch_add(1, Relaxed);
            }
            let mut header = [0u8; MAX_HEADER];
            let header_len = flow::write_to_relay(&mut header, flow.id, flow.target);
            let start = MAX_HEADER - header_len;
            self.scratch[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
            match core.udp_send(out, &self.scratch[start..MAX_HEADER + len], IpEndpoint::from(exposure.relay)) {
                Ok(()) => {
                    counters.datagrams_to_tunnel.fetch_add(1, Relaxed);
                    counters.bytes_to_tunnel.fetch_add(len as u64, Relaxed);
                }
                Err(_) => {
                    counters.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn read_answers(&mut self, core: &mut Core, key: RelayKey, now: Instant) {
        let (port, peer, flow_id) = key;
        let Some(relay) = self.relays.get(&port) else { return };
        for _ in 0..BATCH {
            let Some(flow) = self.relayed.touch(&key, now) else { return };
            let len = match flow.socket.recv(&mut self.scratch[MAX_HEADER..]) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or ECONNREFUSED: the target's port is closed (ICMP); later datagrams may find it.
                Err(_) => return,
            };
            if len > self.max_payload {
                relay.counters.too_large.fetch_add(1, Relaxed);
                continue;
            }
            let mut header = [0u8; MAX_HEADER];
            let header_len = flow::write_from_relay(&mut header, flow_id);
            let start = MAX_HEADER - header_len;
            self.scratch[start..MAX_HEADER].copy_from_slice(&header[..header_len]);
            match core.udp_send(relay.socket, &self.scratch[start..MAX_HEADER + len], IpEndpoint::from(peer)) {
                Ok(()) => {
                    relay.counters.datagrams_from_tunnel.fetch_add(1, Relaxed);
                    relay.counters.bytes_from_tunnel.fetch_add(len as u64, Relaxed);
                }
                Err(_) => {
                    relay.counters.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Takes what arrived on our tunnel UDP sockets: answers for exposed flows, datagrams for relayed ones.
    /// Returns whether anything arrived.
    pub(crate) fn drain_tunnel(&mut self, core: &mut Core, epoll_fd: &OwnedFd, new_id: &mut u64, now: Instant) -> bool {
        let mut any = false;
        if let Some(out) = self.out {
            while let Some((len, _)) = core.udp_recv(out, &mut self.scratch) {
                any = true;
                self.deliver_answer(len, now);
            }
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(self.relays.iter().filter(|(_, r)| core.udp_can_recv(r.socket)).map(|(&p, r)| (p, r.socket)));
        for &(port, socket) in &ready {
            while let Some((len, from)) = core.udp_recv(socket, &mut self.scratch) {
                any = true;
                let peer = SocketAddr::new(from.addr.into(), from.port);
                self.relay_datagram(port, peer, len, epoll_fd, new_id, now);
            }
        }
        ready.clear();
        self.ready = ready;
        any
    }

    /// An answer for an exposed flow, in `scratch[..len]`: to the public client.
    fn deliver_answer(&mut self, len: usize, now: Instant) {
        let Some(Frame::FromRelay { flow, payload }) = flow::decode(&self.scratch[..len]) else {
            self.count_stray();
            return;
        };
        let Some(&key) = self.by_flow.get(&flow) else {
            self.count_stray(); // the flow expired meanwhile
            return;
        };
        let Some(exposure) = self.exposures.get(&key.0) else { return };
        self.exposed.touch(&key, now);
        match exposure.socket.send_to(payload, key.1) {
            Ok(_) => {
                exposure.counters.datagrams_from_tunnel.fetch_add(1, Relaxed);
                exposure.counters.bytes_from_tunnel.fetch_add(payload.len() as u64, Relaxed);
            }
            Err(_) => {
                exposure.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Something arrived that belongs to no flow: counted against every exposure (there is usually one set of
    /// counters for all of them).
    fn count_stray(&self) {
        if let Some(exposure) = self.exposures.values().next() {
            exposure.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// A framed datagram from `peer` on relay `port`, in `scratch[..len]`: to its flow's target.
    fn relay_datagram(
        &mut self,
        port: u16,
        peer: SocketAddr,
        len: usize,
        epoll_fd: &OwnedFd,
        new_id: &mut u64,
        now: Instant,
    ) {
        let relay = &self.relays[&port];
        let Some(Frame::ToRelay { flow: flow_id, target, payload }) = flow::decode(&self.scratch[..len]) else {
            relay.counters.dropped.fetch_add(1, Relaxed);
            return;
        };
        let key = (port, peer, flow_id);
        // The exposing side restarted and reuses an id for another target: that is a new flow.
        if self.relayed.touch(&key, now).is_some_and(|flow| flow.target != target) {
            if let Some(old) = self.relayed.remove(&key) {
                self.by_token.remove(&old.token);
            }
        }
        let opened = self.relayed.get_or_open(&key, now, || {
            let Some(address) = (relay.resolve)(target) else {
                log::debug!("relay: refused a UDP flow to {target}: not an endpoint of the current snapshot");
                return None;
            };
            let socket = connected_socket(address)
                .map_err(|e| log::warn!("relay: cannot open a UDP socket to {address} (for {target}): {e}"))
                .ok()?;
            let token = *new_id;
            epoll::add(epoll_fd, &socket, epoll::EventData::new_u64(token), epoll::EventFlags::IN).ok()?;
            *new_id += 1;
            Some(Relayed { socket, token, target })
        });
        let flow = match opened {
            Ok(flow) => flow,
            Err(refusal) => {
                count_refusal(&relay.counters, refusal);
                return;
            }
        };
        if let Entry::Vacant(new) = self.by_token.entry(flow.token) {
            new.insert(key);
            relay.counters.flows_opened.fetch_add(1, Relaxed);
        }
        match flow.socket.send(payload) {
            Ok(_) => {
                relay.counters.datagrams_to_tunnel.fetch_add(1, Relaxed);
                relay.counters.bytes_to_tunnel.fetch_add(payload.len() as u64, Relaxed);
            }
            Err(_) => {
                relay.counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Ends the flows idle for the idle timeout.
    pub(crate) fn sweep(&mut self, now: Instant) {
        for ((exposure, _), flow) in self.exposed.expire(now) {
            self.by_flow.remove(&flow.id);
            if let Some(exposure) = self.exposures.get(&exposure) {
                exposure.counters.flows_expired.fetch_add(1, Relaxed);
            }
        }
        for ((port, _, _), flow) in self.relayed.expire(now) {
            // Closing the socket takes it out of the epoll set.
            self.by_token.remove(&flow.token);
            if let Some(relay) = self.relays.get(&port) {
                relay.counters.flows_expired.fetch_add(1, Relaxed);
            }
        }
    }

    /// Open flows: (exposed, relayed).
    pub(crate) fn flows(&self) -> (usize, usize) {
        (self.exposed.len(), self.relayed.len())
    }
}

fn count_refusal(counters: &FlowCounters, refusal: Refusal) {
    match refusal {
        Refusal::Full => counters.flows_over_cap.fetch_add(1, Relaxed),
        Refusal::Refused => counters.flows_refused.fetch_add(1, Relaxed),
    };
}

/// The next flow id not in use (ids wrap; 0 is never used).
fn next_free(next: &mut u32, used: &HashMap<u32, (u64, SocketAddr)>) -> u32 {
    loop {
        let id = *next;
        *next = next.wrapping_add(1).max(1);
        if !used.contains_key(&id) {
            return id;
        }
    }
}

/// A non-blocking kernel UDP socket connected to `target` (so only the target's answers arrive on it).
fn connected_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    super::udp::enlarge_buffers(&socket, FLOW_SOCKET_BUFFER);
    Ok(socket)
}
