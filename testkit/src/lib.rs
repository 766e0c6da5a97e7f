//! Helpers the end-to-end tests share (client, agent and QEMU tests): HTTP backends on loopback standing in
//! for pods, plain HTTP requests with a Host header, child processes whose stderr is kept and printed when a
//! test fails, polling, free loopback ports, the manifests of one routed host, TLS fingerprints, and a
//! [`pebble`] ACME CA.

pub mod pebble;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ports handed out by this process: never handed out twice.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A loopback port that is free for TCP and UDP now and that this process has not handed out before.
///
/// The port is released before a child process (Traefik, the agent) binds it, so it comes from below the
/// kernel's ephemeral range (32768-60999 by default): a port from `bind(:0)` could be taken by any outgoing
/// connection of the test in between (seen in CI as "address already in use" on Traefik's entrypoint).
pub fn free_port() -> u16 {
    const FIRST: u32 = 12_000;
    const SPAN: u32 = 20_000;
    // Start somewhere depending on the process, so test binaries run one after another pick other ports.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left between {FIRST} and {}", FIRST + SPAN);
        let port = (FIRST + (start + n) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// A loopback TCP port nobody listens on now (see [`free_port`]).
pub fn free_tcp() -> u16 {
    free_port()
}

/// A loopback UDP port nobody uses now (see [`free_port`]).
pub fn free_udp() -> u16 {
    free_port()
}

/// An HTTP/1.1 server on a loopback port answering every request with `<name> <path>`: a pod.
pub fn backend(name: &'static str) -> u16 {
    serve_http(move |method_target, _| format!("{name} {}", method_target.split_whitespace().nth(1).unwrap_or("?")))
}

/// A backend that answers every request with its name, the request line's method and target, and every
/// request header as `name: value` (name lower-cased), one per line: what a proxy changed is visible.
pub fn echo_backend(name: &'static str) -> u16 {
    serve_http(move |method_target, headers| {
        let mut body = format!("{name} {method_target}\n");
        for (k, v) in headers {
            body.push_str(&format!("{}: {v}\n", k.to_ascii_lowercase()));
        }
        body
    })
}

/// A loopback HTTP/1.1 server (a thread per connection, one request each) answering 200 with
/// `body(method and target, headers)`; its port.
fn serve_http(body: impl Fn(&str, &[(String, String)]) -> String + Clone + Send + 'static) -> u16 {
    serve_http_on(TcpListener::bind("127.0.0.1:0").unwrap(), body)
}

/// [`backend`] on a listener of the caller's (one bound inside a network namespace, say); returns its port.
pub fn backend_on(listener: TcpListener, name: &'static str) -> u16 {
    serve_http_on(listener, move |method_target, _| {
        format!("{name} {}", method_target.split_whitespace().nth(1).unwrap_or("?"))
    })
}

fn serve_http_on(
    listener: TcpListener,
    body: impl Fn(&str, &[(String, String)]) -> String + Clone + Send + 'static,
) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let method_target: Vec<&str> = first.split_whitespace().take(2).collect();
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.to_string(), v.trim().to_string()));
                    }
                }
                let body = body(&method_target.join(" "), &headers);
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

/// One request (`method`, `host`, `target`, extra header lines) and the parsed answer; `None` when none came.
pub fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<protocol::http::Response> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(conn, "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").ok()?;
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    protocol::http::parse_response(&bytes).ok()
}

/// GET with a Host header: the body for 200, else the status code (or "refused"/"no answer").
pub fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return "refused".into() };
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(conn, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut bytes = Vec::new();
    let _ = conn.read_to_end(&mut bytes);
    match protocol::http::parse_response(&bytes) {
        Ok(response) if response.status == 200 => response.text(),
        Ok(response) => response.status.to_string(),
        Err(_) => "no answer".into(),
    }
}

