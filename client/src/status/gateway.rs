//! The status patches of the Gateway API resources of ours, decided without I/O: the planner's conditions
//! ([`crate::render::gateway::conditions`]) in the API's form, the edges' addresses on each Gateway, and our
//! entries among an HTTPRoute's parents (other controllers' entries are kept). A patch is only made when the
//! object's status differs, and unchanged conditions keep their `lastTransitionTime`, so a status we wrote
//! does not come back through the watch as a change.

use crate::render::gateway::conditions::{merge_conditions, ClassStatus, GatewayStatus, RouteStatus, Statuses};
use crate::render::gateway::GROUP;
use crate::render::Cluster;
use serde_json::{json, Value};

/// One status to write: a merge patch of the object's status subresource.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// `GatewayClass`, `Gateway`, `HTTPRoute`, `TLSRoute`, `TCPRoute` or `UDPRoute`.
    pub kind: &'static str,
    /// The version the object is served at (`v1`; TCPRoute and UDPRoute may be `v1alpha2`).
    pub version: String,
    /// Namespace (none for a GatewayClass).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `{"status": {...}}`.
    pub body: Value,
}

/// The patches that bring the cluster's Gateway API status in line with `statuses`; `addresses` are the
/// serving edges' public addresses, `controller` our controllerName, `now` the RFC 3339 time of this write.
pub fn patches(
    cluster: &Cluster,
    statuses: &Statuses,
    addresses: &[String],
    controller: &str,
    now: &str,
) -> Vec<StatusPatch> {
    let routes = RouteIndex::of(cluster);
    let classes = statuses.classes.iter().filter_map(|class| class_patch(cluster, class, now));
    let gateways = statuses.gateways.iter().filter_map(|gateway| gateway_patch(cluster, gateway, addresses, now));
    let routes = statuses.routes.iter().filter_map(|route| route_patch(&routes, route, controller, now));
    classes.chain(gateways).chain(routes).collect()
}

/// A GatewayClass's conditions, if they changed.
fn class_patch(cluster: &Cluster, class: &ClassStatus, now: &str) -> Option<StatusPatch> {
    let object = cluster.gateway_classes.iter().find(|c| c.metadata.name.as_deref() == Some(&class.name))?;
    let current = serde_json::to_value(&object.status).unwrap_or_default();
    let conditions = merge_conditions(&class.conditions, class.generation, &current["conditions"], now);
    (current["conditions"] != conditions).then(|| StatusPatch {
        kind: "GatewayClass",
        version: crate::render::gateway::VERSION.into(),
        namespace: None,
        name: class.name.clone(),
        body: json!({"status": {"conditions": conditions}}),
    })
}

/// A Gateway's addresses (the serving edges', once Programmed), conditions and listeners, if any changed.
fn gateway_patch(cluster: &Cluster, gateway: &GatewayStatus, addresses: &[String], now: &str) -> Option<StatusPatch> {
    let object = cluster.gateways.iter().find(|g| {
        g.metadata.name.as_deref() == Some(&gateway.name) && g.metadata.namespace.as_deref() == Some(&gateway.namespace)
    })?;
    let current = serde_json::to_value(&object.status).unwrap_or_default();
    let listeners: Vec<Value> = gateway
        .listeners
        .iter()
        .map(|l| {
            let previous = current["listeners"]
                .as_array()
                .and_then(|list| list.iter().find(|p| p["name"] == l.name.as_str()))
                .map(|p| p["conditions"].clone())
                .unwrap_or_default();
            let kinds: Vec<Value> = l.supported_kinds.iter().map(|k| json!({"group": GROUP, "kind": k})).collect();
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": kinds,
                "conditions": merge_conditions(&l.conditions, gateway.generation, &previous, now),
            })
        })
        .collect();
    let served = gateway.conditions.iter().any(|c| c.kind == "Programmed" && c.status);
    let addresses: Vec<Value> = if served {
        addresses
            .iter()
            .map(|a| {
                let kind = if a.parse::<std::net::IpAddr>().is_ok() { "IPAddress" } else { "Hostname" };
                json!({"type": kind, "value": a})
            })
            .collect()
    } else {
        Vec::new()
    };
    let desired = json!({
        "addresses": addresses,
        "conditions": merge_conditions(&gateway.conditions, gateway.generation, &current["conditions"], now),
        "listeners": listeners,
    });
    let fields = ["addresses", "conditions", "listeners"];
    let empty = |v: &Value| v.is_null() || v.as_array().is_some_and(Vec::is_empty);
    let changed = fields.iter().any(|f| current[*f] != desired[*f] && !(empty(&current[*f]) && empty(&desired[*f])));
    changed.then(|| StatusPatch {
        kind: "Gateway",
        version: crate::render::gateway::VERSION.into(),
        namespace: Some(gateway.namespace.clone()),
        name: gateway.name.clone(),
        body: json!({"status": desired}),
    })
}

