//! Renderer tests over a table of Ingress cases with the exact expected rules and priorities.

use super::*;
use crate::manifests::add_yaml;

const CLASS: &str = "
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: polaredge}
spec: {controller: polaredge.io/ingress-controller}
";

fn service(ns: &str, name: &str, ports: &str, slice_ports: &str, ips: &[(&str, bool)]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|(ip, ready)| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: {ready}}}\n"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: {ports}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abc\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: {slice_ports}\nendpoints:\n{endpoints}"
    )
}

fn cluster(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    add_yaml(&mut c, CLASS, "class").unwrap();
    add_yaml(
        &mut c,
        &service(
            "default",
            "web",
            "[{port: 80, targetPort: 8080}]",
            "[{port: 8080}]",
            &[("10.0.0.1", true), ("10.0.0.2", false)],
        ),
        "svc",
    )
    .unwrap();
    add_yaml(&mut c, yaml, "test").unwrap();
    c
}

fn ingress(name: &str, created: &str, annotations: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  creationTimestamp: \"{created}\"\n  annotations: {{{annotations}}}\nspec:\n  ingressClassName: polaredge\n{spec}"
    )
}

fn one_path(host: &str, path_type: &str, path: &str) -> String {
    let host = if host.is_empty() { String::new() } else { format!("host: \"{host}\"\n    ") };
    format!("  rules:\n  - {host}http:\n      paths:\n      - {{path: \"{path}\", pathType: {path_type}, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n")
}

fn routers(rendered: &Rendered) -> Vec<(String, i64, Vec<String>)> {
    let http = rendered.config().http.expect("routes rendered");
    http.routers.values().map(|r| (r.rule.clone(), r.priority.unwrap(), r.entry_points.clone())).collect()
}

#[test]
fn table_of_ingress_cases_gives_the_exact_rules() {
    let table: Vec<(&str, &str, &str, &str, &str)> = vec![
        ("prefix root", "app.example.com", "Prefix", "/", "Host(`app.example.com`) && PathPrefix(`/`)"),
        (
            "prefix element-wise",
            "app.example.com",
            "Prefix",
            "/v1",
            "Host(`app.example.com`) && (Path(`/v1`) || PathPrefix(`/v1/`))",
        ),
        ("exact", "app.example.com", "Exact", "/login", "Host(`app.example.com`) && Path(`/login`)"),
        ("no host", "", "Prefix", "/api", "(Path(`/api`) || PathPrefix(`/api/`))"),
        (
            "wildcard one label",
            "*.example.com",
            "Prefix",
            "/",
            "HostRegexp(`^[^.]+\\.example\\.com$`) && PathPrefix(`/`)",
        ),
        (
            "implementation specific",
            "h.test",
            "ImplementationSpecific",
            "/x",
            "Host(`h.test`) && (Path(`/x`) || PathPrefix(`/x/`))",
        ),
    ];
    for (what, host, kind, path, expected) in table {
        let rendered = render(
            &cluster(&ingress("i", "2024-01-01T00:00:00Z", "", &one_path(host, kind, path))),
            &Settings::default(),
        );
        let got = routers(&rendered);
        assert_eq!(got.len(), 1, "{what}: {got:?}");
        assert_eq!(got[0].0, expected, "{what}");
        assert_eq!(got[0].2, ["web"], "{what}");
        assert!(rendered.notices.is_empty(), "{what}: {:?}", rendered.notices);
    }
}

#[test]
fn only_ready_endpoints_are_servers_and_are_the_relay_allow_list() {
    let rendered = render(
        &cluster(&ingress("i", "2024-01-01T00:00:00Z", "", &one_path("a.test", "Prefix", "/"))),
        &Settings::default(),
    );
    let http = rendered.config().http.unwrap();
    let servers: Vec<&str> = http.services["default-web-80"].servers().iter().map(|s| s.url.as_str()).collect();
    assert_eq!(servers, ["http://10.0.0.1:8080"]);
    assert_eq!(rendered.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["10.0.0.1:8080"]);
}

#[test]
fn a_service_without_ready_endpoints_still_gets_a_route_with_no_servers() {
    let spec = "  rules:\n  - host: gone.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}\n";
    let rendered = render(&cluster(&ingress("i", "2024-01-01T00:00:00Z", "", spec)), &Settings::default());
    let http = rendered.config().http.unwrap();
    assert!(http.services["default-missing-80"].servers().is_empty());
    assert_eq!(http.routers.len(), 1);
}

