//! The renderer: a pure function from the cluster's Ingresses, IngressClasses, Services and EndpointSlices to
//! the Traefik dynamic config the agents serve. Deterministic to the byte: the same cluster state gives the
//! same YAML, so the sender can skip unchanged snapshots by hash.
//!
//! Semantics (README "Ingress semantics"): Ingresses are ours by class; hosts, wildcard hosts (one label),
//! pathType Exact / Prefix (element-wise) / ImplementationSpecific (prefix unless annotated); explicit
//! priorities so the most specific rule wins; default backends at the lowest priority; Service ports by
//! number or name resolved through EndpointSlices to ready endpoints only (none: a route that answers 503);
//! https to pods by port 443, port name or annotation; TLS hosts on the TLS entrypoint, served with the
//! certificate of their `secretName` (a `kubernetes.io/tls` Secret in the Ingress's namespace, checked: PEM, key
//! match, expiry) or, without a usable one, with the ACME resolver and a Warning Event; conflicting host+path
//! pairs go to the oldest Ingress and are reported.

pub mod annotations;
pub mod gateway;
mod ingress;
pub mod l4;
mod passthrough;
pub mod rules;

use annotations::Annotations;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use routes::model::{self, DynamicConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The controller name in IngressClass.spec.controller that marks a class as ours.
pub const CONTROLLER: &str = "polaredge.io/ingress-controller";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the renderer reads: the reflector stores' contents.
#[derive(Default, Clone)]
pub struct Cluster {
    /// Ingresses (networking.k8s.io/v1).
    pub ingresses: Vec<Arc<Ingress>>,
    /// IngressClasses.
    pub classes: Vec<Arc<IngressClass>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices (discovery.k8s.io/v1).
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Secrets of type `kubernetes.io/tls`.
    pub secrets: Vec<Arc<Secret>>,
    /// Namespaces (watched with the Gateway API: listeners may admit routes by namespace labels).
    pub namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
    /// Gateway API GatewayClasses (empty when the cluster has no Gateway API CRDs).
    pub gateway_classes: Vec<Arc<gateway::GatewayClass>>,
    /// Gateway API Gateways.
    pub gateways: Vec<Arc<gateway::Gateway>>,
    /// Gateway API HTTPRoutes.
    pub http_routes: Vec<Arc<gateway::HttpRoute>>,
    /// Gateway API ReferenceGrants.
    pub reference_grants: Vec<Arc<gateway::ReferenceGrant>>,
    /// Gateway API GRPCRoutes.
    pub grpc_routes: Vec<Arc<gateway::GrpcRoute>>,
    /// Gateway API TLSRoutes.
    pub tls_routes: Vec<Arc<gateway::TlsRoute>>,
    /// Gateway API TCPRoutes.
    pub tcp_routes: Vec<Arc<gateway::TcpRoute>>,
    /// Gateway API UDPRoutes.
    pub udp_routes: Vec<Arc<gateway::UdpRoute>>,
}

/// Settings that shape the output.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Controller name of our IngressClasses.
    pub controller: String,
    /// Controller name of our GatewayClasses.
    pub gateway_controller: String,
    /// Plain HTTP entrypoint on the agents.
    pub web: String,
    /// TLS entrypoint on the agents.
    pub websecure: String,
    /// ACME resolver on the agents for TLS hosts without a usable Secret; `None`: Traefik's default certificate.
    pub cert_resolver: Option<String>,
    /// The clock TLS Secrets' certificates are checked against (seconds since the Unix epoch).
    pub now: fn() -> i64,
    /// Ports the edge keeps for itself (its entrypoints, WireGuard): LoadBalancer Services cannot have them.
    pub reserved_ports: BTreeSet<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            controller: CONTROLLER.into(),
            gateway_controller: gateway::CONTROLLER.into(),
            web: "web".into(),
            websecure: "websecure".into(),
            cert_resolver: Some("acme".into()),
            now: routes::system_now,
            reserved_ports: [80, 443, protocol::defaults::WIREGUARD_PORT].into(),
        }
    }
}