/// A route's `parents` entries of our controller (other controllers' entries stay as they are, in front;
/// ours follow in the route's parentRefs order), if they changed.
fn route_patch(routes: &RouteIndex, route: &RouteStatus, controller: &str, now: &str) -> Option<StatusPatch> {
    let (version, current) = routes.status(route.kind, &route.namespace, &route.name)?;
    let current_parents = current["parents"].as_array().cloned().unwrap_or_default();
    let mut parents: Vec<Value> =
        current_parents.iter().filter(|p| p["controllerName"] != controller).cloned().collect();
    for parent in &route.parents {
        let previous = current_parents
            .iter()
            .find(|p| p["controllerName"] == controller && p["parentRef"] == parent.parent_ref)
            .map(|p| p["conditions"].clone())
            .unwrap_or_default();
        parents.push(json!({
            "parentRef": parent.parent_ref,
            "controllerName": controller,
            "conditions": merge_conditions(&parent.conditions, route.generation, &previous, now),
        }));
    }
    (parents != current_parents).then(|| StatusPatch {
        kind: route.kind,
        version,
        namespace: Some(route.namespace.clone()),
        name: route.name.clone(),
        body: json!({"status": {"parents": parents}}),
    })
}

/// Every route the stores hold by (kind, namespace, name): its served version and current status. Built once
/// per write, so thousands of routes cost one pass, not one search each.
struct RouteIndex<'a>(std::collections::HashMap<(&'static str, &'a str, &'a str), (String, Value)>);

