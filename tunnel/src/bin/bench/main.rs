//! Throughput, CPU, memory and idle wake-ups of the userspace tunnel, side by side with its anchors, in one run:
//!
//! (a) kernel TCP over a veth pair (the ceiling), (b) wireguard-go <-> wireguard-go, (c) onetun -> wireguard-go,
//! (d) ours: local TCP -> our tunnel -> our tunnel -> kernel TCP server (POLAREDGE's data path),
//! (e) ours -> wireguard-go. iperf3, one stream, both directions (-R), median of several runs.
//!
//! Needs root, iproute2, iperf3, wireguard-go, wireguard-tools and onetun (`scripts/bench.sh` installs them).
//! Every namespace and process it creates is removed when it ends.
//!
//! `wan` runs the WAN issue's profiles on real processes through a UDP impairment relay ([`wan`], [`relay`]).
//!
//! Internal modes (spawned inside namespaces): `forward` (kernel TCP listener -> tunnel), `expose` (tunnel
//! port -> kernel TCP) and `relay` (the impairment relay); `connmem` measures memory per tunnel connection
//! in-process on loopback; `churn` the round trip while many connections close; `crowd` the round trip and its
//! CPU cost while many connections stay open and idle.

mod relay;
mod wan;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunnel::testbed::{self, Netns, WireguardGo, WireguardGoConfig};
use tunnel::{Cidr, CoreConfig, PrivateKey, PublicKey, Tunnel, TunnelConfig};

