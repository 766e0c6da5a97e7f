//! The appliance end to end under QEMU (TCG), for x86_64 (q35) and aarch64 (virt): the real image (Debian
//! cloud kernel, the static agent as /init, real Traefik) boots; the real client on the host, reading a
//! manifests folder, brings the WireGuard tunnel up through QEMU's forwarded UDP port; an Ingress becomes a
//! live route; a request to the forwarded HTTP port crosses guest Traefik -> agent forwarder -> WireGuard ->
//! host client relay -> backend and returns its answer; a changed Ingress changes the routing; the power
//! button (x86_64, ACPI) or the console's `poweroff` (aarch64) stops everything cleanly; and a second boot
//! from the same state disk serves the last good routes before the client returns.
//!
//! The consoles of failed runs are saved under target/qemu-tests/.

use polaredge_qemu_tests::*;
use std::sync::Mutex;
use std::time::Duration;
use testkit::pebble::{self, Options, Pebble};

/// Two emulated machines at once would starve each other on a two-core host.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fresh work folder for one test, with an empty `manifests` folder.
fn work_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pe-qemu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    dir
}

/// The generation an agent log line names ("generation <hex>: ...").
fn generation_in(line: &str) -> Option<&str> {
    line.split("generation ").nth(1)?.split(':').next()
}

