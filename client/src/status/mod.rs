//! What to write back to the cluster, decided without I/O: the `status.loadBalancer.ingress` each Ingress and
//! each LoadBalancer Service of ours should show (the agents' public addresses while it is ours, nothing once
//! it stops being ours), which notices are new enough to become Events, and the notices for the ports agents
//! withheld. [`gateway`]: the status of the Gateway API resources of ours.

pub mod gateway;

use crate::render::{Cluster, Notice};
use protocol::api::Withheld;
use std::collections::{BTreeMap, BTreeSet};

/// One Ingress or Service whose status must change to `addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// `Ingress` or `Service`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The addresses its status should list (empty: clear).
    pub addresses: Vec<String>,
}

/// The addresses a status lists (IP, else host name), sorted.
fn listed<'a>(entries: impl Iterator<Item = (&'a Option<String>, &'a Option<String>)>) -> Vec<String> {
    let mut list: Vec<String> = entries.filter_map(|(ip, host)| ip.clone().or_else(|| host.clone())).collect();
    list.sort();
    list
}

/// Status updates that bring the cluster in line: served Ingresses and LoadBalancer Services list `addresses`;
/// one that is not served and lists exactly our addresses (it was ours) is cleared; others are left alone.
pub fn status_changes(
    cluster: &Cluster,
    served: &BTreeSet<(String, String)>,
    served_services: &BTreeSet<(String, String)>,
    addresses: &[String],
) -> Vec<StatusChange> {
    let mut ours: Vec<String> = addresses.to_vec();
    ours.sort();
    ours.dedup();
    let ingresses = cluster.ingresses.iter().map(|i| {
        let entries = i.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        let current = listed(entries.into_iter().flatten().map(|e| (&e.ip, &e.hostname)));
        ("Ingress", &i.metadata, served, current)
    });
    let services = cluster.services.iter().map(|s| {
        let entries = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        let current = listed(entries.into_iter().flatten().map(|e| (&e.ip, &e.hostname)));
        ("Service", &s.metadata, served_services, current)
    });
    let mut changes = Vec::new();
    for (kind, metadata, served, current) in ingresses.chain(services) {
        let key =
            (metadata.namespace.clone().unwrap_or_else(|| "default".into()), metadata.name.clone().unwrap_or_default());
        let desired = if served.contains(&key) {
            ours.clone()
        } else if !current.is_empty() && current == ours {
            Vec::new()
        } else {
            continue;
        };
        if current != desired {
            changes.push(StatusChange { kind, namespace: key.0, name: key.1, addresses: desired });
        }
    }
    changes
}

/// The addresses Ingress and Service status should list: those of the edges that answered their last upload or
/// check (`down` names the others). If every edge looks down, all are listed: the cluster's own uplink is then
/// the likelier cause, and an empty status would make DNS automation drop every record.
pub fn serving_addresses(edges: &[(String, String)], down: &BTreeSet<String>) -> Vec<String> {
    let up: Vec<String> = edges.iter().filter(|(name, _)| !down.contains(name)).map(|(_, a)| a.clone()).collect();
    if up.is_empty() {
        edges.iter().map(|(_, a)| a.clone()).collect()
    } else {
        up
    }
}

/// A Warning notice on each Service whose port an agent withheld (a port it keeps for itself, or outside its
/// `l4.ports`): `by_agent` holds each agent's last answer.
pub fn withheld_notices(by_agent: &BTreeMap<String, Vec<Withheld>>) -> Vec<Notice> {
    let mut notices = Vec::new();
    for (agent, withheld) in by_agent {
        for w in withheld {
            let Some((namespace, name)) = w.service.split_once('/') else { continue };
            notices.push(Notice {
                kind: "Service",
                namespace: namespace.to_string(),
                name: name.to_string(),
                reason: "PortWithheld",
                message: format!(
                    "edge {agent} does not serve port {}/{}: {}",
                    w.port,
                    w.transport.to_string().to_uppercase(),
                    w.reason
                ),
            });
        }
    }
    notices
}