/// Something to tell the owner of an Ingress (becomes a Kubernetes Event on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Kind of the object: `Ingress`, `Service` or `HTTPRoute`.
    pub kind: &'static str,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Short reason, e.g. `RouteConflict`.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// The renderer's output.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Routers in the document.
    pub routers: usize,
    /// The config as the agents receive it, byte-for-byte deterministic. It is compact JSON, which is YAML too
    /// (a subset of YAML 1.2), because JSON serializes 20x faster than serde_yaml at scale; Traefik and the
    /// agent read it as YAML.
    pub document: String,
    /// Every pod endpoint the config routes TCP to: the relay's allow-list.
    pub endpoints: BTreeSet<SocketAddr>,
    /// Every pod endpoint of the UDP ports: the UDP relay's allow-list.
    pub udp_endpoints: BTreeSet<SocketAddr>,
    /// Ingresses served (namespace, name), for status updates.
    pub served: BTreeSet<(String, String)>,
    /// LoadBalancer Services served (namespace, name), for status updates.
    pub served_services: BTreeSet<(String, String)>,
    /// Conflicts and annotation problems.
    pub notices: Vec<Notice>,
    /// The status of the Gateway API resources of ours.
    pub gateway: Arc<gateway::conditions::Statuses>,
}

impl Cluster {
    /// The uid of the Ingress or Service `kind` `namespace/name`, if the stores hold it (Events name it, so
    /// `kubectl describe` finds them).
    pub fn uid_of(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        let matches = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            ns_name(m) == (namespace.to_string(), name.to_string())
        };
        match kind {
            "Service" => self.services.iter().find(|s| matches(&s.metadata)).and_then(|s| s.metadata.uid.clone()),
            "HTTPRoute" => self.http_routes.iter().find(|r| matches(&r.metadata)).and_then(|r| r.metadata.uid.clone()),
            "GRPCRoute" => self.grpc_routes.iter().find(|r| matches(&r.metadata)).and_then(|r| r.metadata.uid.clone()),
            "TLSRoute" => self.tls_routes.iter().find(|r| matches(&r.metadata)).and_then(|r| r.metadata.uid.clone()),
            "TCPRoute" => self.tcp_routes.iter().find(|r| matches(&r.metadata)).and_then(|r| r.metadata.uid.clone()),
            "UDPRoute" => self.udp_routes.iter().find(|r| matches(&r.metadata)).and_then(|r| r.metadata.uid.clone()),
            _ => self.ingresses.iter().find(|i| matches(&i.metadata)).and_then(|i| i.metadata.uid.clone()),
        }
    }
}

impl Rendered {
    /// The document as the typed model (for people and tests; the sender uses `document`).
    pub fn config(&self) -> DynamicConfig {
        serde_json::from_str(&self.document).expect("the renderer writes valid documents")
    }
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_else(|| "default".into()), meta.name.clone().unwrap_or_default())
}

/// Lower-case letters, digits and '-', as Traefik object names.
fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// FNV-1a: a stable short hash for names (not for security).
fn fnv(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{:08x}", h as u32)
}

/// Services, indexed once per plan.
struct Backends<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
}

/// Where a Traefik service's servers come from: namespace, Service name, and the EndpointSlice port name
/// (empty for an unnamed port).
type ServerSource = (String, String, String);

/// A resolved backend: the Traefik service name, its scheme, and where its servers come from (none when the
/// Service or its port does not exist: the route then answers 503).
struct Resolved {
    name: String,
    https: bool,
    /// HTTP/2 without TLS (gRPC pods).
    h2c: bool,
    source: Option<ServerSource>,
}

