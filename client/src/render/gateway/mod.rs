//! The Gateway API (gateway.networking.k8s.io/v1), served when the cluster has its CRDs: GatewayClasses of
//! our controller, their Gateways' listeners on the edge's entrypoints and ports, and the HTTPRoutes,
//! GRPCRoutes, TLSRoutes, TCPRoutes and UDPRoutes attached to them, rendered into the same snapshot as the
//! Ingresses. Pure: the planner reads the cluster and returns routers, services, middlewares, certificates,
//! passthrough routes, public ports and the status to write.
//!
//! Module map: [`hostnames`] (listener x route hostnames, host matchers), [`matching`] (matches as Traefik
//! rules, the spec's precedence), [`filters`] (filters as middlewares), [`grpc`] (GRPCRoute as HTTPRoute),
//! [`conditions`] (status as data).
//!
//! Choices, where the spec leaves room or Traefik cannot follow it (README "Gateway API"):
//! - Listeners: HTTP on port 80 and HTTPS on 443 (the edge's public entrypoints); other ports answer
//!   `PortUnavailable`, other protocols `UnsupportedProtocol`. TLS listeners pass TLS through (TLSRoute); TCP
//!   and UDP listeners are public ports the agent serves (TCPRoute, UDPRoute; one route per listener).
//! - GRPCRoutes are served as the HTTPRoutes they amount to ([`grpc`]), with h2c to the pods.
//! - Precedence: every router gets its own priority from the spec's total order (hostname, path, method,
//!   headers, query parameters, then the older route, namespace/name, rule and match index); Gateway API
//!   routers rank above every Ingress router.
//! - A rule whose backends are all invalid answers 500 (an `errors` middleware over an empty service); in a
//!   split, an invalid backend's share answers 503.
//! - HTTPS listeners without certificateRefs get certificates from the edge's ACME resolver.

pub mod conditions;
pub mod filters;
pub mod grpc;
pub mod hostnames;
pub mod matching;

use super::{certificate_of, fnv, slug, Backends, Notice, Resolved, Settings};
use conditions::{ClassStatus, Condition, GatewayStatus, ListenerStatus, ParentStatus, RouteStatus, Statuses};
use gateway_api::gatewayclasses::{GatewayClassSpec, GatewayClassStatus};
use gateway_api::gateways::{GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From, GatewaySpec};
use gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesMatches, HttpRouteSpec, HttpRouteStatus,
};
use gateway_api::referencegrants::ReferenceGrantSpec;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{ApiResource, NotUsed, Object};
use matching::{Order, PathKind};
use routes::model;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

/// A GatewayClass, with kube-rs's own metadata type (the spec types come from the gateway-api crate).
pub type GatewayClass = Object<GatewayClassSpec, GatewayClassStatus>;
/// A Gateway.
pub type Gateway = Object<GatewaySpec, gateway_api::gateways::GatewayStatus>;
/// An HTTPRoute.
pub type HttpRoute = Object<HttpRouteSpec, HttpRouteStatus>;
/// A ReferenceGrant.
pub type ReferenceGrant = Object<ReferenceGrantSpec, NotUsed>;
/// A GRPCRoute (served as the HTTPRoute it amounts to, with h2c to the pods: [`grpc`]).
pub type GrpcRoute = Object<gateway_api::grpcroutes::GrpcRouteSpec, gateway_api::grpcroutes::GrpcRouteStatus>;
/// A TLSRoute (TLS passthrough by SNI).
pub type TlsRoute = Object<gateway_api::tlsroutes::TlsRouteSpec, gateway_api::tlsroutes::TlsRouteStatus>;
/// A TCPRoute (a public TCP port). The crate has its types in the experimental channel (v1alpha2); the shape
/// is the one the standard channel serves as v1.
pub type TcpRoute =
    Object<gateway_api::experimental::tcproutes::TcpRouteSpec, gateway_api::experimental::tcproutes::TcpRouteStatus>;
/// A UDPRoute (a public UDP port).
pub type UdpRoute =
    Object<gateway_api::experimental::udproutes::UdpRouteSpec, gateway_api::experimental::udproutes::UdpRouteStatus>;

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The served version.
pub const VERSION: &str = "v1";
/// The controllerName in GatewayClass.spec that marks a class as ours.
pub const CONTROLLER: &str = "polaredge.io/gateway-controller";
/// The listener port served as the plain HTTP entrypoint.
pub const HTTP_PORT: i32 = 80;
/// The listener port served as the TLS entrypoint.
pub const HTTPS_PORT: i32 = 443;
/// Gateway API routers rank above this (and every Ingress router below it).
pub const PRIORITY_BASE: i64 = 1_000_000_000;
/// The service of rules without a valid backend: no servers.
pub const INVALID_BACKEND: &str = "polaredge-invalid-backend";
/// The middleware that turns the empty service's 503 into the spec's 500.
pub const INVALID_BACKEND_500: &str = "polaredge-invalid-backend-500";

