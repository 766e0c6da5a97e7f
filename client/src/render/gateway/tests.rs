//! The planner over cases derived from the Gateway API conformance suite's HTTPRoute and Gateway tests: what
//! attaches where, the status each object gets, and the routers, services and middlewares that result. The
//! routing itself is proved in real Traefik by client/tests/gateway_routing.rs.

use super::conditions::{Condition, ParentStatus};
use crate::manifests::add_yaml;
use crate::render::{render, Cluster, Rendered, Settings};
use routes::model;

const INFRA: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: polaredge, generation: 1}
spec: {controllerName: polaredge.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace, namespace: infra, generation: 2, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-namespaces, namespace: infra, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: infra}
spec:
  gatewayClassName: other
  listeners:
  - {name: http, port: 80, protocol: HTTP}
";

fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{port: 8080, targetPort: 3000}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{port: 3000}}]\nendpoints:\n- addresses: [\"{ip}\"]\n"
    )
}

fn route(ns: &str, name: &str, created: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, generation: 5, creationTimestamp: '{created}'}}\nspec:\n{spec}"
    )
}

fn rendered(yaml: &str) -> Rendered {
    let mut c = Cluster::default();
    add_yaml(&mut c, INFRA, "infra").unwrap();
    add_yaml(&mut c, &service("infra", "infra-backend-v1", "10.0.0.1"), "svc").unwrap();
    add_yaml(&mut c, &service("infra", "infra-backend-v2", "10.0.0.2"), "svc").unwrap();
    add_yaml(&mut c, &service("app", "web-backend", "10.0.1.1"), "svc").unwrap();
    add_yaml(&mut c, yaml, "test").unwrap();
    let out = render(&c, &Settings { now: || 1_796_000_000, ..Settings::default() });
    let policy = routes::Policy {
        entry_points: ["web".to_string(), "websecure".to_string()].into(),
        cert_resolvers: ["acme".to_string()].into(),
        now: || 1_796_000_000,
        ..routes::Policy::default()
    };
    routes::parse(&out.document, &policy).expect("the agent accepts every rendering");
    out
}

fn parents(r: &Rendered, ns: &str, name: &str) -> Vec<ParentStatus> {
    r.gateway.routes.iter().find(|s| s.namespace == ns && s.name == name).expect("a route status").parents.clone()
}

fn condition<'a>(list: &'a [Condition], kind: &str) -> &'a Condition {
    list.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind} in {list:?}"))
}

fn http(r: &Rendered) -> model::Http {
    r.config().http.unwrap()
}

fn gateway_routers(r: &Rendered) -> Vec<model::HttpRouter> {
    let mut list: Vec<model::HttpRouter> =
        http(r).routers.into_iter().filter(|(name, _)| name.starts_with("gw-")).map(|(_, r)| r).collect();
    list.sort_by_key(|r| std::cmp::Reverse(r.priority));
    list
}

const TO_SAME: &str = "  parentRefs: [{name: same-namespace, namespace: infra}]\n";

