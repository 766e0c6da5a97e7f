//! The edge serves exactly what it confirmed: hostile and broken uploads, a deleted routes file, a hung
//! Traefik, a restart with a stale routes file, idle API connections. The real agent binary with real Traefik
//! on loopback ports, driven through a real userspace WireGuard tunnel.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A document with the live route plus `extra_middleware` (JSON) applied to it.
fn route_with_middleware(middleware: &str) -> String {
    format!(
        "{{\"http\": {{\"routers\": {{\"app\": {{\"rule\": \"Host(`app.test`)\", \"service\": \"app\", \"middlewares\": [\"m\"]}}}}, \
         \"services\": {{\"app\": {{\"loadBalancer\": {{\"servers\": [{{\"url\": \"http://10.1.0.1:80\"}}]}}}}}}, \
         \"middlewares\": {{\"m\": {middleware}}}}}}}"
    )
}

/// The live route with `lb` (JSON members) added to its load balancer.
fn route_with_load_balancer(lb: &str) -> String {
    format!(
        "{{\"http\": {{\"routers\": {{\"app\": {{\"rule\": \"Host(`app.test`)\", \"service\": \"app\"}}}}, \
         \"services\": {{\"app\": {{\"loadBalancer\": {{\"servers\": [{{\"url\": \"http://10.1.0.1:80\"}}], {lb}}}}}}}}}}}"
    )
}

