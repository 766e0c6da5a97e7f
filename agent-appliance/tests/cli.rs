//! The agent's command line, run as a user would: init, check, --help, install-traefik.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn agent(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_polaredge-agent")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pe-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_command_has_help() {
    for command in ["init", "run", "check", "status", "install-traefik", "genkey", "pubkey"] {
        let (ok, stdout, _) = agent(&[command, "--help"]);
        assert!(ok && stdout.starts_with("usage: polaredge-agent"), "{command}: {stdout}");
    }
    let (ok, stdout, _) = agent(&["--help"]);
    assert!(ok && stdout.contains("install-traefik"));
    let (ok, _, stderr) = agent(&["frobnicate"]);
    assert!(!ok && stderr.contains("unknown command"));
    let (ok, _, stderr) = agent(&["check", "--bogus"]);
    assert!(!ok && stderr.contains("unknown option"));
}

#[test]
fn init_writes_private_files_and_prints_what_the_cluster_needs_then_check_explains_problems() {
    let dir = temp_dir("init");
    let d = dir.to_str().unwrap();
    let state = format!("{d}/state");
    let (ok, stdout, stderr) = agent(&["init", "--dir", d, "--state-dir", &state, "--endpoint", "edge.example:51820"]);
    assert!(ok, "{stderr}");
    for file in ["agent.yaml", "agent.key"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let key = std::fs::read_to_string(dir.join("agent.key")).unwrap();
    let public = key.trim().parse::<tunnel::PrivateKey>().unwrap().public_key().to_string();
    assert!(stdout.contains(&format!("Agent public key:   {public}")), "{stdout}");
    assert!(stdout.contains("kind: Secret") && stdout.contains("agent-endpoint: \"edge.example:51820\""), "{stdout}");
    // The Secret's client key matches the public key written into the config.
    let client_private = stdout.lines().find_map(|l| l.trim().strip_prefix("private-key: ")).unwrap().trim_matches('"');
    let client_public = client_private.parse::<tunnel::PrivateKey>().unwrap().public_key().to_string();
    let agent_yaml = std::fs::read_to_string(dir.join("agent.yaml")).unwrap();
    assert!(agent_yaml.contains(&client_public));
    // Two replicas by default, as deploy/ runs them: replica-keys lists both, the first being private-key, and
    // the config lists the second replica with its address.
    let replica_keys: Vec<&str> =
        stdout.lines().skip_while(|l| !l.contains("replica-keys: |")).skip(1).take(2).map(str::trim).collect();
    assert_eq!(replica_keys.len(), 2, "{stdout}");
    assert_eq!(replica_keys[0], client_private);
    let second = replica_keys[1].parse::<tunnel::PrivateKey>().unwrap().public_key().to_string();
    assert!(agent_yaml.contains(&format!("- {{public_key: \"{second}\", address: 10.88.0.3}}")), "{agent_yaml}");
    assert!(agent_yaml.contains("address: 10.88.0.1/24"), "{agent_yaml}");
    let (ok, _, stderr) = agent(&["init", "--dir", &format!("{d}/x"), "--replicas", "17"]);
    assert!(!ok && stderr.contains("--replicas must be 1 to 16"), "{stderr}");
    // A second init refuses to overwrite the key.
    let (ok, _, stderr) = agent(&["init", "--dir", d]);
    assert!(!ok && stderr.contains("--force"), "{stderr}");

    // check: point the config at loopback ports and the test's Traefik, then break the key.
    let config = dir.join("agent.yaml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("web: \":80\"", "web: \"127.0.0.1:0\"")
        .replace("websecure: \":443\"", "websecure: \"127.0.0.1:0\"")
        .replace("binary: traefik", &format!("binary: {}", support::traefik_binary().display()));
    std::fs::write(&config, text).unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("ok    traefik:") && stdout.contains("Traefik 3."), "{stdout}");
    // A state folder that exists with a wide mode is made private.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    // A replica address outside the tunnel subnet is refused, with what to write instead.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("address: 10.88.0.1/24", "address: 10.88.0.1/30")).unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("wireguard.replicas[0].address 10.88.0.3 must be inside"), "{stdout}");
    assert!(stdout.contains("10.88.0.1/24"), "{stdout}");
    let repeated = good.lines().find_map(|l| l.split("public_key: \"").nth(1)).unwrap().split('"').next().unwrap();
    let twice = good
        .replace("  replicas:\n", &format!("  replicas:\n    - {{public_key: \"{repeated}\", address: 10.88.0.9}}\n"));
    std::fs::write(&config, twice).unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok && stdout.contains("repeats an address or key"), "{stdout}");
    std::fs::write(&config, good).unwrap();
    // A private key other users can read is refused, with the fix.
    std::fs::set_permissions(dir.join("agent.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("FAIL  keys:") && stdout.contains("readable by other users (mode 0644)"), "{stdout}");
    assert!(stdout.contains("chmod 600"), "{stdout}");
    std::fs::set_permissions(dir.join("agent.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("agent.key"), "not a key\n").unwrap();
    let (ok, stdout, _) = agent(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("FAIL  keys:") && stdout.contains("not a WireGuard key"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serves one file over plain HTTP on loopback, for each connection.
fn serve(bytes: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/traefik", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let mut conn = conn.unwrap();
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len());
            let _ = conn.write_all(&bytes);
        }
    });
    url
}

#[test]
fn install_traefik_verifies_the_checksum_and_that_the_binary_runs() {
    let dir = temp_dir("install");
    let binary = std::fs::read(support::traefik_binary()).unwrap();
    let sha: String = protocol::generation::sha256_hex(&binary);
    let url = serve(binary);
    let dest = dir.join("bin/traefik");
    let d = dest.to_str().unwrap();
    let wrong = "0".repeat(64);
    let (ok, _, stderr) = agent(&["install-traefik", "--url", &url, "--sha256", &wrong, "--dest", d]);
    assert!(!ok && stderr.contains("expected 000"), "{stderr}");
    assert!(!dest.exists(), "nothing installed on a checksum mismatch");
    let (ok, stdout, stderr) = agent(&["install-traefik", "--url", &url, "--sha256", &sha, "--dest", d]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("installed Traefik 3."), "{stdout}");
    assert!(Command::new(&dest).arg("version").output().unwrap().status.success());
    let (ok, _, stderr) = agent(&["install-traefik", "--url", "http://example.com/traefik", "--dest", d]);
    assert!(!ok && stderr.contains("only https"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
