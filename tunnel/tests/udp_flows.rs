//! UDP flows through two driver threads on loopback: an exposed kernel UDP port on the "agent", a UDP relay port
//! on the "client", kernel UDP servers as the targets. Answers reach the right public client, the relay refuses
//! targets its policy does not permit, the flow cap and the idle timeout hold, oversized datagrams are counted.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunnel::{Cidr, FlowCounters, Tunnel, UdpTuning};

const RELAY: &str = "10.88.0.2:7000";

fn tunnels(udp: UdpTuning) -> (Tunnel, Tunnel) {
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    tunnel::testbed::loopback_pair_with(vec![cidr("10.88.0.1/30")], vec![cidr("10.88.0.2/30")], |core| {
        core.udp = udp.clone()
    })
    .unwrap()
}

/// A UDP server that answers every datagram with `<its own name>:<the datagram>`.
fn echo(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut answer = format!("{name}:").into_bytes();
            answer.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&answer, from);
        }
    });
    addr
}

fn public_client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket
}

fn ask(client: &UdpSocket, port: SocketAddr, question: &[u8]) -> Option<Vec<u8>> {
    client.send_to(question, port).unwrap();
    let mut buf = [0u8; 65536];
    client.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn wait_for(check: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_public_client_is_a_flow_answered_by_its_target() {
    let (agent, client) = tunnels(UdpTuning::default());
    let (a, b) = (echo("a"), echo("b"));
    let relay_counters = Arc::new(FlowCounters::default());
    let _relay = client
        .relay_udp(7000, Arc::new(move |t| (t == a || t == b).then_some(t)), Arc::clone(&relay_counters))
        .unwrap();
    // New flows go to the two targets in turn.
    let turn = Arc::new(Mutex::new(0usize));
    let pick = move |_client: SocketAddr| {
        let mut turn = turn.lock().unwrap();
        *turn += 1;
        Some(if *turn % 2 == 1 { a } else { b })
    };
    let counters = Arc::new(FlowCounters::default());
    let public = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exposure = agent.expose_udp(public, RELAY.parse().unwrap(), Arc::new(pick), Arc::clone(&counters)).unwrap();
    let port = exposure.local_addr();
    let (first, second) = (public_client(), public_client());
    assert_eq!(ask(&first, port, b"hello").as_deref(), Some(&b"a:hello"[..]));
    assert_eq!(ask(&second, port, b"hi").as_deref(), Some(&b"b:hi"[..]));
    // A flow keeps its target.
    for i in 0..20 {
        let question = format!("q{i}");
        assert_eq!(ask(&first, port, question.as_bytes()), Some(format!("a:{question}").into_bytes()));
    }
    // The largest payload a tunnel packet carries (MTU 1420, less IPv6 + UDP + the longest frame header) goes
    // through; one byte more is dropped and counted.
    let largest = 1420 - 48 - tunnel::flow::MAX_HEADER;
    let big = vec![b'x'; largest - 2]; // the answer is 2 bytes longer ("a:")
    assert_eq!(ask(&first, port, &big).map(|a| a.len()), Some(largest));
    first.send_to(&vec![b'x'; largest + 1], port).unwrap();
    wait_for(|| counters.too_large.load(Relaxed) == 1, "the oversized datagram counted");
    assert_eq!(counters.flows_opened.load(Relaxed), 2);
    assert_eq!(relay_counters.flows_opened.load(Relaxed), 2);
    assert_eq!(counters.datagrams_to_tunnel.load(Relaxed), 23);
    assert_eq!(counters.datagrams_from_tunnel.load(Relaxed), 23);
    assert_eq!(relay_counters.datagrams_to_tunnel.load(Relaxed), 23);
    assert_eq!(agent.status().unwrap().udp_flows, (2, 0));
    assert_eq!(client.status().unwrap().udp_flows, (0, 2));
    // Closing the exposure ends its flows.
    drop(exposure);
    wait_for(|| agent.status().unwrap().udp_flows == (0, 0), "the exposure's flows ended");
}

#[test]
fn the_relay_refuses_targets_it_does_not_permit_and_the_cap_holds() {
    let (agent, client) = tunnels(UdpTuning { max_flows: 2, ..UdpTuning::default() });
    let (allowed, forbidden) = (echo("ok"), echo("no"));
    let relay_counters = Arc::new(FlowCounters::default());
    let _relay =
        client.relay_udp(7000, Arc::new(move |t| (t == allowed).then_some(t)), Arc::clone(&relay_counters)).unwrap();
    // The first public client is sent to a target the relay does not permit (a compromised edge would).
    let first_seen = Arc::new(Mutex::new(None::<SocketAddr>));
    let pick = {
        let first_seen = Arc::clone(&first_seen);
        move |c: SocketAddr| {
            let mut first = first_seen.lock().unwrap();
            Some(if first.get_or_insert(c) == &c { forbidden } else { allowed })
        }
    };
    let counters = Arc::new(FlowCounters::default());
    let public = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exposure = agent.expose_udp(public, RELAY.parse().unwrap(), Arc::new(pick), Arc::clone(&counters)).unwrap();
    let port = exposure.local_addr();
    let clients: Vec<UdpSocket> = (0..3).map(|_| public_client()).collect();
    assert_eq!(ask(&clients[0], port, b"x"), None, "no answer from a forbidden target");
    wait_for(|| relay_counters.flows_refused.load(Relaxed) == 1, "the relay counted the refusal");
    assert_eq!(ask(&clients[1], port, b"y").as_deref(), Some(&b"ok:y"[..]));
    // Two flows exist on the agent (the refused one is still a flow there): a third client is over the cap.
    assert_eq!(ask(&clients[2], port, b"z"), None);
    assert_eq!(counters.flows_over_cap.load(Relaxed), 1);
    assert_eq!(relay_counters.flows_opened.load(Relaxed), 1);
}

#[test]
fn idle_flows_end_and_free_their_place() {
    let (agent, client) =
        tunnels(UdpTuning { max_flows: 1, idle_timeout: Duration::from_secs(2), ..Default::default() });
    let target = echo("t");
    let relay_counters = Arc::new(FlowCounters::default());
    let _relay =
        client.relay_udp(7000, Arc::new(move |t| (t == target).then_some(t)), Arc::clone(&relay_counters)).unwrap();
    let counters = Arc::new(FlowCounters::default());
    let public = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exposure =
        agent.expose_udp(public, RELAY.parse().unwrap(), Arc::new(move |_| Some(target)), Arc::clone(&counters));
    let port = exposure.as_ref().unwrap().local_addr();
    let (first, second) = (public_client(), public_client());
    assert_eq!(ask(&first, port, b"1").as_deref(), Some(&b"t:1"[..]));
    assert_eq!(ask(&second, port, b"2"), None, "one flow at most");
    wait_for(|| agent.status().unwrap().udp_flows == (0, 0), "the agent's flow expired");
    wait_for(|| client.status().unwrap().udp_flows == (0, 0), "the relay's flow expired");
    assert_eq!(ask(&second, port, b"3").as_deref(), Some(&b"t:3"[..]), "room for a new flow");
    assert_eq!(counters.flows_expired.load(Relaxed), 1);
    assert_eq!(relay_counters.flows_expired.load(Relaxed), 1);
}

#[test]
fn open_udp_ports_do_not_keep_an_idle_driver_awake() {
    // Looking at a UDP socket for datagrams must not schedule it for the next poll: a relay port (client) or an
    // exposure (agent) doing so made the driver spin at 100% CPU with nothing to do.
    let (agent, client) = tunnels(UdpTuning::default());
    let target = echo("t");
    let relay_counters = Arc::new(FlowCounters::default());
    let _relay = client.relay_udp(7000, Arc::new(move |t| (t == target).then_some(t)), relay_counters).unwrap();
    let counters = Arc::new(FlowCounters::default());
    let public = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exposure = agent.expose_udp(public, RELAY.parse().unwrap(), Arc::new(move |_| Some(target)), counters).unwrap();
    // One flow through, so both sides have polled their UDP sockets at least once.
    assert_eq!(ask(&public_client(), exposure.local_addr(), b"x").as_deref(), Some(&b"t:x"[..]));
    std::thread::sleep(Duration::from_millis(300));
    let before = (agent.status().unwrap().wakeups, client.status().unwrap().wakeups);
    std::thread::sleep(Duration::from_secs(2));
    let after = (agent.status().unwrap().wakeups, client.status().unwrap().wakeups);
    // Each status call itself wakes the driver once; the flow's idle sweep a few times.
    let per_second = ((after.0 - before.0 - 1) as f64 / 2.0, (after.1 - before.1 - 1) as f64 / 2.0);
    assert!(per_second.0 <= 10.0 && per_second.1 <= 10.0, "idle wake-ups per second (agent, client): {per_second:?}");
}
