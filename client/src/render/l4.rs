//! Services of `type: LoadBalancer` that are ours become public TCP ports at the edge (the snapshot's `l4`
//! section, served by the agent itself): each TCP `port` of the Service, to its ready endpoints.
//!
//! Ours: `spec.loadBalancerClass` is [`LOAD_BALANCER_CLASS`] (the standard way a load-balancer implementation
//! claims a Service), or, for a Service without a class, the annotation `polaredge.io/load-balancer: "true"`.
//! Two Services wanting the same port: the older one (creation time, then namespace/name) gets it and the other
//! a Warning Event; so do ports the edge keeps for itself (its entrypoints and WireGuard). TCP and UDP ports are
//! carried (a TCP and a UDP port may share a number, as DNS does); SCTP is not (a Warning Event says so).
//! `polaredge.io/proxy-protocol: "1"` or `"2"` sends the pods of the TCP ports a PROXY protocol header with the
//! public client's address first. UDP pods see the client relay's address as the source (see the README).

use super::{ns_name, servers_of, Cluster, Notice, ServiceKey};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use routes::model;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// The `spec.loadBalancerClass` that marks a Service as ours.
pub const LOAD_BALANCER_CLASS: &str = "polaredge.io/edge";
/// Annotation that claims a LoadBalancer Service without a class.
pub const CLAIM_ANNOTATION: &str = "polaredge.io/load-balancer";
/// Annotation asking for the PROXY protocol (`"1"` or `"2"`).
pub const PROXY_ANNOTATION: &str = "polaredge.io/proxy-protocol";

/// A public port a Gateway API TCPRoute or UDPRoute claims (through its Gateway's listener).
#[derive(Debug, Clone)]
pub struct Claim {
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// The listener's port.
    pub port: u16,
    /// `TCPRoute` or `UDPRoute`.
    pub kind: &'static str,
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
    /// Where its servers come from (its backends, merged).
    pub sources: Vec<super::ServerSource>,
}

/// What the Services and Gateway API routes contribute to a snapshot.
#[derive(Debug, Default)]
pub struct L4Rendered {
    /// The `l4` section (None without any port).
    pub section: Option<model::L4>,
    /// Services served (namespace, name), for their status.
    pub served: BTreeSet<(String, String)>,
    /// Every pod endpoint of the TCP ports (for the relay's allow-list).
    pub endpoints: BTreeSet<SocketAddr>,
    /// Every pod endpoint of the UDP ports (the UDP relay's allow-list).
    pub udp_endpoints: BTreeSet<SocketAddr>,
    /// Conflicts and unsupported ports.
    pub notices: Vec<Notice>,
}

fn ours(service: &Service) -> bool {
    let Some(spec) = &service.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == LOAD_BALANCER_CLASS,
        None => {
            service.metadata.annotations.as_ref().and_then(|a| a.get(CLAIM_ANNOTATION)).is_some_and(|v| v == "true")
        }
    }
}

/// Renders the LoadBalancer Services that are ours, then the ports of TCPRoutes and UDPRoutes (`claims`; a
/// port a Service has keeps it). `slices`: each Service's EndpointSlices; `reserved`: ports the edge keeps for
/// itself.
pub fn render(
    cluster: &Cluster,
    claims: &[Claim],
    slices: &HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
    reserved: &BTreeSet<u16>,
) -> L4Rendered {
    let mut out = L4Rendered::default();
    let mut services: Vec<&Service> = cluster.services.iter().map(|s| &**s).filter(|s| ours(s)).collect();
    // Oldest first, so the oldest Service wins a port.
    services.sort_by_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0), ns_name(&s.metadata)));
    let mut ports = Ports::default();
    for service in services {
        render_service(service, slices, reserved, &mut ports, &mut out);
    }
    for claim in claims {
        let service = format!("{}/{}", claim.namespace, claim.name);
        if let Some(owner) = ports.owners.get(&(claim.transport, claim.port)) {
            out.notices.push(Notice {
                kind: claim.kind,
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                reason: "PortConflict",
                message: format!(
                    "port {}/{} is already served for {owner}; this route is not exposed",
                    claim.port,
                    claim.transport.to_uppercase()
                ),
            });
            continue;
        }
        let servers = super::servers_of_sources(&claim.sources, slices);
        let owner = format!("{} {service}", claim.kind);
        ports.take(&mut out, (claim.transport, claim.port), owner, service, &servers, None);
    }
    if !ports.sections.is_empty() {
        out.section = Some(model::L4 {
            tcp: ports.sections.remove("tcp").unwrap_or_default(),
            udp: ports.sections.remove("udp").unwrap_or_default(),
        });
    }
    out
}

