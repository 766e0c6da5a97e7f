//! Watching the cluster with kube-rs reflectors (Ingress, IngressClass, Service, EndpointSlice, and Secrets of
//! type `kubernetes.io/tls`), and turning their changes into renderer input.
//!
//! The Gateway API's GatewayClasses, Gateways, HTTPRoutes and ReferenceGrants are watched when the cluster
//! serves `gateway.networking.k8s.io/v1` (its CRDs are installed): looked up at start and every minute
//! (`POLAREDGE_GATEWAY_LOOKUP_SECONDS`) until found, so installing the CRDs later needs no restart. Without them the client serves Ingresses only.
//!
//! Secrets are watched with the field selector `type=kubernetes.io/tls`, so no other Secret ever reaches the
//! client. When RBAC does not allow reading Secrets (manifests from before certificates came from Secrets), the
//! client says so once and serves every TLS host with ACME, as before.
//!
//! A relist (after a dropped watch or a 410 Gone) rebuilds a store atomically at `InitDone`, and renders are
//! only triggered by `Apply`, `Delete` and `InitDone`, never in the middle of a relist: a relist does not
//! produce a snapshot without routes that exist before and after it. Nothing renders until every store has
//! completed its first list, so the first snapshot is never partial.

use crate::render::gateway::{
    self, Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute, TlsRoute, UdpRoute,
};
use crate::render::Cluster;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::ApiResource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

/// Readers of the stores.
#[derive(Clone)]
pub struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    /// Set once the cluster is found to serve the Gateway API.
    gateway: Arc<OnceLock<GatewayStores>>,
    /// Every store has listed once: before that a cluster read is partial (and a render would drop routes).
    synced: Arc<AtomicBool>,
}

/// Readers of the Gateway API stores.
#[derive(Clone)]
struct GatewayStores {
    classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    routes: Store<HttpRoute>,
    grants: Store<ReferenceGrant>,
    /// Namespaces, for listeners that admit routes by namespace labels.
    namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    /// The other route kinds, where the cluster serves them.
    grpc_routes: Option<Store<GrpcRoute>>,
    tls_routes: Option<Store<TlsRoute>>,
    tcp_routes: Option<Store<TcpRoute>>,
    udp_routes: Option<Store<UdpRoute>>,
}

/// How often the client looks for the Gateway API while the cluster does not serve it:
/// `POLAREDGE_GATEWAY_LOOKUP_SECONDS`, else a minute.
fn gateway_lookup() -> std::time::Duration {
    let seconds = std::env::var("POLAREDGE_GATEWAY_LOOKUP_SECONDS").ok().and_then(|s| s.parse().ok());
    std::time::Duration::from_secs(seconds.unwrap_or(60).max(1))
}

/// The field selector of the Secret watch: TLS Secrets only.
pub const TLS_SECRETS: &str = "type=kubernetes.io/tls";

/// The watch streams by index: what each event names, and which stores have listed once.
mod stream {
    pub const INGRESS: usize = 0;
    pub const INGRESS_CLASS: usize = 1;
    pub const SERVICE: usize = 2;
    pub const ENDPOINT_SLICE: usize = 3;
    /// The first of the optional streams (a refusal by RBAC is survivable from here on).
    pub const SECRET: usize = 4;
    pub const GATEWAY_CLASS: usize = 5;
    pub const GATEWAY: usize = 6;
    pub const HTTP_ROUTE: usize = 7;
    pub const REFERENCE_GRANT: usize = 8;
    pub const TLS_ROUTE: usize = 9;
    pub const TCP_ROUTE: usize = 10;
    pub const UDP_ROUTE: usize = 11;
    pub const GRPC_ROUTE: usize = 12;
    pub const NAMESPACE: usize = 13;
    /// Their kinds, for logs.
    pub const NAMES: [&str; 14] = [
        "Ingress",
        "IngressClass",
        "Service",
        "EndpointSlice",
        "Secret",
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "ReferenceGrant",
        "TLSRoute",
        "TCPRoute",
        "UDPRoute",
        "GRPCRoute",
        "Namespace",
    ];
}