#[test]
fn simple_same_namespace_route_attaches_and_routes_to_its_backend() {
    let r = rendered(&route(
        "infra",
        "gateway-conformance-infra-test",
        "2024-02-01T00:00:00Z",
        &format!("{TO_SAME}  rules:\n  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"),
    ));
    let p = parents(&r, "infra", "gateway-conformance-infra-test");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].parent_ref["name"], "same-namespace");
    assert!(condition(&p[0].conditions, "Accepted").status);
    assert!(condition(&p[0].conditions, "ResolvedRefs").status);
    let routers = gateway_routers(&r);
    assert_eq!(routers.len(), 1);
    assert_eq!(routers[0].rule, "PathPrefix(`/`)");
    assert_eq!(routers[0].entry_points, vec!["web".to_string()]);
    assert_eq!(http(&r).services[&routers[0].service].servers()[0].url, "http://10.0.0.1:3000");
    assert!(r.endpoints.contains(&"10.0.0.1:3000".parse().unwrap()), "the relay allows the pod");
    let gateway = r.gateway.gateways.iter().find(|g| g.name == "same-namespace").unwrap();
    assert!(condition(&gateway.conditions, "Accepted").status && condition(&gateway.conditions, "Programmed").status);
    assert_eq!(gateway.listeners[0].attached_routes, 1);
    assert_eq!(gateway.listeners[0].supported_kinds, vec!["HTTPRoute", "GRPCRoute"]);
    assert_eq!(r.gateway.classes.len(), 1, "only our class gets a status");
    assert!(!r.gateway.gateways.iter().any(|g| g.name == "foreign"));
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let spec = format!("{TO_SAME}  rules:\n  - backendRefs: [{{name: web-backend, namespace: app, port: 8080}}]\n");
    let r = rendered(&route("infra", "cross", "2024-02-01T00:00:00Z", &spec));
    let p = parents(&r, "infra", "cross");
    assert!(condition(&p[0].conditions, "Accepted").status);
    let refs = condition(&p[0].conditions, "ResolvedRefs");
    assert_eq!((refs.status, refs.reason), (false, "RefNotPermitted"));
    let routers = gateway_routers(&r);
    assert_eq!(routers[0].service, super::INVALID_BACKEND);
    assert_eq!(routers[0].middlewares, vec![super::INVALID_BACKEND_500.to_string()], "answers 500");
    assert!(!r.endpoints.contains(&"10.0.1.1:3000".parse().unwrap()), "never routed, never allowed");

    let grant = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: app}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]\n  to: [{group: '', kind: Service}]\n";
    let r = rendered(&format!("{}{grant}", route("infra", "cross", "2024-02-01T00:00:00Z", &spec)));
    assert!(condition(&parents(&r, "infra", "cross")[0].conditions, "ResolvedRefs").status);
    assert_eq!(http(&r).services[&gateway_routers(&r)[0].service].servers()[0].url, "http://10.0.1.1:3000");
}

#[test]
fn listeners_admit_routes_by_namespace_and_hostname() {
    // A route from another namespace on a listener that admits its own namespace only.
    let r = rendered(&route(
        "app",
        "outsider",
        "2024-02-01T00:00:00Z",
        &format!("{TO_SAME}  rules:\n  - backendRefs: [{{name: web-backend, port: 8080}}]\n"),
    ));
    let accepted = condition(&parents(&r, "app", "outsider")[0].conditions, "Accepted").clone();
    assert_eq!((accepted.status, accepted.reason), (false, "NotAllowedByListeners"));
    assert!(gateway_routers(&r).is_empty());
    // The wildcard listener takes the route's matching names only; none matching: not accepted.
    let to_all = "  parentRefs: [{name: all-namespaces, namespace: infra}]\n";
    let r = rendered(&route(
        "app",
        "hosts",
        "2024-02-01T00:00:00Z",
        &format!("{to_all}  hostnames: [a.example.com, example.com, b.other.org]\n  rules:\n  - backendRefs: [{{name: web-backend, port: 8080}}]\n"),
    ));
    let routers = gateway_routers(&r);
    assert_eq!(routers.len(), 1);
    assert_eq!(routers[0].rule, "Host(`a.example.com`) && PathPrefix(`/`)");
    let r = rendered(&route(
        "app",
        "hosts",
        "2024-02-01T00:00:00Z",
        &format!(
            "{to_all}  hostnames: [example.com]\n  rules:\n  - backendRefs: [{{name: web-backend, port: 8080}}]\n"
        ),
    ));
    let accepted = condition(&parents(&r, "app", "hosts")[0].conditions, "Accepted").clone();
    assert_eq!((accepted.status, accepted.reason), (false, "NoMatchingListenerHostname"));
    // A sectionName that names no listener.
    let r = rendered(&route(
        "infra",
        "section",
        "2024-02-01T00:00:00Z",
        "  parentRefs: [{name: same-namespace, sectionName: nope}]\n  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
    ));
    assert_eq!(condition(&parents(&r, "infra", "section")[0].conditions, "Accepted").reason, "NoMatchingParent");
    // A route to another controller's Gateway gets no status from us.
    let r = rendered(&route("infra", "theirs", "2024-02-01T00:00:00Z", "  parentRefs: [{name: foreign}]\n"));
    assert!(r.gateway.routes.is_empty());
}

