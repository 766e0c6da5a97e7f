//! The sans-IO core: WireGuard peers ([`crate::peer`]: one for a client, one per client replica for an agent)
//! and one smoltcp [`Interface`].
//!
//! The caller owns every socket and clock. It feeds the core UDP datagrams with [`Core::handle_datagram`], calls
//! [`Core::poll`] after input and whenever [`Core::poll_at`] comes due, and moves TCP payload through the smoltcp
//! sockets the core holds. Outgoing datagrams leave through the [`DatagramSink`] the caller passes in.

use crate::buffers::Buffers;
use crate::cidr::Cidr;
use crate::device::{DatagramSink, RxQueue, TxPath, WgDevice};
use crate::egress::Egress;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::listen::{self, ListenPort, SPARE_LISTENERS};
use crate::peer::{self, Peer, PeerConfig, MAX_PEERS};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::TunnResult;
use boringtun::x25519;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpEndpoint};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// How often boringtun's timers (handshake retries, keepalives, rekeying) are serviced, as boringtun's own
/// device does. This is the only periodic wake-up of an idle tunnel.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// How often a side that keeps the tunnel up retries a handshake nobody answers (WireGuard's REKEY_TIMEOUT).
const FORCED_HANDSHAKE_INTERVAL: Duration = Duration::from_secs(5);

/// WireGuard's default MTU for a 1500-byte path, right for both IPv4 and IPv6 outer headers.
pub const DEFAULT_MTU: usize = 1420;

/// Most decrypted packets held before smoltcp must consume them.
const RX_QUEUE_PACKETS: usize = 256;

/// Default cap on TCP connections (and listening sockets) per tunnel.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Tuning for each TCP connection carried by the tunnel.
#[derive(Debug, Clone)]
pub struct TcpTuning {
    /// Receive buffer per connection. Above 64 KiB smoltcp uses window scaling; the window bounds throughput
    /// (window / RTT). Buffers live in their own mapping whose pages are only used once data fills them, so
    /// this bounds the memory of a busy connection, not of an idle one.
    pub rx_buffer: usize,
    /// Send buffer per connection.
    pub tx_buffer: usize,
    /// Delayed-ACK timer; `None` acknowledges every segment at once.
    pub ack_delay: Option<Duration>,
    /// Delayed-ACK timer after a segment shorter than a full one: usually the end of a request, whose answer
    /// then carries the ACK instead of a datagram of its own (through the edge the answer comes from a pod or
    /// from Traefik's next request within milliseconds). `None`: `ack_delay`.
    pub ack_delay_after_short_segment: Option<Duration>,
    /// Congestion control. `BbrLite` (the patched smoltcp's loss-tolerant controller) keeps its rate on a
    /// path with random loss, where CUBIC halves on every loss; see BENCHMARKS.md ("WAN").
    pub congestion: tcp::CongestionControl,
    /// Keep-alive probes on idle connections, so a vanished peer frees its sockets.
    pub keep_alive: Option<Duration>,
    /// A connection whose sent data, SYN or keep-alive goes unanswered this long is reset. Must exceed
    /// `keep_alive`.
    pub timeout: Option<Duration>,
    /// Most TCP sockets (connections, handshakes, listening sockets) at once. A connection request beyond it
    /// is reset and counted in [`Stats::refused_over_cap`]; a connect beyond it fails.
    pub max_connections: usize,
    /// How long the driver waits for a connection it opens to be answered before giving up on it (a
    /// forwarded stream then fails at once, and Traefik answers 502 instead of hanging).
    pub connect_timeout: std::time::Duration,
    /// A spliced stream that carries nothing either way for this long is closed; `None` keeps idle streams.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for TcpTuning {
    fn default() -> Self {
        TcpTuning {
            // 4 MiB windows carry 40 MB/s over a 100 ms round trip; pages are only used as data fills them.
            rx_buffer: 4 << 20,
            tx_buffer: 4 << 20,
            ack_delay: Some(Duration::from_millis(1)),
            ack_delay_after_short_segment: Some(Duration::from_millis(40)),
            congestion: tcp::CongestionControl::BbrLite,
            keep_alive: Some(Duration::from_secs(20)),
            timeout: Some(Duration::from_secs(60)),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: std::time::Duration::from_secs(5),
            idle_timeout: Some(std::time::Duration::from_secs(15 * 60)),
        }
    }
}

/// Limits of the UDP flows the driver carries ([`crate::flow`]).
#[derive(Debug, Clone)]
pub struct UdpTuning {
    /// Most flows at once on each side (a public client address on an exposed port is one flow). A datagram
    /// that would open one more is dropped and counted.
    pub max_flows: usize,
    /// A flow that carries nothing either way for this long ends (as a NAT's UDP mapping would).
    pub idle_timeout: std::time::Duration,
    /// Bytes of datagrams each tunnel UDP socket queues each way; a burst beyond it is dropped.
    pub buffer: usize,
}

