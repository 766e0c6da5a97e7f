//! Reads Kubernetes manifests (Ingress, IngressClass, Service, EndpointSlice, TLS Secrets, the Gateway API's
//! GatewayClass, Gateway, HTTPRoute and ReferenceGrant; `List`s of them) from YAML files,
//! for `polaredge-client render -f DIR`, the local demo and tests: the same renderer input a cluster gives.

use crate::render::Cluster;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

fn typed<T: DeserializeOwned>(doc: serde_yaml::Value, origin: &str) -> Result<Arc<T>, String> {
    serde_yaml::from_value(doc).map(Arc::new).map_err(|e| format!("{origin}: {e}"))
}

/// Adds every object of one YAML text (several documents allowed) to `cluster`; other kinds are skipped.
pub fn add_yaml(cluster: &mut Cluster, text: &str, origin: &str) -> Result<(), String> {
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| format!("{origin}: {e}"))?;
        add_value(cluster, value, origin)?;
    }
    Ok(())
}

fn add_value(cluster: &mut Cluster, value: serde_yaml::Value, origin: &str) -> Result<(), String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    match kind.as_str() {
        "Ingress" => cluster.ingresses.push(typed(value, origin)?),
        "IngressClass" => cluster.classes.push(typed(value, origin)?),
        "Service" => cluster.services.push(typed(value, origin)?),
        "EndpointSlice" => cluster.slices.push(typed(value, origin)?),
        "Namespace" => cluster.namespaces.push(typed(value, origin)?),
        "GatewayClass" => cluster.gateway_classes.push(typed(value, origin)?),
        "Gateway" => cluster.gateways.push(typed(value, origin)?),
        "HTTPRoute" => cluster.http_routes.push(typed(value, origin)?),
        "ReferenceGrant" => cluster.reference_grants.push(typed(value, origin)?),
        "GRPCRoute" => cluster.grpc_routes.push(typed(value, origin)?),
        "TLSRoute" => cluster.tls_routes.push(typed(value, origin)?),
        "TCPRoute" => cluster.tcp_routes.push(typed(value, origin)?),
        "UDPRoute" => cluster.udp_routes.push(typed(value, origin)?),
        // As the cluster watch sees them: TLS Secrets only.
        "Secret" if value.get("type").and_then(|t| t.as_str()) == Some("kubernetes.io/tls") => {
            cluster.secrets.push(typed(value, origin)?)
        }
        "List" => {
            if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                for item in items.clone() {
                    add_value(cluster, item, origin)?;
                }
            }
        }
        _ => {} // empty documents and other kinds (Deployments, ...) are not the renderer's business
    }
    Ok(())
}

/// Reads every `*.yaml` / `*.yml` file of a folder, in name order.
pub fn load_dir(dir: &Path) -> Result<Cluster, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read manifests folder {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut cluster = Cluster::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        add_yaml(&mut cluster, &text, &file.display().to_string())?;
    }
    Ok(cluster)
}
