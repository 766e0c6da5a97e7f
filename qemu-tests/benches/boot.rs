//! Appliance boot figures under QEMU TCG, per architecture, medians of several boots from the same state disk
//! (so the last good routes are restored at every boot), with the anchors beside them:
//!
//!   cargo bench -p polaredge-qemu-tests --bench boot [-- RUNS]      (default 3 runs per architecture)
//!
//! Figures: QEMU start -> /init (host clock, the init's first console line); /init -> agent ready (tunnel
//! listening, API up, last good routes handed to Traefik; the agent's own CLOCK_MONOTONIC against the init's);
//! /init -> Traefik serving the restored routes; QEMU start -> first request proxied through guest Traefik,
//! the tunnel and the host client to the backend; initramfs size without Traefik.

use polaredge_qemu_tests::*;
use std::time::Duration;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    println!("appliance boot under QEMU TCG, {runs} boots per architecture after one seeding boot; medians");
    println!(
        "{:<8} {:>14} {:>16} {:>20} {:>22} {:>16}",
        "arch", "QEMU->/init s", "/init->ready ms", "/init->serving ms", "QEMU->1st request s", "base initramfs"
    );
    for arch in ["x86_64", "aarch64"] {
        let dir = std::env::temp_dir().join(format!("pe-qemu-bench-{arch}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        let inputs = Inputs::prepare(arch);
        let keys = write_agent_config(&dir);
        let built = build_image(arch, &inputs, &keys.config_dir, &dir.join("image"));
        let disk = dir.join("state.ext4");
        state_disk(&disk, 32);
        let pod = backend("pod");
        std::fs::write(dir.join("manifests/app.yaml"), manifests("app.test", pod)).unwrap();
        let (mut to_init, mut to_ready, mut to_serving, mut to_request) = (vec![], vec![], vec![], vec![]);
        for run in 0..=runs {
            let mut machine = Machine::boot(&Boot {
                arch,
                image_dir: &dir.join("image"),
                state_disk: Some(&disk),
                name: &format!("bench-{arch}"),
                ip: STATIC_IP,
            });
            let config = write_client_config(&dir, &keys, machine.wireguard);
            let client = spawn_client(&config, &dir.join("manifests"));
            let served = eventually(Duration::from_secs(180), || get(machine.http, "app.test", "/") == "pod /");
            assert!(served, "{arch}: no proxied request");
            let first_request = machine.started.elapsed();
            if run > 0 {
                let init = machine.wait_line("as PID 1", Duration::from_secs(5));
                let ready = machine.wait_line("ready: tunnel listening", Duration::from_secs(5));
                assert!(ready.text.contains("last good generation"), "{arch}: nothing restored: {}", ready.text);
                let serving = machine.wait_line("live: Traefik serves it", Duration::from_secs(60));
                to_init.push(init.at.as_secs_f64());
                to_ready.push(ready_ms(&ready.text).unwrap() as f64);
                to_serving.push(ready_ms(&serving.text).unwrap() as f64);
                to_request.push(first_request.as_secs_f64());
            }
            machine.type_line("poweroff");
            assert!(machine.wait_exit(Duration::from_secs(60)).is_some_and(|s| s.success()), "{arch}: power off");
            drop(client);
        }
        println!(
            "{arch:<8} {:>14.2} {:>16.0} {:>20.0} {:>22.2} {:>14} B",
            median(to_init),
            median(to_ready),
            median(to_serving),
            median(to_request),
            built.base_len
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("anchors: /init -> agent ready at most 1000 ms; initramfs without Traefik at most 4 MB (4,194,304 B)");
    println!("host reference: Traefik answers its ping ~0.1 s after exec on this host; under TCG it takes seconds");
}