impl Stores {
    /// The renderer's input, as the stores hold it now.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            ingresses: self.ingresses.state(),
            classes: self.classes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            secrets: self.secrets.state(),
            gateway_classes: self.gateway.get().map(|g| g.classes.state()).unwrap_or_default(),
            gateways: self.gateway.get().map(|g| g.gateways.state()).unwrap_or_default(),
            http_routes: self.gateway.get().map(|g| g.routes.state()).unwrap_or_default(),
            reference_grants: self.gateway.get().map(|g| g.grants.state()).unwrap_or_default(),
            namespaces: self.gateway.get().map(|g| g.namespaces.state()).unwrap_or_default(),
            grpc_routes: self.gateway.get().and_then(|g| g.grpc_routes.as_ref()).map(Store::state).unwrap_or_default(),
            tls_routes: self.gateway.get().and_then(|g| g.tls_routes.as_ref()).map(Store::state).unwrap_or_default(),
            tcp_routes: self.gateway.get().and_then(|g| g.tcp_routes.as_ref()).map(Store::state).unwrap_or_default(),
            udp_routes: self.gateway.get().and_then(|g| g.udp_routes.as_ref()).map(Store::state).unwrap_or_default(),
        }
    }

    /// Whether every store has listed once (see [`start`]).
    pub fn synced(&self) -> bool {
        self.synced.load(SeqCst)
    }

    /// Whether the Gateway API is watched.
    pub fn gateway_api(&self) -> bool {
        self.gateway.get().is_some()
    }
}

/// Whether every stream has listed once (streams added later, the Gateway API's, must list too); records it
/// in `synced` for the readers.
fn all_listed(listed: &[bool], synced: &AtomicBool) -> bool {
    let all = listed.iter().all(|l| *l);
    synced.store(all, SeqCst);
    all
}

/// Whether a watch error is RBAC's refusal.
fn forbidden(error: &str) -> bool {
    error.contains("403") || error.to_ascii_lowercase().contains("forbidden")
}

/// Whether an event should trigger a render (see the module docs).
fn triggers<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
}

/// Writes back to the cluster (Ingress status, Events) on the watch runtime.
pub struct Writer {
    client: kube::Client,
    runtime: tokio::runtime::Handle,
    recorder: kube::runtime::events::Recorder,
}

impl Writer {
    /// Patches `status.loadBalancer.ingress` of each changed Ingress or Service (a merge patch of the status
    /// subresource).
    pub fn write_status(&self, changes: Vec<crate::status::StatusChange>) {
        for change in changes {
            let ingress: Vec<serde_json::Value> = change
                .addresses
                .iter()
                .map(|a| {
                    if a.parse::<std::net::IpAddr>().is_ok() {
                        serde_json::json!({"ip": a})
                    } else {
                        serde_json::json!({"hostname": a})
                    }
                })
                .collect();
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
            let client = self.client.clone();
            self.runtime.spawn(async move {
                let params = kube::api::PatchParams::default();
                let patch = kube::api::Patch::Merge(&patch);
                let result = match change.kind {
                    "Service" => Api::<Service>::namespaced(client, &change.namespace)
                        .patch_status(&change.name, &params, &patch)
                        .await
                        .map(drop),
                    _ => Api::<Ingress>::namespaced(client, &change.namespace)
                        .patch_status(&change.name, &params, &patch)
                        .await
                        .map(drop),
                };
                if let Err(e) = result {
                    log::warn!("cannot update the status of {} {}/{}: {e}", change.kind, change.namespace, change.name);
                }
            });
        }
    }

    /// Writes Gateway API status: a merge patch of each object's status subresource.
    pub fn patch_gateway_status(&self, patches: Vec<crate::status::gateway::StatusPatch>) {
        for patch in patches {
            let client = self.client.clone();
            self.runtime.spawn(async move {
                let resource = gateway::api_resource_at(patch.kind, &patch.version);
                let api: Api<kube::core::DynamicObject> = match &patch.namespace {
                    Some(ns) => Api::namespaced_with(client, ns, &resource),
                    None => Api::all_with(client, &resource),
                };
                let params = kube::api::PatchParams::default();
                if let Err(e) = api.patch_status(&patch.name, &params, &kube::api::Patch::Merge(&patch.body)).await {
                    let ns = patch.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
                    log::warn!("cannot update the status of {} {ns}{}: {e}", patch.kind, patch.name);
                }
            });
        }
    }

