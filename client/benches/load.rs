//! Public load through the edge, side by side with its anchors, in one run: wrk at 100, 1,000 and 10,000
//! keep-alive connections and bursts of simultaneous one-request connections, each against
//! (a) the backend directly (Debian's nginx), (b) the same Traefik proxying straight to it (what the edge
//! itself costs), (c) through the edge (agent + Traefik + userspace WireGuard + client relay); and at layer 4,
//! (d) rathole (a TCP forwarder users pick for speed; `cargo install rathole`, skipped when absent) forwarding a
//! port to the backend, against (e) our own L4 route (a LoadBalancer Service: agent -> tunnel -> client relay).
//! Prints req/s, latency percentiles, errors, the RSS, threads and CPU per request of the agent and the client;
//! then the same comparison with the edge host on a core of its own (Traefik + agent on CPU 0, everything else
//! on CPU 1), and RSS after the load.
//!
//! Run (root, for the open-files limit; needs wrk and nginx): `scripts/bench.sh`, or
//! `cargo build --release -p polaredge-agent && cargo bench -p polaredge-client --bench load`.
//! `POLAREDGE_LOAD_SECONDS` sets each wrk run's length (default 8), `POLAREDGE_LOAD_ROUNDS` how many times the
//! targets take turns at 100 and 1,000 connections (default 3; medians are printed),
//! `POLAREDGE_LOAD_SOAK_SECONDS` the length of the closing soak at 1,000 connections (default 120; 0 skips it),
//! `POLAREDGE_LOAD_CONNECTIONS` the wrk connection counts (default `100,1000,10000`), and
//! `POLAREDGE_LOAD_EXTRAS=0` skips the bursts and the pinned comparison (for a quick A/B of two builds).
//! "dgrams/req" counts the loopback UDP datagrams sent (/proc/net/snmp, so the whole machine's) per request: the
//! tunnel's datagrams both ways, data and ACKs.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const HOST: &str = "bench.test";