const RUNS: usize = 3;
const SECONDS: &str = "4";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let options: HashMap<String, String> =
        args.iter().skip(1).filter_map(|a| a.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let result = match mode {
        "all" => orchestrate(),
        "forward" => forward(&options),
        "expose" => expose(&options),
        "connmem" => connection_memory(),
        "churn" => churn(&options),
        "crowd" => crowd(&options),
        "wan" => wan::run(),
        "relay" => start_relay(&options),
        "--help" | "-h" => {
            println!(
                "usage: polaredge-tunnel-bench [all|connmem|churn [n=N]|wan]   (run as root; see scripts/bench.sh)"
            );
            Ok(())
        }
        other => Err(io::Error::other(format!("unknown mode {other:?}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polaredge-tunnel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn opt<'a>(options: &'a HashMap<String, String>, key: &str) -> io::Result<&'a str> {
    options.get(key).map(String::as_str).ok_or_else(|| io::Error::other(format!("missing option {key}=")))
}

fn tunnel_from(options: &HashMap<String, String>) -> io::Result<Tunnel> {
    let key: PrivateKey = opt(options, "key")?.parse().map_err(io::Error::other)?;
    let peer: PublicKey = opt(options, "peer")?.parse().map_err(io::Error::other)?;
    let address: Cidr = opt(options, "address")?.parse().map_err(|_| io::Error::other("bad address"))?;
    let endpoint = options.get("endpoint").map(|e| e.parse::<SocketAddr>()).transpose().map_err(io::Error::other)?;
    Tunnel::start(TunnelConfig {
        core: CoreConfig {
            endpoint,
            persistent_keepalive: endpoint.map(|_| 25),
            tcp: wan::tuning(options.get("cc").map(String::as_str))?,
            udp: Default::default(),
            ..CoreConfig::new(key, peer, vec![address])
        },
        listen: opt(options, "bind")?.parse().map_err(io::Error::other)?,
    })
}

/// The UDP impairment relay for one profile of [`tunnel::impair::PROFILES`] (by index).
fn start_relay(options: &HashMap<String, String>) -> io::Result<()> {
    let address = |key| opt(options, key)?.parse::<SocketAddr>().map_err(io::Error::other);
    let index: usize = opt(options, "profile")?.parse().map_err(io::Error::other)?;
    let profile = *tunnel::impair::PROFILES.get(index).ok_or_else(|| io::Error::other("no such profile"))?;
    let seed: u64 = opt(options, "seed")?.parse().map_err(io::Error::other)?;
    relay::run(address("listen")?, address("upstream")?, address("bind")?, profile, seed)
}

/// Kernel TCP listener -> a stream through the tunnel to `target`, spliced (the agent's forwarder shape).
fn forward(options: &HashMap<String, String>) -> io::Result<()> {
    let tunnel = std::sync::Arc::new(tunnel_from(options)?);
    let target: SocketAddr = opt(options, "target")?.parse().map_err(io::Error::other)?;
    let listener = TcpListener::bind(opt(options, "listen")?)?;
    for conn in listener.incoming() {
        let conn = conn?;
        let tunnel = std::sync::Arc::clone(&tunnel);
        std::thread::spawn(move || match tunnel.connect(target, Duration::from_secs(10)) {
            Ok(stream) => drop(stream.splice(conn)),
            Err(e) => eprintln!("forward: {e}"),
        });
    }
    Ok(())
}

/// Tunnel port -> kernel TCP to `to`, spliced (the client relay's shape).
fn expose(options: &HashMap<String, String>) -> io::Result<()> {
    let tunnel = tunnel_from(options)?;
    let port: u16 = opt(options, "port")?.parse().map_err(io::Error::other)?;
    let to: SocketAddr = opt(options, "to")?.parse().map_err(io::Error::other)?;
    let listener = tunnel.listen(port)?;
    loop {
        let stream = listener.accept()?;
        match TcpStream::connect(to) {
            Ok(conn) => drop(stream.splice(conn)),
            Err(e) => eprintln!("expose: {e}"),
        }
    }
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Context switches of every thread of a process: how often it woke up.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Received bytes per second from iperf3's JSON report.
fn iperf_mbytes(json: &str) -> Option<f64> {
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let bps_at = rest.find("\"bits_per_second\":")? + "\"bits_per_second\":".len();
    let number: String = rest[bps_at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    number.parse::<f64>().ok().map(|bps| bps / 8.0 / 1e6)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

struct Row {
    name: &'static str,
    up: f64,
    down: f64,
    cpu_up: f64,
    cpu_down: f64,
    rss_mb: f64,
}

/// Runs iperf3 from `ns` against host:port, RUNS times per direction; CPU of `pids` as % of one core.
fn measure(name: &'static str, ns: &Netns, host: &str, port: u16, pids: &[u32]) -> Row {
    let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for (d, reverse) in [false, true].into_iter().enumerate() {
        for _ in 0..RUNS {
            let port = port.to_string();
            let mut args =
                vec!["netns", "exec", ns.name(), "iperf3", "-c", host, "-p", &port, "-t", SECONDS, "-O", "1", "-J"];
            if reverse {
                args.push("-R");
            }
            let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
            let t0 = Instant::now();
            let out = Command::new("ip").args(&args).stdin(Stdio::null()).output();
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0) / wall * 100.0;
            let mbps = out.ok().and_then(|o| iperf_mbytes(&String::from_utf8_lossy(&o.stdout))).unwrap_or(0.0);
            results[d].0.push(mbps);
            results[d].1.push(cpu);
        }
    }
    let rss_mb = pids.iter().map(|&p| status_field(p, "VmHWM:")).max().unwrap_or(0) as f64 / 1024.0;
    let [(mut up, mut cpu_up), (mut down, mut cpu_down)] = results;
    let row = Row {
        name,
        up: median(&mut up),
        down: median(&mut down),
        cpu_up: if pids.is_empty() { f64::NAN } else { median(&mut cpu_up) },
        cpu_down: if pids.is_empty() { f64::NAN } else { median(&mut cpu_down) },
        rss_mb,
    };
    eprintln!("  {name}: up {:.1} MB/s, down {:.1} MB/s", row.up, row.down);
    row
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_in(ns: &Netns, program: &str, args: &[String]) -> io::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

/// A wireguard-go pair: 10.99.0.1/24 in `c`, 10.99.0.2/24 in `s` listening on UDP 51820, the client reaching the
/// server at `server_endpoint` (directly, or through a relay). Returns the client, the server and the server's
/// key (for more peers).
fn wireguard_go_pair(
    c: &Netns,
    s: &Netns,
    tag: &str,
    server_endpoint: SocketAddr,
) -> io::Result<(WireguardGo, WireguardGo, PrivateKey)> {
    let (client_key, server_key) = (PrivateKey::generate(), PrivateKey::generate());
    let id = std::process::id() % 10_000;
    let (client_if, server_if) = (format!("pe{tag}c{id}"), format!("pe{tag}s{id}"));
    let server = WireguardGo::start(
        s,
        &WireguardGoConfig {
            iface: &server_if,
            private_key: &server_key,
            listen_port: 51820,
            address: "10.99.0.2/24",
            peer: &client_key.public_key(),
            peer_allowed_ips: "10.99.0.1/32",
            peer_endpoint: None,
            keepalive: None,
        },
    )?;
    let client = WireguardGo::start(
        c,
        &WireguardGoConfig {
            iface: &client_if,
            private_key: &client_key,
            listen_port: 51820,
            address: "10.99.0.1/24",
            peer: &server_key.public_key(),
            peer_allowed_ips: "10.99.0.0/24",
            peer_endpoint: Some(server_endpoint),
            keepalive: Some(25),
        },
    )?;
    Ok((client, server, server_key))
}

fn orchestrate() -> io::Result<()> {
    if let Some(why) = testbed::missing_prerequisites(&["ip", "iperf3", "wireguard-go", "wg", "onetun"]) {
        return Err(io::Error::other(why));
    }
    let me = std::env::current_exe()?.to_string_lossy().to_string();
    let c = Netns::new("bc")?;
    let s = Netns::new("bs")?;
    testbed::veth(&c, "172.31.0.1/30", &s, "172.31.0.2/30")?;
    let mut children = Killed(Vec::new());
    children.0.push(s.spawn("iperf3", &["-s", "-p", "5201"])?);

    // wireguard-go on both sides for (b); the server side also serves onetun (c) and ours (e).
    let (onetun_key, ours_e_key) = (PrivateKey::generate(), PrivateKey::generate());
    let (wgc, wgs, wgs_key) = wireguard_go_pair(&c, &s, "b", "172.31.0.2:51820".parse().unwrap())?;
    wgs.add_peer(&onetun_key.public_key(), "10.99.0.3/32", None)?;
    wgs.add_peer(&ours_e_key.public_key(), "10.99.0.4/32", None)?;

    // (c) onetun in the client namespace, forwarding 127.0.0.1:5203 to the iperf3 server behind wireguard-go.
    let onetun = spawn_in(
        &c,
        "onetun",
        &[
            "127.0.0.1:5203:10.99.0.2:5201".into(),
            "--endpoint-addr".into(),
            "172.31.0.2:51820".into(),
            "--endpoint-public-key".into(),
            wgs_key.public_key().to_string(),
            "--private-key".into(),
            onetun_key.to_string(),
            "--source-peer-ip".into(),
            "10.99.0.3".into(),
            "--keep-alive".into(),
            "25".into(),
            "--log".into(),
            "error".into(),
        ],
    )?;
    let onetun_pid = onetun.id();
    children.0.push(onetun);

    // (d) ours on both sides: forward in c (127.0.0.1:5202) -> tunnel -> expose in s -> 127.0.0.1:5201.
    let (d_c, d_s) = (PrivateKey::generate(), PrivateKey::generate());
    let ours_s = spawn_in(
        &s,
        &me,
        &[
            "expose".into(),
            "port=5201".into(),
            "to=127.0.0.1:5201".into(),
            "bind=0.0.0.0:51830".into(),
            format!("key={d_s}"),
            format!("peer={}", d_c.public_key()),
            "address=10.88.0.2/30".into(),
        ],
    )?;
    let ours_c = spawn_in(
        &c,
        &me,
        &[
            "forward".into(),
            "listen=127.0.0.1:5202".into(),
            "target=10.88.0.2:5201".into(),
            "bind=0.0.0.0:51830".into(),
            "endpoint=172.31.0.2:51830".into(),
            format!("key={d_c}"),
            format!("peer={}", d_s.public_key()),
            "address=10.88.0.1/30".into(),
        ],
    )?;
    // (e) ours -> wireguard-go: forward in c (127.0.0.1:5204) -> wireguard-go in s -> 10.99.0.2:5201.
    let ours_e = spawn_in(
        &c,
        &me,
        &[
            "forward".into(),
            "listen=127.0.0.1:5204".into(),
            "target=10.99.0.2:5201".into(),
            "bind=0.0.0.0:51840".into(),
            "endpoint=172.31.0.2:51820".into(),
            format!("key={ours_e_key}"),
            format!("peer={}", wgs_key.public_key()),
            "address=10.99.0.4/24".into(),
        ],
    )?;
    let pids_d = [ours_c.id(), ours_s.id()];
    let pid_e = ours_e.id();
    children.0.extend([ours_s, ours_c, ours_e]);
    std::thread::sleep(Duration::from_secs(2));

    eprintln!("measuring ({RUNS} runs x {SECONDS} s per direction)...");
    let rows = [
        measure("(a) kernel TCP over veth", &c, "172.31.0.2", 5201, &[]),
        measure("(b) wireguard-go <-> wireguard-go", &c, "10.99.0.2", 5201, &[wgc.pid(), wgs.pid()]),
        measure("(c) onetun -> wireguard-go", &c, "127.0.0.1", 5203, &[onetun_pid, wgs.pid()]),
        measure("(d) ours -> ours (POLAREDGE path)", &c, "127.0.0.1", 5202, &pids_d),
        measure("(e) ours -> wireguard-go", &c, "127.0.0.1", 5204, &[pid_e, wgs.pid()]),
    ];

    println!(
        "\nsingle-stream TCP, iperf3 -t {SECONDS} -O 1, median of {RUNS} runs; CPU = tunnel processes, % of one core"
    );
    println!("{:<36} {:>10} {:>10} {:>9} {:>9} {:>10}", "", "up MB/s", "down MB/s", "CPU up", "CPU down", "peak RSS");
    for r in &rows {
        let cpu = |v: f64| if v.is_nan() { "kernel".to_string() } else { format!("{v:.0}%") };
        let rss = if r.rss_mb == 0.0 { "-".to_string() } else { format!("{:.1} MB", r.rss_mb) };
        println!(
            "{:<36} {:>10.1} {:>10.1} {:>9} {:>9} {:>10}",
            r.name,
            r.up,
            r.down,
            cpu(r.cpu_up),
            cpu(r.cpu_down),
            rss
        );
    }
    let (b, c_, d) = (&rows[1], &rows[2], &rows[3]);
    println!(
        "\nratios      (d)/(b) up {:.2}x  down {:.2}x   (target >= 1.5x, floor 1.0x)",
        d.up / b.up,
        d.down / b.down
    );
    println!("            (d)/(c) up {:.2}x  down {:.2}x", d.up / c_.up, d.down / c_.down);
    println!(
        "RSS of each of our processes during the run: {:?} MB (target < 64 MB)",
        pids_d.map(|p| status_field(p, "VmHWM:") / 1024)
    );

    // Idle: tunnels up with keepalive, no traffic.
    std::thread::sleep(Duration::from_secs(1));
    let idle = |pids: &[u32]| {
        let w0: Vec<u64> = pids.iter().map(|&p| wakeups(p)).collect();
        std::thread::sleep(Duration::from_secs(5));
        pids.iter().zip(w0).map(|(&p, w)| (wakeups(p) - w) as f64 / 5.0).collect::<Vec<f64>>()
    };
    let ours_idle = idle(&pids_d);
    let onetun_idle = idle(&[onetun_pid]);
    println!(
        "idle wake-ups/s (context switches, all threads): ours {ours_idle:?} (target <= 5), onetun {onetun_idle:?}"
    );
    drop(children);
    drop((wgc, wgs));
    Ok(())
}

/// Memory per tunnel connection: RSS growth for N idle connections, after each carried 256 KiB each way, and
/// once they have been quiet long enough for the driver to give their buffer pages back.
/// How long a tunnel pair stays slow after a churn of `n` forwarded connections (opened at once, one byte each
/// way, closed): the round trip of a fresh connection through the forwarder, every 100 ms for 10 s after.
/// `crowd n=0,1000,4000`: for each N, a fresh tunnel pair on loopback with N idle connections open through
/// the agent's forwarder, and one busy keep-alive connection beside them: its round trip (median, 99th
/// percentile) and the process's CPU per round trip. What grows with N is the cost of the idle crowd.
fn crowd(options: &HashMap<String, String>) -> io::Result<()> {
    let counts: Vec<usize> =
        options.get("n").map_or("0,1000,4000", String::as_str).split(',').filter_map(|n| n.parse().ok()).collect();
    let rounds: usize = options.get("rounds").and_then(|v| v.parse().ok()).unwrap_or(5000);
    tunnel::driver::raise_open_files_limit(None);
    println!("idle connections | open + answer all | round trip p50 / p99 | process CPU per round trip");
    for n in counts {
        let (agent, client) =
            testbed::loopback_pair(vec!["10.88.0.1/30".parse().unwrap()], vec!["10.88.0.2/30".parse().unwrap()])?;
        let relay = client.listen(7000)?;
        std::thread::spawn(move || {
            // The far side: the first stream echoes until it ends; every other one echoes one byte and stays open.
            let mut held = Vec::new();
            let mut first = true;
            while let Ok(stream) = relay.accept() {
                let Ok(mut io) = stream.into_io() else { continue };
                if std::mem::take(&mut first) {
                    std::thread::spawn(move || {
                        let mut byte = [0u8; 1];
                        while io.read_exact(&mut byte).is_ok() && io.write_all(&byte).is_ok() {}
                    });
                    continue;
                }
                let mut byte = [0u8; 1];
                if io.read_exact(&mut byte).is_ok() && io.write_all(&byte).is_ok() {
                    held.push(io);
                }
            }
        });
        // The agent's own listener (a backlog of 4,096): std's 128 would lose SYNs of the crowd.
        let forwarding = agent.forward_from(
            tunnel::driver::listen("127.0.0.1:0".parse().unwrap())?,
            "10.88.0.2:7000".parse::<SocketAddr>().unwrap(),
            Vec::new(),
            Arc::new(tunnel::StreamCounters::default()),
        )?;
        let mut probe = TcpStream::connect(forwarding.local_addr())?;
        probe.set_nodelay(true)?;
        probe.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut byte = [0u8; 1];
        probe.write_all(b"x")?;
        probe.read_exact(&mut byte)?;
        let opened = Instant::now();
        let mut crowd = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(forwarding.local_addr())?;
            s.write_all(b"x")?;
            crowd.push(s);
        }
        for s in &mut crowd {
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.read_exact(&mut byte)?;
        }
        let opened = opened.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let cpu0 = cpu_seconds(std::process::id());
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            probe.write_all(b"x")?;
            probe.read_exact(&mut byte)?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let cpu = cpu_seconds(std::process::id()) - cpu0;
        times.sort_by(f64::total_cmp);
        println!(
            "{n:>16} | {:>15.0} ms | {:>7.0} / {:>6.0} us | {:>6.0} us",
            opened.as_secs_f64() * 1e3,
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            cpu * 1e6 / rounds as f64
        );
        drop(crowd);
        drop(probe);
        drop(forwarding);
    }
    Ok(())
}

fn churn(options: &HashMap<String, String>) -> io::Result<()> {
    let n: usize = options.get("n").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    tunnel::driver::raise_open_files_limit(None);
    let (agent, client) =
        testbed::loopback_pair(vec!["10.88.0.1/30".parse().unwrap()], vec!["10.88.0.2/30".parse().unwrap()])?;
    let relay = client.listen(7000)?;
    std::thread::spawn(move || {
        // The far side: each stream echoes one byte and is closed (the near side's close then finds it gone).
        while let Ok(stream) = relay.accept() {
            let Ok(mut io) = stream.into_io() else { continue };
            let mut byte = [0u8; 1];
            if io.read_exact(&mut byte).is_ok() {
                let _ = io.write_all(&byte);
            }
        }
    });
    let counters = Arc::new(tunnel::StreamCounters::default());
    let forwarding = agent.forward_from(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        "10.88.0.2:7000".parse::<std::net::SocketAddr>().unwrap(),
        Vec::new(),
        Arc::clone(&counters),
    )?;
    let round_trip = || -> io::Result<Duration> {
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect(forwarding.local_addr())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"x")?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte)?;
        Ok(started.elapsed())
    };
    println!("before: one connection's round trip {:?}", round_trip()?);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = std::net::TcpStream::connect(forwarding.local_addr())?;
        s.write_all(b"x")?;
        conns.push(s);
    }
    let mut answered = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut byte = [0u8; 1];
        answered += usize::from(s.read_exact(&mut byte).is_ok());
    }
    println!("{n} connections opened and answered ({answered}) in {:?}", started.elapsed());
    drop(conns);
    let closed = Instant::now();
    for _ in 0..100 {
        let rtt = round_trip();
        let status = agent.status()?;
        println!(
            "  {:>6.1} s after closing: round trip {:?}; agent connections {}, sockets {}",
            closed.elapsed().as_secs_f64(),
            rtt.map_err(|e| e.kind()),
            status.connections,
            status.sockets
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn connection_memory() -> io::Result<()> {
    const N: usize = 1000;
    tunnel::driver::raise_open_files_limit(None); // 4 descriptors per connection here
    let (agent, client) =
        testbed::loopback_pair(vec!["10.88.0.1/30".parse().unwrap()], vec!["10.88.0.2/30".parse().unwrap()])?;
    let listener = agent.listen(9000)?;
    // Warm up: the first connection pays for the handshake and the buffer pools.
    let _warm = (
        client.connect("10.88.0.1:9000".parse().unwrap(), Duration::from_secs(5))?.into_io()?,
        listener.accept()?.into_io()?,
    );
    let pid = std::process::id();
    let rss0 = status_field(pid, "VmRSS:");
    let mut pairs = Vec::new();
    for _ in 0..N {
        let c = client.connect("10.88.0.1:9000".parse().unwrap(), Duration::from_secs(5))?.into_io()?;
        let a = listener.accept()?.into_io()?;
        pairs.push((c, a));
    }
    let rss1 = status_field(pid, "VmRSS:");
    let chunk = vec![7u8; 256 * 1024];
    let mut back = vec![0u8; 256 * 1024];
    for (c, a) in &mut pairs {
        c.write_all(&chunk)?;
        a.read_exact(&mut back)?;
        a.write_all(&chunk)?;
        c.read_exact(&mut back)?;
    }
    let rss2 = status_field(pid, "VmRSS:");
    std::thread::sleep(Duration::from_secs(4));
    let rss3 = status_field(pid, "VmRSS:");
    // Each connection has an end in each tunnel, both in this process.
    let per_end = |delta: u64| delta as f64 / (2 * N) as f64;
    let tuning = tunnel::TcpTuning::default();
    println!(
        "memory per tunnel connection end ({N} connections, both ends in one process; buffers {} KiB rx + {} KiB tx):",
        tuning.rx_buffer / 1024,
        tuning.tx_buffer / 1024
    );
    println!("  idle (just opened):            {:.1} KiB", per_end(rss1.saturating_sub(rss0)));
    println!("  after 256 KiB each way:        {:.1} KiB", per_end(rss2.saturating_sub(rss0)));
    println!(
        "  then quiet for 4 s:            {:.1} KiB (target <= 32 KiB per idle end)",
        per_end(rss3.saturating_sub(rss0))
    );
    println!("  process RSS: start {rss0} KiB, {N} idle {rss1} KiB, after traffic {rss2} KiB, quiet {rss3} KiB");
    Ok(())
}