/// The API resource of a kind of the group (`GatewayClass`, `Gateway`, `HTTPRoute`, `ReferenceGrant`,
/// `TLSRoute`, `TCPRoute`, `UDPRoute`) at `version`.
pub fn api_resource_at(kind: &str, version: &str) -> ApiResource {
    let plural = match kind {
        "GatewayClass" => "gatewayclasses".to_string(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    ApiResource {
        group: GROUP.into(),
        version: version.into(),
        api_version: format!("{GROUP}/{version}"),
        kind: kind.into(),
        plural,
    }
}

/// The API resource of a kind of the group at [`VERSION`].
pub fn api_resource(kind: &str) -> ApiResource {
    api_resource_at(kind, VERSION)
}

/// The route kinds a listener protocol carries.
fn kinds_of(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        "UDP" => &["UDPRoute"],
        _ => &[],
    }
}

/// What the Gateway API resources render to.
#[derive(Default)]
pub(super) struct Plan {
    /// Routers (with priorities), weighted services, the invalid-backend service and middlewares. The
    /// load-balancer services of the backends are in `backends`.
    pub http: model::Http,
    /// The backends routed to, for the caller to add as load-balancer services.
    pub backends: Vec<Rc<Resolved>>,
    /// Their names (a backend is listed once).
    backend_names: std::collections::HashSet<String>,
    /// Certificates of HTTPS listeners by Secret (namespace, name).
    pub certificates: BTreeMap<(String, String), model::TlsCertificate>,
    /// When the first of those certificates expires.
    pub expires: i64,
    /// The status to write.
    pub statuses: Statuses,
    /// Problems for Events.
    pub notices: Vec<Notice>,
    /// TLS passthrough hosts of TLSRoutes.
    pub passthrough: Vec<super::passthrough::Route>,
    /// Public TCP and UDP ports of TCPRoutes and UDPRoutes.
    pub l4: Vec<super::l4::Claim>,
}

fn ns_name<P: Clone, U: Clone>(o: &Object<P, U>) -> (String, String) {
    super::ns_name(&o.metadata)
}

fn created<P: Clone, U: Clone>(o: &Object<P, U>) -> i64 {
    o.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

/// A listener as the planner sees it.
struct Listener {
    name: String,
    hostname: Option<String>,
    port: i32,
    /// The entrypoint and scheme (`http`, `https`, `tls`, `tcp`, `udp`); `None` when the listener cannot be
    /// served.
    serve: Option<(String, &'static str)>,
    /// HTTPS with certificates from Secrets (no ACME resolver on its routers).
    own_certificates: bool,
    /// The namespaces it admits routes from: `None` for all, else these (its own by default).
    namespaces: Option<BTreeSet<String>>,
    /// The route kinds it admits.
    kinds: Vec<&'static str>,
    /// The TCPRoute or UDPRoute that has it (one per listener: its port is the route).
    taken_by: Option<String>,
    attached: i32,
    conditions: Vec<Condition>,
    supported_kinds: Vec<&'static str>,
}

/// Whether a label selector (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist) selects an
/// object with `labels`. An unknown operator selects nothing.
fn selects(
    selector: &gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let label = |key: &str| labels.and_then(|l| l.get(key));
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| label(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => label(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => label(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => label(&e.key).is_some(),
            "DoesNotExist" => label(&e.key).is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Whether a ReferenceGrant in `to_ns` lets `from_kind` objects of `from_ns` refer to the `to_kind` object
/// `to_name` (core group `""`).
fn granted(
    grants: &[std::sync::Arc<ReferenceGrant>],
    (from_kind, from_ns): (&str, &str),
    (to_kind, to_ns, to_name): (&str, &str, &str),
) -> bool {
    grants.iter().filter(|g| g.metadata.namespace.as_deref() == Some(to_ns)).any(|g| {
        g.spec.from.iter().any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
            && g.spec
                .to
                .iter()
                .any(|t| t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
    })
}

/// Plans every Gateway API resource of ours.
pub(super) fn plan(
    cluster: &super::Cluster,
    settings: &Settings,
    backends: &Backends,
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
) -> Plan {
    let mut out = Plan { expires: i64::MAX, ..Default::default() };
    let mut classes = BTreeSet::new();
    for class in &cluster.gateway_classes {
        if class.spec.controller_name == settings.gateway_controller {
            let name = class.metadata.name.clone().unwrap_or_default();
            out.statuses.classes.push(ClassStatus {
                name: name.clone(),
                generation: class.metadata.generation,
                conditions: vec![Condition::new("Accepted", true, "Accepted", "served by the POLAREDGE edge")],
            });
            classes.insert(name);
        }
    }
    let mut gateways: Vec<&Gateway> =
        cluster.gateways.iter().map(|g| &**g).filter(|g| classes.contains(&g.spec.gateway_class_name)).collect();
    gateways.sort_by_key(|g| (created(g), ns_name(g)));
    let mut listeners: BTreeMap<(String, String), Vec<Listener>> = BTreeMap::new();
    for gateway in &gateways {
        let (ns, name) = ns_name(gateway);
        let mut list = plan_listeners(gateway, &ns, cluster, settings, secrets, now, &mut out);
        if gateway.spec.addresses.as_ref().is_some_and(|a| !a.is_empty()) {
            list.iter_mut().for_each(|l| l.serve = None); // refused: UnsupportedAddress
        }
        listeners.insert((ns, name), list);
    }

    plan_http_routes(cluster, settings, backends, &mut listeners, &mut out);
    plan_l4_routes(cluster, backends, &mut listeners, &mut out);
    if out.http.routers.values().any(|r| r.service == INVALID_BACKEND) {
        out.http.services.insert(INVALID_BACKEND.into(), model::HttpService::balanced(Default::default()));
        out.http.middlewares.insert(
            INVALID_BACKEND_500.into(),
            model::Middleware {
                errors: Some(model::Errors {
                    status: vec!["500-599".into()],
                    service: routes::validate::ERROR_PAGE_SERVICE.into(),
                    query: Some("/ping".into()),
                    status_rewrites: [("500-599".to_string(), 500)].into(),
                }),
                ..Default::default()
            },
        );
    }
    for gateway in &gateways {
        let (ns, name) = ns_name(gateway);
        let list = listeners.remove(&(ns.clone(), name.clone())).unwrap_or_default();
        out.statuses.gateways.push(gateway_status(gateway, ns, name, list));
    }
    out
}

/// HTTPRoutes and GRPCRoutes, oldest first (the spec's tie-breaker): each rule x match x attached listener x
/// host a router, each router its own priority from the spec's total order.
fn plan_http_routes(
    cluster: &super::Cluster,
    settings: &Settings,
    backends: &Backends,
    listeners: &mut BTreeMap<(String, String), Vec<Listener>>,
    out: &mut Plan,
) {
    // Routes, oldest first (the spec's tie-breaker), each rule x match x attached listener x host a router.
    // GRPCRoutes as the HTTPRoutes they amount to (h2c to their pods).
    let grpc: Vec<HttpRoute> = cluster.grpc_routes.iter().map(|r| grpc::as_http(r)).collect();
    let mut routes: Vec<(&'static str, &HttpRoute)> = cluster.http_routes.iter().map(|r| ("HTTPRoute", &**r)).collect();
    routes.extend(grpc.iter().map(|r| ("GRPCRoute", r)));
    routes.sort_by_key(|(kind, r)| (created(*r), ns_name(*r), *kind));
    let mut ordered: Vec<(Order, String)> = Vec::new();
    let mut resolved_cache: HashMap<(String, String, i32, bool), Option<Rc<Resolved>>> = HashMap::new();
    for (kind, route) in routes {
        let (ns, name) = ns_name(route);
        let hosts = route.spec.hostnames.clone().unwrap_or_default();
        let (parents, attached_to) = attach(&route.spec.parent_refs, &ns, &hosts, kind, listeners);
        let attachments: Vec<(&Listener, Vec<String>)> =
            attached_to.iter().map(|(key, i, hosts)| (&listeners[key][*i], hosts.clone())).collect();
        if parents.is_empty() {
            continue;
        }
        // Backends, filters and routers.
        let mut unresolved: Option<(&'static str, String)> = None;
        let mut skipped = Vec::new();
        for (ri, rule) in route.spec.rules.iter().flatten().enumerate() {
            let (service, invalid) =
                rule_service(rule, (kind, &ns), cluster, backends, &mut resolved_cache, &mut unresolved, out);
            let default_match = [HttpRouteRulesMatches::default()];
            let matches = rule.matches.as_deref().filter(|m| !m.is_empty()).unwrap_or(&default_match);
            for (listener, hosts) in &attachments {
                for host in hosts {
                    for (mi, m) in matches.iter().enumerate() {
                        let source = RouterSource { kind, ns: &ns, name: &name, rule, ri, listener, host, m, mi };
                        match plan_router(&source, &service, invalid, settings, out) {
                            Ok((router, precedence)) => {
                                let order = Order {
                                    precedence: std::cmp::Reverse(precedence),
                                    created: created(route),
                                    route: format!("{ns}/{name}"),
                                    position: (ri, mi),
                                };
                                ordered.push((order, router));
                            }
                            Err(reason) => skipped.push(format!("rule {ri} match {mi}: {reason}")),
                        }
                    }
                }
            }
        }
        for (key, i, _) in attached_to {
            if let Some(l) = listeners.get_mut(&key).and_then(|l| l.get_mut(i)) {
                l.attached += 1;
            }
        }
        if !skipped.is_empty() {
            out.notices.push(Notice {
                kind,
                namespace: ns.clone(),
                name: name.clone(),
                reason: "UnsupportedValue",
                message: format!("not served: {}", skipped.join("; ")),
            });
        }
        let resolved = match &unresolved {
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "every backendRef resolved"),
            Some((reason, message)) => Condition::new("ResolvedRefs", false, reason, message.clone()),
        };
        out.statuses.routes.push(RouteStatus {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
            generation: route.metadata.generation,
            parents: parents
                .into_iter()
                .map(|(parent_ref, accepted)| ParentStatus { parent_ref, conditions: vec![accepted, resolved.clone()] })
                .collect(),
        });
    }
    // One priority per router, from the spec's total order (the first wins).
    ordered.sort();
    let count = ordered.len() as i64;
    for (i, (_, router)) in ordered.iter().enumerate() {
        if let Some(r) = out.http.routers.get_mut(router) {
            r.priority.get_or_insert(PRIORITY_BASE + count - i as i64);
        }
    }
}

/// Where one router comes from: match `mi` of rule `ri` of a route, on one host of one attached listener.
struct RouterSource<'a> {
    kind: &'static str,
    ns: &'a str,
    name: &'a str,
    rule: &'a HttpRouteRules,
    ri: usize,
    listener: &'a Listener,
    host: &'a str,
    m: &'a HttpRouteRulesMatches,
    mi: usize,
}

/// Adds the router of one match (to `service`) and its middlewares to `out`; returns its name and
/// precedence, or why Traefik cannot serve the match as written. A rule whose backends are all invalid
/// answers 500, unless it redirects.
fn plan_router(
    source: &RouterSource,
    service: &str,
    invalid: bool,
    settings: &Settings,
    out: &mut Plan,
) -> Result<(String, matching::Precedence), String> {
    let RouterSource { kind, ns, name, rule, ri, listener, host, m, mi } = *source;
    let (entry_point, scheme) = listener.serve.clone().expect("attached listeners are served");
    let filter_listener = filters::Listener { scheme, port: listener.port };
    let (text, precedence) = matching::rule(host, m)?;
    let mws = filters::middlewares(rule.filters.as_deref().unwrap_or_default(), filter_listener, &PathKind::of(m))?;
    let redirects = mws.iter().any(|m| m.redirect_regex.is_some());
    let mut names: Vec<String> = mws
        .into_iter()
        .map(|m| {
            let name = format!("gw-{}", fnv(&[&serde_json::to_string(&m).unwrap_or_default()]));
            out.http.middlewares.insert(name.clone(), m);
            name
        })
        .collect();
    if invalid && !redirects {
        names.push(INVALID_BACKEND_500.into());
    }
    let router = format!(
        "gw-{}{}-{}-{}",
        if kind == "GRPCRoute" { "grpc-" } else { "" },
        slug(ns),
        slug(name),
        fnv(&[&entry_point, host, &ri.to_string(), &mi.to_string()])
    );
    let tls = (scheme == "https").then(|| model::RouterTls {
        cert_resolver: if listener.own_certificates { None } else { settings.cert_resolver.clone() },
        ..Default::default()
    });
    let router_config = model::HttpRouter {
        rule: text,
        service: service.to_string(),
        entry_points: vec![entry_point],
        middlewares: names,
        priority: None,
        tls,
    };
    out.http.routers.insert(router.clone(), router_config);
    Ok((router, precedence))
}

/// The Traefik service of a rule (one backend, a weighted split, or the invalid-backend service), and whether
/// it has no valid backend. The first unresolvable reference is kept for the route's ResolvedRefs condition.
fn rule_service(
    rule: &HttpRouteRules,
    (kind, ns): (&str, &str),
    cluster: &super::Cluster,
    backends: &Backends,
    cache: &mut HashMap<(String, String, i32, bool), Option<Rc<Resolved>>>,
    unresolved: &mut Option<(&'static str, String)>,
    out: &mut Plan,
) -> (String, bool) {
    let mut valid: Vec<(Rc<Resolved>, u32)> = Vec::new();
    for backend in rule.backend_refs.iter().flatten() {
        match check_backend(backend, kind, ns, cluster, backends, cache) {
            Ok(resolved) => valid.push((resolved, backend.weight.unwrap_or(1).clamp(0, 1_000_000) as u32)),
            Err(problem) => {
                unresolved.get_or_insert(problem);
            }
        }
    }
    for (resolved, _) in &valid {
        if out.backend_names.insert(resolved.name.clone()) {
            out.backends.push(Rc::clone(resolved));
        }
    }
    let total: u32 = valid.iter().map(|(_, w)| *w).sum();
    match valid.as_slice() {
        _ if total == 0 => (INVALID_BACKEND.to_string(), true),
        [(only, _)] => (only.name.clone(), false),
        _ => {
            let members: Vec<model::WeightedService> =
                valid.iter().map(|(r, w)| model::WeightedService { name: r.name.clone(), weight: *w }).collect();
            let key: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.weight)).collect();
            let name = format!("gw-split-{}", fnv(&key.iter().map(String::as_str).collect::<Vec<_>>()));
            out.http.services.insert(
                name.clone(),
                model::HttpService { load_balancer: None, weighted: Some(model::Weighted { services: members }) },
            );
            (name, false)
        }
    }
}

/// Resolves one backendRef of a route of `route_kind` in `ns`: a Service port, in another namespace only with
/// a ReferenceGrant; or the ResolvedRefs reason and message.
fn check_backend(
    backend: &HttpRouteRulesBackendRefs,
    route_kind: &str,
    ns: &str,
    cluster: &super::Cluster,
    backends: &Backends,
    cache: &mut HashMap<(String, String, i32, bool), Option<Rc<Resolved>>>,
) -> Result<Rc<Resolved>, (&'static str, String)> {
    let group = backend.group.as_deref().unwrap_or("");
    let kind = backend.kind.as_deref().unwrap_or("Service");
    let target_ns = backend.namespace.clone().unwrap_or_else(|| ns.to_string());
    if !matches!(group, "" | "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {}: only Services are supported", backend.name),
        ));
    }
    if target_ns != ns && !granted(&cluster.reference_grants, (route_kind, ns), ("Service", &target_ns, &backend.name))
    {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {target_ns}/{}: no ReferenceGrant in {target_ns} allows {route_kind}s of {ns}",
                backend.name
            ),
        ));
    }
    let Some(port) = backend.port else {
        return Err(("UnsupportedValue", format!("backendRef Service {}: a port is required", backend.name)));
    };
    // gRPC pods speak HTTP/2 without TLS.
    let h2c = route_kind == "GRPCRoute";
    let key = (target_ns.clone(), backend.name.clone(), port, h2c);
    let resolved =
        cache.entry(key).or_insert_with(|| backends.resolve_port(&target_ns, &backend.name, port, h2c).map(Rc::new));
    match resolved {
        Some(r) if r.source.is_some() => Ok(Rc::clone(r)),
        _ => Err(("BackendNotFound", format!("Service {target_ns}/{} has no port {port}", backend.name))),
    }
}

/// The listeners a route attached to: (Gateway namespace and name, listener index, the hosts it serves there).
type Attached = Vec<((String, String), usize, Vec<String>)>;

/// Attaches a route of `kind` in `ns` with `hosts` by its `parentRefs`: for each parentRef naming a Gateway of
/// ours, the ref (as written) and its Accepted condition; and the listeners it attached to.
fn attach<T: serde::Serialize>(
    refs: &Option<Vec<T>>,
    ns: &str,
    hosts: &[String],
    kind: &str,
    listeners: &BTreeMap<(String, String), Vec<Listener>>,
) -> (Vec<(serde_json::Value, Condition)>, Attached) {
    let mut parents = Vec::new();
    let mut attached = Vec::new();
    for parent in refs.iter().flatten() {
        let parent = serde_json::to_value(parent).unwrap_or_default();
        let text = |field: &str| parent[field].as_str().map(str::to_string);
        if text("group").as_deref().unwrap_or(GROUP) != GROUP
            || text("kind").as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let key = (text("namespace").unwrap_or_else(|| ns.to_string()), text("name").unwrap_or_default());
        let Some(gateway_listeners) = listeners.get(&key) else { continue }; // not a Gateway of ours
        let (section, port) = (text("sectionName"), parent["port"].as_i64());
        let candidates: Vec<(usize, &Listener)> = gateway_listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| section.as_deref().is_none_or(|s| s == l.name))
            .filter(|(_, l)| port.is_none_or(|p| p == i64::from(l.port)))
            .collect();
        let allowed: Vec<&(usize, &Listener)> = candidates
            .iter()
            .filter(|(_, l)| l.serve.is_some() && l.kinds.contains(&kind))
            .filter(|(_, l)| l.namespaces.as_ref().is_none_or(|admitted| admitted.contains(ns)))
            .collect();
        // Hostnames matter where a listener routes by name (HTTP, HTTPS, TLS); TCP and UDP ports take any.
        let hosted: Vec<(usize, Vec<String>)> = allowed
            .iter()
            .filter_map(|(i, l)| match l.serve.as_ref().map(|s| s.1) {
                Some("tcp" | "udp") => Some((*i, vec![String::new()])),
                _ => hostnames::intersect(l.hostname.as_deref(), hosts).map(|h| (*i, h)),
            })
            .collect();
        let accepted = if candidates.is_empty() {
            Condition::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener of the Gateway has that sectionName/port",
            )
        } else if allowed.is_empty() {
            let message = format!("no listener of the Gateway admits {kind}s from this namespace");
            Condition::new("Accepted", false, "NotAllowedByListeners", message)
        } else if hosted.is_empty() {
            let message = "no listener hostname intersects the route's hostnames";
            Condition::new("Accepted", false, "NoMatchingListenerHostname", message)
        } else {
            attached.extend(hosted.into_iter().map(|(i, h)| (key.clone(), i, h)));
            Condition::new("Accepted", true, "Accepted", "attached to the Gateway")
        };
        parents.push((parent, accepted));
    }
    (parents, attached)
}

