//! The client watching a Kubernetes API with the unmodified kube-rs client. No kube-apiserver can be
//! installed on this machine kind, so the API is the in-repo test server (tests/support/apiserver.rs), which
//! speaks the real list/watch wire protocol: resourceVersion, watch events, bookmarks, 410 Gone, dropped
//! connections. The agent and Traefik are real.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::apiserver::ApiServer;
use support::*;

#[test]
fn cluster_changes_reach_the_edge_and_relists_do_not_flap_routes() {
    let edge = Edge::start("watch");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let (a, b) = (backend("backend-A"), backend("backend-B"));
    api.apply(&manifests("app.test", a));
    let _client = edge.client_watching_kubeconfig();
    assert!(
        eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "backend-A /"),
        "created Ingress is live"
    );
    // `kubectl get ingress` shows the edge's address.
    let ip = |name: &str| api.ingress_status("default", name)["loadBalancer"]["ingress"].clone();
    assert!(
        eventually(Duration::from_secs(10), || ip("app")[0]["ip"] == "127.0.0.1"),
        "status: {}",
        api.ingress_status("default", "app")
    );
    // A second Ingress claiming the same host and path loses (oldest wins; same age: by name) and gets an Event.
    let ingress_doc = manifests("app.test", a).split("---").nth(1).unwrap().to_string();
    api.apply(&ingress_doc.replace("name: app,", "name: dup,"));
    // The Event names the Ingress's uid too: `kubectl describe ingress` finds Events by it.
    let conflict_reported = || {
        api.events().iter().any(|e| {
            e["reason"] == "RouteConflict"
                && e["regarding"]["name"] == "dup"
                && e["regarding"]["uid"] == "uid-Ingress-default-dup"
        })
    };
    assert!(eventually(Duration::from_secs(10), conflict_reported), "events: {:?}", api.events());
    assert_eq!(get(web, "app.test", "/"), "backend-A /", "the older Ingress keeps the route");
    // Once the duplicate is no longer ours, the address it showed is cleared.
    assert!(eventually(Duration::from_secs(10), || ip("dup")[0]["ip"] == "127.0.0.1"));
    let not_ours = ingress_doc
        .replace("name: app,", "name: dup,")
        .replace("ingressClassName: polaredge", "ingressClassName: other");
    api.apply(&not_ours);
    assert!(
        eventually(Duration::from_secs(10), || ip("dup").as_array().is_some_and(|a| a.is_empty())),
        "{}",
        ip("dup")
    );
    // Ours again, the same conflict comes back: counted in the first Event's series, not a second Event.
    api.apply(&ingress_doc.replace("name: app,", "name: dup,"));
    let conflicts = || api.events().into_iter().filter(|e| e["reason"] == "RouteConflict").collect::<Vec<_>>();
    assert!(
        eventually(Duration::from_secs(10), || conflicts().first().is_some_and(|e| e["series"]["count"] == 2)),
        "events: {:?}",
        api.events()
    );
    assert_eq!(conflicts().len(), 1, "one Event, counted");
    assert_eq!(conflicts()[0]["reportingController"], "polaredge-client");
    api.apply(&not_ours);

    // An EndpointSlice update, then an Ingress update, then a second Ingress created.
    api.apply(manifests("app.test", b).split("---").last().unwrap());
    assert!(
        eventually(Duration::from_secs(10), || get(web, "app.test", "/") == "backend-B /"),
        "endpoint update followed"
    );
    api.apply(manifests("app.test", b).replace("host: app.test", "host: moved.test").split("---").nth(1).unwrap());
    assert!(
        eventually(Duration::from_secs(10), || get(web, "moved.test", "/") == "backend-B /"),
        "ingress update followed"
    );
    assert_eq!(get(web, "app.test", "/"), "404");

    // Relists must not flap the route: drop every watch, and expire history (410 Gone) so the client relists,
    // while a prober keeps requesting.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        std::thread::spawn(move || {
            let mut n = 0u64;
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if get(web, "moved.test", "/") != "backend-B /" {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    api.drop_watches();
    std::thread::sleep(Duration::from_secs(1));
    api.compact();
    api.drop_watches();
    std::thread::sleep(Duration::from_secs(2));
    // After the relist, changes still flow: delete the Ingress.
    api.delete("Ingress", "default", "app");
    assert!(eventually(Duration::from_secs(10), || get(web, "moved.test", "/") == "404"), "deleted Ingress is gone");
    stop.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap();
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{requests:?}"
    );
    let lists = requests
        .iter()
        .filter(|r| r.starts_with("/apis/networking.k8s.io/v1/ingresses") && !r.contains("watch="))
        .count();
    assert!(lists >= 2, "410 Gone forced a relist of Ingresses: {requests:?}");
    // Failures only after the deliberate delete (the prober sees 404 once it is live).
    let failed = failures.load(Ordering::Relaxed);
    assert!(probes > 100 && failed < 50, "route flapped during relists: {failed} of {probes} probes failed");
}

