//! The driver thread's loop. See the module docs of [`crate::driver`].

use super::bridge::{Bridge, Pump, SpliceOutcome};
use super::udp::{self, UdpSink};
use super::{Command, Shared, TunnelStatus, TunnelStream};
use crate::core::Core;
use crate::relay;
use rustix::event::epoll;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

const TOKEN_UDP: u64 = 0;
const TOKEN_WAKE: u64 = 1;
/// Connection ids start here so they can double as epoll tokens.
const FIRST_CONNECTION: u64 = 16;
/// Listening sockets kept per listener: how many handshakes can be in progress at once.
const LISTEN_POOL: usize = 8;
/// Datagrams read per wake-up before the stack gets a turn, so one busy peer cannot starve the sockets.
const DATAGRAM_BATCH: usize = 128;

/// Time since the driver started, as smoltcp counts it.
pub(crate) fn elapsed(start: std::time::Instant) -> Instant {
    Instant::from_micros(start.elapsed().as_micros() as i64)
}

struct Listening {
    pool: Vec<SocketHandle>,
    accepted: Sender<TunnelStream>,
}

struct Connecting {
    deadline: Instant,
    reply: Sender<io::Result<TunnelStream>>,
}

struct PreambleWait {
    deadline: Instant,
    reply: Sender<io::Result<SocketAddr>>,
}

struct Connection {
    socket: SocketHandle,
    bridge: Option<(Bridge, Sender<SpliceOutcome>)>,
}

pub(crate) struct Driver {
    core: Core,
    socket: UdpSocket,
    is_v6: bool,
    epoll: std::os::fd::OwnedFd,
    shared: Arc<Shared>,
    inbox: Receiver<Command>,
    start: std::time::Instant,
    listeners: HashMap<u16, Listening>,
    connecting: HashMap<u64, Connecting>,
    connections: HashMap<u64, Connection>,
    preambles: HashMap<u64, PreambleWait>,
    /// Sockets whose kernel side is gone, kept until their FIN or RST has gone out.
    closing: Vec<SocketHandle>,
    next_id: u64,
    send_errors: u64,
    wakeups: u64,
    datagram: Box<[u8]>,
}

impl Driver {
    pub(crate) fn new(
        core: Core,
        socket: UdpSocket,
        shared: Arc<Shared>,
        inbox: Receiver<Command>,
        start: std::time::Instant,
    ) -> io::Result<Driver> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(&epoll, &socket, epoll::EventData::new_u64(TOKEN_UDP), epoll::EventFlags::IN)?;
        epoll::add(&epoll, &shared.wake, epoll::EventData::new_u64(TOKEN_WAKE), epoll::EventFlags::IN)?;
        let is_v6 = socket.local_addr()?.is_ipv6();
        Ok(Driver {
            core,
            socket,
            is_v6,
            epoll,
            shared,
            inbox,
            start,
            listeners: HashMap::new(),
            connecting: HashMap::new(),
            connections: HashMap::new(),
            preambles: HashMap::new(),
            closing: Vec::new(),
            next_id: FIRST_CONNECTION,
            send_errors: 0,
            wakeups: 0,
            datagram: vec![0; 65536].into_boxed_slice(),
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = Vec::with_capacity(256);
        loop {
            let now = elapsed(self.start);
            let deadline = self.core.poll_at(now);
            // epoll's timeout counts whole milliseconds: round up, or we would spin until the deadline.
            let wait =
                if deadline <= now { Duration::ZERO } else { Duration::from_micros((deadline - now).total_micros()) };
            let wait_ms = wait.as_micros().div_ceil(1000) as u64;
            let timeout = rustix::time::Timespec::try_from(Duration::from_millis(wait_ms)).unwrap();
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::error!("tunnel driver: epoll_wait failed: {e}; stopping");
                    return;
                }
            }
            self.wakeups += 1;
            let mut udp_ready = false;
            for event in &events {
                match event.data.u64() {
                    TOKEN_UDP => udp_ready = true,
                    TOKEN_WAKE => {
                        let mut counter = [0u8; 8];
                        let _ = rustix::io::read(&self.shared.wake, &mut counter);
                    }
                    id => {
                        if let Some(Connection { bridge: Some((bridge, _)), .. }) = self.connections.get_mut(&id) {
                            let flags = event.flags;
                            if flags.intersects(
                                epoll::EventFlags::IN
                                    | epoll::EventFlags::HUP
                                    | epoll::EventFlags::RDHUP
                                    | epoll::EventFlags::ERR,
                            ) {
                                bridge.readable = true;
                            }
                            if flags
                                .intersects(epoll::EventFlags::OUT | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
                            {
                                bridge.writable = true;
                            }
                        }
                    }
                }
            }
            let now = elapsed(self.start);
            if udp_ready {
                self.receive_datagrams(now);
            }
            while let Ok(command) = self.inbox.try_recv() {
                if !self.handle(command, now) {
                    return;
                }
            }
            self.pump(now);
        }
    }

