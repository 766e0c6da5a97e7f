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
