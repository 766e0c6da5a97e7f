//! An agent tunnel serving two client replicas at once (each its own key and tunnel address), with real driver
//! threads over loopback UDP: a forwarder's streams take both replicas in turn, and when one replica vanishes
//! without a word, every stream is still answered (those that went to it move to the other one).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunnel::{Cidr, CoreConfig, PeerConfig, PrivateKey, RelayPolicy, StreamCounters, Tunnel, TunnelConfig};

const REPLICAS: [&str; 2] = ["10.88.0.2", "10.88.0.3"];

/// Sends every stream to this replica's own pod, whatever the preamble names (so answers tell replicas apart).
struct OwnPod(SocketAddr);

impl RelayPolicy for OwnPod {
    fn max_header(&self) -> usize {
        protocol::relay::MAX_LEN
    }
    fn route(&self, head: &[u8]) -> Result<Option<(SocketAddr, usize)>, String> {
        let found = protocol::relay::decode(head).map_err(|e| e.to_string())?;
        Ok(found.map(|(_, len)| (self.0, len)))
    }
}

/// A pod that answers each connection's first bytes with its name.
fn pod(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                    let _ = conn.write_all(name.as_bytes());
                }
            });
        }
    });
    addr
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// One request through the forwarder: the name of the replica's pod that answered, and how long it took.
fn ask(forwarder: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut user = TcpStream::connect(forwarder).unwrap();
    user.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    user.write_all(b"hello").unwrap();
    let mut answer = String::new();
    let _ = user.read_to_string(&mut answer);
    (answer, started.elapsed())
}

/// An agent with two replicas (A at .2, B at .3) whose relays send every stream to their own pod, and a
/// forwarder on the agent that takes both.
struct Setup {
    _agent: Tunnel,
    replicas: Vec<Option<(Tunnel, tunnel::RelayPort)>>,
    forwarding: tunnel::Forwarding,
    counters: Arc<StreamCounters>,
}

fn setup() -> Setup {
    let agent_key = PrivateKey::generate();
    let keys = [PrivateKey::generate(), PrivateKey::generate()];
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let host = |ip: &str| cidr(&format!("{ip}/32"));
    let agent_core = CoreConfig {
        peer_allowed_ips: vec![host(REPLICAS[0])],
        other_peers: vec![PeerConfig {
            public_key: keys[1].public_key(),
            preshared_key: None,
            persistent_keepalive: None,
            allowed_ips: vec![host(REPLICAS[1])],
            endpoint: None,
        }],
        ..CoreConfig::new(agent_key.clone(), keys[0].public_key(), vec![cidr("10.88.0.1/24")])
    };
    let agent = Tunnel::start(TunnelConfig { core: agent_core, listen: loopback }).unwrap();
    let mut replicas = Vec::new();
    for (n, name) in ["replica-a", "replica-b"].into_iter().enumerate() {
        let core = CoreConfig {
            endpoint: Some(agent.local_addr()),
            persistent_keepalive: Some(1),
            peer_allowed_ips: vec![host("10.88.0.1")],
            ..CoreConfig::new(keys[n].clone(), agent_key.public_key(), vec![cidr(&format!("{}/24", REPLICAS[n]))])
        };
        let replica = Tunnel::start(TunnelConfig { core, listen: loopback }).unwrap();
        let relay = replica.relay(7000, Arc::new(OwnPod(pod(name))), Arc::default()).unwrap();
        replicas.push(Some((replica, relay)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.status().unwrap().peers.iter().all(|p| p.endpoint.is_some()) {
        assert!(Instant::now() < deadline, "both replicas shook hands: {:?}", agent.status().unwrap().peers);
        std::thread::sleep(Duration::from_millis(10));
    }

    let remotes: Vec<SocketAddr> = REPLICAS.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 7000)).collect();
    let counters = Arc::new(StreamCounters::default());
    let forwarding = agent
        .forward_from(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            remotes,
            protocol::relay::encode("10.1.2.3:80".parse().unwrap()),
            Arc::clone(&counters),
        )
        .unwrap();
    Setup { _agent: agent, replicas, forwarding, counters }
}

#[test]
fn streams_take_every_live_replica_and_move_off_one_that_vanished() {
    let Setup { _agent, mut replicas, forwarding, counters } = setup();
    let answers: Vec<String> = (0..20).map(|_| ask(forwarding.local_addr()).0).collect();
    for name in ["replica-a", "replica-b"] {
        let count = answers.iter().filter(|a| *a == name).count();
        assert_eq!(count, 10, "streams take the replicas in turn: {answers:?}");
    }

    // Replica A vanishes (its driver stops: no FIN, no WireGuard goodbye, as with SIGKILL).
    replicas[0] = None;
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let (answer, took) = ask(forwarding.local_addr());
        assert_eq!(answer, "replica-b", "request {i} after replica A vanished");
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("after a replica vanished: 30 of 30 answered, the slowest in {slowest:?}");
    // Only the first stream to the vanished replica waits to move; A stays suspected after that.
    assert!(slowest < Duration::from_secs(3), "slowest answer {slowest:?}");
    assert_eq!(counters.failed.load(Relaxed), 0);
    assert_eq!(counters.refused.load(Relaxed), 0);
    // Every stream ends counted as completed (the driver counts a close right after the user sees it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.completed.load(Relaxed) < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counters.completed.load(Relaxed), 50);
}

#[test]
fn a_replica_that_stops_relaying_hands_new_streams_over_at_once() {
    let Setup { _agent, mut replicas, forwarding, counters } = setup();
    assert_eq!(ask(forwarding.local_addr()).0, "replica-a");
    // A drains (SIGTERM): its relay refuses new streams while its tunnel stays up. Each stream sent to it is
    // reset before it opens and moves to B without waiting.
    let (tunnel_a, relay_a) = replicas[0].take().unwrap();
    drop(relay_a);
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (answer, took) = ask(forwarding.local_addr());
        assert_eq!(answer, "replica-b", "request {i} while A drains");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_millis(500), "a refused stream moved at once, not after 1 s: {slowest:?}");
    assert_eq!(counters.failed.load(Relaxed) + counters.refused.load(Relaxed), 0);
    drop(tunnel_a);
}