impl Default for UdpTuning {
    fn default() -> Self {
        UdpTuning {
            max_flows: 16_384,
            // Linux conntrack keeps an answered UDP flow for 120 s, an unanswered one for 30 s.
            idle_timeout: std::time::Duration::from_secs(60),
            buffer: 2 << 20,
        }
    }
}

/// Everything one end of a tunnel needs to know.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Our static key.
    pub private_key: PrivateKey,
    /// The one peer's static key.
    pub peer_public_key: PublicKey,
    /// Optional preshared key; both ends must agree.
    pub preshared_key: Option<PresharedKey>,
    /// Seconds between keepalives when idle; set it on the side behind NAT.
    pub persistent_keepalive: Option<u16>,
    /// Our addresses inside the tunnel with their prefix, e.g. `10.88.0.1/30` and `fd88::1/64`.
    pub addresses: Vec<Cidr>,
    /// Source addresses accepted from the peer (WireGuard's AllowedIPs); anything else is dropped.
    pub peer_allowed_ips: Vec<Cidr>,
    /// The peer's outer UDP address, if known in advance. The core follows the peer when it roams.
    pub endpoint: Option<SocketAddr>,
    /// Further peers on the same interface (an agent serving several client replicas, each with a key and a
    /// tunnel address of its own). With any, every peer needs `allowed_ips`: they route packets to peers.
    pub other_peers: Vec<PeerConfig>,
    /// Tunnel MTU: the largest IP packet inside the tunnel.
    pub mtu: usize,
    /// Per-connection TCP tuning and the connection limits.
    pub tcp: TcpTuning,
    /// UDP flow limits.
    pub udp: UdpTuning,
}

impl CoreConfig {
    /// A configuration with defaults for everything but the keys and our tunnel addresses: no preshared key,
    /// no keepalive, the peer accepted from our own subnets, endpoint unknown, MTU 1420, default TCP tuning.
    pub fn new(private_key: PrivateKey, peer_public_key: PublicKey, addresses: Vec<Cidr>) -> CoreConfig {
        CoreConfig {
            private_key,
            peer_public_key,
            preshared_key: None,
            persistent_keepalive: None,
            addresses,
            peer_allowed_ips: Vec::new(),
            endpoint: None,
            other_peers: Vec::new(),
            mtu: DEFAULT_MTU,
            tcp: TcpTuning::default(),
            udp: UdpTuning::default(),
        }
    }
}

/// A configuration the core cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// No tunnel address was given.
    NoAddress,
    /// More tunnel addresses than the interface holds (one IPv4 and one IPv6).
    TooManyAddresses(usize),
    /// The MTU is below IPv6's minimum of 1280 or above 65535.
    BadMtu(usize),
    /// More peers than one core serves ([`MAX_PEERS`]).
    TooManyPeers(usize),
    /// Peer number `n` (0 is the first) has no allowed IPs, which a core with several peers routes by.
    PeerWithoutAllowedIps(usize),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoAddress => f.write_str("the tunnel needs at least one address, e.g. 10.88.0.1/30"),
            ConfigError::TooManyAddresses(n) => {
                write!(f, "{n} tunnel addresses given; at most 2 (one IPv4, one IPv6) are supported")
            }
            ConfigError::BadMtu(m) => write!(f, "tunnel MTU {m} is out of range 1280..=65535"),
            ConfigError::TooManyPeers(n) => write!(f, "{n} peers given; one tunnel serves at most {MAX_PEERS}"),
            ConfigError::PeerWithoutAllowedIps(n) => write!(
                f,
                "peer {n} has no allowed IPs: with several peers each needs its tunnel address (e.g. 10.88.0.3/32)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Counters of the core, all monotonic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// UDP datagrams received.
    pub datagrams_in: u64,
    /// UDP datagrams sent.
    pub datagrams_out: u64,
    /// Outer bytes received.
    pub bytes_in: u64,
    /// Outer bytes sent.
    pub bytes_out: u64,
    /// Datagrams that were not valid WireGuard messages for this peer (garbage, truncated, wrong key).
    pub dropped_invalid: u64,
    /// Data messages whose counter was already seen or too old (replays).
    pub dropped_replay: u64,
    /// Decrypted packets from a source outside the peer's allowed IPs.
    pub dropped_source: u64,
    /// Packets that could not be sent because the peer's endpoint is not known yet (or no peer owns their
    /// destination).
    pub dropped_no_endpoint: u64,
    /// Packets boringtun refused to encrypt.
    pub dropped_encrypt: u64,
    /// Times the peer's outer address changed (roaming, NAT rebinding, or first contact).
    pub endpoint_changes: u64,
    /// Connection requests reset because the connection cap was reached (or buffers could not be mapped).
    pub refused_over_cap: u64,
}