/// Remembers which notices were reported, so each becomes one Event, not one per render.
#[derive(Debug, Default)]
pub struct Reported(BTreeSet<(String, String, &'static str, String)>);

impl Reported {
    /// The notices not reported before; the rest are forgotten, so a problem that comes back is reported again.
    pub fn fresh<'a>(&mut self, notices: &'a [Notice]) -> Vec<&'a Notice> {
        let now: BTreeSet<_> =
            notices.iter().map(|n| (n.namespace.clone(), n.name.clone(), n.reason, n.message.clone())).collect();
        let fresh = notices
            .iter()
            .filter(|n| !self.0.contains(&(n.namespace.clone(), n.name.clone(), n.reason, n.message.clone())))
            .collect();
        self.0 = now;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::add_yaml;

    fn cluster(status: &str) -> Cluster {
        let mut c = Cluster::default();
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: a, namespace: default}}\nspec: {{}}\n{status}"
        );
        add_yaml(&mut c, &yaml, "t").unwrap();
        c
    }

    #[test]
    fn served_ingresses_get_the_agents_addresses_once() {
        let served = [("default".to_string(), "a".to_string())].into();
        let addresses = vec!["203.0.113.7".to_string()];
        let none = BTreeSet::new();
        let changes = status_changes(&cluster(""), &served, &none, &addresses);
        assert_eq!(
            changes,
            [StatusChange {
                kind: "Ingress",
                namespace: "default".into(),
                name: "a".into(),
                addresses: addresses.clone()
            }]
        );
        let done = cluster("status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}");
        assert!(status_changes(&done, &served, &none, &addresses).is_empty(), "already right: no write");
    }

    #[test]
    fn an_ingress_that_stops_being_ours_is_cleared_and_others_are_left_alone() {
        let addresses = vec!["203.0.113.7".to_string()];
        let was_ours = cluster("status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}");
        let none = BTreeSet::new();
        let changes = status_changes(&was_ours, &none, &none, &addresses);
        assert_eq!(changes[0].addresses, Vec::<String>::new());
        let someone_elses = cluster("status: {loadBalancer: {ingress: [{ip: 198.51.100.1}]}}");
        assert!(status_changes(&someone_elses, &none, &none, &addresses).is_empty());
    }

    #[test]
    fn a_served_load_balancer_service_gets_the_addresses_and_loses_them_when_no_longer_ours() {
        let mut c = Cluster::default();
        add_yaml(
            &mut c,
            "apiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: db}\nspec: {type: LoadBalancer}\n",
            "t",
        )
        .unwrap();
        let addresses = vec!["203.0.113.7".to_string()];
        let served = [("db".to_string(), "pg".to_string())].into();
        let changes = status_changes(&c, &BTreeSet::new(), &served, &addresses);
        assert_eq!((changes[0].kind, changes[0].addresses.clone()), ("Service", addresses.clone()));
        let mut was = Cluster::default();
        add_yaml(&mut was, "apiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: db}\nspec: {type: LoadBalancer}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}\n", "t").unwrap();
        let changes = status_changes(&was, &BTreeSet::new(), &BTreeSet::new(), &addresses);
        assert_eq!((changes[0].kind, changes[0].addresses.len()), ("Service", 0));
    }

    #[test]
    fn an_edge_that_is_down_leaves_the_status_unless_every_edge_is() {
        let edges = vec![("a".to_string(), "192.0.2.1".to_string()), ("b".to_string(), "192.0.2.2".to_string())];
        let down = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(serving_addresses(&edges, &down(&[])), ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(serving_addresses(&edges, &down(&["b"])), ["192.0.2.1"]);
        assert_eq!(serving_addresses(&edges, &down(&["a", "b"])), ["192.0.2.1", "192.0.2.2"]);
    }

    #[test]
    fn a_withheld_port_is_a_warning_on_its_service_per_edge() {
        use protocol::api::Transport;
        let withheld = |port, transport| Withheld {
            transport,
            port,
            service: "net/dns".into(),
            reason: "port 51820 (Service net/dns) is the edge's own".into(),
        };
        let by_agent: BTreeMap<String, Vec<Withheld>> = [
            ("edge-a".to_string(), vec![withheld(51820, Transport::Udp)]),
            ("edge-b".to_string(), vec![withheld(51820, Transport::Udp), withheld(80, Transport::Tcp)]),
            ("edge-c".to_string(), vec![]),
        ]
        .into();
        let notices = withheld_notices(&by_agent);
        let seen: Vec<(&str, &str, &str)> =
            notices.iter().map(|n| (n.namespace.as_str(), n.name.as_str(), n.reason)).collect();
        assert_eq!(seen, [("net", "dns", "PortWithheld"); 3]);
        assert!(
            notices[0].message.starts_with("edge edge-a does not serve port 51820/UDP: "),
            "{}",
            notices[0].message
        );
        assert!(notices[2].message.contains("port 80/TCP"), "{}", notices[2].message);
    }

    #[test]
    fn each_notice_is_reported_once_while_it_lasts() {
        let notice = Notice {
            kind: "Ingress",
            namespace: "d".into(),
            name: "n".into(),
            reason: "RouteConflict",
            message: "m".into(),
        };
        let mut reported = Reported::default();
        assert_eq!(reported.fresh(std::slice::from_ref(&notice)).len(), 1);
        assert!(reported.fresh(std::slice::from_ref(&notice)).is_empty());
        assert!(reported.fresh(&[]).is_empty());
        assert_eq!(reported.fresh(std::slice::from_ref(&notice)).len(), 1, "it came back: reported again");
    }
}
