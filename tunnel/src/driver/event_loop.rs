//! The driver thread's loop. See the module docs of [`crate::driver`].
//!
//! Every tunnel connection the driver knows is a [`Connection`] in one [`Stage`]: handed to its owner
//! (`Detached`), being opened for [`super::Tunnel::connect`] (`Connecting`), a relay stream waiting for its
//! preamble (`Preamble`) or dialing its target (`Dialing`), or spliced with a kernel socket (`Spliced`).
//! Deadlines and idle checks live in one timer heap; epoll tokens are connection ids (and forwarder ids).
//!
//! Work per wake-up follows what changed, not how many connections are open: a spliced connection is pumped
//! only when its kernel socket reported readiness (epoll) or its tunnel socket woke (smoltcp's wakers), and
//! only connections still in their handshake are looked at for that.

use super::bridge::{Bridge, Pump, SpliceOutcome};
use super::datagrams::Datagrams;
use super::kernel;
use super::remotes::{self, Candidate, Remotes, MOVE_AFTER};
use super::timers::{Timer, Timers};
use super::udp::{self, UdpSink};
use super::{Command, Preamble, RelayPolicy, Shared, StreamCounters, TunnelStatus, TunnelStream};
use crate::core::{Core, TcpTuning};
use rustix::event::epoll;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

const TOKEN_UDP: u64 = 0;
const TOKEN_WAKE: u64 = 1;
/// The timer id of the UDP flows' idle sweep.
const SWEEP_ID: u64 = 2;
/// How often idle UDP flows are looked for while any are open.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Connection and forwarder ids start here so they can double as epoll tokens.
const FIRST_ID: u64 = 16;
/// Datagrams read per wake-up before the stack gets a turn, so one busy peer cannot starve the sockets.
const DATAGRAM_BATCH: usize = 128;
/// Connections accepted from one forwarder per wake-up (the listener is level-triggered: the rest wait).
const ACCEPT_BATCH: usize = 64;
/// How long a relay stream may take to name its target.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A spliced connection that carried nothing for this long gives its buffer pages back to the OS.
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// At most one log line a second about refusals at the connection cap.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Time since the driver started, as smoltcp counts it.
pub(crate) fn elapsed(start: std::time::Instant) -> Instant {
    Instant::from_micros(start.elapsed().as_micros() as i64)
}

fn after(now: Instant, d: Duration) -> Instant {
    now + smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

/// The stream limits the driver enforces, from [`TcpTuning`].
pub(crate) struct Limits {
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_connections: usize,
}

impl From<&TcpTuning> for Limits {
    fn from(t: &TcpTuning) -> Limits {
        Limits { connect_timeout: t.connect_timeout, idle_timeout: t.idle_timeout, max_connections: t.max_connections }
    }
}

/// Who takes the connections accepted on a tunnel port.
enum Accepting {
    /// A [`super::Listener`].
    Channel(Sender<TunnelStream>),
    /// The driver itself, as a relay.
    Relay(Arc<RelayPort>),
}

struct RelayPort {
    policy: Arc<dyn RelayPolicy>,
    counters: Arc<StreamCounters>,
}

/// A kernel listening socket whose connections go into the tunnel.
struct Forwarder {
    listener: OwnedFd,
    remotes: Remotes,
    /// The remote the next stream tries first (streams take them in turn).
    next: usize,
    preamble: Preamble,
    counters: Arc<StreamCounters>,
}

/// A forwarded stream that may still move to another remote if its tunnel connection is not answered.
struct Moving {
    remotes: Remotes,
    current: usize,
    /// Moves left before the stream fails like a single-remote one.
    left: usize,
}

enum Stage {
    Detached,
    Connecting { reply: Sender<io::Result<TunnelStream>> },
    Preamble,
    Dialing { fd: OwnedFd, target: SocketAddr },
    Spliced { bridge: Bridge, done: Option<Sender<SpliceOutcome>> },
}

/// Ids of connections whose tunnel socket woke during a poll (filled by [`ConnectionWaker`]s).
#[derive(Default)]
struct Woken(Mutex<Vec<u64>>);

/// The waker a spliced connection registers on its smoltcp socket.
struct ConnectionWaker {
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for ConnectionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.0.lock().unwrap_or_else(|p| p.into_inner()).push(self.id);
    }
}