#[test]
fn weights_split_and_missing_backends_answer_500() {
    let spec = format!(
        "{TO_SAME}  rules:\n  - backendRefs: [{{name: infra-backend-v1, port: 8080, weight: 70}}, {{name: infra-backend-v2, port: 8080, weight: 30}}]\n"
    );
    let r = rendered(&route("infra", "weighted", "2024-02-01T00:00:00Z", &spec));
    let service = &http(&r).services[&gateway_routers(&r)[0].service];
    let members: Vec<(String, u32)> =
        service.weighted.as_ref().unwrap().services.iter().map(|m| (m.name.clone(), m.weight)).collect();
    assert_eq!(members, vec![("infra-infra-backend-v1-8080".into(), 70), ("infra-infra-backend-v2-8080".into(), 30)]);

    let spec = format!("{TO_SAME}  rules:\n  - backendRefs: [{{name: nonexistent, port: 8080}}]\n");
    let r = rendered(&route("infra", "missing", "2024-02-01T00:00:00Z", &spec));
    let refs = condition(&parents(&r, "infra", "missing")[0].conditions, "ResolvedRefs").clone();
    assert_eq!((refs.status, refs.reason), (false, "BackendNotFound"));
    let spec =
        format!("{TO_SAME}  rules:\n  - backendRefs: [{{group: example.com, kind: Unknown, name: x, port: 8080}}]\n");
    let r = rendered(&route("infra", "kind", "2024-02-01T00:00:00Z", &spec));
    assert_eq!(condition(&parents(&r, "infra", "kind")[0].conditions, "ResolvedRefs").reason, "InvalidKind");
    let errors = http(&r).middlewares[super::INVALID_BACKEND_500].errors.clone().unwrap();
    assert_eq!(errors.status_rewrites["500-599"], 500);
}

#[test]
fn routers_are_ordered_as_the_spec_orders_matches_across_routes() {
    let older = route(
        "infra",
        "older",
        "2024-02-01T00:00:00Z",
        &format!("{TO_SAME}  hostnames: [example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: Exact, value: /exact}}}}, {{headers: [{{name: version, value: two}}]}}]\n    backendRefs: [{{name: infra-backend-v2, port: 8080}}]\n"),
    );
    let newer = route(
        "infra",
        "newer",
        "2024-03-01T00:00:00Z",
        &format!("{TO_SAME}  hostnames: [example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: infra-backend-v2, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}, method: GET}}]\n    backendRefs: [{{name: infra-backend-v2, port: 8080}}]\n"),
    );
    let r = rendered(&format!("{newer}{older}"));
    let rules: Vec<(String, String)> =
        gateway_routers(&r).into_iter().map(|r| (r.rule, r.service.replace("infra-infra-backend-", ""))).collect();
    let host = "Host(`example.com`) && ";
    assert_eq!(
        rules,
        vec![
            (format!("{host}Path(`/exact`)"), "v2-8080".into()),
            (format!("{host}(Path(`/v2`) || PathPrefix(`/v2/`)) && Method(`GET`)"), "v2-8080".into()),
            (format!("{host}PathPrefix(`/`) && Header(`version`, `two`)"), "v2-8080".into()),
            // Equal matches: the older route wins.
            (format!("{host}PathPrefix(`/`)"), "v1-8080".into()),
            (format!("{host}PathPrefix(`/`)"), "v2-8080".into()),
        ]
    );
    let priorities: Vec<i64> = gateway_routers(&r).iter().map(|r| r.priority.unwrap()).collect();
    assert!(priorities.windows(2).all(|w| w[0] > w[1]), "distinct priorities: {priorities:?}");
    assert!(priorities.iter().all(|p| *p > super::PRIORITY_BASE && *p <= routes::validate::MAX_PRIORITY));
}

