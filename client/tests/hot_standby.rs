//! Hitless failover: two client replicas with a key and a tunnel address each (`POLAREDGE_REPLICA_KEYS`, as a
//! StatefulSet runs them), both holding their tunnels and relays while only the leader uploads. A prober at
//! 20 requests per second through the real agent and Traefik sees no failure while the leader is killed
//! (SIGKILL), while the new leader is stopped (SIGTERM: it drains), and through a rolling restart of both
//! replicas. The API is the in-repo server (tests/support/apiserver.rs), refusing loopback pod addresses as a
//! real one does; the pods run in network namespaces of their own (root).

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::apiserver::ApiServer;
use support::*;

/// Replica `n` (pod `polaredge-client-n`) of `edge`, with its own key from the edge's `replica.keys`.
fn replica(edge: &Edge, n: usize, lease_seconds: u32) -> (Proc, std::net::SocketAddr) {
    replica_via(edge, n, lease_seconds, &edge.dir.join("kubeconfig"))
}

/// [`replica`] reaching the API server through `kubeconfig`.
fn replica_via(
    edge: &Edge,
    n: usize,
    lease_seconds: u32,
    kubeconfig: &std::path::Path,
) -> (Proc, std::net::SocketAddr) {
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp()));
    let config = std::fs::read_to_string(edge.dir.join("client.yaml"))
        .unwrap()
        .replace(&edge.ops.to_string(), &ops.to_string())
        .replace("private_key_file: client.key\n", "");
    let path = edge.dir.join(format!("replica-{n}.yaml"));
    std::fs::write(&path, config).unwrap();
    let keys = std::fs::read_to_string(edge.dir.join("replica.keys")).unwrap();
    let proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", format!("polaredge-client-{n}"))
            .env("POD_NAMESPACE", "polaredge")
            .env("POLAREDGE_REPLICA_KEYS", keys)
            .env("POLAREDGE_LEASE_SECONDS", lease_seconds.to_string())
            .args(["run", "--config"])
            .arg(&path),
    );
    (proc, ops)
}

/// Adds a second Ingress (after.test, to the same pod) and waits until `leader` has it served at the edge.
fn serves_a_change(api: &ApiServer, web: std::net::SocketAddr, pod: std::net::SocketAddr, leader: &Proc) {
    let after = manifests_at("app.test", pod)
        .split("---")
        .nth(1)
        .unwrap()
        .replace("host: app.test", "host: after.test")
        .replace("name: app,", "name: after,");
    api.apply(&after);
    assert!(eventually(Duration::from_secs(20), || get(web, "after.test", "/") == "pod /"), "{}", leader.log());
}

/// The agent's `/status` as JSON.
fn agent_status(edge: &Edge) -> serde_json::Value {
    let out =
        Command::new(agent_binary()).args(["status", "--config"]).arg(edge.dir.join("agent.yaml")).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Whether the agent has a live tunnel to each of the `n` replicas (heard from within `within` seconds).
fn replicas_up(edge: &Edge, n: usize, within: u64) -> bool {
    let status = agent_status(edge);
    let replicas = status["tunnel"]["replicas"].as_array().cloned().unwrap_or_default();
    replicas.len() == n && replicas.iter().all(|r| r["last_received_s"].as_u64().is_some_and(|s| s <= within))
}

fn kill(proc: &Proc, signal: &str) {
    let _ = Command::new("kill").args([signal, &proc.child.id().to_string()]).status();
}

/// Requests through the edge at 20 per second until stopped, from two threads (so a slow answer does not
/// lower the rate much); every answer other than `expect` is a failure, printed.
struct Prober {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(web: std::net::SocketAddr, host: &'static str, expect: &'static str) -> Prober {
        let (stop, requests, failures, slowest_ms) = (Arc::default(), Arc::default(), Arc::default(), Arc::default());
        let threads = (0..2)
            .map(|_| {
                let (stop, requests, failures, slowest_ms): (
                    Arc<AtomicBool>,
                    Arc<AtomicU64>,
                    Arc<AtomicU64>,
                    Arc<AtomicU64>,
                ) = (Arc::clone(&stop), Arc::clone(&requests), Arc::clone(&failures), Arc::clone(&slowest_ms));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let answer = get(web, host, "/");
                        slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                        if answer != expect {
                            failures.fetch_add(1, Ordering::Relaxed);
                            eprintln!("probe failed after {:?}: {answer:?}", started.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
                    }
                })
            })
            .collect();
        Prober { stop, requests, failures, slowest_ms, threads }
    }

    /// (requests, failures, slowest answer) so far.
    fn counts(&self) -> (u64, u64, u64) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (load(&self.requests), load(&self.failures), load(&self.slowest_ms))
    }

    fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.counts();
        for t in self.threads {
            t.join().unwrap();
        }
        counts
    }
}

