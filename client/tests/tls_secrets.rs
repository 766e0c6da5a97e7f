//! The Kubernetes ingress conformance suite's https case, end to end: an Ingress whose TLS entry names a
//! `kubernetes.io/tls` Secret is served at the edge with that Secret's certificate (verified for the host name
//! against it), a rotated Secret is served within seconds, and a missing one gets a Warning Event. The client
//! watches the in-repo API server (real list/watch protocol, field selector on the Secret type); the agent and
//! Traefik are real.

mod support;

use base64::Engine as _;
use std::time::{Duration, Instant};
use support::apiserver::ApiServer;
use support::*;

fn secret(name: &str, cert: &str, key: &str) -> String {
    let b64 =
        |file: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(testkit::testdata(file)).unwrap());
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

/// `openssl s_client` verifying the presented chain against `ca` for `host`: its verify line.
fn verify(websecure: std::net::SocketAddr, host: &str, ca: &std::path::Path) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {websecure} -servername {host} -verify_hostname {host} -CAfile {} </dev/null 2>/dev/null | grep -m1 'Verify return code'",
            ca.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_ingress_tls_secret_is_served_for_its_host_and_a_rotation_follows_within_seconds() {
    let edge = Edge::start("tls-secrets");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    let pod = backend("backend-A");
    let with_tls = manifests("app.test", pod).replace(
        "  ingressClassName: polaredge\n",
        "  ingressClassName: polaredge\n  tls:\n  - hosts: [app.test]\n    secretName: app-tls\n",
    );
    api.apply(&with_tls);
    api.apply(&secret("app-tls", "rsa.crt", "rsa-pkcs1.key"));
    // A Secret of another type is never seen by the client (field selector), even with the same name elsewhere.
    api.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: db-password, namespace: default}\ntype: Opaque\ndata: {password: c2VjcmV0}\n");
    let client = edge.client_watching_kubeconfig();
    let expected = testkit::file_fingerprint(&testkit::testdata("rsa.crt"));
    assert!(
        eventually(Duration::from_secs(30), || testkit::presented_fingerprint(edge.websecure, "app.test") == expected),
        "the Secret's certificate is served\n{}",
        client.log()
    );
    assert_eq!(verify(edge.websecure, "app.test", &testkit::testdata("rsa.crt")), "Verify return code: 0 (ok)");
    assert!(
        api.requests().iter().any(|r| r.starts_with("/api/v1/secrets?") && r.contains("fieldSelector=type")),
        "{:?}",
        api.requests()
    );

    // cert-manager renews: the Secret changes, the new certificate is served within seconds.
    let rotated = testkit::file_fingerprint(&testkit::testdata("ec-app.crt"));
    let started = Instant::now();
    api.apply(&secret("app-tls", "ec-app.crt", "ec-app.key"));
    assert!(
        eventually(Duration::from_secs(10), || testkit::presented_fingerprint(edge.websecure, "app.test") == rotated),
        "the rotated certificate is served\n{}",
        client.log()
    );
    let took = started.elapsed();
    println!("rotated TLS Secret served after {took:?}");
    assert!(took < Duration::from_secs(3), "rotation took {took:?}");
    assert_eq!(verify(edge.websecure, "app.test", &testkit::testdata("ec-app.crt")), "Verify return code: 0 (ok)");

    // A Secret whose key is not its certificate's: a Warning Event on the Ingress, and the host falls back to
    // ACME (here: none configured, so Traefik's default certificate); the rest keeps serving.
    api.apply(&secret("app-tls", "rsa.crt", "ec-app.key"));
    let warned = || {
        api.events().iter().any(|e| {
            e["reason"] == "TLSSecretUnusable"
                && e["regarding"]["name"] == "app"
                && e["note"].as_str().is_some_and(|m| m.contains("does not belong"))
        })
    };
    assert!(eventually(Duration::from_secs(10), warned), "events: {:?}", api.events());
    assert!(
        eventually(Duration::from_secs(10), || testkit::presented_fingerprint(edge.websecure, "app.test") != rotated)
    );
    assert_eq!(get(edge.web, "app.test", "/x"), "backend-A /x");
    assert!(!client.log().contains("PRIVATE KEY"), "no key material in the client's log");
}

#[test]
fn tls_passthrough_hands_the_pods_own_certificate_through_while_another_host_is_terminated_at_the_edge() {
    let edge = Edge::start("tls-passthrough");
    let api = ApiServer::start_allowing_loopback_pods();
    api.kubeconfig(&edge.dir.join("kubeconfig"));
    // The pod terminates TLS itself, with its own certificate (for ec.test).
    let pod_port = free_tcp();
    let _pod = Proc::spawn(
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{pod_port}")])
            .arg("-cert")
            .arg(testkit::testdata("ec.crt"))
            .arg("-key")
            .arg(testkit::testdata("ec-sec1.key")),
    );
    let passthrough = manifests("ec.test", pod_port).replace(
        "metadata: {name: app, namespace: default}\nspec:",
        "metadata: {name: app, namespace: default, annotations: {polaredge.io/tls-passthrough: \"true\"}}\nspec:",
    );
    assert!(passthrough.contains("tls-passthrough"), "{passthrough}");
    api.apply(&passthrough);
    // Another host on the same entrypoint, terminated at the edge with its Secret's certificate.
    let terminated = manifests("app.test", backend("backend-A"))
        .replace("name: app,", "name: terminated,")
        .replace("name: web,", "name: web2,")
        .replace("service: {name: web,", "service: {name: web2,")
        .replace("kubernetes.io/service-name: web}", "kubernetes.io/service-name: web2}")
        .replace("name: web-1", "name: web2-1")
        .replace(
            "  ingressClassName: polaredge\n",
            "  ingressClassName: polaredge\n  tls:\n  - hosts: [app.test]\n    secretName: app-tls\n",
        );
    api.apply(&terminated);
    api.apply(&secret("app-tls", "rsa.crt", "rsa-pkcs1.key"));
    let client = edge.client_watching_kubeconfig();
    let pod_certificate = testkit::file_fingerprint(&testkit::testdata("ec.crt"));
    assert!(
        eventually(Duration::from_secs(30), || testkit::presented_fingerprint(edge.websecure, "ec.test")
            == pod_certificate),
        "the pod's own certificate through the edge\n{}",
        client.log()
    );
    assert_eq!(verify(edge.websecure, "ec.test", &testkit::testdata("ec.crt")), "Verify return code: 0 (ok)");
    assert!(
        eventually(Duration::from_secs(10), || testkit::presented_fingerprint(edge.websecure, "app.test")
            == testkit::file_fingerprint(&testkit::testdata("rsa.crt"))),
        "the other host is terminated at the edge with its Secret"
    );
}
