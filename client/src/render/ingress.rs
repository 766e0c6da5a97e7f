//! Ingresses of our classes: which claim which host and path (the oldest wins a conflict), with their TLS
//! hosts, certificates and passthrough hosts ([`claims`]); then the claims as Traefik routers, services and
//! middlewares ([`routers`]). Pure.

use super::annotations::Annotations;
use super::rules::{self, PathMatch};
use super::{
    add_backend, certificate_of, covers, fnv, model, ns_name, passthrough, slug, Backends, Cluster, Notice, Resolved,
    ServerSource, Settings,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Which IngressClass names are ours, and whether one of them is the default.
fn our_classes(cluster: &Cluster, settings: &Settings) -> (BTreeSet<String>, bool) {
    let mut names = BTreeSet::new();
    let mut default = false;
    for class in &cluster.classes {
        if class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(settings.controller.as_str()) {
            names.insert(class.metadata.name.clone().unwrap_or_default());
            let annotations = class.metadata.annotations.as_ref();
            default |= annotations.and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true");
        }
    }
    (names, default)
}

/// Namespace, Service, port (name or number) and scheme override: what a resolution depends on.
type BackendKey = (String, String, String, Option<bool>);

/// One claim on a host+path, kept until conflicts are settled.
pub(super) struct Route {
    key: (String, PathMatch, String),
    router: String,
    rule: String,
    priority: i64,
    ns: String,
    ingress: String,
    backend: IngressBackend,
    tls: bool,
    /// Served with a certificate from a Secret (no ACME resolver on its TLS router).
    own_certificate: bool,
    annotations: Annotations,
    strip_prefix: Option<String>,
}

/// What the Ingresses claim.
pub(super) struct Claims {
    /// The winning host+path claims.
    pub routes: Vec<Route>,
    /// Ingresses served (namespace, name).
    pub served: BTreeSet<(String, String)>,
    /// Conflicts, annotation and Secret problems.
    pub notices: Vec<Notice>,
    /// Certificates from TLS Secrets by (namespace, name).
    pub certificates: BTreeMap<(String, String), model::TlsCertificate>,
    /// When the first of them expires.
    pub expires: i64,
    /// TLS passthrough hosts.
    pub passthrough: Vec<passthrough::Route>,
}

/// The claims of the Ingresses of our classes, oldest first.
pub(super) fn claims(
    cluster: &Cluster,
    settings: &Settings,
    backends: &Backends,
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
) -> Claims {
    let mut claimer = Claimer {
        backends,
        secrets,
        now,
        claims: Claims {
            routes: Vec::new(),
            served: BTreeSet::new(),
            notices: Vec::new(),
            certificates: BTreeMap::new(),
            expires: i64::MAX,
            passthrough: Vec::new(),
        },
        claimed: BTreeMap::new(),
        passthrough_claims: BTreeMap::new(),
    };
    for ingress in our_ingresses_oldest_first(cluster, settings) {
        claimer.claim(ingress);
    }
    claimer.claims
}

/// The Ingresses of our classes (and class-less ones if one of ours is the default), oldest first, so the
/// oldest wins a conflict (then by namespace/name for equal times).
fn our_ingresses_oldest_first<'a>(cluster: &'a Cluster, settings: &Settings) -> Vec<&'a Ingress> {
    let (classes, we_are_default) = our_classes(cluster, settings);
    let mut ingresses: Vec<&Ingress> = cluster
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|i| match i.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
            Some(class) => classes.contains(class),
            None => we_are_default,
        })
        .collect();
    ingresses.sort_by(|a, b| {
        fn key(i: &Ingress) -> (Option<k8s_openapi::jiff::Timestamp>, &str, &str) {
            let m = &i.metadata;
            (
                m.creation_timestamp.as_ref().map(|t| t.0),
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
            )
        }
        key(a).cmp(&key(b))
    });
    ingresses
}

/// A rule's path before it is claimed: host, match kind, path as written, backend.
type Candidate = (String, PathMatch, String, IngressBackend);