/// What is known about the peer right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStatus {
    /// The peer's current outer address.
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake, if there was one.
    pub last_handshake: Option<std::time::Duration>,
    /// Payload bytes sent through the tunnel.
    pub tx_bytes: u64,
    /// Payload bytes received through the tunnel.
    pub rx_bytes: u64,
    /// Time since the last authentic datagram from the peer (keepalives included), if one came.
    pub last_received: Option<std::time::Duration>,
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The address family of the target has no tunnel address on our side.
    NoSourceAddress(IpAddress),
    /// smoltcp refused the endpoint (port 0, unspecified address).
    Unaddressable,
    /// Every ephemeral port is in use.
    NoFreePort,
    /// The connection cap is reached, or the connection's buffers could not be mapped.
    TooManyConnections,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NoSourceAddress(a) => {
                write!(f, "cannot reach {a}: the tunnel has no address of that family")
            }
            ConnectError::Unaddressable => f.write_str("target address or port is not usable"),
            ConnectError::NoFreePort => f.write_str("all ephemeral tunnel ports are in use"),
            ConnectError::TooManyConnections => {
                f.write_str("the tunnel's connection cap is reached (or memory for the connection ran out)")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;

/// One end of a WireGuard tunnel with a TCP/IP stack on the inside. See the module docs.
pub struct Core {
    /// In configuration order: the first peer, then [`CoreConfig::other_peers`].
    peers: Vec<Peer>,
    /// Our static key, to learn which peer a handshake initiation comes from.
    static_private: x25519::StaticSecret,
    static_public: x25519::PublicKey,
    /// This core's number, the prefix of its peers' session indices.
    index: u32,
    /// The time of the latest input or poll.
    now: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    rx: RxQueue,
    plain: Box<[u8]>,
    cipher: Box<[u8]>,
    has_v4: bool,
    has_v6: bool,
    next_timer: Instant,
    next_port: u16,
    tcp: TcpTuning,
    /// Each TCP socket's buffer mapping; removing the socket unmaps it.
    buffers: HashMap<SocketHandle, Buffers>,
    max_connections: usize,
    listening: HashMap<u16, ListenPort>,
    accepted: VecDeque<(u16, SocketHandle)>,
    /// Sockets nobody uses any more, removed once their FIN or RST has gone out.
    closing: Vec<SocketHandle>,
    /// Which sockets a poll visits (smoltcp's own poll visits all of them).
    egress: Egress,
    /// Scratch lists of a poll's visits, kept to reuse their memory.
    visit: Vec<SocketHandle>,
    visited: Vec<SocketHandle>,
    sent: Vec<SocketHandle>,
    stats: Stats,
}

impl Core {
    /// Builds a core. `index` tells several cores of one process apart in WireGuard's session indices (below
    /// 2^20).
    pub fn new(config: CoreConfig, index: u32, now: Instant) -> Result<Core, ConfigError> {
        if config.addresses.is_empty() {
            return Err(ConfigError::NoAddress);
        }
        if config.addresses.len() > 2 {
            return Err(ConfigError::TooManyAddresses(config.addresses.len()));
        }
        if !(1280..=65535).contains(&config.mtu) {
            return Err(ConfigError::BadMtu(config.mtu));
        }
        let peers = peer_configs(&config)?;
        let static_private = config.private_key.secret();
        let static_public = x25519::PublicKey::from(&static_private);
        let mut peers: Vec<Peer> = peers
            .into_iter()
            .enumerate()
            .map(|(n, p)| Peer::new(config.private_key.secret(), p, peer::session_index(index, n), now))
            .collect();
        let mut rx = RxQueue::new(config.mtu + 64, RX_QUEUE_PACKETS);
        let mut plain = vec![0; config.mtu].into_boxed_slice();
        // boringtun needs room for its 32 bytes of header and tag, and never less than a handshake (148).
        let mut cipher = vec![0; (config.mtu + 32).max(148)].into_boxed_slice();
        let mut stats = Stats::default();
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = u64::from_le_bytes(random_seed());
        // The interface reads the device's capabilities once, here; nothing is sent through it yet.
        let mut device = WgDevice {
            rx: &mut rx,
            tx: TxPath {
                peers: &mut peers,
                plain: &mut plain,
                cipher: &mut cipher,
                sink: &mut |_: SocketAddr, _: &[u8]| {},
                stats: &mut stats,
            },
        };
        let mut iface = Interface::new(iface_config, &mut device, now);
        iface.track_touched(true);
        let mut has_v4 = false;
        let mut has_v6 = false;
        iface.update_ip_addrs(|addrs| {
            for cidr in &config.addresses {
                match cidr.address() {
                    std::net::IpAddr::V4(_) => has_v4 = true,
                    std::net::IpAddr::V6(_) => has_v6 = true,
                }
                addrs.push(cidr.to_stack()).expect("address count checked above");
            }
        });
        let port_seed = u16::from_le_bytes([random_seed()[0], random_seed()[1]]);
        Ok(Core {
            peers,
            static_private,
            static_public,
            index,
            now,
            iface,
            sockets: SocketSet::new(Vec::new()),
            rx,
            plain,
            cipher,
            has_v4,
            has_v6,
            next_timer: now,
            next_port: EPHEMERAL_PORTS.start() + port_seed % 16384,
            max_connections: config.tcp.max_connections,
            tcp: config.tcp,
            buffers: HashMap::new(),
            listening: HashMap::new(),
            accepted: VecDeque::new(),
            closing: Vec::new(),
            egress: Egress::default(),
            visit: Vec::new(),
            visited: Vec::new(),
            sent: Vec::new(),
            stats,
        })
    }

    /// Takes one UDP datagram from `from`. Replies the protocol needs (handshake responses, cookies, queued
    /// packets) go out through `sink` at once; decrypted packets wait for the next [`Core::poll`].
    /// Invalid datagrams are counted in [`Stats`] and otherwise ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8], sink: &mut impl DatagramSink) {
        self.now = now;
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if datagram.is_empty() {
            // boringtun reads an empty datagram as "send what you queued", never as input from the network.
            self.stats.dropped_invalid += 1;
            return;
        }
        let Some(n) =
            peer::peer_of_datagram(datagram, self.index, &self.peers, &self.static_private, &self.static_public)
        else {
            self.stats.dropped_invalid += 1;
            return;
        };
        if self.rx.is_full() {
            self.poll(now, sink);
        }
        let mut buffer = self.rx.take_buffer();
        let mut decrypted = None;
        let mut stale_session = false;
        let peer = &mut self.peers[n];
        let authentic = match peer.tunn.decapsulate(Some(from.ip()), datagram, &mut buffer) {
            TunnResult::Done => true,
            TunnResult::Err(e) => {
                match e {
                    WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => self.stats.dropped_replay += 1,
                    WireGuardError::NoCurrentSession => {
                        self.stats.dropped_invalid += 1;
                        stale_session = true;
                    }
                    _ => self.stats.dropped_invalid += 1,
                }
                false
            }
            TunnResult::WriteToNetwork(reply) => {
                let is_cookie = reply.first() == Some(&MSG_COOKIE_REPLY);
                let is_response = reply.first() == Some(&MSG_HANDSHAKE_RESPONSE);
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += reply.len() as u64;
                sink.send_to(from, reply);
                // A handshake response proves the initiator holds the peer's key; a cookie reply proves nothing.
                is_response || !is_cookie
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                decrypted = Some((packet.len(), IpAddress::Ipv4(src)));
                true
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                decrypted = Some((packet.len(), IpAddress::Ipv6(src)));
                true
            }
        };
        match decrypted {
            Some((len, src)) if peer.allows(&src) => self.rx.push(buffer, len),
            Some(_) => {
                self.stats.dropped_source += 1;
                self.rx.give_back(buffer);
            }
            None => self.rx.give_back(buffer),
        }
        if stale_session {
            self.offer_new_session(n, now, from, sink);
        }
        if !authentic {
            return;
        }
        let peer = &mut self.peers[n];
        if datagram.first() != Some(&MSG_COOKIE_REPLY) {
            peer.last_received = Some(now);
            if peer.endpoint != Some(from) {
                peer.endpoint = Some(from);
                self.stats.endpoint_changes += 1;
            }
        }
        // After a handshake completes boringtun releases the packets it queued meanwhile.
        while let TunnResult::WriteToNetwork(queued) = peer.tunn.decapsulate(None, &[], &mut self.cipher) {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += queued.len() as u64;
            sink.send_to(from, queued);
        }
    }

    /// Data for a session we do not have means the peer kept a session we lost (we restarted). WireGuard would
    /// wait for the peer to give up on it (15 s); instead offer a new handshake to where the data came from. It
    /// is rate-limited, and the address is not trusted: only the holder of the peer's key can answer, and the
    /// endpoint moves only when it does.
    fn offer_new_session(&mut self, n: usize, now: Instant, to: SocketAddr, sink: &mut impl DatagramSink) {
        let peer = &mut self.peers[n];
        if now < peer.next_offered_handshake {
            return;
        }
        peer.next_offered_handshake = now + FORCED_HANDSHAKE_INTERVAL;
        if let TunnResult::WriteToNetwork(init) = peer.tunn.format_handshake_initiation(&mut self.cipher, false) {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += init.len() as u64;
            sink.send_to(to, init);
        }
    }

    /// Starts a new handshake with every peer now (rate-limited like every forced handshake). For a caller
    /// whose requests go unanswered although the peer should be up: the peer may hold a newer session with
    /// another holder of our key (a second client replica), and answers only the session it considers current,
    /// which WireGuard would renew by itself only after 15 s without answers.
    pub fn rehandshake(&mut self, now: Instant, sink: &mut impl DatagramSink) {
        for n in 0..self.peers.len() {
            if let Some(to) = self.peers[n].endpoint {
                self.offer_new_session(n, now, to, sink);
            }
        }
    }

    /// Runs WireGuard timers when due and moves packets between smoltcp and WireGuard. Returns true when some
    /// socket's state may have changed (data arrived, buffer space freed, connection opened or closed);
    /// connections that completed their handshake on a listening port are then ready in [`Core::accept`].
    pub fn poll(&mut self, now: Instant, sink: &mut impl DatagramSink) -> bool {
        self.now = now;
        if now >= self.next_timer {
            self.next_timer = now + TIMER_TICK;
            self.service_timers(now, sink);
        }
        self.open_listeners_for_requests();
        let mut device = WgDevice {
            rx: &mut self.rx,
            tx: TxPath {
                peers: &mut self.peers,
                plain: &mut self.plain,
                cipher: &mut self.cipher,
                sink,
                stats: &mut self.stats,
            },
        };
        let mut changed = false;
        loop {
            match self.iface.poll_ingress_single(now, &mut device, &mut self.sockets) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
        }
        // Egress visits only the sockets that took a segment, were used by their owner, or have a timer due;
        // a socket sends one packet per visit, so those that sent are visited again until all are done.
        let mut touched = std::mem::take(&mut self.visit);
        self.iface.take_touched(&mut touched);
        for &handle in &touched {
            self.egress.touch(handle);
        }
        touched.clear();
        self.egress.take_due(now, &mut touched);
        let mut visit = touched;
        let mut visited = std::mem::take(&mut self.visited);
        let mut sent = std::mem::take(&mut self.sent);
        visited.extend_from_slice(&visit);
        while !visit.is_empty() {
            sent.clear();
            let result = self.iface.poll_egress_sockets(now, &mut device, &mut self.sockets, &visit, &mut sent);
            changed |= result == PollResult::SocketStateChanged;
            std::mem::swap(&mut visit, &mut sent);
        }
        for &handle in &visited {
            let at = self.iface.socket_poll_at(now, &self.sockets, handle);
            self.egress.set_timer(handle, at);
        }
        visited.clear();
        (self.visit, self.visited, self.sent) = (visit, visited, sent);
        if changed {
            self.collect_accepted();
        }
        if !self.closing.is_empty() {
            self.reap_closing();
        }
        changed
    }

    fn reap_closing(&mut self) {
        let mut done = Vec::new();
        self.closing.retain(|&handle| {
            let gone =
                matches!(self.sockets.get::<tcp::Socket>(handle).state(), tcp::State::Closed | tcp::State::TimeWait);
            if gone {
                done.push(handle);
            }
            !gone
        });
        for handle in done {
            self.remove(handle);
        }
    }

    /// Opens a listening socket for every connection request queued for smoltcp beyond the idle ones, within
    /// the cap. See [`crate::listen`].
    fn open_listeners_for_requests(&mut self) {
        if self.listening.is_empty() {
            return;
        }
        let mut any = false;
        for packet in self.rx.queued() {
            if let Some(port) = listen::connection_request(packet).and_then(|p| self.listening.get_mut(&p)) {
                port.requests += 1;
                any = true;
            }
        }
        if !any {
            return;
        }
        let ports: Vec<u16> =
            self.listening.iter().filter(|(_, l)| l.requests > 0 && !l.draining).map(|(&p, _)| p).collect();
        for port in ports {
            let listening = &self.listening[&port];
            let idle = listening.pending.iter().filter(|&&h| self.tcp_view(h).state() == tcp::State::Listen).count();
            let missing = listening.requests.saturating_sub(idle);
            for _ in 0..missing {
                match self.open_listener(port) {
                    Some(handle) => self.listening.get_mut(&port).expect("listed above").pending.push(handle),
                    None => self.stats.refused_over_cap += 1,
                }
            }
            self.listening.get_mut(&port).expect("listed above").requests = 0;
        }
    }

    /// Moves sockets that left the handshake to the accept queue, forgets failed handshakes, and closes idle
    /// listening sockets beyond the spares (all of them on a draining port, which is forgotten once its last
    /// handshake is over).
    fn collect_accepted(&mut self) {
        let mut freed = Vec::new();
        for (&port, listening) in self.listening.iter_mut() {
            let mut idle = 0;
            let spares = if listening.draining { 0 } else { SPARE_LISTENERS };
            let sockets = &self.sockets;
            listening.pending.retain(|&handle| match sockets.get::<tcp::Socket>(handle).state() {
                tcp::State::Listen if idle < spares => {
                    idle += 1;
                    true
                }
                tcp::State::Listen | tcp::State::Closed => {
                    freed.push(handle);
                    false
                }
                tcp::State::SynReceived => true,
                _ => {
                    self.accepted.push_back((port, handle));
                    false
                }
            });
        }
        self.listening.retain(|_, l| !(l.draining && l.pending.is_empty()));
        for handle in freed {
            self.remove(handle);
        }
    }

    fn open_listener(&mut self, port: u16) -> Option<SocketHandle> {
        let (mut socket, buffers) = self.new_tcp_socket()?;
        socket.listen(port).expect("a fresh socket with a non-zero port can always listen");
        Some(self.add_socket((socket, buffers)))
    }

    fn service_timers(&mut self, now: Instant, sink: &mut impl DatagramSink) {
        for peer in &mut self.peers {
            let expired = match peer.tunn.update_timers(&mut self.cipher) {
                TunnResult::WriteToNetwork(datagram) => {
                    send_or_count(&mut self.stats, peer.endpoint, sink, datagram);
                    false
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => true,
                _ => false,
            };
            // boringtun starts a handshake only when there is something to send, and gives up for good after 90 s
            // of failures. The side with a persistent keepalive (the client behind NAT) must keep the tunnel up
            // so the agent can reach it, so it (re)starts the handshake itself, at boringtun's retry pace.
            let keep_up = peer.keepalive && peer.endpoint.is_some();
            let never_connected = peer.tunn.time_since_last_handshake().is_none();
            if keep_up && (never_connected || expired) && now >= peer.next_forced_handshake {
                peer.next_forced_handshake = now + FORCED_HANDSHAKE_INTERVAL;
                if let TunnResult::WriteToNetwork(init) = peer.tunn.format_handshake_initiation(&mut self.cipher, false)
                {
                    send_or_count(&mut self.stats, peer.endpoint, sink, init);
                }
            }
        }
    }

    /// When [`Core::poll`] must run next, at the latest: smoltcp's next timer or WireGuard's next tick.
    pub fn poll_at(&mut self, now: Instant) -> Instant {
        match self.egress.next_at(now) {
            Some(at) => at.min(self.next_timer),
            None => self.next_timer,
        }
    }

    /// Accepts connections on a tunnel port (not 0), as many at once as the connection cap allows: listening
    /// sockets are opened as connection requests arrive. Established connections come out of
    /// [`Core::accept`]. Listening again on an open port changes nothing; on a port draining after
    /// [`Core::stop_accepting`] it takes new connections again.
    pub fn listen(&mut self, port: u16) {
        assert_ne!(port, 0, "cannot listen on tunnel port 0");
        if let Some(listening) = self.listening.get_mut(&port) {
            if std::mem::take(&mut listening.draining) {
                // Draining closed its listening sockets: take connections again at once.
                if let Some(handle) = self.open_listener(port) {
                    self.listening.get_mut(&port).expect("looked up above").pending.push(handle);
                }
            }
            return;
        }
        let mut listening = ListenPort::default();
        if let Some(handle) = self.open_listener(port) {
            listening.pending.push(handle);
        }
        self.listening.insert(port, listening);
    }

    /// Stops accepting on `port`: handshakes under way are reset, connections not yet taken from
    /// [`Core::accept`] are reset too. Established connections already taken are not touched.
    pub fn unlisten(&mut self, port: u16) {
        let Some(listening) = self.listening.remove(&port) else { return };
        let unaccepted: Vec<SocketHandle> = self.accepted.iter().filter(|(p, _)| *p == port).map(|&(_, h)| h).collect();
        self.accepted.retain(|(p, _)| *p != port);
        for handle in listening.pending.into_iter().chain(unaccepted) {
            self.tcp(handle).abort();
            self.closing.push(handle);
        }
    }

    /// Stops taking new connections on `port` without cutting the ones half made: new connection requests are
    /// reset (a client with somewhere else to go moves on at once), while handshakes under way finish and come
    /// out of [`Core::accept`] as usual. A peer that completed its side of the handshake has already sent its
    /// first bytes; resetting it then would fail a request that no other replica can take over. The port is
    /// forgotten once no handshake is left ([`Core::accepts_on`]); [`Core::listen`] takes it back.
    pub fn stop_accepting(&mut self, port: u16) {
        let Some(listening) = self.listening.get_mut(&port) else { return };
        listening.draining = true;
        let sockets = &self.sockets;
        let mut idle = Vec::new();
        listening.pending.retain(|&handle| {
            let listen = sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen;
            if listen {
                idle.push(handle);
            }
            !listen
        });
        if listening.pending.is_empty() {
            self.listening.remove(&port);
        }
        for handle in idle {
            // A listening socket has nothing to send.
            self.remove(handle);
        }
    }

    /// Whether `port` takes connections, or still finishes handshakes after [`Core::stop_accepting`].
    pub fn accepts_on(&self, port: u16) -> bool {
        self.listening.contains_key(&port)
    }

    /// The next connection established on a listening port: its port and socket. The socket is the caller's
    /// from now on (remove it with [`Core::remove`] once closed).
    pub fn accept(&mut self) -> Option<(u16, SocketHandle)> {
        self.accepted.pop_front()
    }

    /// Starts a connection to `remote` inside the tunnel, from an ephemeral port of ours.
    pub fn connect(&mut self, remote: IpEndpoint) -> Result<SocketHandle, ConnectError> {
        let family_ok = match remote.addr {
            IpAddress::Ipv4(_) => self.has_v4,
            IpAddress::Ipv6(_) => self.has_v6,
        };
        if !family_ok {
            return Err(ConnectError::NoSourceAddress(remote.addr));
        }
        let port = self.free_port().ok_or(ConnectError::NoFreePort)?;
        let (mut socket, buffers) = self.new_tcp_socket().ok_or(ConnectError::TooManyConnections)?;
        socket.connect(self.iface.context(), remote, port).map_err(|_| ConnectError::Unaddressable)?;
        let handle = self.add_socket((socket, buffers));
        // Its SYN goes out on the next poll.
        self.egress.touch(handle);
        Ok(handle)
    }

    /// Opens a UDP socket on tunnel `port` (0: a free ephemeral port), with room for `bytes` of datagrams
    /// queued each way (at most `bytes / 512` datagrams). Returns it with the port it is bound to.
    pub fn udp_bind(&mut self, port: u16, bytes: usize) -> Result<(SocketHandle, u16), ConnectError> {
        let port = if port == 0 { self.free_port().ok_or(ConnectError::NoFreePort)? } else { port };
        let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; (bytes / 512).max(16)], vec![0; bytes]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(|_| ConnectError::Unaddressable)?;
        Ok((self.sockets.add(socket), port))
    }

    /// Queues `payload` as one datagram from the UDP socket behind `handle` to `to`; the next poll sends it.
    pub fn udp_send(&mut self, handle: SocketHandle, payload: &[u8], to: IpEndpoint) -> Result<(), udp::SendError> {
        self.egress.touch(handle);
        self.sockets.get_mut::<udp::Socket>(handle).send_slice(payload, to)
    }

    /// Takes the next datagram the UDP socket behind `handle` received into `buf`: its length and sender.
    /// Receiving gives a UDP socket nothing to send, so unlike [`Core::udp_send`] this schedules no visit (a
    /// driver that looks for datagrams on every round would otherwise never let the poll go idle).
    pub fn udp_recv(&mut self, handle: SocketHandle, buf: &mut [u8]) -> Option<(usize, IpEndpoint)> {
        let (len, meta) = self.sockets.get_mut::<udp::Socket>(handle).recv_slice(buf).ok()?;
        Some((len, meta.endpoint))
    }

    /// Whether the UDP socket behind `handle` holds a received datagram; schedules no visit.
    pub fn udp_can_recv(&self, handle: SocketHandle) -> bool {
        self.sockets.get::<udp::Socket>(handle).can_recv()
    }

    /// Closes a UDP socket from [`Core::udp_bind`].
    pub fn udp_close(&mut self, handle: SocketHandle) {
        self.egress.forget(handle);
        self.sockets.remove(handle);
    }

    /// The TCP socket behind `handle`. The next poll visits it (writing, reading or closing may give it
    /// something to send: data, a window update, a FIN).
    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.egress.touch(handle);
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// The TCP socket behind `handle`, to look at (its state, what it may do). Looking schedules no visit,
    /// unlike [`Core::tcp`]: a driver checking a waiting connection on every round must not keep the poll busy.
    pub fn tcp_view(&self, handle: SocketHandle) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket>(handle)
    }

    /// Copies what the TCP socket behind `handle` received into `buf` without taking it (0 if nothing or
    /// closed). The receive window does not move, so this schedules no visit.
    pub fn tcp_peek(&mut self, handle: SocketHandle, buf: &mut [u8]) -> usize {
        self.sockets.get_mut::<tcp::Socket>(handle).peek_slice(buf).unwrap_or(0)
    }

    /// Hands a socket back: it is removed (with its buffers) once it is closed, after its FIN — or its RST,
    /// if the caller called `abort` — has gone out. The handle must not be used afterwards.
    pub fn release(&mut self, handle: SocketHandle) {
        self.closing.push(handle);
    }

    /// Frees a socket and its buffers at once, whatever its state (nothing more is sent for it).
    pub fn remove(&mut self, handle: SocketHandle) {
        // The socket (holding slices of the mapping) goes first, then the mapping.
        self.egress.forget(handle);
        self.sockets.remove(handle);
        self.buffers.remove(&handle);
    }

    /// Gives the memory of an idle connection's buffers back to the OS, if they hold nothing (no unread,
    /// out-of-order or unacknowledged bytes). Returns whether it did. Costs a system call: call it for
    /// connections that have gone quiet, not on every poll.
    pub fn release_idle_buffers(&mut self, handle: SocketHandle) -> bool {
        if !self.tcp_view(handle).buffers_empty() {
            return false;
        }
        if let Some(buffers) = self.buffers.get(&handle) {
            // SAFETY: `buffers_empty` says no byte in either ring is needed.
            #[allow(unsafe_code)]
            unsafe {
                buffers.release()
            };
        }
        true
    }

    /// TCP sockets open now: connections, handshakes and listening sockets.
    pub fn socket_count(&self) -> usize {
        self.buffers.len()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The first peer's address, last handshake and byte counts.
    pub fn peer(&self) -> PeerStatus {
        self.peer_status(0)
    }

    /// Every peer's status, in configuration order (the first peer, then [`CoreConfig::other_peers`]).
    pub fn peers(&self) -> Vec<PeerStatus> {
        (0..self.peers.len()).map(|n| self.peer_status(n)).collect()
    }

    /// Peer number `n`'s status (see [`Core::peers`]).
    ///
    /// # Panics
    /// If there is no peer `n`.
    pub fn peer_status(&self, n: usize) -> PeerStatus {
        let peer = &self.peers[n];
        let (last_handshake, tx, rx, _, _) = peer.tunn.stats();
        let last_received =
            peer.last_received.map(|at| std::time::Duration::from_micros((self.now - at).total_micros()));
        PeerStatus { endpoint: peer.endpoint, last_handshake, tx_bytes: tx as u64, rx_bytes: rx as u64, last_received }
    }

    /// The peer that tunnel address `address` belongs to (its number in [`Core::peers`]).
    pub fn peer_of_address(&self, address: IpAddress) -> Option<usize> {
        if self.peers.len() == 1 {
            return Some(0);
        }
        self.peers.iter().position(|p| p.allows(&address))
    }

    /// A socket with our tuning and buffers of its own, or `None` at the cap (or if mapping fails).
    fn new_tcp_socket(&mut self) -> Option<(tcp::Socket<'static>, Buffers)> {
        if self.buffers.len() >= self.max_connections {
            return None;
        }
        let t = &self.tcp;
        // SAFETY: the rings go into the socket, which `remove` drops before the mapping.
        #[allow(unsafe_code)]
        let mapped = unsafe { Buffers::map(t.rx_buffer, t.tx_buffer) };
        let (buffers, (rx, tx)) = match mapped {
            Ok(mapped) => mapped,
            Err(e) => {
                log::warn!("cannot map buffers for a tunnel connection: {e}");
                return None;
            }
        };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(t.ack_delay);
        socket.set_ack_delay_after_short_segment(t.ack_delay_after_short_segment);
        socket.set_congestion_control(t.congestion);
        socket.set_keep_alive(t.keep_alive);
        socket.set_timeout(t.timeout);
        Some((socket, buffers))
    }

    /// Adds a socket made by `new_tcp_socket`, paired with its mapping.
    fn add_socket(&mut self, (socket, buffers): (tcp::Socket<'static>, Buffers)) -> SocketHandle {
        let handle = self.sockets.add(socket);
        self.buffers.insert(handle, buffers);
        handle
    }

    fn free_port(&mut self) -> Option<u16> {
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start() + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL_PORTS.end() { *EPHEMERAL_PORTS.start() } else { port + 1 };
            let taken = self.sockets.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    tcp.local_endpoint().is_some_and(|e| e.port == port) || tcp.listen_endpoint().port == port
                }
                smoltcp::socket::Socket::Udp(udp) => udp.endpoint().port == port,
            });
            if !taken {
                return Some(port);
            }
        }
        None
    }
}

