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
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
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
    synced: Arc<std::sync::atomic::AtomicBool>,
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
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the Gateway API is watched.
    pub fn gateway_api(&self) -> bool {
        self.gateway.get().is_some()
    }
}

/// Whether every stream has listed once (streams added later, the Gateway API's, must list too); records it
/// in `synced` for the readers.
fn all_listed(listed: &[bool], synced: &std::sync::atomic::AtomicBool) -> bool {
    let all = listed.iter().all(|l| *l);
    synced.store(all, std::sync::atomic::Ordering::SeqCst);
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
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stores = Stores {
        ingresses,
        classes,
        services,
        slices,
        secrets,
        gateway: Arc::clone(&gateway_stores),
        synced: Arc::clone(&synced),
    };
    let (client, handle) = (api.client(), api.handle());
    let watching = client.clone();
    handle.spawn(async move {
        let client = watching;
        let config = watcher::Config::default();
        // Each stream yields (store index, whether to render).
        macro_rules! watch {
            ($kind:ty, $writer:expr, $index:expr, $config:expr) => {
                reflector::reflector($writer, watcher(Api::<$kind>::all(client.clone()), $config).default_backoff())
                    .map(|event| match event {
                        Ok(event) => ($index, triggers(&event), None),
                        Err(e) => ($index, false, Some(e.to_string())),
                    })
                    .boxed()
            };
        }
        let mut events = futures::stream::select_all([
            watch!(Ingress, ingress_writer, stream::INGRESS, config.clone()),
            watch!(IngressClass, class_writer, stream::INGRESS_CLASS, config.clone()),
            watch!(Service, service_writer, stream::SERVICE, config.clone()),
            watch!(EndpointSlice, slice_writer, stream::ENDPOINT_SLICE, config.clone()),
            watch!(Secret, secret_writer, stream::SECRET, config.clone().fields(TLS_SECRETS)),
        ]);
        let mut listed = vec![false; stream::SECRET + 1];
        // Gateway API streams, when the cluster serves the group; the first lookup before the first
        // render, so that a cluster with HTTPRoutes never gets a snapshot without them.
        macro_rules! watch_dynamic {
            ($kind:ty, $name:expr, $index:expr) => {
                watch_dynamic!($kind, $name, $index, gateway::VERSION)
            };
            ($kind:ty, $name:expr, $index:expr, $version:expr) => {{
                let resource = gateway::api_resource_at($name, $version);
                let writer = reflector::store::Writer::<$kind>::new(resource.clone());
                let reader = writer.as_reader();
                let stream = reflector::reflector(
                    writer,
                    watcher(Api::<$kind>::all_with(client.clone(), &resource), config.clone()).default_backoff(),
                )
                .map(|event| match event {
                    Ok(event) => ($index, triggers(&event), None),
                    Err(e) => ($index, false, Some(e.to_string())),
                })
                .boxed();
                (stream, reader)
            }};
        }
        let mut gateway_on = false;
        let mut lookup = tokio::time::interval(gateway_lookup());
        lookup.tick().await;
        let start_gateway = |events: &mut futures::stream::SelectAll<_>, listed: &mut Vec<bool>, served: &Served| {
            use k8s_openapi::api::core::v1::Namespace;
            let (classes, classes_reader) = watch_dynamic!(GatewayClass, "GatewayClass", stream::GATEWAY_CLASS);
            let (gateways, gateways_reader) = watch_dynamic!(Gateway, "Gateway", stream::GATEWAY);
            let (routes, routes_reader) = watch_dynamic!(HttpRoute, "HTTPRoute", stream::HTTP_ROUTE);
            let (grants, grants_reader) = watch_dynamic!(ReferenceGrant, "ReferenceGrant", stream::REFERENCE_GRANT);
            let (namespaces_reader, namespaces_writer) = reflector::store();
            let namespaces = watch!(Namespace, namespaces_writer, stream::NAMESPACE, config.clone());
            events.extend([classes, gateways, routes, grants, namespaces]);
            // The optional kinds count as listed unless they are watched.
            listed.resize(stream::NAMES.len(), true);
            for index in
                [stream::GATEWAY_CLASS, stream::GATEWAY, stream::HTTP_ROUTE, stream::REFERENCE_GRANT, stream::NAMESPACE]
            {
                listed[index] = false;
            }
            let mut optional = |index: usize, version: Option<&String>| {
                version.map(|v| {
                    listed[index] = false;
                    v.clone()
                })
            };
            let tls = optional(stream::TLS_ROUTE, served.get("TLSRoute"))
                .map(|v| watch_dynamic!(TlsRoute, "TLSRoute", stream::TLS_ROUTE, &v));
            let tcp = optional(stream::TCP_ROUTE, served.get("TCPRoute"))
                .map(|v| watch_dynamic!(TcpRoute, "TCPRoute", stream::TCP_ROUTE, &v));
            let udp = optional(stream::UDP_ROUTE, served.get("UDPRoute"))
                .map(|v| watch_dynamic!(UdpRoute, "UDPRoute", stream::UDP_ROUTE, &v));
            let grpc = optional(stream::GRPC_ROUTE, served.get("GRPCRoute"))
                .map(|v| watch_dynamic!(GrpcRoute, "GRPCRoute", stream::GRPC_ROUTE, &v));
            macro_rules! reader {
                ($watched:expr) => {
                    $watched.map(|(stream, reader)| {
                        events.push(stream);
                        reader
                    })
                };
            }
            let stores = GatewayStores {
                classes: classes_reader,
                gateways: gateways_reader,
                routes: routes_reader,
                grants: grants_reader,
                namespaces: namespaces_reader,
                grpc_routes: reader!(grpc),
                tls_routes: reader!(tls),
                tcp_routes: reader!(tcp),
                udp_routes: reader!(udp),
            };
            let _ = gateway_stores.set(stores);
        };
        if let Some(served) = gateway_served(&client).await {
            log::info!(
                "the cluster serves the Gateway API: watching GatewayClasses, Gateways, HTTPRoutes, \
                         ReferenceGrants and {served:?}"
            );
            start_gateway(&mut events, &mut listed, &served);
            gateway_on = true;
        } else {
            log::info!(
                "the cluster has no Gateway API CRDs ({}/{}): serving Ingresses; looking again every {:?}",
                gateway::GROUP,
                gateway::VERSION,
                gateway_lookup()
            );
        }
        let mut forbidden_kinds = [false; stream::NAMES.len()];
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = lookup.tick(), if !gateway_on => {
                    if let Some(served) = gateway_served(&client).await {
                        log::info!("the cluster serves the Gateway API now: watching its resources");
                        start_gateway(&mut events, &mut listed, &served);
                        all_listed(&listed, &synced); // renders wait until the new streams listed
                        gateway_on = true;
                    }
                    continue;
                }
            };
            let Some((index, trigger, error)) = next else { return };
            if let Some(e) = error {
                if index >= stream::SECRET && forbidden(&e) {
                    // Not allowed to read Secrets or the Gateway API: render without them (TLS hosts use
                    // ACME; Gateway API resources are not served).
                    if !forbidden_kinds[index] {
                        forbidden_kinds[index] = true;
                        let without = if index == stream::SECRET {
                            "TLS hosts use ACME"
                        } else {
                            "the Gateway API is not served"
                        };
                        log::warn!(
                            "cannot watch {} ({e}); {without}. Apply deploy/ again to grant get/list/watch",
                            stream::NAMES[index]
                        );
                        listed[index] = true;
                        if all_listed(&listed, &synced) && changed.send(()).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                log::warn!("watch {}: {e} (retrying with backoff)", stream::NAMES[index]);
                continue;
            }
            if forbidden_kinds[index] && trigger {
                forbidden_kinds[index] = false;
                log::info!("watching {} now", stream::NAMES[index]);
            }
            if trigger {
                listed[index] = true;
                if all_listed(&listed, &synced) && changed.send(()).is_err() {
                    return;
                }
            }
        }
    });
    let reporter = kube::runtime::events::Reporter {
        controller: "polaredge-client".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
    (stores, Writer { client, runtime: handle, recorder })
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