fn main() {
    let open_files = tunnel::driver::raise_open_files_limit(Some(1 << 20));
    // 10,000 connections take 10,000 sockets in wrk and the agent and up to 20,000 in Traefik (both sides).
    println!("open-files limit for every process of this run: {open_files}");
    let seconds: u64 = std::env::var("POLAREDGE_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let edge = Edge::start("bench-load");
    let nginx = Nginx::start(&edge.dir);
    let direct_traefik = DirectTraefik::start(&edge.dir, nginx.addr);
    let l4 = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
    let documents = format!("{}---\n{}", manifests(HOST, nginx.addr.port()), l4_service(l4.port(), nginx.addr.port()));
    std::fs::write(edge.dir.join("manifests/app.yaml"), documents).unwrap();
    let client = edge.client_reading_manifests();
    assert!(eventually(Duration::from_secs(30), || get(edge.web, HOST, "/") == "ok\n"), "edge route live");
    assert!(eventually(Duration::from_secs(30), || get(l4, HOST, "/") == "ok\n"), "edge L4 route live");
    assert!(eventually(Duration::from_secs(10), || get(direct_traefik.web, HOST, "/") == "ok\n"), "direct Traefik");
    let rathole = Rathole::start(&edge.dir, nginx.addr);
    let (agent_pid, client_pid) = (edge.agent.child.id(), client.child.id());
    let mut targets = vec![
        ("(a) backend direct", nginx.addr),
        ("(b) Traefik direct", direct_traefik.web),
        ("(c) through the edge", edge.web),
    ];
    if let Some(rathole) = &rathole {
        targets.push(("(d) rathole, TCP", rathole.public));
    }
    targets.push(("(e) ours, L4 route", l4));

    let rounds: usize = std::env::var("POLAREDGE_LOAD_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let connection_counts: Vec<usize> = std::env::var("POLAREDGE_LOAD_CONNECTIONS")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 10_000]);
    let extras = std::env::var("POLAREDGE_LOAD_EXTRAS").map_or(true, |v| v != "0");
    println!(
        "load: wrk -t2 -d{seconds}s --timeout 10s, keep-alive, one URL (nginx answers \"ok\"); targets take turns, \
         {rounds} rounds at 100 and 1,000 connections (medians), 1 at 10,000"
    );
    println!(
        "{:<22} {:>6} {:>10} {:>9} {:>9} {:>8} {:>13} {:>13} {:>12} {:>12} {:>11}",
        "target",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "agent RSS MB",
        "client RSS MB",
        "threads a/c",
        "edge CPU/req",
        "dgrams/req"
    );
    let mut ratios = Vec::new();
    let mut layer4 = Vec::new();
    for &connections in &connection_counts {
        let rounds = if connections == 10_000 { 1 } else { rounds };
        let mut runs: Vec<Vec<(WrkRun, Peak, f64, f64)>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, (_, addr)) in targets.iter().enumerate() {
                let sampler = Sampler::start(agent_pid, client_pid);
                let cpu_before = cpu_seconds(agent_pid) + cpu_seconds(client_pid);
                let datagrams_before = udp_datagrams_sent();
                let run = wrk(*addr, connections, seconds);
                let cpu = cpu_seconds(agent_pid) + cpu_seconds(client_pid) - cpu_before;
                let requests = (run.rps * seconds as f64).max(1.0);
                let per_request_us = cpu / requests * 1e6;
                let datagrams = (udp_datagrams_sent() - datagrams_before) as f64 / requests;
                runs[i].push((run, sampler.stop(), per_request_us, datagrams));
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let mut medians = Vec::new();
        for (i, (name, addr)) in targets.iter().enumerate() {
            let list = &mut runs[i];
            list.sort_by(|x, y| x.0.rps.total_cmp(&y.0.rps));
            let (run, peak, cpu_us, datagrams) = &list[list.len() / 2];
            let edge_figures = if *addr == edge.web || *addr == l4 {
                format!(
                    "{:>13.1} {:>13.1} {:>12} {:>9.0} us {:>11.2}",
                    peak.agent_rss_kib as f64 / 1024.0,
                    peak.client_rss_kib as f64 / 1024.0,
                    format!("{}/{}", peak.agent_threads, peak.client_threads),
                    cpu_us,
                    datagrams
                )
            } else {
                format!("{:>13} {:>13} {:>12} {:>12} {:>11}", "-", "-", "-", "-", "-")
            };
            let all: Vec<String> = list.iter().map(|r| format!("{:.0}", r.0.rps)).collect();
            println!(
                "{name:<22} {connections:>6} {:>10.0} {:>9.2} {:>9.2} {:>8} {edge_figures}   (runs: {})",
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.errors,
                all.join(", ")
            );
            medians.push(run.rps);
        }
        ratios.push((connections, medians[2] / medians[1]));
        if rathole.is_some() {
            let (ours, theirs) = (medians[medians.len() - 1], medians[medians.len() - 2]);
            layer4.push((connections, ours / theirs));
        }
    }
    for (connections, ratio) in &ratios {
        let target = match connections {
            100 => ">= 0.80",
            1_000 => ">= 0.70",
            _ => "-",
        };
        println!("through-edge / Traefik-direct req/s at {connections} connections: {ratio:.2} (target {target})");
    }
    for (connections, ratio) in &layer4 {
        println!("our L4 route / rathole req/s at {connections} connections: {ratio:.2}");
    }
    println!("(edge CPU/req: user+system time of agent and client together per request answered through the edge)");
    if !extras {
        drop(client);
        return;
    }

    println!("\nbursts: N connections opened at once, then one request each (Connection: close); failed = not 200");
    println!("{:<22} {:>6} {:>8} {:>10}", "target", "N", "failed", "all in ms");
    for n in [50usize, 200, 1_000, 5_000] {
        for &(name, addr) in &targets {
            let (failed, took) = burst(addr, n);
            println!("{name:<22} {n:>6} {failed:>8} {:>10.0}", took.as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    // The edge host on a core of its own, as in production (the client and the pods run in the cluster, the
    // users elsewhere): Traefik and the agent on CPU 0; wrk, nginx and the client on CPU 1. For (b), Traefik
    // alone on CPU 0. The ratio then says what the agent costs the edge host, not what the whole demo costs
    // one shared 2-core machine.
    let edge_traefik = children(agent_pid);
    pin(&[agent_pid], 0);
    pin(&edge_traefik, 0);
    pin(&[direct_traefik.pid()], 0);
    pin(&[client_pid, nginx.pid()], 1);
    println!("\nedge host on its own core (CPU 0: Traefik + agent; CPU 1: wrk, nginx, client), medians of {rounds}:");
    println!("{:<22} {:>6} {:>10} {:>9} {:>9} {:>8}", "target", "conns", "req/s", "p50 ms", "p99 ms", "errors");
    for connections in [100usize, 1_000] {
        let mut medians = Vec::new();
        for (name, addr) in &targets[1..3] {
            let mut list: Vec<WrkRun> = (0..rounds)
                .map(|_| {
                    let run = wrk_on(Some(1), *addr, connections, seconds);
                    std::thread::sleep(Duration::from_secs(2));
                    run
                })
                .collect();
            list.sort_by(|x, y| x.rps.total_cmp(&y.rps));
            let run = &list[list.len() / 2];
            println!(
                "{name:<22} {connections:>6} {:>10.0} {:>9.2} {:>9.2} {:>8}",
                run.rps, run.p50_ms, run.p99_ms, run.errors
            );
            medians.push(run.rps);
        }
        println!("  through-edge / Traefik-direct at {connections}: {:.2}", medians[1] / medians[0]);
    }
    for pid in [agent_pid, client_pid, nginx.pid(), direct_traefik.pid()].into_iter().chain(edge_traefik) {
        pin(&[pid], -1);
    }

    // Memory returns to the OS once the load is over (per idle connection: `polaredge-tunnel-bench connmem`).
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "after the load: agent RSS {:.1} MB (peak {:.1} MB), client RSS {:.1} MB (peak {:.1} MB); threads {}/{}",
        rss_kib(agent_pid) as f64 / 1024.0,
        status_kib(agent_pid, "VmHWM:") as f64 / 1024.0,
        rss_kib(client_pid) as f64 / 1024.0,
        status_kib(client_pid, "VmHWM:") as f64 / 1024.0,
        status_kib(agent_pid, "Threads:"),
        status_kib(client_pid, "Threads:"),
    );

    // Soak: steady load through the edge for a few minutes; RSS must stay flat from slice to slice.
    let soak: u64 = std::env::var("POLAREDGE_LOAD_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    if soak > 0 {
        let slice = 20.min(soak);
        println!("\nsoak: wrk -c1000 through the edge for {soak} s in {slice} s slices (RSS after each slice)");
        println!("{:>6} {:>10} {:>8} {:>14} {:>15}", "slice", "req/s", "errors", "agent RSS MB", "client RSS MB");
        for i in 1..=soak / slice {
            let run = wrk(edge.web, 1_000, slice);
            println!(
                "{i:>6} {:>10.0} {:>8} {:>14.1} {:>15.1}",
                run.rps,
                run.errors,
                rss_kib(agent_pid) as f64 / 1024.0,
                rss_kib(client_pid) as f64 / 1024.0
            );
        }
    }
    drop(client);
}

/// A Service of type LoadBalancer with our class exposing `pod_port` (on loopback) at the edge's `port`.
fn l4_service(port: u16, pod_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: nginx-l4, namespace: default}}\nspec:\n  type: LoadBalancer\n  \
         loadBalancerClass: polaredge.io/edge\n  ports: [{{port: {port}, targetPort: {pod_port}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: nginx-l4-1\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: nginx-l4}}\naddressType: IPv4\nports: [{{port: {pod_port}}}]\n\
         endpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

/// rathole forwarding a loopback port to `backend` through its own control connection, with its default
/// transport (plain TCP: no encryption, where ours runs WireGuard). `None` when rathole is not installed.
struct Rathole {
    public: SocketAddr,
    _server: Proc,
    _client: Proc,
}

impl Rathole {
    fn start(dir: &Path, backend: SocketAddr) -> Option<Rathole> {
        if Command::new("rathole").arg("--version").output().is_err() {
            println!("rathole is not installed (`cargo install rathole`): its rows are left out");
            return None;
        }
        let (control, public) = (free_tcp(), SocketAddr::from(([127, 0, 0, 1], free_tcp())));
        let (server, client) = (dir.join("rathole-server.toml"), dir.join("rathole-client.toml"));
        std::fs::write(
            &server,
            format!(
                "[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.services.nginx]\ntoken = \"bench\"\n\
                 bind_addr = \"{public}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &client,
            format!(
                "[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.services.nginx]\ntoken = \"bench\"\n\
                 local_addr = \"{backend}\"\n"
            ),
        )
        .unwrap();
        let server = Proc::spawn(Command::new("rathole").arg("--server").arg(&server).env("RUST_LOG", "error"));
        let client = Proc::spawn(Command::new("rathole").arg("--client").arg(&client).env("RUST_LOG", "error"));
        assert!(
            eventually(Duration::from_secs(20), || get(public, HOST, "/") == "ok\n"),
            "rathole forwarding\n{}\n{}",
            server.log(),
            client.log()
        );
        Some(Rathole { public, _server: server, _client: client })
    }
}

/// Debian's nginx on a loopback port, answering "ok" to everything, keep-alive without limits.
struct Nginx {
    addr: SocketAddr,
    process: Proc,
}

impl Nginx {
    fn pid(&self) -> u32 {
        self.process.child.id()
    }
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 100000;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log error;\n\
                 events {{ worker_connections 50000; }}\n\
                 http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;\n\
                 client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen {addr} backlog=16384; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let process = Proc::spawn(Command::new("/usr/sbin/nginx").arg("-c").arg(&conf).arg("-p").arg(dir));
        assert!(eventually(Duration::from_secs(10), || get(addr, HOST, "/") == "ok\n"), "nginx up\n{}", process.log());
        Nginx { addr, process }
    }
}

/// Traefik on its own, proxying to the backend with the same (default) transport as the edge's Traefik.
struct DirectTraefik {
    web: SocketAddr,
    process: Proc,
}

impl DirectTraefik {
    fn pid(&self) -> u32 {
        self.process.child.id()
    }

    fn start(dir: &Path, backend: SocketAddr) -> DirectTraefik {
        let web = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let routes = dir.join("direct-routes.yaml");
        std::fs::write(
            &routes,
            format!(
                "http:\n  routers:\n    app: {{rule: \"Host(`{HOST}`)\", service: app, entryPoints: [web]}}\n  services:\n    app:\n      loadBalancer:\n        servers: [{{url: \"http://{backend}\"}}]\n"
            ),
        )
        .unwrap();
        let config = dir.join("direct-traefik.yaml");
        std::fs::write(
            &config,
            format!(
                "global: {{checkNewVersion: false, sendAnonymousUsage: false}}\nentryPoints:\n  web: {{address: \"{web}\"}}\n  traefik: {{address: \"127.0.0.1:{}\"}}\nproviders:\n  file: {{filename: \"{}\"}}\nlog: {{level: ERROR}}\n",
                free_tcp(),
                routes.display()
            ),
        )
        .unwrap();
        let process = Proc::spawn(Command::new(traefik_binary()).arg(format!("--configFile={}", config.display())));
        DirectTraefik { web, process }
    }
}

struct WrkRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(addr: SocketAddr, connections: usize, seconds: u64) -> WrkRun {
    wrk_on(None, addr, connections, seconds)
}

/// wrk, pinned to `cpu` if given.
fn wrk_on(cpu: Option<usize>, addr: SocketAddr, connections: usize, seconds: u64) -> WrkRun {
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let out = command
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "10s"])
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let number_after = |label: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.trim_start()[label.len()..].trim().to_string())
    };
    let ms = |value: &str| -> f64 {
        let value = value.split_whitespace().next().unwrap_or("0");
        let (digits, factor) = if let Some(v) = value.strip_suffix("us") {
            (v, 0.001)
        } else if let Some(v) = value.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = value.strip_suffix('s') {
            (v, 1000.0)
        } else {
            (value, 1.0)
        };
        digits.parse::<f64>().unwrap_or(f64::NAN) * factor
    };
    let rps = number_after("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // "Socket errors: connect 0, read 12, write 0, timeout 3" and "Non-2xx or 3xx responses: 5".
    let mut errors = 0;
    if let Some(line) = number_after("Socket errors:") {
        errors += line.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
    }
    if let Some(n) = number_after("Non-2xx or 3xx responses:") {
        errors += n.parse::<u64>().unwrap_or(0);
    }
    WrkRun {
        rps,
        p50_ms: number_after("50%").map(|v| ms(&v)).unwrap_or(f64::NAN),
        p99_ms: number_after("99%").map(|v| ms(&v)).unwrap_or(f64::NAN),
        errors,
    }
}

/// Opens `n` connections at once, then sends one request on each; returns how many did not get a 200, and
/// how long all took.
fn burst(addr: SocketAddr, n: usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| TcpStream::connect(addr).ok()).collect();
    for conn in conns.iter_mut().flatten() {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = write!(conn, "GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    }
    // What the failures were: the status line, or what went wrong before one came.
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for conn in conns.iter_mut() {
        let mut answer = String::new();
        let outcome = match conn.as_mut().map(|c| c.read_to_string(&mut answer)) {
            None => "connect failed".to_string(),
            Some(Err(e)) => format!("read: {:?}", e.kind()),
            Some(Ok(_)) if answer.starts_with("HTTP/1.1 200") => continue,
            Some(Ok(_)) => answer.lines().next().unwrap_or("no answer").to_string(),
        };
        *failures.entry(outcome).or_default() += 1;
    }
    if !failures.is_empty() {
        println!("  burst of {n} to {addr}: {failures:?}");
    }
    (failures.values().sum(), started.elapsed())
}

/// Pins every thread of each process to `cpu`, or lets them run anywhere again with -1 (taskset, util-linux).
fn pin(pids: &[u32], cpu: i32) {
    let cpus = if cpu < 0 {
        format!("0-{}", std::thread::available_parallelism().map_or(1, |n| n.get()) - 1)
    } else {
        cpu.to_string()
    };
    for pid in pids {
        let status =
            Command::new("taskset").args(["-a", "-p", "-c", &cpus, &pid.to_string()]).output().expect("taskset");
        assert!(status.status.success(), "taskset {pid}: {}", String::from_utf8_lossy(&status.stderr));
    }
}

/// The children of a process (the agent's Traefik).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// CPU time (user + system) a process has used, in seconds.
/// UDP datagrams the machine sent so far (`OutDatagrams` in /proc/net/snmp).
fn udp_datagrams_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    let column = names.split_whitespace().position(|n| n == "OutDatagrams");
    column.and_then(|c| values.split_whitespace().nth(c)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

#[derive(Default, Clone, Copy)]
struct Peak {
    agent_rss_kib: u64,
    client_rss_kib: u64,
    agent_threads: u64,
    client_threads: u64,
}

/// Samples RSS and threads of agent and client every 200 ms; keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peak>,
}

impl Sampler {
    fn start(agent: u32, client: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = Peak::default();
            while !flag.load(Ordering::Relaxed) {
                peak.agent_rss_kib = peak.agent_rss_kib.max(rss_kib(agent));
                peak.client_rss_kib = peak.client_rss_kib.max(rss_kib(client));
                peak.agent_threads = peak.agent_threads.max(status_kib(agent, "Threads:"));
                peak.client_threads = peak.client_threads.max(status_kib(client, "Threads:"));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