/// `ip` is the kernel's `ip=`: static settings, or `dhcp` from QEMU's DHCP server.
fn appliance_end_to_end(arch: &str, ip: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = work_dir(arch);
    let inputs = Inputs::prepare(arch);
    let keys = write_agent_config(&dir);
    let built = build_image(arch, &inputs, &keys.config_dir, &dir.join("image"));
    assert!(built.modules.contains(&"virtio_net".to_string()));
    let disk = dir.join("state.ext4");
    state_disk(&disk, 32);
    let (a, b) = (backend("backend-A"), backend("backend-B"));
    std::fs::write(dir.join("manifests/app.yaml"), manifests("app.test", a)).unwrap();

    let mut machine =
        Machine::boot(&Boot { arch, image_dir: &dir.join("image"), state_disk: Some(&disk), name: arch, ip });
    let client_config = write_client_config(&dir, &keys, machine.wireguard);
    let client = spawn_client(&client_config, &dir.join("manifests"));
    let init = machine.wait_line("as PID 1", Duration::from_secs(60));
    if ip == "dhcp" {
        let lease = machine.wait_line("from DHCP server", Duration::from_secs(30));
        assert!(lease.text.contains("eth0 10.0.2.15/24 via 10.0.2.2"), "{arch}: QEMU's DHCP lease: {}", lease.text);
    }
    let ready = machine.wait_line("ready: tunnel listening", Duration::from_secs(30));
    let first_ready_ms = ready_ms(&ready.text).expect("the ready line says how long after /init");
    assert!(machine.line("BOOT FAILED").is_none() && machine.line("Kernel panic").is_none(), "{arch}: boot failed");

    // The tunnel comes up and the Ingress becomes a live route, served through the whole path.
    let up = eventually(Duration::from_secs(120), || get(machine.http, "app.test", "/x") == "backend-A /x");
    assert!(up, "{arch}: app.test never served backend-A; last answer {}", get(machine.http, "app.test", "/x"));
    let first_request = machine.started.elapsed();
    assert_eq!(get(machine.http, "other.test", "/"), "404", "unknown hosts get Traefik's 404");
    // The console's `status` asks the running agent over its admin socket.
    machine.type_line("status");
    let status = machine.wait_line("\"peer_endpoint\"", Duration::from_secs(30));
    assert!(status.text.contains("10.0.2.2:"), "{arch}: the client's endpoint as the guest sees it: {}", status.text);

    // A changed Ingress (new host, other pod) changes the routing. Traefik serves a file before the agent sees
    // it in Traefik's API (it polls), so the first generation's confirmation can come after the status
    // command: wait for it here, so that the confirmation awaited below is the new generation's.
    let first_live = machine.wait_line("backends, live in", Duration::from_secs(60));
    let before_change = machine.mark();
    std::fs::write(dir.join("manifests/app.yaml"), manifests("renamed.test", b)).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || get(machine.http, "renamed.test", "/y") == "backend-B /y"),
        "{arch}: the changed Ingress never served"
    );
    assert_eq!(get(machine.http, "app.test", "/x"), "404", "{arch}: the old host is gone");
    // Only a confirmed generation becomes the last good one that the second boot restores, so wait for the
    // confirmation first.
    let changed_live = machine.wait_line_from(before_change, "backends, live in", Duration::from_secs(60));
    assert_ne!(
        generation_in(&changed_live.text),
        generation_in(&first_live.text),
        "{arch}: the changed Ingress is a new generation"
    );

    // Power off: the ACPI power button on x86_64, the console command on aarch64 (its virt machine's power
    // key needs gpio-keys, which Debian's cloud kernel lacks).
    let asked = std::time::Instant::now();
    match arch {
        "x86_64" => machine.monitor("system_powerdown"),
        _ => machine.type_line("poweroff"),
    }
    machine.wait_line("agent stopped", Duration::from_secs(30));
    machine.wait_line("powering off", Duration::from_secs(10));
    let status = machine.wait_exit(Duration::from_secs(30)).expect("QEMU exits when the guest powers off");
    assert!(status.success(), "{arch}: QEMU exit {status}");
    let stopped_in = asked.elapsed();
    let stop_log = machine.console();
    assert!(
        stop_log.iter().any(|l| l.text.contains("SIGTERM: stopping Traefik")),
        "{arch}: the agent was asked to stop Traefik gracefully"
    );
    drop(machine);

    // Second boot from the same state disk, client away: the last good routes are restored and served by
    // Traefik as soon as it is up (a 5xx: the route exists, its backend is unreachable until the client
    // returns; 404 for hosts that were never routed).
    drop(client);
    let machine = Machine::boot(&Boot {
        arch,
        image_dir: &dir.join("image"),
        state_disk: Some(&disk),
        name: &format!("{arch}-second"),
        ip,
    });
    let ready2 = machine.wait_line("ready: tunnel listening", Duration::from_secs(90));
    assert!(ready2.text.contains("last good generation"), "{arch}: second boot restored nothing: {}", ready2.text);
    let ready2_ms = ready_ms(&ready2.text).unwrap();
    let live2 = machine.wait_line("live: Traefik serves it", Duration::from_secs(90));
    let live2_ms = ready_ms(&live2.text).unwrap();
    // Traefik's API can show a generation a while before its entrypoint routes it under TCG (seen: 404s for
    // more than 10 s after the confirmation on a busy machine), so the first answers may still be 404.
    let mut restored = String::new();
    let routed = eventually(Duration::from_secs(40), || {
        restored = get(machine.http, "renamed.test", "/");
        restored.starts_with('5')
    });
    let first_boot: Vec<&str> =
        stop_log.iter().map(|l| l.text.as_str()).filter(|t| t.contains("polaredge-agent")).collect();
    assert!(
        routed,
        "{arch}: the restored route exists (5xx without the client): {restored}\nfirst boot:\n{}",
        first_boot.join("\n")
    );
    assert_eq!(get(machine.http, "app.test", "/"), "404", "{arch}: a host never routed");
    // The new machine forwards other host ports.
    let client_config = write_client_config(&dir, &keys, machine.wireguard);
    let client = spawn_client(&client_config, &dir.join("manifests"));
    assert!(
        eventually(Duration::from_secs(60), || get(machine.http, "renamed.test", "/z") == "backend-B /z"),
        "{arch}: traffic flows again once the client is back"
    );
    drop(client);

    println!(
        "{arch}: QEMU start -> /init {:.2} s; /init -> agent ready {first_ready_ms} ms (empty state); second boot /init -> \
         agent ready with the last good routes handed to Traefik {ready2_ms} ms, Traefik serving them {live2_ms} ms; QEMU start -> first proxied request {:.2} s; \
         power off {:.2} s; initramfs without Traefik {} bytes",
        init.at.as_secs_f64(),
        first_request.as_secs_f64(),
        stopped_in.as_secs_f64(),
        built.base_len
    );
    drop(machine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn x86_64_appliance_end_to_end() {
    appliance_end_to_end("x86_64", STATIC_IP);
}

#[test]
fn aarch64_appliance_end_to_end() {
    appliance_end_to_end("aarch64", "dhcp");
}

/// ACME on the appliance: the guest's Traefik gets a certificate from pebble on the host (the guest reaches the
/// host's loopback as 10.0.2.2 on QEMU's user network; pebble validates through the forwarded HTTP port), keeps
/// it in acme.json on the state disk, and after a reboot serves the same certificate with pebble gone.
#[test]
fn x86_64_appliance_keeps_its_acme_certificate_across_a_reboot() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let arch = "x86_64";
    let dir = work_dir("acme");
    let inputs = Inputs::prepare(arch);
    let keys = write_agent_config(&dir);
    // pebble's API certificate and port go into the image's config.
    let (api_cert, api_key) = pebble::api_certificate(&dir.join("pebble"));
    std::fs::copy(&api_cert, keys.config_dir.join("pebble-api.pem")).unwrap();
    let port = free_tcp();
    let config = keys.config_dir.join("agent.yaml");
    let acme = format!(
        "acme:\n  email: ops@example.com\n  ca_server: \"https://10.0.2.2:{port}/dir\"\n  ca_certificates: pebble-api.pem\n"
    );
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + &acme).unwrap();
    build_image(arch, &inputs, &keys.config_dir, &dir.join("image"));
    let disk = dir.join("state.ext4");
    state_disk(&disk, 32);
    let with_tls = manifests("app.test", backend("backend-A"))
        .replace("  ingressClassName: polaredge\n", "  ingressClassName: polaredge\n  tls:\n  - hosts: [app.test]\n");
    std::fs::write(dir.join("manifests/app.yaml"), with_tls).unwrap();

    let boot = |name: &str| {
        Machine::boot(&Boot { arch, image_dir: &dir.join("image"), state_disk: Some(&disk), name, ip: STATIC_IP })
    };
    let mut machine = boot("x86_64-acme");
    let pebble = Pebble::start(
        &dir.join("pebble"),
        Options {
            api: (&api_cert, &api_key),
            port: Some(port),
            http_port: machine.http.port(),
            tls_port: machine.https.port(),
            validity: None,
        },
    );
    let client = spawn_client(
        &write_client_config_with_resolver(&dir, &keys, machine.wireguard, "acme"),
        &dir.join("manifests"),
    );
    assert!(
        eventually(Duration::from_secs(120), || get(machine.http, "app.test", "/x") == "backend-A /x"),
        "the route serves"
    );
    let root = pebble.issuing_root();
    let started = std::time::Instant::now();
    assert!(
        pebble::served(machine.https, "app.test", &root, Duration::from_secs(180)),
        "the appliance serves an ACME certificate for app.test\n{}",
        pebble.process.log()
    );
    let issued_in = started.elapsed();
    let issued = testkit::presented_fingerprint(machine.https, "app.test");
    machine.monitor("system_powerdown");
    machine.wait_exit(Duration::from_secs(60)).expect("QEMU exits when the guest powers off");
    drop(machine);
    drop(client);
    drop(pebble);

    // Second boot from the same state disk, pebble gone: the certificate comes from acme.json.
    let machine = boot("x86_64-acme-second");
    machine.wait_line("live: Traefik serves it", Duration::from_secs(90));
    assert!(
        eventually(Duration::from_secs(60), || testkit::presented_fingerprint(machine.https, "app.test") == issued),
        "the same certificate after the reboot, without the CA"
    );
    assert_eq!(pebble::verify(machine.https, "app.test", &root), "Verify return code: 0 (ok)");
    println!(
        "{arch}: ACME certificate served {:.1} s after the route; the same one after a reboot",
        issued_in.as_secs_f64()
    );
    drop(machine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broken agent config is an early-boot failure: the console says what failed and what to do, and stays
/// usable (PID 1 neither exits nor panics the kernel), so `poweroff` still powers off cleanly.
#[test]
fn a_broken_config_fails_the_boot_visibly_and_the_console_stays_usable() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let arch = "x86_64";
    let dir = work_dir("broken");
    let inputs = Inputs::prepare(arch);
    let keys = write_agent_config(&dir);
    let yaml = keys.config_dir.join("agent.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{text}api_prot: 9000\n")).unwrap();
    build_image(arch, &inputs, &keys.config_dir, &dir.join("image"));

    let mut machine = Machine::boot(&Boot {
        arch,
        image_dir: &dir.join("image"),
        state_disk: None,
        name: "x86_64-broken-config",
        ip: STATIC_IP,
    });
    let failed = machine.wait_line("BOOT FAILED", Duration::from_secs(60));
    assert!(failed.text.contains("unknown field `api_prot`"), "the failure names the problem: {}", failed.text);
    machine.wait_line("rebuild the image with a config that `polaredge-agent check` accepts", Duration::from_secs(5));
    machine.wait_line("the console stays open", Duration::from_secs(5));
    machine.type_line("help");
    machine.wait_line("console commands: status | poweroff", Duration::from_secs(20));
    machine.type_line("poweroff");
    machine.wait_line("powering off", Duration::from_secs(20));
    let status = machine.wait_exit(Duration::from_secs(30)).expect("QEMU exits when the guest powers off");
    assert!(status.success(), "QEMU exit {status}");
    assert!(machine.line("Kernel panic").is_none());
    drop(machine);
    let _ = std::fs::remove_dir_all(&dir);
}
