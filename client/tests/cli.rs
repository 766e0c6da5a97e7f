//! The client's command line as a user runs it: render -f, help, structured logs.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn render_prints_the_routes_of_a_manifests_folder() {
    let dir = std::env::temp_dir().join(format!("pe-client-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), support::manifests("app.test", 8080)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polaredge-client")).args(["render", "-f"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the document is JSON (and so YAML)");
    let router = doc["http"]["routers"].as_object().unwrap().values().next().unwrap();
    assert_eq!(router["rule"], "Host(`app.test`) && PathPrefix(`/`)");
    assert_eq!(doc["http"]["services"]["default-web-80"]["loadBalancer"]["servers"][0]["url"], "http://127.0.0.1:8080");
    let help = Command::new(env!("CARGO_BIN_EXE_polaredge-client")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("render -f DIR"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = std::env::temp_dir().join(format!("pe-client-json-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("m")).unwrap();
    let ops = support::free_tcp();
    std::fs::write(
        dir.join("client.yaml"),
        format!(
            "cert_resolver: \"\"\nops_listen: \"127.0.0.1:{ops}\"\nagents:\n- name: edge\n  endpoint: \"127.0.0.1:9\"\n  public_key: \"{}\"\n",
            tunnel::PrivateKey::generate().public_key()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_polaredge-client"))
        .env("POLAREDGE_LOG_FORMAT", "json")
        .env("POLAREDGE_PRIVATE_KEY", tunnel::PrivateKey::generate().to_string())
        .args(["run", "--config"])
        .arg(dir.join("client.yaml"))
        .arg("--manifests")
        .arg(dir.join("m"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(line["level"], "INFO");
    assert!(line["msg"].as_str().unwrap().contains("/healthz"), "{line}");
    std::fs::remove_dir_all(&dir).unwrap();
}
