//! The Gateway API through the whole path: the client watching the in-repo API server (the real list/watch
//! wire protocol, driven by the unmodified kube-rs client), the real agent and Traefik. A cluster without the
//! Gateway API CRDs is served Ingress-only without errors; once the CRDs are installed the client finds them
//! without a restart, serves an HTTPRoute through the edge, and writes the status of the GatewayClass, the
//! Gateway (with the edge's address) and the HTTPRoute; a TCPRoute (Redis) and a UDPRoute (dnsmasq) get
//! public ports at the edge.

mod support;

use std::process::Command;
use std::time::Duration;
use support::apiserver::ApiServer;
use support::*;

fn gateway_api(pod_port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: polaredge, generation: 1}}
spec: {{controllerName: polaredge.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra, generation: 1}}
spec:
  gatewayClassName: polaredge
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: infra, generation: 2}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [gw.test]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: shop, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: infra}}
spec:
  ports: [{{port: 8080, targetPort: {pod_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  namespace: infra
  labels: {{kubernetes.io/service-name: shop}}
addressType: IPv4
ports: [{{port: {pod_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
"#
    )
}

/// A Gateway with a TCP listener on `tcp` (a TCPRoute to Redis on `redis`) and a UDP listener on `udp` (a
/// UDPRoute to dnsmasq on `dns`).
fn l4_gateway(tcp: u16, redis: u16, udp: u16, dns: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: l4, namespace: infra}}
spec:
  gatewayClassName: polaredge
  listeners:
  - {{name: redis, port: {tcp}, protocol: TCP}}
  - {{name: dns, port: {udp}, protocol: UDP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: redis, namespace: infra}}
spec:
  parentRefs: [{{name: l4, sectionName: redis}}]
  rules: [{{backendRefs: [{{name: redis, port: 6379}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {{name: dns, namespace: infra}}
spec:
  parentRefs: [{{name: l4, sectionName: dns}}]
  rules: [{{backendRefs: [{{name: dns, port: 53}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: redis, namespace: infra}}
spec:
  ports: [{{name: redis, port: 6379, targetPort: {redis}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: redis-1
  namespace: infra
  labels: {{kubernetes.io/service-name: redis}}
addressType: IPv4
ports: [{{name: redis, port: {redis}}}]
endpoints:
- addresses: ["127.0.0.1"]
---
apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: infra}}
spec:
  ports: [{{name: dns, port: 53, targetPort: {dns}, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: infra
  labels: {{kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{{name: dns, port: {dns}, protocol: UDP}}]
endpoints:
- addresses: ["127.0.0.1"]
"#
    )
}

/// The condition of `kind` in a list of conditions: (status, reason).
fn condition(list: &serde_json::Value, kind: &str) -> (String, String) {
    let found = list.as_array().into_iter().flatten().find(|c| c["type"] == kind);
    found.map_or_else(Default::default, |c| {
        (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string())
    })
}

fn is_true(list: &serde_json::Value, kind: &str) -> bool {
    condition(list, kind).0 == "True"
}

#[test]
fn gateway_api_resources_are_served_once_their_crds_are_installed_and_get_their_status() {
    let edge = Edge::start("gateway");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    api.apply(&manifests("app.test", backend("ingress-pod")));
    let client = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
            .env("KUBECONFIG", edge.dir.join("kubeconfig"))
            .env("POLAREDGE_GATEWAY_LOOKUP_SECONDS", "1")
            .args(["run", "--config"])
            .arg(edge.dir.join("client.yaml")),
    );
    // No CRDs: Ingresses are served, the group was looked up, none of its collections was asked for.
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "ingress-pod /"), "Ingress served");
    let requests = api.requests();
    assert!(requests.iter().any(|r| r == "/apis/gateway.networking.k8s.io/v1"), "{requests:?}");
    assert!(!requests.iter().any(|r| r.starts_with("/apis/gateway.networking.k8s.io/v1/")), "{requests:?}");
    assert!(client.log().contains("no Gateway API CRDs"), "{}", client.log());
    assert!(!client.log().contains("WARN"), "no warning without the CRDs: {}", client.log());

    // The CRDs arrive with a Gateway and an HTTPRoute: served within seconds, no restart.
    api.install_gateway_api();
    api.apply(&gateway_api(backend("gateway-pod")));
    assert!(
        eventually(Duration::from_secs(30), || get(web, "gw.test", "/x") == "gateway-pod /x"),
        "the HTTPRoute is served through the edge: {}",
        get(web, "gw.test", "/x")
    );
    assert_eq!(get(web, "app.test", "/"), "ingress-pod /", "the Ingress still is");

    // Status, as `kubectl get gateway,httproute` shows it.
    let statuses_written = eventually(Duration::from_secs(15), || {
        let class = api.status_of("GatewayClass", "", "polaredge");
        let gateway = api.status_of("Gateway", "infra", "edge");
        let route = api.status_of("HTTPRoute", "infra", "shop");
        is_true(&class["conditions"], "Accepted")
            && is_true(&gateway["conditions"], "Programmed")
            && gateway["addresses"][0]["value"] == "127.0.0.1"
            && gateway["listeners"][0]["attachedRoutes"] == 1
            && is_true(&route["parents"][0]["conditions"], "Accepted")
            && is_true(&route["parents"][0]["conditions"], "ResolvedRefs")
    });
    assert!(
        statuses_written,
        "class {}\ngateway {}\nroute {}",
        api.status_of("GatewayClass", "", "polaredge"),
        api.status_of("Gateway", "infra", "edge"),
        api.status_of("HTTPRoute", "infra", "shop")
    );
    let route = api.status_of("HTTPRoute", "infra", "shop");
    assert_eq!(route["parents"][0]["controllerName"], "polaredge.io/gateway-controller");
    assert_eq!(route["parents"][0]["conditions"][0]["observedGeneration"], 2);

    // A backendRef to a missing Service: 500 at the edge and ResolvedRefs False on the route.
    api.apply(&gateway_api(1).split("---").nth(2).unwrap().replace("name: shop, port: 8080", "name: gone, port: 8080"));
    assert!(eventually(Duration::from_secs(30), || get(web, "gw.test", "/") == "500"), "{}", get(web, "gw.test", "/"));
    assert!(eventually(Duration::from_secs(15), || {
        condition(&api.status_of("HTTPRoute", "infra", "shop")["parents"][0]["conditions"], "ResolvedRefs")
            == ("False".into(), "BackendNotFound".into())
    }));
    // A TCP listener with a TCPRoute to Redis, and a UDP listener with a UDPRoute to dnsmasq: public ports the
    // agent serves itself.
    let (_redis, redis_port) = testkit::redis_server();
    let (_dns, dns_port) = testkit::dnsmasq("db.gw.test", "192.0.2.7");
    let (tcp_public, udp_public) = (free_tcp(), testkit::free_udp());
    api.apply(&l4_gateway(tcp_public, redis_port, udp_public, dns_port));
    assert!(
        eventually(Duration::from_secs(30), || testkit::redis_cli(tcp_public, &["PING"]) == "PONG"),
        "Redis answers on the TCP listener's port\n{}",
        client.log()
    );
    assert!(
        eventually(Duration::from_secs(30), || testkit::dig(udp_public, "db.gw.test", 1) == ["192.0.2.7"]),
        "dnsmasq answers on the UDP listener's port"
    );
    assert!(eventually(Duration::from_secs(15), || {
        let gateway = api.status_of("Gateway", "infra", "l4");
        gateway["listeners"][0]["attachedRoutes"] == 1
            && gateway["listeners"][1]["attachedRoutes"] == 1
            && is_true(&api.status_of("TCPRoute", "infra", "redis")["parents"][0]["conditions"], "Accepted")
            && is_true(&api.status_of("UDPRoute", "infra", "dns")["parents"][0]["conditions"], "Accepted")
    }));

    // Writing the same status again is not a change: the client does not keep patching.
    std::thread::sleep(Duration::from_secs(2));
    let patches = || api.requests().iter().filter(|r| r.starts_with("PATCH /apis/gateway.networking.k8s.io")).count();
    let before = patches();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(patches(), before, "no status write loop");
    drop(client);
}
