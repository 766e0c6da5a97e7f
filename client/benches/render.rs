//! Renderer speed at scale: 5,000 Ingresses and 25,000 endpoints, then the same Services routed by 5,000
//! Gateway API HTTPRoutes instead. Run: `cargo bench -p polaredge-client --bench render` (BENCHMARKS.md).

use client::render::{render, Cluster, Renderer, Settings};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::sync::Arc;
use std::time::Instant;

const INGRESSES: usize = 5_000;
const ENDPOINTS_PER_SERVICE: usize = 5;

fn meta(name: String, ns: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name), namespace: Some(ns.into()), ..Default::default() }
}

fn slice(i: usize, generation: u8) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some([("kubernetes.io/service-name".to_string(), format!("svc-{i}"))].into()),
            ..meta(format!("svc-{i}-x"), &format!("ns-{}", i % 50))
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { port: Some(8080), ..Default::default() }]),
        endpoints: (0..ENDPOINTS_PER_SERVICE)
            .map(|e| Endpoint {
                addresses: vec![format!("10.{}.{}.{}", i / 250 % 250, i % 250, e + 1 + generation as usize)],
                conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }
}

fn cluster() -> Cluster {
    let mut c = Cluster::default();
    c.classes.push(Arc::new(IngressClass {
        metadata: meta("polaredge".into(), ""),
        spec: Some(IngressClassSpec {
            controller: Some("polaredge.io/ingress-controller".into()),
            ..Default::default()
        }),
    }));
    for i in 0..INGRESSES {
        let ns = format!("ns-{}", i % 50);
        let backend = IngressBackend {
            service: Some(IngressServiceBackend {
                name: format!("svc-{i}"),
                port: Some(ServiceBackendPort { number: Some(80), ..Default::default() }),
            }),
            ..Default::default()
        };
        c.ingresses.push(Arc::new(Ingress {
            metadata: meta(format!("ing-{i}"), &ns),
            spec: Some(IngressSpec {
                ingress_class_name: Some("polaredge".into()),
                rules: Some(vec![IngressRule {
                    host: Some(format!("app{i}.example.com")),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![
                            HTTPIngressPath {
                                path: Some("/".into()),
                                path_type: "Prefix".into(),
                                backend: backend.clone(),
                            },
                            HTTPIngressPath { path: Some("/api".into()), path_type: "Prefix".into(), backend },
                        ],
                    }),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        c.services.push(Arc::new(Service {
            metadata: meta(format!("svc-{i}"), &ns),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        c.slices.push(Arc::new(slice(i, 0)));
    }
    c
}

/// The same Services and EndpointSlices routed by HTTPRoutes (two matches each) on one Gateway instead.
fn gateway_cluster() -> Cluster {
    let mut c = cluster();
    c.ingresses.clear();
    fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("a valid object"))
    }
    c.gateway_classes.push(object(serde_json::json!({
        "metadata": {"name": "polaredge"},
        "spec": {"controllerName": "polaredge.io/gateway-controller"},
    })));
    c.gateways.push(object(serde_json::json!({
        "metadata": {"name": "edge", "namespace": "infra"},
        "spec": {"gatewayClassName": "polaredge", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
        ]},
    })));
    for i in 0..INGRESSES {
        c.http_routes.push(object(serde_json::json!({
            "metadata": {"name": format!("route-{i}"), "namespace": format!("ns-{}", i % 50)},
            "spec": {
                "parentRefs": [{"name": "edge", "namespace": "infra"}],
                "hostnames": [format!("app{i}.example.com")],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}, {"path": {"type": "PathPrefix", "value": "/api"}}],
                    "backendRefs": [{"name": format!("svc-{i}"), "port": 80}],
                }],
            },
        })));
    }
    c
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut c = cluster();
    let settings = Settings::default();
    let endpoints: usize = render(&c, &settings).endpoints.len();
    let mut full = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let r = render(&c, &settings);
        full.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(!r.document.is_empty());
    }
    // One EndpointSlice changes: the store replaces one object, and the long-lived renderer (as the client
    // runs it) renders again. The first render fills its cache.
    let mut renderer = Renderer::new(settings.clone());
    let _ = renderer.render(&c);
    let mut change = Vec::new();
    for round in 0..7u8 {
        let t = Instant::now();
        c.slices[1234] = Arc::new(slice(1234, round + 1));
        let r = renderer.render(&c);
        change.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.document.contains(&format!("10.4.234.{}:8080", 1 + round as usize + 1)));
    }
    let r = render(&c, &settings);
    let config = r.config();
    let t = Instant::now();
    let _ = serde_json::to_string(&config).unwrap();
    let json_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let _ = serde_yaml::to_string(&config).unwrap();
    let yaml_ms = t.elapsed().as_secs_f64() * 1000.0;
    let yaml_len = r.document.len();
    println!(
        "render at scale: {INGRESSES} Ingresses ({} routers), {endpoints} endpoints, {yaml_len} bytes of JSON/YAML",
        INGRESSES * 2
    );
    println!("  full render:                      median {:>7.1} ms (target <= 200 ms), 7 runs", median(full));
    println!("  one EndpointSlice change -> doc:  median {:>7.1} ms (target <= 20 ms), 7 runs", median(change));
    println!("  serializing the whole document: {json_ms:.1} ms as JSON (serde_yaml would take {yaml_ms:.1} ms)");
    println!("  process RSS with the stores and a rendered snapshot: {} MiB (target <= 150 MB)", rss_kib() / 1024);

    // The same at scale through the Gateway API.
    let mut g = gateway_cluster();
    let first = render(&g, &settings);
    let (routers, bytes) = (first.routers, first.document.len());
    let mut full = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let _ = render(&g, &settings);
        full.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut renderer = Renderer::new(settings.clone());
    let _ = renderer.render(&g);
    let mut change = Vec::new();
    for round in 0..7u8 {
        let t = Instant::now();
        g.slices[1234] = Arc::new(slice(1234, round + 1));
        let r = renderer.render(&g);
        change.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.document.contains(&format!("10.4.234.{}:8080", 1 + round as usize + 1)));
    }
    println!(
        "gateway api at scale: {INGRESSES} HTTPRoutes on one Gateway ({routers} routers), same Services, {bytes} bytes"
    );
    println!("  full render:                      median {:>7.1} ms (Ingress: above), 7 runs", median(full));
    println!("  one EndpointSlice change -> doc:  median {:>7.1} ms, 7 runs", median(change));
}