#[test]
fn named_ports_and_https_backends_resolve_through_the_endpoint_slice() {
    let mut c = cluster("");
    add_yaml(
        &mut c,
        &service(
            "shop",
            "api",
            "[{name: https-api, port: 8443, targetPort: 9443}]",
            "[{name: https-api, port: 9443}]",
            &[("10.0.1.5", true)],
        ),
        "svc",
    )
    .unwrap();
    let spec = "  rules:\n  - host: api.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {name: https-api}}}}\n";
    let text = ingress("i", "2024-01-01T00:00:00Z", "", spec).replace("namespace: default", "namespace: shop");
    add_yaml(&mut c, &text, "i").unwrap();
    let rendered = render(&c, &Settings::default());
    let http = rendered.config().http.unwrap();
    let lb = http.services["shop-api-https-api"].load_balancer.as_ref().unwrap();
    assert_eq!(lb.servers[0].url, "https://10.0.1.5:9443");
    assert_eq!(lb.servers_transport.as_deref(), Some("polaredge-pods"));
}

#[test]
fn the_most_specific_rule_has_the_highest_priority_and_the_default_backend_the_lowest() {
    let spec = "  defaultBackend: {service: {name: web, port: {number: 80}}}\n  rules:\n  - host: a.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: /api, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n      - {path: /api, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}\n";
    let rendered = render(&cluster(&ingress("i", "2024-01-01T00:00:00Z", "", spec)), &Settings::default());
    let mut got = routers(&rendered);
    got.sort_by_key(|r| std::cmp::Reverse(r.1));
    let rules: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        rules,
        [
            "Host(`a.test`) && Path(`/api`)",
            "Host(`a.test`) && (Path(`/api`) || PathPrefix(`/api/`))",
            "Host(`a.test`) && PathPrefix(`/`)",
            "PathPrefix(`/`)"
        ]
    );
    assert_eq!(got.last().unwrap().1, rules::DEFAULT_BACKEND_PRIORITY);
}

#[test]
fn conflicts_go_to_the_oldest_ingress_and_are_reported_on_the_loser() {
    let newer = ingress("newer", "2024-06-01T00:00:00Z", "", &one_path("a.test", "Prefix", "/"));
    let older = ingress("older", "2024-01-01T00:00:00Z", "", &one_path("a.test", "Prefix", "/"));
    let rendered = render(&cluster(&format!("{newer}{older}")), &Settings::default());
    let http = rendered.config().http.unwrap();
    assert_eq!(http.routers.len(), 1);
    assert!(http.routers.keys().next().unwrap().starts_with("default-older-"));
    assert_eq!(rendered.notices.len(), 1);
    assert_eq!((rendered.notices[0].name.as_str(), rendered.notices[0].reason), ("newer", "RouteConflict"));
}

#[test]
fn tls_hosts_get_a_router_on_the_tls_entrypoint_and_redirect_when_annotated() {
    let spec = format!("  tls:\n  - hosts: [secure.test]\n{}", one_path("secure.test", "Prefix", "/"));
    let rendered = render(
        &cluster(&ingress("i", "2024-01-01T00:00:00Z", "polaredge.io/redirect-to-https: \"true\"", &spec)),
        &Settings::default(),
    );
    let http = rendered.config().http.unwrap();
    let tls = http.routers.values().find(|r| r.tls.is_some()).unwrap();
    assert_eq!(tls.entry_points, ["websecure"]);
    assert_eq!(tls.tls.as_ref().unwrap().cert_resolver.as_deref(), Some("acme"));
    let plain = http.routers.values().find(|r| r.tls.is_none()).unwrap();
    assert_eq!(plain.middlewares, ["polaredge-redirect-https"]);
}