/// A TLSRoute, TCPRoute or UDPRoute as the planner needs it (their specs share this shape).
struct L4Route {
    kind: &'static str,
    ns: String,
    name: String,
    created: i64,
    generation: Option<i64>,
    hostnames: Vec<String>,
    parent_refs: Option<Vec<serde_json::Value>>,
    backend_refs: Vec<HttpRouteRulesBackendRefs>,
}

impl L4Route {
    fn of<P: Clone + serde::Serialize, U: Clone>(kind: &'static str, route: &Object<P, U>) -> L4Route {
        let spec = serde_json::to_value(&route.spec).unwrap_or_default();
        let (ns, name) = ns_name(route);
        let backend_refs = spec["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule["backendRefs"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| serde_json::from_value(b).ok())
            .collect();
        L4Route {
            kind,
            ns,
            name,
            created: created(route),
            generation: route.metadata.generation,
            hostnames: serde_json::from_value(spec["hostnames"].clone()).unwrap_or_default(),
            parent_refs: serde_json::from_value(spec["parentRefs"].clone()).ok(),
            backend_refs,
        }
    }
}

/// TLSRoutes (passthrough by SNI on the TLS entrypoint), TCPRoutes and UDPRoutes (a public port each, served
/// by the agent as LoadBalancer Services' ports are).
fn plan_l4_routes(
    cluster: &super::Cluster,
    backends: &Backends,
    listeners: &mut BTreeMap<(String, String), Vec<Listener>>,
    out: &mut Plan,
) {
    let mut routes: Vec<L4Route> = Vec::new();
    routes.extend(cluster.tls_routes.iter().map(|r| L4Route::of("TLSRoute", &**r)));
    routes.extend(cluster.tcp_routes.iter().map(|r| L4Route::of("TCPRoute", &**r)));
    routes.extend(cluster.udp_routes.iter().map(|r| L4Route::of("UDPRoute", &**r)));
    routes.sort_by(|a, b| (a.created, &a.ns, &a.name).cmp(&(b.created, &b.ns, &b.name)));
    let mut cache = HashMap::new();
    for route in routes {
        let (mut parents, attached) = attach(&route.parent_refs, &route.ns, &route.hostnames, route.kind, listeners);
        if parents.is_empty() {
            continue;
        }
        let mut sources = Vec::new();
        let mut unresolved = None;
        for backend in &route.backend_refs {
            match check_backend(backend, route.kind, &route.ns, cluster, backends, &mut cache) {
                Ok(resolved) if backend.weight != Some(0) => sources.extend(resolved.source.clone()),
                Ok(_) => {}
                Err(problem) => {
                    unresolved.get_or_insert(problem);
                }
            }
        }
        let owner = format!("{}/{}", route.ns, route.name);
        let mut taken = Vec::new();
        for (key, i, hosts) in &attached {
            let Some(listener) = listeners.get_mut(key).and_then(|l| l.get_mut(*i)) else { continue };
            let Some((_, scheme)) = listener.serve.clone() else { continue };
            if scheme == "tls" {
                for host in hosts {
                    let rule = match host.as_str() {
                        "" => "HostSNI(`*`)".to_string(),
                        h if h.starts_with('*') => format!("HostSNIRegexp(`^.+{}$`)", h[1..].replace('.', "\\.")),
                        h => format!("HostSNI(`{h}`)"),
                    };
                    let router =
                        format!("gw-{}-{}-{}", slug(&route.ns), slug(&route.name), fnv(&[&key.0, &key.1, host]));
                    let service = format!("gw-{}-{}-tls", slug(&route.ns), slug(&route.name));
                    out.passthrough.push(super::passthrough::Route::new(router, rule, service, sources.clone()));
                }
            } else {
                if let Some(older) = &listener.taken_by {
                    taken.push(format!(
                        "listener {} of Gateway {}/{} already serves the older {older}",
                        listener.name, key.0, key.1
                    ));
                    continue;
                }
                listener.taken_by = Some(owner.clone());
                out.l4.push(super::l4::Claim {
                    transport: if scheme == "tcp" { "tcp" } else { "udp" },
                    port: u16::try_from(listener.port).unwrap_or(0),
                    kind: route.kind,
                    namespace: route.ns.clone(),
                    name: route.name.clone(),
                    sources: sources.clone(),
                });
            }
            listener.attached += 1;
        }
        if !taken.is_empty() && taken.len() == attached.len() {
            for (_, accepted) in &mut parents {
                if accepted.status {
                    *accepted = Condition::new("Accepted", false, "UnsupportedValue", taken.join("; "));
                }
            }
        }
        let resolved = match unresolved {
            None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "every backendRef resolved"),
            Some((reason, message)) => Condition::new("ResolvedRefs", false, reason, message),
        };
        out.statuses.routes.push(RouteStatus {
            kind: route.kind,
            namespace: route.ns,
            name: route.name,
            generation: route.generation,
            parents: parents
                .into_iter()
                .map(|(parent_ref, accepted)| ParentStatus { parent_ref, conditions: vec![accepted, resolved.clone()] })
                .collect(),
        });
    }
}