    /// Creates a Warning Event on the Ingress or Service a notice is about.
    pub fn post_event(&self, notice: &crate::render::Notice, uid: Option<String>) {
        use k8s_openapi::api::core::v1::ObjectReference;
        use kube::runtime::events::{Event, EventType};
        let reference = ObjectReference {
            api_version: Some(match notice.kind {
                "Service" => "v1".to_string(),
                "HTTPRoute" | "GRPCRoute" | "Gateway" | "TLSRoute" | "TCPRoute" | "UDPRoute" => {
                    format!("{}/{}", gateway::GROUP, gateway::VERSION)
                }
                _ => "networking.k8s.io/v1".to_string(),
            }),
            kind: Some(notice.kind.into()),
            name: Some(notice.name.clone()),
            namespace: Some(notice.namespace.clone()),
            // Without the uid `kubectl describe` does not show the Event.
            uid,
            ..Default::default()
        };
        // The Recorder (events.k8s.io/v1) makes the first report an Event and counts a repeat within six
        // minutes into that Event's series instead of a new one.
        let event = Event {
            type_: EventType::Warning,
            reason: notice.reason.into(),
            note: Some(notice.message.chars().take(1024).collect()),
            action: "Render".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        self.runtime.spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                log::warn!("cannot create an Event: {e}");
            }
        });
    }
}

