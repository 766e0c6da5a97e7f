//! The real agent binary with real Traefik on loopback ports, driven by a test peer that plays the client
//! through a real userspace WireGuard tunnel.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

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

/// POST /upload with a leader term (`protocol::fencing`).
fn upload_as(peer: &Peer, term: u64, body: &str) -> (u16, String) {
    let path = protocol::fencing::upload_path(Some(term));
    peer.request(&format!(
        "POST {path} HTTP/1.1\r\nHost: 10.88.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn an_older_client_leader_is_fenced_once_a_newer_one_has_uploaded() {
    let setup = Setup::new("fence");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    peer.pods.lock().unwrap().insert("10.1.0.2:80".parse().unwrap(), backend("backend-B"));
    let (status, body) = upload_as(&peer, 3, &route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    // A newer leader (the Lease changed hands while the old one could not reach the API) uploads.
    let (status, body) = upload_as(&peer, 4, &route("app.test", "10.1.0.2:80"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(setup.web, "app.test", "/x"), (200, "backend-B /x".to_string()));
    // The old one is refused and told by whom; what the newer one uploaded keeps serving.
    let (status, body) = upload_as(&peer, 3, &route("app.test", "10.1.0.1:80"));
    assert_eq!(status, 409, "{body}");
    let answer: protocol::api::UploadAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.fenced_by, Some(4));
    assert!(answer.error.as_deref().is_some_and(|e| e.starts_with("fenced")), "{body}");
    assert_eq!(http_get(setup.web, "app.test", "/x"), (200, "backend-B /x".to_string()));
    let status: protocol::api::Status = serde_json::from_str(&peer.get("/status").1).unwrap();
    assert_eq!(status.term, Some(4));
    // A query that is not a term is a bad request, not an upload.
    assert_eq!(
        peer.request("POST /upload?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").0,
        400
    );
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
    let (setup, agent, peer, _) = serving_app("sockets");
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

#[test]
fn a_certificate_in_the_upload_is_served_for_its_host_and_a_bad_one_is_refused() {
    let setup = Setup::new("certificate");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    let read = |name: &str| std::fs::read_to_string(testkit::testdata(name)).unwrap();
    let doc = |cert: &str, key: &str| {
        serde_json::json!({
            "http": {
                "routers": {"app": {"rule": "Host(`app.test`)", "service": "app", "entryPoints": ["websecure"], "tls": {}}},
                "services": {"app": {"loadBalancer": {"servers": [{"url": "http://10.1.0.1:80"}]}}}
            },
            "tls": {"certificates": [{"certFile": cert, "keyFile": key}]}
        })
        .to_string()
    };
    let (status, body) = peer.upload(&doc(&read("rsa.crt"), &read("rsa-pkcs1.key")));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let expected = testkit::file_fingerprint(&testkit::testdata("rsa.crt"));
    assert_eq!(testkit::presented_fingerprint(setup.websecure, "app.test"), expected, "{}", agent.log());

    // A key that is not the certificate's: refused, the old certificate keeps serving, no key in the answer.
    let (status, body) = peer.upload(&doc(&read("rsa.crt"), &read("ec-sec1.key")));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tls.certificates[0]: the private key does not belong to the certificate"), "{body}");
    assert!(!body.contains("PRIVATE KEY") && !agent.log().contains("PRIVATE KEY"), "{body}");
    assert_eq!(testkit::presented_fingerprint(setup.websecure, "app.test"), expected);
    // Another certificate for the same host replaces it (a renewal is a new generation).
    let (status, body) = peer.upload(&doc(&read("ec.crt"), &read("ec-sec1.key")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        testkit::presented_fingerprint(setup.websecure, "ec.test"),
        testkit::file_fingerprint(&testkit::testdata("ec.crt"))
    );
    let (_, status_body) = peer.get("/status");
    assert!(!status_body.contains("PRIVATE KEY") && !status_body.contains("CERTIFICATE"), "{status_body}");
}

/// A pod that answers with the client-address headers Traefik added.
fn header_echo() -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("x-forwarded-for:") || lower.starts_with("x-real-ip:") {
                    seen.push(line.trim().to_string());
                }
            }
            seen.sort();
            let body = seen.join(";");
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    addr
}

#[test]
fn http_pods_see_the_public_clients_address() {
    let (setup, _agent, _peer, _) = serving("client-ip", "ip.test", header_echo());
    // The request comes from 127.0.0.2 (the relay dials pods from 127.0.0.1); the pod is reached through
    // forwarder, tunnel and relay, yet it sees the client's address, not the relay's.
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
    connect(&fd, &setup.web).unwrap();
    let mut conn = std::net::TcpStream::from(fd);
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut conn, b"GET / HTTP/1.1\r\nHost: ip.test\r\nConnection: close\r\n\r\n").unwrap();
    let (status, seen) = read_response(&mut conn);
    assert_eq!((status, seen.as_str()), (200, "X-Forwarded-For: 127.0.0.2;X-Real-Ip: 127.0.0.2"));
}
