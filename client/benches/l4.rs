//! Throughput of an L4 route (a Service of type LoadBalancer served at the edge) against the same pod directly,
//! in one run, through agent + userspace WireGuard + client relay on loopback, with iperf3 (Debian) as client
//! and pod: TCP one stream each way, then four parallel streams; UDP (iperf3 -u, 1,200-byte datagrams) at
//! fixed rates and unlimited, each way: datagrams/s received and the loss. The Service has a TCP and a UDP
//! port of one number, as iperf3 needs (its control connection is TCP). Zero latency: this says what the L4
//! path costs; `polaredge-tunnel-bench wan` says how the tunnel fares on impaired paths.
//!
//! Run: `cargo build --release -p polaredge-agent && cargo bench -p polaredge-client --bench l4`
//! (`POLAREDGE_L4_SECONDS` per run, default 5; `scripts/bench.sh` runs it).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

/// Megabytes per second iperf3 measured (received side), from its JSON report.
fn iperf3(port: u16, seconds: u64, reverse: bool, streams: u32) -> f64 {
    // The server runs one test at a time and takes a moment to be ready for the next.
    std::thread::sleep(Duration::from_secs(1));
    let mut command = Command::new("iperf3");
    command.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", &seconds.to_string(), "-J"]);
    command.args(["-P", &streams.to_string()]);
    if reverse {
        command.arg("-R");
    }
    let out = command.output().expect("iperf3 (scripts/install-deps.sh installs it)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 8e6
}

/// One UDP run: (datagrams/s received, loss %) from iperf3's JSON report; `rate` in Mbit/s, 0 for unlimited.
fn iperf3_udp(port: u16, seconds: u64, reverse: bool, rate: u32) -> (f64, f64) {
    std::thread::sleep(Duration::from_secs(1));
    let mut command = Command::new("iperf3");
    command.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", &seconds.to_string(), "-J", "-u", "-l", "1200"]);
    command.args(["-b", &format!("{rate}M")]);
    if reverse {
        command.arg("-R");
    }
    let out = command.output().expect("iperf3 (scripts/install-deps.sh installs it)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let sum = &report["end"]["sum"];
    let received = sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    (received / seconds as f64, sum["lost_percent"].as_f64().unwrap_or(100.0))
}

/// The run with the median rate (its loss with it).
fn median(mut runs: Vec<(f64, f64)>) -> (f64, f64) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

fn main() {
    let seconds: u64 = std::env::var("POLAREDGE_L4_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let edge = Edge::start("bench-l4");
    let pod = free_tcp();
    let _server = Proc::spawn(Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &pod.to_string()]));
    let public = free_tcp();
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: perf, namespace: bench}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: polaredge.io/edge\n  ports: [{{name: perf, port: {public}, targetPort: {pod}}}, {{name: perf-udp, port: {public}, targetPort: {pod}, protocol: UDP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: perf-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: perf}}\naddressType: IPv4\nports: [{{name: perf, port: {pod}}}, {{name: perf-udp, port: {pod}, protocol: UDP}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    );
    std::fs::write(edge.dir.join("manifests/perf.yaml"), manifests).unwrap();
    let client = edge.client_reading_manifests();
    assert!(
        eventually(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", public)).is_ok()),
        "the L4 port opens\n{}",
        client.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    println!("TCP through an L4 route vs the pod directly, iperf3 {seconds} s per run, loopback, MB/s:");
    println!("{:<28} {:>10} {:>14} {:>7}", "direction, streams", "direct", "through edge", "ratio");
    for (reverse, streams) in [(false, 1), (true, 1), (false, 4), (true, 4)] {
        let direct = iperf3(pod, seconds, reverse, streams);
        let edged = iperf3(public, seconds, reverse, streams);
        let direction = if reverse { "pod -> client" } else { "client -> pod" };
        println!(
            "{:<28} {direct:>10.1} {edged:>14.1} {:>7.2}",
            format!("{direction}, {streams}"),
            if direct > 0.0 { edged / direct } else { 0.0 }
        );
    }
    println!();
    println!(
        "UDP through an L4 route vs the pod directly, iperf3 -u -l 1200, {seconds} s per run, loopback, medians of 3 \
         (direct and edge runs alternate):"
    );
    println!(
        "{:<30} {:>12} {:>8} {:>14} {:>8} {:>7}",
        "direction, offered", "direct dg/s", "loss %", "edge dg/s", "loss %", "ratio"
    );
    for reverse in [false, true] {
        for rate in [50, 200, 0] {
            let (mut directs, mut edges) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                directs.push(iperf3_udp(pod, seconds, reverse, rate));
                edges.push(iperf3_udp(public, seconds, reverse, rate));
            }
            let (direct, direct_loss) = median(directs);
            let (edged, edged_loss) = median(edges);
            let direction = if reverse { "pod -> client" } else { "client -> pod" };
            let offered = if rate == 0 { "unlimited".to_string() } else { format!("{rate} Mbit/s") };
            println!(
                "{:<30} {direct:>12.0} {direct_loss:>8.2} {edged:>14.0} {edged_loss:>8.2} {:>7.2}",
                format!("{direction}, {offered}"),
                if direct > 0.0 { edged / direct } else { 0.0 }
            );
        }
    }
}