struct Connection {
    socket: SocketHandle,
    stage: Stage,
    /// Registered on the socket while spliced.
    waker: Option<Waker>,
    /// Listed in `Driver::dirty`.
    dirty: bool,
    /// Where the stream's outcome and bytes are counted (forwarded and relayed streams).
    counters: Option<Arc<StreamCounters>>,
    /// For relayed streams: the port's policy.
    relay: Option<Arc<RelayPort>>,
    /// For forwarded streams with several remotes.
    moving: Option<Moving>,
    /// When the current stage gives up (connect, preamble, dial).
    deadline: Option<Instant>,
    last_active: Instant,
    /// The buffers were given back since the last activity.
    quiet: bool,
    /// When the one live idle check of this connection is due (older ones in the heap are stale).
    idle_check: Option<Instant>,
}

/// How a connection ends, for its counters.
#[derive(Clone, Copy)]
enum End {
    Refused,
    DialFailed,
    Failed,
    Completed,
}

pub(crate) struct Driver {
    core: Core,
    socket: UdpSocket,
    is_v6: bool,
    epoll: OwnedFd,
    shared: Arc<Shared>,
    inbox: Receiver<Command>,
    start: std::time::Instant,
    limits: Limits,
    listeners: HashMap<u16, Accepting>,
    /// Relay ports closed by their owner whose handshakes under way still finish (see `Core::stop_accepting`).
    draining: Vec<u16>,
    forwarders: HashMap<u64, Forwarder>,
    /// Remotes whose connection went unanswered, and when; forgiven once their peer is heard from again.
    suspected: HashMap<SocketAddr, Instant>,
    connections: HashMap<u64, Connection>,
    /// Spliced connections to pump: kernel socket ready, or tunnel socket woke.
    dirty: Vec<u64>,
    woken: Arc<Woken>,
    /// Connections in `Connecting` or `Preamble`.
    handshaking: Vec<u64>,
    timers: Timers,
    next_id: u64,
    send_errors: u64,
    wakeups: u64,
    refusals_logged: u64,
    next_refusal_log: Instant,
    datagram: Box<[u8]>,
    /// UDP flows: exposed ports and relay ports.
    flows: Datagrams,
    sweep_armed: bool,
}

impl Driver {
    pub(crate) fn new(
        core: Core,
        socket: UdpSocket,
        shared: Arc<Shared>,
        inbox: Receiver<Command>,
        start: std::time::Instant,
        limits: Limits,
        flows: Datagrams,
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
            limits,
            listeners: HashMap::new(),
            draining: Vec::new(),
            forwarders: HashMap::new(),
            suspected: HashMap::new(),
            connections: HashMap::new(),
            dirty: Vec::new(),
            woken: Arc::default(),
            handshaking: Vec::new(),
            timers: Timers::default(),
            next_id: FIRST_ID,
            send_errors: 0,
            wakeups: 0,
            refusals_logged: 0,
            next_refusal_log: Instant::ZERO,
            datagram: vec![0; 65536].into_boxed_slice(),
            flows,
            sweep_armed: false,
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = Vec::with_capacity(256);
        let mut dial_ready = Vec::new();
        let mut accept_ready = Vec::new();
        let mut flows_ready = Vec::new();
        loop {
            let now = elapsed(self.start);
            let mut deadline = self.core.poll_at(now);
            if let Some(timer) = self.timers.next() {
                deadline = deadline.min(timer);
            }
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
                    id => match self.connections.get_mut(&id) {
                        Some(Connection { stage: Stage::Spliced { bridge, .. }, dirty, .. }) => {
                            use epoll::EventFlags as F;
                            let flags = event.flags;
                            if flags.intersects(F::IN | F::HUP | F::RDHUP | F::ERR) {
                                bridge.readable = true;
                            }
                            if flags.intersects(F::HUP | F::RDHUP | F::ERR) {
                                bridge.hangup = true;
                            }
                            if flags.intersects(F::OUT | F::HUP | F::ERR) {
                                bridge.writable = true;
                            }
                            if !*dirty {
                                *dirty = true;
                                self.dirty.push(id);
                            }
                        }
                        Some(Connection { stage: Stage::Dialing { .. }, .. }) => dial_ready.push(id),
                        Some(_) => {}
                        None if self.forwarders.contains_key(&id) => accept_ready.push(id),
                        None if self.flows.owns(id) => flows_ready.push(id),
                        None => {}
                    },
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
            for id in dial_ready.drain(..) {
                self.finish_dial(id, now);
            }
            for id in accept_ready.drain(..) {
                self.accept_forwarded(id, now);
            }
            for token in flows_ready.drain(..) {
                self.flows.kernel_ready(&mut self.core, token, now);
            }
            self.fire_timers(now);
            self.pump(now);
            self.log_refusals(now);
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
                let _ = reply.send(self.listen(port, Accepting::Channel(accepted)));
            }
            Command::Relay { port, policy, counters, reply } => {
                let _ = reply.send(self.listen(port, Accepting::Relay(Arc::new(RelayPort { policy, counters }))));
            }
            Command::Unlisten { port } => self.unlisten(port),
            Command::Connect { remote, timeout, reply } => self.connect(remote, timeout, reply, now),
            Command::Attach { id, fd, done } => self.attach(id, fd, done, now),
            Command::ForwardFrom { listener, remote, preamble, counters, reply } => {
                let forwarder = Forwarder { listener, remotes: remote, next: 0, preamble, counters };
                let _ = reply.send(self.forward_from(forwarder));
            }
            Command::StopForwarding { id } => {
                // Closing the listener also takes it out of the epoll set.
                self.forwarders.remove(&id);
            }
            Command::ExposeUdp { socket, relay, pick, counters, reply } => {
                let id = self.new_id();
                let result =
                    self.flows.expose(&mut self.core, &self.epoll, id, (socket, relay, pick, counters)).map(|()| id);
                let _ = reply.send(result);
            }
            Command::StopExposing { id } => self.flows.stop_exposing(id),
            Command::RelayUdp { port, resolve, counters, reply } => {
                let _ = reply.send(self.flows.relay(&mut self.core, port, resolve, counters));
            }
            Command::StopRelayingUdp { port } => self.flows.stop_relay(&mut self.core, port),
            Command::Drop { id } => self.close(id, true, None),
            Command::Rehandshake => {
                let (core, mut sink) = self.sink();
                core.rehandshake(now, &mut sink);
            }
            Command::CloseQuiet { quiet, reply } => {
                self.close_quiet(quiet, now);
                let _ = reply.send(self.connections.len());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => {
                let ids: Vec<u64> = self.connections.keys().copied().collect();
                for id in ids {
                    self.close(id, true, Some(End::Failed));
                }
                let (core, mut sink) = self.sink();
                core.poll(now, &mut sink);
                return false;
            }
        }
        true
    }

