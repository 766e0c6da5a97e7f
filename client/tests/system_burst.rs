//! A burst through the whole system on loopback: the real agent with real Traefik, the real client, the
//! userspace WireGuard tunnel between them, and an HTTP backend as the pod. Hundreds of connections are open
//! at the same moment; every request must be answered 200 by the pod (none reset, none 502).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const SIMULTANEOUS: usize = 600;

#[test]
fn hundreds_of_simultaneous_connections_through_the_edge_all_get_200() {
    let edge = Edge::start("burst");
    let pod = backend("burst-pod");
    std::fs::write(edge.dir.join("manifests/app.yaml"), manifests("burst.test", pod)).unwrap();
    let client = edge.client_reading_manifests();
    assert!(
        eventually(Duration::from_secs(30), || get(edge.web, "burst.test", "/") == "burst-pod /"),
        "route live\n{}",
        client.log()
    );
    // Every connection is open before the first request goes out, so Traefik dials the forwarder hundreds of
    // times at once and the tunnel sees that many connection requests together.
    let mut conns: Vec<TcpStream> = (0..SIMULTANEOUS)
        .map(|i| TcpStream::connect(edge.web).unwrap_or_else(|e| panic!("connection {i} to Traefik: {e}")))
        .collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(conn, "GET /{i} HTTP/1.1\r\nHost: burst.test\r\nConnection: close\r\n\r\n").unwrap();
    }
    let mut failures = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let expected = format!("burst-pod /{i}");
        if !(answer.starts_with("HTTP/1.1 200") && answer.ends_with(&expected)) {
            failures.push(format!("{i}: {:?}", answer.lines().next().unwrap_or("no answer")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SIMULTANEOUS} requests failed: {:?}\nclient:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        client.log()
    );
    let metrics = get(edge.ops, "client", "/metrics");
    let streams = |outcome: &str| -> u64 {
        let key = format!("polaredge_client_relay_streams_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    assert_eq!(streams("refused") + streams("dial_failed") + streams("failed"), 0, "{metrics}");
    assert!(streams("accepted") >= SIMULTANEOUS as u64 / 2, "Traefik used many backend connections: {metrics}");
}
