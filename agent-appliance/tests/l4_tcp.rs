//! Public TCP ports for Services of type LoadBalancer, served by the agent itself: a real Redis server (Debian's
//! redis-server) through the edge with its own client, connections spread over the pods, the PROXY protocol
//! header (v1 and v2) carrying the public client's address to a PROXY-aware pod, a port another process holds
//! refused with the last good config kept, ports that leave the snapshot closed, and a port the edge keeps for
//! itself withheld while the rest is served.

mod support;

use protocol::api::Transport;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use support::*;

fn free_port() -> u16 {
    testkit::free_port()
}

/// A snapshot with no HTTP routes and these TCP ports: (port, service, pods, PROXY version).
fn l4(ports: &[(u16, &str, &[&str], Option<u8>)]) -> String {
    let tcp: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .map(|(port, service, pods, proxy)| {
            let mut entry = serde_json::json!({"service": service, "servers": pods});
            if let Some(v) = proxy {
                entry["proxyProtocol"] = serde_json::json!(v);
            }
            (port.to_string(), entry)
        })
        .collect();
    serde_json::json!({"http": {}, "l4": {"tcp": tcp}}).to_string()
}

/// A PROXY-aware pod: reads the header, answers with the client address it names, then closes.
fn proxy_aware_pod() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                let answer = loop {
                    match protocol::proxy::parse(&buf) {
                        Ok(Some((client, _))) => break format!("client {client:?}"),
                        Ok(None) => {}
                        Err(e) => break format!("no PROXY header: {e}"),
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let _ = conn.write_all(answer.as_bytes());
            });
        }
    });
    addr
}

fn ask(port: u16) -> (String, SocketAddr) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = conn.local_addr().unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    (answer, me)
}

#[test]
fn tcp_services_are_served_on_their_own_ports_with_the_real_client_address_on_request() {
    let setup = Setup::new("l4");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    // A real Redis as the pod behind a LoadBalancer Service.
    let (_redis, redis_port) = testkit::redis_server();
    let proxy_pod = proxy_aware_pod();
    {
        let mut pods = peer.pods.lock().unwrap();
        pods.insert("10.1.0.6:6379".parse().unwrap(), SocketAddr::from(([127, 0, 0, 1], redis_port)));
        pods.insert("10.1.0.7:9000".parse().unwrap(), proxy_pod);
        pods.insert("10.1.0.8:9000".parse().unwrap(), proxy_pod);
    }
    let (redis, proxied, v1) = (free_port(), free_port(), free_port());
    let (status, body) = peer.upload(&l4(&[
        (redis, "data/redis", &["10.1.0.6:6379"], None),
        (proxied, "apps/echo", &["10.1.0.7:9000", "10.1.0.8:9000"], Some(2)),
        (v1, "apps/echo-v1", &["10.1.0.7:9000"], Some(1)),
    ]));
    assert_eq!(status, 200, "{body}\n{}", agent.log());

    assert!(eventually(Duration::from_secs(10), || testkit::redis_cli(redis, &["PING"]) == "PONG"), "{}", agent.log());
    assert_eq!(testkit::redis_cli(redis, &["SET", "edge", "polaredge"]), "OK");
    assert_eq!(testkit::redis_cli(redis, &["GET", "edge"]), "polaredge");

    // The pod sees the address the public client connected from, not the relay's.
    for port in [proxied, v1] {
        let (answer, me) = ask(port);
        assert_eq!(answer, format!("client Some({me})"), "port {port}");
    }

    let s: protocol::api::Status = serde_json::from_str(&peer.get("/status").1).unwrap();
    let ports: Vec<(u16, &str)> = s.l4.iter().map(|p| (p.port, p.service.as_str())).collect();
    assert!(ports.contains(&(redis, "data/redis")) && ports.len() == 3, "{ports:?}");

    // A port another process holds: refused, and the last good config (all three ports) keeps serving.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (status, body) = peer.upload(&l4(&[(taken_port, "x/y", &["10.1.0.6:6379"], None)]));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(&format!("cannot serve TCP port {taken_port} for Service x/y")), "{body}");
    assert_eq!(testkit::redis_cli(redis, &["PING"]), "PONG");

    // Only Redis stays: the other ports close; Redis's connection survives the change.
    let mut held = TcpStream::connect(("127.0.0.1", redis)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, body) = peer.upload(&l4(&[(redis, "data/redis", &["10.1.0.6:6379"], None)]));
    assert_eq!(status, 200, "{body}");
    assert!(TcpStream::connect(("127.0.0.1", proxied)).is_err(), "a port that left the snapshot is closed");
    held.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 7];
    held.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+PONG\r\n", "a connection open across the change keeps working");
    let (_, metrics) = peer.get("/metrics");
    assert!(metrics.contains("polaredge_l4_ports{transport=\"tcp\"} 1"), "{metrics}");

    // A Service asking for a port the edge keeps for itself (here its web entrypoint) is left out and named;
    // the rest of the snapshot is served.
    let web = setup.web.port();
    let (status, body) = peer.upload(&l4(&[
        (redis, "data/redis", &["10.1.0.6:6379"], None),
        (web, "shop/grab-80", &["10.1.0.6:6379"], None),
    ]));
    assert_eq!(status, 200, "{body}");
    let answer: protocol::api::UploadAnswer = serde_json::from_str(&body).unwrap();
    assert!(answer.live, "{body}");
    assert_eq!(answer.withheld.len(), 1, "{body}");
    let withheld = &answer.withheld[0];
    assert_eq!((withheld.transport, withheld.port, withheld.service.as_str()), (Transport::Tcp, web, "shop/grab-80"));
    assert!(withheld.reason.contains("the edge's own"), "{body}");
    assert_eq!(testkit::redis_cli(redis, &["PING"]), "PONG");
    let s: protocol::api::Status = serde_json::from_str(&peer.get("/status").1).unwrap();
    assert_eq!(s.live.unwrap().withheld, answer.withheld);
    assert_eq!(s.l4.iter().map(|p| p.port).collect::<Vec<_>>(), [redis]);
}
