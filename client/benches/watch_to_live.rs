//! Ingress change in the API -> route serving at the edge: the kube-rs watch (against the in-repo API
//! server), render, upload through WireGuard, agent apply, Traefik reload, all real. Run:
//! `cargo build --release -p polaredge-agent && cargo bench -p polaredge-client --bench watch_to_live`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::apiserver::ApiServer;
use support::*;

const CHANGES: usize = 30;

fn main() {
    let edge = Edge::start("bench-watch");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let pod = backend("pod");
    api.apply(&manifests("warmup.test", pod));
    let _client = edge.client_watching_kubeconfig();
    assert!(eventually(Duration::from_secs(30), || get(edge.web, "warmup.test", "/") == "pod /"));
    let ingress = manifests("warmup.test", pod).split("---").nth(1).unwrap().to_string();
    let mut samples = Vec::new();
    for i in 0..CHANGES {
        let host = format!("change{i}.test");
        let started = Instant::now();
        api.apply(&ingress.replace("host: warmup.test", &format!("host: {host}")));
        while get(edge.web, &host, "/") != "pod /" {
            assert!(started.elapsed() < Duration::from_secs(10), "change {i} never went live");
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300)); // let Traefik's throttle window pass
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!("Ingress change in the API -> new route serving at the edge ({CHANGES} changes, loopback, real Traefik):");
    println!("  median {:.1} ms, p90 {:.1} ms, max {:.1} ms", at(0.5), at(0.9), at(1.0));
    println!("  target: median <= 250 ms. Anchor: Traefik's own Kubernetes provider sits behind a 2 s throttle.");
    println!(
        "  (includes the client's {} ms debounce and Traefik's 100 ms provider throttle)",
        client::run::DEBOUNCE.as_millis()
    );
}