impl<'a> Backends<'a> {
    fn index(cluster: &'a Cluster) -> Backends<'a> {
        let mut services = HashMap::new();
        for s in &cluster.services {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            services.insert((ns, s.metadata.name.as_deref().unwrap_or("")), &**s);
        }
        Backends { services }
    }

    /// Service port (number or name) -> the EndpointSlice port name to look for.
    fn resolve(&self, ns: &str, backend: &IngressBackend, annotations: &Annotations) -> Option<Resolved> {
        let svc = backend.service.as_ref()?;
        let port = svc.port.as_ref()?;
        let port_label = match (&port.name, port.number) {
            (Some(name), _) if !name.is_empty() => name.clone(),
            (_, Some(n)) => n.to_string(),
            _ => return None,
        };
        let name = format!("{}-{}-{}", slug(ns), slug(&svc.name), slug(&port_label));
        let service_port = self.services.get(&(ns, svc.name.as_str())).and_then(|s| {
            s.spec.as_ref()?.ports.as_ref()?.iter().find(|p| match (&port.name, port.number) {
                (Some(n), _) if !n.is_empty() => p.name.as_deref() == Some(n.as_str()),
                (_, Some(number)) => p.port == number,
                _ => false,
            })
        });
        let https = annotations.backend_https.unwrap_or_else(|| {
            service_port.is_some_and(|sp| sp.port == 443 || sp.name.as_deref().is_some_and(|n| n.starts_with("https")))
        });
        let source = service_port.map(|sp| (ns.to_string(), svc.name.clone(), sp.name.clone().unwrap_or_default()));
        Some(Resolved { name, https, h2c: false, source })
    }

    /// A Gateway API backendRef: Service `name` in `ns` by port number (`h2c`: for gRPC, HTTP/2 without TLS).
    fn resolve_port(&self, ns: &str, name: &str, port: i32, h2c: bool) -> Option<Resolved> {
        let backend = IngressBackend {
            service: Some(k8s_openapi::api::networking::v1::IngressServiceBackend {
                name: name.into(),
                port: Some(k8s_openapi::api::networking::v1::ServiceBackendPort { number: Some(port), name: None }),
            }),
            resource: None,
        };
        let resolved = self.resolve(ns, &backend, &Annotations::default())?;
        Some(if h2c {
            Resolved { name: format!("{}-h2c", resolved.name), h2c, https: false, ..resolved }
        } else {
            resolved
        })
    }
}

/// Adds a backend's load-balancer service (servers filled in at each render) and where its servers come from.
fn add_backend<'a>(
    http: &'a mut model::Http,
    sources: &mut BTreeMap<String, (Option<ServerSource>, &'static str)>,
    resolved: &Resolved,
) -> &'a mut model::HttpLoadBalancer {
    let scheme = match (resolved.h2c, resolved.https) {
        (true, _) => "h2c",
        (_, true) => "https",
        _ => "http",
    };
    sources.entry(resolved.name.clone()).or_insert_with(|| (resolved.source.clone(), scheme));
    let service = http.services.entry(resolved.name.clone()).or_default();
    let lb = service.load_balancer.get_or_insert_with(Default::default);
    if resolved.https {
        // Pods serve self-signed certificates as a rule; the hop is inside the cluster.
        lb.servers_transport = Some("polaredge-pods".into());
        http.servers_transports.insert(
            "polaredge-pods".into(),
            model::ServersTransport { insecure_skip_verify: Some(true), server_name: None },
        );
    }
    lb
}

/// The ready endpoints of several Service ports (a route's backends, merged), sorted, each once.
fn servers_of_sources(
    sources: &[ServerSource],
    slices: &HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = sources
        .iter()
        .flat_map(|(ns, svc, port)| {
            servers_of(port, slices.get(&(ns.clone(), svc.clone())).map(Vec::as_slice).unwrap_or_default())
        })
        .collect();
    servers.sort();
    servers.dedup();
    servers
}
/// The ready endpoints of a Service port (`wanted`: the EndpointSlice port name) from the Service's
/// EndpointSlices, sorted.
fn servers_of(wanted: &str, slices: &[Arc<EndpointSlice>]) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(target) =
            slice.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or("") == wanted).and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Ready unless said otherwise (the EndpointSlice API: nil means ready).
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                if let (Ok(ip), Ok(port)) = (address.parse::<IpAddr>(), u16::try_from(target)) {
                    servers.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    servers.sort();
    servers.dedup();
    servers
}

