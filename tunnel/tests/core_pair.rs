//! Two sans-IO cores wired together in memory (no sockets, virtual time): bulk TCP both ways over IPv4 and
//! IPv6, over a clean link and over one that drops, duplicates and reorders; bad datagrams; roaming.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::net::SocketAddr;
use tunnel::sim::{Conditions, Pair};
use tunnel::{Core, CoreConfig, PrivateKey, TcpTuning};

/// `address/prefix` as the tunnel's configuration takes it.
fn cidr(address: IpAddress, prefix: u8) -> tunnel::Cidr {
    tunnel::Cidr::new(address.into(), prefix).unwrap()
}

const AGENT_V4: IpAddress = IpAddress::v4(10, 88, 0, 1);
const CLIENT_V4: IpAddress = IpAddress::v4(10, 88, 0, 2);
const AGENT_V6: IpAddress = IpAddress::v6(0xfd88, 0, 0, 0, 0, 0, 0, 1);
const CLIENT_V6: IpAddress = IpAddress::v6(0xfd88, 0, 0, 0, 0, 0, 0, 2);

/// Core A plays the client (knows the agent's endpoint, keepalive on); core B plays the agent.
fn pair(conditions: Conditions) -> Pair {
    pair_tuned(conditions, TcpTuning::default())
}

/// [`pair`] with other TCP tuning on both sides.
fn pair_tuned(conditions: Conditions, tcp: TcpTuning) -> Pair {
    let a_key = PrivateKey::generate();
    let b_key = PrivateKey::generate();
    let config =
        |own: &PrivateKey, peer: &PrivateKey, v4: IpAddress, v6: IpAddress, endpoint: Option<SocketAddr>| CoreConfig {
            private_key: own.clone(),
            peer_public_key: peer.public_key(),
            preshared_key: None,
            persistent_keepalive: endpoint.map(|_| 25),
            addresses: vec![cidr(v4, 30), cidr(v6, 64)],
            peer_allowed_ips: vec![],
            endpoint,
            other_peers: Vec::new(),
            mtu: 1420,
            tcp: tcp.clone(),
            udp: Default::default(),
        };
    let now = smoltcp::time::Instant::from_millis(0);
    let a = Core::new(config(&a_key, &b_key, CLIENT_V4, CLIENT_V6, Some(Pair::B_ADDR)), 1, now).unwrap();
    let b = Core::new(config(&b_key, &a_key, AGENT_V4, AGENT_V6, None), 2, now).unwrap();
    Pair::new(a, b, conditions)
}

fn pattern(seed: u64, i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(seed) >> 29) as u8
}

/// One direction of a transfer: what was written into one socket and checked out of the other.
struct Flow {
    seed: u64,
    total: usize,
    sent: usize,
    received: usize,
}

impl Flow {
    fn new(seed: u64, total: usize) -> Flow {
        Flow { seed, total, sent: 0, received: 0 }
    }

    fn write(&mut self, core: &mut Core, handle: SocketHandle) {
        let socket = core.tcp(handle);
        while self.sent < self.total && socket.can_send() {
            let (seed, start, left) = (self.seed, self.sent, self.total - self.sent);
            let n = socket
                .send(|buf| {
                    let n = buf.len().min(left);
                    for (k, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(seed, start + k);
                    }
                    (n, n)
                })
                .unwrap();
            self.sent += n;
        }
        if self.sent == self.total && socket.may_send() {
            socket.close();
        }
    }

