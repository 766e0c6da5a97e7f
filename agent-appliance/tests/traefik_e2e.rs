//! The real agent binary with real Traefik on loopback ports, driven by a test peer that plays the client
//! through a real userspace WireGuard tunnel.

mod support;

use std::time::Duration;
use support::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn an_uploaded_route_serves_through_the_tunnel_and_a_changed_route_is_followed() {
    let setup = Setup::new("route");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    peer.pods.lock().unwrap().insert("10.1.0.2:80".parse().unwrap(), backend("backend-B"));

    let (status, body) = peer.upload(&route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let answer = json(&body);
    assert_eq!(answer["live"], true);
    assert_eq!(http_get(setup.web, "app.test", "/hello"), (200, "backend-A /hello".to_string()));
    assert_eq!(http_get(setup.web, "other.test", "/").0, 404);

    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["live"], true);
    assert_ne!(json(&body)["generation"], answer["generation"]);
    assert_eq!(http_get(setup.web, "app.test", "/x"), (200, "backend-B /x".to_string()));

    // The same upload again is a cheap no-op.
    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)["unchanged"], true);

    let (status, body) = peer.get("/status");
    assert_eq!(status, 200);
    let s = json(&body);
    assert_eq!(s["live"]["confirmed"], true);
    assert_eq!(s["forwarders"].as_array().unwrap().len(), 1, "the old pod's forwarder closed: {s}");
    let (status, metrics) = peer.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"unchanged\"} 1"), "{metrics}");
    assert_eq!(peer.get("/healthz"), (200, "ok\n".to_string()));
}
