//! The real agent binary with real Traefik on loopback ports, driven by a test peer that plays the client
//! through a real userspace WireGuard tunnel.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn an_uploaded_route_serves_through_the_tunnel_and_a_changed_route_is_followed() {
    let setup = Setup::new("route");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    peer.pods.lock().unwrap().insert("10.1.0.2:80".parse().unwrap(), backend("backend-B"));

    let (status, body) = peer.upload(&route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let answer = json(&body);
    assert_eq!(answer["live"], true);
    assert_eq!(http_get(setup.web, "app.test", "/hello"), (200, "backend-A /hello".to_string()));
    assert_eq!(http_get(setup.web, "other.test", "/").0, 404);

    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["live"], true);
    assert_ne!(json(&body)["generation"], answer["generation"]);
    assert_eq!(http_get(setup.web, "app.test", "/x"), (200, "backend-B /x".to_string()));

    // The same upload again is a cheap no-op.
    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200);
    assert_eq!(json(&body)["unchanged"], true);

    let (status, body) = peer.get("/status");
    assert_eq!(status, 200);
    let s = json(&body);
    assert_eq!(s["live"]["confirmed"], true);
    assert_eq!(s["forwarders"].as_array().unwrap().len(), 1, "the old pod's forwarder closed: {s}");
    let (status, metrics) = peer.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"unchanged\"} 1"), "{metrics}");
    assert_eq!(peer.get("/healthz"), (200, "ok\n".to_string()));
}

