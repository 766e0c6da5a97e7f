//! Services of type LoadBalancer with POLAREDGE's class, end to end: the client watching the in-repo API server
//! (real list/watch protocol) exposes a real Redis (Debian's redis-server, the "pod") on the Service's port at
//! the edge, writes the edge's address into the Service's status, gives a second Service wanting the same port
//! a Warning Event, and closes the port when the Service stops being ours; a UDP Service (Debian's dnsmasq as the
//! pod) answers Debian's dig through the edge, and a Service asking for a port the agent keeps for itself gets a
//! Warning Event naming the agent's reason. The agent and Traefik are real.
//!
//! Where the in-repo API server differs from a real one here: it accepts EndpointSlice addresses in 127.0.0.0/8
//! (a real one refuses them), which is what lets a loopback process stand in for the pod.

mod support;

use std::time::Duration;
use support::apiserver::ApiServer;
use support::*;

fn service(name: &str, created: &str, port: u16, pod_port: u16, class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: data, creationTimestamp: \"{created}\"}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: {class}\n  ports: [{{name: redis, port: {port}, targetPort: {pod_port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: data\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: redis, port: {pod_port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

#[test]
fn a_load_balancer_service_of_our_class_is_served_at_the_edge_with_status_and_conflict_events() {
    let edge = Edge::start("l4-services");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let (_redis, redis_port) = testkit::redis_server();
    // A routed host too, so the snapshot has both kinds.
    api.apply(&manifests("app.test", backend("backend-A")));
    let public = free_tcp();
    api.apply(&service("redis", "2024-01-01T00:00:00Z", public, redis_port, "polaredge.io/edge"));
    let client = edge.client_watching_kubeconfig();
    assert!(
        eventually(Duration::from_secs(30), || testkit::redis_cli(public, &["PING"]) == "PONG"),
        "Redis answers on the Service's port at the edge\n{}",
        client.log()
    );
    assert_eq!(testkit::redis_cli(public, &["SET", "k", "v"]), "OK");
    assert!(
        eventually(Duration::from_secs(10), || get(edge.web, "app.test", "/x") == "backend-A /x"),
        "HTTP routes alongside"
    );
    let ip = |name: &str| api.status_of("Service", "data", name)["loadBalancer"]["ingress"].clone();
    assert!(eventually(Duration::from_secs(10), || ip("redis")[0]["ip"] == "127.0.0.1"), "status: {}", ip("redis"));

    // A newer Service wanting the same port: the older keeps it; the newer gets a Warning Event.
    api.apply(&service("copy", "2024-06-01T00:00:00Z", public, redis_port, "polaredge.io/edge"));
    let conflict = || {
        api.events().iter().any(|e| {
            e["reason"] == "PortConflict"
                && e["regarding"]["kind"] == "Service"
                && e["regarding"]["name"] == "copy"
                && e["regarding"]["uid"] == "uid-Service-data-copy"
        })
    };
    assert!(eventually(Duration::from_secs(10), conflict), "events: {:?}", api.events());
    assert!(ip("copy").is_null() || ip("copy").as_array().is_some_and(|a| a.is_empty()), "{}", ip("copy"));

    // Another class: no longer ours. The port closes and the address leaves its status.
    api.apply(&service("redis", "2024-01-01T00:00:00Z", public, redis_port, "other.io/lb"));
    api.delete("Service", "data", "copy");
    assert!(
        eventually(Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", public)).is_err()),
        "the port closed\n{}",
        client.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || ip("redis").as_array().is_some_and(|a| a.is_empty())),
        "{}",
        ip("redis")
    );
}

/// A DNS Service `name`: UDP `port` at the edge to a dnsmasq "pod" on loopback `pod_port`.
fn dns_service(name: &str, port: u16, pod_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: net, creationTimestamp: \"2024-01-01T00:00:00Z\"}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: polaredge.io/edge\n  ports: [{{name: dns-udp, port: {port}, targetPort: {pod_port}, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: net\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: dns-udp, port: {pod_port}, protocol: UDP}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

#[test]
fn a_udp_service_of_our_class_answers_through_the_edge() {
    let edge = Edge::start("l4-udp-services");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let (_dnsmasq, dns_port) = testkit::dnsmasq("db.cluster.test", "198.51.100.20");
    let public = testkit::free_udp();
    api.apply(&dns_service("dns", public, dns_port));
    // A port the agent keeps for itself that the client cannot know of (its web entrypoint, on a port of the
    // test's choosing): the agent withholds it, and the Service gets a Warning Event saying so.
    api.apply(&dns_service("grab", edge.web.port(), dns_port));
    let client = edge.client_watching_kubeconfig();
    assert!(
        eventually(Duration::from_secs(30), || testkit::dig(public, "db.cluster.test", 1) == ["198.51.100.20"]),
        "dnsmasq answers dig on the Service's UDP port at the edge\n{}",
        client.log()
    );
    let answered = (0..20).filter(|_| testkit::dig(public, "db.cluster.test", 2) == ["198.51.100.20"]).count();
    assert_eq!(answered, 20, "{}", client.log());
    let withheld = || {
        api.events().iter().any(|e| {
            e["reason"] == "PortWithheld"
                && e["type"] == "Warning"
                && e["regarding"]["name"] == "grab"
                && e["note"].as_str().is_some_and(|m| m.contains(&format!("port {}/UDP", edge.web.port())))
        })
    };
    assert!(eventually(Duration::from_secs(10), withheld), "events: {:?}\n{}", api.events(), client.log());
    let status = api.status_of("Service", "net", "dns");
    assert!(
        eventually(Duration::from_secs(10), || api.status_of("Service", "net", "dns")["loadBalancer"]["ingress"][0]
            ["ip"]
            == "127.0.0.1"),
        "{status}"
    );
    // The Service goes: the port closes.
    api.delete("Service", "net", "dns");
    assert!(
        eventually(Duration::from_secs(15), || testkit::dig(public, "db.cluster.test", 1).is_empty()),
        "the UDP port closed\n{}",
        client.log()
    );
}