/// Every peer of `config`, the first one first, checked: within [`MAX_PEERS`], and routable when there are
/// several. A single peer without allowed IPs is accepted from anywhere in our own tunnel subnets.
fn peer_configs(config: &CoreConfig) -> Result<Vec<PeerConfig>, ConfigError> {
    let first = PeerConfig {
        public_key: config.peer_public_key,
        preshared_key: config.preshared_key.clone(),
        persistent_keepalive: config.persistent_keepalive,
        allowed_ips: config.peer_allowed_ips.clone(),
        endpoint: config.endpoint,
    };
    let mut peers = vec![first];
    peers.extend(config.other_peers.iter().cloned());
    if peers.len() > MAX_PEERS {
        return Err(ConfigError::TooManyPeers(peers.len()));
    }
    if peers.len() == 1 && peers[0].allowed_ips.is_empty() {
        peers[0].allowed_ips = config.addresses.clone();
    }
    if let Some(n) = peers.iter().position(|p| p.allowed_ips.is_empty()) {
        return Err(ConfigError::PeerWithoutAllowedIps(n));
    }
    Ok(peers)
}

fn send_or_count(stats: &mut Stats, endpoint: Option<SocketAddr>, sink: &mut impl DatagramSink, datagram: &[u8]) {
    match endpoint {
        Some(endpoint) => {
            stats.datagrams_out += 1;
            stats.bytes_out += datagram.len() as u64;
            sink.send_to(endpoint, datagram);
        }
        None => stats.dropped_no_endpoint += 1,
    }
}

fn random_seed() -> [u8; 8] {
    let mut seed = [0u8; 8];
    // Only for smoltcp's initial sequence numbers and port choice; a short read leaves zeros, which is harmless.
    let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
    seed
}