/// The public ports handed out so far: the `l4` section's entries by transport, and who owns each port.
#[derive(Default)]
struct Ports {
    sections: BTreeMap<&'static str, BTreeMap<String, model::L4Service>>,
    owners: BTreeMap<(&'static str, u16), String>,
}

impl Ports {
    /// Serves `port` (transport, number) for `service` on `servers` (`owner` names it in later conflicts), and
    /// adds the servers to the relay's allow-list.
    fn take(
        &mut self,
        out: &mut L4Rendered,
        (transport, number): (&'static str, u16),
        owner: String,
        service: String,
        servers: &[SocketAddr],
        proxy_protocol: Option<u8>,
    ) {
        let allow = if transport == "tcp" { &mut out.endpoints } else { &mut out.udp_endpoints };
        allow.extend(servers.iter().copied());
        self.owners.insert((transport, number), owner);
        self.sections.entry(transport).or_default().insert(
            number.to_string(),
            model::L4Service { service, servers: servers.iter().map(ToString::to_string).collect(), proxy_protocol },
        );
    }
}

/// Serves the ports of one Service of our class that are free, supported and not the edge's own; says why
/// each other port is not served.
fn render_service(
    service: &Service,
    slices: &HashMap<ServiceKey, Vec<Arc<EndpointSlice>>>,
    reserved: &BTreeSet<u16>,
    ports: &mut Ports,
    out: &mut L4Rendered,
) {
    let (ns, name) = ns_name(&service.metadata);
    let notice = |reason: &'static str, message: String| Notice {
        kind: "Service",
        namespace: ns.clone(),
        name: name.clone(),
        reason,
        message,
    };
    let annotations = service.metadata.annotations.as_ref();
    let proxy_protocol = match annotations.and_then(|a| a.get(PROXY_ANNOTATION)).map(String::as_str) {
        None => None,
        Some("1") => Some(1),
        Some("2") => Some(2),
        Some(other) => {
            out.notices.push(notice(
                "BadAnnotation",
                format!("{PROXY_ANNOTATION}: {other:?} is not 1 or 2; no PROXY header is sent"),
            ));
            None
        }
    };
    let own_slices = slices.get(&(ns.clone(), name.clone())).map(Vec::as_slice).unwrap_or_default();
    let mut served = false;
    for port in service.spec.as_ref().and_then(|s| s.ports.as_ref()).into_iter().flatten() {
        let Ok(number) = u16::try_from(port.port) else { continue };
        let transport = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => "tcp",
            "UDP" => "udp",
            other => {
                out.notices.push(notice(
                    "UnsupportedProtocol",
                    format!("port {number}/{other}: only TCP and UDP are carried through the edge"),
                ));
                continue;
            }
        };
        if reserved.contains(&number) {
            out.notices.push(notice(
                "PortReserved",
                format!("port {number} is the edge's own (an entrypoint or WireGuard); use another port"),
            ));
            continue;
        }
        if let Some(owner) = ports.owners.get(&(transport, number)) {
            out.notices.push(notice(
                "PortConflict",
                format!(
                    "port {number}/{} is already served for the older Service {owner}; this port is not exposed",
                    transport.to_uppercase()
                ),
            ));
            continue;
        }
        let servers = servers_of(port.name.as_deref().unwrap_or(""), own_slices);
        // The PROXY header is a TCP stream's first bytes; a UDP port has no place for it.
        let proxy = proxy_protocol.filter(|_| transport == "tcp");
        let label = format!("{ns}/{name}");
        ports.take(out, (transport, number), label.clone(), label, &servers, proxy);
        served = true;
    }
    if served {
        out.served.insert((ns, name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::add_yaml;

    fn service(name: &str, created: &str, class: &str, annotations: &str, ports: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: db, creationTimestamp: \"{created}\", annotations: {{{annotations}}}}}\nspec:\n  type: LoadBalancer\n{class}  ports: {ports}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: db\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: pg, port: 5432}}]\nendpoints:\n- addresses: [\"10.1.0.5\"]\n  conditions: {{ready: true}}\n- addresses: [\"10.1.0.6\"]\n  conditions: {{ready: false}}\n"
        )
    }

    fn rendered(yaml: &str) -> L4Rendered {
        let mut cluster = Cluster::default();
        add_yaml(&mut cluster, yaml, "test").unwrap();
        let mut slices: HashMap<ServiceKey, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for slice in &cluster.slices {
            if let Some(key) = super::super::service_of(slice) {
                slices.entry(key).or_default().push(Arc::clone(slice));
            }
        }
        render(&cluster, &[], &slices, &[80, 443, 51820].into())
    }

    const CLASS: &str = "  loadBalancerClass: polaredge.io/edge\n";
    const PG: &str = "[{name: pg, port: 5432, targetPort: 5432}]";

    #[test]
    fn a_load_balancer_service_of_our_class_gets_its_port_with_its_ready_pods() {
        let out = rendered(&service("pg", "2024-01-01T00:00:00Z", CLASS, "polaredge.io/proxy-protocol: \"2\"", PG));
        let tcp = &out.section.unwrap().tcp;
        assert_eq!(tcp["5432"].servers, ["10.1.0.5:5432"], "ready endpoints only");
        assert_eq!((tcp["5432"].service.as_str(), tcp["5432"].proxy_protocol), ("db/pg", Some(2)));
        assert!(out.served.contains(&("db".into(), "pg".into())));
        assert!(out.endpoints.contains(&"10.1.0.5:5432".parse().unwrap()));
    }

    #[test]
    fn other_classes_and_plain_services_are_left_alone_and_the_annotation_claims_a_classless_one() {
        assert!(rendered(&service("pg", "2024-01-01T00:00:00Z", "  loadBalancerClass: other.io/lb\n", "", PG))
            .section
            .is_none());
        assert!(rendered(&service("pg", "2024-01-01T00:00:00Z", "", "", PG)).section.is_none());
        let claimed = rendered(&service("pg", "2024-01-01T00:00:00Z", "", "polaredge.io/load-balancer: \"true\"", PG));
        assert!(claimed.section.is_some());
    }

    #[test]
    fn the_older_service_wins_a_port_and_reserved_ports_and_sctp_are_refused_with_events() {
        let yaml = format!(
            "{}{}{}",
            service("new", "2024-06-01T00:00:00Z", CLASS, "", PG),
            service("old", "2024-01-01T00:00:00Z", CLASS, "", PG),
            service(
                "web",
                "2024-01-01T00:00:00Z",
                CLASS,
                "",
                "[{name: pg, port: 443}, {name: pg, port: 9999, protocol: SCTP}]"
            ),
        );
        let out = rendered(&yaml);
        assert_eq!(out.section.as_ref().unwrap().tcp["5432"].service, "db/old");
        let reasons: Vec<(&str, &str)> = out.notices.iter().map(|n| (n.name.as_str(), n.reason)).collect();
        assert!(reasons.contains(&("new", "PortConflict")), "{reasons:?}");
        assert!(reasons.contains(&("web", "PortReserved")), "{reasons:?}");
        assert!(reasons.contains(&("web", "UnsupportedProtocol")), "{reasons:?}");
        assert!(out.notices.iter().all(|n| n.kind == "Service"));
        assert!(!out.served.contains(&("db".into(), "new".into())));
    }

    #[test]
    fn udp_ports_are_served_beside_a_tcp_port_of_the_same_number_without_a_proxy_header() {
        let dns = "[{name: pg, port: 53, protocol: UDP}, {name: pg, port: 53}]";
        let yaml = format!(
            "{}{}",
            service("dns", "2024-01-01T00:00:00Z", CLASS, "polaredge.io/proxy-protocol: \"1\"", dns),
            service("late", "2024-06-01T00:00:00Z", CLASS, "", "[{name: pg, port: 53, protocol: UDP}]"),
        );
        let out = rendered(&yaml);
        let section = out.section.as_ref().unwrap();
        assert_eq!(section.udp["53"].service, "db/dns");
        assert_eq!(section.udp["53"].servers, ["10.1.0.5:5432"]);
        assert_eq!(section.udp["53"].proxy_protocol, None, "no PROXY header on UDP");
        assert_eq!(section.tcp["53"].proxy_protocol, Some(1));
        assert!(out.udp_endpoints.contains(&"10.1.0.5:5432".parse().unwrap()));
        let reasons: Vec<(&str, &str)> = out.notices.iter().map(|n| (n.name.as_str(), n.reason)).collect();
        assert_eq!(reasons, [("late", "PortConflict")], "the older Service keeps UDP 53");
        assert!(out.notices[0].message.contains("53/UDP"), "{}", out.notices[0].message);
    }
}