/// Everything but the servers: what Ingresses, IngressClasses and Services decide. EndpointSlices change far
/// more often, so the plan is kept while only they change.
struct Plan {
    /// The routes with every service's servers left empty.
    http: model::Http,
    /// Per Traefik service: where its servers come from, and the scheme to reach them.
    sources: BTreeMap<String, (Option<ServerSource>, &'static str)>,
    served: BTreeSet<(String, String)>,
    notices: Vec<Notice>,
    /// Certificates from TLS Secrets by (namespace, name).
    certificates: BTreeMap<(String, String), model::TlsCertificate>,
    /// When the first of those certificates expires: the plan is made again then, so an expired certificate
    /// is never sent (the agent would refuse the whole snapshot).
    expires: i64,
    /// TLS passthrough hosts (their servers are filled in at each render).
    passthrough: Vec<passthrough::Route>,
    /// The status of the Gateway API resources of ours.
    gateway: Arc<gateway::conditions::Statuses>,
    /// The public ports of TCPRoutes and UDPRoutes (their servers are filled in at each render).
    gateway_l4: Vec<l4::Claim>,
}

/// The TLS Secrets by (namespace, name).
fn secrets_index(cluster: &Cluster) -> HashMap<(String, String), &Secret> {
    cluster.secrets.iter().map(|s| (ns_name(&s.metadata), &**s)).collect()
}

/// A `kubernetes.io/tls` Secret's certificate and key, checked; or why it cannot be used.
fn certificate_of(
    secret: Option<&&Secret>,
    now: i64,
) -> Result<(model::TlsCertificate, routes::certificate::Checked), String> {
    let secret = secret.ok_or("no Secret of type kubernetes.io/tls by that name in the Ingress's namespace")?;
    let field = |key: &str| -> Result<String, String> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or(format!("no {key} in the Secret"))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not PEM text"))
    };
    let (cert_file, key_file) = (field("tls.crt")?, field("tls.key")?);
    let checked = routes::certificate::check(&cert_file, &key_file, now).map_err(|e| e.to_string())?;
    Ok((model::TlsCertificate { cert_file, key_file }, checked))
}

/// Whether a certificate's DNS names cover `host` (a wildcard name covers exactly one label).
fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|name| {
        name.eq_ignore_ascii_case(host)
            || name
                .strip_prefix("*.")
                .is_some_and(|suffix| host.split_once('.').is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(suffix)))
    })
}

fn plan(cluster: &Cluster, settings: &Settings) -> Plan {
    let backends = Backends::index(cluster);
    let secrets = secrets_index(cluster);
    let now = (settings.now)();
    let ingress::Claims { routes, served, mut notices, mut certificates, mut expires, mut passthrough } =
        ingress::claims(cluster, settings, &backends, &secrets, now);
    let (mut http, mut sources) = ingress::routers(routes, &backends, settings, &mut notices);
    let gateway = gateway::plan(cluster, settings, &backends, &secrets, now);
    for resolved in &gateway.backends {
        add_backend(&mut http, &mut sources, resolved);
    }
    http.routers.extend(gateway.http.routers);
    http.services.extend(gateway.http.services);
    http.middlewares.extend(gateway.http.middlewares);
    certificates.extend(gateway.certificates);
    passthrough.extend(gateway.passthrough);
    expires = expires.min(gateway.expires);
    notices.extend(gateway.notices);
    Plan {
        http,
        sources,
        served,
        notices,
        certificates,
        expires,
        passthrough,
        gateway: Arc::new(gateway.statuses),
        gateway_l4: gateway.l4,
    }
}

/// A plan with its unchanging parts already serialized.
struct Planned {
    plan: Plan,
    routers: String,
    middlewares: String,
    transports: String,
    /// The `tls` section, empty without certificates.
    tls: String,
    /// Kubernetes Service (namespace, name) -> the Traefik services whose servers come from its EndpointSlices.
    consumers: HashMap<ServiceKey, Vec<String>>,
    /// The `"name":{...}` members of the services with no servers to fill in (weighted splits, the
    /// invalid-backend service).
    fixed_services: HashMap<String, String>,
}