#[test]
fn https_listeners_use_their_certificates_and_refuse_ungranted_ones() {
    use base64::Engine as _;
    let b64 = |name: &str| {
        let pem = std::fs::read(format!("{}/../routes/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    let secret = |ns: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-tls, namespace: {ns}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64("rsa.crt"),
            b64("rsa-pkcs1.key")
        )
    };
    let gateway = |cert_ns: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: secure, namespace: infra}}\nspec:\n  gatewayClassName: polaredge\n  listeners:\n  - {{name: https, port: 443, protocol: HTTPS, hostname: app.test, tls: {{certificateRefs: [{{name: app-tls, namespace: {cert_ns}}}]}}}}\n  - {{name: custom, port: 5432, protocol: example.com/custom}}\n  - {{name: odd, port: 8080, protocol: HTTP}}\n"
        )
    };
    let to_secure =
        "  parentRefs: [{name: secure}]\n  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let r = rendered(&format!(
        "{}{}{}",
        gateway("infra"),
        secret("infra"),
        route("infra", "tls", "2024-02-01T00:00:00Z", to_secure)
    ));
    let router = &gateway_routers(&r)[0];
    assert_eq!(router.entry_points, vec!["websecure".to_string()]);
    assert_eq!(router.tls.as_ref().unwrap().cert_resolver, None, "served with the Secret's certificate");
    assert_eq!(r.config().tls.unwrap().certificates.len(), 1);
    let listeners = &r.gateway.gateways.iter().find(|g| g.name == "secure").unwrap().listeners;
    assert!(condition(&listeners[0].conditions, "ResolvedRefs").status);
    assert_eq!(condition(&listeners[1].conditions, "Accepted").reason, "UnsupportedProtocol");
    assert_eq!(condition(&listeners[2].conditions, "Accepted").reason, "PortUnavailable");
    assert!(!condition(&listeners[2].conditions, "Programmed").status);

    // The certificate in another namespace without a ReferenceGrant: not used, and the listener says why.
    let r = rendered(&format!(
        "{}{}{}",
        gateway("app"),
        secret("app"),
        route("infra", "tls", "2024-02-01T00:00:00Z", to_secure)
    ));
    let listeners = &r.gateway.gateways.iter().find(|g| g.name == "secure").unwrap().listeners;
    assert_eq!(condition(&listeners[0].conditions, "ResolvedRefs").reason, "RefNotPermitted");
    assert!(gateway_routers(&r).is_empty());
    assert!(r.config().tls.is_none());
}

#[test]
fn filters_become_middlewares_in_order_and_unsupported_rules_are_reported() {
    let spec = format!(
        "{TO_SAME}  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /prefix}}}}]\n    filters:\n    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}\n    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}}}\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: infra-backend-v2, port: 8080}}}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
    );
    let r = rendered(&route("infra", "filters", "2024-02-01T00:00:00Z", &spec));
    let routers = gateway_routers(&r);
    assert_eq!(routers.len(), 1, "the mirror rule is left out");
    let mws = http(&r).middlewares;
    let kinds: Vec<bool> = routers[0].middlewares.iter().map(|m| mws[m].headers.is_some()).collect();
    assert_eq!(kinds, vec![true, false], "header modifier first, then the rewrite");
    assert!(mws[&routers[0].middlewares[1]].replace_path_regex.is_some());
    let notice = r.notices.iter().find(|n| n.kind == "HTTPRoute").expect("a Warning Event on the route");
    assert!(notice.message.contains("RequestMirror"), "{}", notice.message);
}

#[test]
fn a_cluster_without_the_gateway_api_renders_as_before() {
    let r = rendered("");
    assert!(gateway_routers(&r).is_empty());
    assert_eq!(r.gateway.gateways.len(), 2, "both Gateways of our class still get a status");
    assert!(r.gateway.routes.is_empty());
}

const L4_GATEWAY: &str = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: infra, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: '*.tls.test', tls: {mode: Passthrough}}
  - {name: pg, port: 5432, protocol: TCP}
  - {name: dns, port: 5353, protocol: UDP}
  - {name: wg, port: 51820, protocol: UDP}
  - {name: terminate, port: 443, protocol: TLS, hostname: other.test}
";

fn l4_route(kind: &str, name: &str, created: &str, body: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: '{created}'}}\nspec:\n{body}"
    )
}