impl<'a> RouteIndex<'a> {
    fn of(cluster: &'a Cluster) -> RouteIndex<'a> {
        fn add<'a, P: Clone + serde::Serialize, U: Clone + serde::Serialize>(
            index: &mut std::collections::HashMap<(&'static str, &'a str, &'a str), (String, Value)>,
            kind: &'static str,
            list: &'a [std::sync::Arc<kube::core::Object<P, U>>],
        ) {
            for object in list {
                let (Some(ns), Some(name)) = (object.metadata.namespace.as_deref(), object.metadata.name.as_deref())
                else {
                    continue;
                };
                let version = object
                    .types
                    .as_ref()
                    .and_then(|t| t.api_version.rsplit_once('/').map(|(_, v)| v.to_string()))
                    .unwrap_or_else(|| crate::render::gateway::VERSION.into());
                let status = object.status.as_ref().map(serde_json::to_value).and_then(Result::ok).unwrap_or_default();
                index.insert((kind, ns, name), (version, status));
            }
        }
        let mut index = std::collections::HashMap::new();
        add(&mut index, "HTTPRoute", &cluster.http_routes);
        add(&mut index, "GRPCRoute", &cluster.grpc_routes);
        add(&mut index, "TLSRoute", &cluster.tls_routes);
        add(&mut index, "TCPRoute", &cluster.tcp_routes);
        add(&mut index, "UDPRoute", &cluster.udp_routes);
        RouteIndex(index)
    }

    /// The version a route is served at and its current status (`null` without one).
    fn status(&self, kind: &'static str, ns: &str, name: &str) -> Option<(String, Value)> {
        self.0.get(&(kind, ns, name)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::add_yaml;
    use crate::render::{render, Settings};

    const CONTROLLER: &str = crate::render::gateway::CONTROLLER;

    fn cluster(route_status: &str) -> Cluster {
        let mut c = Cluster::default();
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: edge}}\nspec: {{controllerName: {CONTROLLER}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra, generation: 1}}\nspec:\n  gatewayClassName: edge\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra, generation: 3}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: missing, port: 80}}]}}]\n{route_status}"
        );
        add_yaml(&mut c, &yaml, "t").unwrap();
        c
    }

    /// The cluster after the patches were applied (as a merge patch of status does).
    fn applied(c: &Cluster, patches: &[StatusPatch]) -> Cluster {
        let mut c = c.clone();
        for p in patches {
            let with = |object: Value| {
                let mut object = object;
                object["status"] = p.body["status"].clone();
                object
            };
            match p.kind {
                "GatewayClass" => {
                    c.gateway_classes = vec![std::sync::Arc::new(
                        serde_json::from_value(with(serde_json::to_value(&*c.gateway_classes[0]).unwrap())).unwrap(),
                    )]
                }
                "Gateway" => {
                    c.gateways = vec![std::sync::Arc::new(
                        serde_json::from_value(with(serde_json::to_value(&*c.gateways[0]).unwrap())).unwrap(),
                    )]
                }
                _ => {
                    c.http_routes = vec![std::sync::Arc::new(
                        serde_json::from_value(with(serde_json::to_value(&*c.http_routes[0]).unwrap())).unwrap(),
                    )]
                }
            }
        }
        c
    }

    #[test]
    fn statuses_are_written_once_and_other_controllers_entries_are_kept() {
        let other =
            "status:\n  parents:\n  - {controllerName: example.com/other, parentRef: {name: theirs}, conditions: []}\n";
        let c = cluster(other);
        let rendered = render(&c, &Settings::default());
        let addresses = vec!["203.0.113.7".to_string(), "edge.example.org".to_string()];
        let first = patches(&c, &rendered.gateway, &addresses, CONTROLLER, "2026-12-01T00:00:00Z");
        let kinds: Vec<&str> = first.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, vec!["GatewayClass", "Gateway", "HTTPRoute"]);
        let gateway = &first[1].body["status"];
        assert_eq!(gateway["addresses"][0], json!({"type": "IPAddress", "value": "203.0.113.7"}));
        assert_eq!(gateway["addresses"][1], json!({"type": "Hostname", "value": "edge.example.org"}));
        assert_eq!(gateway["listeners"][0]["attachedRoutes"], 1);
        let parents = first[2].body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents[0]["controllerName"], "example.com/other", "another controller's entry is kept");
        assert_eq!(parents[1]["controllerName"], CONTROLLER);
        let refs = parents[1]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ResolvedRefs").unwrap();
        assert_eq!((refs["status"].as_str(), refs["reason"].as_str()), (Some("False"), Some("BackendNotFound")));
        assert_eq!(refs["observedGeneration"], 3);

        // Applied, the same render asks for nothing more, even later.
        let c = applied(&c, &first);
        let again =
            patches(&c, &render(&c, &Settings::default()).gateway, &addresses, CONTROLLER, "2026-12-02T00:00:00Z");
        assert!(again.is_empty(), "{again:?}");
        // An edge that goes away changes the addresses only.
        let fewer = patches(&c, &rendered.gateway, &addresses[..1], CONTROLLER, "2026-12-02T00:00:00Z");
        assert_eq!(fewer.len(), 1);
        assert_eq!(fewer[0].body["status"]["addresses"].as_array().unwrap().len(), 1);
    }
}