impl Planned {
    fn new(plan: Plan) -> Planned {
        let mut consumers: HashMap<ServiceKey, Vec<String>> = HashMap::new();
        for (name, (source, _)) in &plan.sources {
            if let Some((ns, svc, _)) = source {
                consumers.entry((ns.clone(), svc.clone())).or_default().push(name.clone());
            }
        }
        let fixed_services = plan
            .http
            .services
            .iter()
            .filter(|(name, _)| !plan.sources.contains_key(*name))
            .map(|(name, service)| (name.clone(), format!("{}:{}", json(name), json(service))))
            .collect();
        Planned {
            consumers,
            fixed_services,
            routers: json(&plan.http.routers),
            middlewares: json(&plan.http.middlewares),
            transports: json(&plan.http.servers_transports),
            tls: if plan.certificates.is_empty() {
                String::new()
            } else {
                json(&model::Tls { certificates: plan.certificates.values().cloned().collect(), ..Default::default() })
            },
            plan,
        }
    }
}

/// Compact JSON of a part of the model.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("the model always serializes")
}

/// Which objects a plan was made from, by identity: reflector stores hand out the same `Arc` for an unchanged
/// object, so equal pointers mean unchanged inputs. The cache also holds the `Arc`s themselves
/// ([`PlanInputs`]): a freed object's address could otherwise be reused by a new one and fake a match.
fn plan_inputs(cluster: &Cluster) -> Vec<usize> {
    let mut key = Vec::with_capacity(cluster.ingresses.len() + cluster.classes.len() + cluster.services.len() + 2);
    let mut add = |mut ptrs: Vec<usize>| {
        ptrs.sort_unstable();
        key.extend(ptrs);
        key.push(usize::MAX);
    };
    add(cluster.ingresses.iter().map(|i| Arc::as_ptr(i) as usize).collect());
    add(cluster.classes.iter().map(|c| Arc::as_ptr(c) as usize).collect());
    add(cluster.services.iter().map(|s| Arc::as_ptr(s) as usize).collect());
    add(cluster.secrets.iter().map(|s| Arc::as_ptr(s) as usize).collect());
    add(cluster.gateway_classes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.gateways.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.http_routes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.reference_grants.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.grpc_routes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.namespaces.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.tls_routes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.tcp_routes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    add(cluster.udp_routes.iter().map(|o| Arc::as_ptr(o) as usize).collect());
    key
}

/// A Kubernetes Service: namespace and name.
type ServiceKey = (String, String);

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
fn service_of(slice: &EndpointSlice) -> Option<ServiceKey> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), svc.clone()))
}

/// The renderer with memory, for the client's long-lived loop. When only EndpointSlices changed since the last
/// render it keeps the plan (and its serialized routers), finds the changed slices by identity, and
/// re-resolves and re-serializes only the Traefik services fed by their Services; everything else is copied
/// from the last render. Same input, same bytes as [`render`].
///
/// Identity: reflector stores hand out the same `Arc` for an unchanged object, so an unknown pointer is a new
/// or changed object. The renderer holds every `Arc` it compared, so a freed object's address cannot be
/// reused by a new one and fake a match.
pub struct Renderer {
    settings: Settings,
    cache: Option<(Vec<usize>, PlanInputs, Arc<Planned>)>,
    /// Every EndpointSlice of the last render by address, with its Service.
    slices: HashMap<usize, (Arc<EndpointSlice>, Option<ServiceKey>)>,
    /// The same slices grouped by Service, kept up to date per changed slice.
    by_service: HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
    /// Per Traefik service of the current plan: its serialized `"name":{...}` member and its servers.
    services: HashMap<String, CachedService>,
    /// Every routed pod endpoint, with how many Traefik services route to it.
    endpoints: BTreeMap<SocketAddr, u32>,
}

struct CachedService {
    json: String,
    servers: Vec<SocketAddr>,
}

/// The objects behind a cached plan, kept alive so their addresses stay theirs.
type PlanInputs = (Vec<Arc<Ingress>>, Vec<Arc<IngressClass>>, Vec<Arc<Service>>, Vec<Arc<Secret>>, GatewayInputs);

