//! Shared test helpers: processes with kept logs, HTTP backends and requests, the agent setup, and the
//! in-repo Kubernetes API server.

#![allow(dead_code)]

pub mod apiserver;

#[allow(unused_imports)] // each test binary uses its own share of them
pub use testkit::{backend, eventually, free_tcp, get, manifests, manifests_at, Proc};

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use tunnel::PrivateKey;

/// A pod in a network namespace of its own, reached from the host over a veth pair as a cluster's pod network
/// reaches it: at 10.233.x.y, not loopback (a real API server refuses loopback pod addresses). Serves HTTP like
/// [`backend`]. The namespace and its veth go away on drop.
pub struct NetnsPod {
    _ns: tunnel::testbed::Netns,
    /// The pod's address and port.
    pub addr: SocketAddr,
}

impl NetnsPod {
    pub fn start(name: &'static str) -> NetnsPod {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < 60, "at most 60 namespaced pods per test binary");
        let id = std::process::id();
        let ns = tunnel::testbed::Netns::new(&format!("pod{n}")).unwrap();
        let (host_if, pod_if) = (format!("pe{}h{n}", id % 100_000), format!("pe{}p{n}", id % 100_000));
        let subnet = format!("10.233.{}", id % 250);
        let (host_ip, pod_ip) = (format!("{subnet}.{}", 4 * n + 1), format!("{subnet}.{}", 4 * n + 2));
        let run = tunnel::testbed::run;
        let _ = run("ip", &["link", "del", &host_if]); // a leftover of a killed run
        run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", ns.name()]).unwrap();
        run("ip", &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]).unwrap();
        run("ip", &["link", "set", &host_if, "up"]).unwrap();
        ns.exec("ip", &["addr", "add", &format!("{pod_ip}/30"), "dev", &pod_if]).unwrap();
        ns.exec("ip", &["link", "set", &pod_if, "up"]).unwrap();
        let bind = format!("{pod_ip}:8080");
        let listener = ns.thread(move || std::net::TcpListener::bind(bind)).unwrap().join().unwrap().unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        testkit::backend_on(listener, name);
        NetnsPod { _ns: ns, addr }
    }
}

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

/// An agent (real binary, real Traefik) on loopback ports, and the client config that reaches it.
pub struct Edge {
    pub dir: PathBuf,
    pub web: SocketAddr,
    pub websecure: SocketAddr,
    /// Where the client serves /healthz, /readyz and /metrics.
    pub ops: SocketAddr,
    pub agent: Proc,
}

/// An agent config in `dir` (its key in `agent.key` there) for a client of `client_public_key`, and for the
/// further client replicas with keys `replicas` (at 10.88.0.3, .4, ...).
fn write_agent_config(
    dir: &Path,
    udp: SocketAddr,
    client_public_key: &tunnel::PublicKey,
    replicas: &[tunnel::PublicKey],
    web: SocketAddr,
    websecure: SocketAddr,
) {
    let mut more = String::new();
    if !replicas.is_empty() {
        more.push_str(&format!("  address: {}\n  replicas:\n", protocol::defaults::agent_replicas_cidr()));
        for (n, key) in replicas.iter().enumerate() {
            let address = protocol::defaults::replica_address(n + 1).unwrap();
            more.push_str(&format!("  - {{public_key: \"{key}\", address: {address}}}\n"));
        }
    }
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "state_dir: state\nadmin_socket: {d}/admin.sock\nwireguard:\n  listen: \"{udp}\"\n  private_key_file: agent.key\n  client_public_key: \"{client_public_key}\"\n{more}entrypoints:\n  web: \"{web}\"\n  websecure: \"{websecure}\"\ntraefik:\n  binary: {t}\nl4:\n  address: 127.0.0.1\n",
            d = dir.display(),
            t = traefik_binary().display()
        ),
    )
    .unwrap();
}

impl Edge {
    pub fn start(name: &str) -> Edge {
        Edge::start_replicated(name, 1)
    }