    fn sink(&mut self) -> (&mut Core, UdpSink<'_>) {
        (&mut self.core, UdpSink { socket: &self.socket, is_v6: self.is_v6, send_errors: &mut self.send_errors })
    }

    fn receive_datagrams(&mut self, now: Instant) {
        for _ in 0..DATAGRAM_BATCH {
            match self.socket.recv_from(&mut self.datagram) {
                Ok((len, from)) => {
                    let from = udp::canonical(from);
                    let core = &mut self.core;
                    let mut sink =
                        UdpSink { socket: &self.socket, is_v6: self.is_v6, send_errors: &mut self.send_errors };
                    core.handle_datagram(now, from, &self.datagram[..len], &mut sink);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors from earlier sends surface here (ECONNREFUSED); they say nothing about this peer.
                Err(_) => {}
            }
        }
    }

    /// Runs one command; false means stop.
    fn handle(&mut self, command: Command, now: Instant) -> bool {
        match command {
            Command::Listen { port, accepted, reply } => {
                let result = if port == 0 {
                    Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot listen on tunnel port 0"))
                } else if self.listeners.contains_key(&port) {
                    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("tunnel port {port} already has a listener")))
                } else {
                    let pool = (0..LISTEN_POOL).map(|_| self.core.listen(port)).collect();
                    self.listeners.insert(port, Listening { pool, accepted });
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Command::Unlisten { port } => {
                if let Some(listening) = self.listeners.remove(&port) {
                    for handle in listening.pool {
                        self.core.tcp(handle).abort();
                        self.closing.push(handle);
                    }
                }
            }
            Command::Connect { reply, .. } if self.core.peer().endpoint.is_none() => {
                let _ = reply.send(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the tunnel peer has not connected yet (no handshake from it, and no endpoint configured)",
                )));
            }
            Command::Connect { remote, timeout, reply } => match self.core.connect(IpEndpoint::from(remote)) {
                Ok(handle) => {
                    let id = self.new_connection(handle);
                    let deadline = now + smoltcp::time::Duration::from_micros(timeout.as_micros() as u64);
                    self.connecting.insert(id, Connecting { deadline, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(io::Error::new(io::ErrorKind::AddrNotAvailable, e.to_string())));
                }
            },
            Command::Attach { id, fd, done } => self.attach(id, fd, Vec::new(), done),
            // Without a peer address nothing can be sent: fail at once rather than after the TCP timeout, so
            // whoever waits (Traefik, for a forwarder) reports the backend as unreachable right away.
            Command::Forward { done, .. } if self.core.peer().endpoint.is_none() => {
                let _ = done.send(SpliceOutcome::FAILED);
            }
            Command::Forward { remote, fd, preamble, done } => match self.core.connect(IpEndpoint::from(remote)) {
                Ok(handle) => {
                    let id = self.new_connection(handle);
                    self.attach(id, fd, preamble, done);
                }
                Err(e) => {
                    log::warn!("tunnel driver: cannot open a tunnel connection to {remote}: {e}");
                    let _ = done.send(SpliceOutcome::FAILED);
                }
            },
            Command::Drop { id } => self.close(id, true),
            Command::Preamble { id, timeout, reply } => {
                let deadline = now + smoltcp::time::Duration::from_micros(timeout.as_micros() as u64);
                self.preambles.insert(id, PreambleWait { deadline, reply });
                self.service_preambles(now);
            }
            Command::Status { reply } => {
                let _ = reply.send(TunnelStatus {
                    peer: self.core.peer(),
                    stats: self.core.stats(),
                    send_errors: self.send_errors,
                    connections: self.connections.len(),
                    wakeups: self.wakeups,
                });
            }
            Command::Shutdown => {
                let ids: Vec<u64> = self.connections.keys().copied().collect();
                for id in ids {
                    self.close(id, true);
                }
                let (core, mut sink) = self.sink();
                core.poll(now, &mut sink);
                return false;
            }
        }
        true
    }

