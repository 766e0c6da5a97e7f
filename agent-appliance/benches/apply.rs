//! Upload -> live latency and the agent's idle footprint, measured with the real agent binary, real Traefik and
//! a tunnel test peer on loopback. Run: `cargo bench -p polaredge-agent --bench apply` (BENCHMARKS.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

const UPLOADS: usize = 40;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let setup = Setup::new("bench");
    // Measure the shipped artifact (static musl) when it is built, else the host build.
    let musl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/polaredge-agent");
    let binary = if musl.exists() { musl } else { std::path::PathBuf::from(env!("CARGO_BIN_EXE_polaredge-agent")) };
    println!("agent binary: {}", binary.display());
    let agent = Agent::start_binary(&setup, &binary);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    let (status, body) = peer.upload(&route("warmup.test", "10.1.0.1:80"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());

    let mut round_trip = Vec::new();
    let mut agent_side = Vec::new();
    for i in 0..UPLOADS {
        // Each upload differs (a new host), so each is a new generation Traefik must load.
        let doc = route(&format!("app{i}.test"), "10.1.0.1:80");
        let started = Instant::now();
        let (status, body) = peer.upload(&doc);
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(status == 200 && answer["live"] == true, "{body}");
        round_trip.push(elapsed);
        agent_side.push(answer["apply_ms"].as_f64().unwrap());
        // The new route really serves.
        assert_eq!(http_get(setup.web, &format!("app{i}.test"), "/").0, 200);
    }
    round_trip.sort_by(|a, b| a.partial_cmp(b).unwrap());
    agent_side.sort_by(|a, b| a.partial_cmp(b).unwrap());

    std::thread::sleep(Duration::from_secs(3));
    let traefik_pid = serde_json::from_str::<serde_json::Value>(&peer.get("/status").1).unwrap()["traefik"]["pid"]
        .as_u64()
        .unwrap() as u32;
    std::thread::sleep(Duration::from_secs(2));
    let agent_rss = rss_kib(agent.pid());
    let traefik_rss = rss_kib(traefik_pid);

    println!("upload -> confirmed live by Traefik's API ({UPLOADS} uploads, each a new generation, loopback):");
    println!("  {:<44} {:>8} {:>8} {:>8}", "", "median", "p90", "max");
    let row = |label: &str, samples: &[f64]| {
        let (median, p90, max) = (percentile(samples, 0.5), percentile(samples, 0.9), percentile(samples, 1.0));
        println!("  {label:<44} {median:>6.1}ms {p90:>6.1}ms {max:>6.1}ms");
    };
    row("client round trip through the tunnel", &round_trip);
    row("agent: received -> confirmed (apply_ms)", &agent_side);
    println!("  target: median <= 150 ms. Anchors: Traefik's Kubernetes provider 2 s throttle; Pangolin polls 5 s;");
    println!("  frp reloads ~10 s; cloudflared needs a restart.");
    println!("idle RSS after uploads: agent {agent_rss} KiB (target <= 6 MiB = 6144 KiB), Traefik {traefik_rss} KiB");
    for target in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/{target}/release/polaredge-agent"));
        match std::fs::metadata(&path) {
            Ok(m) => println!("static binary {target}: {} bytes (target <= 3 MB)", m.len()),
            Err(_) => println!("static binary {target}: not built (run scripts/build-static.sh first)"),
        }
    }
}