#[test]
fn with_a_key_per_replica_no_probe_fails_across_sigkill_sigterm_and_a_rolling_restart() {
    let edge = Edge::start_replicated("hot", 2);
    let web = edge.web;
    let api = ApiServer::start();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    // The pod lives in a network namespace of its own: this API server refuses loopback pod addresses.
    let pod = NetnsPod::start("pod");
    api.apply(&manifests_at("app.test", pod.addr));
    let holder = || api.lease_holder("polaredge", "polaredge-client");
    // A 15 s Lease: a failover that waited for its expiry would fail probes for 15 s.
    let (mut a, _) = replica(&edge, 0, 15);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "{}", a.log());
    assert_eq!(holder().as_deref(), Some("polaredge-client-0"));
    let (mut b, b_ops) = replica(&edge, 1, 15);
    assert!(
        eventually(Duration::from_secs(10), || replicas_up(&edge, 2, 30)),
        "{:?}\n{}",
        agent_status(&edge),
        b.log()
    );
    assert!(eventually(Duration::from_secs(10), || get(b_ops, "x", "/readyz") == "ready\n"), "a hot standby is ready");
    assert!(b.log().contains("uploads wait for leadership"), "{}", b.log());
    assert_eq!(holder().as_deref(), Some("polaredge-client-0"), "one leader");

    let prober = Prober::start(web, "app.test", "pod /");
    std::thread::sleep(Duration::from_secs(2));

    // 1. The leader dies without a word. Its streams move to B; B takes the Lease once it expires (15 s).
    kill(&a, "-KILL");
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || holder().as_deref() == Some("polaredge-client-1")),
        "B took the Lease\n{}",
        b.log()
    );
    println!("SIGKILL of the leader: B leads after {:?}; probes so far {:?}", killed.elapsed(), prober.counts());
    // B serves changes as the leader.
    serves_a_change(&api, web, pod.addr, &b);

    // 2. A comes back (the StatefulSet restarts it) as a hot standby; then the leader B gets SIGTERM: it
    // releases the Lease, drains, and exits; A takes over.
    let a_ops;
    (a, a_ops) = replica(&edge, 0, 15);
    // What a StatefulSet waits for before it stops the next pod: the new one is ready (its relays are open).
    assert!(eventually(Duration::from_secs(20), || get(a_ops, "x", "/readyz") == "ready\n"), "{}", a.log());
    assert!(eventually(Duration::from_secs(20), || replicas_up(&edge, 2, 2)), "{:?}", agent_status(&edge));
    let stopped = Instant::now();
    kill(&b, "-TERM");
    assert!(eventually(Duration::from_secs(10), || holder().as_deref() == Some("polaredge-client-0")), "{}", a.log());
    assert!(eventually(Duration::from_secs(25), || b.child.try_wait().unwrap().is_some()), "B exits");
    assert!(b.log().contains("drained in"), "{}", b.log());
    println!("SIGTERM of the leader: A leads after {:?}; probes so far {:?}", stopped.elapsed(), prober.counts());

    // 3. Rolling restart, as a StatefulSet does it: B (the standby now) is started again, then A gets
    // SIGTERM and is started again.
    let b_ops;
    (b, b_ops) = replica(&edge, 1, 15);
    assert!(eventually(Duration::from_secs(20), || get(b_ops, "x", "/readyz") == "ready\n"), "{}", b.log());
    kill(&a, "-TERM");
    assert!(eventually(Duration::from_secs(25), || a.child.try_wait().unwrap().is_some()), "A exits");
    let a_ops;
    (a, a_ops) = replica(&edge, 0, 15);
    assert!(eventually(Duration::from_secs(20), || get(a_ops, "x", "/readyz") == "ready\n"), "{}", a.log());
    assert!(eventually(Duration::from_secs(20), || replicas_up(&edge, 2, 2)), "{:?}", agent_status(&edge));
    std::thread::sleep(Duration::from_secs(2));

    let (requests, failures, slowest) = prober.stop();
    println!(
        "hot standby: {requests} probes at 20/s across SIGKILL, SIGTERM and a rolling restart; {failures} failed; \
         slowest {slowest} ms"
    );
    assert!(requests > 300, "{requests} probes");
    assert_eq!(
        failures,
        0,
        "{failures} of {requests} probes failed\nA:\n{}\nB:\n{}\nagent:\n{}",
        a.log(),
        b.log(),
        edge.agent.log()
    );
    assert!(get(web, "after.test", "/") == "pod /");
}