    fn unlisten(&mut self, port: u16) {
        match self.listeners.get(&port) {
            // A relay serves what it already half accepted: with several replicas, a reset after the other
            // side's handshake would fail a request; new ones are refused and move to another one.
            Some(Accepting::Relay(_)) if !self.draining.contains(&port) => {
                // Forgotten by `take_accepted` once the core has handed over its last connection.
                self.core.stop_accepting(port);
                self.draining.push(port);
            }
            Some(_) if !self.draining.contains(&port) => {
                self.listeners.remove(&port);
                self.core.unlisten(port);
            }
            _ => {}
        }
    }

    /// Opens a stream to `remote`; `reply` hears of it once the handshake ends or `timeout` passes.
    fn connect(
        &mut self,
        remote: SocketAddr,
        timeout: Duration,
        reply: Sender<io::Result<TunnelStream>>,
        now: Instant,
    ) {
        if self.core.peer().endpoint.is_none() {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the tunnel peer has not connected yet (no handshake from it, and no endpoint configured)",
            )));
            return;
        }
        match self.core.connect(IpEndpoint::from(remote)) {
            Ok(handle) => {
                let id = self.add_connection(handle, Stage::Connecting { reply }, None, now);
                self.handshaking.push(id);
                self.set_deadline(id, after(now, timeout));
            }
            Err(e) => {
                let _ = reply.send(Err(io::Error::new(io::ErrorKind::AddrNotAvailable, e.to_string())));
            }
        }
    }

    /// Accepts on the forwarder's listener from now on; its id.
    fn forward_from(&mut self, forwarder: Forwarder) -> io::Result<u64> {
        let id = self.new_id();
        epoll::add(&self.epoll, &forwarder.listener, epoll::EventData::new_u64(id), epoll::EventFlags::IN)?;
        self.forwarders.insert(id, forwarder);
        Ok(id)
    }

    /// Closes (with a FIN) every spliced stream quiet for `quiet` or longer: a draining replica's keep-alive
    /// streams.
    fn close_quiet(&mut self, quiet: Duration, now: Instant) {
        let quiet_ids: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.stage, Stage::Spliced { .. }))
            .filter(|(_, c)| Duration::from_micros((now - c.last_active).total_micros()) >= quiet)
            .map(|(&id, _)| id)
            .collect();
        for id in quiet_ids {
            if let Some(connection) = self.connections.get(&id) {
                self.core.tcp(connection.socket).close();
            }
            self.close(id, false, Some(End::Completed));
        }
    }

    fn status(&self) -> TunnelStatus {
        TunnelStatus {
            peer: self.core.peer(),
            peers: self.core.peers(),
            stats: self.core.stats(),
            send_errors: self.send_errors,
            connections: self.connections.len(),
            sockets: self.core.socket_count(),
            wakeups: self.wakeups,
            udp_flows: self.flows.flows(),
        }
    }

    fn listen(&mut self, port: u16, accepting: Accepting) -> io::Result<()> {
        if port == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot listen on tunnel port 0"));
        }
        if let Some(n) = self.draining.iter().position(|&p| p == port) {
            // A relay that was closing on this port: the new owner takes over its last handshakes too.
            self.draining.swap_remove(n);
            self.listeners.remove(&port);
        }
        if self.listeners.contains_key(&port) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("tunnel port {port} already has a listener")));
        }
        self.core.listen(port);
        self.listeners.insert(port, accepting);
        Ok(())
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn add_connection(
        &mut self,
        socket: SocketHandle,
        stage: Stage,
        counters: Option<Arc<StreamCounters>>,
        now: Instant,
    ) -> u64 {
        let id = self.new_id();
        let connection = Connection {
            socket,
            stage,
            waker: None,
            dirty: false,
            counters,
            relay: None,
            moving: None,
            deadline: None,
            last_active: now,
            quiet: false,
            idle_check: None,
        };
        self.connections.insert(id, connection);
        id
    }

    fn set_deadline(&mut self, id: u64, at: Instant) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.deadline = Some(at);
            self.timers.arm(at, id, Timer::Deadline);
        }
    }

    /// Registers a kernel socket for connection `id` (edge-triggered, both ways).
    fn watch(&self, id: u64, fd: &OwnedFd) -> io::Result<()> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        epoll::add(&self.epoll, fd, epoll::EventData::new_u64(id), flags).map_err(io::Error::from)
    }

    /// Splices connection `id` with `fd`, which is already watched.
    fn splice(&mut self, id: u64, fd: OwnedFd, preamble: Vec<u8>, done: Option<Sender<SpliceOutcome>>, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else { return };
        connection.stage = Stage::Spliced { bridge: Bridge::new(fd, preamble), done };
        connection.last_active = now;
        connection.waker = Some(Waker::from(Arc::new(ConnectionWaker { id, woken: Arc::clone(&self.woken) })));
        if !connection.dirty {
            connection.dirty = true;
            self.dirty.push(id);
        }
        let at = after(now, self.limits.idle_timeout.map_or(QUIET_AFTER, |idle| QUIET_AFTER.min(idle)));
        connection.idle_check = Some(at);
        self.timers.arm(at, id, Timer::Idle);
    }

    fn attach(&mut self, id: u64, fd: OwnedFd, done: Sender<SpliceOutcome>, now: Instant) {
        if !self.connections.contains_key(&id) {
            let _ = done.send(SpliceOutcome::FAILED);
            return;
        }
        match self.watch(id, &fd) {
            Ok(()) => self.splice(id, fd, Vec::new(), Some(done), now),
            Err(e) => {
                log::warn!("tunnel driver: cannot watch a spliced socket ({e}); resetting the connection");
                let _ = done.send(SpliceOutcome::FAILED);
                self.close(id, true, None);
            }
        }
    }

    /// Takes the pending connections of forwarder `id` into the tunnel.
    fn accept_forwarded(&mut self, id: u64, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let Some(forwarder) = self.forwarders.get(&id) else { return };
            let fd = match kernel::accept(&forwarder.listener) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: leave the connection in the backlog; it is retried on the next wake-up.
                    log::warn!("tunnel driver: a forwarder cannot accept: {e}");
                    return;
                }
            };
            let preamble = match &forwarder.preamble {
                Preamble::Fixed(bytes) => Some(bytes.clone()),
                Preamble::PerConnection(make) => kernel::addresses(&fd).and_then(|(client, local)| make(client, local)),
            };
            let (remotes, counters) = (forwarder.remotes.clone(), Arc::clone(&forwarder.counters));
            counters.opened.fetch_add(1, Relaxed);
            let Some(preamble) = preamble else {
                // Nowhere to send it (no pod), or reset before its addresses could be read: close it now.
                counters.refused.fetch_add(1, Relaxed);
                continue;
            };
            let Some(current) = remotes::pick(&self.candidates(&remotes, now), forwarder.next, None) else {
                // No peer has shown up: closing at once makes Traefik answer 502 now, not later.
                counters.refused.fetch_add(1, Relaxed);
                continue;
            };
            self.forwarders.get_mut(&id).expect("looked up above").next = current + 1;
            let remote = remotes.addresses()[current];
            let handle = match self.core.connect(IpEndpoint::from(remote)) {
                Ok(handle) => handle,
                Err(e) => {
                    log::warn!("tunnel driver: cannot open a tunnel connection to {remote}: {e}");
                    counters.refused.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let conn = self.add_connection(handle, Stage::Detached, Some(counters), now);
            if let Err(e) = self.watch(conn, &fd) {
                log::warn!("tunnel driver: cannot watch a forwarded connection ({e})");
                self.close(conn, true, Some(End::Failed));
                continue;
            }
            self.splice(conn, fd, preamble, None, now);
            let left = remotes.addresses().len() - 1;
            let wait = if left > 0 { MOVE_AFTER.min(self.limits.connect_timeout) } else { self.limits.connect_timeout };
            if left > 0 {
                let connection = self.connections.get_mut(&conn).expect("added above");
                connection.moving = Some(Moving { remotes, current, left });
            }
            self.set_deadline(conn, after(now, wait));
        }
    }

    /// What the choice of a remote knows: whether each remote's peer is reachable, and suspected.
    fn candidates(&self, remotes: &Remotes, now: Instant) -> Vec<Candidate> {
        remotes
            .addresses()
            .iter()
            .map(|remote| {
                let peer = self.core.peer_of_address(IpAddress::from(remote.ip())).map(|n| self.core.peer_status(n));
                let suspected = self.suspected.get(remote).is_some_and(|&since| {
                    let suspected_for = Duration::from_micros((now - since).total_micros());
                    // Heard from since it was suspected: forgiven.
                    peer.and_then(|p| p.last_received).is_none_or(|age| age >= suspected_for)
                });
                Candidate { reachable: peer.is_some_and(|p| p.endpoint.is_some()), suspected }
            })
            .collect()
    }

    /// Forwarded stream `id` was not answered by its remote in time, or was reset before it opened: suspect
    /// that remote, and open the stream's tunnel connection to another one. Nothing was sent yet (the preamble
    /// waits for the connection), so the kernel side notices nothing but the wait. Returns false if there is
    /// nowhere to move to.
    fn move_stream(&mut self, id: u64, now: Instant) -> bool {
        let connection = self.connections.get_mut(&id).expect("present");
        let Some(moving) = connection.moving.as_mut().filter(|m| m.left > 0) else { return false };
        let (remotes, from) = (moving.remotes.clone(), moving.current);
        let left_remote = remotes.addresses()[from];
        self.suspected.insert(left_remote, now);
        let Some(to) = remotes::pick(&self.candidates(&remotes, now), from + 1, Some(from)) else { return false };
        let Ok(handle) = self.core.connect(IpEndpoint::from(remotes.addresses()[to])) else { return false };
        let connection = self.connections.get_mut(&id).expect("present");
        let moving = connection.moving.as_mut().expect("checked above");
        moving.current = to;
        moving.left -= 1;
        let wait =
            if moving.left > 0 { MOVE_AFTER.min(self.limits.connect_timeout) } else { self.limits.connect_timeout };
        let old = std::mem::replace(&mut connection.socket, handle);
        if !connection.dirty {
            connection.dirty = true; // registers the wakers on the new socket
            self.dirty.push(id);
        }
        self.core.tcp(old).abort();
        self.core.release(old);
        log::info!(
            "tunnel driver: {left_remote} did not take a stream in time or refused it; it moves to {}",
            remotes.addresses()[to]
        );
        self.set_deadline(id, after(now, wait));
        true
    }

    /// Connection `id` finished dialing its relay target (or failed to).
    fn finish_dial(&mut self, id: u64, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else { return };
        let Stage::Dialing { fd, target } = std::mem::replace(&mut connection.stage, Stage::Detached) else { return };
        match kernel::dial_result(&fd) {
            Ok(()) => {
                connection.deadline = None;
                self.splice(id, fd, Vec::new(), None, now);
            }
            Err(e) => {
                log::warn!("relay: cannot reach {target}: {e}");
                self.close(id, true, Some(End::DialFailed));
            }
        }
    }

    /// Forgets a connection, counting how it ended; its socket stays in the core until the FIN (or the RST,
    /// with `reset`) has gone out.
    fn close(&mut self, id: u64, reset: bool, end: Option<End>) {
        let Some(connection) = self.connections.remove(&id) else { return };
        let mut outcome = None;
        match connection.stage {
            Stage::Spliced { mut bridge, done } => {
                let _ = epoll::delete(&self.epoll, &bridge.fd);
                if let Some(counters) = &connection.counters {
                    add_bytes(counters, bridge.take_counts());
                }
                outcome = done;
            }
            Stage::Dialing { fd, .. } => {
                let _ = epoll::delete(&self.epoll, &fd);
            }
            Stage::Connecting { reply } => {
                let _ = reply.send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the connection was closed")));
            }
            Stage::Detached | Stage::Preamble => {}
        }
        if let (Some(counters), Some(end)) = (&connection.counters, end) {
            let counter = match end {
                End::Refused => &counters.refused,
                End::DialFailed => &counters.dial_failed,
                End::Failed => &counters.failed,
                End::Completed => &counters.completed,
            };
            counter.fetch_add(1, Relaxed);
        }
        if let Some(done) = outcome {
            let _ = done.send(SpliceOutcome::FAILED);
        }
        if reset {
            self.core.tcp(connection.socket).abort();
        }
        self.core.release(connection.socket);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((armed_for, id, timer)) = self.timers.pop_due(now) {
            if timer == Timer::FlowSweep {
                self.flows.sweep(now);
                self.sweep_armed = false;
                self.arm_sweep(now);
                continue;
            }
            let Some(connection) = self.connections.get_mut(&id) else { continue };
            match timer {
                Timer::Deadline => {
                    if connection.deadline.is_none_or(|at| at > now) {
                        continue; // the stage moved on, or its deadline moved
                    }
                    connection.deadline = None;
                    self.expire(id, now);
                }
                Timer::FlowSweep => unreachable!("handled above"),
                Timer::Idle => {
                    let Stage::Spliced { .. } = connection.stage else { continue };
                    if connection.idle_check != Some(armed_for) {
                        continue; // replaced by a later check
                    }
                    let idle = Duration::from_micros((now - connection.last_active).total_micros());
                    if self.limits.idle_timeout.is_some_and(|limit| idle >= limit) {
                        log::debug!("tunnel driver: closing a stream idle for {idle:?}");
                        self.close(id, true, Some(End::Completed));
                        continue;
                    }
                    let mut next = None;
                    if !connection.quiet && idle < QUIET_AFTER {
                        next = Some(after(connection.last_active, QUIET_AFTER));
                    } else if !connection.quiet {
                        connection.quiet = self.core.release_idle_buffers(connection.socket);
                        if !connection.quiet {
                            // Idle with bytes still held (a stalled reader or peer): try again a quiet period
                            // from now, not at once.
                            next = Some(after(now, QUIET_AFTER));
                        }
                    }
                    // Activity brings a released connection's check back (pump_bridges); until then only the
                    // idle timeout is left to watch.
                    let limit = self.limits.idle_timeout.map(|limit| after(connection.last_active, limit));
                    let Some(at) = [next, limit].into_iter().flatten().min() else {
                        connection.idle_check = None;
                        continue;
                    };
                    connection.idle_check = Some(at);
                    self.timers.arm(at, id, Timer::Idle);
                }
            }
        }
    }

    /// The current stage of connection `id` ran out of time.
    fn expire(&mut self, id: u64, now: Instant) {
        let connection = self.connections.get_mut(&id).expect("present");
        let timeout = self.limits.connect_timeout;
        let end = match &connection.stage {
            Stage::Connecting { .. } => {
                if let Stage::Connecting { reply } = std::mem::replace(&mut connection.stage, Stage::Detached) {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer through the tunnel (is the peer up and its handshake done?)",
                    )));
                }
                None
            }
            Stage::Preamble => {
                log::warn!("relay: refused a stream that sent no preamble within {PREAMBLE_TIMEOUT:?}");
                Some(End::Refused)
            }
            Stage::Dialing { target, .. } => {
                log::warn!("relay: cannot reach {target}: no answer within {timeout:?}");
                Some(End::DialFailed)
            }
            // A forwarded stream whose tunnel connection nobody answered.
            Stage::Spliced { .. } if self.core.tcp_view(connection.socket).state() == State::SynSent => {
                if self.move_stream(id, now) {
                    return;
                }
                log::warn!(
                    "tunnel driver: no answer through the tunnel within {timeout:?}; closing a forwarded connection"
                );
                Some(End::Failed)
            }
            Stage::Spliced { .. } | Stage::Detached => return,
        };
        self.close(id, true, end);
    }

    /// Arms the idle sweep of UDP flows, if any are open and it is not armed.
    fn arm_sweep(&mut self, now: Instant) {
        if !self.sweep_armed && self.flows.has_flows() {
            self.sweep_armed = true;
            self.timers.arm(after(now, SWEEP_INTERVAL), SWEEP_ID, Timer::FlowSweep);
        }
    }

    /// Moves data until nothing moves: kernel sockets <-> smoltcp <-> WireGuard.
    fn pump(&mut self, now: Instant) {
        for _ in 0..16 {
            let moved_before = self.pump_bridges(now);
            let (core, mut sink) = self.sink();
            let changed = core.poll(now, &mut sink);
            let datagrams = self.flows.drain_tunnel(&mut self.core, &self.epoll, &mut self.next_id, now);
            if datagrams {
                // Answers queued for the tunnel go out in this round's poll.
                let (core, mut sink) = self.sink();
                core.poll(now, &mut sink);
            }
            let accepted = self.take_accepted(now);
            self.collect_woken();
            let moved_after = self.pump_bridges(now);
            let settled = self.service_handshakes(now);
            if !(moved_before || moved_after || changed || accepted || settled || datagrams) {
                break;
            }
        }
        self.arm_sweep(now);
    }

    /// Moves the connections whose tunnel socket woke into the dirty list.
    fn collect_woken(&mut self) {
        let woken = std::mem::take(&mut *self.woken.0.lock().unwrap_or_else(|p| p.into_inner()));
        for id in woken {
            if let Some(connection) = self.connections.get_mut(&id) {
                if !connection.dirty {
                    connection.dirty = true;
                    self.dirty.push(id);
                }
            }
        }
    }

    /// Pumps the dirty connections.
    fn pump_bridges(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        let mut refused = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(connection) = self.connections.get_mut(&id) else { continue };
            connection.dirty = false;
            let Stage::Spliced { bridge, .. } = &mut connection.stage else { continue };
            let socket = self.core.tcp(connection.socket);
            if socket.state() == State::Closed
                && bridge.untouched()
                && connection.moving.as_ref().is_some_and(|m| m.left > 0)
            {
                // Reset before it opened (a replica draining for SIGTERM): move the stream rather than fail it.
                refused.push(id);
                continue;
            }
            let result = bridge.pump(socket);
            if let Some(waker) = &connection.waker {
                socket.register_recv_waker(waker);
                socket.register_send_waker(waker);
            }
            match result {
                Pump::Open { moved: false } => {}
                Pump::Open { moved: true } => {
                    moved = true;
                    connection.last_active = now;
                    if connection.quiet {
                        // Its next check was far off (quiet connections are looked at rarely): bring it back.
                        connection.quiet = false;
                        let at = after(now, QUIET_AFTER);
                        connection.idle_check = Some(at);
                        self.timers.arm(at, id, Timer::Idle);
                    }
                    if let Some(counters) = &connection.counters {
                        add_bytes(counters, bridge.take_counts());
                    }
                }
                Pump::Finished(outcome) => finished.push((id, outcome)),
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
        for id in refused {
            moved = true;
            if !self.move_stream(id, now) {
                self.close(id, true, Some(End::Failed));
            }
        }
        for (id, outcome) in finished {
            if let Some(Connection { stage: Stage::Spliced { done, .. }, .. }) = self.connections.get_mut(&id) {
                if let Some(done) = done.take() {
                    let _ = done.send(outcome);
                }
            }
            self.close(id, false, Some(if outcome.clean { End::Completed } else { End::Failed }));
            moved = true;
        }
        moved
    }

    /// Forgets the relay ports whose last handshake is over.
    fn forget_drained_relays(&mut self) {
        let (core, listeners) = (&self.core, &mut self.listeners);
        self.draining.retain(|&port| {
            let draining = core.accepts_on(port);
            if !draining {
                listeners.remove(&port);
            }
            draining
        });
    }

    /// Hands connections established on listening ports to whoever accepts them.
    fn take_accepted(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some((port, handle)) = self.core.accept() {
            any = true;
            match self.listeners.get(&port) {
                Some(Accepting::Channel(accepted)) => {
                    let accepted = accepted.clone();
                    let id = self.add_connection(handle, Stage::Detached, None, now);
                    if let Err(unsent) = accepted.send(self.stream(id)) {
                        // The Listener is gone; dropping the stream resets the connection via its Drop command.
                        drop(unsent);
                    }
                }
                Some(Accepting::Relay(relay)) => {
                    let relay = Arc::clone(relay);
                    relay.counters.opened.fetch_add(1, Relaxed);
                    let id = self.add_connection(handle, Stage::Preamble, Some(Arc::clone(&relay.counters)), now);
                    self.connections.get_mut(&id).expect("just added").relay = Some(relay);
                    self.handshaking.push(id);
                    self.set_deadline(id, after(now, PREAMBLE_TIMEOUT));
                }
                None => {
                    self.core.tcp(handle).abort();
                    self.core.release(handle);
                }
            }
        }
        if !self.draining.is_empty() {
            self.forget_drained_relays();
        }
        any
    }

    /// Settles connections waiting on the tunnel side: `Tunnel::connect` calls whose handshake finished, and
    /// relay streams whose preamble arrived. Returns whether any settled.
    fn service_handshakes(&mut self, now: Instant) -> bool {
        let mut connected = Vec::new();
        let mut preambles = Vec::new();
        let connections = &self.connections;
        self.handshaking.retain(|id| {
            connections.get(id).is_some_and(|c| matches!(c.stage, Stage::Connecting { .. } | Stage::Preamble))
        });
        for &id in &self.handshaking {
            let connection = &self.connections[&id];
            match connection.stage {
                Stage::Connecting { .. } => match self.core.tcp_view(connection.socket).state() {
                    State::SynSent => {}
                    State::Closed => connected.push((id, false)),
                    _ => connected.push((id, true)),
                },
                Stage::Preamble => preambles.push(id),
                _ => {}
            }
        }
        let settled = !connected.is_empty();
        for (id, ok) in connected {
            let connection = self.connections.get_mut(&id).expect("listed above");
            let Stage::Connecting { reply } = std::mem::replace(&mut connection.stage, Stage::Detached) else {
                continue;
            };
            connection.deadline = None;
            if ok {
                let _ = reply.send(Ok(self.stream(id)));
            } else {
                let _ = reply.send(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused by the tunnel peer",
                )));
                self.close(id, true, None);
            }
        }
        let mut any = settled;
        for id in preambles {
            any |= self.read_preamble(id, now);
        }
        any
    }

    /// Reads a relay stream's header if it has arrived (the policy parses and checks it); then starts dialing
    /// its target.
    fn read_preamble(&mut self, id: u64, now: Instant) -> bool {
        let connection = &self.connections[&id];
        let Some(policy) = connection.relay.as_ref().map(|r| Arc::clone(&r.policy)) else {
            self.close(id, true, Some(End::Refused));
            return true;
        };
        let handle = connection.socket;
        let mut head = [0u8; super::MAX_RELAY_HEADER];
        let max = policy.max_header().min(head.len());
        // Peeking schedules no visit: a header still on its way must not keep the driver busy.
        let n = self.core.tcp_peek(handle, &mut head[..max]);
        let target = match policy.route(&head[..n]) {
            Ok(Some((target, len))) => {
                let _ = self.core.tcp(handle).recv_slice(&mut head[..len.min(n)]);
                target
            }
            Ok(None) if n >= max => {
                log::warn!("relay: refused a stream whose header is longer than {max} bytes");
                self.close(id, true, Some(End::Refused));
                return true;
            }
            Ok(None) if self.core.tcp_view(handle).may_recv() => return false,
            Ok(None) => {
                log::warn!("relay: refused a stream that closed before its header");
                self.close(id, true, Some(End::Refused));
                return true;
            }
            Err(e) => {
                log::warn!("relay: refused a stream: {e}");
                self.close(id, true, Some(End::Refused));
                return true;
            }
        };
        let fd = match kernel::dial(target) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("relay: cannot reach {target}: {e}");
                self.close(id, true, Some(End::DialFailed));
                return true;
            }
        };
        if let Err(e) = self.watch(id, &fd) {
            log::warn!("relay: cannot watch the connection to {target}: {e}");
            self.close(id, true, Some(End::DialFailed));
            return true;
        }
        self.connections.get_mut(&id).expect("present").stage = Stage::Dialing { fd, target };
        self.set_deadline(id, after(now, self.limits.connect_timeout));
        true
    }

    fn stream(&mut self, id: u64) -> TunnelStream {
        let handle = self.connections[&id].socket;
        let tcp = self.core.tcp(handle);
        let local = tcp.local_endpoint().map(endpoint_to_std).unwrap_or_else(unspecified);
        let remote = tcp.remote_endpoint().map(endpoint_to_std).unwrap_or_else(unspecified);
        TunnelStream { id, local, remote, shared: Some(Arc::clone(&self.shared)) }
    }

    fn log_refusals(&mut self, now: Instant) {
        let refused = self.core.stats().refused_over_cap;
        if refused > self.refusals_logged && now >= self.next_refusal_log {
            log::warn!(
                "tunnel: refused {} connection request(s): the cap of {} connections is reached",
                refused - self.refusals_logged,
                self.limits.max_connections
            );
            self.refusals_logged = refused;
            self.next_refusal_log = after(now, REFUSAL_LOG_INTERVAL);
        }
    }
}

fn add_bytes(counters: &StreamCounters, (to_tunnel, from_tunnel): (u64, u64)) {
    if to_tunnel > 0 {
        counters.bytes_to_tunnel.fetch_add(to_tunnel, Relaxed);
    }
    if from_tunnel > 0 {
        counters.bytes_from_tunnel.fetch_add(from_tunnel, Relaxed);
    }
}

fn endpoint_to_std(endpoint: IpEndpoint) -> SocketAddr {
    SocketAddr::new(endpoint.addr.into(), endpoint.port)
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
