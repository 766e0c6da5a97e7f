//! The relay on a real tunnel: an allowed target connects; a target outside the snapshot is refused.

use client::relay::{self, RelayMetrics};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

fn echo_pod() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4];
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(&buf.to_ascii_uppercase());
            }
        }
    });
    addr
}

#[test]
fn allowed_targets_connect_and_others_are_refused() {
    let (agent, client) =
        tunnel::testbed::loopback_pair(vec!["10.88.0.1/30".parse().unwrap()], vec!["10.88.0.2/30".parse().unwrap()])
            .unwrap();
    let allowed_pod = echo_pod();
    let other_pod = echo_pod();
    let allow = Arc::new(RwLock::new([allowed_pod].into_iter().collect()));
    let metrics = Arc::new(RelayMetrics::default());
    let _relay = relay::serve(&client, 7000, allow, Arc::clone(&metrics)).unwrap();
    while agent.status().unwrap().peer.endpoint.is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let through = |pod: SocketAddr| {
        let counters = Arc::new(tunnel::StreamCounters::default());
        let relay: std::net::SocketAddr = "10.88.0.2:7000".parse().unwrap();
        let local = TcpListener::bind("127.0.0.1:0").unwrap();
        let forwarding = agent.forward_from(local, relay, protocol::relay::encode(pod), counters).unwrap();
        let mut user = TcpStream::connect(forwarding.local_addr()).unwrap();
        user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = user.write_all(b"ping");
        let mut reply = Vec::new();
        let _ = user.read_to_end(&mut reply);
        reply
    };
    assert_eq!(through(allowed_pod), b"PING");
    assert_eq!(through(other_pod), b"", "a pod outside the snapshot is never dialed");
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.opened.load(Ordering::Relaxed), 2);
}
