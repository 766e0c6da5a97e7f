//! Public UDP ports for Services of type LoadBalancer, served by the agent itself: a real DNS server (Debian's
//! dnsmasq) through the edge answering a real client (Debian's dig), beside a TCP port of the same number; the
//! flows and datagrams counted in /metrics, the port named in /status, a port the edge keeps for itself (its
//! WireGuard port) withheld, and the port closed when it leaves the snapshot.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// A snapshot with no HTTP routes and these UDP ports: (port, service, pods), plus TCP ports.
fn l4(udp: &[(u16, &str, &[&str])], tcp: &[(u16, &str, &[&str])]) -> String {
    let section = |ports: &[(u16, &str, &[&str])]| -> serde_json::Map<String, serde_json::Value> {
        ports
            .iter()
            .map(|(port, service, pods)| (port.to_string(), serde_json::json!({"service": service, "servers": pods})))
            .collect()
    };
    serde_json::json!({"http": {}, "l4": {"udp": section(udp), "tcp": section(tcp)}}).to_string()
}

#[test]
fn a_dns_server_answers_through_the_edge_on_a_udp_port() {
    let setup = Setup::new("l4-udp");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    let (_dnsmasq, dns_port) = testkit::dnsmasq("shop.edge.test", "192.0.2.7");
    let (_redis, redis_port) = testkit::redis_server();
    {
        let mut pods = peer.pods.lock().unwrap();
        pods.insert("10.1.0.53:53".parse().unwrap(), SocketAddr::from(([127, 0, 0, 1], dns_port)));
        pods.insert("10.1.0.6:6379".parse().unwrap(), SocketAddr::from(([127, 0, 0, 1], redis_port)));
    }
    // The same number for a UDP and a TCP port, as DNS does; and the edge's own WireGuard port, withheld.
    let public = testkit::free_port();
    let (status, body) = peer.upload(&l4(
        &[(public, "dns/dnsmasq", &["10.1.0.53:53"]), (setup.udp.port(), "x/wants-wireguard", &["10.1.0.53:53"])],
        &[(public, "data/redis", &["10.1.0.6:6379"])],
    ));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let answer = json(&body);
    let withheld = answer["withheld"].to_string();
    assert!(withheld.contains(&format!("\"port\":{}", setup.udp.port())) && withheld.contains("\"udp\""), "{withheld}");

    let resolved = eventually(Duration::from_secs(10), || testkit::dig(public, "shop.edge.test", 2) == ["192.0.2.7"]);
    assert!(resolved, "no DNS answer through the edge\n{}", agent.log());
    // Many queries, each from a new client port (a new flow): all answered.
    let answered = (0..30).filter(|_| testkit::dig(public, "shop.edge.test", 2) == ["192.0.2.7"]).count();
    assert_eq!(answered, 30, "{}", agent.log());
    assert_eq!(testkit::redis_cli(public, &["PING"]), "PONG", "TCP on the same number");

    let (_, status) = peer.get("/status");
    let status = json(&status);
    let ports: Vec<String> =
        status["l4"].as_array().unwrap().iter().map(|p| format!("{}/{}", p["port"], p["transport"])).collect();
    assert_eq!(ports, [format!("{public}/\"tcp\""), format!("{public}/\"udp\"")]);
    let (_, metrics) = peer.get("/metrics");
    assert!(metrics.contains("polaredge_l4_ports{transport=\"udp\"} 1"), "{metrics}");
    let opened = metric(&metrics, "polaredge_l4_udp_flows_total{outcome=\"opened\"}");
    assert!(opened >= 31, "{metrics}");
    assert!(metric(&metrics, "polaredge_l4_udp_datagrams_total{direction=\"out\"}") >= 31, "{metrics}");
    assert!(peer.udp.flows_opened.load(std::sync::atomic::Ordering::Relaxed) >= 31);

    // The port leaves the snapshot: it closes, the TCP port of that number stays.
    let (status, body) = peer.upload(&l4(&[], &[(public, "data/redis", &["10.1.0.6:6379"])]));
    assert_eq!(status, 200, "{body}");
    assert!(testkit::dig(public, "shop.edge.test", 1).is_empty(), "the UDP port is closed");
    assert_eq!(testkit::redis_cli(public, &["PING"]), "PONG");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