/// One client replica of `edge` named `name` (its Lease identity), serving probes on `ops`.
fn replica(edge: &Edge, name: &str, ops: std::net::SocketAddr, lease_seconds: u32) -> Proc {
    replica_via(edge, name, ops, &edge.dir.join("kubeconfig"), lease_seconds)
}

/// A replica whose API server is reached through `kubeconfig`.
fn replica_via(
    edge: &Edge,
    name: &str,
    ops: std::net::SocketAddr,
    kubeconfig: &std::path::Path,
    lease_seconds: u32,
) -> Proc {
    let config =
        std::fs::read_to_string(edge.dir.join("client.yaml")).unwrap().replace(&edge.ops.to_string(), &ops.to_string());
    let path = edge.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", "polaredge")
            .env("POLAREDGE_LEASE_SECONDS", lease_seconds.to_string())
            .args(["run", "--config"])
            .arg(&path),
    )
}

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn two_replicas_elect_one_leader_and_the_follower_takes_over_when_it_dies() {
    let edge = Edge::start("leader");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let pod = backend("pod");
    api.apply(&manifests("app.test", pod));
    let first = replica(&edge, "replica-a", local(free_tcp()), 3);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "the leader serves");
    assert_eq!(api.lease_holder("polaredge", "polaredge-client").as_deref(), Some("replica-a"));
    let second_ops = local(free_tcp());
    let _second = replica(&edge, "replica-b", second_ops, 3);
    assert!(
        eventually(Duration::from_secs(5), || get(second_ops, "x", "/healthz") == "ok\n"),
        "a follower answers probes"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.lease_holder("polaredge", "polaredge-client").as_deref(), Some("replica-a"), "one leader at a time");
    assert_eq!(get(second_ops, "x", "/readyz"), "503", "the follower is not ready");

    // The leader dies without a goodbye; the follower takes the Lease once it expires, and serves changes.
    let _ = Command::new("kill").args(["-KILL", &first.child.id().to_string()]).status();
    assert!(
        eventually(Duration::from_secs(15), || api.lease_holder("polaredge", "polaredge-client").as_deref()
            == Some("replica-b")),
        "the follower took over"
    );
    let ingress = manifests("app.test", pod).split("---").nth(1).unwrap().replace("host: app.test", "host: after.test");
    api.apply(&ingress);
    assert!(
        eventually(Duration::from_secs(20), || get(web, "after.test", "/") == "pod /"),
        "the new leader serves changes"
    );
}

