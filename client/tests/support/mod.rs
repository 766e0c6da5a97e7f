//! Shared test helpers: processes with kept logs, HTTP backends and requests, the agent setup, and the
//! in-repo Kubernetes API server.

#![allow(dead_code)]

pub mod apiserver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunnel::PrivateKey;

pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("POLAREDGE_AGENT_BIN") {
        return p.into();
    }
    // Next to this test's own binary: target/<profile>/deps/<test> -> target/<profile>/polaredge-agent.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("polaredge-agent");
    assert!(
        path.exists(),
        "{} missing: `cargo build -p polaredge-agent` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

pub fn traefik_binary() -> PathBuf {
    std::env::var_os("POLAREDGE_TRAEFIK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/traefik/3.7.15/x86_64/traefik"))
}

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let body = format!("{name} {}", first.split_whitespace().nth(1).unwrap_or("?"));
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A child process with its stderr kept for failure reports.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(command: &mut Command) -> Proc {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Proc { child, log }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log ----\n{}", self.log.lock().unwrap());
        }
    }
}

/// GET with a Host header: the body for 200, else the status code (or "refused"/"no answer").
pub fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let Ok(mut conn) = TcpStream::connect(addr) else { return "refused".into() };
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(conn, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    match text.split_whitespace().nth(1) {
        Some("200") => text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default(),
        Some(status) => status.to_string(),
        None => "no answer".into(),
    }
}

pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An agent (real binary, real Traefik) on loopback ports, and the client config that reaches it.
pub struct Edge {
    pub dir: PathBuf,
    pub web: SocketAddr,
    /// Where the client serves /healthz, /readyz and /metrics.
    pub ops: SocketAddr,
    pub agent: Proc,
}

impl Edge {
    pub fn start(name: &str) -> Edge {
        let dir = std::env::temp_dir().join(format!("pe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        let (agent_key, client_key) = (PrivateKey::generate(), PrivateKey::generate());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let web = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let ops = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        std::fs::write(dir.join("agent.key"), agent_key.to_string()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.to_string()).unwrap();
        std::fs::write(
            dir.join("agent.yaml"),
            format!(
                "state_dir: state\nadmin_socket: {d}/admin.sock\nwireguard:\n  listen: \"{udp}\"\n  private_key_file: agent.key\n  client_public_key: \"{c}\"\nentrypoints:\n  web: \"{web}\"\n  websecure: \"127.0.0.1:{s}\"\ntraefik:\n  binary: {t}\n",
                d = dir.display(),
                c = client_key.public_key(),
                s = free_tcp(),
                t = traefik_binary().display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("client.yaml"),
            format!(
                "private_key_file: client.key\ncert_resolver: \"\"\nops_listen: \"{ops}\"\nagents:\n- name: edge\n  endpoint: \"{udp}\"\n  public_key: \"{}\"\n",
                agent_key.public_key()
            ),
        )
        .unwrap();
        let agent = Proc::spawn(Command::new(agent_binary()).args(["run", "--config"]).arg(dir.join("agent.yaml")));
        Edge { dir, web, ops, agent }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Ingress + Service + EndpointSlice (+ our IngressClass) for one host routed to one loopback "pod".
pub fn manifests(host: &str, pod_port: u16) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: polaredge}}
spec: {{controller: polaredge.io/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: app, namespace: default}}
spec:
  ingressClassName: polaredge
  rules:
  - host: {host}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{port: 80, targetPort: {pod_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{port: {pod_port}}}]
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {{ready: true}}
"#
    )
}