    fn attach(&mut self, id: u64, fd: std::os::fd::OwnedFd, preamble: Vec<u8>, done: Sender<SpliceOutcome>) {
        let Some(connection) = self.connections.get_mut(&id) else {
            let _ = done.send(SpliceOutcome::FAILED);
            return;
        };
        let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        match epoll::add(&self.epoll, &fd, epoll::EventData::new_u64(id), flags) {
            Ok(()) => connection.bridge = Some((Bridge::new(fd, preamble), done)),
            Err(e) => {
                log::warn!("tunnel driver: cannot watch a spliced socket ({e}); resetting the connection");
                let _ = done.send(SpliceOutcome::FAILED);
                self.close(id, true);
            }
        }
    }

    fn new_connection(&mut self, socket: SocketHandle) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.connections.insert(id, Connection { socket, bridge: None });
        id
    }

    fn stream(&mut self, id: u64) -> TunnelStream {
        let handle = self.connections[&id].socket;
        let tcp = self.core.tcp(handle);
        let local = tcp.local_endpoint().map(endpoint_to_std).unwrap_or_else(unspecified);
        let remote = tcp.remote_endpoint().map(endpoint_to_std).unwrap_or_else(unspecified);
        TunnelStream { id, local, remote, shared: Some(Arc::clone(&self.shared)) }
    }

    /// Forgets a connection; its socket stays until the FIN (or the RST, with `reset`) has gone out.
    fn close(&mut self, id: u64, reset: bool) {
        self.connecting.remove(&id);
        self.preambles.remove(&id);
        if let Some(connection) = self.connections.remove(&id) {
            if let Some((bridge, _)) = &connection.bridge {
                let _ = epoll::delete(&self.epoll, &bridge.fd);
            }
            let tcp = self.core.tcp(connection.socket);
            if reset {
                tcp.abort();
            }
            self.closing.push(connection.socket);
        }
    }

    /// Moves data until nothing moves: kernel sockets <-> smoltcp <-> WireGuard.
    fn pump(&mut self, now: Instant) {
        for _ in 0..16 {
            let moved_before = self.pump_bridges();
            let (core, mut sink) = self.sink();
            let changed = core.poll(now, &mut sink);
            self.reap_closing();
            let moved_after = self.pump_bridges();
            self.service_listeners();
            self.service_connecting(now);
            self.service_preambles(now);
            if !(moved_before || moved_after || changed) {
                break;
            }
        }
    }

    fn pump_bridges(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        for (&id, connection) in self.connections.iter_mut() {
            let Some((bridge, _)) = connection.bridge.as_mut() else { continue };
            match bridge.pump(self.core.tcp(connection.socket)) {
                Pump::Open { moved: m } => moved |= m,
                Pump::Finished(outcome) => finished.push((id, outcome)),
            }
        }
        for (id, outcome) in finished {
            if let Some(Connection { bridge: Some((_, done)), .. }) = self.connections.get(&id) {
                let _ = done.send(outcome);
            }
            self.close(id, false);
            moved = true;
        }
        moved
    }

    fn reap_closing(&mut self) {
        let core = &mut self.core;
        self.closing.retain(|&handle| {
            let done = matches!(core.tcp(handle).state(), State::Closed | State::TimeWait);
            if done {
                core.remove(handle);
            }
            !done
        });
    }

    fn service_listeners(&mut self) {
        let mut ready = Vec::new();
        for (&port, listening) in self.listeners.iter_mut() {
            for slot in listening.pool.iter_mut() {
                let state = self.core.tcp(*slot).state();
                if !matches!(state, State::Listen | State::SynReceived) {
                    let taken = std::mem::replace(slot, self.core.listen(port));
                    ready.push((port, taken));
                }
            }
        }
        for (port, handle) in ready {
            let id = self.new_connection(handle);
            let stream = self.stream(id);
            let listening = &self.listeners[&port];
            if let Err(unsent) = listening.accepted.send(stream) {
                // The Listener is gone; dropping the stream resets the connection via its Drop command.
                drop(unsent);
            }
        }
    }

    fn service_preambles(&mut self, now: Instant) {
        if self.preambles.is_empty() {
            return;
        }
        let mut settled = Vec::new();
        for (&id, wait) in &self.preambles {
            let Some(connection) = self.connections.get(&id) else {
                settled.push((id, Err(io::Error::new(io::ErrorKind::NotConnected, "the stream is gone"))));
                continue;
            };
            let socket = self.core.tcp(connection.socket);
            let mut head = [0u8; relay::MAX_LEN];
            let n = socket.peek_slice(&mut head).unwrap_or(0);
            match relay::decode(&head[..n]) {
                Ok(Some((target, len))) => {
                    let _ = socket.recv_slice(&mut head[..len]);
                    settled.push((id, Ok(target)));
                }
                Err(e) => settled.push((id, Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))),
                Ok(None) if !socket.may_recv() => settled.push((
                    id,
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream closed before its preamble")),
                )),
                Ok(None) if now >= wait.deadline => {
                    settled.push((id, Err(io::Error::new(io::ErrorKind::TimedOut, "no relay preamble in time"))))
                }
                Ok(None) => {}
            }
        }
        for (id, result) in settled {
            if let Some(wait) = self.preambles.remove(&id) {
                let _ = wait.reply.send(result);
            }
        }
    }

    fn service_connecting(&mut self, now: Instant) {
        let mut settled = Vec::new();
        for (&id, connecting) in &self.connecting {
            let state = self.core.tcp(self.connections[&id].socket).state();
            match state {
                State::SynSent if now < connecting.deadline => {}
                State::SynSent => settled.push((id, Err(io::ErrorKind::TimedOut))),
                State::Closed => settled.push((id, Err(io::ErrorKind::ConnectionRefused))),
                _ => settled.push((id, Ok(()))),
            }
        }
        for (id, result) in settled {
            let connecting = self.connecting.remove(&id).expect("listed above");
            match result {
                Ok(()) => {
                    let stream = self.stream(id);
                    let _ = connecting.reply.send(Ok(stream));
                }
                Err(kind) => {
                    let message = match kind {
                        io::ErrorKind::TimedOut => {
                            "no answer through the tunnel (is the peer up and its handshake done?)"
                        }
                        _ => "connection refused by the tunnel peer",
                    };
                    let _ = connecting.reply.send(Err(io::Error::new(kind, message)));
                    self.close(id, true);
                }
            }
        }
    }
}

fn endpoint_to_std(endpoint: IpEndpoint) -> SocketAddr {
    SocketAddr::new(endpoint.addr.into(), endpoint.port)
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
