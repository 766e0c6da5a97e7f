//! The I/O driver: one thread that owns the outer UDP socket and a [`Core`], and carries TCP streams between
//! the tunnel and kernel sockets.
//!
//! The thread sleeps in `epoll_wait` until a datagram arrives, a kernel socket it bridges becomes ready, a
//! command comes from a handle, or the core's next deadline ([`Core::poll_at`]) is due. An idle tunnel wakes
//! only for WireGuard's timer tick (4 times a second).
//!
//! [`Tunnel`] is the owner's handle; [`Listener`] accepts streams on a tunnel port; a [`TunnelStream`] is one
//! connection, which the caller either splices with a kernel socket ([`TunnelStream::splice`]: the bytes then
//! never leave the driver thread) or turns into a plain blocking [`UnixStream`] ([`TunnelStream::into_io`]).
//!
//! The data path needs no thread of its own at all: [`Tunnel::forward_from`] hands the driver a kernel
//! listening socket whose every connection becomes a tunnel stream (the agent's forwarders), and
//! [`Tunnel::relay`] has the driver read each incoming stream's header through a [`RelayPolicy`], dial the
//! target with a non-blocking kernel connect and splice (the client's relay). Thread count stays constant
//! whatever the load.

mod bridge;
mod datagrams;
mod event_loop;
mod kernel;
mod remotes;
mod timers;
mod udp;

pub use bridge::SpliceOutcome;
pub use kernel::{listen, raise_open_files_limit, LISTEN_BACKLOG};
pub use remotes::{Remotes, MOVE_AFTER};

use crate::core::{Core, CoreConfig, PeerStatus, Stats};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A tunnel: the core's configuration plus the outer socket's address.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// WireGuard and smoltcp settings.
    pub core: CoreConfig,
    /// Where the outer UDP socket binds, e.g. `0.0.0.0:51820`, `[::]:51820`, or port 0 for any (client side).
    pub listen: SocketAddr,
}

/// Live state of a tunnel, as [`Tunnel::status`] reports it.
#[derive(Debug, Clone)]
pub struct TunnelStatus {
    /// The (first) peer: endpoint, last handshake, bytes.
    pub peer: PeerStatus,
    /// Every peer, the first one first ([`crate::CoreConfig::other_peers`]).
    pub peers: Vec<PeerStatus>,
    /// The core's counters.
    pub stats: Stats,
    /// Datagrams the outer socket failed to send.
    pub send_errors: u64,
    /// Open tunnel connections (spliced or waiting to be).
    pub connections: usize,
    /// TCP sockets in the userspace stack: connections, handshakes, listening sockets, and closing ones.
    pub sockets: usize,
    /// Times the driver thread woke up.
    pub wakeups: u64,
    /// UDP flows open: (exposed ports, relay ports).
    pub udp_flows: (usize, usize),
}

/// Counters of the streams of one forwarder ([`Tunnel::forward_from`]) or relay port ([`Tunnel::relay`]),
/// kept by the driver thread as the streams go. Every opened stream ends in exactly one of `refused`,
/// `dial_failed`, `failed` and `completed`; the byte counters move while the streams carry data.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Streams begun: connections accepted by a forwarder, or tunnel streams arriving at a relay port.
    pub opened: AtomicU64,
    /// Refused before any byte moved: no tunnel connection could be opened (no peer yet, the connection cap)
    /// for a forwarder; a missing, malformed or late preamble, or a target the policy does not permit, for a
    /// relay.
    pub refused: AtomicU64,
    /// Relay only: the target could not be dialed (refused, unreachable, or no answer within the connect
    /// timeout).
    pub dial_failed: AtomicU64,
    /// Ended with a reset, an error, or a timeout (including a tunnel connection nobody answered).
    pub failed: AtomicU64,
    /// Ended with a FIN both ways, or closed after the idle timeout.
    pub completed: AtomicU64,
    /// Bytes from the kernel socket into the tunnel.
    pub bytes_to_tunnel: AtomicU64,
    /// Bytes from the tunnel to the kernel socket.
    pub bytes_from_tunnel: AtomicU64,
}

