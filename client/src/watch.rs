//! Watching the cluster with kube-rs reflectors (Ingress, IngressClass, Service, EndpointSlice, and Secrets of
//! type `kubernetes.io/tls`), and turning their changes into renderer input.
//!
//! Secrets are watched with the field selector `type=kubernetes.io/tls`, so no other Secret ever reaches the
//! client. When RBAC does not allow reading Secrets (manifests from before certificates came from Secrets), the
//! client says so once and serves every TLS host with ACME, as before.
//!
//! A relist (after a dropped watch or a 410 Gone) rebuilds a store atomically at `InitDone`, and renders are
//! only triggered by `Apply`, `Delete` and `InitDone`, never in the middle of a relist: a relist does not
//! produce a snapshot without routes that exist before and after it. Nothing renders until every store has
//! completed its first list, so the first snapshot is never partial.

use crate::render::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::sync::mpsc::Sender;

/// Readers of the five stores.
#[derive(Clone)]
pub struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
}

/// The field selector of the Secret watch: TLS Secrets only.
pub const TLS_SECRETS: &str = "type=kubernetes.io/tls";

impl Stores {
    /// The renderer's input, as the stores hold it now.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            ingresses: self.ingresses.state(),
            classes: self.classes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            secrets: self.secrets.state(),
        }
    }
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

    /// Creates a Warning Event on the Ingress or Service a notice is about.
    pub fn post_event(&self, notice: &crate::render::Notice, uid: Option<String>) {
        use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", notice.name)),
                namespace: Some(notice.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(if notice.kind == "Service" { "v1" } else { "networking.k8s.io/v1" }.into()),
                kind: Some(notice.kind.into()),
                name: Some(notice.name.clone()),
                namespace: Some(notice.namespace.clone()),
                // Without the uid `kubectl describe` does not show the Event.
                uid,
                ..Default::default()
            },
            reason: Some(notice.reason.into()),
            message: Some(notice.message.clone()),
            type_: Some("Warning".into()),
            source: Some(EventSource { component: Some("polaredge-client".into()), ..Default::default() }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &notice.namespace);
        self.runtime.spawn(async move {
            if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
                log::warn!("cannot create an Event: {e}");
            }
        });
    }
}

/// Starts the watches on a Tokio runtime of their own; `changed` gets `()` whenever the cluster changed after
/// every store has listed once. Returns the store readers and a writer for status and Events.
pub fn start(changed: Sender<()>) -> Result<(Stores, Writer), String> {
    let (ingresses, ingress_writer) = reflector::store();
    let (classes, class_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (slices, slice_writer) = reflector::store();
    let (secrets, secret_writer) = reflector::store();
    let stores = Stores { ingresses, classes, services, slices, secrets };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Kubernetes watch runtime: {e}"))?;
    let handle = runtime.handle().clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<kube::Client, String>>();
    std::thread::Builder::new()
        .name("kube-watch".into())
        .spawn(move || {
            runtime.block_on(async move {
                let client = match kube::Client::try_default().await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(format!("no Kubernetes API: {e} (in-cluster service account or KUBECONFIG)")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(client.clone()));
                let config = watcher::Config::default();
                // Each stream yields (store index, whether to render).
                macro_rules! watch {
                    ($kind:ty, $writer:expr, $index:expr, $config:expr) => {
                        reflector::reflector(
                            $writer,
                            watcher(Api::<$kind>::all(client.clone()), $config).default_backoff(),
                        )
                        .map(|event| match event {
                            Ok(event) => ($index, triggers(&event), None),
                            Err(e) => ($index, false, Some(e.to_string())),
                        })
                        .boxed()
                    };
                }
                let mut events = futures::stream::select_all([
                    watch!(Ingress, ingress_writer, 0usize, config.clone()),
                    watch!(IngressClass, class_writer, 1, config.clone()),
                    watch!(Service, service_writer, 2, config.clone()),
                    watch!(EndpointSlice, slice_writer, 3, config.clone()),
                    watch!(Secret, secret_writer, SECRETS, config.clone().fields(TLS_SECRETS)),
                ]);
                let mut listed = [false; 5];
                const NAMES: [&str; 5] = ["Ingress", "IngressClass", "Service", "EndpointSlice", "Secret"];
                const SECRETS: usize = 4;
                let mut secrets_forbidden = false;
                while let Some((index, trigger, error)) = events.next().await {
                    if let Some(e) = error {
                        if index == SECRETS && forbidden(&e) {
                            // Not allowed to read Secrets: render without them (every TLS host uses ACME).
                            if !secrets_forbidden {
                                secrets_forbidden = true;
                                log::warn!(
                                    "cannot watch TLS Secrets ({e}); TLS hosts use ACME. Apply deploy/ again to \
                                     grant get/list/watch on secrets"
                                );
                                listed[SECRETS] = true;
                                if listed.iter().all(|l| *l) && changed.send(()).is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        log::warn!("watch {}: {e} (retrying with backoff)", NAMES[index]);
                        continue;
                    }
                    if index == SECRETS && secrets_forbidden && trigger {
                        secrets_forbidden = false;
                        log::info!("watching TLS Secrets now");
                    }
                    if trigger {
                        listed[index] = true;
                        if listed.iter().all(|l| *l) && changed.send(()).is_err() {
                            return;
                        }
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let client = ready_rx.recv().map_err(|_| "the watch thread ended".to_string())??;
    Ok((stores, Writer { client, runtime: handle }))
}
