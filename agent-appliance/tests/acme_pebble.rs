//! ACME end to end with Debian's `pebble`, an RFC 8555 test CA, on loopback: the edge's Traefik obtains a
//! certificate through HTTP-01 and through TLS-ALPN-01, serves it (the chain verifies against pebble's root for
//! the host name), keeps acme.json at 0600, and serves the same certificate again after an agent restart.
//! pebble resolves names through pebble-challtestsrv's mock DNS, which answers 127.0.0.1 for every name, and
//! validates on the ports of the agent's entrypoints.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::*;
use testkit::pebble::{self, Options, Pebble};

/// pebble validating on this agent's entrypoints; certificates valid for `validity` (default: 5 years).
fn start_pebble(setup: &Setup, validity: Option<Duration>) -> Pebble {
    let (cert, key) = pebble::api_certificate(&setup.dir.join("pebble"));
    Pebble::start(
        &setup.dir.join("pebble"),
        Options {
            api: (&cert, &key),
            port: None,
            http_port: setup.web.port(),
            tls_port: setup.websecure.port(),
            validity,
        },
    )
}

/// Points the agent's config at pebble; `extra` is more YAML for the `acme` section.
fn with_acme(setup: &Setup, pebble: &Pebble, challenge: &str, extra: &str) {
    let config = std::fs::read_to_string(setup.config()).unwrap();
    let base = config.split("acme:").next().unwrap().to_string();
    let acme = format!(
        "acme:\n  email: ops@example.com\n  ca_server: \"{}\"\n  challenge: {challenge}\n  ca_certificates: {}\n{extra}",
        pebble.directory("127.0.0.1"),
        setup.dir.join("pebble/pebble-api.crt").display()
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
    let pebble = start_pebble(&setup, None);
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
        pebble::served(setup.websecure, "app.test", &root, Duration::from_secs(60)),
        "an ACME certificate for app.test, verified against pebble's root\n{}\n{}",
        agent.log(),
        pebble.process.log()
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
        pebble::served(setup.websecure, "alpn.test", &root, Duration::from_secs(60)),
        "a TLS-ALPN-01 certificate for alpn.test\n{}\n{}",
        agent.log(),
        pebble.process.log()
    );
}

#[test]
fn an_acme_certificate_is_renewed_before_it_expires() {
    let setup = Setup::new("acme-renew");
    // Certificates valid for 10 minutes, and Traefik told they last an hour: it renews those with less than
    // 20 minutes left, checking every minute, so the first one is renewed at the first check.
    let pebble = start_pebble(&setup, Some(Duration::from_secs(600)));
    with_acme(&setup, &pebble, "http", "  certificates_duration_hours: 1\n");
    let agent = Agent::start(&setup);
    let peer = Peer::connect(&setup);
    let (status, body) = peer.upload(&tls_route("renew.test"));
    assert_eq!(status, 200, "{body}\n{}", agent.log());
    let root = pebble.issuing_root();
    assert!(
        pebble::served(setup.websecure, "renew.test", &root, Duration::from_secs(60)),
        "the first certificate\n{}",
        agent.log()
    );
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
    assert_eq!(pebble::verify(setup.websecure, "renew.test", &root), "Verify return code: 0 (ok)");
}