    /// An edge whose agent serves `replicas` client replicas, each with a key of its own: replica 0's is
    /// `client.key`, and `replica.keys` lists them all, a line each, as `POLAREDGE_REPLICA_KEYS` takes them.
    pub fn start_replicated(name: &str, replicas: usize) -> Edge {
        let dir = std::env::temp_dir().join(format!("pe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        let (agent_key, client_key) = (PrivateKey::generate(), PrivateKey::generate());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let web = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let ops = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let websecure = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        testkit::write_secret(&dir.join("agent.key"), &agent_key.to_string());
        testkit::write_secret(&dir.join("client.key"), &client_key.to_string());
        let more: Vec<PrivateKey> = (1..replicas).map(|_| PrivateKey::generate()).collect();
        let all: Vec<String> = std::iter::once(&client_key).chain(&more).map(ToString::to_string).collect();
        testkit::write_secret(&dir.join("replica.keys"), &(all.join("\n") + "\n"));
        let more: Vec<tunnel::PublicKey> = more.iter().map(PrivateKey::public_key).collect();
        write_agent_config(&dir, udp, &client_key.public_key(), &more, web, websecure);
        std::fs::write(
            dir.join("client.yaml"),
            format!(
                "private_key_file: client.key\ncert_resolver: \"\"\nops_listen: \"{ops}\"\nagents:\n- name: edge\n  endpoint: \"{udp}\"\n  public_key: \"{}\"\n",
                agent_key.public_key()
            ),
        )
        .unwrap();
        let agent = Proc::spawn(Command::new(agent_binary()).args(["run", "--config"]).arg(dir.join("agent.yaml")));
        Edge { dir, web, websecure, ops, agent }
    }
}

impl Edge {
    /// A second edge host for the same client: its own agent and Traefik (in `name`'s folder), trusting this
    /// edge's client key, added to this edge's client.yaml with `public_address` as its address in status.
    pub fn add_edge(&self, name: &str, public_address: &str) -> Edge {
        let dir = std::env::temp_dir().join(format!("pe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent_key = PrivateKey::generate();
        let client_key: PrivateKey =
            std::fs::read_to_string(self.dir.join("client.key")).unwrap().trim().parse().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let web = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let websecure = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        testkit::write_secret(&dir.join("agent.key"), &agent_key.to_string());
        write_agent_config(&dir, udp, &client_key.public_key(), &[], web, websecure);
        let mut client = std::fs::read_to_string(self.dir.join("client.yaml")).unwrap();
        client.push_str(&format!(
            "- name: {name}\n  endpoint: \"{udp}\"\n  public_key: \"{}\"\n  public_address: \"{public_address}\"\n",
            agent_key.public_key()
        ));
        std::fs::write(self.dir.join("client.yaml"), client).unwrap();
        let agent = Proc::spawn(Command::new(agent_binary()).args(["run", "--config"]).arg(dir.join("agent.yaml")));
        Edge { dir, web, websecure, ops: self.ops, agent }
    }

    /// Stops this edge's agent (SIGKILL: a host that died).
    pub fn kill_agent(&self) {
        let _ = Command::new("kill").args(["-KILL", &self.agent.child.id().to_string()]).status();
    }

    /// Starts this edge's agent again with its config and state.
    pub fn restart_agent(&mut self) {
        self.kill_agent();
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.agent =
            Proc::spawn(Command::new(agent_binary()).args(["run", "--config"]).arg(self.dir.join("agent.yaml")));
    }

    /// Runs the client binary reading this edge's manifests folder (standing in for the cluster).
    pub fn client_reading_manifests(&self) -> Proc {
        Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
                .args(["run", "--config"])
                .arg(self.dir.join("client.yaml"))
                .arg("--manifests")
                .arg(self.dir.join("manifests")),
        )
    }

    /// Runs the client binary watching the API server its kubeconfig (written into this edge's folder) names.
    pub fn client_watching_kubeconfig(&self) -> Proc {
        Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
                .env("KUBECONFIG", self.dir.join("kubeconfig"))
                .args(["run", "--config"])
                .arg(self.dir.join("client.yaml")),
        )
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Real Traefik on loopback ports serving one routes document through its file provider (what the agent
/// writes, without the agent): for tests of rendered routes. Killed, and its folder removed, on drop.
pub struct FileTraefik {
    child: std::process::Child,
    dir: PathBuf,
    /// The plain HTTP entrypoint.
    pub web: SocketAddr,
    /// The TLS entrypoint.
    pub websecure: SocketAddr,
    /// The API (`/api/http/routers`) and ping.
    pub admin: SocketAddr,
}

impl FileTraefik {
    /// Starts Traefik on `document`; its folder is named after `name`.
    pub fn start(name: &str, document: &str) -> FileTraefik {
        let dir = std::env::temp_dir().join(format!("pe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dynamic")).unwrap();
        std::fs::write(dir.join("dynamic/routes.yaml"), document).unwrap();
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (web, websecure, admin) = (local(free_tcp()), local(free_tcp()), local(free_tcp()));
        std::fs::write(
            dir.join("traefik.yaml"),
            format!(
                "entryPoints:\n  web: {{address: \"{web}\"}}\n  websecure: {{address: \"{websecure}\"}}\n  traefik: {{address: \"{admin}\"}}\nping: {{}}\nproviders:\n  providersThrottleDuration: 100ms\n  file: {{directory: \"{}\", watch: true}}\napi: {{insecure: true, dashboard: false}}\nlog: {{level: ERROR}}\n",
                dir.join("dynamic").display()
            ),
        )
        .unwrap();
        let child = Command::new(traefik_binary())
            .arg(format!("--configFile={}", dir.join("traefik.yaml").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Traefik runs (scripts/fetch-traefik.sh)");
        FileTraefik { child, dir, web, websecure, admin }
    }
}

impl Drop for FileTraefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