#[test]
fn a_stopped_leader_hands_the_lease_over_at_once_instead_of_letting_it_expire() {
    let edge = Edge::start("handover");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    api.apply(&manifests("app.test", backend("pod")));
    // A 15 s Lease: waiting for it to expire would take 15 s or more.
    let first = replica(&edge, "replica-a", local(free_tcp()), 15);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "the leader serves");
    let second_ops = local(free_tcp());
    let _second = replica(&edge, "replica-b", second_ops, 15);
    assert!(eventually(Duration::from_secs(5), || get(second_ops, "x", "/healthz") == "ok\n"), "a follower runs");

    // What every rollout does: SIGTERM. The leader releases the Lease; the standby takes it at its next look
    // (every 2 s).
    let stopped = std::time::Instant::now();
    let _ = Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status();
    assert!(
        eventually(Duration::from_secs(10), || api.lease_holder("polaredge", "polaredge-client").as_deref()
            == Some("replica-b")),
        "the follower took over: {:?}",
        api.lease_holder("polaredge", "polaredge-client")
    );
    let took_over = stopped.elapsed();
    assert!(took_over < Duration::from_secs(4), "handed over in {took_over:?}, not after the 15 s expiry");
    assert!(eventually(Duration::from_secs(20), || get(web, "app.test", "/") == "pod /"), "the new leader serves");
    println!("SIGTERM -> Lease taken over {took_over:?}, serving again {:?}", stopped.elapsed());
    assert!(first.log().contains("released the Lease"), "{}", first.log());
}

/// Requests `host` through the edge at 20 per second until stopped; (requests, failures).
fn prober(
    web: std::net::SocketAddr,
    host: &'static str,
    expect: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let (mut requests, mut failures) = (0, 0);
        while !flag.load(Ordering::Relaxed) {
            requests += 1;
            if get(web, host, "/") != expect {
                failures += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (requests, failures)
    });
    (stop, handle)
}

#[test]
fn the_leader_keeps_serving_through_an_api_server_outage_many_leases_long() {
    let edge = Edge::start("outage");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    let proxy = testkit::CutProxy::start(api.addr);
    let kubeconfig = edge.dir.join("kubeconfig-proxied");
    api.kubeconfig_via(&kubeconfig, proxy.addr);
    let pod = backend("pod");
    api.apply(&manifests("app.test", pod));
    let leader = replica_via(&edge, "replica-a", local(free_tcp()), &kubeconfig, 3);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "{}", leader.log());
    let (stop, probes) = prober(web, "app.test", "pod /");
    // The API is gone for 60 s: twenty times the 3 s Lease. Nobody can take the Lease, so the leader keeps its
    // tunnels and its last snapshot.
    proxy.cut();
    std::thread::sleep(Duration::from_secs(60));
    proxy.restore();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = probes.join().unwrap();
    // Back: the same leader, and changes flow again (the change moves the route: probes stopped before it).
    let ingress = manifests("app.test", pod).split("---").nth(1).unwrap().replace("host: app.test", "host: after.test");
    api.apply(&ingress);
    // The watches retry with kube-runtime's backoff, which reaches 30 s during a minute-long outage (as
    // client-go's reflectors do), so the first change may wait that long after the API is back.
    assert!(
        eventually(Duration::from_secs(45), || get(web, "after.test", "/") == "pod /"),
        "changes after the outage\n{}",
        leader.log()
    );
    assert_eq!(api.lease_holder("polaredge", "polaredge-client").as_deref(), Some("replica-a"));
    assert!(leader.log().contains("still serving"), "{}", leader.log());
    assert!(requests > 1000, "{requests} probes");
    assert_eq!(failures, 0, "{failures} of {requests} probes failed during the outage\n{}", leader.log());
    println!("API outage of 60 s (3 s Lease): {requests} probes at 20/s, {failures} failed");
}