/// A whole response (head and body) to a GET on a public entrypoint.
fn raw_get(entrypoint: SocketAddr, host: &str) -> String {
    let mut conn = TcpStream::connect_timeout(&entrypoint, Duration::from_secs(2)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// Polls GET /status over one keep-alive connection through the tunnel and records the slowest answer.
struct StatusProber {
    stop: Arc<AtomicBool>,
    slowest: Arc<Mutex<(Duration, u32)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusProber {
    fn start(peer: &Peer) -> StatusProber {
        let mut io = peer.api();
        let stop = Arc::new(AtomicBool::new(false));
        let slowest = Arc::new(Mutex::new((Duration::ZERO, 0)));
        let (s, w) = (Arc::clone(&stop), Arc::clone(&slowest));
        let thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                io.write_all(b"GET /status HTTP/1.1\r\nHost: 10.88.0.1\r\n\r\n").unwrap();
                let (status, _) = read_keep_alive(&mut io, &mut buf);
                assert_eq!(status, 200);
                let took = started.elapsed();
                let mut w = w.lock().unwrap();
                w.0 = w.0.max(took);
                w.1 += 1;
                drop(w);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        StatusProber { stop, slowest, thread: Some(thread) }
    }

    /// (slowest answer, answers).
    fn finish(mut self) -> (Duration, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the status prober failed");
        *self.slowest.lock().unwrap()
    }
}

/// Reads one response with a Content-Length body from a keep-alive connection.
fn read_keep_alive(io: &mut impl Read, buf: &mut Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                buf.drain(..end + 4 + length);
                return (head.split(' ').nth(1).unwrap().parse().unwrap(), body);
            }
        }
        let n = io.read(&mut chunk).unwrap();
        assert!(n > 0, "the agent closed the keep-alive connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn every_bad_upload_is_refused_while_the_live_route_serves_and_status_answers_at_once() {
    let (setup, _agent, peer, answer) = serving_app("hostile");
    let live = answer["generation"].clone();
    let prober = Prober::start(setup.web, "app.test", "backend-A");
    let status_prober = StatusProber::start(&peer);

    // A client that sends half a request and stalls is cut off after the request deadline, in parallel.
    let stalled = {
        let mut io = peer.api();
        std::thread::spawn(move || {
            io.write_all(b"POST /upload HTTP/1.1\r\nContent-Len").unwrap();
            read_response(&mut io)
        })
    };

    // 53 KB of YAML aliases, which serde_yaml expanded a hundredfold (34 MB file, +280 MB agent, 1 GB Traefik).
    let mut alias_bomb = String::from("a: &a [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
    for i in 0..1500 {
        alias_bomb.push_str(&format!("b{i}: &b{i} [*a, *a, *a, *a, *a, *a]\n"));
    }
    let mut nested = String::from("{\"http\": ");
    nested.push_str(&"[".repeat(200_000));
    let template_escape =
        route_with_middleware(r#"{"headers": {"customResponseHeaders": {"X-Env-Path": "\u007b{ env `PATH` }}"}}}"#);
    assert!(!template_escape.contains("{{"), "the raw text has no template action: only the parsed string does");
    let duplicate_router =
        "{\"http\": {\"routers\": {\"app\": {\"rule\": \"Host(`app.test`)\", \"service\": \"app\"}, \
        \"app\": {\"rule\": \"Host(`other.test`)\", \"service\": \"app\"}}, \
        \"services\": {\"app\": {\"loadBalancer\": {\"servers\": [{\"url\": \"http://10.1.0.1:80\"}]}}}}}";
    let tls_version = "{\"http\": {\"routers\": {\"app\": {\"rule\": \"Host(`app.test`)\", \"service\": \"app\", \"tls\": {\"options\": \"o\"}}}, \
        \"services\": {\"app\": {\"loadBalancer\": {\"servers\": [{\"url\": \"http://10.1.0.1:80\"}]}}}}, \
        \"tls\": {\"options\": {\"o\": {\"minVersion\": \"TLS1.2\"}}}}";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("template action behind a JSON escape", template_escape, 400, "Go template"),
        (
            "C1 control character",
            route_with_middleware(r#"{"headers": {"customRequestHeaders": {"X-A": "\u008B"}}}"#),
            400,
            "U+008B",
        ),
        (
            "health check interval",
            route_with_load_balancer(r#""healthCheck": {"path": "/h", "interval": "abc"}"#),
            400,
            "not a duration",
        ),
        ("TLS version", tls_version.into(), 400, "not a TLS version"),
        ("port 0", route("app.test", "10.1.0.1:0"), 400, "port 0"),
        ("unspecified backend", route("app.test", "0.0.0.0:80"), 400, "unspecified"),
        ("broadcast backend", route("app.test", "255.255.255.255:80"), 400, "broadcast"),
        ("duplicate router", duplicate_router.into(), 400, "duplicate key \\\"app\\\""),
        (
            "redirect port",
            route_with_middleware(r#"{"redirectScheme": {"scheme": "https", "port": "0"}}"#),
            400,
            "is not a port",
        ),
        ("YAML alias bomb", alias_bomb, 400, "must be a JSON object"),
        ("deep nesting", nested, 400, "invalid"),
        ("backend with user info", route("app.test", "user@10.1.0.1:80"), 400, "no user info"),
        ("backend with a query", route("app.test", "10.1.0.1:80?x"), 400, "no query string"),
        ("malformed JSON", "{\"http\": [unclosed".into(), 400, "invalid"),
        (
            "unknown field",
            json_of("http:\n  routers:\n    a: {rule: x, service: s, entrypoint: [web]}\n"),
            400,
            "unknown field `entrypoint`",
        ),
        (
            "dangling service",
            json_of("http:\n  routers:\n    a: {rule: \"Host(`x`)\", service: missing}\n"),
            400,
            "no http service named",
        ),
        ("empty document", String::new(), 400, "empty document"),
        ("host name backend", route("app.test", "my-svc:80"), 400, "not host names"),
        // The canary router must stay on top, and no internal service but ping@internal may answer publicly.
        (
            "priority above the canary's",
            json_of("http:\n  routers:\n    app: {rule: \"Host(`app.test`)\", service: app, priority: 2147483647}\n  services:\n    app: {loadBalancer: {servers: [{url: \"http://10.1.0.1:80\"}]}}\n"),
            400,
            "outside 0..=2147483646",
        ),
        (
            "dashboard as an error page",
            route_with_middleware(r#"{"errors": {"status": ["404"], "service": "api@internal", "query": "/"}}"#),
            400,
            "only ping@internal is allowed",
        ),
    ];
    let refused = cases.len();
    for (what, body, expected, message) in cases {
        let started = Instant::now();
        let (status, answer) = peer.upload(&body);
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(answer.contains(message), "{what}: answer lacks {message:?}: {answer}");
        assert!(answer.contains("previous config keeps serving"), "{what}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(3), "{what} took {:?}", started.elapsed());
    }
    // Not UTF-8.
    let mut io = peer.api();
    io.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\xff\xfe{").unwrap();
    let (status, answer) = read_response(&mut io);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("not UTF-8"), "{answer}");
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

    let (slowest, answers) = status_prober.finish();
    let (ok, failures) = prober.finish();
    assert!(failures.is_empty(), "requests failed during bad uploads: {failures:?}");
    assert!(ok > 50, "the prober kept requesting throughout ({ok} answers)");
    assert!(answers > 20, "the status prober kept asking throughout ({answers} answers)");
    println!("slowest /status answer during the bad uploads: {slowest:?} ({answers} answers)");
    assert!(slowest < Duration::from_millis(100), "/status took {slowest:?} during the bad uploads");
    // Nothing of the refused uploads reached Traefik: the live generation, no leaked environment.
    let response = raw_get(setup.web, "app.test");
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("backend-A /"), "{response}");
    assert!(!response.contains("X-Env-Path"), "{response}");
    let routes = std::fs::read_to_string(setup.dir.join("state/dynamic/routes.yaml")).unwrap();
    assert!(routes.contains(&format!("gen-{}", live.as_str().unwrap())), "{routes}");
    let s = json(&peer.get("/status").1);
    assert_eq!(s["live"]["generation"], live);
    let (_, metrics) = peer.get("/metrics");
    assert!(
        metrics.contains(&format!("polaredge_agent_uploads_total{{result=\"rejected\"}} {}", refused + 1)),
        "{metrics}"
    );
}

#[test]
fn a_deleted_routes_file_is_repaired_by_the_watchdog_and_by_an_unchanged_upload() {
    let (setup, agent, peer, _) = serving_app("deleted");
    let routes = setup.dir.join("state/dynamic/routes.yaml");

    std::fs::remove_file(&routes).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || http_get(setup.web, "app.test", "/").1.starts_with("backend-A")
            && routes.exists()),
        "the watchdog rewrote the file\n{}",
        agent.log()
    );
    let s = json(&peer.get("/status").1);
    assert!(s["routes_file"]["repairs"].as_u64().unwrap() >= 1, "{s}");
    assert!(agent.log().contains("was deleted"), "{}", agent.log());

    // Deleted again, and the client re-sends the same snapshot while Traefik's reaction to the deletion (no
    // routes) is still on its way: the answer waits until Traefik serves the repair, not the marker it held.
    std::fs::remove_file(&routes).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = peer.upload(&route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["live"], true, "{body}");
    assert_eq!(http_get(setup.web, "app.test", "/x"), (200, "backend-A /x".to_string()));
}

#[test]
fn a_hung_traefik_is_killed_and_restarted_and_an_upload_it_cannot_confirm_is_rolled_back() {
    let (setup, agent, peer, answer) = serving_app("hung");
    peer.pods.lock().unwrap().insert("10.1.0.2:80".parse().unwrap(), backend("backend-B"));
    let good = answer["generation"].clone();
    assert!(
        eventually(Duration::from_secs(10), || json(&peer.get("/status").1)["traefik"]["healthy"] == true),
        "the watchdog finds Traefik healthy first"
    );
    let traefik = json(&peer.get("/status").1)["traefik"]["pid"].as_u64().unwrap();

    // SIGSTOP: the process lives but answers nothing.
    assert!(std::process::Command::new("kill").args(["-STOP", &traefik.to_string()]).status().unwrap().success());
    let hung_at = Instant::now();
    // An upload now cannot be confirmed: it is refused within the confirm timeout and the file rolled back.
    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 503, "{body}");
    let answer = json(&body);
    assert_eq!(answer["serving"], good, "{body}");
    assert!(answer["error"].as_str().unwrap().contains("rolled back"), "{body}");
    let routes = std::fs::read_to_string(setup.dir.join("state/dynamic/routes.yaml")).unwrap();
    assert!(routes.contains(&format!("gen-{}", good.as_str().unwrap())), "the file is the confirmed one: {routes}");

    // The watchdog notices, kills it, and the supervisor's new Traefik serves the confirmed generation.
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = json(&peer.get("/status").1);
            s["traefik"]["health_restarts"] == 1 && s["traefik"]["pid"].as_u64().is_some_and(|p| p != traefik)
        }),
        "a hung Traefik is restarted\n{}",
        agent.log()
    );
    let detected = hung_at.elapsed();
    assert!(
        eventually(Duration::from_secs(20), || http_get(setup.web, "app.test", "/").1.starts_with("backend-A")),
        "the restarted Traefik serves the confirmed generation\n{}",
        agent.log()
    );
    println!("hung Traefik replaced after {detected:?}, serving again after {:?}", hung_at.elapsed());
    let (_, metrics) = peer.get("/metrics");
    assert!(metrics.contains("polaredge_agent_traefik_health_restarts_total 1"), "{metrics}");
    assert!(metrics.contains("polaredge_agent_uploads_total{result=\"rolled_back\"} 1"), "{metrics}");
    assert!(
        eventually(Duration::from_secs(10), || json(&peer.get("/status").1)["traefik"]["healthy"] == true),
        "healthy again"
    );
    // The client retries, and the new generation goes live.
    let (status, body) = peer.upload(&route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(setup.web, "app.test", "/y"), (200, "backend-B /y".to_string()));
}

#[test]
fn a_restart_whose_last_good_config_no_longer_validates_never_serves_the_old_forwarder_ports() {
    let (setup, mut agent, peer, _) = serving_app("stale");
    let s = json(&peer.get("/status").1);
    let old_port: SocketAddr = s["forwarders"][0]["listen"].as_str().unwrap().parse().unwrap();
    drop(peer);
    assert!(agent.stop());

    // The last good upload no longer validates (here: it names an entrypoint this agent no longer has), and a
    // local user took the old forwarder port.
    let last_good = setup.dir.join("state/last-good.yaml");
    let text = std::fs::read_to_string(&last_good).unwrap().replace("\"web\"", "\"gone\"");
    std::fs::write(&last_good, text).unwrap();
    let stranger = TcpListener::bind(old_port).expect("the old forwarder port is free again");
    let reached = Arc::new(AtomicBool::new(false));
    {
        let reached = Arc::clone(&reached);
        std::thread::spawn(move || {
            for mut conn in stranger.incoming().map_while(Result::ok) {
                reached.store(true, Ordering::SeqCst);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nstranger");
            }
        });
    }

    let agent = Agent::start(&setup);
    assert!(eventually(Duration::from_secs(20), || agent.log().contains("no longer validates")), "{}", agent.log());
    // Traefik comes up (the canary answers) and serves no route of the old file.
    assert!(
        eventually(Duration::from_secs(20), || {
            http_get(setup.web, "canary.polaredge.invalid", "/.polaredge/canary").0 == 200
        }),
        "{}",
        agent.log()
    );
    for _ in 0..10 {
        assert_eq!(http_get(setup.web, "app.test", "/").0, 404);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!reached.load(Ordering::SeqCst), "public traffic reached the stranger's port");
    let routes = std::fs::read_to_string(setup.dir.join("state/dynamic/routes.yaml")).unwrap();
    assert!(!routes.contains(&old_port.to_string()), "{routes}");
}

#[test]
fn idle_api_connections_cannot_lock_the_api_out() {
    let setup = Setup::new("idle-api");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    // Twenty connections that never send a byte: more than the agent's sixteen slots.
    let idle: Vec<_> = (0..20).map(|_| peer.api()).collect();
    let started = Instant::now();
    let (status, body) = peer.get("/status");
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    assert!(started.elapsed() < Duration::from_secs(5), "/status took {:?}", started.elapsed());
    // The oldest idle ones were closed to make room.
    let mut closed = 0;
    for mut io in idle {
        io.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        if matches!(io.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 5, "only {closed} idle connections were closed");
}