    fn read(&mut self, core: &mut Core, handle: SocketHandle) {
        let socket = core.tcp(handle);
        while socket.can_recv() {
            let (seed, start) = (self.seed, self.received);
            let n = socket
                .recv(|buf| {
                    for (k, b) in buf.iter().enumerate() {
                        assert_eq!(*b, pattern(seed, start + k), "corrupted byte at offset {}", start + k);
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
            self.received += n;
        }
    }
}

/// Connects A to B's listener at `agent`, moves `total` bytes each way at once, and checks both FINs arrive.
fn bulk_both_ways(pair: &mut Pair, agent: IpAddress, total: usize, timeout_s: u64) {
    pair.b.listen(9000);
    let client = pair.a.connect(IpEndpoint::new(agent, 9000)).unwrap();
    let mut up = Flow::new(7, total);
    let mut down = Flow::new(11, total);
    let mut server = None;
    let finished = pair.run_until(Duration::from_secs(timeout_s), |p| {
        up.write(&mut p.a, client);
        down.read(&mut p.a, client);
        let Some(server) = accepted(&mut p.b, &mut server) else { return false };
        if p.b.tcp(server).may_send() {
            down.write(&mut p.b, server);
        }
        up.read(&mut p.b, server);
        up.received == total && down.received == total && !p.a.tcp(client).may_recv() && !p.b.tcp(server).may_recv()
    });
    assert!(finished, "transfer stalled: up {}/{total}, down {}/{total} at {}", up.received, down.received, pair.now);
    assert!(pair.a.peer().last_handshake.is_some());
}

#[test]
fn bulk_tcp_both_ways_over_ipv4() {
    let mut p = pair(Conditions::default());
    bulk_both_ways(&mut p, AGENT_V4, 8 << 20, 60);
    assert_eq!(p.b.peer().endpoint, Some(Pair::A_ADDR), "agent learned the client's endpoint from the handshake");
    assert_eq!(p.b.stats().dropped_invalid + p.a.stats().dropped_invalid, 0);
}

#[test]
fn bulk_tcp_with_the_loss_tolerant_controller_survives_loss_reordering_and_a_bottleneck() {
    lossy_bulk(smoltcp::socket::tcp::CongestionControl::BbrLite);
}

#[test]
fn bulk_tcp_with_cubic_survives_loss_reordering_and_a_bottleneck() {
    lossy_bulk(smoltcp::socket::tcp::CongestionControl::Cubic);
}

/// 2 MiB each way over 1% loss, 1% duplication, reordering and a 5 MB/s bottleneck: SACK recovery with
/// reordering and duplicates must still deliver every byte in order.
fn lossy_bulk(congestion: smoltcp::socket::tcp::CongestionControl) {
    let conditions = Conditions {
        loss: 0.01,
        duplicate: 0.01,
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
        rate: Some(5_000_000),
        queue: 256 * 1024,
        seed: 9,
        ..Conditions::default()
    };
    let tcp = TcpTuning { congestion, ..TcpTuning::default() };
    let mut p = pair_tuned(conditions, tcp);
    bulk_both_ways(&mut p, AGENT_V4, 2 << 20, 600);
    let (lost, _) = p.impairments();
    assert!(lost > 20, "the link must really have lost datagrams: {lost}");
}

#[test]
fn bulk_tcp_both_ways_over_ipv6() {
    let mut p = pair(Conditions::default());
    bulk_both_ways(&mut p, AGENT_V6, 4 << 20, 60);
}

#[test]
fn bulk_tcp_survives_loss_duplication_and_reordering() {
    for (seed, agent) in [(3, AGENT_V4), (5, AGENT_V6)] {
        let conditions = Conditions {
            loss: 0.02,
            duplicate: 0.02,
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(4),
            seed,
            ..Conditions::default()
        };
        let mut p = pair(conditions);
        bulk_both_ways(&mut p, agent, 2 << 20, 600);
        let (lost, duplicated) = p.impairments();
        assert!(
            lost > 20 && duplicated > 20,
            "the link must really have impaired traffic: {lost} lost, {duplicated} duplicated"
        );
        let replays = p.a.stats().dropped_replay + p.b.stats().dropped_replay;
        assert!(replays > 0, "duplicated datagrams are caught by WireGuard's replay window");
    }
}

/// Captures what core `from` sends while polled, without delivering it.
/// The connection accepted on `core`, taken once from [`Core::accept`] into `slot`.
fn accepted(core: &mut Core, slot: &mut Option<SocketHandle>) -> Option<SocketHandle> {
    if slot.is_none() {
        *slot = core.accept().map(|(_, handle)| handle);
    }
    *slot
}

/// Whether the connection accepted on `core` (kept in `slot`) is established.
fn established(core: &mut Core, slot: &mut Option<SocketHandle>) -> bool {
    accepted(core, slot).is_some_and(|handle| core.tcp(handle).state() == State::Established)
}

fn capture(core: &mut Core, now: smoltcp::time::Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    core.poll(now, &mut |_: SocketAddr, d: &[u8]| out.push(d.to_vec()));
    out
}

fn established_pair() -> (Pair, SocketHandle, SocketHandle) {
    let mut p = pair(Conditions::default());
    p.b.listen(9000);
    let client = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    let mut server = None;
    assert!(p.run_until(Duration::from_secs(5), |p| established(&mut p.b, &mut server)));
    (p, client, server.unwrap())
}

#[test]
fn garbage_truncated_replayed_and_wrong_key_datagrams_are_dropped_and_counted() {
    let (mut p, client, listener) = established_pair();
    // Genuine data datagrams, captured for replaying, truncating and forging.
    p.a.tcp(client).send_slice(b"hello").unwrap();
    let first = capture(&mut p.a, p.now).pop().expect("the client sent its data");
    p.a.tcp(client).send_slice(b"world").unwrap();
    let second = capture(&mut p.a, p.now).pop().expect("the client sent more data");
    let now = p.now;
    let sink = &mut |_: SocketAddr, _: &[u8]| panic!("bad input must not make the core answer");
    p.b.handle_datagram(now, Pair::A_ADDR, &first, &mut |_: SocketAddr, _: &[u8]| {});
    let before = p.b.stats();
    p.b.handle_datagram(now, Pair::A_ADDR, &first, sink); // replay
    p.b.handle_datagram(now, Pair::A_ADDR, &second[..second.len() - 7], sink); // truncated
    p.b.handle_datagram(now, Pair::A_ADDR, b"", sink);
    p.b.handle_datagram(now, Pair::A_ADDR, &[0xff; 200], sink); // garbage
    let mut forged = second.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1; // a tag that does not verify, as from a wrong key
    p.b.handle_datagram(now, Pair::A_ADDR, &forged, sink);
    // The genuine datagram behind the failed forgeries still counts.
    p.b.handle_datagram(now, Pair::A_ADDR, &second, &mut |_: SocketAddr, _: &[u8]| {});
    // A handshake initiation from a stranger's key is refused without a reply.
    let mut stranger = pair(Conditions::default());
    stranger.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    let init = capture(&mut stranger.a, now).pop().expect("stranger starts a handshake");
    p.b.handle_datagram(now, Pair::A_ADDR, &init, sink);
    let after = p.b.stats();
    assert_eq!(after.dropped_replay - before.dropped_replay, 1);
    assert_eq!(after.dropped_invalid - before.dropped_invalid, 5);
    // The session is undisturbed: the data got through once, and more flows.
    let mut got = Vec::new();
    assert!(p.run_until(Duration::from_secs(2), |p| {
        let mut buf = [0u8; 16];
        let n = p.b.tcp(listener).recv_slice(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        got.len() >= 10
    }));
    assert_eq!(got, b"helloworld");
    bulk_more(&mut p, client, listener);
}

fn bulk_more(p: &mut Pair, client: SocketHandle, listener: SocketHandle) {
    let mut flow = Flow::new(1, 256 << 10);
    assert!(p.run_until(Duration::from_secs(10), |p| {
        flow.write(&mut p.a, client);
        flow.read(&mut p.b, listener);
        flow.received == flow.total
    }));
}

#[test]
fn agent_follows_a_roaming_client_but_not_forged_or_replayed_datagrams() {
    let (mut p, client, listener) = established_pair();
    let roamed: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let now = p.now;
    p.a.tcp(client).send_slice(b"x").unwrap();
    let genuine = capture(&mut p.a, now).pop().unwrap();
    // Forged and replayed datagrams from elsewhere do not move the endpoint.
    p.b.handle_datagram(
        now,
        roamed,
        &[4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
        &mut |_: SocketAddr, _: &[u8]| {},
    );
    assert_eq!(p.b.peer().endpoint, Some(Pair::A_ADDR));
    p.b.handle_datagram(now, Pair::A_ADDR, &genuine, &mut |_: SocketAddr, _: &[u8]| {});
    p.b.handle_datagram(now, roamed, &genuine, &mut |_: SocketAddr, _: &[u8]| {});
    assert_eq!(p.b.peer().endpoint, Some(Pair::A_ADDR), "a replay from a new address must not redirect traffic");
    // A fresh authentic datagram from the new address moves it, and replies follow.
    p.a.tcp(client).send_slice(b"y").unwrap();
    let fresh = capture(&mut p.a, now).pop().unwrap();
    p.b.handle_datagram(now, roamed, &fresh, &mut |_: SocketAddr, _: &[u8]| {});
    assert_eq!(p.b.peer().endpoint, Some(roamed));
    let mut destinations = Vec::new();
    p.b.tcp(listener).send_slice(b"reply").unwrap();
    p.b.poll(now, &mut |to: SocketAddr, _: &[u8]| destinations.push(to));
    assert!(!destinations.is_empty() && destinations.iter().all(|d| *d == roamed));
    assert!(p.b.stats().endpoint_changes >= 2);
}

#[test]
fn preshared_keys_must_match() {
    let psk = tunnel::PresharedKey::generate();
    let a_key = PrivateKey::generate();
    let b_key = PrivateKey::generate();
    let mk =
        |own: &PrivateKey, peer: &PrivateKey, v4, endpoint: Option<SocketAddr>, psk: Option<tunnel::PresharedKey>| {
            CoreConfig {
                private_key: own.clone(),
                peer_public_key: peer.public_key(),
                preshared_key: psk,
                persistent_keepalive: None,
                addresses: vec![cidr(v4, 30)],
                peer_allowed_ips: vec![],
                endpoint,
                other_peers: Vec::new(),
                mtu: 1420,
                tcp: TcpTuning::default(),
                udp: Default::default(),
            }
        };
    let now = smoltcp::time::Instant::from_millis(0);
    for (a_psk, b_psk, works) in [(Some(psk.clone()), Some(psk.clone()), true), (Some(psk.clone()), None, false)] {
        let a = Core::new(mk(&a_key, &b_key, CLIENT_V4, Some(Pair::B_ADDR), a_psk), 1, now).unwrap();
        let b = Core::new(mk(&b_key, &a_key, AGENT_V4, None, b_psk), 2, now).unwrap();
        let mut p = Pair::new(a, b, Conditions::default());
        p.b.listen(9000);
        p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
        let mut server = None;
        let connected = p.run_until(Duration::from_secs(3), |p| established(&mut p.b, &mut server));
        assert_eq!(connected, works);
    }
}

#[test]
fn packets_from_outside_the_peers_allowed_ips_are_dropped() {
    // B accepts only 10.88.0.3 from its peer, so A's packets from 10.88.0.2 never reach B's stack.
    let a_key = PrivateKey::generate();
    let b_key = PrivateKey::generate();
    let now = smoltcp::time::Instant::from_millis(0);
    let base = |own: &PrivateKey, peer: &PrivateKey, v4| CoreConfig {
        private_key: own.clone(),
        peer_public_key: peer.public_key(),
        preshared_key: None,
        persistent_keepalive: None,
        addresses: vec![cidr(v4, 30)],
        peer_allowed_ips: vec![],
        endpoint: None,
        other_peers: Vec::new(),
        mtu: 1420,
        tcp: TcpTuning::default(),
        udp: Default::default(),
    };
    let a = Core::new(CoreConfig { endpoint: Some(Pair::B_ADDR), ..base(&a_key, &b_key, CLIENT_V4) }, 1, now).unwrap();
    let b = Core::new(
        CoreConfig { peer_allowed_ips: vec![cidr(IpAddress::v4(10, 88, 0, 3), 32)], ..base(&b_key, &a_key, AGENT_V4) },
        2,
        now,
    )
    .unwrap();
    let mut p = Pair::new(a, b, Conditions::default());
    p.b.listen(9000);
    p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    let mut server = None;
    assert!(!p.run_until(Duration::from_secs(2), |p| accepted(&mut p.b, &mut server).is_some()));
    assert!(p.b.stats().dropped_source > 0);
}

#[test]
fn the_keepalive_side_brings_the_tunnel_up_without_traffic() {
    // The client behind NAT must be reachable by the agent before it has anything to send itself.
    let mut p = pair(Conditions::default());
    assert!(p.run_until(Duration::from_secs(2), |p| p.b.peer().last_handshake.is_some()));
    assert_eq!(p.b.peer().endpoint, Some(Pair::A_ADDR));
    p.a.listen(7000);
    p.b.connect(IpEndpoint::new(CLIENT_V4, 7000)).unwrap();
    let mut client_side = None;
    assert!(p.run_until(Duration::from_secs(2), |p| established(&mut p.a, &mut client_side)));
}

#[test]
fn thousands_of_random_and_mutated_datagrams_never_disturb_the_session() {
    // The CI-sized sibling of the cargo-fuzz target in fuzz/: deterministic, so a failure reproduces.
    let (mut p, client, listener) = established_pair();
    let mut genuine = Vec::new();
    for i in 0..4u8 {
        p.a.tcp(client).send_slice(&[i; 64]).unwrap();
        genuine.extend(capture(&mut p.a, p.now));
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let now = p.now;
    let before = p.b.stats();
    for i in 0..20_000 {
        let datagram = if i % 2 == 0 {
            let len = (next() % 300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = d.first_mut() {
                *first = (next() % 5) as u8; // mostly valid WireGuard message types
            }
            d
        } else {
            let mut d = genuine[(next() % genuine.len() as u64) as usize].clone();
            let at = (next() % d.len() as u64) as usize;
            d[at] ^= 1 + (next() % 255) as u8;
            d
        };
        p.b.handle_datagram(now, Pair::A_ADDR, &datagram, &mut |_: SocketAddr, _: &[u8]| {});
    }
    let after = p.b.stats();
    assert_eq!(after.dropped_invalid + after.dropped_replay - before.dropped_invalid - before.dropped_replay, 20_000);
    assert_eq!(p.b.peer().endpoint, Some(Pair::A_ADDR));
    // The genuine datagrams were never delivered, so their data comes through by retransmission.
    let mut received = 0;
    assert!(p.run_until(Duration::from_secs(10), |p| {
        let mut buf = [0u8; 512];
        received += p.b.tcp(listener).recv_slice(&mut buf).unwrap();
        received == 256
    }));
    bulk_more(&mut p, client, listener);
}

#[test]
fn a_restarted_side_offers_a_new_session_when_stale_data_arrives() {
    // B (the agent) restarts and forgets the session; A (the client) keeps its old one. B answers the data it
    // cannot decrypt with a handshake, so traffic flows again without waiting for A's 15 s (real time) timeout,
    // which this virtual-time test never reaches.
    let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
    let now = smoltcp::time::Instant::from_millis(0);
    let b_config = CoreConfig::new(b_key.clone(), a_key.public_key(), vec![cidr(AGENT_V4, 30)]);
    let a = Core::new(
        CoreConfig {
            endpoint: Some(Pair::B_ADDR),
            persistent_keepalive: Some(25),
            ..CoreConfig::new(a_key, b_key.public_key(), vec![cidr(CLIENT_V4, 30)])
        },
        1,
        now,
    )
    .unwrap();
    let mut p = Pair::new(a, Core::new(b_config.clone(), 2, now).unwrap(), Conditions::default());
    p.b.listen(9000);
    p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    let mut server = None;
    assert!(p.run_until(Duration::from_secs(5), |p| established(&mut p.b, &mut server)));

    p.b = Core::new(b_config, 3, p.now).unwrap(); // the restart
    p.b.listen(9000);
    let client = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    let mut server = None;
    assert!(
        p.run_until(Duration::from_secs(5), |p| p.a.tcp(client).state() == State::Established
            && established(&mut p.b, &mut server)),
        "a new connection works again within seconds"
    );
    assert!(p.b.stats().dropped_invalid > 0, "the stale data was dropped first");
}

/// Opens `n` connections from A to B's port 9000 at once and runs until each is settled: established on
/// both sides, or reset. Returns (accepted on B, established on A, reset on A).
fn simultaneous_connections(p: &mut Pair, n: usize) -> (usize, usize, usize) {
    p.b.listen(9000);
    let clients: Vec<SocketHandle> = (0..n).map(|_| p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap()).collect();
    let mut servers = Vec::new();
    p.run_until(Duration::from_secs(10), |p| {
        while let Some((port, handle)) = p.b.accept() {
            assert_eq!(port, 9000);
            servers.push(handle);
        }
        let established = clients.iter().filter(|&&c| p.a.tcp(c).state() == State::Established).count();
        let settled = clients.iter().all(|&c| matches!(p.a.tcp(c).state(), State::Established | State::Closed));
        settled && servers.len() >= established
    });
    let established = clients.iter().filter(|&&c| p.a.tcp(c).state() == State::Established).count();
    let reset = clients.iter().filter(|&&c| p.a.tcp(c).state() == State::Closed).count();
    (servers.len(), established, reset)
}

#[test]
fn a_thousand_simultaneous_connection_requests_are_all_accepted() {
    let mut p = pair(Conditions::default());
    assert!(p.run_until(Duration::from_secs(2), |p| p.b.peer().last_handshake.is_some()));
    let (accepted, established, reset) = simultaneous_connections(&mut p, 1000);
    assert_eq!((accepted, established, reset), (1000, 1000, 0));
    assert_eq!(p.b.stats().refused_over_cap, 0);
    // Listening sockets were opened on demand and the idle ones closed again: 1000 connections + spares.
    assert!(p.b.socket_count() <= 1000 + 2, "{} sockets", p.b.socket_count());
}

#[test]
fn requests_beyond_the_connection_cap_are_reset_and_counted() {
    let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
    let now = smoltcp::time::Instant::from_millis(0);
    let a = Core::new(
        CoreConfig {
            endpoint: Some(Pair::B_ADDR),
            persistent_keepalive: Some(25),
            ..CoreConfig::new(a_key.clone(), b_key.public_key(), vec![cidr(CLIENT_V4, 30)])
        },
        1,
        now,
    )
    .unwrap();
    let mut b_config = CoreConfig::new(b_key, a_key.public_key(), vec![cidr(AGENT_V4, 30)]);
    b_config.tcp.max_connections = 50;
    let mut p = Pair::new(a, Core::new(b_config, 2, now).unwrap(), Conditions::default());
    assert!(p.run_until(Duration::from_secs(2), |p| p.b.peer().last_handshake.is_some()));
    let (accepted, established, reset) = simultaneous_connections(&mut p, 80);
    assert_eq!((accepted, established, reset), (50, 50, 30));
    assert_eq!(p.b.stats().refused_over_cap, 30);
    // Our own connects count against the cap too.
    assert!(matches!(
        p.b.connect(IpEndpoint::new(CLIENT_V4, 7000)),
        Err(tunnel::core::ConnectError::TooManyConnections)
    ));
}

#[test]
fn unlisten_resets_handshakes_and_connections_not_yet_accepted() {
    let mut p = pair(Conditions::default());
    p.b.listen(9000);
    let client = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(client).state() == State::Established));
    p.b.unlisten(9000);
    assert!(p.b.accept().is_none());
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(client).state() == State::Closed), "A sees the reset");
    let late = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(late).state() == State::Closed), "no listener any more");
    assert_eq!(p.b.socket_count(), 0, "every socket of the port is gone");
}

#[test]
fn stop_accepting_finishes_handshakes_under_way_and_refuses_new_requests() {
    let mut p = pair(Conditions::default());
    p.b.listen(9000);
    let client = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    // A is established once it has B's SYN-ACK; its ACK is still on the way: B is mid-handshake.
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(client).state() == State::Established));
    assert!(p.b.accept().is_none(), "B has not accepted yet");
    p.b.stop_accepting(9000);
    assert!(p.b.accepts_on(9000), "a handshake is still under way");
    p.a.tcp(client).send_slice(b"first request").unwrap();
    let mut server = None;
    assert!(p.run_until(Duration::from_secs(5), |p| established(&mut p.b, &mut server)), "B finishes it");
    let mut got = [0u8; 64];
    assert!(p.run_until(Duration::from_secs(5), |p| p.b.tcp(server.unwrap()).recv_queue() == 13));
    let n = p.b.tcp(server.unwrap()).recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], b"first request", "the request sent during the handshake arrives");
    assert_eq!(p.a.tcp(client).state(), State::Established, "not reset");
    assert!(!p.b.accepts_on(9000), "the port is forgotten once its last handshake is over");
    let late = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(late).state() == State::Closed), "new requests reset");
    assert_eq!(p.b.socket_count(), 1, "only the finished connection is left");
    // Listening again takes connections again.
    p.b.listen(9000);
    let again = p.a.connect(IpEndpoint::new(AGENT_V4, 9000)).unwrap();
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(again).state() == State::Established));
}

#[test]
fn an_idle_connections_buffers_are_released_only_when_empty() {
    let (mut p, client, server) = established_pair();
    p.a.tcp(client).send_slice(&[1u8; 3000]).unwrap();
    assert!(!p.a.release_idle_buffers(client), "unacknowledged data is still needed");
    assert!(p.run_until(Duration::from_secs(5), |p| p.b.tcp(server).recv_queue() == 3000));
    assert!(!p.b.release_idle_buffers(server), "unread data is still needed");
    let mut buf = [0u8; 4000];
    assert_eq!(p.b.tcp(server).recv_slice(&mut buf).unwrap(), 3000);
    assert!(p.run_until(Duration::from_secs(5), |p| p.a.tcp(client).send_queue() == 0));
    assert!(p.a.release_idle_buffers(client) && p.b.release_idle_buffers(server));
    // The connection goes on working after its pages went back to the OS.
    bulk_more(&mut p, client, server);
}
