//! Watching the cluster with kube-rs reflectors (Ingress, IngressClass, Service, EndpointSlice), and turning
//! their changes into renderer input.
//!
//! A relist (after a dropped watch or a 410 Gone) rebuilds a store atomically at `InitDone`, and renders are
//! only triggered by `Apply`, `Delete` and `InitDone`, never in the middle of a relist: a relist does not
//! produce a snapshot without routes that exist before and after it. Nothing renders until every store has
//! completed its first list, so the first snapshot is never partial.

use crate::render::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::sync::mpsc::Sender;

/// Readers of the four stores.
#[derive(Clone)]
pub struct Stores {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Stores {
    /// The renderer's input, as the stores hold it now.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            ingresses: self.ingresses.state(),
            classes: self.classes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
        }
    }
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
    /// Patches `status.loadBalancer.ingress` of each changed Ingress (a merge patch of the status subresource).
    pub fn write_status(&self, changes: Vec<crate::status::StatusChange>) {
        for change in changes {
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &change.namespace);
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
            self.runtime.spawn(async move {
                let params = kube::api::PatchParams::default();
                if let Err(e) = api.patch_status(&change.name, &params, &kube::api::Patch::Merge(&patch)).await {
                    log::warn!("cannot update the status of Ingress {}/{}: {e}", change.namespace, change.name);
                }
            });
        }
    }

    /// Creates a Warning Event on the Ingress a notice is about.
    pub fn post_event(&self, notice: &crate::render::Notice) {
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
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                name: Some(notice.name.clone()),
                namespace: Some(notice.namespace.clone()),
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
    let stores = Stores { ingresses, classes, services, slices };
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
                    ($kind:ty, $writer:expr, $index:expr) => {
                        reflector::reflector(
                            $writer,
                            watcher(Api::<$kind>::all(client.clone()), config.clone()).default_backoff(),
                        )
                        .map(|event| match event {
                            Ok(event) => ($index, triggers(&event), None),
                            Err(e) => ($index, false, Some(e.to_string())),
                        })
                        .boxed()
                    };
                }
                let mut events = futures::stream::select_all([
                    watch!(Ingress, ingress_writer, 0usize),
                    watch!(IngressClass, class_writer, 1),
                    watch!(Service, service_writer, 2),
                    watch!(EndpointSlice, slice_writer, 3),
                ]);
                let mut listed = [false; 4];
                const NAMES: [&str; 4] = ["Ingress", "IngressClass", "Service", "EndpointSlice"];
                while let Some((index, trigger, error)) = events.next().await {
                    if let Some(e) = error {
                        log::warn!("watch {}: {e} (retrying with backoff)", NAMES[index]);
                        continue;
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
