//! TLS passthrough: an Ingress annotated `polaredge.io/tls-passthrough: "true"` has its hosts' TLS connections
//! routed by SNI to its pods untouched (Traefik TCP routers with `HostSNI` and `passthrough`, on the TLS
//! entrypoint it shares with terminated HTTPS hosts). The pods present their own certificates; the edge never
//! sees the traffic in clear. Each rule's host goes to the backend of its `/` path (or its first path).

use super::annotations::Annotations;
use super::{fnv, servers_of_sources, slug, Backends, Notice, ServerSource, ServiceKey};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use routes::model;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// One passthrough host (of an annotated Ingress or a Gateway API TLSRoute).
#[derive(Debug, Clone)]
pub(super) struct Route {
    router: String,
    /// `HostSNI(...)` or `HostSNIRegexp(...)`.
    rule: String,
    service: String,
    /// Where its servers come from (several: a TLSRoute's backends, merged).
    sources: Vec<ServerSource>,
}

impl Route {
    /// A passthrough router `router` with `rule` to the TCP service `service` fed by `sources`.
    pub(super) fn new(router: String, rule: String, service: String, sources: Vec<ServerSource>) -> Route {
        Route { router, rule, service, sources }
    }
}

/// The passthrough routes of one annotated Ingress. `claimed`: host -> the Ingress that has it (oldest first).
pub(super) fn routes(
    ingress: &Ingress,
    (ns, name): (&str, &str),
    backends: &Backends,
    claimed: &mut BTreeMap<String, (String, String)>,
    notices: &mut Vec<Notice>,
) -> Vec<Route> {
    let mut out = Vec::new();
    let notice = |reason: &'static str, message: String| Notice {
        kind: "Ingress",
        namespace: ns.to_string(),
        name: name.to_string(),
        reason,
        message,
    };
    for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
        let Some(host) = rule.host.clone().filter(|h| !h.is_empty() && super::rules::literal_ok(h)) else {
            notices.push(notice(
                "BadPassthrough",
                "TLS passthrough routes by host name (SNI): a rule without a usable host is skipped".into(),
            ));
            continue;
        };
        let paths: Vec<_> = rule.http.iter().flat_map(|h| h.paths.iter()).collect();
        let Some(path) = paths.iter().find(|p| p.path.as_deref().unwrap_or("/") == "/").or(paths.first()) else {
            continue;
        };
        if let Some((owner_ns, owner)) = claimed.get(&host) {
            notices.push(notice(
                "RouteConflict",
                format!("TLS passthrough for {host:?} is already set by the older Ingress {owner_ns}/{owner}; ignored"),
            ));
            continue;
        }
        let Some(resolved) = backends.resolve(ns, &path.backend, &Annotations::default()) else {
            notices.push(notice(
                "BadBackend",
                format!("{host:?}: only Service backends with a port are supported; skipped"),
            ));
            continue;
        };
        claimed.insert(host.clone(), (ns.to_string(), name.to_string()));
        out.push(Route {
            router: format!("{}-{}-{}-passthrough", slug(ns), slug(name), fnv(&[&host])),
            rule: format!("HostSNI(`{host}`)"),
            service: resolved.name.clone(),
            sources: resolved.source.clone().into_iter().collect(),
        });
    }
    out
}

/// The `tcp` section for `routes` with the pods' current endpoints, and those endpoints.
pub(super) fn section(
    routes: &[Route],
    slices: &HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
    websecure: &str,
) -> (Option<model::Tcp>, Vec<SocketAddr>) {
    if routes.is_empty() {
        return (None, Vec::new());
    }
    let mut tcp = model::Tcp::default();
    let mut endpoints = Vec::new();
    for route in routes {
        let servers = servers_of_sources(&route.sources, slices);
        endpoints.extend(servers.iter().copied());
        tcp.routers.insert(
            route.router.clone(),
            model::TcpRouter {
                rule: route.rule.clone(),
                service: route.service.clone(),
                entry_points: vec![websecure.to_string()],
                priority: None,
                tls: Some(model::RouterTls { passthrough: Some(true), ..Default::default() }),
            },
        );
        tcp.services.insert(
            route.service.clone(),
            model::TcpService {
                load_balancer: model::TcpLoadBalancer {
                    servers: servers.iter().map(|s| model::TcpServer { address: s.to_string() }).collect(),
                },
            },
        );
    }
    (Some(tcp), endpoints)
}