#[test]
fn annotations_strip_prefix_priority_sticky_and_bad_values_are_reported() {
    let annotations = "polaredge.io/strip-prefix: \"true\", polaredge.io/priority: \"77\", polaredge.io/sticky-cookie: sid, polaredge.io/pass-host-header: \"false\", polaredge.io/bogus: x, polaredge.io/backend-scheme: ftp";
    let rendered = render(
        &cluster(&ingress("i", "2024-01-01T00:00:00Z", annotations, &one_path("a.test", "Prefix", "/api"))),
        &Settings::default(),
    );
    let http = rendered.config().http.unwrap();
    let router = http.routers.values().next().unwrap();
    assert_eq!(router.priority, Some(77));
    let mw = &http.middlewares[&router.middlewares[0]];
    assert_eq!(mw.strip_prefix.as_ref().unwrap().prefixes, ["/api"]);
    let lb = http.services["default-web-80"].load_balancer.as_ref().unwrap();
    assert_eq!(lb.sticky.as_ref().unwrap().cookie.name.as_deref(), Some("sid"));
    assert_eq!(lb.pass_host_header, Some(false));
    let reasons: Vec<&str> = rendered.notices.iter().map(|n| n.message.as_str()).collect();
    assert_eq!(rendered.notices.len(), 2, "{reasons:?}");
    // A priority above the agent's canary router would make the agent refuse the whole snapshot: it is
    // reported and left out instead.
    let too_high = "polaredge.io/priority: \"2147483647\"";
    let rendered = render(
        &cluster(&ingress("i", "2024-01-01T00:00:00Z", too_high, &one_path("a.test", "Prefix", "/api"))),
        &Settings::default(),
    );
    assert!(rendered.notices[0].message.contains("not an integer from 1 to 2147483646"));
    routes::parse(&rendered.document, &policy()).expect("the agent accepts it");
}

#[test]
fn only_our_classes_and_the_default_class_are_rendered() {
    let theirs = ingress("theirs", "2024-01-01T00:00:00Z", "", &one_path("t.test", "Prefix", "/"))
        .replace("ingressClassName: polaredge", "ingressClassName: nginx");
    let classless = ingress("classless", "2024-01-01T00:00:00Z", "", &one_path("c.test", "Prefix", "/"))
        .replace("  ingressClassName: polaredge\n", "");
    let rendered = render(&cluster(&format!("{theirs}{classless}")), &Settings::default());
    assert!(rendered.config().http.unwrap().routers.is_empty(), "neither is ours while our class is not the default");
    let mut c = cluster(&format!("{theirs}{classless}"));
    c.classes.clear();
    add_yaml(
        &mut c,
        &CLASS.replace(
            "metadata: {name: polaredge}",
            "metadata: {name: polaredge, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}",
        ),
        "class",
    )
    .unwrap();
    let rendered = render(&c, &Settings::default());
    assert_eq!(rendered.served.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["classless"]);
}

#[test]
fn output_is_deterministic_and_passes_the_agents_validation() {
    let yaml = format!(
        "{}{}",
        ingress("b", "2024-01-02T00:00:00Z", "", &one_path("b.test", "Prefix", "/")),
        ingress("a", "2024-01-01T00:00:00Z", "", &one_path("*.a.test", "Exact", "/x"))
    );
    let first = render(&cluster(&yaml), &Settings::default());
    let mut shuffled = cluster(&yaml);
    shuffled.ingresses.reverse();
    shuffled.services.reverse();
    let second = render(&shuffled, &Settings::default());
    assert_eq!(first.document, second.document, "same cluster, same bytes");
    routes::parse(&first.document, &policy()).expect("the agent accepts what the client renders");
}

#[test]
fn the_incremental_renderer_gives_the_bytes_of_a_fresh_render() {
    let yaml = format!(
        "{}{}",
        ingress(
            "b",
            "2024-01-02T00:00:00Z",
            "polaredge.io/strip-prefix: \"true\"",
            &one_path("b.test", "Prefix", "/b")
        ),
        ingress("a", "2024-01-01T00:00:00Z", "", &one_path("a.test", "Exact", "/x"))
    );
    let mut c = cluster(&yaml);
    let mut renderer = Renderer::new(Settings::default());
    let first = renderer.render(&c);
    assert_eq!(first.document, render(&c, &Settings::default()).document);
    assert_eq!(first.document, serde_json::to_string(&first.config()).unwrap() + "\n", "exactly serde's compact form");
    // Only an EndpointSlice changes: the cached plan is reused, and the bytes equal a fresh render's.
    let slice = c.slices.iter().position(|s| s.metadata.name.as_deref() == Some("web-abc")).unwrap();
    let mut changed = (*c.slices[slice]).clone();
    changed.endpoints[1].conditions.as_mut().unwrap().ready = Some(true);
    c.slices[slice] = Arc::new(changed);
    let second = renderer.render(&c);
    assert_eq!(second.document, render(&c, &Settings::default()).document);
    assert_ne!(second.document, first.document, "the newly ready endpoint is served");
    assert_eq!(second.endpoints.len(), 2);
    // An Ingress changes: a new plan.
    c.ingresses.remove(0);
    let third = renderer.render(&c);
    assert_eq!(third.document, render(&c, &Settings::default()).document);
    assert_eq!(third.routers, 1);
}

