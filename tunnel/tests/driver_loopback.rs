//! Two driver threads talking WireGuard over real UDP sockets on loopback, carrying kernel TCP connections:
//! splice, half-close, refused connects, idle wake-ups, stats, forwarders and the relay inside the driver,
//! hundreds of simultaneous connections, and the connect timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tunnel::{Cidr, CoreConfig, PrivateKey, RelayPolicy, StreamCounters, Tunnel, TunnelConfig};

const AGENT: &str = "10.88.0.1";

fn tunnels() -> (Tunnel, Tunnel) {
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    tunnel::testbed::loopback_pair(
        vec![cidr("10.88.0.1/30"), cidr("fd88::1/64")],
        vec![cidr("10.88.0.2/30"), cidr("fd88::2/64")],
    )
    .unwrap()
}

fn tunnel_addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn spliced_connection_carries_data_both_ways_with_half_close() {
    let (agent, client) = tunnels();
    // The client's side: tunnel port 7000 -> a kernel echo server that uppercases and then half-closes.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let listener = client.listen(7000).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap(); // until the far end half-closes
        conn.write_all(&all.to_ascii_uppercase()).unwrap();
        all.len()
    });
    let relay = std::thread::spawn(move || {
        let stream = listener.accept().unwrap();
        assert_eq!(stream.local_addr(), tunnel_addr("10.88.0.2", 7000));
        stream.splice(TcpStream::connect(server_addr).unwrap()).unwrap().recv().unwrap()
    });
    // The agent's side: a plain blocking stream into the tunnel.
    let mut stream = agent.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| b"abcdefghij"[(i % 10) as usize]).collect();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            stream.write_all(&payload).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(echo.join().unwrap(), payload.len());
    assert_eq!(back, payload.to_ascii_uppercase());
    let outcome = relay.join().unwrap();
    assert!(outcome.clean);
    assert_eq!(outcome.from_tunnel, payload.len() as u64);
    assert_eq!(outcome.to_tunnel, payload.len() as u64);
    let status = client.status().unwrap();
    assert_eq!(status.peer.endpoint, Some(agent.local_addr()));
    assert!(status.peer.last_handshake.is_some());
    assert!(status.peer.rx_bytes >= payload.len() as u64);
}