/// Counters of the UDP flows of exposed ports ([`Tunnel::expose_udp`]) or of a UDP relay port
/// ([`Tunnel::relay_udp`]), kept by the driver thread.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Flows opened (a new public client on an exposed port; a new flow arriving at a relay port).
    pub flows_opened: AtomicU64,
    /// Datagrams that would have opened a flow the policy refused (no pod for the port; a target that is not
    /// an endpoint of the current snapshot); each is counted.
    pub flows_refused: AtomicU64,
    /// Datagrams that would have opened a flow beyond the cap ([`crate::core::UdpTuning::max_flows`]).
    pub flows_over_cap: AtomicU64,
    /// Flows ended by the idle timeout.
    pub flows_expired: AtomicU64,
    /// Datagrams larger than one tunnel packet carries (the tunnel MTU less the headers), dropped.
    pub too_large: AtomicU64,
    /// Datagrams that could not be carried: a queue was full, a kernel send failed, or a frame belonged to no
    /// flow (malformed, or its flow had ended).
    pub dropped: AtomicU64,
    /// Datagrams carried from a kernel socket into the tunnel (exposed: from public clients; relay: to the
    /// targets, counted when sent to them).
    pub datagrams_to_tunnel: AtomicU64,
    /// Datagrams carried out of the tunnel to a kernel socket (exposed: to public clients; relay: answers sent
    /// back into the tunnel).
    pub datagrams_from_tunnel: AtomicU64,
    /// Payload bytes of `datagrams_to_tunnel`.
    pub bytes_to_tunnel: AtomicU64,
    /// Payload bytes of `datagrams_from_tunnel`.
    pub bytes_from_tunnel: AtomicU64,
}

/// Picks the target of a new UDP flow from the public client's address; `None` refuses the flow (counted).
/// Runs on the driver thread: keep it quick.
pub type PickTarget = Arc<dyn Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync>;

/// Where a UDP relay sends a new flow for a target: the target itself when it may go there, another address
/// standing in for it (tests map pod addresses to local servers), or `None` to refuse the flow (counted). Runs
/// on the driver thread: keep it quick.
pub type RelayTarget = Arc<dyn Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync>;

/// What a relay port reads before splicing: a bounded header at the start of each incoming stream that says
/// where the stream goes, and whether it may. The application defines the header (POLAREDGE's is
/// `protocol::relay`); the driver only peeks at the first bytes and asks. Runs on the driver thread: keep it
/// quick (a parse and a lookup).
pub trait RelayPolicy: Send + Sync + 'static {
    /// Most bytes the header may take (at most [`MAX_RELAY_HEADER`]).
    fn max_header(&self) -> usize;
    /// Reads the header at the start of `head`: `Ok(None)` when more bytes are needed, `Ok(Some((target,
    /// len)))` to dial `target` after dropping the `len` header bytes, `Err(reason)` to refuse the stream.
    fn route(&self, head: &[u8]) -> Result<Option<(SocketAddr, usize)>, String>;
}

/// What a forwarder sends into the tunnel before a connection's own bytes.
#[derive(Clone)]
pub enum Preamble {
    /// The same bytes for every connection (a relay preamble naming one pod).
    Fixed(Vec<u8>),
    /// Bytes made for each connection from its addresses (the client's, and the local one it connected to):
    /// to pick a pod per connection, or to carry the client's address on (PROXY protocol); `None` closes the
    /// connection at once (counted as refused). Runs on the driver thread: keep it quick.
    PerConnection(Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<Vec<u8>> + Send + Sync>),
}

impl From<Vec<u8>> for Preamble {
    fn from(bytes: Vec<u8>) -> Preamble {
        Preamble::Fixed(bytes)
    }
}

/// The longest relay header the driver reads.
pub const MAX_RELAY_HEADER: usize = 256;