#[test]
fn tls_tcp_and_udp_routes_become_passthrough_routers_and_edge_ports() {
    let routes = [
        l4_route("TLSRoute", "tls", "2024-02-01T00:00:00Z", "  parentRefs: [{name: l4, sectionName: tls}]\n  hostnames: [db.tls.test]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n"),
        l4_route("TCPRoute", "pg", "2024-02-01T00:00:00Z", "  parentRefs: [{name: l4, sectionName: pg}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}, {name: infra-backend-v2, port: 8080}]}]\n"),
        l4_route("TCPRoute", "pg-later", "2024-03-01T00:00:00Z", "  parentRefs: [{name: l4, sectionName: pg}]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]\n"),
        l4_route("UDPRoute", "dns", "2024-02-01T00:00:00Z", "  parentRefs: [{name: l4, sectionName: dns}]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]\n"),
    ]
    .concat();
    let r = rendered(&format!("{L4_GATEWAY}{routes}"));
    let config = r.config();
    let tcp = config.tcp.expect("a tcp section");
    let router = tcp.routers.values().next().unwrap();
    assert_eq!(router.rule, "HostSNI(`db.tls.test`)");
    assert_eq!(router.entry_points, vec!["websecure".to_string()]);
    assert_eq!(router.tls.as_ref().unwrap().passthrough, Some(true));
    assert_eq!(tcp.services[&router.service].load_balancer.servers[0].address, "10.0.0.1:3000");
    let l4 = config.l4.expect("an l4 section");
    assert_eq!(l4.tcp["5432"].servers, vec!["10.0.0.1:3000".to_string(), "10.0.0.2:3000".to_string()]);
    assert_eq!(l4.tcp["5432"].service, "infra/pg", "the older TCPRoute has the port");
    assert_eq!(l4.udp["5353"].servers, vec!["10.0.0.2:3000".to_string()]);
    assert!(r.udp_endpoints.contains(&"10.0.0.2:3000".parse().unwrap()), "the UDP relay allows the pod");
    let accepted = |name: &str| condition(&parents(&r, "infra", name)[0].conditions, "Accepted").clone();
    assert!(accepted("tls").status && accepted("pg").status && accepted("dns").status);
    assert_eq!((accepted("pg-later").status, accepted("pg-later").reason), (false, "UnsupportedValue"));
    let listeners = &r.gateway.gateways.iter().find(|g| g.name == "l4").unwrap().listeners;
    assert_eq!(condition(&listeners[3].conditions, "Accepted").reason, "PortUnavailable", "WireGuard's port");
    assert_eq!(condition(&listeners[4].conditions, "Accepted").reason, "UnsupportedValue", "TLS must be Passthrough");
    assert_eq!(listeners[1].supported_kinds, vec!["TCPRoute"]);
    assert_eq!(listeners[1].attached_routes, 1);
    let kinds: Vec<&str> = r.gateway.routes.iter().map(|s| s.kind).collect();
    assert!(kinds.contains(&"TLSRoute") && kinds.contains(&"TCPRoute") && kinds.contains(&"UDPRoute"));
}

#[test]
fn a_route_port_a_load_balancer_service_has_is_a_conflict() {
    let service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: infra}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: polaredge.io/edge\n  ports: [{port: 5432, targetPort: 3000}]\n";
    let route = l4_route("TCPRoute", "pg-route", "2024-02-01T00:00:00Z", "  parentRefs: [{name: l4, sectionName: pg}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n");
    let r = rendered(&format!("{L4_GATEWAY}{service}{route}"));
    assert_eq!(r.config().l4.unwrap().tcp["5432"].service, "infra/pg", "the Service keeps its port");
    let notice = r.notices.iter().find(|n| n.kind == "TCPRoute").expect("a PortConflict Event on the route");
    assert_eq!(notice.reason, "PortConflict");
}

#[test]
fn a_listener_admits_routes_from_namespaces_its_selector_picks() {
    let yaml = "
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop, tier: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: other}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: selected, namespace: infra}
spec:
  gatewayClassName: polaredge
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    hostname: selected.test
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels: {team: shop}
          matchExpressions: [{key: tier, operator: In, values: [web, api]}]
";
    let to_selected = "  parentRefs: [{name: selected, namespace: infra}]\n  rules: [{backendRefs: [{name: web-backend, namespace: app, port: 8080}]}]\n";
    let r = rendered(&format!(
        "{yaml}{}{}",
        route("shop", "in", "2024-02-01T00:00:00Z", to_selected),
        route("app", "out", "2024-02-01T00:00:00Z", to_selected)
    ));
    assert!(condition(&parents(&r, "shop", "in")[0].conditions, "Accepted").status);
    assert_eq!(condition(&parents(&r, "app", "out")[0].conditions, "Accepted").reason, "NotAllowedByListeners");
}