#[test]
fn connection_over_ipv6_inside_the_tunnel() {
    let (agent, client) = tunnels();
    let listener = agent.listen(9000).unwrap();
    let mut c = client.connect(tunnel_addr("fd88::1", 9000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    let a = listener.accept_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(a.peer_addr().ip().to_string(), "fd88::2");
    let mut a = a.into_io().unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn connecting_to_a_closed_tunnel_port_is_refused() {
    let (_agent, client) = tunnels();
    let err = client.connect(tunnel_addr(AGENT, 9999), Duration::from_secs(5)).err().expect("nobody listens there");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn listening_twice_on_a_port_is_an_error() {
    let (agent, _client) = tunnels();
    let _first = agent.listen(9000).unwrap();
    let err = agent.listen(9000).err().expect("second listener refused");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn an_idle_tunnel_does_not_poll() {
    // The exact figure is measured by the benchmark; this only catches a busy loop creeping back in.
    let (agent, client) = tunnels();
    let listener = agent.listen(9000).unwrap();
    let _c = client.connect(tunnel_addr(AGENT, 9000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    let _a = listener.accept().unwrap().into_io().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = (agent.status().unwrap().wakeups, client.status().unwrap().wakeups);
    std::thread::sleep(Duration::from_secs(2));
    let after = (agent.status().unwrap().wakeups, client.status().unwrap().wakeups);
    // Each status call itself wakes the driver once.
    let per_second = ((after.0 - before.0 - 1) as f64 / 2.0, (after.1 - before.1 - 1) as f64 / 2.0);
    assert!(per_second.0 <= 10.0 && per_second.1 <= 10.0, "idle wake-ups per second: {per_second:?}");
}

#[test]
fn forward_sends_the_preamble_then_splices_and_a_refused_target_closes_the_local_connection() {
    let (agent, client) = tunnels();
    let relay = client.listen(7000).unwrap();
    let pod: SocketAddr = "10.1.2.3:8080".parse().unwrap();
    let relay_side = std::thread::spawn(move || {
        let mut io = relay.accept_timeout(Duration::from_secs(5)).unwrap().into_io().unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        let (target, _) = loop {
            io.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
            if let Some(found) = protocol::relay::decode(&buf).unwrap() {
                break found;
            }
        };
        let mut rest = [0u8; 5];
        io.read_exact(&mut rest).unwrap();
        io.write_all(&rest.to_ascii_uppercase()).unwrap();
        target
    });
    let counters = Arc::new(StreamCounters::default());
    let forwarding = agent
        .forward_from(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            tunnel_addr("10.88.0.2", 7000),
            protocol::relay::encode(pod),
            Arc::clone(&counters),
        )
        .unwrap();
    let mut user = TcpStream::connect(forwarding.local_addr()).unwrap();
    user.write_all(b"hello").unwrap();
    let mut reply = [0u8; 5];
    user.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HELLO");
    assert_eq!(relay_side.join().unwrap(), pod);
    assert_eq!(counters.opened.load(Relaxed), 1);
    // The driver counts right after its write, which the reader may see first.
    wait_for(|| counters.bytes_from_tunnel.load(Relaxed) == 5, "the reply's bytes counted");

    // Nobody listens on tunnel port 7001: the tunnel connection is reset, and the local connection is closed.
    let refused_counters = Arc::new(StreamCounters::default());
    let refused = agent
        .forward_from(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            tunnel_addr("10.88.0.2", 7001),
            protocol::relay::encode(pod),
            Arc::clone(&refused_counters),
        )
        .unwrap();
    let mut user = TcpStream::connect(refused.local_addr()).unwrap();
    let mut buf = [0u8; 1];
    user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(user.read(&mut buf), Ok(0) | Err(_)), "the local side sees the connection end");
    wait_for(|| refused_counters.failed.load(Relaxed) == 1, "the refused stream counted as failed");

    // Dropping the handle closes the kernel listener.
    let address = forwarding.local_addr();
    drop(forwarding);
    wait_for(|| TcpStream::connect(address).is_err(), "the forwarder's listener closed");
}

/// Polls `done` for up to 5 s.
fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An agent that knows an endpoint for its peer where nothing answers (the returned socket): SYNs go out and
/// vanish.
fn agent_with_silent_peer(tune: impl FnOnce(&mut CoreConfig)) -> (Tunnel, std::net::UdpSocket) {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut core = CoreConfig::new(
        PrivateKey::generate(),
        PrivateKey::generate().public_key(),
        vec!["10.88.0.1/30".parse::<Cidr>().unwrap()],
    );
    core.endpoint = Some(silent.local_addr().unwrap());
    tune(&mut core);
    (Tunnel::start(TunnelConfig { core, listen: "127.0.0.1:0".parse().unwrap() }).unwrap(), silent)
}

#[test]
fn a_forwarded_connection_to_a_silent_peer_fails_within_the_connect_timeout() {
    let (agent, _silent) = agent_with_silent_peer(|core| core.tcp.connect_timeout = Duration::from_millis(800));
    let counters = Arc::new(StreamCounters::default());
    let forwarding = agent
        .forward_from(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            tunnel_addr("10.88.0.2", 7000),
            protocol::relay::encode("10.1.2.3:80".parse().unwrap()),
            Arc::clone(&counters),
        )
        .unwrap();
    let started = std::time::Instant::now();
    let mut user = TcpStream::connect(forwarding.local_addr()).unwrap();
    user.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(user.read(&mut buf), Ok(0) | Err(_)), "the local side sees the connection end");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(3), "closed after {took:?}");
    wait_for(|| counters.failed.load(Relaxed) == 1, "the timed-out stream counted as failed");
}

/// The driver's wake-ups per second over 2 s (less the one the second status call itself causes).
fn wakeups_per_second(tunnel: &Tunnel) -> f64 {
    let before = tunnel.status().unwrap().wakeups;
    std::thread::sleep(Duration::from_secs(2));
    (tunnel.status().unwrap().wakeups - before - 1) as f64 / 2.0
}

#[test]
fn a_connect_waiting_for_its_answer_does_not_keep_the_driver_awake() {
    // The connection stays in SYN-SENT, which the driver checks on every round.
    let (agent, _silent) = agent_with_silent_peer(|_| {});
    let agent = Arc::new(agent);
    let waiting = Arc::clone(&agent);
    let connect = std::thread::spawn(move || waiting.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(300));
    let per_second = wakeups_per_second(&agent);
    assert!(per_second <= 10.0, "a waiting connect woke the driver {per_second} times a second");
    assert!(connect.join().unwrap().is_err(), "nobody answered, so the connect failed");
}

#[test]
fn a_relay_stream_waiting_for_its_preamble_does_not_keep_the_driver_awake() {
    let (agent, client) = tunnels();
    let _relay = client
        .relay(7000, Arc::new(Only("127.0.0.1:1".parse().unwrap())), Arc::new(StreamCounters::default()))
        .unwrap();
    // Connected, but the preamble never comes: the relay peeks for it on every round.
    let _quiet = agent.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let per_second = wakeups_per_second(&client);
    assert!(per_second <= 10.0, "a stream waiting for its preamble woke the driver {per_second} times a second");
}

#[test]
fn hundreds_of_simultaneous_forwarded_connections_all_get_through() {
    const N: usize = 600;
    let (agent, client) = tunnels();
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let pod = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay_counters = Arc::new(StreamCounters::default());
    let _relay = client.relay(7000, Arc::new(Only(pod)), Arc::clone(&relay_counters)).unwrap();
    let counters = Arc::new(StreamCounters::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let forwarding = agent
        .forward_from(listener, tunnel_addr("10.88.0.2", 7000), protocol::relay::encode(pod), Arc::clone(&counters))
        .unwrap();
    // Open every connection first (all SYNs in flight together), then talk on each.
    let mut users: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(forwarding.local_addr()).unwrap()).collect();
    for (i, user) in users.iter_mut().enumerate() {
        user.write_all(format!("{i:05}").as_bytes()).unwrap();
    }
    for (i, user) in users.iter_mut().enumerate() {
        user.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reply = [0u8; 5];
        user.read_exact(&mut reply).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(reply, *format!("{i:05}").as_bytes());
    }
    assert_eq!(counters.opened.load(Relaxed), N as u64);
    assert_eq!(relay_counters.opened.load(Relaxed), N as u64);
    assert_eq!(agent.status().unwrap().stats.refused_over_cap, 0);
    assert_eq!(client.status().unwrap().stats.refused_over_cap, 0);
    drop(users);
    wait_for(|| counters.completed.load(Relaxed) == N as u64, "every stream ended cleanly");
    wait_for(|| client.status().unwrap().connections == 0, "the relay forgot every stream");
}

struct Only(SocketAddr);

/// Relays streams whose preamble (POLAREDGE's, `protocol::relay`) names this one target.
impl RelayPolicy for Only {
    fn max_header(&self) -> usize {
        protocol::relay::MAX_LEN
    }
    fn route(&self, head: &[u8]) -> Result<Option<(SocketAddr, usize)>, String> {
        match protocol::relay::decode(head).map_err(|e| e.to_string())? {
            Some((target, _)) if target != self.0 => Err(format!("{target} is not allowed")),
            found => Ok(found),
        }
    }
}

#[test]
fn connecting_before_the_peer_has_shown_up_fails_at_once() {
    let agent = Tunnel::start(TunnelConfig {
        core: CoreConfig::new(
            PrivateKey::generate(),
            PrivateKey::generate().public_key(),
            vec!["10.88.0.1/30".parse::<Cidr>().unwrap()],
        ),
        listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = agent.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(30)).err().expect("no peer yet");
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast, not after the connect timeout");
}

#[test]
fn the_relay_reads_the_preamble_dials_a_permitted_target_and_refuses_the_rest() {
    let (agent, client) = tunnels();
    let pod_server = TcpListener::bind("127.0.0.1:0").unwrap();
    let pod = pod_server.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = pod_server.accept().unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).unwrap();
        conn.write_all(&got.to_ascii_uppercase()).unwrap();
    });
    let counters = Arc::new(StreamCounters::default());
    let _relay = client.relay(7000, Arc::new(Only(pod)), Arc::clone(&counters)).unwrap();
    let mut stream = agent.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    stream.write_all(&protocol::relay::encode(pod)).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HELLO", "the pod got exactly the bytes after the preamble");
    drop(stream);
    wait_for(|| counters.bytes_to_tunnel.load(Relaxed) == 5, "the reply counted");
    assert_eq!(counters.bytes_from_tunnel.load(Relaxed), 5);

    // Refused: junk instead of a preamble, a target the policy does not permit, and (dial_failed) a permitted
    // target where nothing listens.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let policy = Arc::new(Only(closed));
    let refusing = Arc::new(StreamCounters::default());
    let _relay = client.relay(7001, policy, Arc::clone(&refusing)).unwrap();
    let attempts: [&[u8]; 3] =
        [b"GET / HTTP/1.1\r\n\r\n", &protocol::relay::encode(pod), &protocol::relay::encode(closed)];
    for bytes in attempts {
        let mut io = agent.connect(tunnel_addr("10.88.0.2", 7001), Duration::from_secs(5)).unwrap().into_io().unwrap();
        io.write_all(bytes).unwrap();
        io.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(io.read(&mut buf), Ok(0) | Err(_)), "the stream is closed");
    }
    wait_for(|| refusing.refused.load(Relaxed) == 2, "junk and a foreign target refused");
    wait_for(|| refusing.dial_failed.load(Relaxed) == 1, "a closed port counted as a failed dial");
    assert_eq!(refusing.opened.load(Relaxed), 3);
}

#[test]
fn after_the_agent_restarts_the_client_reaches_it_again_within_seconds() {
    let agent_key = PrivateKey::generate();
    let client_key = PrivateKey::generate();
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    let agent_config = TunnelConfig {
        core: CoreConfig::new(agent_key.clone(), client_key.public_key(), vec![cidr("10.88.0.1/30")]),
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let agent = Tunnel::start(agent_config.clone()).unwrap();
    let addr = agent.local_addr();
    let client = Tunnel::start(TunnelConfig {
        core: CoreConfig {
            endpoint: Some(addr),
            persistent_keepalive: Some(25),
            ..CoreConfig::new(client_key, agent_key.public_key(), vec![cidr("10.88.0.2/30")])
        },
        listen: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    let listener = agent.listen(9000).unwrap();
    let _c = client.connect(tunnel_addr(AGENT, 9000), Duration::from_secs(5)).unwrap();
    let _a = listener.accept().unwrap();
    drop((_a, listener, agent));
    // While the agent is down the client tries and fails (its packets go nowhere)...
    assert!(client.connect(tunnel_addr(AGENT, 9000), Duration::from_secs(2)).is_err());
    std::thread::sleep(Duration::from_millis(500));
    // ...then the agent is back with no memory of the session.
    let agent = Tunnel::start(TunnelConfig { listen: addr, ..agent_config }).unwrap();
    let _listener = agent.listen(9000).unwrap();
    let started = std::time::Instant::now();
    let stream = client.connect(tunnel_addr(AGENT, 9000), Duration::from_secs(10));
    assert!(stream.is_ok(), "{:?} after {:?}", stream.err(), started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[test]
fn a_stalled_connection_holding_data_does_not_keep_the_driver_awake() {
    let (agent, client) = tunnels();
    let listener = client.listen(7000).unwrap();
    let mut sender = agent.connect(tunnel_addr("10.88.0.2", 7000), Duration::from_secs(5)).unwrap().into_io().unwrap();
    // The receiving side never reads: its kernel socket fills, the rest stays in the tunnel's buffers, so the
    // buffers cannot be given back when the connection goes quiet.
    let _unread = listener.accept().unwrap().into_io().unwrap();
    sender.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..32 {
        if sender.write_all(&chunk).is_err() {
            break;
        }
    }
    // Past the quiet time (2 s), where the driver tries to release the buffers and finds data held.
    std::thread::sleep(Duration::from_secs(3));
    let before = client.status().unwrap().wakeups;
    std::thread::sleep(Duration::from_secs(2));
    let per_second = (client.status().unwrap().wakeups - before - 1) as f64 / 2.0;
    assert!(per_second <= 10.0, "a stalled connection woke the driver {per_second} times a second");
}