/// The Gateway API objects behind a cached plan.
type GatewayInputs = (
    Vec<Arc<gateway::GatewayClass>>,
    Vec<Arc<gateway::Gateway>>,
    Vec<Arc<gateway::HttpRoute>>,
    Vec<Arc<gateway::ReferenceGrant>>,
    (
        Vec<Arc<gateway::GrpcRoute>>,
        Vec<Arc<gateway::TlsRoute>>,
        Vec<Arc<gateway::TcpRoute>>,
        Vec<Arc<gateway::UdpRoute>>,
    ),
    Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
);

impl Renderer {
    /// A renderer with nothing cached.
    pub fn new(settings: Settings) -> Renderer {
        Renderer {
            settings,
            cache: None,
            slices: HashMap::new(),
            by_service: HashMap::new(),
            services: HashMap::new(),
            endpoints: BTreeMap::new(),
        }
    }

    /// Brings `slices` and `by_service` up to date; returns the Services whose slices changed.
    fn track_slices(&mut self, cluster: &Cluster) -> HashSet<ServiceKey> {
        let mut changed = HashSet::new();
        let mut seen = HashSet::with_capacity(cluster.slices.len());
        for slice in &cluster.slices {
            let address = Arc::as_ptr(slice) as usize;
            seen.insert(address);
            if self.slices.contains_key(&address) {
                continue;
            }
            let service = service_of(slice);
            if let Some(key) = &service {
                self.by_service.entry(key.clone()).or_default().push(Arc::clone(slice));
                changed.insert(key.clone());
            }
            self.slices.insert(address, (Arc::clone(slice), service));
        }
        if seen.len() != self.slices.len() {
            let by_service = &mut self.by_service;
            self.slices.retain(|address, (slice, service)| {
                if seen.contains(address) {
                    return true;
                }
                if let Some(key) = service {
                    if let Some(group) = by_service.get_mut(key) {
                        group.retain(|s| !Arc::ptr_eq(s, slice));
                        if group.is_empty() {
                            by_service.remove(key);
                        }
                    }
                    changed.insert(key.clone());
                }
                false
            });
        }
        changed
    }