/// The listeners of one Gateway: which are served on which entrypoint, with their conditions.
fn plan_listeners(
    gateway: &Gateway,
    ns: &str,
    cluster: &super::Cluster,
    settings: &Settings,
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
    out: &mut Plan,
) -> Vec<Listener> {
    let mut list: Vec<Listener> = Vec::new();
    for spec in &gateway.spec.listeners {
        let mut l = Listener {
            name: spec.name.clone(),
            hostname: spec.hostname.clone(),
            port: spec.port,
            serve: None,
            own_certificates: false,
            namespaces: Some([ns.to_string()].into()),
            kinds: Vec::new(),
            taken_by: None,
            attached: 0,
            conditions: Vec::new(),
            supported_kinds: Vec::new(),
        };
        let (accepted, resolved) = listener_checks(spec, ns, cluster, settings, secrets, now, &mut l, out);
        let udp = |l: &Listener| l.serve.as_ref().is_some_and(|s| s.1 == "udp");
        let conflict = l.serve.is_some()
            && list
                .iter()
                .any(|o| o.serve.is_some() && o.port == l.port && o.hostname == l.hostname && udp(o) == udp(&l));
        if conflict {
            l.serve = None;
        }
        let usable = l.serve.is_some();
        l.conditions = vec![
            accepted.clone(),
            if usable {
                Condition::new("Programmed", true, "Programmed", "served on the edge")
            } else {
                Condition::new("Programmed", false, "Invalid", "not served")
            },
            resolved,
            if conflict {
                Condition::new(
                    "Conflicted",
                    true,
                    "HostnameConflict",
                    "an earlier listener has the same port and hostname",
                )
            } else {
                Condition::new("Conflicted", false, "NoConflicts", "")
            },
        ];
        list.push(l);
    }
    list
}