/// Settles the claims Ingress by Ingress, oldest first.
struct Claimer<'a> {
    backends: &'a Backends<'a>,
    secrets: &'a HashMap<(String, String), &'a Secret>,
    now: i64,
    claims: Claims,
    /// Who holds each host+path (and the default backend): namespace, Ingress.
    claimed: BTreeMap<(String, PathMatch, String), (String, String)>,
    /// Who holds each TLS passthrough host.
    passthrough_claims: BTreeMap<String, (String, String)>,
}

impl Claimer<'_> {
    fn claim(&mut self, ingress: &Ingress) {
        let (ns, name) = ns_name(&ingress.metadata);
        let annotations = Annotations::parse(ingress.metadata.annotations.as_ref());
        for problem in &annotations.problems {
            self.notice(&ns, &name, "BadAnnotation", problem.clone());
        }
        let Some(spec) = &ingress.spec else { return };
        if annotations.tls_passthrough {
            let routes = passthrough::routes(
                ingress,
                (&ns, &name),
                self.backends,
                &mut self.passthrough_claims,
                &mut self.claims.notices,
            );
            self.claims.passthrough.extend(routes);
            self.claims.served.insert((ns, name));
            return;
        }
        // TLS host -> served with a certificate from a Secret (else ACME).
        let tls_hosts = tls_hosts(
            spec,
            (&ns, &name),
            self.secrets,
            self.now,
            (&mut self.claims.certificates, &mut self.claims.expires),
            &mut self.claims.notices,
        );
        for candidate in candidates(spec, &annotations) {
            self.claim_path(&ns, &name, &annotations, &tls_hosts, candidate);
        }
        if let Some(backend) = &spec.default_backend {
            self.claim_default_backend(&ns, &name, &annotations, backend);
        }
        self.claims.served.insert((ns, name));
    }

    /// One path of a rule, unless it cannot be a Traefik rule or an older Ingress holds it.
    fn claim_path(
        &mut self,
        ns: &str,
        name: &str,
        annotations: &Annotations,
        tls_hosts: &BTreeMap<&str, bool>,
        (host, kind, path, backend): Candidate,
    ) {
        if !rules::literal_ok(&host) || !rules::literal_ok(&path) || !path.starts_with('/') {
            let message = format!("host {host:?} path {path:?} cannot be expressed as a Traefik rule; skipped");
            self.notice(ns, name, "BadPath", message);
            return;
        }
        let key = (host.clone(), kind, path.trim_end_matches('/').to_string());
        let conflict = |owner: &str| {
            format!("host {host:?} path {path:?} is already served by the older Ingress {owner}; this rule is ignored")
        };
        if !self.take(&key, ns, name, conflict) {
            return;
        }
        let router = format!("{}-{}-{}", slug(ns), slug(name), fnv(&[&host, &format!("{kind:?}"), &path]));
        let priority = annotations.priority.unwrap_or_else(|| rules::priority(&host, kind, &path));
        let strip_prefix = (annotations.strip_prefix && path != "/").then(|| path.trim_end_matches('/').to_string());
        self.claims.routes.push(Route {
            key,
            router,
            rule: rules::rule(&host, kind, &path),
            priority,
            ns: ns.to_string(),
            ingress: name.to_string(),
            backend,
            tls: tls_hosts.contains_key(host.as_str()),
            own_certificate: tls_hosts.get(host.as_str()).copied().unwrap_or(false),
            annotations: annotations.clone(),
            strip_prefix,
        });
    }

    /// `spec.defaultBackend`: every host and path no rule serves, at the lowest priority; one per edge.
    fn claim_default_backend(&mut self, ns: &str, name: &str, annotations: &Annotations, backend: &IngressBackend) {
        let key = (String::new(), PathMatch::Prefix, "<default>".to_string());
        let conflict =
            |owner: &str| format!("the default backend is already set by the older Ingress {owner}; ignored");
        if self.take(&key, ns, name, conflict) {
            self.claims.routes.push(Route {
                key,
                router: format!("{}-{}-default", slug(ns), slug(name)),
                rule: "PathPrefix(`/`)".into(),
                priority: rules::DEFAULT_BACKEND_PRIORITY,
                ns: ns.to_string(),
                ingress: name.to_string(),
                backend: backend.clone(),
                tls: false,
                own_certificate: false,
                annotations: annotations.clone(),
                strip_prefix: None,
            });
        }
    }

    /// Claims `key` for the Ingress `ns`/`name`: false if an older Ingress holds it (a RouteConflict notice,
    /// `conflict` given the owner as `namespace/name`) or this one claimed it already (another rule with the
    /// same path).
    fn take(
        &mut self,
        key: &(String, PathMatch, String),
        ns: &str,
        name: &str,
        conflict: impl FnOnce(&str) -> String,
    ) -> bool {
        match self.claimed.get(key) {
            Some((owner_ns, owner)) if (owner_ns.as_str(), owner.as_str()) == (ns, name) => false,
            Some((owner_ns, owner)) => {
                let message = conflict(&format!("{owner_ns}/{owner}"));
                self.notice(ns, name, "RouteConflict", message);
                false
            }
            None => {
                self.claimed.insert(key.clone(), (ns.to_string(), name.to_string()));
                true
            }
        }
    }

    fn notice(&mut self, ns: &str, name: &str, reason: &'static str, message: String) {
        let (namespace, name) = (ns.to_string(), name.to_string());
        self.claims.notices.push(Notice { kind: "Ingress", namespace, name, reason, message });
    }
}

