//! What to write back to the cluster, decided without I/O: the `status.loadBalancer.ingress` each Ingress
//! should show (the agents' public addresses while it is ours, nothing once it stops being ours), and which
//! notices are new enough to become Events.

use crate::render::{Cluster, Notice};
use std::collections::BTreeSet;

/// One Ingress whose status must change to `addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The addresses its status should list (empty: clear).
    pub addresses: Vec<String>,
}

/// Status updates that bring the cluster in line: served Ingresses list `addresses`; an Ingress that is not
/// served and lists exactly our addresses (it was ours) is cleared; others are left alone.
pub fn status_changes(
    cluster: &Cluster,
    served: &BTreeSet<(String, String)>,
    addresses: &[String],
) -> Vec<StatusChange> {
    let mut ours: Vec<String> = addresses.to_vec();
    ours.sort();
    ours.dedup();
    let mut changes = Vec::new();
    for ingress in &cluster.ingresses {
        let key = (
            ingress.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            ingress.metadata.name.clone().unwrap_or_default(),
        );
        let mut current: Vec<String> = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .collect();
        current.sort();
        let desired = if served.contains(&key) {
            ours.clone()
        } else if !current.is_empty() && current == ours {
            Vec::new()
        } else {
            continue;
        };
        if current != desired {
            changes.push(StatusChange { namespace: key.0, name: key.1, addresses: desired });
        }
    }
    changes
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
        let changes = status_changes(&cluster(""), &served, &addresses);
        assert_eq!(
            changes,
            [StatusChange { namespace: "default".into(), name: "a".into(), addresses: addresses.clone() }]
        );
        let done = cluster("status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}");
        assert!(status_changes(&done, &served, &addresses).is_empty(), "already right: no write");
    }

    #[test]
    fn an_ingress_that_stops_being_ours_is_cleared_and_others_are_left_alone() {
        let addresses = vec!["203.0.113.7".to_string()];
        let was_ours = cluster("status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}");
        let changes = status_changes(&was_ours, &BTreeSet::new(), &addresses);
        assert_eq!(changes[0].addresses, Vec::<String>::new());
        let someone_elses = cluster("status: {loadBalancer: {ingress: [{ip: 198.51.100.1}]}}");
        assert!(status_changes(&someone_elses, &BTreeSet::new(), &addresses).is_empty());
    }

    #[test]
    fn each_notice_is_reported_once_while_it_lasts() {
        let notice = Notice { namespace: "d".into(), name: "n".into(), reason: "RouteConflict", message: "m".into() };
        let mut reported = Reported::default();
        assert_eq!(reported.fresh(std::slice::from_ref(&notice)).len(), 1);
        assert!(reported.fresh(std::slice::from_ref(&notice)).is_empty());
        assert!(reported.fresh(&[]).is_empty());
        assert_eq!(reported.fresh(std::slice::from_ref(&notice)).len(), 1, "it came back: reported again");
    }
}