/// Why a listener is not accepted, or a reference not resolved: the condition's reason and message.
type Rejection = (&'static str, String);

/// Fills in where `l` is served and returns its Accepted and ResolvedRefs conditions.
#[allow(clippy::too_many_arguments)]
fn listener_checks(
    spec: &GatewayListeners,
    ns: &str,
    cluster: &super::Cluster,
    settings: &Settings,
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
    l: &mut Listener,
    out: &mut Plan,
) -> (Condition, Condition) {
    let accepted = || Condition::new("Accepted", true, "Accepted", "");
    let refused = |(reason, message): Rejection| Condition::new("Accepted", false, reason, message);
    let ok_refs = Condition::new("ResolvedRefs", true, "ResolvedRefs", "");
    let (entry_point, scheme) = match entry_point_of(spec, settings) {
        Ok(served) => served,
        Err(rejection) => return (refused(rejection), ok_refs),
    };
    if let Err(rejection) = allowed_namespaces(spec, cluster, l) {
        return (refused(rejection), ok_refs);
    }
    let refs = match allowed_kinds(spec, l) {
        Ok(()) => ok_refs,
        Err((reason, message)) => Condition::new("ResolvedRefs", false, reason, message),
    };
    if scheme == "https" {
        if passthrough(spec) {
            let message = "HTTPS listeners terminate TLS; passthrough is a TLS listener's mode";
            return (refused(("UnsupportedValue", message.into())), refs);
        }
        if let Err((reason, message)) = certificates(spec, ns, cluster, secrets, now, l, out) {
            return (accepted(), Condition::new("ResolvedRefs", false, reason, message));
        }
    }
    l.serve = Some((entry_point, scheme));
    (accepted(), refs)
}

/// The entrypoint and scheme a listener's protocol is served on, if its port is one the edge serves it on.
fn entry_point_of(spec: &GatewayListeners, settings: &Settings) -> Result<(String, &'static str), Rejection> {
    let (entry_point, scheme, port) = match spec.protocol.as_str() {
        "HTTP" => (settings.web.clone(), "http", Some(HTTP_PORT)),
        "HTTPS" => (settings.websecure.clone(), "https", Some(HTTPS_PORT)),
        "TLS" => (settings.websecure.clone(), "tls", Some(HTTPS_PORT)),
        "TCP" => (String::new(), "tcp", None),
        "UDP" => (String::new(), "udp", None),
        other => {
            let message = format!("protocol {other} is not served (HTTP, HTTPS, TLS, TCP and UDP are)");
            return Err(("UnsupportedProtocol", message));
        }
    };
    match port {
        Some(port) if spec.port != port => {
            return Err(("PortUnavailable", format!("{} is served on the edge's port {port} only", spec.protocol)));
        }
        None if u16::try_from(spec.port).map_or(true, |p| p == 0 || settings.reserved_ports.contains(&p)) => {
            let message = format!("port {} is the edge's own (an entrypoint or WireGuard) or no port", spec.port);
            return Err(("PortUnavailable", message));
        }
        _ => {}
    }
    if scheme == "tls" && !passthrough(spec) {
        let message = "TLS listeners are served in Passthrough mode (terminate TLS with an HTTPS listener)";
        return Err(("UnsupportedValue", message.into()));
    }
    Ok((entry_point, scheme))
}

/// Whether the listener's TLS mode is Passthrough.
fn passthrough(spec: &GatewayListeners) -> bool {
    let mode = spec.tls.as_ref().and_then(|t| t.mode.as_ref());
    mode.is_some_and(|m| matches!(m, gateway_api::gateways::GatewayListenersTlsMode::Passthrough))
}

/// `allowedRoutes.namespaces`: all (`l.namespaces` none), the Gateway's own (the default), or those a selector
/// picks.
fn allowed_namespaces(spec: &GatewayListeners, cluster: &super::Cluster, l: &mut Listener) -> Result<(), Rejection> {
    let namespaces = spec.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        Some(From::All) => l.namespaces = None,
        Some(From::Selector) => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return Err(("UnsupportedValue", "allowedRoutes.namespaces.from: Selector needs a selector".into()));
            };
            let labelled = cluster.namespaces.iter().filter(|n| selects(selector, n.metadata.labels.as_ref()));
            l.namespaces = Some(labelled.filter_map(|n| n.metadata.name.clone()).collect());
        }
        _ => {}
    }
    Ok(())
}

