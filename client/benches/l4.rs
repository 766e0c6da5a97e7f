//! TCP throughput of an L4 route (a Service of type LoadBalancer served at the edge) against the same pod
//! directly, in one run: iperf3 (Debian) one stream each way, then four parallel streams, through agent +
//! userspace WireGuard + client relay on loopback. Zero latency only: the project has no real-process
//! impairment relay yet (the WAN issue), so this says what the L4 path costs, not how it fares on the internet.
//!
//! Run: `cargo build --release -p polaredge-agent && cargo bench -p polaredge-client --bench l4`
//! (`POLAREDGE_L4_SECONDS` per run, default 5).

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

fn main() {
    let seconds: u64 = std::env::var("POLAREDGE_L4_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let edge = Edge::start("bench-l4");
    let pod = free_tcp();
    let _server = Proc::spawn(Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &pod.to_string()]));
    let public = free_tcp();
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: perf, namespace: bench}}\nspec:\n  type: LoadBalancer\n  loadBalancerClass: polaredge.io/edge\n  ports: [{{name: perf, port: {public}, targetPort: {pod}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: perf-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: perf}}\naddressType: IPv4\nports: [{{name: perf, port: {pod}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
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
}