/// Starts the watches on the process's API runtime; `changed` gets `()` whenever the cluster changed after
/// every store has listed once. Returns the store readers and a writer for status and Events.
pub fn start(api: &crate::kube_api::KubeApi, changed: Sender<()>) -> (Stores, Writer) {
    let (ingresses, ingress_writer) = reflector::store();
    let (classes, class_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (slices, slice_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let gateway_stores = Arc::new(OnceLock::new());
    let synced = Arc::new(AtomicBool::new(false));
    let stores = Stores {
        ingresses,
        classes,
        services,
        slices,
        secrets,
        gateway: Arc::clone(&gateway_stores),
        synced: Arc::clone(&synced),
    };
    let client = api.client();
    let config = watcher::Config::default();
    let events = futures::stream::select_all([
        reflect(ingress_writer, Api::all(client.clone()), config.clone(), stream::INGRESS),
        reflect(class_writer, Api::all(client.clone()), config.clone(), stream::INGRESS_CLASS),
        reflect(service_writer, Api::all(client.clone()), config.clone(), stream::SERVICE),
        reflect(slice_writer, Api::all(client.clone()), config.clone(), stream::ENDPOINT_SLICE),
        reflect(secret_writer, Api::all(client.clone()), config.clone().fields(TLS_SECRETS), stream::SECRET),
    ]);
    let watch = Watch {
        client: client.clone(),
        config,
        events,
        listed: vec![false; stream::SECRET + 1],
        gateway: gateway_stores,
        synced,
        changed,
        forbidden: [false; stream::NAMES.len()],
    };
    api.handle().spawn(watch.run());
    let reporter = kube::runtime::events::Reporter {
        controller: "polaredge-client".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    (stores, Writer { client, runtime: api.handle(), recorder })
}

/// What a watch stream yields: the stream's index (see [`stream`]), whether the event asks for a render, and
/// the watch error, if any.
type Event = (usize, bool, Option<String>);

/// A reflector that feeds `writer` from a watch of `api` (restarted with backoff), its events tagged `index`.
fn reflect<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    config: watcher::Config,
    index: usize,
) -> BoxStream<'static, Event>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflector::reflector(writer, watcher(api, config).default_backoff())
        .map(move |event| match event {
            Ok(event) => (index, triggers(&event), None),
            Err(e) => (index, false, Some(e.to_string())),
        })
        .boxed()
}

/// A Gateway API kind: an object whose API resource (group, version, plural) is known at run time only.
trait GatewayKind:
    kube::Resource<DynamicType = ApiResource> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> GatewayKind for K where
    K: kube::Resource<DynamicType = ApiResource> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// A reflector for the Gateway API kind `name` at `version`: its events and its store.
fn reflect_gateway_kind<K>(
    client: &kube::Client,
    config: &watcher::Config,
    name: &str,
    version: &str,
    index: usize,
) -> (BoxStream<'static, Event>, Store<K>)
where
    K: GatewayKind,
{
    let resource = gateway::api_resource_at(name, version);
    let writer = reflector::store::Writer::<K>::new(resource.clone());
    let reader = writer.as_reader();
    (reflect(writer, Api::all_with(client.clone(), &resource), config.clone(), index), reader)
}

/// The watch task: every stream's events in, render requests out.
struct Watch {
    client: kube::Client,
    config: watcher::Config,
    events: SelectAll<BoxStream<'static, Event>>,
    /// By stream index: whether it has listed once (or will never list: forbidden by RBAC).
    listed: Vec<bool>,
    gateway: Arc<OnceLock<GatewayStores>>,
    synced: Arc<AtomicBool>,
    changed: Sender<()>,
    /// By stream index: RBAC refuses the watch (said once, until it works).
    forbidden: [bool; stream::NAMES.len()],
}

impl Watch {
    /// Runs until nobody waits for renders. The Gateway API is looked up before the first render, so that a
    /// cluster with HTTPRoutes never gets a snapshot without them, and again every [`gateway_lookup`] until
    /// the cluster serves it.
    async fn run(mut self) {
        let mut lookup = tokio::time::interval(gateway_lookup());
        lookup.tick().await;
        let mut gateway_on = self.look_for_gateway_api(true).await;
        loop {
            let next = tokio::select! {
                next = self.events.next() => next,
                _ = lookup.tick(), if !gateway_on => {
                    gateway_on = self.look_for_gateway_api(false).await;
                    continue;
                }
            };
            let Some(event) = next else { return };
            if !self.on_event(event) {
                return;
            }
        }
    }

    /// Watches the Gateway API if the cluster serves it; returns whether it does.
    async fn look_for_gateway_api(&mut self, first: bool) -> bool {
        let Some(served) = gateway_served(&self.client).await else {
            if first {
                log::info!(
                    "the cluster has no Gateway API CRDs ({}/{}): serving Ingresses; looking again every {:?}",
                    gateway::GROUP,
                    gateway::VERSION,
                    gateway_lookup()
                );
            }
            return false;
        };
        if first {
            log::info!(
                "the cluster serves the Gateway API: watching GatewayClasses, Gateways, HTTPRoutes, \
                 ReferenceGrants and {served:?}"
            );
        } else {
            log::info!("the cluster serves the Gateway API now: watching its resources");
        }
        self.watch_gateway_api(&served);
        all_listed(&self.listed, &self.synced); // renders wait until the new streams listed
        true
    }

    /// Starts the Gateway API's watches: the kinds of the standard channel, Namespaces (for listeners that
    /// admit routes by namespace labels), and the optional route kinds the cluster serves.
    fn watch_gateway_api(&mut self, served: &Served) {
        use k8s_openapi::api::core::v1::Namespace;
        let (client, config) = (&self.client, &self.config);
        let (classes, classes_reader) =
            reflect_gateway_kind(client, config, "GatewayClass", gateway::VERSION, stream::GATEWAY_CLASS);
        let (gateways, gateways_reader) =
            reflect_gateway_kind(client, config, "Gateway", gateway::VERSION, stream::GATEWAY);
        let (routes, routes_reader) =
            reflect_gateway_kind(client, config, "HTTPRoute", gateway::VERSION, stream::HTTP_ROUTE);
        let (grants, grants_reader) =
            reflect_gateway_kind(client, config, "ReferenceGrant", gateway::VERSION, stream::REFERENCE_GRANT);
        let (namespaces_reader, namespaces_writer) = reflector::store();
        let namespaces =
            reflect(namespaces_writer, Api::<Namespace>::all(client.clone()), config.clone(), stream::NAMESPACE);
        self.events.extend([classes, gateways, routes, grants, namespaces]);
        // The optional kinds count as listed unless they are watched.
        self.listed.resize(stream::NAMES.len(), true);
        for index in
            [stream::GATEWAY_CLASS, stream::GATEWAY, stream::HTTP_ROUTE, stream::REFERENCE_GRANT, stream::NAMESPACE]
        {
            self.listed[index] = false;
        }
        let stores = GatewayStores {
            classes: classes_reader,
            gateways: gateways_reader,
            routes: routes_reader,
            grants: grants_reader,
            namespaces: namespaces_reader,
            grpc_routes: self.watch_optional(served, "GRPCRoute", stream::GRPC_ROUTE),
            tls_routes: self.watch_optional(served, "TLSRoute", stream::TLS_ROUTE),
            tcp_routes: self.watch_optional(served, "TCPRoute", stream::TCP_ROUTE),
            udp_routes: self.watch_optional(served, "UDPRoute", stream::UDP_ROUTE),
        };
        let _ = self.gateway.set(stores);
    }

    /// Watches the optional route kind `name` at the version the cluster serves it at; `None` if it does not.
    fn watch_optional<K>(&mut self, served: &Served, name: &str, index: usize) -> Option<Store<K>>
    where
        K: GatewayKind,
    {
        let version = served.get(name)?;
        let (events, store) = reflect_gateway_kind(&self.client, &self.config, name, version, index);
        self.listed[index] = false;
        self.events.push(events);
        Some(store)
    }

    /// Takes one stream event; false when nobody waits for renders any more.
    fn on_event(&mut self, (index, trigger, error): Event) -> bool {
        if let Some(e) = error {
            if index >= stream::SECRET && forbidden(&e) {
                // Not allowed to read Secrets or the Gateway API: render without them (TLS hosts use ACME;
                // Gateway API resources are not served).
                if !self.forbidden[index] {
                    self.forbidden[index] = true;
                    let without =
                        if index == stream::SECRET { "TLS hosts use ACME" } else { "the Gateway API is not served" };
                    log::warn!(
                        "cannot watch {} ({e}); {without}. Apply deploy/ again to grant get/list/watch",
                        stream::NAMES[index]
                    );
                    self.listed[index] = true;
                    return self.render_once_all_listed();
                }
                return true;
            }
            log::warn!("watch {}: {e} (retrying with backoff)", stream::NAMES[index]);
            return true;
        }
        if self.forbidden[index] && trigger {
            self.forbidden[index] = false;
            log::info!("watching {} now", stream::NAMES[index]);
        }
        if trigger {
            self.listed[index] = true;
            return self.render_once_all_listed();
        }
        true
    }

    /// Asks for a render if every store has listed; false when nobody waits for renders any more.
    fn render_once_all_listed(&self) -> bool {
        !(all_listed(&self.listed, &self.synced) && self.changed.send(()).is_err())
    }
}

/// The optional route kinds the cluster serves, with the version each is served at.
type Served = std::collections::BTreeMap<&'static str, String>;

/// Whether the API server serves the Gateway API (its CRDs are installed: HTTPRoute at v1), and at which
/// version it serves GRPCRoute, TLSRoute, TCPRoute and UDPRoute (v1 in the standard channel since Gateway API v1.6;
/// v1alpha2 in older experimental installs; absent otherwise).
async fn gateway_served(client: &kube::Client) -> Option<Served> {
    let kinds_at = |version: &'static str| async move {
        let group_version = format!("{}/{version}", gateway::GROUP);
        match client.list_api_group_resources(&group_version).await {
            Ok(list) => Ok(list.resources.into_iter().map(|r| r.kind).collect::<Vec<String>>()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
            Err(e) => Err(format!("cannot look up {group_version} ({e}); looking again later")),
        }
    };
    let v1 = match kinds_at(gateway::VERSION).await {
        Ok(kinds) => kinds,
        Err(e) => {
            log::warn!("{e}");
            return None;
        }
    };
    if !v1.iter().any(|k| k == "HTTPRoute") {
        return None;
    }
    let mut served = Served::new();
    let mut missing = Vec::new();
    for kind in ["GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute"] {
        if v1.iter().any(|k| k == kind) {
            served.insert(kind, gateway::VERSION.to_string());
        } else {
            missing.push(kind);
        }
    }
    if !missing.is_empty() {
        let alpha = kinds_at("v1alpha2").await.unwrap_or_default();
        for kind in missing.into_iter().filter(|k| alpha.iter().any(|a| a == k)) {
            served.insert(kind, "v1alpha2".to_string());
        }
    }
    Some(served)
}
