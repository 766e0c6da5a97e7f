//! An in-repo Kubernetes API server for tests: list and watch with real wire semantics for Ingresses,
//! IngressClasses, Services and EndpointSlices (resourceVersion, ADDED/MODIFIED/DELETED events, bookmarks,
//! 410 Gone after compaction, dropped connections), driven by the unmodified kube-rs client. No
//! kube-apiserver can be installed on this machine kind; this stands in for one and says so.
//!
//! The Gateway API (gateway.networking.k8s.io/v1: GatewayClass, Gateway, HTTPRoute, ReferenceGrant, and
//! GRPCRoute, TLSRoute, TCPRoute, UDPRoute as the standard channel serves them since v1.6) is served
//! only after [`ApiServer::install_gateway_api`], as a cluster serves it only once its CRDs are installed:
//! before, its discovery document and collections answer 404. Status writes to those kinds are checked as the
//! CRDs' schemas check conditions (type, status, reason pattern, lastTransitionTime); a real server checks
//! every other field of the schema too, which this one does not.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The Gateway API group version.
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";

/// What a real API server answers for an EndpointSlice with a loopback address (its validation refuses
/// 127.0.0.0/8 and ::1, which would let a Service reach into the node itself).
fn invalid_endpoint_addresses(slice: &Value, name: &str) -> Result<(), String> {
    let endpoints = slice["endpoints"].as_array().cloned().unwrap_or_default();
    for (i, endpoint) in endpoints.iter().enumerate() {
        for (j, address) in endpoint["addresses"].as_array().cloned().unwrap_or_default().iter().enumerate() {
            let text = address.as_str().unwrap_or_default();
            if text.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
                return Err(format!(
                    "422 Invalid: EndpointSlice.discovery.k8s.io \"{name}\" is invalid: \
                     endpoints[{i}].addresses[{j}]: Invalid value: \"{text}\": may not be in the loopback range \
                     (127.0.0.0/8, ::1/128)"
                ));
            }
        }
    }
    Ok(())
}

