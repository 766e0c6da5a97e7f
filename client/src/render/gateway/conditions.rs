//! The status the Gateway API asks of a controller, as data: conditions on GatewayClasses, Gateways (and
//! their listeners) and HTTPRoutes (per parent), computed by the planner and written by the status writer.
//! [`merge_conditions`] turns them into the API's JSON, keeping `lastTransitionTime` where nothing changed,
//! so that writing the same status twice changes nothing (no write loop through our own watch).

use serde_json::{json, Value};

/// One condition, without its times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `Programmed`, `ResolvedRefs`, `Conflicted`.
    pub kind: &'static str,
    /// True or False.
    pub status: bool,
    /// The spec's reason, e.g. `NoMatchingListenerHostname`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Condition {
    /// A condition.
    pub fn new(kind: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Condition {
        Condition { kind, status, reason, message: message.into() }
    }
}

/// A GatewayClass of ours.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStatus {
    /// Its name (cluster-scoped).
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Its conditions.
    pub conditions: Vec<Condition>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// Routes attached to it.
    pub attached_routes: i32,
    /// Route kinds it accepts (`HTTPRoute` or none).
    pub supported_kinds: Vec<&'static str>,
    /// Its conditions.
    pub conditions: Vec<Condition>,
}

/// A Gateway of one of our classes.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Gateway-level conditions.
    pub conditions: Vec<Condition>,
    /// Per listener, in spec order.
    pub listeners: Vec<ListenerStatus>,
}

/// One parent (Gateway) of an HTTPRoute that is ours.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentStatus {
    /// The parentRef as the route wrote it.
    pub parent_ref: Value,
    /// Its conditions.
    pub conditions: Vec<Condition>,
}

/// A route (HTTPRoute, TLSRoute, TCPRoute, UDPRoute) with at least one parent of ours.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    /// Its kind.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Our parents.
    pub parents: Vec<ParentStatus>,
}

/// Everything the planner decided about status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statuses {
    /// GatewayClasses of our controller.
    pub classes: Vec<ClassStatus>,
    /// Gateways of those classes.
    pub gateways: Vec<GatewayStatus>,
    /// Routes attached (or trying to attach) to those Gateways.
    pub routes: Vec<RouteStatus>,
}

/// The API form of `conditions`: each keeps the `lastTransitionTime` it has in `previous` (the object's
/// current conditions) when its status did not change, else gets `now` (RFC 3339).
pub fn merge_conditions(conditions: &[Condition], generation: Option<i64>, previous: &Value, now: &str) -> Value {
    let list: Vec<Value> = conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let old = previous
                .as_array()
                .and_then(|l| l.iter().find(|p| p["type"] == c.kind))
                .filter(|p| p["status"] == status)
                .and_then(|p| p["lastTransitionTime"].as_str());
            json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation.unwrap_or(0),
                "lastTransitionTime": old.unwrap_or(now),
            })
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time_and_a_changed_one_gets_now() {
        let conditions = [
            Condition::new("Accepted", true, "Accepted", "ok"),
            Condition::new("ResolvedRefs", false, "BackendNotFound", "no Service x"),
        ];
        let first = merge_conditions(&conditions, Some(3), &Value::Null, "2026-01-01T00:00:00Z");
        assert_eq!(first[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(first[1]["status"], "False");
        assert_eq!(first[0]["observedGeneration"], 3);
        let again = merge_conditions(&conditions, Some(3), &first, "2026-02-02T00:00:00Z");
        assert_eq!(again, first, "the same status writes the same JSON");
        let fixed = [conditions[0].clone(), Condition::new("ResolvedRefs", true, "ResolvedRefs", "")];
        let later = merge_conditions(&fixed, Some(4), &first, "2026-03-03T00:00:00Z");
        assert_eq!(later[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(later[1]["lastTransitionTime"], "2026-03-03T00:00:00Z");
    }
}