    /// Resolves one Traefik service's servers and serializes it; keeps the endpoint counts in step.
    fn refresh_service(&mut self, planned: &Planned, name: &str) {
        let Some((source, scheme)) = planned.plan.sources.get(name) else { return };
        let servers = source
            .as_ref()
            .and_then(|(ns, svc, wanted)| {
                let slices = self.by_service.get(&(ns.clone(), svc.clone()))?;
                Some(servers_of(wanted, slices))
            })
            .unwrap_or_default();
        let mut service = planned.plan.http.services.get(name).cloned().unwrap_or_default();
        service.load_balancer.get_or_insert_with(Default::default).servers =
            servers.iter().map(|s| model::HttpServer { url: format!("{scheme}://{s}"), weight: None }).collect();
        let json = format!("{}:{}", json(&name), json(&service));
        for server in &servers {
            *self.endpoints.entry(*server).or_default() += 1;
        }
        if let Some(old) = self.services.insert(name.to_string(), CachedService { json, servers }) {
            for server in old.servers {
                if let std::collections::btree_map::Entry::Occupied(mut e) = self.endpoints.entry(server) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
        }
    }

    /// Renders the cluster into the routes the agents serve.
    pub fn render(&mut self, cluster: &Cluster) -> Rendered {
        let (planned, new_plan) = self.plan(cluster);
        let changed = self.track_slices(cluster);
        if new_plan {
            // A new plan may change any service (schemes, sticky cookies, transports): serialize all again.
            self.services.clear();
            self.endpoints.clear();
            for name in planned.plan.sources.keys() {
                self.refresh_service(&planned, name);
            }
        } else {
            for key in &changed {
                for name in planned.consumers.get(key).into_iter().flatten() {
                    self.refresh_service(&planned, name);
                }
            }
        }
        let l4 = l4::render(cluster, &planned.plan.gateway_l4, &self.by_service, &self.settings.reserved_ports);
        let (tcp, passthrough_endpoints) =
            passthrough::section(&planned.plan.passthrough, &self.by_service, &self.settings.websecure);
        let mut endpoints: BTreeSet<SocketAddr> = self.endpoints.keys().copied().collect();
        endpoints.extend(l4.endpoints.iter().copied());
        endpoints.extend(passthrough_endpoints);
        let document = self.document(&planned, tcp.as_ref(), l4.section.as_ref());
        Rendered {
            document,
            routers: planned.plan.http.routers.len(),
            endpoints,
            udp_endpoints: l4.udp_endpoints,
            served: planned.plan.served.clone(),
            served_services: l4.served,
            notices: planned.plan.notices.iter().cloned().chain(l4.notices).collect(),
            gateway: Arc::clone(&planned.plan.gateway),
        }
    }

    /// The plan for `cluster`: the cached one while the objects it rests on are the same and no certificate
    /// in it has expired, else a new one (`true`).
    fn plan(&mut self, cluster: &Cluster) -> (Arc<Planned>, bool) {
        let inputs = plan_inputs(cluster);
        let now = (self.settings.now)();
        if let Some((cached, _, planned)) = &self.cache {
            if *cached == inputs && now < planned.plan.expires {
                return (Arc::clone(planned), false);
            }
        }
        let planned = Arc::new(Planned::new(plan(cluster, &self.settings)));
        let alive = (
            cluster.ingresses.clone(),
            cluster.classes.clone(),
            cluster.services.clone(),
            cluster.secrets.clone(),
            (
                cluster.gateway_classes.clone(),
                cluster.gateways.clone(),
                cluster.http_routes.clone(),
                cluster.reference_grants.clone(),
                (
                    cluster.grpc_routes.clone(),
                    cluster.tls_routes.clone(),
                    cluster.tcp_routes.clone(),
                    cluster.udp_routes.clone(),
                ),
                cluster.namespaces.clone(),
            ),
        );
        self.cache = Some((inputs, alive, Arc::clone(&planned)));
        (planned, true)
    }

    /// Exactly serde_json's compact form of `DynamicConfig { http, tcp, tls, l4 }` (a test holds it to that),
    /// assembled from parts so that unchanged parts need no serializing. Always an `http` section, even an
    /// empty one: with no Ingress left the agents must serve nothing, and an explicit empty section says so.
    fn document(&self, planned: &Planned, tcp: Option<&model::Tcp>, l4: Option<&model::L4>) -> String {
        let http = &planned.plan.http;
        let mut services = String::with_capacity(planned.routers.len());
        services.push('{');
        for (i, name) in http.services.keys().enumerate() {
            if i > 0 {
                services.push(',');
            }
            match planned.fixed_services.get(name) {
                Some(fixed) => services.push_str(fixed),
                None => services.push_str(&self.services[name].json),
            }
        }
        services.push('}');
        let mut document = String::with_capacity(planned.routers.len() + services.len() + 256);
        document.push_str("{\"http\":{");
        let parts = [
            ("routers", &planned.routers, http.routers.is_empty()),
            ("services", &services, http.services.is_empty()),
            ("middlewares", &planned.middlewares, http.middlewares.is_empty()),
            ("serversTransports", &planned.transports, http.servers_transports.is_empty()),
        ];
        let mut first = true;
        for (key, json, empty) in parts {
            if empty {
                continue;
            }
            if !first {
                document.push(',');
            }
            first = false;
            document.push('"');
            document.push_str(key);
            document.push_str("\":");
            document.push_str(json);
        }
        document.push('}');
        if let Some(tcp) = tcp {
            document.push_str(",\"tcp\":");
            document.push_str(&json(tcp));
        }
        if !planned.tls.is_empty() {
            document.push_str(",\"tls\":");
            document.push_str(&planned.tls);
        }
        if let Some(section) = l4 {
            document.push_str(",\"l4\":");
            document.push_str(&json(section));
        }
        document.push_str("}\n");
        document
    }
}

/// Renders the cluster into the routes the agents serve (no memory; see [`Renderer`]).
pub fn render(cluster: &Cluster, settings: &Settings) -> Rendered {
    Renderer::new(settings.clone()).render(cluster)
}

#[cfg(test)]
mod tests;