#[test]
fn a_fenced_leader_with_its_own_key_stands_by_again_and_keeps_relaying() {
    let edge = Edge::start_replicated("hot-fence", 2);
    let web = edge.web;
    let api = ApiServer::start();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let proxy = testkit::CutProxy::start(api.addr);
    let cut_off = edge.dir.join("kubeconfig-proxied");
    api.kubeconfig_via(&cut_off, proxy.addr);
    // The pod lives in a network namespace of its own: this API server refuses loopback pod addresses.
    let pod = NetnsPod::start("pod");
    api.apply(&manifests_at("app.test", pod.addr));
    let holder = || api.lease_holder("polaredge", "polaredge-client");
    let (mut a, a_ops) = replica_via(&edge, 0, 3, &cut_off);
    assert!(eventually(Duration::from_secs(30), || get(web, "app.test", "/") == "pod /"), "{}", a.log());
    let (b, b_ops) = replica(&edge, 1, 3);
    assert!(eventually(Duration::from_secs(10), || get(b_ops, "x", "/readyz") == "ready\n"), "{}", b.log());
    assert_eq!(holder().as_deref(), Some("polaredge-client-0"));
    let prober = Prober::start(web, "app.test", "pod /");

    // Only A loses the API: B takes the Lease once it expires and uploads with a newer term; the agent fences
    // A, which goes back to standing by without exiting, and keeps relaying.
    proxy.cut();
    assert!(eventually(Duration::from_secs(15), || holder().as_deref() == Some("polaredge-client-1")), "{}", b.log());
    assert!(
        eventually(Duration::from_secs(45), || a.log().contains("standing by again, still relaying")),
        "A stood by again\n{}",
        a.log()
    );
    assert!(a.child.try_wait().unwrap().is_none(), "A still runs");
    // B serves changes; A, still cut off, keeps relaying its share of the connections.
    serves_a_change(&api, web, pod.addr, &b);
    let relayed = |ops| {
        get(ops, "x", "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("polaredge_client_relay_bytes_total{direction=\"to_pods\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = relayed(a_ops);
    std::thread::sleep(Duration::from_secs(3));
    assert!(relayed(a_ops) > before, "A, standing by, still carries requests");
    let (requests, failures, slowest) = prober.stop();
    println!("fenced hot leader: {requests} probes, {failures} failed, slowest {slowest} ms");
    assert_eq!(failures, 0, "{failures} of {requests} failed\nA:\n{}\nB:\n{}", a.log(), b.log());
    proxy.restore();
    assert!(a.child.try_wait().unwrap().is_none(), "A still runs after the API is back\n{}", a.log());
    kill(&a, "-TERM");
    assert!(eventually(Duration::from_secs(25), || a.child.try_wait().unwrap().is_some()), "A exits on SIGTERM");
}

#[test]
fn the_api_server_refuses_loopback_pod_addresses_as_a_real_one_does() {
    let api = ApiServer::start();
    let error = api.try_apply(&manifests("app.test", 8080)).unwrap_err();
    assert!(error.starts_with("422 Invalid") && error.contains("may not be in the loopback range"), "{error}");
    assert!(error.contains("endpoints[0].addresses[0]") && error.contains("127.0.0.1"), "{error}");
    let v6 = manifests("app.test", 8080).replace("addressType: IPv4", "addressType: IPv6").replace("127.0.0.1", "::1");
    assert!(api.try_apply(&v6).unwrap_err().contains("\"::1\""));
    api.try_apply(&manifests_at("app.test", "10.233.0.2:8080".parse().unwrap())).unwrap();
}
