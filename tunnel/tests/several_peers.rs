//! One agent core serving two client replicas at once, each with a key and a tunnel address of its own (sans-IO,
//! in memory, virtual time): both tunnels are up together, connections go to the replica whose address they
//! name, each replica reaches the agent, a stranger's handshake is refused, and a replica that goes silent shows
//! in the agent's peer status.

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::net::SocketAddr;
use tunnel::{Core, CoreConfig, PeerConfig, PrivateKey};

/// `address/prefix` as the tunnel's configuration takes it.
fn cidr(address: IpAddress, prefix: u8) -> tunnel::Cidr {
    tunnel::Cidr::new(address.into(), prefix).unwrap()
}

const AGENT: IpAddress = IpAddress::v4(10, 88, 0, 1);
const REPLICA: [IpAddress; 2] = [IpAddress::v4(10, 88, 0, 2), IpAddress::v4(10, 88, 0, 3)];

fn outer(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 51820))
}

/// The agent (outer address .1) and the replicas (.2 and .3), plus a stranger (.9) holding a key the agent does
/// not know.
struct Net {
    agent: Core,
    replicas: Vec<Core>,
    stranger: Core,
    now: Instant,
    /// Replicas that are gone: what they send is lost, and nothing reaches them.
    dead: Vec<bool>,
}

impl Net {
    fn new() -> Net {
        let agent_key = PrivateKey::generate();
        let keys = [PrivateKey::generate(), PrivateKey::generate(), PrivateKey::generate()];
        let now = Instant::from_millis(0);
        let host = |a: IpAddress| cidr(a, 32);
        let agent_config = CoreConfig {
            peer_allowed_ips: vec![host(REPLICA[0])],
            other_peers: vec![PeerConfig {
                public_key: keys[1].public_key(),
                preshared_key: None,
                persistent_keepalive: None,
                allowed_ips: vec![host(REPLICA[1])],
                endpoint: None,
            }],
            ..CoreConfig::new(agent_key.clone(), keys[0].public_key(), vec![cidr(AGENT, 24)])
        };
        let agent = Core::new(agent_config, 1, now).unwrap();
        let client = |key: &PrivateKey, address: IpAddress, index: u32| {
            let config = CoreConfig {
                endpoint: Some(outer(1)),
                persistent_keepalive: Some(25),
                peer_allowed_ips: vec![host(AGENT)],
                ..CoreConfig::new(key.clone(), agent_key.public_key(), vec![cidr(address, 24)])
            };
            Core::new(config, index, now).unwrap()
        };
        let replicas = vec![client(&keys[0], REPLICA[0], 2), client(&keys[1], REPLICA[1], 3)];
        let stranger = client(&keys[2], IpAddress::v4(10, 88, 0, 9), 4);
        Net { agent, replicas, stranger, now, dead: vec![false, false] }
    }

    /// Moves every datagram until nothing is in flight, then advances time by a millisecond.
    fn step(&mut self) {
        let now = self.now;
        let mut to_agent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for (n, replica) in self.replicas.iter_mut().enumerate() {
            let from = outer(2 + n as u8);
            let dead = self.dead[n];
            replica.poll(now, &mut |_: SocketAddr, d: &[u8]| {
                if !dead {
                    to_agent.push((from, d.to_vec()));
                }
            });
        }
        self.stranger.poll(now, &mut |_: SocketAddr, d: &[u8]| to_agent.push((outer(9), d.to_vec())));
        for _ in 0..64 {
            let mut to_clients: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            for (from, datagram) in to_agent.drain(..) {
                self.agent.handle_datagram(now, from, &datagram, &mut |to: SocketAddr, d: &[u8]| {
                    to_clients.push((to, d.to_vec()))
                });
            }
            self.agent.poll(now, &mut |to: SocketAddr, d: &[u8]| to_clients.push((to, d.to_vec())));
            if to_clients.is_empty() {
                break;
            }
            for (to, datagram) in to_clients {
                let mut reply = |_: SocketAddr, d: &[u8]| to_agent.push((to, d.to_vec()));
                match to {
                    t if t == outer(9) => self.stranger.handle_datagram(now, outer(1), &datagram, &mut reply),
                    t => {
                        let n = usize::from(t.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap() - 2);
                        if !self.dead[n] {
                            self.replicas[n].handle_datagram(now, outer(1), &datagram, &mut reply);
                            self.replicas[n].poll(now, &mut reply);
                        }
                    }
                }
            }
        }
        self.now += Duration::from_millis(1);
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        false
    }
}

fn accepted(core: &mut Core) -> Option<SocketHandle> {
    core.accept().map(|(_, handle)| handle)
}