/// The resource types served: (URL prefix of the collection, apiVersion, kind).
const TYPES: [(&str, &str, &str); 14] = [
    ("/apis/gateway.networking.k8s.io/v1/gatewayclasses", GATEWAY_API, "GatewayClass"),
    ("/apis/gateway.networking.k8s.io/v1/gateways", GATEWAY_API, "Gateway"),
    ("/apis/gateway.networking.k8s.io/v1/httproutes", GATEWAY_API, "HTTPRoute"),
    ("/apis/gateway.networking.k8s.io/v1/referencegrants", GATEWAY_API, "ReferenceGrant"),
    ("/apis/gateway.networking.k8s.io/v1/grpcroutes", GATEWAY_API, "GRPCRoute"),
    ("/apis/gateway.networking.k8s.io/v1/tlsroutes", GATEWAY_API, "TLSRoute"),
    ("/apis/gateway.networking.k8s.io/v1/tcproutes", GATEWAY_API, "TCPRoute"),
    ("/apis/gateway.networking.k8s.io/v1/udproutes", GATEWAY_API, "UDPRoute"),
    ("/apis/networking.k8s.io/v1/ingresses", "networking.k8s.io/v1", "Ingress"),
    ("/apis/networking.k8s.io/v1/ingressclasses", "networking.k8s.io/v1", "IngressClass"),
    ("/api/v1/services", "v1", "Service"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
    ("/api/v1/secrets", "v1", "Secret"),
    ("/api/v1/namespaces", "v1", "Namespace"),
];

/// A merge patch of an object's status subresource, as the client sends it: each field given replaces the
/// stored one (lists whole), and watchers see the change.
fn patch_status(
    st: &mut State,
    kind: &str,
    ns: &str,
    name: &str,
    status: &Value,
    changed: &Condvar,
) -> (&'static str, Value) {
    st.rv += 1;
    let rv = st.rv;
    let Some(object) = st.objects.get_mut(kind).and_then(|m| m.get_mut(&(ns.to_string(), name.to_string()))) else {
        return (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    for (field, value) in status.as_object().into_iter().flatten() {
        object["status"][field] = value.clone();
    }
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let object = object.clone();
    st.log.push((rv, kind.into(), "MODIFIED", object.clone()));
    changed.notify_all();
    ("200 OK", object)
}

/// What the Gateway API CRDs' schemas require of every condition in a status (metav1.Condition): a type,
/// True/False/Unknown, a CamelCase reason, an RFC 3339 lastTransitionTime, a non-negative observedGeneration.
fn check_conditions(status: &Value) -> Result<(), String> {
    let mut lists: Vec<&Value> = vec![&status["conditions"]];
    for nested in ["listeners", "parents"] {
        lists.extend(status[nested].as_array().into_iter().flatten().map(|n| &n["conditions"]));
    }
    for condition in lists.into_iter().filter_map(Value::as_array).flatten() {
        let reason = condition["reason"].as_str().unwrap_or("");
        let reason_ok = reason.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && reason.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'));
        let time = condition["lastTransitionTime"].as_str().unwrap_or("");
        let time_ok = time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z');
        if condition["type"].as_str().is_none_or(str::is_empty)
            || !matches!(condition["status"].as_str(), Some("True" | "False" | "Unknown"))
            || !reason_ok
            || !time_ok
            || condition["observedGeneration"].as_i64().is_some_and(|g| g < 0)
        {
            return Err(format!("invalid condition {condition}"));
        }
    }
    Ok(())
}

/// A field selector as the client sends it (`type=kubernetes.io/tls`, URL-encoded): the only one served, on
/// Secrets' `type`, as a real API server does. Anything else is refused, as a real one refuses unknown fields.
fn field_selector(params: &BTreeMap<&str, &str>) -> Result<Option<(String, String)>, String> {
    let Some(raw) = params.get("fieldSelector") else { return Ok(None) };
    let decoded = raw.replace("%3D", "=").replace("%3d", "=").replace("%2F", "/").replace("%2f", "/");
    match decoded.split_once('=') {
        Some(("type", value)) => Ok(Some(("type".into(), value.trim_start_matches('=').to_string()))),
        _ => Err(format!("field label not supported: {decoded}")),
    }
}

fn selected(object: &Value, selector: &Option<(String, String)>) -> bool {
    selector.as_ref().is_none_or(|(field, value)| object[field.as_str()].as_str() == Some(value.as_str()))
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Accept EndpointSlice addresses in the loopback range (see [`ApiServer::start_allowing_loopback_pods`]).
    loopback_pods: bool,
    /// kind -> (namespace, name) -> object
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// (resourceVersion, kind, event type, object)
    log: Vec<(u64, String, &'static str, Value)>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    /// Bumped to make every open watch end (a dropped connection).
    epoch: u64,
    /// Requests seen, for assertions: (method and path with query).
    requests: Vec<String>,
    /// Events the client created (the request bodies).
    events: Vec<Value>,
    /// Leases by (namespace, name).
    leases: BTreeMap<(String, String), Value>,
    /// Whether the Gateway API CRDs are installed.
    gateway_api: bool,
}

/// The server; dropping it leaves the thread running until the process ends (tests are short).
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<(Mutex<State>, Condvar)>,
    pub addr: SocketAddr,
}

impl ApiServer {
    /// A server that refuses what a real one refuses, loopback pod addresses included.
    pub fn start() -> ApiServer {
        ApiServer::listen(false)
    }

    /// A server that accepts EndpointSlice addresses in 127.0.0.0/8 and ::1, which a real one refuses, for the
    /// tests whose pods are plain sockets of the test process on loopback: they cover the client's watching,
    /// status and failover, which do not depend on where pods live, and a network namespace per pod would
    /// make every one of them need root. `hot_standby.rs` runs its pods in namespaces with [`Self::start`].
    pub fn start_allowing_loopback_pods() -> ApiServer {
        ApiServer::listen(true)
    }

    fn listen(loopback_pods: bool) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = State { rv: 1, loopback_pods, ..Default::default() };
        let server = ApiServer { state: Arc::new((Mutex::new(state), Condvar::new())), addr };
        let s = server.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let s = s.clone();
                std::thread::spawn(move || s.serve(conn));
            }
        });
        server
    }

    /// A kubeconfig pointing at this server (plain HTTP, no auth).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        self.kubeconfig_via(path, self.addr);
    }

    /// A kubeconfig that reaches this server through `server` (a proxy the test can cut).
    pub fn kubeconfig_via(&self, path: &std::path::Path, server: SocketAddr) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{server}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n"
            ),
        )
        .unwrap();
    }

    /// Creates or replaces objects from YAML (one or several documents).
    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml) {
            panic!("{e}");
        }
    }

    /// Creates or replaces the objects in `yaml`, or refuses the first one a real API server would refuse
    /// (422 Invalid: an EndpointSlice address in the loopback range), storing nothing from it on.
    pub fn try_apply(&self, yaml: &str) -> Result<(), String> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let mut object: Value = serde::Deserialize::deserialize(doc).unwrap();
            if object.is_null() {
                continue;
            }
            let kind = object["kind"].as_str().unwrap().to_string();
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let (lock, cvar) = &*self.state;
            let mut st = lock.lock().unwrap();
            if kind == "EndpointSlice" && !st.loopback_pods {
                invalid_endpoint_addresses(&object, &name)?;
            }
            st.rv += 1;
            let rv = st.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            if object["metadata"]["uid"].is_null() {
                object["metadata"]["uid"] = json!(format!("uid-{kind}-{ns}-{name}"));
            }
            if object["metadata"]["creationTimestamp"].is_null() {
                object["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            // As with a status subresource: writes to the object keep its status.
            if let Some(old) = st.objects.get(&kind).and_then(|m| m.get(&(ns.clone(), name.clone()))) {
                if object["status"].is_null() && !old["status"].is_null() {
                    object["status"] = old["status"].clone();
                }
            }
            let existed = st.objects.entry(kind.clone()).or_default().insert((ns, name), object.clone()).is_some();
            st.log.push((rv, kind, if existed { "MODIFIED" } else { "ADDED" }, object));
            cvar.notify_all();
        }
        Ok(())
    }

    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        if let Some(mut object) = st.objects.entry(kind.into()).or_default().remove(&(ns.into(), name.into())) {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.log.push((rv, kind.into(), "DELETED", object));
        }
        cvar.notify_all();
    }

    /// Serves the Gateway API from now on, as installing its CRDs does.
    pub fn install_gateway_api(&self) {
        self.state.0.lock().unwrap().gateway_api = true;
    }

    /// Forgets history: watches resuming from before now get 410 Gone and must relist.
    pub fn compact(&self) {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap();
        // Like an etcd compaction followed by any write: every resourceVersion a client holds is now too old.
        st.rv += 1;
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Ends every open watch connection, as a restarted API server or a broken network would.
    pub fn drop_watches(&self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap().epoch += 1;
        cvar.notify_all();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; content_length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let method = request_line.split_whitespace().next().unwrap_or("GET").to_string();
            let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
            self.state.0.lock().unwrap().requests.push(if method == "GET" {
                target.clone()
            } else {
                format!("{method} {target}")
            });
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            if method != "GET" {
                let (status, answer) = self.write(&method, path, &body);
                let text = answer.to_string();
                let _ = write!(
                    &conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                continue;
            }
            let params: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
            if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
                let parts: Vec<&str> = rest.split('/').collect();
                let lease = match parts.as_slice() {
                    [ns, "leases", name] => {
                        self.state.0.lock().unwrap().leases.get(&(ns.to_string(), name.to_string())).cloned()
                    }
                    _ => None,
                };
                let (status, text) = match lease {
                    Some(lease) => ("200 OK", lease.to_string()),
                    None => ("404 Not Found", json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string()),
                };
                let _ = write!(
                    &conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                continue;
            }
            let gateway_api = self.state.0.lock().unwrap().gateway_api;
            if path == format!("/apis/{GATEWAY_API}") && gateway_api {
                let resources: Vec<Value> = TYPES
                    .iter()
                    .filter(|(_, v, _)| *v == GATEWAY_API)
                    .map(|(p, _, kind)| {
                        let plural = p.rsplit('/').next().unwrap();
                        json!({"name": plural, "singularName": "", "namespaced": *kind != "GatewayClass", "kind": kind, "verbs": ["get", "list", "watch", "patch"]})
                    })
                    .collect();
                let body = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GATEWAY_API, "resources": resources}).to_string();
                let _ = write!(
                    &conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let served = TYPES.iter().find(|(p, v, _)| *p == path && (gateway_api || *v != GATEWAY_API));
            let Some(&(_, api_version, kind)) = served else {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} is not served by the test API server")}).to_string();
                let _ = write!(
                    &conn,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                continue;
            };
            let selector = match field_selector(&params) {
                Ok(selector) => selector,
                Err(message) => {
                    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400, "message": message}).to_string();
                    let _ = write!(
                        &conn,
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    continue;
                }
            };
            if params.get("watch") == Some(&"true") || params.get("watch") == Some(&"1") {
                let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                let timeout = params.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290u64);
                self.watch(conn, api_version, kind, &selector, since, Duration::from_secs(timeout.min(30)));
                return;
            }
            let st = self.state.0.lock().unwrap();
            let items: Vec<Value> = st
                .objects
                .get(kind)
                .map(|m| m.values().filter(|o| selected(o, &selector)).cloned().collect())
                .unwrap_or_default();
            let list = json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
            drop(st);
            let body = list.to_string();
            let _ = write!(
                &conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }

    /// PATCH of an Ingress's status (merge patch), POST of an Event.
    fn write(&self, method: &str, path: &str, body: &[u8]) -> (&'static str, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap();
        match (method, parts.as_slice()) {
            ("PATCH", ["apis", "networking.k8s.io", "v1", "namespaces", ns, "ingresses", name, "status"])
            | ("PATCH", ["api", "v1", "namespaces", ns, "services", name, "status"]) => {
                let kind = if parts[1] == "v1" { "Service" } else { "Ingress" };
                patch_status(&mut st, kind, ns, name, &request["status"], cvar)
            }
            ("PATCH", ["apis", "gateway.networking.k8s.io", "v1", "namespaces", _, plural, name, "status"])
            | ("PATCH", ["apis", "gateway.networking.k8s.io", "v1", plural @ "gatewayclasses", name, "status"])
                if st.gateway_api =>
            {
                let ns = if *plural == "gatewayclasses" { "" } else { parts[4] };
                let Some(&(_, _, kind)) = TYPES.iter().find(|(p, _, _)| p.ends_with(&format!("/{plural}"))) else {
                    return ("404 Not Found", json!({"kind": "Status", "code": 404}));
                };
                if let Err(message) = check_conditions(&request["status"]) {
                    return (
                        "422 Unprocessable Entity",
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": message}),
                    );
                }
                patch_status(&mut st, kind, ns, name, &request["status"], cvar)
            }
            ("POST", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
                let name = request["metadata"]["name"].as_str().unwrap_or("").to_string();
                let key = (ns.to_string(), name);
                if st.leases.contains_key(&key) {
                    return (
                        "409 Conflict",
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
                    );
                }
                st.rv += 1;
                let mut lease = request.clone();
                lease["apiVersion"] = json!("coordination.k8s.io/v1");
                lease["kind"] = json!("Lease");
                lease["metadata"]["namespace"] = json!(ns);
                lease["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.leases.insert(key, lease.clone());
                ("201 Created", lease)
            }
            ("PUT", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
                let key = (ns.to_string(), name.to_string());
                let current_rv = st.leases.get(&key).map(|l| l["metadata"]["resourceVersion"].clone());
                if current_rv.as_ref() != Some(&request["metadata"]["resourceVersion"]) {
                    // Optimistic concurrency: a stale resourceVersion loses.
                    return (
                        "409 Conflict",
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
                    );
                }
                st.rv += 1;
                let mut lease = request.clone();
                lease["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.leases.insert(key, lease.clone());
                ("200 OK", lease)
            }
            ("POST", ["api", "v1", "namespaces", _ns, "events"]) => {
                st.events.push(request.clone());
                ("201 Created", request)
            }
            // events.k8s.io/v1, as kube-runtime's Recorder writes them: created once, then patched with a
            // series count when the same event repeats.
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _ns, "events"]) => {
                let missing: Vec<&str> = ["eventTime", "reportingController", "reportingInstance", "action", "reason"]
                    .into_iter()
                    .filter(|f| request[*f].as_str().is_none_or(str::is_empty))
                    .collect();
                let note_too_long = request["note"].as_str().is_some_and(|n| n.len() > 1024);
                if !missing.is_empty() || note_too_long {
                    return (
                        "422 Unprocessable Entity",
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": format!("required: {missing:?}; note at most 1 KiB")}),
                    );
                }
                st.events.push(request.clone());
                ("201 Created", request)
            }
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
                let Some(event) =
                    st.events.iter_mut().find(|e| e["metadata"]["name"] == *name && e["metadata"]["namespace"] == *ns)
                else {
                    return ("404 Not Found", json!({"kind": "Status", "code": 404}));
                };
                for (field, value) in request.as_object().into_iter().flatten() {
                    event[field] = value.clone();
                }
                ("200 OK", event.clone())
            }
            _ => (
                "405 Method Not Allowed",
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405}),
            ),
        }
    }

    /// The status of an Ingress as stored.
    pub fn ingress_status(&self, ns: &str, name: &str) -> Value {
        self.status_of("Ingress", ns, name)
    }

    /// The status of an object of `kind`.
    pub fn status_of(&self, kind: &str, ns: &str, name: &str) -> Value {
        let st = self.state.0.lock().unwrap();
        st.objects
            .get(kind)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// The holder of a Lease.
    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        let st = self.state.0.lock().unwrap();
        st.leases
            .get(&(ns.to_string(), name.to_string()))
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }

    /// Events the client created.
    pub fn events(&self) -> Vec<Value> {
        self.state.0.lock().unwrap().events.clone()
    }

    fn watch(
        &self,
        mut conn: TcpStream,
        api_version: &str,
        kind: &str,
        selector: &Option<(String, String)>,
        since: u64,
        timeout: Duration,
    ) {
        let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = |conn: &mut TcpStream, event: Value| {
            let line = format!("{event}\n");
            write!(conn, "{:x}\r\n{line}\r\n", line.len()).and_then(|_| conn.flush())
        };
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap();
        if since < st.compacted && since != 0 {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": format!("too old resource version: {since} ({})", st.compacted)}});
            drop(st);
            let _ = chunk(&mut conn, gone);
            let _ = write!(conn, "0\r\n\r\n");
            return;
        }
        let epoch = st.epoch;
        let mut sent = since;
        let deadline = Instant::now() + timeout;
        let mut next_bookmark = Instant::now() + Duration::from_millis(500);
        loop {
            let events: Vec<Value> = st
                .log
                .iter()
                .filter(|(rv, k, _, o)| *rv > sent && k == kind && selected(o, selector))
                .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                .collect();
            sent = st.rv;
            drop(st);
            for event in events {
                if chunk(&mut conn, event).is_err() {
                    return;
                }
            }
            if Instant::now() >= next_bookmark {
                let bookmark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": sent.to_string()}}});
                if chunk(&mut conn, bookmark).is_err() {
                    return;
                }
                next_bookmark = Instant::now() + Duration::from_millis(500);
            }
            st = lock.lock().unwrap();
            if st.epoch != epoch || Instant::now() >= deadline {
                drop(st);
                if Instant::now() >= deadline {
                    let _ = write!(conn, "0\r\n\r\n");
                }
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
            st = cvar.wait_timeout(st, Duration::from_millis(100)).unwrap().0;
            if st.epoch != epoch {
                drop(st);
                let _ = conn.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}