/// Requests Traefik in a loop until stopped; counts answers that are not the expected backend.
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(web: SocketAddr, host: &'static str, expect: &'static str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10,000 requests, 10 ms apart.
            for _ in 0..10_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let (status, body) = http_get(web, host, "/");
                if status == 200 && body.starts_with(expect) {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.lock().unwrap().push(format!("{status} {body}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Prober { stop, ok, failures, thread: Some(thread) }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

#[test]
fn bad_uploads_get_clear_4xx_answers_and_the_previous_route_keeps_serving() {
    let setup = Setup::new("bad");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    let (status, body) = peer.upload(&route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let prober = Prober::start(setup.web, "app.test", "backend-A");

    // A client that sends half a request and stalls is cut off after the request deadline, in parallel.
    let stalled = {
        let mut io = peer.api();
        std::thread::spawn(move || {
            io.write_all(b"POST /upload HTTP/1.1\r\nContent-Len").unwrap();
            read_response(&mut io)
        })
    };

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed YAML", "http: [unclosed\n".into(), 400, "invalid"),
        (
            "unknown field",
            "http:\n  routers:\n    a: {rule: x, service: s, entrypoint: [web]}\n".into(),
            400,
            "unknown field `entrypoint`",
        ),
        (
            "dangling service",
            "http:\n  routers:\n    a: {rule: \"Host(`x`)\", service: missing}\n".into(),
            400,
            "no http service named",
        ),
        ("empty document", String::new(), 400, "empty document"),
        ("host name backend", route("app.test", "my-svc:80"), 400, "not host names"),
    ];
    for (what, body, expected, message) in cases {
        let (status, answer) = peer.upload(&body);
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(answer.contains(message), "{what}: answer lacks {message:?}: {answer}");
        assert!(answer.contains("previous config keeps serving"), "{what}: {answer}");
    }
    // No Content-Length.
    let (status, answer) = peer.request("POST /upload HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 411, "{answer}");
    assert!(answer.contains("Content-Length"));
    // 100 MiB announced: refused from the head alone, long before the body could arrive.
    let mut io = peer.api();
    io.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n").unwrap();
    let _ = io.write_all(&vec![b'a'; 1 << 20]);
    let (status, answer) = read_response(&mut io);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("exceeds the limit"));
    // A header that never ends: refused at the head limit.
    let mut io = peer.api();
    io.write_all(b"POST /upload HTTP/1.1\r\nX-Endless: ").unwrap();
    let _ = io.write_all(&vec![b'a'; 64 * 1024]);
    let (status, _) = read_response(&mut io);
    assert_eq!(status, 431);

    let (status, answer) = stalled.join().unwrap();
    assert_eq!(status, 408, "{answer}");

    let (ok, failures) = prober.finish();
    assert!(failures.is_empty(), "requests failed during bad uploads: {failures:?}");
    assert!(ok > 50, "the prober kept requesting throughout ({ok} answers)");
    let (_, metrics) = peer.get("/metrics");
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"rejected\"} 5"), "{metrics}");
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn traefik_crash_is_restarted_and_an_agent_restart_serves_the_last_good_config_before_the_client_returns() {
    let setup = Setup::new("faults");
    let mut agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    let backend_a = backend("backend-A");
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend_a);
    assert_eq!(peer.upload(&route("app.test", "10.1.0.1:80")).0, 200, "{}", agent.log());

    // SIGKILL Traefik: the agent restarts it and the same routes serve again.
    let status = json(&peer.get("/status").1);
    let traefik_pid = status["traefik"]["pid"].as_u64().expect("traefik runs");
    assert!(std::process::Command::new("kill").args(["-KILL", &traefik_pid.to_string()]).status().unwrap().success());
    assert!(
        eventually(Duration::from_secs(20), || http_get(setup.web, "app.test", "/").1.starts_with("backend-A")),
        "routes serve again after Traefik was killed\n{}",
        agent.log()
    );
    let status = json(&peer.get("/status").1);
    assert_eq!(status["traefik"]["restarts"], 1);
    assert_ne!(status["traefik"]["pid"].as_u64(), Some(traefik_pid));
    let traefik_pid = status["traefik"]["pid"].as_u64().unwrap();

    // Stop the client and the agent; SIGTERM stops Traefik too.
    drop(peer);
    assert!(agent.stop(), "the agent exits cleanly on SIGTERM");
    assert!(eventually(Duration::from_secs(5), || !alive(traefik_pid)), "Traefik stopped with the agent");

    // A new agent serves the last good routes with no client connected: the route exists (502: its backend
    // is unreachable without the client) where an unknown host gets 404.
    let _agent = Agent::start(&setup);
    assert!(
        eventually(Duration::from_secs(20), || http_get(setup.web, "app.test", "/").0 == 502),
        "the restored route exists before any client connects"
    );
    assert_eq!(http_get(setup.web, "unknown.test", "/").0, 404);
    // The client comes back, uploads nothing, and traffic flows on the restored route.
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend_a);
    assert!(eventually(Duration::from_secs(20), || http_get(setup.web, "app.test", "/r").1 == "backend-A /r"));
}

/// Listening TCP and bound UDP sockets of a process: (protocol, local address).
fn sockets_of(pid: u64) -> Vec<(String, SocketAddr)> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    l.to_string_lossy().strip_prefix("socket:[").map(|s| s.trim_end_matches(']').to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (proto, v6) in [("tcp", false), ("tcp6", true), ("udp", false), ("udp6", true)] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = if proto.starts_with("tcp") { f[3] == "0A" } else { f[3] == "07" };
            if !listening || !inodes.contains(f[9]) {
                continue;
            }
            let (ip_hex, port_hex) = f[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port_hex, 16).unwrap();
            let bytes: Vec<u8> =
                (0..ip_hex.len() / 2).map(|i| u8::from_str_radix(&ip_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
            // /proc prints each 32-bit word in host (little-endian) order.
            let fixed: Vec<u8> = bytes.chunks(4).flat_map(|w| w.iter().rev().copied().collect::<Vec<_>>()).collect();
            let ip: std::net::IpAddr = if v6 {
                <[u8; 16]>::try_from(fixed.as_slice()).unwrap().into()
            } else {
                <[u8; 4]>::try_from(fixed.as_slice()).unwrap().into()
            };
            out.push((proto.to_string(), SocketAddr::new(ip, port)));
        }
    }
    out
}

#[test]
fn nothing_listens_outside_loopback_but_the_entrypoints_and_the_wireguard_port() {
    let setup = Setup::new("sockets");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    assert_eq!(peer.upload(&route("app.test", "10.1.0.1:80")).0, 200);
    let traefik_pid = json(&peer.get("/status").1)["traefik"]["pid"].as_u64().unwrap();
    let allowed_public = [setup.web, setup.websecure, setup.udp];
    let mut seen = Vec::new();
    for pid in [agent.pid() as u64, traefik_pid] {
        for (proto, addr) in sockets_of(pid) {
            assert!(
                addr.ip().is_loopback() || allowed_public.contains(&addr),
                "pid {pid} {proto} socket on {addr} is reachable from outside"
            );
            // The control API lives only inside the tunnel: no kernel socket on its port.
            assert_ne!(addr.port(), 9000, "a kernel socket on the control API port");
            seen.push((pid, proto, addr));
        }
    }
    // The check saw the sockets it is about: the agent's UDP port, Traefik's entrypoints, a forwarder.
    assert!(seen.iter().any(|(p, proto, a)| *p == agent.pid() as u64 && proto == "udp" && *a == setup.udp), "{seen:?}");
    assert!(seen.iter().any(|(p, _, a)| *p == traefik_pid && *a == setup.web), "{seen:?}");
    assert!(seen.iter().filter(|(p, proto, _)| *p == agent.pid() as u64 && proto == "tcp").count() >= 1, "{seen:?}");
}
