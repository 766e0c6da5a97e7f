//! ACME end to end with Debian's `pebble`, an RFC 8555 test CA, on loopback: the edge's Traefik obtains a
//! certificate through HTTP-01 and through TLS-ALPN-01, serves it (the chain verifies against pebble's root for
//! the host name), keeps acme.json at 0600, and serves the same certificate again after an agent restart.
//! pebble resolves names through pebble-challtestsrv's mock DNS, which answers 127.0.0.1 for every name, and
//! validates on the ports of the agent's entrypoints.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;
use testkit::Proc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn require(tool: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(tool);
    assert!(path.exists(), "{tool} is missing: scripts/install-deps.sh installs Debian's pebble package");
    path
}

/// pebble and its mock DNS, validating HTTP-01 on `web` and TLS-ALPN-01 on `websecure`.
struct Pebble {
    _dns: Proc,
    pebble: Proc,
    directory: String,
    management: SocketAddr,
    /// pebble's own HTTPS certificate, which the agent must trust for the ACME API.
    api_ca: PathBuf,
    dir: PathBuf,
}

impl Pebble {
    /// `validity`: how long the certificates it issues are valid (pebble's default: 5 years).
    fn start(dir: &Path, web: SocketAddr, websecure: SocketAddr, validity: Option<Duration>) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dns_proc = Proc::spawn(
            Command::new(require("pebble-challtestsrv"))
                .args(["-dns01", &dns.to_string(), "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port()), "-defaultIPv6", ""]),
        );
        let (api, management) = (free_port(), SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": management.to_string(),
            "certificate": cert, "privateKey": key,
            "httpPort": web.port(), "tlsPort": websecure.port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        if let Some(validity) = validity {
            config["pebble"]["certificateValidityPeriod"] = serde_json::json!(validity.as_secs());
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let pebble = Proc::spawn(
            Command::new(require("pebble"))
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &dns.to_string()])
                // No random validation delays or nonce rejections: the test measures the edge, not pebble's chaos.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
        );
        let directory = format!("https://127.0.0.1:{api}/dir");
        assert!(
            eventually(Duration::from_secs(10), || curl(&["--cacert", cert.to_str().unwrap(), &directory]).0),
            "pebble answers\n{}",
            pebble.log()
        );
        Pebble { _dns: dns_proc, pebble, directory, management, api_ca: cert, dir }
    }

    /// pebble's root for the certificates it issues (random per run), written to a file.
    fn issuing_root(&self) -> PathBuf {
        let (ok, pem) = curl(&["-k", &format!("https://{}/roots/0", self.management)]);
        assert!(ok && pem.contains("BEGIN CERTIFICATE"), "{pem}");
        let path = self.dir.join("root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// openssl's verdict on the chain presented for `host`, against `root`.
fn verify(websecure: SocketAddr, host: &str, root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {websecure} -servername {host} -verify_hostname {host} -CAfile {} </dev/null 2>/dev/null | grep -m1 'Verify return code'",
            root.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (up to a minute) until the certificate presented for `host` verifies against `root`.
fn served(websecure: SocketAddr, host: &str, root: &Path) -> bool {
    eventually(Duration::from_secs(60), || verify(websecure, host, root) == "Verify return code: 0 (ok)")
}

/// Points the agent's config at pebble; `extra` is more YAML for the `acme` section.
fn with_acme(setup: &Setup, pebble: &Pebble, challenge: &str, extra: &str) {
    let config = std::fs::read_to_string(setup.config()).unwrap();
    let base = config.split("acme:").next().unwrap().to_string();
    let acme = format!(
        "acme:\n  email: ops@example.com\n  ca_server: \"{}\"\n  challenge: {challenge}\n  ca_certificates: {}\n{extra}",
        pebble.directory,
        pebble.api_ca.display()
    );
    std::fs::write(setup.config(), base + &acme).unwrap();
}

/// A route for `host` on the TLS entrypoint with the ACME resolver.
fn tls_route(host: &str) -> String {
    serde_json::json!({"http": {
        "routers": {"app": {"rule": format!("Host(`{host}`)"), "service": "app", "entryPoints": ["websecure"], "tls": {"certResolver": "acme"}}},
        "services": {"app": {"loadBalancer": {"servers": [{"url": "http://10.1.0.1:80"}]}}}
    }})
    .to_string()
}

#[test]
fn traefik_at_the_edge_gets_serves_and_keeps_certificates_from_an_acme_ca() {
    let setup = Setup::new("acme");
    let pebble = Pebble::start(&setup.dir, setup.web, setup.websecure, None);
    with_acme(&setup, &pebble, "http", "");
    let mut agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    peer.pods.lock().unwrap().insert("10.1.0.1:80".parse().unwrap(), backend("backend-A"));
    let (status, body) = peer.upload(&tls_route("app.test"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());

    // HTTP-01: pebble asks http://app.test:<web port>/.well-known/acme-challenge/... (DNS says 127.0.0.1).
    let root = pebble.issuing_root();
    let started = std::time::Instant::now();
    assert!(
        served(setup.websecure, "app.test", &root),
        "an ACME certificate for app.test, verified against pebble's root\n{}\n{}",
        agent.log(),
        pebble.pebble.log()
    );
    println!("HTTP-01 certificate served {:?} after the upload", started.elapsed());
    let acme = setup.dir.join("state/acme.json");
    assert_eq!(std::fs::metadata(&acme).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&acme).unwrap().contains("app.test"));
    let issued = testkit::presented_fingerprint(setup.websecure, "app.test");

    // An agent restart serves the same certificate from acme.json, without asking the CA again.
    assert!(agent.stop());
    let agent = Agent::start(&setup);
    assert!(
        eventually(Duration::from_secs(30), || testkit::presented_fingerprint(setup.websecure, "app.test") == issued),
        "the stored certificate is served after a restart\n{}",
        agent.log()
    );
    drop(agent);

    // TLS-ALPN-01: only the TLS port is used.
    with_acme(&setup, &pebble, "tls-alpn", "");
    std::fs::remove_file(&acme).unwrap();
    let agent = Agent::start(&setup);
    let (status, body) = peer.upload(&tls_route("alpn.test"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    assert!(
        served(setup.websecure, "alpn.test", &root),
        "a TLS-ALPN-01 certificate for alpn.test\n{}\n{}",
        agent.log(),
        pebble.pebble.log()
    );
}

#[test]
fn an_acme_certificate_is_renewed_before_it_expires() {
    let setup = Setup::new("acme-renew");
    // Certificates valid for 10 minutes, and Traefik told they last an hour: it renews those with less than
    // 20 minutes left, checking every minute, so the first one is renewed at the first check.
    let pebble = Pebble::start(&setup.dir, setup.web, setup.websecure, Some(Duration::from_secs(600)));
    with_acme(&setup, &pebble, "http", "  certificates_duration_hours: 1\n");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    let (status, body) = peer.upload(&tls_route("renew.test"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let root = pebble.issuing_root();
    assert!(served(setup.websecure, "renew.test", &root), "the first certificate\n{}", agent.log());
    let first = testkit::presented_fingerprint(setup.websecure, "renew.test");
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(150), || {
            let now = testkit::presented_fingerprint(setup.websecure, "renew.test");
            now.contains("Fingerprint=") && now != first
        }),
        "a renewed certificate is served\n{}",
        agent.log()
    );
    println!("renewed certificate served {:?} after the first", started.elapsed());
    assert_eq!(verify(setup.websecure, "renew.test", &root), "Verify return code: 0 (ok)");
}