/// `allowedRoutes.kinds`, of those the protocol carries (all of them when none are named); a kind the protocol
/// cannot carry is an InvalidRouteKinds rejection, and the others still count.
fn allowed_kinds(spec: &GatewayListeners, l: &mut Listener) -> Result<(), Rejection> {
    let carried = kinds_of(&spec.protocol);
    let mut result = Ok(());
    match spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        Some(kinds) => {
            for k in kinds {
                let ours = k.group.as_deref().is_none_or(|g| g == GROUP);
                match carried.iter().find(|c| ours && **c == k.kind) {
                    Some(kind) => l.kinds.push(kind),
                    None => {
                        result =
                            Err(("InvalidRouteKinds", format!("{} listeners carry {carried:?} only", spec.protocol)))
                    }
                }
            }
        }
        None => l.kinds.extend(carried),
    }
    l.supported_kinds = l.kinds.clone();
    result
}

/// An HTTPS listener's `certificateRefs`: each a Secret in the Gateway's namespace or one a ReferenceGrant
/// allows, holding a valid certificate (then in `out`, and the listener serves its own certificates).
fn certificates(
    spec: &GatewayListeners,
    ns: &str,
    cluster: &super::Cluster,
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
    l: &mut Listener,
    out: &mut Plan,
) -> Result<(), Rejection> {
    for cert in spec.tls.as_ref().and_then(|t| t.certificate_refs.as_ref()).into_iter().flatten() {
        let secret_ns = cert.namespace.clone().unwrap_or_else(|| ns.to_string());
        let kind_ok =
            cert.group.as_deref().unwrap_or("").is_empty() && cert.kind.as_deref().unwrap_or("Secret") == "Secret";
        if !kind_ok {
            return Err(("InvalidCertificateRef", format!("certificateRef {}: only Secrets are supported", cert.name)));
        }
        if secret_ns != ns && !granted(&cluster.reference_grants, ("Gateway", ns), ("Secret", &secret_ns, &cert.name)) {
            return Err(("RefNotPermitted", format!("Secret {secret_ns}/{}: no ReferenceGrant allows it", cert.name)));
        }
        match certificate_of(secrets.get(&(secret_ns.clone(), cert.name.clone())), now) {
            Ok((certificate, checked)) => {
                out.expires = out.expires.min(checked.not_after);
                out.certificates.insert((secret_ns, cert.name.clone()), certificate);
                l.own_certificates = true;
            }
            Err(reason) => {
                return Err(("InvalidCertificateRef", format!("Secret {secret_ns}/{}: {reason}", cert.name)));
            }
        }
    }
    Ok(())
}