/// Sends `text` on `from`'s socket and reads it on `to`'s.
fn carries(net: &mut Net, from: (Option<usize>, SocketHandle), to: (Option<usize>, SocketHandle), text: &[u8]) {
    fn core(net: &mut Net, which: Option<usize>) -> &mut Core {
        match which {
            None => &mut net.agent,
            Some(n) => &mut net.replicas[n],
        }
    }
    assert_eq!(core(net, from.0).tcp(from.1).send_slice(text).unwrap(), text.len());
    let mut got = Vec::new();
    assert!(
        net.run_until(Duration::from_secs(2), |net| {
            let socket = core(net, to.0).tcp(to.1);
            while socket.can_recv() {
                socket
                    .recv(|b| {
                        got.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
            }
            got.len() >= text.len()
        }),
        "{text:?} did not arrive"
    );
    assert_eq!(got, text);
}

#[test]
fn an_agent_keeps_every_replicas_tunnel_up_and_reaches_each_by_its_address() {
    let mut net = Net::new();
    // Both replicas keep their tunnel up (keepalive); the agent hears both at once.
    assert!(
        net.run_until(Duration::from_secs(3), |net| net.agent.peers().iter().all(|p| p.last_handshake.is_some())),
        "both replicas completed a handshake: {:?}",
        net.agent.peers()
    );
    let peers = net.agent.peers();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].endpoint, Some(outer(2)));
    assert_eq!(peers[1].endpoint, Some(outer(3)));
    assert_eq!(net.agent.peer_of_address(REPLICA[1]), Some(1));
    assert_eq!(net.agent.peer_of_address(IpAddress::v4(10, 88, 0, 9)), None);

    // The agent connects to each replica's relay by address; each replica answers on its own socket.
    for (n, address) in REPLICA.into_iter().enumerate() {
        net.replicas[n].listen(7000);
        let to_replica = net.agent.connect(IpEndpoint::new(address, 7000)).unwrap();
        let mut on_replica = None;
        assert!(
            net.run_until(Duration::from_secs(2), |net| {
                on_replica = on_replica.or_else(|| accepted(&mut net.replicas[n]));
                on_replica.is_some() && net.agent.tcp(to_replica).state() == State::Established
            }),
            "replica {n} accepted the agent's connection"
        );
        assert!(accepted(&mut net.replicas[1 - n]).is_none(), "the other replica saw nothing");
        let on_replica = on_replica.unwrap();
        carries(&mut net, (None, to_replica), (Some(n), on_replica), b"public request");
        carries(&mut net, (Some(n), on_replica), (None, to_replica), format!("answer of replica {n}").as_bytes());
    }

    // Each replica reaches the agent's API port.
    net.agent.listen(9000);
    for n in 0..2 {
        let upload = net.replicas[n].connect(IpEndpoint::new(AGENT, 9000)).unwrap();
        let mut on_agent = None;
        assert!(net.run_until(Duration::from_secs(2), |net| {
            on_agent = on_agent.or_else(|| accepted(&mut net.agent));
            on_agent.is_some()
        }));
        carries(&mut net, (Some(n), upload), (None, on_agent.unwrap()), b"PUT /upload");
    }

    // A key the agent does not know never gets a session: its initiation (sent with the replicas' at the
    // start; nothing else on this clean link is invalid) was dropped and counted.
    assert!(net.agent.stats().dropped_invalid >= 1, "{:?}", net.agent.stats());
    assert!(net.stranger.peer().last_handshake.is_none(), "the stranger has no session");

    // Replica 0 dies: the agent stops hearing it, while replica 1 still talks. (Keepalives follow boringtun's
    // real clock, which this virtual-time test does not advance, so replica 1 sends data instead.)
    net.dead[0] = true;
    net.run_until(Duration::from_secs(4), |_| false);
    let upload = net.replicas[1].connect(IpEndpoint::new(AGENT, 9000)).unwrap();
    assert!(net.run_until(Duration::from_secs(2), |net| net.replicas[1].tcp(upload).state() == State::Established));
    let peers = net.agent.peers();
    let silent = peers[0].last_received.unwrap();
    let heard = peers[1].last_received.unwrap();
    assert!(silent >= std::time::Duration::from_secs(4), "replica 0 silent for {silent:?}");
    assert!(heard <= std::time::Duration::from_millis(100), "replica 1 heard {heard:?} ago");
}

#[test]
fn several_peers_must_each_name_their_tunnel_addresses() {
    let own = PrivateKey::generate();
    let other = PeerConfig {
        public_key: PrivateKey::generate().public_key(),
        preshared_key: None,
        persistent_keepalive: None,
        allowed_ips: vec![],
        endpoint: None,
    };
    let config = CoreConfig {
        peer_allowed_ips: vec![cidr(REPLICA[0], 32)],
        other_peers: vec![other.clone()],
        ..CoreConfig::new(own.clone(), PrivateKey::generate().public_key(), vec![cidr(AGENT, 24)])
    };
    let error = Core::new(config, 1, Instant::from_millis(0)).err().unwrap();
    assert_eq!(error, tunnel::core::ConfigError::PeerWithoutAllowedIps(1));
    assert!(error.to_string().contains("10.88.0.3/32"), "{error}");
    let config = CoreConfig {
        peer_allowed_ips: vec![cidr(REPLICA[0], 32)],
        other_peers: vec![PeerConfig { allowed_ips: vec![cidr(REPLICA[1], 32)], ..other }; 16],
        ..CoreConfig::new(own, PrivateKey::generate().public_key(), vec![cidr(AGENT, 24)])
    };
    assert_eq!(Core::new(config, 1, Instant::from_millis(0)).err(), Some(tunnel::core::ConfigError::TooManyPeers(17)));
}