#[test]
fn a_leader_cut_off_from_the_api_is_fenced_by_the_agent_once_another_replica_leads() {
    let edge = Edge::start("fence");
    let web = edge.web;
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let proxy = testkit::CutProxy::start(api.addr);
    let kubeconfig = edge.dir.join("kubeconfig-proxied");
    api.kubeconfig_via(&kubeconfig, proxy.addr);
    let pod = backend("pod");
    api.apply(&manifests("app.test", pod));
    let first = replica_via(&edge, "replica-a", local(free_tcp()), &kubeconfig, 3);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "{}", first.log());
    let _second = replica(&edge, "replica-b", local(free_tcp()), 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.lease_holder("polaredge", "polaredge-client").as_deref(), Some("replica-a"));
    // Only replica-a loses the API: replica-b takes the Lease once it expires, with a newer term, and uploads.
    let cut = std::time::Instant::now();
    proxy.cut();
    assert!(
        eventually(Duration::from_secs(15), || api.lease_holder("polaredge", "polaredge-client").as_deref()
            == Some("replica-b")),
        "replica-b took over"
    );
    // The agent obeys the newer term; replica-a learns it from the agent and stops serving.
    assert!(
        // Measured 17-18 s (README, "fencing"); the bound leaves room for a loaded machine.
        eventually(Duration::from_secs(45), || first.log().contains("leadership lost")),
        "replica-a was fenced\n{}",
        first.log()
    );
    let fenced_after = cut.elapsed();
    assert!(first.log().contains("obeys client leader term"), "{}", first.log());
    // The new leader serves changes.
    let ingress = manifests("app.test", pod).split("---").nth(1).unwrap().replace("host: app.test", "host: after.test");
    api.apply(&ingress);
    assert!(eventually(Duration::from_secs(20), || get(web, "after.test", "/") == "pod /"), "the new leader serves");
    println!("partition: replica-a cut off at 0 s, stopped by the agent's fence at {fenced_after:?}");
}

#[test]
fn two_edges_serve_the_same_snapshot_and_status_lists_only_those_that_answer() {
    let edge = Edge::start("edges-a");
    let mut second = edge.add_edge("edges-b", "127.0.0.2");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let pod = backend("pod");
    api.apply(&manifests("app.test", pod));
    let client = edge.client_watching_kubeconfig();
    for web in [edge.web, second.web] {
        assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "{}", client.log());
    }
    let listed = || -> Vec<String> {
        let ingress = api.ingress_status("default", "app")["loadBalancer"]["ingress"].clone();
        ingress
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["ip"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(10), || listed() == ["127.0.0.1", "127.0.0.2"]), "{:?}", listed());

    // Both edges confirmed the snapshot (an upload still waiting for its answer when the host dies holds the
    // send loop until the answer's read timeout, 15 s: a loaded machine got there once).
    let in_sync = |name: &str| get(edge.ops, "x", "/metrics").contains(&format!("agent_in_sync{{agent=\"{name}\"}} 1"));
    assert!(eventually(Duration::from_secs(30), || in_sync("edge") && in_sync("edges-b")), "{}", client.log());

    // One edge host dies: the other serves everything, and the status drops the dead one (measured 7.9 s).
    let killed = std::time::Instant::now();
    second.kill_agent();
    assert!(eventually(Duration::from_secs(25), || listed() == ["127.0.0.1"]), "{:?}\n{}", listed(), client.log());
    let dropped_after = killed.elapsed();
    let ingress = manifests("app.test", pod).split("---").nth(1).unwrap().replace("host: app.test", "host: after.test");
    api.apply(&ingress);
    assert!(eventually(Duration::from_secs(10), || get(edge.web, "after.test", "/") == "pod /"), "the live edge");

    // It comes back: resynced with what changed meanwhile, and listed again.
    let restarted = std::time::Instant::now();
    second.restart_agent();
    assert!(
        eventually(Duration::from_secs(15), || get(second.web, "after.test", "/") == "pod /"),
        "the returning edge was resynced\n{}",
        client.log()
    );
    assert!(eventually(Duration::from_secs(15), || listed() == ["127.0.0.1", "127.0.0.2"]), "{:?}", listed());
    println!(
        "two edges: one killed -> dropped from status after {dropped_after:?}; restarted -> resynced and listed after {:?}",
        restarted.elapsed()
    );
}