pub(crate) enum Command {
    Listen {
        port: u16,
        accepted: Sender<TunnelStream>,
        reply: Sender<io::Result<()>>,
    },
    Relay {
        port: u16,
        policy: Arc<dyn RelayPolicy>,
        counters: Arc<StreamCounters>,
        reply: Sender<io::Result<()>>,
    },
    Unlisten {
        port: u16,
    },
    Connect {
        remote: SocketAddr,
        timeout: Duration,
        reply: Sender<io::Result<TunnelStream>>,
    },
    Attach {
        id: u64,
        fd: OwnedFd,
        done: Sender<SpliceOutcome>,
    },
    ForwardFrom {
        listener: OwnedFd,
        remote: Remotes,
        preamble: Preamble,
        counters: Arc<StreamCounters>,
        reply: Sender<io::Result<u64>>,
    },
    StopForwarding {
        id: u64,
    },
    ExposeUdp {
        socket: UdpSocket,
        relay: SocketAddr,
        pick: PickTarget,
        counters: Arc<FlowCounters>,
        reply: Sender<io::Result<u64>>,
    },
    StopExposing {
        id: u64,
    },
    RelayUdp {
        port: u16,
        resolve: RelayTarget,
        counters: Arc<FlowCounters>,
        reply: Sender<io::Result<()>>,
    },
    StopRelayingUdp {
        port: u16,
    },
    Drop {
        id: u64,
    },
    Status {
        reply: Sender<TunnelStatus>,
    },
    CloseQuiet {
        quiet: Duration,
        reply: Sender<usize>,
    },
    Rehandshake,
    Shutdown,
}

/// What handles share with the driver thread.
pub(crate) struct Shared {
    commands: Sender<Command>,
    wake: OwnedFd,
}

impl Shared {
    fn send(&self, command: Command) -> io::Result<()> {
        self.commands.send(command).map_err(|_| stopped())?;
        rustix::io::write(&self.wake, &1u64.to_ne_bytes()).map_err(io::Error::from)?;
        Ok(())
    }

    fn ask<T>(&self, command: impl FnOnce(Sender<T>) -> Command) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.send(command(tx))?;
        rx.recv().map_err(|_| stopped())
    }
}