/// Every path of every rule, with the match kind its `pathType` (or, for `ImplementationSpecific`, the
/// path-match annotation) says.
fn candidates(spec: &k8s_openapi::api::networking::v1::IngressSpec, annotations: &Annotations) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let host = rule.host.clone().unwrap_or_default();
        for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
            let raw = path.path.clone().unwrap_or_else(|| "/".into());
            let kind = match path.path_type.as_str() {
                "Exact" => PathMatch::Exact,
                "Prefix" => PathMatch::Prefix,
                _ => annotations.path_match.unwrap_or(PathMatch::Prefix),
            };
            candidates.push((host.clone(), kind, raw, path.backend.clone()));
        }
    }
    candidates
}

/// The claims as Traefik routers, services (servers filled in at each render) and middlewares, with where each
/// service's servers come from.
pub(super) fn routers(
    routes: Vec<Route>,
    backends: &Backends,
    settings: &Settings,
    notices: &mut Vec<Notice>,
) -> (model::Http, BTreeMap<String, (Option<ServerSource>, &'static str)>) {
    let mut http = model::Http::default();
    let mut sources = BTreeMap::new();
    let mut resolved_cache: HashMap<BackendKey, Option<std::rc::Rc<Resolved>>> = HashMap::new();
    for route in routes {
        let svc = route.backend.service.as_ref();
        let cache_key = (
            route.ns.clone(),
            svc.map(|s| s.name.clone()).unwrap_or_default(),
            svc.and_then(|s| s.port.as_ref()).map(|p| format!("{:?}{:?}", p.name, p.number)).unwrap_or_default(),
            route.annotations.backend_https,
        );
        let resolved = resolved_cache
            .entry(cache_key)
            .or_insert_with(|| backends.resolve(&route.ns, &route.backend, &route.annotations).map(std::rc::Rc::new))
            .clone();
        let Some(resolved) = resolved else {
            notices.push(Notice {
                kind: "Ingress",
                namespace: route.ns.clone(),
                name: route.ingress.clone(),
                reason: "BadBackend",
                message: format!("{:?}: only Service backends with a port are supported; skipped", route.key),
            });
            continue;
        };
        let lb = add_backend(&mut http, &mut sources, &resolved);
        if let Some(pass) = route.annotations.pass_host_header {
            lb.pass_host_header = Some(pass);
        }
        if let Some(cookie) = &route.annotations.sticky_cookie {
            lb.sticky = Some(model::Sticky {
                cookie: model::StickyCookie {
                    name: (!cookie.is_empty()).then(|| cookie.clone()),
                    http_only: Some(true),
                    ..Default::default()
                },
            });
        }
        add_routers(&mut http, route, &resolved.name, settings);
    }
    (http, sources)
}

/// The route's routers: on the web entrypoint (or the annotation's), and for a TLS host on websecure too, where
/// the plain router may only redirect; with their middlewares.
fn add_routers(http: &mut model::Http, route: Route, service: &str, settings: &Settings) {
    let mut middlewares = Vec::new();
    if let Some(prefix) = &route.strip_prefix {
        let mw = format!("{}-strip", route.router);
        let strip = model::StripPrefix { prefixes: vec![prefix.clone()] };
        http.middlewares.insert(mw.clone(), model::Middleware { strip_prefix: Some(strip), ..Default::default() });
        middlewares.push(mw);
    }
    if route.tls {
        http.routers.insert(
            format!("{}-tls", route.router),
            model::HttpRouter {
                rule: route.rule.clone(),
                service: service.to_string(),
                entry_points: vec![settings.websecure.clone()],
                middlewares: middlewares.clone(),
                priority: Some(route.priority),
                tls: Some(model::RouterTls {
                    // Traefik picks a certificate from the Secrets by SNI; a resolver would ask ACME too.
                    cert_resolver: if route.own_certificate { None } else { settings.cert_resolver.clone() },
                    ..Default::default()
                }),
            },
        );
    }
    let mut plain_middlewares = middlewares;
    if route.tls && route.annotations.redirect_to_https {
        let mw = "polaredge-redirect-https".to_string();
        let redirect = model::RedirectScheme { scheme: "https".into(), permanent: Some(true), port: None };
        http.middlewares
            .insert(mw.clone(), model::Middleware { redirect_scheme: Some(redirect), ..Default::default() });
        plain_middlewares = vec![mw];
    }
    http.routers.insert(
        route.router,
        model::HttpRouter {
            rule: route.rule,
            service: service.to_string(),
            entry_points: route.annotations.entry_points.unwrap_or_else(|| vec![settings.web.clone()]),
            middlewares: plain_middlewares,
            priority: Some(route.priority),
            tls: None,
        },
    );
}

/// The TLS hosts of an Ingress: each with whether it is served with a certificate from its Secret (checked,
/// added to `certificates`) rather than ACME; Warning notices for unusable or mismatched Secrets.
fn tls_hosts<'a>(
    spec: &'a k8s_openapi::api::networking::v1::IngressSpec,
    (ns, name): (&String, &String),
    secrets: &HashMap<(String, String), &Secret>,
    now: i64,
    (certificates, expires): (&mut BTreeMap<(String, String), model::TlsCertificate>, &mut i64),
    notices: &mut Vec<Notice>,
) -> BTreeMap<&'a str, bool> {
    let mut tls_hosts: BTreeMap<&str, bool> = BTreeMap::new();
    for entry in spec.tls.iter().flatten() {
        let hosts: Vec<&str> = entry.hosts.iter().flatten().map(String::as_str).collect();
        let own = match &entry.secret_name {
            None => false,
            Some(secret) => match certificate_of(secrets.get(&(ns.clone(), secret.clone())), now) {
                Ok((certificate, checked)) => {
                    for host in hosts.iter().filter(|h| !covers(&checked.dns_names, h)) {
                        notices.push(Notice {
                            kind: "Ingress",
                            namespace: ns.clone(),
                            name: name.clone(),
                            reason: "TLSSecretHostMismatch",
                            message: format!(
                                "the certificate in Secret {ns}/{secret} does not name host {host:?} (it names {:?}); clients will see a name mismatch",
                                checked.dns_names
                            ),
                        });
                    }
                    *expires = (*expires).min(checked.not_after);
                    certificates.insert((ns.clone(), secret.clone()), certificate);
                    true
                }
                Err(reason) => {
                    notices.push(Notice {
                        kind: "Ingress",
                        namespace: ns.clone(),
                        name: name.clone(),
                        reason: "TLSSecretUnusable",
                        message: format!("TLS Secret {ns}/{secret}: {reason}; hosts {hosts:?} use ACME instead"),
                    });
                    false
                }
            },
        };
        for host in hosts {
            *tls_hosts.entry(host).or_default() |= own;
        }
    }
    tls_hosts
}