/// Polls `f` every 50 ms until it holds or the timeout passes (with one last try at the deadline).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A child process with its stderr kept; printed if the test fails. Dropping it sends SIGTERM, then SIGKILL
/// after 15 s.
pub struct Proc {
    /// The process.
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `command` with stdin and stdout closed and stderr captured.
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

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// CPU time the process spent so far, user and system (all its threads), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        // The command name (field 2) may hold spaces; fields 14 and 15 (utime, stime) count from after it.
        let after_name = &stat[stat.rfind(')').expect("a stat line names the command") + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // USER_HZ, which these fields count in, is 100 on Linux whatever the kernel's own tick rate.
        Duration::from_millis(ticks * 10)
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
            eprintln!("---- log ----\n{}", self.log());
        }
    }
}

/// Ingress + Service + EndpointSlice (+ our IngressClass) routing `host` to one loopback pod on `pod_port`.
pub fn manifests(host: &str, pod_port: u16) -> String {
    manifests_at(host, SocketAddr::from(([127, 0, 0, 1], pod_port)))
}

/// [`manifests`] with the pod at `pod` (IPv4).
pub fn manifests_at(host: &str, pod: SocketAddr) -> String {
    let (pod_ip, pod_port) = (pod.ip(), pod.port());
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
- addresses: ["{pod_ip}"]
  conditions: {{ready: true}}
"#
    )
}

/// Writes a secret (a private key) the way an operator must: mode 0600, which the agent insists on.
pub fn write_secret(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The SHA-256 fingerprint line (openssl's) of the certificate a TLS listener presents for `sni`.
pub fn presented_fingerprint(addr: SocketAddr, sni: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The SHA-256 fingerprint line (openssl's) of a PEM certificate file.
pub fn file_fingerprint(path: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(path)
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(line.contains("Fingerprint="), "{}: {line}", path.display());
    line
}

/// The repository's test certificates and keys (routes/testdata, see its README).
pub fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../routes/testdata").join(name)
}

/// A real Redis (Debian's redis-server) on a free loopback port, without persistence: a TCP "pod".
pub fn redis_server() -> (Proc, u16) {
    let port = free_tcp();
    let process = Proc::spawn(Command::new("redis-server").args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]));
    (process, port)
}

/// A TCP proxy on loopback to `target` that a test can cut: while cut, open connections are shut down and new
/// ones are closed at once (the target is unreachable, as in an API server outage or a network partition).
pub struct CutProxy {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    /// Starts forwarding to `target`.
    pub fn start(target: SocketAddr) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy =
            CutProxy { addr: listener.local_addr().unwrap(), open: Default::default(), conns: Default::default() };
        proxy.open.store(true, Ordering::SeqCst);
        let (open, conns) = (std::sync::Arc::clone(&proxy.open), std::sync::Arc::clone(&proxy.conns));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(upstream) = std::net::TcpStream::connect(target) else { continue };
                let mut held = conns.lock().unwrap();
                held.extend([client.try_clone().unwrap(), upstream.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// Cuts the path: every open connection is shut down, new ones are closed.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A real DNS server (Debian's dnsmasq) on a free loopback UDP port, answering `A` queries for `name` with
/// `address` and nothing else (no upstream, no hosts file): a UDP "pod".
pub fn dnsmasq(name: &str, address: &str) -> (Proc, u16) {
    let port = free_udp();
    let process = Proc::spawn(Command::new("dnsmasq").args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--user=root",
        "--pid-file=",
        &format!("--port={port}"),
        &format!("--address=/{name}/{address}"),
    ]));
    (process, port)
}

/// Asks 127.0.0.1:`port` for the `A` record of `name` over UDP with Debian's `dig`, once, waiting at most
/// `wait_s` seconds: the answer's addresses (empty when nothing came back).
pub fn dig(port: u16, name: &str, wait_s: u32) -> Vec<String> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), name, "A", "+short", "+notcp", "+tries=1"])
        .arg(format!("+time={wait_s}"))
        .output()
        .expect("dig (scripts/install-deps.sh installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// Runs `redis-cli` against 127.0.0.1:`port`; its trimmed output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/install-deps.sh installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