fn gateway_status(gateway: &Gateway, namespace: String, name: String, listeners: Vec<Listener>) -> GatewayStatus {
    let served = listeners.iter().any(|l| l.serve.is_some());
    let conditions = if gateway.spec.addresses.as_ref().is_some_and(|a| !a.is_empty()) {
        vec![
            Condition::new(
                "Accepted",
                false,
                "UnsupportedAddress",
                "the edge's addresses are the Gateway's; spec.addresses cannot choose them",
            ),
            Condition::new("Programmed", false, "Invalid", "not served"),
        ]
    } else if served {
        vec![
            Condition::new("Accepted", true, "Accepted", "served by the POLAREDGE edge"),
            Condition::new("Programmed", true, "Programmed", "in the snapshot the edges serve"),
        ]
    } else {
        vec![
            Condition::new("Accepted", false, "ListenersNotValid", "no listener can be served"),
            Condition::new("Programmed", false, "Invalid", "not served"),
        ]
    };
    GatewayStatus {
        namespace,
        name,
        generation: gateway.metadata.generation,
        conditions,
        listeners: listeners
            .into_iter()
            .map(|l| ListenerStatus {
                name: l.name,
                attached_routes: l.attached,
                supported_kinds: l.supported_kinds,
                conditions: l.conditions,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