#[test]
fn a_reloaded_cluster_is_never_mistaken_for_the_cached_one() {
    // Objects reloaded from files are new allocations, which may land where the old ones were freed.
    let mut renderer = Renderer::new(Settings::default());
    for host in ["one.test", "two.test", "three.test"] {
        let c = cluster(&ingress("i", "2024-01-01T00:00:00Z", "", &one_path(host, "Prefix", "/")));
        let rendered = renderer.render(&c);
        assert!(rendered.document.contains(host), "{host}: {}", rendered.document);
    }
}

#[test]
fn the_incremental_renderer_follows_annotations_and_slices_coming_and_going() {
    let plain = ingress("a", "2024-01-01T00:00:00Z", "", &one_path("a.test", "Prefix", "/"));
    let mut c = cluster(&plain);
    let mut renderer = Renderer::new(Settings::default());
    let first = renderer.render(&c);
    // A plan change with the same EndpointSlices: the service's own settings (a sticky cookie) must follow.
    let sticky =
        ingress("a", "2024-01-01T00:00:00Z", "polaredge.io/sticky-cookie: pin", &one_path("a.test", "Prefix", "/"));
    let i = c.ingresses.iter().position(|i| i.metadata.name.as_deref() == Some("a")).unwrap();
    c.ingresses[i] = cluster(&sticky).ingresses.into_iter().find(|x| x.metadata.name.as_deref() == Some("a")).unwrap();
    let second = renderer.render(&c);
    assert!(second.document.contains("\"pin\""), "{}", second.document);
    assert_eq!(second.document, render(&c, &Settings::default()).document);
    // A second slice for the same Service arrives, then the first one goes away.
    let extra = service("default", "web", "[{port: 80, targetPort: 8080}]", "[{port: 8080}]", &[("10.0.0.9", true)])
        .replace("name: web-abc", "name: web-def");
    let mut more = Cluster::default();
    add_yaml(&mut more, &extra, "extra").unwrap();
    c.slices.extend(more.slices);
    let third = renderer.render(&c);
    assert_eq!(third.document, render(&c, &Settings::default()).document);
    assert_eq!(third.endpoints.len(), 2, "10.0.0.1 and 10.0.0.9");
    c.slices.retain(|s| s.metadata.name.as_deref() != Some("web-abc"));
    let fourth = renderer.render(&c);
    assert_eq!(fourth.document, render(&c, &Settings::default()).document);
    assert_eq!(fourth.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["10.0.0.9:8080"]);
    // The last slice goes: the route stays and answers 503 (no servers), nothing is routed to.
    c.slices.clear();
    let fifth = renderer.render(&c);
    assert_eq!(fifth.document, render(&c, &Settings::default()).document);
    assert!(fifth.endpoints.is_empty() && fifth.routers == first.routers);
}

fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> String {
    use base64::Engine as _;
    let b64 = |name: &str| {
        let pem = std::fs::read(format!("{}/../routes/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

fn tls_ingress(host: &str, secret: &str) -> String {
    let spec = format!("  tls:\n  - hosts: [{host}]\n    secretName: {secret}\n{}", one_path(host, "Prefix", "/"));
    ingress("i", "2024-01-01T00:00:00Z", "", &spec)
}

/// An Ingress with `host` in a TLS entry naming Secret `app-tls`, plus `secret` (YAML), rendered.
fn render_tls(host: &str, secret: &str) -> Rendered {
    render(&cluster(&format!("{}{secret}", tls_ingress(host, "app-tls"))), &Settings::default())
}

/// The TLS router of a rendering with one.
fn tls_router(config: &DynamicConfig) -> model::HttpRouter {
    config.http.as_ref().unwrap().routers.values().find(|r| r.tls.is_some()).unwrap().clone()
}

fn policy() -> routes::Policy {
    routes::Policy {
        entry_points: ["web".to_string(), "websecure".to_string()].into(),
        cert_resolvers: ["acme".to_string()].into(),
        ..routes::Policy::default()
    }
}

#[test]
fn a_tls_host_with_its_secret_is_served_with_that_certificate_not_acme() {
    let rendered = render_tls("app.test", &tls_secret("default", "app-tls", "rsa.crt", "rsa-pkcs1.key"));
    assert!(rendered.notices.is_empty(), "{:?}", rendered.notices);
    let config = rendered.config();
    assert_eq!(tls_router(&config).tls.unwrap().cert_resolver, None, "no ACME for a host with a Secret");
    let certificates = &config.tls.as_ref().unwrap().certificates;
    assert_eq!(certificates.len(), 1);
    assert!(certificates[0].cert_file.starts_with("-----BEGIN CERTIFICATE-----"));
    // The agent accepts it, and the document is serde_json's own form of the model.
    routes::parse(&rendered.document, &policy()).expect("the agent accepts the certificate");
    assert_eq!(rendered.document, serde_json::to_string(&config).unwrap() + "\n");
}

#[test]
fn a_missing_or_unusable_secret_falls_back_to_acme_with_a_warning() {
    for (secret, expected) in [
        (String::new(), "no Secret of type kubernetes.io/tls"),
        (tls_secret("default", "app-tls", "rsa.crt", "ec-sec1.key"), "does not belong to the certificate"),
        (tls_secret("other", "app-tls", "rsa.crt", "rsa-pkcs1.key"), "no Secret"),
    ] {
        let rendered = render_tls("app.test", &secret);
        let notice = rendered.notices.iter().find(|n| n.reason == "TLSSecretUnusable").expect("a warning");
        assert!(notice.message.contains(expected) && notice.message.contains("use ACME"), "{}", notice.message);
        assert!(!notice.message.contains("PRIVATE KEY"));
        let config = rendered.config();
        assert!(config.tls.is_none(), "nothing unusable is sent");
        assert_eq!(tls_router(&config).tls.unwrap().cert_resolver.as_deref(), Some("acme"));
    }
}

#[test]
fn a_certificate_that_does_not_name_the_host_is_used_with_a_warning() {
    let rendered = render_tls("other.test", &tls_secret("default", "app-tls", "rsa.crt", "rsa-pkcs1.key"));
    let notice = rendered.notices.iter().find(|n| n.reason == "TLSSecretHostMismatch").expect("a warning");
    assert!(notice.message.contains("other.test"), "{}", notice.message);
    assert!(rendered.config().tls.is_some());
    assert!(covers(&["*.example.com".into()], "a.example.com"));
    assert!(!covers(&["*.example.com".into()], "a.b.example.com"));
}

static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

#[test]
fn the_plan_is_made_again_when_a_certificate_expires_so_it_is_never_sent_expired() {
    let yaml = format!(
        "{}{}",
        tls_ingress("app.test", "app-tls"),
        tls_secret("default", "app-tls", "rsa.crt", "rsa-pkcs1.key")
    );
    let cluster = cluster(&yaml);
    CLOCK.store(routes::system_now(), std::sync::atomic::Ordering::SeqCst);
    let settings = Settings { now: || CLOCK.load(std::sync::atomic::Ordering::SeqCst), ..Settings::default() };
    let mut renderer = Renderer::new(settings);
    let first = renderer.render(&cluster);
    assert!(first.config().tls.is_some());
    // Nothing in the cluster changed, but the certificate's time is up.
    CLOCK.store(i64::MAX / 2, std::sync::atomic::Ordering::SeqCst);
    let second = renderer.render(&cluster);
    assert!(second.config().tls.is_none(), "an expired certificate is not sent");
    assert!(second.notices.iter().any(|n| n.message.contains("expired")), "{:?}", second.notices);
}

#[test]
fn the_https_redirect_works_with_a_certificate_from_a_secret_too() {
    let spec =
        format!("  tls:\n  - hosts: [app.test]\n    secretName: app-tls\n{}", one_path("app.test", "Prefix", "/"));
    let yaml = format!(
        "{}{}",
        ingress("i", "2024-01-01T00:00:00Z", "polaredge.io/redirect-to-https: \"true\"", &spec),
        tls_secret("default", "app-tls", "rsa.crt", "rsa-pkcs1.key")
    );
    let config = render(&cluster(&yaml), &Settings::default()).config();
    assert_eq!(tls_router(&config).tls.unwrap().cert_resolver, None);
    let http = config.http.unwrap();
    let plain = http.routers.values().find(|r| r.tls.is_none()).unwrap();
    assert_eq!(plain.middlewares, ["polaredge-redirect-https"]);
}