/// Every stream holds a kernel socket: say so when the open-files limit cannot cover the connection cap.
fn warn_if_few_open_files(max_connections: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = max_connections as u64 + 1024;
    if limit < needed {
        log::warn!(
            "the open-files limit is {limit}, below the {needed} that {max_connections} tunnel connections may need \
             (each holds a socket): raise it (LimitNOFILE, ulimit -n) or lower the connection cap"
        );
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel driver has stopped")
}

/// The owner's handle of a running tunnel. Dropping it stops the driver thread and closes every stream.
pub struct Tunnel {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Tunnel {
    /// Binds the outer socket and starts the driver thread.
    pub fn start(config: TunnelConfig) -> io::Result<Tunnel> {
        warn_if_few_open_files(config.core.tcp.max_connections);
        let socket = udp::bind(config.listen)?;
        let local_addr = socket.local_addr()?;
        let start = std::time::Instant::now();
        let limits = event_loop::Limits::from(&config.core.tcp);
        let datagrams = datagrams::Datagrams::new(config.core.udp.clone(), config.core.mtu);
        let core =
            Core::new(config.core, rustix::process::getpid().as_raw_nonzero().get() as u32, event_loop::elapsed(start))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let wake =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?;
        let (commands, inbox) = mpsc::channel();
        let shared = Arc::new(Shared { commands, wake });
        let driver = event_loop::Driver::new(core, socket, Arc::clone(&shared), inbox, start, limits, datagrams)?;
        let thread = std::thread::Builder::new().name("tunnel".into()).spawn(move || driver.run())?;
        Ok(Tunnel { shared, local_addr, thread: Some(thread) })
    }

    /// The outer UDP socket's address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections to `port` on our tunnel addresses, as many at once as the connection cap allows.
    pub fn listen(&self, port: u16) -> io::Result<Listener> {
        let (accepted, incoming) = mpsc::channel();
        self.shared.ask(|reply| Command::Listen { port, accepted, reply })??;
        Ok(Listener { port, incoming, shared: Arc::clone(&self.shared) })
    }

    /// Relays the streams arriving at tunnel `port`, inside the driver: each must start with a relay preamble
    /// ([`crate::relay`]) naming a target that `policy` permits; the driver dials the target with kernel TCP
    /// (failing after the connect timeout) and splices both ways. Anything else is reset. Counted in
    /// `counters`. Dropping the handle stops accepting; streams under way go on.
    pub fn relay(
        &self,
        port: u16,
        policy: Arc<dyn RelayPolicy>,
        counters: Arc<StreamCounters>,
    ) -> io::Result<RelayPort> {
        self.shared.ask(|reply| Command::Relay { port, policy, counters, reply })??;
        Ok(RelayPort { port, shared: Arc::clone(&self.shared) })
    }

    /// Carries every connection accepted on `listener` (a kernel TCP listening socket) to `remote` inside the
    /// tunnel, sending `preamble` first, spliced both ways inside the driver. A tunnel connection that cannot
    /// be opened, or that is not answered within the connect timeout, closes the kernel connection at once.
    /// Counted in `counters`. Dropping the handle closes the listener; streams under way go on.
    ///
    /// `remote` may list several addresses (one per client replica, each a peer of this tunnel): streams take
    /// them in turn, and a stream not answered within [`MOVE_AFTER`] moves to the next ([`Remotes`]).
    pub fn forward_from(
        &self,
        listener: TcpListener,
        remote: impl Into<Remotes>,
        preamble: impl Into<Preamble>,
        counters: Arc<StreamCounters>,
    ) -> io::Result<Forwarding> {
        let (remote, preamble) = (remote.into(), preamble.into());
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = OwnedFd::from(listener);
        let id = self.shared.ask(|reply| Command::ForwardFrom { listener, remote, preamble, counters, reply })??;
        Ok(Forwarding { id, local_addr, shared: Arc::clone(&self.shared) })
    }

    /// Carries the datagrams arriving on `socket` (a kernel UDP socket: a public port) into the tunnel: each
    /// client address is a flow, whose target `pick` chooses when its first datagram arrives; its datagrams go
    /// framed ([`crate::flow`]) to the UDP relay at `relay` inside the tunnel, and the target's answers come back
    /// to the client from `socket`. Flows end when idle ([`crate::core::UdpTuning`]). Counted in `counters`.
    /// Dropping the handle closes the socket and ends its flows.
    pub fn expose_udp(
        &self,
        socket: UdpSocket,
        relay: SocketAddr,
        pick: PickTarget,
        counters: Arc<FlowCounters>,
    ) -> io::Result<UdpExposure> {
        let local_addr = socket.local_addr()?;
        let id = self.shared.ask(|reply| Command::ExposeUdp { socket, relay, pick, counters, reply })??;
        Ok(UdpExposure { id, local_addr, shared: Arc::clone(&self.shared) })
    }

    /// Relays the framed datagrams ([`crate::flow`]) arriving at tunnel UDP `port`: each flow whose target
    /// `resolve` allows gets a kernel UDP socket connected to the address it names, and the answers go back
    /// through the tunnel. Anything else is dropped and counted in `counters`. Dropping the handle closes the
    /// port and ends its flows.
    pub fn relay_udp(&self, port: u16, resolve: RelayTarget, counters: Arc<FlowCounters>) -> io::Result<UdpRelayPort> {
        self.shared.ask(|reply| Command::RelayUdp { port, resolve, counters, reply })??;
        Ok(UdpRelayPort { port, shared: Arc::clone(&self.shared) })
    }

    /// Opens a connection to `remote` inside the tunnel; waits until it is established, refused, or `timeout`.
    pub fn connect(&self, remote: SocketAddr, timeout: Duration) -> io::Result<TunnelStream> {
        self.shared.ask(|reply| Command::Connect { remote, timeout, reply })?
    }

    /// Starts a new WireGuard handshake now (rate-limited to one per 5 s); see [`Core::rehandshake`].
    pub fn rehandshake(&self) -> io::Result<()> {
        self.shared.send(Command::Rehandshake)
    }

    /// The peer, counters and connection count, read from the driver thread.
    pub fn status(&self) -> io::Result<TunnelStatus> {
        self.shared.ask(|reply| Command::Status { reply })
    }

    /// Closes (FIN both ways) every spliced stream that carried nothing either way for `quiet`, and returns how
    /// many connections are left. For draining: an HTTP keep-alive connection between requests is quiet, and
    /// its client sees a closed idle connection (which HTTP clients expect) rather than a cut request.
    pub fn close_quiet(&self, quiet: Duration) -> io::Result<usize> {
        self.shared.ask(|reply| Command::CloseQuiet { quiet, reply })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Streams accepted on one tunnel port. Dropping it stops listening.
pub struct Listener {
    port: u16,
    incoming: Receiver<TunnelStream>,
    shared: Arc<Shared>,
}

impl Listener {
    /// The tunnel port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection.
    pub fn accept(&self) -> io::Result<TunnelStream> {
        self.incoming.recv().map_err(|_| stopped())
    }

    /// Like [`Listener::accept`], giving up after `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<TunnelStream> {
        self.incoming.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => io::Error::new(io::ErrorKind::TimedOut, "no connection arrived in time"),
            mpsc::RecvTimeoutError::Disconnected => stopped(),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::Unlisten { port: self.port });
    }
}

/// A relay port served by the driver ([`Tunnel::relay`]). Dropping it stops accepting.
pub struct RelayPort {
    port: u16,
    shared: Arc<Shared>,
}

impl RelayPort {
    /// The tunnel port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RelayPort {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::Unlisten { port: self.port });
    }
}

/// A kernel listening socket whose connections the driver carries into the tunnel ([`Tunnel::forward_from`]).
/// Dropping it closes the listener.
pub struct Forwarding {
    id: u64,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Forwarding {
    /// The kernel listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::StopForwarding { id: self.id });
    }
}

/// A kernel UDP socket whose datagrams the driver carries into the tunnel ([`Tunnel::expose_udp`]). Dropping
/// it closes the socket and ends its flows.
pub struct UdpExposure {
    id: u64,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl UdpExposure {
    /// The kernel socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for UdpExposure {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::StopExposing { id: self.id });
    }
}

/// A tunnel UDP port served by the driver as a relay ([`Tunnel::relay_udp`]). Dropping it closes the port.
pub struct UdpRelayPort {
    port: u16,
    shared: Arc<Shared>,
}

impl UdpRelayPort {
    /// The tunnel port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for UdpRelayPort {
    fn drop(&mut self) {
        let _ = self.shared.send(Command::StopRelayingUdp { port: self.port });
    }
}

/// One established TCP connection inside the tunnel, not yet attached to anything. Dropping it resets the
/// connection.
pub struct TunnelStream {
    id: u64,
    local: SocketAddr,
    remote: SocketAddr,
    shared: Option<Arc<Shared>>,
}

impl TunnelStream {
    /// Our end's tunnel address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The other end's tunnel address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Splices the connection with a kernel TCP socket inside the driver thread; the returned receiver yields
    /// once, when both directions are done.
    pub fn splice(self, stream: TcpStream) -> io::Result<Receiver<SpliceOutcome>> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        self.attach(stream.into())
    }

    /// The connection as a blocking [`UnixStream`] (the driver splices the other end of a socket pair).
    /// `shutdown(Write)` on it sends FIN; EOF means the peer sent FIN.
    pub fn into_io(self) -> io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        self.attach(ours.into())?;
        Ok(theirs)
    }

    fn attach(mut self, fd: OwnedFd) -> io::Result<Receiver<SpliceOutcome>> {
        let shared = self.shared.take().ok_or_else(stopped)?;
        let (done, outcome) = mpsc::channel();
        shared.send(Command::Attach { id: self.id, fd, done })?;
        Ok(outcome)
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let _ = shared.send(Command::Drop { id: self.id });
        }
    }
}
