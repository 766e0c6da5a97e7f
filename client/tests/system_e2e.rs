//! The whole system on loopback: the real agent binary with real Traefik, the real client binary reading a
//! manifests folder (the `render -f` input, standing in for the cluster), WireGuard between them in
//! userspace, and HTTP backends as pods. Edits to the manifests change the routing.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn client_and_agent_serve_the_manifests_and_follow_their_edits() {
    let edge = Edge::start("system");
    let dir = edge.dir.clone();
    let web = edge.web;
    let (a, b) = (backend("backend-A"), backend("backend-B"));
    std::fs::write(dir.join("manifests/app.yaml"), manifests("app.test", a)).unwrap();
    let client = edge.client_reading_manifests();
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/x") == "backend-A /x"), "first route live");
    assert_eq!(get(edge.ops, "client", "/healthz"), "ok\n");
    assert!(eventually(Duration::from_secs(5), || get(edge.ops, "client", "/readyz") == "ready\n"));
    let metrics = get(edge.ops, "client", "/metrics");
    assert!(metrics.contains("polaredge_client_agent_in_sync{agent=\"edge\"} 1"), "{metrics}");
    assert!(metrics.contains("polaredge_client_relay_streams_total{outcome=\"completed\"}"), "{metrics}");

    // Idle, neither side burns CPU (the client's tunnel loop once spun a whole core because of its UDP relay
    // port). The bound is loose: a busy loop takes a whole second of CPU each second.
    let (agent_before, client_before) = (edge.agent.cpu_time(), client.cpu_time());
    std::thread::sleep(Duration::from_secs(3));
    let (agent_idle, client_idle) = (edge.agent.cpu_time() - agent_before, client.cpu_time() - client_before);
    assert!(
        agent_idle < Duration::from_millis(300) && client_idle < Duration::from_millis(300),
        "CPU over 3 idle seconds: agent {agent_idle:?}, client {client_idle:?}"
    );

    // An endpoint change moves traffic to the other pod.
    std::fs::write(dir.join("manifests/app.yaml"), manifests("app.test", b)).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || get(web, "app.test", "/y") == "backend-B /y"),
        "endpoint change followed"
    );

    // A host change: the new host routes, the old one is gone.
    std::fs::write(dir.join("manifests/app.yaml"), manifests("renamed.test", b)).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || get(web, "renamed.test", "/") == "backend-B /"),
        "host change followed"
    );
    assert_eq!(get(web, "app.test", "/"), "404");

    // The edge host is rebuilt: the agent restarts with its state wiped. The client's next status check (every
    // 5 s) finds nothing live there; the restarted agent answers the stale session with a new handshake; the
    // client sends its current snapshot again.
    let mut edge = edge;
    drop(std::mem::replace(&mut edge.agent, Proc::spawn(&mut Command::new("true"))));
    std::fs::remove_dir_all(edge.dir.join("state")).unwrap();
    let restarted = std::time::Instant::now();
    edge.agent = Proc::spawn(Command::new(agent_binary()).args(["run", "--config"]).arg(edge.dir.join("agent.yaml")));
    assert!(eventually(Duration::from_secs(20), || get(web, "renamed.test", "/") == "backend-B /"), "routes restored");
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "restored in {took:?}: one status check plus a handshake");
}
